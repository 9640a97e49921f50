/* metrics.h: per-worker counters in shared memory, written lock-free by the owning worker. */
#ifndef TK_METRICS_H
#define TK_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "shm/abi.h"

/* --- layout constants ------------------------------------------------------------ */

#define TK_METRICS_CACHELINE 64

/* Latency histogram: log-linear, HdrHistogram style, in microseconds.
 * Values below 2^TK_METRICS_SUB_BITS µs get one bucket each; above, every
 * power of two is split into 2^TK_METRICS_SUB_BITS equal sub-buckets (so a
 * bucket is at most 1/16 = 6.25% wide relative to its value). The last bucket
 * collects everything at or above 60 s. */
#define TK_METRICS_SUB_BITS 4
#define TK_METRICS_SUB      (1u << TK_METRICS_SUB_BITS)
#define TK_METRICS_MAX_US   60000000ull /* 60 s */
/* 60e6 µs < 2^26: exponents 4..25 -> 22 groups of 16, plus 16 linear buckets, plus overflow. */
#define TK_METRICS_NBUCKETS (TK_METRICS_SUB + 22u * TK_METRICS_SUB + 1u)

#define TK_METRICS_MAX_ROUTES 64
#define TK_METRICS_ROUTE_NAME 48 /* bytes incl. NUL; longer names are truncated */

/* Rolling per-second ring: enough for a 60 s rate plus the current second. */
#define TK_METRICS_RING 64

typedef enum {
    TK_METRICS_ERR_PARSE = 0, /* malformed request -> 400 */
    TK_METRICS_ERR_LIMIT,     /* a configured limit hit -> 413/414/431/503 */
    TK_METRICS_ERR_TIMEOUT,   /* header/body/keep-alive/handler timeout */
    TK_METRICS_ERR_5XX,       /* a 5xx response was sent */
    TK_METRICS_ERR_N
} tk_metrics_err_t;

const char *tk_metrics_err_name(tk_metrics_err_t kind);

/* --- shared structs (no pointers: mapped at different addresses) ------------------ */

/* One registered route (index = route id). */
typedef struct {
    char name[TK_METRICS_ROUTE_NAME]; /* "GET /users/{id}"; "" = unused */
    uint64_t requests;                /* responses sent for this route */
    uint64_t status[6];               /* [1..5] = 1xx..5xx, [0] = anything else */
    uint64_t latency_us_sum;          /* sum of latencies, µs (mean = sum/requests) */
} tk_metrics_route_sh_t;

/* One second of the rolling ring; valid only when sec matches the second asked for. */
typedef struct {
    uint64_t sec; /* CLOCK_MONOTONIC_COARSE second this entry counts */
    uint64_t requests;
    uint64_t errors; /* tk_metrics_error() calls */
    uint64_t bytes_in, bytes_out;
} tk_metrics_sec_sh_t;

/* Process-level and heartbeat fields, written by the worker without the seqlock
 * (single aligned 64-bit stores, readable any time). */
typedef struct {
    uint64_t heartbeat_ns; /* CLOCK_MONOTONIC of the worker's last tk_metrics_heartbeat() */
    uint32_t accepting;    /* 1 while the worker accepts new connections */
    uint32_t pid;          /* pid of the process bound to this slot */
} tk_metrics_live_sh_t;

/* A worker's whole slot. Only the worker bound to it writes it; readers use
 * tk_metrics_snapshot(). Counters only ever grow: a respawned worker reuses its
 * predecessor's slot and keeps adding, so totals stay monotonic. Gauges (marked)
 * are overwritten, and zeroed by the master when it reaps the worker. */
typedef struct {
    /* seqlock: odd while the owner is updating; own cache line so readers'
     * polling does not bounce the data lines. */
    _Alignas(TK_METRICS_CACHELINE) uint64_t seq;
    tk_metrics_live_sh_t live;

    _Alignas(TK_METRICS_CACHELINE) uint64_t requests; /* responses sent */
    uint64_t status[6];                               /* [1..5] = 1xx..5xx, [0] = other */
    uint64_t bytes_in, bytes_out;                     /* request / response bytes on the wire */
    uint64_t conns_accepted, conns_closed;            /* open = accepted - closed */
    uint64_t conns_active, conns_idle;                /* gauges: keep-alive active / idle */
    uint64_t errors[TK_METRICS_ERR_N];
    uint64_t latency_us_sum;

    /* scheduler (tk_sched_stats_t); by_state and stack_* and pooled are gauges */
    uint64_t gt_by_state[TK_GT_NSTATES];
    uint64_t gt_created, gt_exited, gt_switches, gt_long_runs;
    uint64_t stack_reserved, stack_resident, pooled_stacks;
    uint64_t stack_max_used; /* deepest stack use (runtime.stack_paint; else 0); the
                                total is the maximum over workers, not a sum */

    /* process (from /proc/self/stat): rss is a gauge; cpu adds per-process deltas */
    uint64_t rss_bytes;
    uint64_t cpu_user_ns, cpu_sys_ns;
    uint64_t proc_start_ns; /* CLOCK_REALTIME when the current process bound the slot */
    uint64_t binds;         /* how many processes have bound this slot */

    /* Redis cache client (tk_cache_stats_t, shm/abi.h): counters, and a gauge */
    uint64_t cache_hits, cache_misses, cache_errors;
    uint64_t cache_connected;                   /* gauge: 1 while connected */
    uint64_t cache_bypasses;                    /* calls that skipped Redis (down, breaker open) */
    uint64_t cache_timeouts;                    /* commands past redis.timeout (also in errors) */
    uint64_t cache_lat_sum_us, cache_lat_count; /* Redis reply latency (mean = sum/count) */
    uint64_t cache_lat[TK_CACHE_LAT_NBUCKETS];  /* buckets of TK_CACHE_LAT_BOUNDS_US */
    /* Sentinel and replicas: overwritten as a whole by each publish (gauges and
     * the worker's own counters since it started); merged by node address. */
    tk_cache_topo_t cache_topo;

    uint64_t nroutes; /* highest registered route id + 1 */

    uint64_t hist[TK_METRICS_NBUCKETS]; /* latency histogram */
    tk_metrics_sec_sh_t ring[TK_METRICS_RING];
    tk_metrics_route_sh_t routes[TK_METRICS_MAX_ROUTES];
} tk_metrics_sh_t;

/* --- worker side: bind once, then cheap calls (no locks, no syscalls) ------------- */

/* Bind this process's metrics to a slot (after fork, in the worker). NULL binds a
 * private static slot, so unit tests and shm-less runs work. Repairs a sequence
 * counter left odd by a predecessor killed mid-update, and records this pid. */
void tk_metrics_bind(tk_metrics_sh_t *slot);
/* The bound slot (never NULL). */
tk_metrics_sh_t *tk_metrics_slot(void);

/* Name route id (0..TK_METRICS_MAX_ROUTES-1); ids out of range are ignored. */
void tk_metrics_route_register(unsigned id, const char *name);
/* One response sent. route_id >= TK_METRICS_MAX_ROUTES (e.g. -1u) = no route.
 * A status >= 500 also counts as TK_METRICS_ERR_5XX. */
void tk_metrics_request(unsigned route_id, int status, uint64_t latency_ns, uint64_t bytes_in,
                        uint64_t bytes_out);
void tk_metrics_conn_accepted(void);
void tk_metrics_conn_closed(void);
void tk_metrics_conns_set(uint64_t active, uint64_t idle);
void tk_metrics_error(tk_metrics_err_t kind);
void tk_metrics_sched_publish(const tk_sched_stats_t *st);
/* RSS and CPU time of this process from /proc/self/stat (this one does read a
 * file: call it about once a second, not per request). Returns 0 or -1. */
int tk_metrics_proc_publish(void);
/* The cache client's totals for this process (tk_cache_stats_t hits, misses,
 * errors and connected); deltas are added, like the scheduler's. Call it about
 * once a second. */
void tk_metrics_cache_publish(uint64_t hits, uint64_t misses, uint64_t errors, int connected);
/* All of a tk_cache_stats() (what the worker calls, once a second): as above,
 * with errors = errors + timeouts, plus bypasses, timeouts and the latency
 * histogram. Use one of the two per process: they share the deltas. */
void tk_metrics_cache_stats_publish(const tk_cache_stats_t *st);
/* The cache tier's topology (tk_cache_topo()), copied as is; once a second. */
void tk_metrics_cache_topo_publish(const tk_cache_topo_t *t);
/* dst += src for a topology: nodes by address, failovers and the master by the
 * worker that saw most of them (each worker sees every failover). */
void tk_metrics_cache_topo_merge(tk_cache_topo_t *dst, const tk_cache_topo_t *src);
/* Store CLOCK_MONOTONIC now in live.heartbeat_ns; the master's watchdog reads it. */
void tk_metrics_heartbeat(void);
void tk_metrics_set_accepting(int on);

/* --- reader side: snapshots, merge, percentiles ------------------------------------ */

/* A consistent copy of one slot (or a merge of several). */
typedef struct {
    tk_metrics_sh_t m;
    int torn; /* 1 if the writer never left its update (killed mid-update) */
} tk_metrics_snap_t;

/* Copy slot with the seqlock retry. Bounded: if the sequence stays odd (its
 * writer died mid-update) the last copy is kept and out->torn is set. Returns 0,
 * or 1 when torn. */
int tk_metrics_snapshot(const tk_metrics_sh_t *slot, tk_metrics_snap_t *out);
/* The same for a reader that must never sleep (a worker's loop): at most
 * TK_METRICS_SNAP_TRIES copies, back to back, no nanosleep and no clock. A
 * writer that stays mid-update through all of them (preempted, stopped or
 * dead) gets its last copy returned as torn: 1, out->torn set (/debug/stats
 * then says "consistent": false). Worst case ~TRIES copies of the slot. */
#define TK_METRICS_SNAP_TRIES 64
int tk_metrics_snapshot_nowait(const tk_metrics_sh_t *slot, tk_metrics_snap_t *out);
/* dst += src for counters, gauges and histogram; the ring is merged by second;
 * routes are merged by name. dst may start zeroed (memset). */
void tk_metrics_merge(tk_metrics_snap_t *dst, const tk_metrics_snap_t *src);
/* p in [0,100] (e.g. 99.9); µs; 0 when the histogram is empty. */
double tk_metrics_percentile(const tk_metrics_snap_t *s, double p);
/* Mean latency in µs; 0 when empty. */
double tk_metrics_mean_us(const tk_metrics_snap_t *s);

/* Rolling rates over the last `seconds` complete seconds (1..TK_METRICS_RING-1),
 * measured at now_sec (tk_metrics_now_sec()). */
typedef struct {
    double requests, errors, bytes_in, bytes_out; /* per second */
} tk_metrics_rate_t;
void tk_metrics_rate(const tk_metrics_snap_t *s, uint64_t now_sec, unsigned seconds,
                     tk_metrics_rate_t *out);
uint64_t tk_metrics_now_sec(void);

/* Histogram helpers (exposed for tests and for /metrics): bucket index of a
 * latency in µs, and the bucket's [lo, hi) bounds in µs. */
unsigned tk_metrics_bucket(uint64_t us);
void tk_metrics_bucket_bounds(unsigned b, uint64_t *lo, uint64_t *hi);

/* Zero the gauges of a slot whose process is gone (the master, on reap); also
 * makes its sequence counter even again. Counters are kept. */
void tk_metrics_reap(tk_metrics_sh_t *slot);

#endif
