/* heavy.c: heavy (placeholder, being written). */
#include "config.h"
