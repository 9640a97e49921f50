/* worker.h: one worker process: a libevent loop, the scheduler, accept, serve.
 *
 * Called by the master in the forked child. Signals (handled on the loop):
 *   SIGQUIT       graceful drain: stop accepting at once; requests that
 *                 already arrived are answered (the last one on each
 *                 connection with Connection: close); idle keep-alive
 *                 connections stay open for a last window
 *                 (TK_WORKER_DRAIN_LINGER_MS) in which a request that
 *                 arrives is still answered, with Connection: close; when
 *                 the window ends the ones still idle get a lingering close
 *                 (our FIN first, then their input is read and dropped until
 *                 they close, at most 2 s), so no request that reached the
 *                 worker goes unanswered. The worker exits when no
 *                 connection is left (bounded by conf->shutdown_timeout_ms).
 *   SIGTERM/INT   fast stop: stop accepting, in-flight requests get 1 s.
 *   SIGUSR1       reopen the log file.
 * The worker sets its shared-memory entry's accepting flag and heartbeat every
 * 100 ms and publishes its metrics there (when shm is not NULL). */
#ifndef TK_WORKER_H
#define TK_WORKER_H

#include <stdint.h>

#include "proc/conf.h"

struct tk_shm;

typedef struct {
    int slot;            /* worker index 0..workers-1 (shared-memory slot) */
    uint32_t generation; /* the master's generation that forked us */
    const tk_conf_t *conf;
    const int *listen_fds; /* shared, non-blocking listen sockets */
    int nlisten;
    int admin_fd;       /* admin listener, -1 if none */
    struct tk_shm *shm; /* may be NULL (tests, no shared memory) */
} tk_worker_args_t;

/* How long a draining worker waits for requests on idle connections that it
 * has already shut for writing. */
#define TK_WORKER_DRAIN_LINGER_MS 1000

/* Run the worker until it is told to stop. Returns the process exit code
 * (0 on a clean stop). */
int tk_worker_main(const tk_worker_args_t *a);

#endif
