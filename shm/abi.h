/* abi.h: the types the runtime and the cache client publish into shared memory:
 * green-thread states and their names, the scheduler's counters, the cache
 * client's counters and latency buckets. They live in shm/ because the segment's
 * layout (shm/metrics.h) and its readers (tenkctl, /debug/stats) depend on them;
 * runtime/scheduler.h and cache/cache.h include this file. Changing one of
 * these is a layout change (TK_SHM_LAYOUT_VERSION). */
#ifndef TK_ABI_H
#define TK_ABI_H

#include <stdint.h>

/* Every green thread is in exactly one of these states at any time. */
typedef enum {
    TK_GT_RUNNING = 0,
    TK_GT_RUNNABLE,
    TK_GT_WAIT_NET,    /* parked on a client socket */
    TK_GT_WAIT_DB,     /* parked on a PostgreSQL socket */
    TK_GT_WAIT_BROKER, /* queued for a database connection slot */
    TK_GT_WAIT_CACHE,  /* parked on Redis */
    TK_GT_SLEEPING,
    TK_GT_WAIT_GT, /* join, mutex, semaphore, condition, channel */
    TK_GT_NSTATES
} tk_gt_state_t;

const char *tk_gt_state_name(tk_gt_state_t s);

/* The scheduler's counters (tk_sched_stats()), ready to be copied to shared memory. */
typedef struct {
    uint64_t by_state[TK_GT_NSTATES]; /* current count per state */
    uint64_t created, exited;
    uint64_t switches;
    uint64_t long_runs;      /* times a green thread ran past long_run_ns */
    uint64_t stack_reserved; /* bytes of address space held by live + pooled stacks */
    uint64_t stack_resident; /* bytes actually resident (mincore), see tk_sched_stats() */
    uint64_t pooled_stacks;  /* stacks idle in the pool */
    uint64_t stack_max_used; /* deepest stack use of any ended thread (stack_paint; else 0) */
} tk_sched_stats_t;

/* Latency histogram: bucket i counts commands whose reply took at most
 * TK_CACHE_LAT_BOUNDS_US[i] microseconds; the last bucket is "more". */
#define TK_CACHE_LAT_NBUCKETS 12
#define TK_CACHE_LAT_BOUNDS_US                                                                     \
    {                                                                                              \
        50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, UINT64_MAX               \
    }

/* Statistics of one worker's Redis client (tk_cache_stats()): plain data, no pointers, so it can be
 * copied into shared memory as is. Counters only grow. */
typedef struct {
    uint64_t hits;             /* keys found (get, each key of an mget) */
    uint64_t misses;           /* keys not found */
    uint64_t errors;           /* commands failed: error reply or connection lost */
    uint64_t timeouts;         /* commands that ran past timeout_ms (not in errors) */
    uint64_t bypasses;         /* calls that skipped Redis (no connection, breaker open) */
    uint64_t commands;         /* commands sent */
    uint64_t late_replies;     /* replies that arrived after their command timed out */
    uint64_t connects;         /* connections established (handshake done) */
    uint64_t reconnects;       /* connections established after a failed or lost one */
    uint64_t connect_failures; /* connect or handshake failed or timed out */
    uint64_t disconnects;      /* established connections lost or dropped */
    uint64_t breaker_opens;    /* times the breaker opened */
    uint64_t flight_loads;     /* loader calls made by tk_cache_flight_do() */
    uint64_t flight_shared;    /* callers that waited for another's load instead */
    uint64_t connected;        /* gauge: 1 while the connection is up */
    uint64_t breaker_open;     /* gauge: 1 while the breaker is open or half open */
    uint64_t inflight;         /* gauge: commands sent and not yet answered */
    uint64_t inflight_peak;    /* most commands ever in flight at once (pipeline depth) */
    uint64_t lat_sum_us;       /* sum of reply latencies (for the mean) */
    uint64_t lat_count;        /* replies measured */
    uint64_t lat_buckets[TK_CACHE_LAT_NBUCKETS];
} tk_cache_stats_t;

/* --- the cache tier's topology (Sentinel, replicas) ------------------------------ */

/* tk_cache_node_stats_t and tk_cache_topo_t are part of the metrics slot:
 * changing either is a layout change (TK_SHM_LAYOUT_VERSION, 4 since they
 * came). Readers bound every string: a worker may die mid-write. */
#define TK_CACHE_MAX_NODES 6  /* Redis nodes one worker keeps statistics for */
#define TK_CACHE_NODE_ADDR 48 /* "host:port" incl. NUL */

typedef enum {
    TK_CACHE_ROLE_NONE = 0, /* no longer used (an earlier master or replica) */
    TK_CACHE_ROLE_MASTER,
    TK_CACHE_ROLE_REPLICA,
} tk_cache_role_t;

const char *tk_cache_role_name(uint32_t role); /* "master", "replica", "none" */

/* One Redis node as one worker sees it. Counters count since the worker started. */
typedef struct {
    char addr[TK_CACHE_NODE_ADDR]; /* "" = unused entry */
    uint32_t role;                 /* gauge: tk_cache_role_t */
    uint32_t reading;              /* gauge: 1 while GET/MGET go to this node */
    uint64_t commands;             /* commands sent to it */
    uint64_t errors;               /* failed: error reply, connection lost, timeout */
    uint64_t lat_sum_us, lat_count;
} tk_cache_node_stats_t;

/* Where one worker's cache commands go, and what the Sentinels told it. */
typedef struct {
    char master[TK_CACHE_NODE_ADDR]; /* gauge: the master in use ("" = none known) */
    uint32_t sentinels;              /* gauge: configured Sentinels (0 = plain redis.addr) */
    uint32_t read_replicas;          /* gauge: 1 with redis.read_from = replicas */
    uint64_t failovers;              /* master changes after the first discovery */
    uint64_t switch_messages;        /* +switch-master messages received */
    uint64_t sentinel_queries;       /* SENTINEL commands answered */
    uint64_t sentinel_errors;        /* Sentinels down, timed out or answering nonsense */
    uint64_t unknown_master;         /* answers "no such master name" */
    uint64_t role_mismatches;        /* a node named master that ROLE says is not */
    uint64_t replica_reads;          /* GET/MGET sent to a replica */
    uint64_t inval_waits;            /* WAITs after an invalidation */
    uint64_t inval_wait_short;       /* ... that returned before every replica acknowledged */
    uint64_t inval_wait_us_sum;      /* time those WAITs took */
    uint64_t inval_wait_us_max;      /* longest (the measured invalidation window) */
    tk_cache_node_stats_t nodes[TK_CACHE_MAX_NODES];
} tk_cache_topo_t;

#endif
