/* users.c: users (placeholder, being written). */
#include "config.h"
