/* uri.h: placeholder, being written. */
#pragma once
