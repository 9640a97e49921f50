/* bench_coro.c placeholder */
#include "config.h"
int main(void){return 0;}
