/* pidfile.c: the master's pid file: written at start (creating its
 * directory), removed at exit only while it still names us. */
#include "config.h"

#include "proc/pidfile.h"

#include "proc/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int tk_pidfile_write(char *path, pid_t pid)
{
    char dir[300];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash != NULL && slash != dir) {
        *slash = '\0';
        /* mkdir -p: the run-state directory of a --prefix install may not exist yet. */
        for (char *p = dir + 1;; p++) {
            if (*p != '/' && *p != '\0')
                continue;
            char saved = *p;
            *p = '\0';
            if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
                TK_LOG_ERRNO(TK_LOG_WARN, errno, "mkdir(\"%s\") failed", dir);
                *p = saved;
                break;
            }
            *p = saved;
            if (saved == '\0')
                break;
        }
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        TK_LOG_ERRNO(TK_LOG_ERR, errno, "open(\"%s\") failed", path);
        path[0] = '\0';
        return -1;
    }
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%d\n", (int)pid);
    ssize_t w = write(fd, buf, (size_t)n);
    close(fd);
    if (w != n) {
        TK_LOG_ERRNO(TK_LOG_ERR, errno, "write(\"%s\") failed", path);
        return -1;
    }
    return 0;
}

void tk_pidfile_remove(const char *path, pid_t self)
{
    if (path[0] == '\0')
        return;
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return;
    int pid = 0;
    if (fscanf(f, "%d", &pid) != 1)
        pid = 0;
    fclose(f);
    if (pid == (int)self)
        unlink(path);
}
