/* http_conn.c: HTTP connections (placeholder, being written). */
#include "config.h"
