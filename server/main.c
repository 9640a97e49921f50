/* main.c: tenkd's entry point (placeholder until the master lands). */
#include "config.h"
#include <stdio.h>
int main(void) { puts("tenkd: not yet"); return 0; }
