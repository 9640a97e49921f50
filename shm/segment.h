/* segment.h: the instance's shared-memory segment: header, worker table, metrics slots, broker. */
#ifndef TK_SEGMENT_H
#define TK_SEGMENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "shm/broker.h"
#include "shm/dbview.h"
#include "shm/metrics.h"

#define TK_SHM_MAGIC 0x314d48534b4e4554ull /* "TENKSHM1" little-endian */
/* Bump whenever any shared struct (header, worker, metrics, broker) changes shape. */
/* 4: a broker per database backend, the dbview; 5: the cache topology; 6: the lame duck */
#define TK_SHM_LAYOUT_VERSION 6u
/* Worker-table slots: the master passes nslots = TK_SHM_SLOTS(workers). Two per
 * worker, because during a reload the new generation starts while the old one
 * drains; a respawned worker reuses its dead predecessor's slot. 0 means
 * TK_SHM_MAX_SLOTS. The slot index is also the worker's index in the broker
 * (tk_broker_worker_attach(b, slot, pid)), hence the cap. tmpfs pages are only
 * allocated when touched, so unused slots cost address space, not memory. */
#define TK_SHM_MAX_SLOTS ((unsigned)TK_BROKER_MAX_WORKERS)
#define TK_SHM_SLOTS(workers)                                                                      \
    ((unsigned)(workers)*2u > TK_SHM_MAX_SLOTS ? TK_SHM_MAX_SLOTS : (unsigned)(workers)*2u)
#define TK_SHM_NAME_MAX  64  /* instance name incl. NUL */
#define TK_SHM_PATH_MAX  256 /* conf path incl. NUL */
#define TK_SHM_ERROR_MAX 256 /* last reload error incl. NUL */

/* Worker slot states. EMPTY is 0 so a fresh (zero) table is all empty. */
typedef enum {
    TK_SHM_W_EMPTY = 0, /* never used */
    TK_SHM_W_STARTING,  /* forked, not yet accepting */
    TK_SHM_W_RUNNING,   /* accepting */
    TK_SHM_W_DRAINING,  /* told to stop accepting and finish (reload/graceful stop) */
    TK_SHM_W_DEAD,      /* exited; slot may be reused by a respawn */
} tk_shm_wstate_t;

const char *tk_shm_wstate_name(tk_shm_wstate_t s);

/* Segment header, at offset 0. Written by the master (readers: tenkctl, workers).
 * The first four fields are a stable prefix that never moves, so any version
 * can tell whether a segment of another layout still has a live master. */
typedef struct {
    uint64_t magic;              /* TK_SHM_MAGIC */
    uint32_t layout_version;     /* TK_SHM_LAYOUT_VERSION */
    int32_t master_pid;          /* the master that owns the segment */
    uint64_t master_start_ticks; /* /proc/PID/stat starttime: tells a reused pid apart */
    uint32_t nslots;             /* worker slots */
    uint32_t workers;            /* configured workers of the current generation */
    /* sizes of every part, so a reader built from other sources detects drift */
    uint32_t header_size, worker_size, metrics_size, broker_size;
    uint64_t worker_off, metrics_off, broker_off; /* byte offsets from the segment start */
    uint64_t total_size;                          /* bytes of the whole segment */
    uint64_t created_ns;                          /* CLOCK_REALTIME at creation */
    uint64_t generation; /* current worker generation (1 at start, +1 per reload) */
    /* reload outcome for tenkctl: the master bumps reload_seq after every SIGHUP
     * it handled, with reload_ok and, on failure, reload_error. */
    uint64_t reload_seq;
    uint32_t reload_ok;
    uint32_t stopping; /* 1 once the master began a stop */
    /* 1 during server.drain_delay before a stop or a reload: /health answers 503 */
    uint32_t lame_duck;
    char reload_error[TK_SHM_ERROR_MAX];
    char conf_path[TK_SHM_PATH_MAX];
    char name[TK_SHM_NAME_MAX];
    /* TK_DBVIEW_MAX brokers (one per database backend: the primary, then each replica) from
     * broker_off, then the dbview */
    uint32_t dbview_size;
    uint32_t pad;
    uint64_t dbview_off;
} tk_shm_header_sh_t;

/* One worker-table entry: master-owned. The worker-written fields (heartbeat,
 * accepting flag) live in the slot's metrics: tk_shm_metrics(shm, slot)->live. */
typedef struct {
    _Alignas(TK_METRICS_CACHELINE) int32_t pid; /* 0 when EMPTY */
    uint32_t state;                             /* tk_shm_wstate_t */
    uint64_t generation;                        /* generation the worker belongs to */
    uint64_t start_ns;                          /* CLOCK_REALTIME at fork */
    int32_t last_status; /* wait status of the previous occupant, -1 = none */
    uint32_t respawns;   /* times a dead worker was replaced here */
    uint32_t index;      /* worker index within its generation */
} tk_shm_worker_sh_t;

/* Process-local handle (never in shared memory). */
typedef struct tk_shm tk_shm_t;

/* Create /dev/shm/tenk-NAME (mode 0600, chowned to uid:gid unless -1) with nslots
 * worker slots, initialise header, table and broker (db_max_open slots), and
 * record this process as the master. An existing file is only looked into if
 * it is a regular file owned by this process's user or by uid (else refused
 * with err naming the file and its owner: EPERM); then, a segment whose
 * master is gone (or is not a tenkd) is replaced; a live one is refused with
 * the reason in err. NULL on error. */
tk_shm_t *tk_shm_create(const char *name, unsigned nslots, uid_t uid, gid_t gid, char *err,
                        size_t errlen);
/* Same, choosing the broker's slot budget (db.max_open). tk_shm_create uses 25. */
tk_shm_t *tk_shm_create_ex(const char *name, unsigned nslots, unsigned db_max_open, uid_t uid,
                           gid_t gid, char *err, size_t errlen);
/* Map an existing segment. Fails with a clear message if none exists, access is
 * denied, or magic / layout version / part sizes differ from this build's. */
tk_shm_t *tk_shm_attach(const char *name, int writable, char *err, size_t errlen);
/* Unmap and free the handle (the segment stays). */
void tk_shm_detach(tk_shm_t *shm);
/* Remove /dev/shm/tenk-NAME (the master, at exit). 0 or -1 with errno. */
int tk_shm_unlink(const char *name);
/* "/dev/shm/tenk-NAME" into buf; -1 if the name is invalid (empty, too long, or
 * chars other than [A-Za-z0-9._-]). */
int tk_shm_path(const char *name, char *buf, size_t len);

tk_shm_header_sh_t *tk_shm_header(tk_shm_t *shm);
unsigned tk_shm_nslots(const tk_shm_t *shm);
tk_shm_worker_sh_t *tk_shm_worker(tk_shm_t *shm, unsigned slot); /* NULL if out of range */
tk_metrics_sh_t *tk_shm_metrics(tk_shm_t *shm, unsigned slot);   /* NULL if out of range */
tk_broker_sh_t *tk_shm_broker(tk_shm_t *shm);                    /* the primary's */
/* Backend i's broker (0 = primary, 1.. = replicas), NULL if i >= TK_DBVIEW_MAX. */
tk_broker_sh_t *tk_shm_broker_be(tk_shm_t *shm, unsigned i);
tk_dbview_sh_t *tk_shm_dbview(tk_shm_t *shm);
void *tk_shm_base(tk_shm_t *shm); /* for offset arithmetic in other shm modules */
int tk_shm_writable(const tk_shm_t *shm);

/* 1 if the segment's master process is alive (same pid and start time, not a
 * zombie; a header without a start time never has a live master). */
int tk_shm_master_alive(tk_shm_t *shm);

/* tenkctl's checks before it believes a segment it attached: the header's
 * master has a start time, runs, and started then (/proc/PID/stat field 22),
 * and the file is owned by root or by the caller, or else is mapped by that
 * master (/proc/PID/maps: a tenkd maps only a segment it created). 0 with
 * *master, or -1 with the reason (naming the file and its owner) in err. */
int tk_shm_trust(tk_shm_t *shm, pid_t *master, char *err, size_t errlen);
/* Signal the segment's master after tk_shm_trust()'s checks and two more: its
 * /proc/PID/exe is a program named tenkd, and it maps this very file (same
 * device and inode). The pid is pinned with a pidfd before the checks, so a
 * pid reused meanwhile is never signalled. 0 with *master; -2 if the checks
 * refused (reason in err); -1 with errno if the signal failed (EPERM: not
 * allowed). */
int tk_shm_signal_master(tk_shm_t *shm, int sig, pid_t *master, char *err, size_t errlen);

/* --- master side -------------------------------------------------------------------- */

void tk_shm_set_conf(tk_shm_t *shm, const char *conf_path, unsigned workers);
void tk_shm_set_generation(tk_shm_t *shm, uint64_t generation);
/* After handling a SIGHUP: ok=1, or ok=0 with the reason (copied). */
void tk_shm_reload_done(tk_shm_t *shm, int ok, const char *error);
void tk_shm_set_stopping(tk_shm_t *shm);
/* The lame-duck flag (server.drain_delay): set by the master, read by /health. */
void tk_shm_set_lame_duck(tk_shm_t *shm, int on);
int tk_shm_lame_duck(tk_shm_t *shm);
/* A free slot for a new worker: EMPTY first, then the DEAD one with the fewest
 * respawns. -1 if every slot holds a live worker. */
int tk_shm_worker_find_free(tk_shm_t *shm);
/* Record a fork in slot: state STARTING; respawns+1 if the slot was DEAD. */
void tk_shm_worker_started(tk_shm_t *shm, unsigned slot, pid_t pid, uint64_t generation,
                           unsigned index);
void tk_shm_worker_set_state(tk_shm_t *shm, unsigned slot, tk_shm_wstate_t state);
/* The slot holding pid, or -1. */
int tk_shm_worker_by_pid(tk_shm_t *shm, pid_t pid);
/* After waitpid(): state DEAD, last_status = status, gauges of its metrics zeroed
 * (counters kept), sequence counter repaired if it died mid-update. */
void tk_shm_worker_reap(tk_shm_t *shm, unsigned slot, int status);

/* --- worker side -------------------------------------------------------------------- */

/* In the worker after fork: tk_metrics_bind(tk_shm_metrics(shm, slot)). */
int tk_shm_worker_bind(tk_shm_t *shm, unsigned slot);

#endif
