/* http_response.c: responses (placeholder, being written). */
#include "config.h"
