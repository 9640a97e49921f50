/* health.c: health (placeholder, being written). */
#include "config.h"
