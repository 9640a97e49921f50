/* gt_dump.h: the workers' thread-dump service (/debug/threads): each worker lists its own green
 * threads to the others over an abstract Unix socket, @tenk-gt-<pid>. */
#ifndef TK_GT_DUMP_H
#define TK_GT_DUMP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "http/http_response.h"
#include "runtime/scheduler.h"

/* Start answering the other workers of our master (same user, same parent:
 * SO_PEERCRED) on s's event base. Call once per worker, after tk_sched_new().
 * 0, or -1 (a bind failure is logged: the others then report this worker
 * with an error). */
int tk_gt_dump_start(tk_sched_t *s);

/* Stop answering; call before the event base is freed. Safe when nothing was
 * started. */
void tk_gt_dump_stop(void);

/* Append the green threads of the worker pid (in shared-memory slot `slot`)
 * to b as comma-separated JSON objects ({"id":...}), a comma first unless
 * *first; *first becomes 0 once something was appended. pid may be this
 * worker (listed in place) or another (asked over its socket, at most 32 MiB
 * kept, waiting until deadline, in ms of tk_now_ms()). Returns 0, or -1 with
 * a reason in err (b then is as it was). May yield. */
int tk_gt_dump_collect(pid_t pid, int slot, tk_http_buf_t *b, int *first, int64_t deadline,
                       char *err, size_t errlen);

#endif
