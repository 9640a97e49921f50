/* conf.c: configuration (placeholder, being written). */
#include "config.h"
