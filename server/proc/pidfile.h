/* pidfile.h: the master's pid file (server.pid_file). */
#ifndef TK_PIDFILE_H
#define TK_PIDFILE_H

#include <sys/types.h>

/* Write "pid\n" to path, creating missing directories (mkdir -p). 0, or -1
 * (logged); if the file could not be opened, path[0] is set to '\0' so that
 * tk_pidfile_remove() leaves alone a file that is not ours. */
int tk_pidfile_write(char *path, pid_t pid);
/* Remove path only if it still names self; nothing if path is "". */
void tk_pidfile_remove(const char *path, pid_t self);

#endif
