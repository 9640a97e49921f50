/* db.c: PostgreSQL client (placeholder, being written). */
#include "config.h"
