/* metrics.c: metrics (placeholder, being written). */
#include "config.h"
