/* worker.c: worker (placeholder, being written). */
#include "config.h"
