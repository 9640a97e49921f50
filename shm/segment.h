/* segment.h: placeholder, being written. */
#pragma once
