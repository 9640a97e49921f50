/* uri.c: query strings and percent decoding (placeholder, being written). */
#include "config.h"
