/* master.c: master (placeholder, being written). */
#include "config.h"
