/* procstat.h: one reader of /proc/PID/stat for the segment, the metrics and the admin views. */
#ifndef TK_PROCSTAT_H
#define TK_PROCSTAT_H

#include <stdint.h>
#include <sys/types.h>

typedef struct {
    char state;           /* R, S, D, Z, X, ... */
    pid_t ppid;           /* parent process */
    uint64_t utime_ticks; /* user CPU, clock ticks */
    uint64_t stime_ticks; /* system CPU, clock ticks */
    uint64_t start_ticks; /* start time, clock ticks since boot */
    uint64_t rss_pages;
} tk_procstat_t;

/* Read /proc/PID/stat (pid 0: this process). 0, or -1 if the process does not
 * exist or its line cannot be read. */
int tk_procstat_read(pid_t pid, tk_procstat_t *out);
/* The real uid of a process (the "Uid:" line of /proc/PID/status, readable for
 * any process). 0, or -1 if it cannot be read. */
int tk_procstat_uid(pid_t pid, uid_t *uid);

#endif
