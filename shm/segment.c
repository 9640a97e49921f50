/* segment.c: shared memory segment (placeholder, being written). */
#include "config.h"
