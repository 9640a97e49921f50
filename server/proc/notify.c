/* notify.c: sd_notify through libsystemd when configure found it, else the
 * same datagram written to $NOTIFY_SOCKET by hand (path or '@' abstract name). */
#include "config.h"

#include "proc/notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#ifndef HAVE_LIBSYSTEMD
/* One datagram to $NOTIFY_SOCKET. A fresh socket per message keeps this
 * fork-safe and stateless; the master sends a handful per minute. */
static int send_raw(const char *path, const char *msg)
{
    struct sockaddr_un sa;
    size_t plen = strlen(path);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if ((path[0] != '/' && path[0] != '@') || plen < 2 || plen >= sizeof(sa.sun_path)) {
        errno = EINVAL;
        return -1;
    }
    memcpy(sa.sun_path, path, plen);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract namespace: leading NUL, no terminator */
    socklen_t salen =
        (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen + (path[0] == '@' ? 0 : 1));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    ssize_t n = sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
    int saved = errno;
    close(fd);
    errno = saved;
    return n < 0 ? -1 : 1;
}
#endif

int tk_notify_send(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || path[0] == '\0')
        return 0;
#ifdef HAVE_LIBSYSTEMD
    int r = sd_notify(0, msg);
    if (r < 0) {
        errno = -r;
        return -1;
    }
    return r > 0 ? 1 : 0;
#else
    return send_raw(path, msg);
#endif
}

static int vsendf(const char *prefix, const char *fmt, va_list ap)
{
    char msg[1024];
    size_t n = (size_t)snprintf(msg, sizeof(msg), "%s", prefix);
    if (n < sizeof(msg))
        vsnprintf(msg + n, sizeof(msg) - n, fmt, ap);
    /* A STATUS= value ends at the first newline; keep the message one line. */
    for (char *p = msg + n; *p; p++)
        if (*p == '\n')
            *p = ' ';
    return tk_notify_send(msg);
}

int tk_notify_sendf(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return tk_notify_send(msg);
}

int tk_notify_status(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vsendf("STATUS=", fmt, ap);
    va_end(ap);
    return r;
}

int tk_notify_ready(void)
{
    return tk_notify_send("READY=1");
}
int tk_notify_stopping(void)
{
    return tk_notify_send("STOPPING=1");
}
int tk_notify_watchdog(void)
{
    return tk_notify_send("WATCHDOG=1");
}

int tk_notify_reloading(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    unsigned long long usec =
        (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000ULL;
    return tk_notify_sendf("RELOADING=1\nMONOTONIC_USEC=%llu", usec);
}

uint64_t tk_notify_watchdog_usec(void)
{
#ifdef HAVE_LIBSYSTEMD
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0)
        return usec;
    return 0;
#else
    const char *s = getenv("WATCHDOG_USEC");
    const char *pid = getenv("WATCHDOG_PID");
    if (s == NULL || *s == '\0')
        return 0;
    if (pid != NULL && *pid != '\0' && strtol(pid, NULL, 10) != (long)getpid())
        return 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v == 0)
        return 0;
    return (uint64_t)v;
#endif
}
