/* procstat.c: one reader of /proc/PID/stat for the segment, the metrics and the admin views. */
#include "config.h"

#include "shm/procstat.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Read /proc/PID/name (PID 0: self) into buf, NUL-terminated; -1 if it can't. */
static int read_proc(pid_t pid, const char *name, char *buf, size_t len)
{
    char path[64];
    if (pid == 0)
        snprintf(path, sizeof(path), "/proc/self/%s", name);
    else
        snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    return 0;
}

int tk_procstat_read(pid_t pid, tk_procstat_t *out)
{
    char buf[1024];
    if (read_proc(pid, "stat", buf, sizeof(buf)) != 0)
        return -1;
    /* the command name may hold spaces and parentheses: fields start after the last ')' */
    const char *p = strrchr(buf, ')');
    if (p == NULL)
        return -1;
    char c = 0;
    int ppid = 0;
    unsigned long long ut = 0, st = 0, start = 0;
    long long rss = 0;
    /* fields 3..24: state ppid pgrp session tty tpgid flags minflt cminflt majflt
     * cmajflt utime stime cutime cstime priority nice threads itrealvalue starttime
     * vsize rss */
    if (sscanf(p + 1,
               " %c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d "
               "%llu %*u %lld",
               &c, &ppid, &ut, &st, &start, &rss) != 6)
        return -1;
    out->state = c;
    out->ppid = (pid_t)ppid;
    out->utime_ticks = ut;
    out->stime_ticks = st;
    out->start_ticks = start;
    out->rss_pages = rss > 0 ? (uint64_t)rss : 0;
    return 0;
}

int tk_procstat_uid(pid_t pid, uid_t *uid)
{
    char buf[4096];
    if (read_proc(pid, "status", buf, sizeof(buf)) != 0)
        return -1;
    const char *p = strstr(buf, "\nUid:");
    unsigned long u;
    if (p == NULL || sscanf(p + 5, "%lu", &u) != 1)
        return -1;
    *uid = (uid_t)u;
    return 0;
}
