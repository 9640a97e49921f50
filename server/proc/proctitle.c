/* proctitle.c: the process title that ps and top show: the argv area
 * overwritten in place, and the 15-byte comm name. */
#include "config.h"

#include "proc/proctitle.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

extern char **environ;

static char *title_base;
static size_t title_size;
/* The moved environment: kept here too, because a later setenv() may replace
 * environ with an array of its own and would leave ours unreferenced (valgrind
 * then reports it as lost); "used" keeps the otherwise write-only store. */
static char **title_environ __attribute__((used));

void tk_proctitle_init(int argc, char **argv)
{
    if (argc <= 0 || argv == NULL || argv[0] == NULL)
        return;
    /* The kernel lays argv strings and then environ strings out back to back;
     * find the end of that contiguous run. */
    char *base = argv[0], *end = argv[0];
    for (int i = 0; i < argc; i++)
        if (argv[i] == end)
            end = argv[i] + strlen(argv[i]) + 1;
    size_t n = 0;
    while (environ[n] != NULL)
        n++;
    char **env = malloc((n + 1) * sizeof(*env));
    if (env == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        if (environ[i] == end)
            end = environ[i] + strlen(environ[i]) + 1;
        env[i] = strdup(environ[i]);
        if (env[i] == NULL)
            return; /* keep the old environment; no title then */
    }
    env[n] = NULL;
    for (int i = 0; i < argc; i++) {
        char *copy = strdup(argv[i]);
        if (copy == NULL)
            return;
        argv[i] = copy;
    }
    environ = title_environ = env;
    title_base = base;
    title_size = (size_t)(end - base);
}

void tk_proctitle_set(const char *fmt, ...)
{
    char buf[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    /* comm (top, /proc/PID/comm) is 15 bytes: "tenkd: worker 3" style. */
    prctl(PR_SET_NAME, buf, 0, 0, 0);
    if (title_base == NULL || title_size < 2)
        return;
    memset(title_base, 0, title_size);
    snprintf(title_base, title_size, "%s", buf);
}
