/* dbview.h: the database backends as every process sees them: the primary and each read
 * replica with its role, health, lag and load, measured once per instance (one worker holds the
 * probe lease) and published here for the workers' routing, tenkctl and the admin endpoints. */
#ifndef TK_DBVIEW_H
#define TK_DBVIEW_H

#include <stdint.h>
#include <sys/types.h>

#define TK_DBVIEW_MAGIC   0x56424454u /* "TDBV" */
#define TK_DBVIEW_VERSION 1u
#define TK_DBVIEW_MAX     5 /* backends: the primary (0) and up to 4 replicas (1..4) */
#define TK_DBVIEW_NAME    64

typedef enum {
    TK_DBVIEW_UNKNOWN = 0, /* not probed yet */
    TK_DBVIEW_OK,          /* reachable; a replica: within db.replica_max_lag */
    TK_DBVIEW_LAGGING,     /* a replica past db.replica_max_lag */
    TK_DBVIEW_DOWN,        /* unreachable or not answering */
    TK_DBVIEW_WRONG_ROLE,  /* a replica not in recovery (promoted), or on another timeline */
} tk_dbview_health_t;

/* One backend. Written by the lease holder (probe fields) and by every worker (inflight,
 * routed, relaxed atomics); read by anyone without a lock: each field is read on its own. */
typedef struct {
    uint32_t role;     /* 0 = primary, 1 = replica; set by the master */
    uint32_t health;   /* tk_dbview_health_t */
    uint64_t lsn;      /* primary: pg_current_wal_lsn(); replica: pg_last_wal_replay_lsn() */
    uint64_t lag_ms;   /* replica: age of the oldest primary position it has not replayed */
    uint32_t timeline; /* the timeline it is on, 0 = unknown */
    uint32_t in_recovery;
    uint64_t probed_ns; /* CLOCK_MONOTONIC of the last answer */
    uint64_t probes;    /* answered probes */
    uint64_t probe_errors;
    int64_t inflight;          /* queries running on it now, all workers */
    uint64_t routed;           /* queries sent to it, all workers */
    uint64_t fallbacks;        /* reads meant for it that went to the primary after it failed */
    uint64_t changes;          /* health changes seen by the prober */
    char name[TK_DBVIEW_NAME]; /* host:port for display (no password), NUL-terminated */
} tk_dbview_be_sh_t;

typedef struct {
    uint32_t magic, version, size;
    uint32_t nbackends;         /* 1 + replicas configured (master) */
    uint32_t read_from_primary; /* db.read_from = primary */
    int32_t lease_pid;          /* worker running the probe, 0 = none */
    uint64_t lease_until_ns;    /* CLOCK_MONOTONIC: it renews before this or loses the lease */
    uint64_t lease_takeovers;   /* times the lease changed hands */
    uint64_t max_lag_ms;        /* db.replica_max_lag */
    tk_dbview_be_sh_t be[TK_DBVIEW_MAX];
} tk_dbview_sh_t;

/* Master, before forking: nbackends (1..TK_DBVIEW_MAX), display names (may be NULL). */
void tk_dbview_init(tk_dbview_sh_t *v, unsigned nbackends, const char *const *names,
                    uint64_t max_lag_ms, int read_from_primary);
/* Master, at a reload: db.replica_max_lag and db.read_from take effect at once. */
void tk_dbview_set_policy(tk_dbview_sh_t *v, uint64_t max_lag_ms, int read_from_primary);
/* Worker pid takes the probe lease for ttl_ns if it is free, expired or already its own.
 * 1 if it holds the lease now (renewed), else 0. Lock-free (compare-and-swap). */
int tk_dbview_lease(tk_dbview_sh_t *v, pid_t pid, uint64_t now_ns, uint64_t ttl_ns);
/* The lease holder lets go (worker exit). */
void tk_dbview_unlease(tk_dbview_sh_t *v, pid_t pid);
/* 1 if v looks like a dbview of this build (readers of a segment others write). */
int tk_dbview_valid(const tk_dbview_sh_t *v);
/* Number of backends, bounded by TK_DBVIEW_MAX (0 if invalid). */
unsigned tk_dbview_count(const tk_dbview_sh_t *v);
const char *tk_dbview_health_name(uint32_t h);

#endif
