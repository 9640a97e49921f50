/* tfb.c: TechEmpower (placeholder, being written). */
#include "config.h"
