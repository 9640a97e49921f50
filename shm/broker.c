/* broker.c: db broker (placeholder, being written). */
#include "config.h"
