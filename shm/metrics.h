/* metrics.h: placeholder, being written. */
#pragma once
