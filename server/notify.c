/* notify.c: sd_notify (placeholder, being written). */
#include "config.h"
