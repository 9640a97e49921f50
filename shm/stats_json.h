/* stats_json.h: the cJSON objects of the statistics that `tenkctl --json` and /debug/stats share.
 */
#ifndef TK_STATS_JSON_H
#define TK_STATS_JSON_H

#include <stdint.h>

#include <cjson/cJSON.h>

#include "shm/broker.h"
#include "shm/metrics.h"
#include "shm/segment.h"

/* Both tools print these objects, so their field names and order are one
 * contract (tests and bench/lib/report.py read them): fields are only
 * ever added. The builders read copies (snapshots, header and worker table
 * copies) or the broker's counters; they keep no state and never log. */

/* Optional parts of the block (flags of tk_stats_json_stats_block() and
 * tk_stats_json_latency()): `tenkctl stats` adds THREADS, /debug/stats all three. */
enum {
    TK_STATS_JSON_P95 = 1u << 0,     /* latency_us.p95 */
    TK_STATS_JSON_THREADS = 1u << 1, /* threads{by_state, threads, created, ...} */
    TK_STATS_JSON_HIST = 1u << 2,    /* latency_histogram[[upper bound µs, count], ...] */
};

/* Which rate tk_stats_json_rates() shows. */
typedef enum {
    TK_STATS_JSON_REQUESTS,
    TK_STATS_JSON_ERRORS,
    TK_STATS_JSON_BYTES_IN,
    TK_STATS_JSON_BYTES_OUT,
} tk_stats_json_rate_t;

/* {"1s", "10s", "60s"}: per second over the last complete seconds at now_sec. */
cJSON *tk_stats_json_rates(const tk_metrics_snap_t *s, uint64_t now_sec, tk_stats_json_rate_t what);
/* {p50, p90[, p95], p99, p999, mean} in µs. */
cJSON *tk_stats_json_latency(const tk_metrics_snap_t *s, unsigned flags);
/* {1xx, 2xx, 3xx, 4xx, 5xx, other} from a status-class array (index 0 = other). */
cJSON *tk_stats_json_status(const uint64_t st[6]);
/* {STATE: n, ...}: green threads by state. */
cJSON *tk_stats_json_gt_by_state(const tk_metrics_sh_t *m);
/* Adds threads, created, switches, long_runs, stack_reserved_bytes, stack_resident_bytes,
 * stack_max_used_bytes (the stack high-water mark; 0 unless runtime.stack_paint). */
void tk_stats_json_gt_counters(cJSON *o, const tk_metrics_sh_t *m);
/* Adds the block shown for the totals and for each worker: requests_total,
 * requests_per_second, latency_us, errors_total, errors_per_second, errors,
 * status, bytes_*, connections, cache, process; then by flags threads and
 * latency_histogram. */
void tk_stats_json_stats_block(cJSON *o, const tk_metrics_snap_t *s, uint64_t now_sec,
                               unsigned flags);
/* [{route, requests, mean_latency_us, status}, ...]: every named route. */
cJSON *tk_stats_json_routes(const tk_metrics_sh_t *m);
/* Adds name, master_pid, generation, uptime_s (as of now_real_ns, CLOCK_REALTIME). */
void tk_stats_json_head(cJSON *o, const tk_shm_header_sh_t *h, uint64_t now_real_ns);
/* Adds slot, pid, generation, state. */
void tk_stats_json_worker_head(cJSON *o, unsigned slot, const tk_shm_worker_sh_t *w);
/* Adds the pool's totals: configured, max_open, max_idle, open, in_use, idle,
 * free_slots, waiting, waiting_high_water (the broker's queue), waiting_local,
 * waiting_local_high_water (queued inside workers for a shared pipelined
 * connection), waiting_all_high_water, wait_count (both kinds), wait_count_local,
 * wait_duration_us, *_closed,
 * acquires, acquire_timeouts, queue_full, query_timeouts, connect_errors,
 * errors_closed, handoffs_*, wait_histogram[{le_us, count}]. b NULL (no
 * database configured): configured=false only. */
void tk_stats_json_db(cJSON *o, const tk_broker_sh_t *b);
/* Adds one worker's share of the pool: open, in_use, idle, waiting, waiting_local,
 * wait_count, wait_count_local, wait_duration_us, acquires, connect_errors,
 * wait_histogram_counts[] (bounds: the totals' wait_histogram). slot <
 * TK_BROKER_MAX_WORKERS. */
void tk_stats_json_db_worker(cJSON *o, const tk_broker_sh_t *b, unsigned slot);
/* Adds "backends": one object per database backend (the primary, then each replica) with
 * index, role, name, health, lag_ms, lsn, timeline, in_recovery, probe_age_ms, inflight,
 * routed, fallbacks, and its broker's max_open, open, in_use, idle, waiting, acquires,
 * acquire_timeouts, connect_errors; and "probe_lease_pid". Everything read from shm is
 * bounded (count, name length). Nothing if the view is invalid. */
void tk_stats_json_db_backends(cJSON *o, tk_shm_t *shm, uint64_t now_mono_ns);

/* The cache tier's topology into the "cache" object k: master, nodes read
 * from, failovers, per-node commands, errors and latency. */
void tk_stats_json_cache_topo(cJSON *k, const tk_cache_topo_t *t);

#endif
