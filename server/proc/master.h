/* master.h: the prefork master: shared memory, fork/reap/respawn of workers,
 * signals, zero-drop reload, stops, sd_notify (listen sockets: listen.h; pid
 * file: pidfile.h; process titles: proctitle.h). */
#ifndef TK_MASTER_H
#define TK_MASTER_H

#include <stddef.h>

#include "proc/conf.h"

/* Build a complete, validated configuration (defaults, file, flags) into out;
 * the master calls it again on SIGHUP. 0, or -1 with a message in err. */
typedef int (*tk_master_load_fn)(tk_conf_t *out, char *err, size_t errlen, void *arg);

/* A worker that dies sooner than this after its start counts as crashing;
 * consecutive crashes back off the respawn: 0, 100 ms, 200 ms, ... up to
 * TK_MASTER_BACKOFF_MAX_MS. */
#define TK_MASTER_FAST_DEATH_MS  1000
#define TK_MASTER_BACKOFF_MAX_MS 10000
/* A fast stop gives workers this long (they give in-flight requests 1 s) before SIGKILL. */
#define TK_MASTER_FAST_STOP_MS 3000
/* A new generation that is not accepting after this long fails the reload. */
#define TK_MASTER_START_TIMEOUT_MS 30000

/* Run the master until stopped. conf is the validated start-up configuration;
 * load re-reads it on SIGHUP. ready_fd >= 0 (daemon mode) receives one byte
 * once the first generation accepts, and is closed. Returns the exit code. */
int tk_master_run(const tk_conf_t *conf, tk_master_load_fn load, void *load_arg, int ready_fd);

#endif
