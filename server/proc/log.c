/* log.c: the error log. Each line is formatted in full and written with one
 * write(2), so lines from the master and all workers never interleave. */
#include "config.h"

#include "proc/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static struct {
    char instance[64];
    int worker_id;
    tk_log_level_t level;
    int fd;
    int journal; /* under systemd: "<N>" prefixes, no timestamps */
} g_log = {"tenk", -1, TK_LOG_NOTICE, 2, 0};

static const char *const level_names[] = {"emerg", "alert", "crit", "error",
                                          "warn",  "notice", "info", "debug"};

void tk_log_init(const char *instance, tk_log_level_t level)
{
    snprintf(g_log.instance, sizeof(g_log.instance), "%s", instance ? instance : "tenk");
    g_log.level = level;
    g_log.journal = getenv("JOURNAL_STREAM") != NULL;
}

void tk_log_set_worker(int worker_id) { g_log.worker_id = worker_id; }
void tk_log_set_level(tk_log_level_t level) { g_log.level = level; }
tk_log_level_t tk_log_level(void) { return g_log.level; }

int tk_log_level_parse(const char *s, tk_log_level_t *out)
{
    for (int i = TK_LOG_ERR; i <= TK_LOG_DEBUG; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (tk_log_level_t)i;
            return 0;
        }
    }
    return -1;
}

int tk_log_open(const char *path)
{
    if (path == NULL || path[0] == '\0') {
        if (g_log.fd != 2)
            close(g_log.fd);
        g_log.fd = 2;
        return 0;
    }
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        return -1;
    if (g_log.fd != 2)
        close(g_log.fd);
    g_log.fd = fd;
    g_log.journal = 0; /* a file gets timestamps even under systemd */
    return 0;
}

void tk_log_write(tk_log_level_t level, uint64_t conn_id, int err, const char *fmt, ...)
{
    char line[2048];
    size_t n = 0;
    int saved = errno;

    if (g_log.journal) {
        n += (size_t)snprintf(line, sizeof(line), "<%d>", (int)level);
    } else {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        localtime_r(&ts.tv_sec, &tm);
        n += strftime(line, sizeof(line), "%Y-%m-%d %H:%M:%S", &tm);
        n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ld [%s] ", ts.tv_nsec / 1000000,
                              level_names[level]);
    }
    if (g_log.worker_id < 0)
        n += (size_t)snprintf(line + n, sizeof(line) - n, "%s master: ", g_log.instance);
    else
        n += (size_t)snprintf(line + n, sizeof(line) - n, "%s worker %d: ", g_log.instance,
                              g_log.worker_id);
    if (conn_id != 0 && n < sizeof(line))
        n += (size_t)snprintf(line + n, sizeof(line) - n, "*%llu ", (unsigned long long)conn_id);
    if (n < sizeof(line)) {
        va_list ap;
        va_start(ap, fmt);
        n += (size_t)vsnprintf(line + n, sizeof(line) - n, fmt, ap);
        va_end(ap);
    }
    if (err != 0 && n < sizeof(line))
        n += (size_t)snprintf(line + n, sizeof(line) - n, ": %s (%d)", strerror(err), err);
    if (n >= sizeof(line) - 1)
        n = sizeof(line) - 2;
    line[n++] = '\n';
    ssize_t w = write(g_log.fd, line, n);
    (void)w;
    errno = saved;
}
