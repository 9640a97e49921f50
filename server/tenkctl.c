/* tenkctl.c: inspects a running tenk through its shared memory (placeholder). */
#include "config.h"
#include <stdio.h>
int main(void) { fputs("usage: tenkctl [-n NAME] status|stats|threads|db|top|reload|stop\n", stderr); return 2; }
