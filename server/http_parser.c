/* http_parser.c: HTTP/1.1 request parser (placeholder, being written). */
#include "config.h"
