/* broker.h: the cross-process database connection broker: a global slot table
 * and a FIFO wait queue in shared memory, guarded by a robust mutex.
 *
 * A "slot" is the right to hold one PostgreSQL connection; there are
 * db.max_open of them across all workers. The broker never sees a connection,
 * only slots: each worker keeps its own connections (server/db/db.c) and asks the
 * broker for a slot when it has no idle connection of its own.
 *
 * Every structure here lives in shared memory: fixed size, no pointers (list
 * links are entry indices, -1 = none). One robust process-shared mutex guards
 * everything except the per-worker statistics, which only their worker writes
 * (relaxed atomics) and readers sum. Every locked section is O(1) except the
 * rare repair after a holder died and the master's reclaim of a dead pid.
 *
 * Cross-process wake-up: an eventfd cannot be found through shared memory, so
 * the master creates one eventfd per worker slot before forking
 * (tk_broker_wake_create()) and every worker inherits all of them; a worker
 * watches its own and writes to another's to tell it a slot was granted to
 * one of its waiters (or that it should give up idle connections). */
#ifndef TK_BROKER_H
#define TK_BROKER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define TK_BROKER_MAGIC        0x544b4252u /* "TKBR" */
#define TK_BROKER_VERSION      3u          /* 3: PROMISED entries (slots closing for a move) */
#define TK_BROKER_MAX_SLOTS    256         /* upper bound of db.max_open */
#define TK_BROKER_MAX_WORKERS  256         /* upper bound of server.workers */
#define TK_BROKER_MAX_WAITERS  8192        /* queued green threads, all workers together */
#define TK_BROKER_HIST_BUCKETS 64          /* wait-time histogram, see tk_broker_hist_bound_us() */

/* Slot states. */
enum {
    TK_BROKER_SLOT_FREE = 0, /* nobody holds it: a worker may take it and connect */
    TK_BROKER_SLOT_HELD,     /* owned by worker `worker`: connecting, in use or idle there;
                                closing for a move when `entry` >= 0 (PROMISED to it) */
    TK_BROKER_SLOT_GRANTED,  /* handed to queue entry `entry` of worker `worker`, not picked up */
};

/* Queue entry states. */
enum {
    TK_BROKER_ENTRY_FREE = 0, /* on the free list */
    TK_BROKER_ENTRY_WAITING,  /* in the global FIFO and its worker's waiting list */
    TK_BROKER_ENTRY_GRANTED,  /* given slot `slot`; on its worker's granted list */
    TK_BROKER_ENTRY_PROMISED, /* out of the queue: slot `slot` is granted to it once its
                                 holder has closed its connection (CLOSE_MOVE); on no list */
};

/* One connection slot. */
typedef struct {
    uint32_t state;    /* TK_BROKER_SLOT_* */
    int32_t worker;    /* owning worker slot, -1 when free */
    int32_t pid;       /* owning process, 0 when free */
    uint32_t gen;      /* owner's generation (tk_broker_worker_attach()) */
    int32_t entry;     /* GRANTED: the entry it was granted to; HELD: the PROMISED entry
                          it goes to once closed; else -1 */
    uint32_t idle;     /* 1 while the owner keeps it as an idle connection */
    uint64_t since_ns; /* CLOCK_MONOTONIC time of the last state change */
    int32_t next_free; /* FREE: next slot on the free list, -1 = end */
    uint32_t moving;   /* HELD: closing for a move (CLOSE_MOVE), until tk_broker_free_slot() */
} tk_broker_slot_sh_t;

/* One parked green thread waiting for a slot. */
typedef struct {
    int32_t prev, next;   /* global FIFO links, granted-list links, or free-list link */
    int32_t wprev, wnext; /* its worker's waiting list (WAITING only) */
    uint32_t state;       /* TK_BROKER_ENTRY_* */
    int32_t worker;       /* worker slot of the waiter */
    int32_t pid;          /* process of the waiter */
    uint32_t gen;         /* its generation */
    uint64_t ticket;      /* global arrival number: FIFO order, and ABA check for the worker */
    uint64_t enq_ns;      /* when it was queued (CLOCK_MONOTONIC) */
    int32_t slot;         /* GRANTED: the slot it was given; PROMISED: the one it will be */
    uint32_t pad;
} tk_broker_entry_sh_t;

/* Statistics, mirroring Go's sql.DBStats plus the queue's own. Per worker,
 * written only by that worker (or the master when it reclaims a dead one);
 * tk_broker_stats() sums them. Gauges are current values, the rest counters. */
typedef struct {
    uint64_t open;                 /* gauge: connections established or being established */
    uint64_t in_use;               /* gauge: connections handed to a request */
    uint64_t idle;                 /* gauge: open and not in use */
    uint64_t wait_count;           /* acquisitions that had to queue (broker or local) */
    uint64_t wait_ns;              /* total time spent queued (broker or local) */
    uint64_t wait_count_local;     /* of wait_count: queued inside the worker only, for room on
                                      its shared pipelined connections (server/db/db.c) */
    uint64_t local_waiting;        /* gauge: green threads queued that way now */
    uint64_t max_idle_closed;      /* closed because db.max_idle idle ones existed */
    uint64_t max_idle_time_closed; /* closed after db.max_idle_time unused */
    uint64_t max_lifetime_closed;  /* closed after db.max_lifetime */
    uint64_t acquire_timeouts;     /* db.acquire_timeout expired (503) */
    uint64_t queue_full;           /* refused: TK_BROKER_MAX_WAITERS queued (503) */
    uint64_t query_timeouts;       /* db.query_timeout expired (504) */
    uint64_t connect_errors;       /* failed connection attempts */
    uint64_t errors_closed;        /* closed after an error or a dirty state */
    uint64_t handoffs_local;       /* released straight to a waiter of the same worker */
    uint64_t handoffs_remote;      /* slot handed over to another worker's waiter */
    uint64_t acquires;             /* successful acquisitions */
    uint64_t wait_hist[TK_BROKER_HIST_BUCKETS]; /* queued-time histogram (broker or local) */
} tk_broker_stats_t;

/* Per worker slot, cache-line aligned so workers don't share lines. */
typedef struct {
    int32_t pid;          /* current process in this worker slot, 0 = none */
    uint32_t gen;         /* incremented by each tk_broker_worker_attach() */
    int32_t whead, wtail; /* its WAITING entries, oldest first (wprev/wnext) */
    int32_t ghead;        /* its GRANTED entries not yet picked up (prev/next) */
    uint32_t nwaiting;    /* length of the waiting list */
    uint32_t nheld;       /* slots held (HELD) by this worker */
    uint32_t nidle;       /* of those, idle connections */
    uint32_t nout;        /* of those, closing for a move to another worker (slot.moving) */
    uint32_t nin;         /* slots PROMISED to its waiters, still closing elsewhere */
    tk_broker_stats_t st; /* this worker's statistics */
} __attribute__((aligned(64))) tk_broker_worker_sh_t;

typedef struct {
    uint32_t magic;            /* TK_BROKER_MAGIC */
    uint32_t version;          /* TK_BROKER_VERSION */
    uint32_t size;             /* sizeof(tk_broker_sh_t), checked by readers */
    uint32_t max_open;         /* db.max_open: slots [0, max_open) are in use */
    uint32_t max_idle;         /* db.max_idle across all workers */
    uint32_t nfree;            /* slots in state FREE */
    uint32_t nidle;            /* slots held idle, all workers */
    uint32_t qlen;             /* WAITING entries */
    uint32_t qhwm;             /* high-water mark of qlen */
    int32_t qhead, qtail;      /* global FIFO of WAITING entries, oldest first */
    int32_t efree;             /* free-list head of entries */
    int32_t sfree;             /* free-list head of slots */
    uint32_t nworkers;         /* 1 + highest worker slot ever attached (bounds scans) */
    uint64_t local_bias_ns;    /* release policy, see broker.c; 0 = strict FIFO */
    uint64_t move_interval_ns; /* at most one rebalancing move per this, all workers */
    uint64_t starve_ns;        /* a head queued this long is served at the next release */
    uint64_t last_move_ns;     /* when the last rebalancing move happened */
    uint64_t next_ticket;      /* arrival counter */
    uint32_t lwaiting;         /* sum of the workers' local_waiting (atomic, no lock) */
    uint32_t lwhwm;            /* high-water mark of lwaiting */
    uint32_t twhwm;            /* high-water mark of qlen + lwaiting: everyone waiting */
    uint32_t pad2;
    uint64_t repairs;     /* times the lock was recovered from a dead holder */
    uint64_t reclaims;    /* dead processes whose slots/entries were reclaimed */
    pthread_mutex_t lock; /* robust, process-shared */
    tk_broker_slot_sh_t slots[TK_BROKER_MAX_SLOTS];
    tk_broker_worker_sh_t workers[TK_BROKER_MAX_WORKERS];
    tk_broker_entry_sh_t entries[TK_BROKER_MAX_WAITERS];
} tk_broker_sh_t;

/* Initialise in shared memory (master, before forking). max_open is clamped to
 * 1..TK_BROKER_MAX_SLOTS. Returns 0, or -1 with errno if the mutex can't be made. */
int tk_broker_sh_init(tk_broker_sh_t *b, unsigned max_open);
/* The waiting time after which a queue head is served by the next release
 * anywhere, whatever it costs (db.c sets 3/4 of db.acquire_timeout). */
void tk_broker_set_starve(tk_broker_sh_t *b, uint64_t starve_ns);
/* Change db.max_idle (0 = max_open). The master calls it: the lock is taken
 * with tk_broker_lock_timed(TK_BROKER_MASTER_LOCK_MS); -1 (ETIMEDOUT) if it
 * could not be, else 0. */
int tk_broker_set_max_idle(tk_broker_sh_t *b, unsigned max_idle);

/* Take the lock; repairs the structure if the previous holder died. Returns 0,
 * or -1 (ENOTRECOVERABLE: should never happen). Process-level blocking, but
 * every section is O(1). */
int tk_broker_lock(tk_broker_sh_t *b);
/* The same, giving up after timeout_ms (CLOCK_MONOTONIC): -1 with errno
 * ETIMEDOUT. For the master, which must never wait unboundedly on a lock a
 * worker can hold (a worker stopped inside a section holds it for as long as
 * it is stopped). */
int tk_broker_lock_timed(tk_broker_sh_t *b, unsigned timeout_ms);
/* How long the master waits for the lock before it gives up and retries later. */
#define TK_BROKER_MASTER_LOCK_MS 100u
void tk_broker_unlock(tk_broker_sh_t *b);
/* Rebuild every list and count from the per-slot/per-entry states (called
 * under the lock after EOWNERDEAD; exposed for tests). Returns 0 if the data
 * was already consistent, 1 if something was fixed. */
int tk_broker_repair_locked(tk_broker_sh_t *b);
/* Check every invariant (lists, counts, cross references); 0 if consistent,
 * else -1 and a description in err. Under the lock (tests, tenkctl). */
int tk_broker_check_locked(const tk_broker_sh_t *b, char *err, size_t errlen);

/* --- worker side ----------------------------------------------------------------- */

/* A worker process announces itself in worker slot w (0..MAX_WORKERS-1);
 * anything still recorded for w (a previous incarnation) is reclaimed. Returns
 * the new generation. */
uint32_t tk_broker_worker_attach(tk_broker_sh_t *b, int w, pid_t pid);

typedef enum {
    TK_BROKER_GOT = 0, /* *slot is yours (HELD): connect */
    TK_BROKER_QUEUED,  /* parked in the queue as *entry and *ticket: wait for a grant */
    TK_BROKER_FULL,    /* queue full: fail now (503) */
    TK_BROKER_ERROR,   /* lock unusable */
} tk_broker_acq_t;

/* Ask for a slot for worker w: a free slot if the queue is empty, else a
 * queue entry. When QUEUED and another worker holds idle connections, *wake
 * is set to that worker (else -1): wake it so it gives one up. */
tk_broker_acq_t tk_broker_acquire(tk_broker_sh_t *b, int w, uint32_t gen, int *slot, int *entry,
                                  uint64_t *ticket, int *wake);

/* Take a free slot for worker w only if one is free and nobody queues (never
 * queues itself: for opportunistic extra connections). Returns 0 with *slot
 * (HELD by w), -1 if none. */
int tk_broker_try_acquire(tk_broker_sh_t *b, int w, int *slot);

/* What to do with a connection being released (outcome of tk_broker_release()
 * and tk_broker_free_slot()). */
typedef enum {
    TK_BROKER_KEEP_IDLE = 0, /* queue empty: keep it as an idle connection */
    TK_BROKER_CLOSE_IDLE,    /* (release) queue empty but db.max_idle reached: close it; the
                                slot is still held by w: tk_broker_free_slot() it once the
                                backend is gone */
    TK_BROKER_FREED,         /* (free_slot) queue empty: slot now FREE */
    TK_BROKER_TO_LOCAL,      /* give it to this worker's waiter of entry *entry (the entry is
                                already freed: the index only names the local waiter) */
    TK_BROKER_TO_REMOTE,     /* (free_slot) the slot went to worker *wake: wake it */
    TK_BROKER_CLOSE_MOVE,    /* (release) the slot is to move to another worker's waiter
                                (taken out of the queue, PROMISED the slot): close the
                                connection; the slot is still held by w (counted against
                                max_open) until tk_broker_free_slot() once the backend is
                                gone, which grants it to that waiter (or, if it gave up
                                meanwhile, to the queue's head) */
} tk_broker_rel_t;

/* Fairness bound of the release policy, see broker.c. */
#define TK_BROKER_LOCAL_BIAS_NS    10000000ull  /* 10 ms; 0 = strict FIFO */
#define TK_BROKER_MOVE_INTERVAL_NS 100000000ull /* 100 ms */
#define TK_BROKER_STARVE_NS        400000000ull /* 400 ms */

/* Release a healthy connection on slot s held by worker w. Never frees or
 * grants a slot whose connection must be closed (CLOSE_IDLE, CLOSE_MOVE): a
 * backend outlives PQfinish(), so the caller frees the slot after it is gone. */
tk_broker_rel_t tk_broker_release(tk_broker_sh_t *b, int w, int s, int *entry, int *wake);
/* The connection on slot s (held by w) was closed or never opened: the slot
 * goes to the queue's head (TO_LOCAL: the waiter must connect; TO_REMOTE) or
 * becomes FREE. */
tk_broker_rel_t tk_broker_free_slot(tk_broker_sh_t *b, int w, int s, int *entry, int *wake);
/* An idle connection of w on slot s was taken for a request (no lock needed
 * for correctness of the cap, but counts are kept under it). */
void tk_broker_idle_take(tk_broker_sh_t *b, int w, int s);

/* Pop one GRANTED entry of worker w (after its eventfd fired). Returns 1 with
 * *entry, *ticket and *slot (now HELD by w), 0 if none. */
int tk_broker_next_grant(tk_broker_sh_t *b, int w, int *entry, uint64_t *ticket, int *slot);
/* A waiter gives up (timeout, cancel). Returns 0 if it was still waiting (the
 * entry is gone), 1 if it had been granted in the meantime (*slot is now HELD
 * by w and the caller must use or free it). */
int tk_broker_cancel(tk_broker_sh_t *b, int w, int entry, uint64_t ticket, int *slot);
/* How long the queue's head has waited (0 if nobody waits). */
uint64_t tk_broker_head_age_ns(tk_broker_sh_t *b);
/* The worker of the queue's head, -1 if nobody waits. */
int tk_broker_head_worker(tk_broker_sh_t *b);
/* Queue length without the lock (a hint). */
unsigned tk_broker_qlen(const tk_broker_sh_t *b);

/* --- master side ----------------------------------------------------------------- */

/* Free every slot and queue entry of a dead process (the master calls it when
 * it reaps a worker); freed slots are granted to the queue's head and the
 * workers that got them are woken through the eventfds of
 * tk_broker_wake_create(). Zeroes the dead worker's gauges. Returns the number
 * of slots reclaimed, -1 if the lock is unusable or was not free within
 * TK_BROKER_MASTER_LOCK_MS (errno ETIMEDOUT: nothing was changed; call again
 * later). The table is not trusted: an out-of-range index in it is skipped
 * and the table repaired, never followed. */
int tk_broker_reclaim_pid(tk_broker_sh_t *b, pid_t pid);

/* --- wake-up eventfds (process-local) --------------------------------------------- */

/* Create one nonblocking eventfd per worker slot 0..n-1 (master, once, before
 * the first fork; every worker inherits all of them). Kept in a process-local
 * table. Returns 0 or -1 with errno (nothing kept on failure). */
int tk_broker_wake_create(int n);
/* Close them all (master at exit). */
void tk_broker_wake_close(void);
/* Worker w's eventfd, -1 if none. */
int tk_broker_wake_fd(int w);
/* Wake worker w (write 1; EAGAIN ignored: the counter is already non-zero). */
void tk_broker_wake(int w);
/* Drain worker w's counter; returns the value read (0 if none). */
uint64_t tk_broker_wake_drain(int w);

/* --- statistics ------------------------------------------------------------------ */

/* Upper bound of histogram bucket i in microseconds (UINT64_MAX for the last):
 * 100 us * 2^(i/4) rounded, four buckets per octave (a quantile read from it is
 * within 19% of the truth), i.e. 100, 119, 141, 168, 200 ... 4.6 s, then +Inf. */
uint64_t tk_broker_hist_bound_us(int i);
/* Record one queued wait in worker w's statistics (local: it queued inside
 * the worker for a shared connection, not in the broker). */
void tk_broker_stats_wait(tk_broker_sh_t *b, int w, uint64_t ns);
void tk_broker_stats_wait_local(tk_broker_sh_t *b, int w, uint64_t ns);
/* Worker w's local queue grew (+1) or shrank (-1): keeps its local_waiting
 * gauge, the total and the high-water marks. */
void tk_broker_local_waiting(tk_broker_sh_t *b, int w, int delta);
/* Quantile q (0..1) of a histogram, as the upper bound of the bucket it falls
 * in (us; UINT64_MAX in the last); 0 if empty. */
uint64_t tk_broker_hist_quantile_us(const uint64_t *hist, double q);
/* Add to counter/gauge field at byte offset off of worker w's stats (relaxed
 * atomic; use offsetof(tk_broker_stats_t, field)). */
void tk_broker_stats_add(tk_broker_sh_t *b, int w, size_t off, int64_t delta);
#define TK_BROKER_STAT(b, w, field, delta)                                                         \
    tk_broker_stats_add((b), (w), offsetof(tk_broker_stats_t, field), (delta))
/* Read worker w's stats (w >= 0) or the sum over all workers (w < 0). */
void tk_broker_stats(const tk_broker_sh_t *b, int w, tk_broker_stats_t *out);

#endif
