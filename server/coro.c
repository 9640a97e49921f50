/* coro.c: green-thread stacks and context (placeholder, being written). */
#include "config.h"
