/* sched.c: scheduler (placeholder, being written). */
#include "config.h"
