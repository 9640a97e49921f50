/* router.c: router (placeholder, being written). */
#include "config.h"
