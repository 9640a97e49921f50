/* stats_json.c: the cJSON objects of the statistics that `tenkctl --json` and /debug/stats share.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "shm/abi.h"
#include "shm/broker.h"
#include "shm/dbview.h"
#include "shm/metrics.h"
#include "shm/segment.h"
#include "shm/stats_json.h"

#define U(x) ((double)(x))

static uint64_t errors_total(const tk_metrics_sh_t *m)
{
    uint64_t t = 0;
    for (unsigned i = 0; i < TK_METRICS_ERR_N; i++)
        t += m->errors[i];
    return t;
}

cJSON *tk_stats_json_rates(const tk_metrics_snap_t *s, uint64_t now_sec, tk_stats_json_rate_t what)
{
    static const unsigned win[] = {1, 10, 60};
    static const char *const key[] = {"1s", "10s", "60s"};
    cJSON *o = cJSON_CreateObject();
    for (unsigned i = 0; i < 3; i++) {
        tk_metrics_rate_t r;
        tk_metrics_rate(s, now_sec, win[i], &r);
        double x = what == TK_STATS_JSON_REQUESTS   ? r.requests
                   : what == TK_STATS_JSON_ERRORS   ? r.errors
                   : what == TK_STATS_JSON_BYTES_IN ? r.bytes_in
                                                    : r.bytes_out;
        cJSON_AddNumberToObject(o, key[i], x);
    }
    return o;
}

cJSON *tk_stats_json_latency(const tk_metrics_snap_t *s, unsigned flags)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "p50", tk_metrics_percentile(s, 50));
    cJSON_AddNumberToObject(o, "p90", tk_metrics_percentile(s, 90));
    if (flags & TK_STATS_JSON_P95)
        cJSON_AddNumberToObject(o, "p95", tk_metrics_percentile(s, 95));
    cJSON_AddNumberToObject(o, "p99", tk_metrics_percentile(s, 99));
    cJSON_AddNumberToObject(o, "p999", tk_metrics_percentile(s, 99.9));
    cJSON_AddNumberToObject(o, "mean", tk_metrics_mean_us(s));
    return o;
}

cJSON *tk_stats_json_status(const uint64_t st[6])
{
    static const char *const k[6] = {"other", "1xx", "2xx", "3xx", "4xx", "5xx"};
    cJSON *o = cJSON_CreateObject();
    /* "other" last: readers scan the classes in order */
    for (unsigned i = 1; i < 6; i++)
        cJSON_AddNumberToObject(o, k[i], U(st[i]));
    cJSON_AddNumberToObject(o, k[0], U(st[0]));
    return o;
}

cJSON *tk_stats_json_gt_by_state(const tk_metrics_sh_t *m)
{
    cJSON *o = cJSON_CreateObject();
    for (unsigned i = 0; i < TK_GT_NSTATES; i++)
        cJSON_AddNumberToObject(o, tk_gt_state_name((tk_gt_state_t)i), U(m->gt_by_state[i]));
    return o;
}

void tk_stats_json_gt_counters(cJSON *o, const tk_metrics_sh_t *m)
{
    uint64_t total = 0;
    for (unsigned i = 0; i < TK_GT_NSTATES; i++)
        total += m->gt_by_state[i];
    cJSON_AddNumberToObject(o, "threads", U(total));
    cJSON_AddNumberToObject(o, "created", U(m->gt_created));
    cJSON_AddNumberToObject(o, "switches", U(m->gt_switches));
    cJSON_AddNumberToObject(o, "long_runs", U(m->gt_long_runs));
    cJSON_AddNumberToObject(o, "stack_reserved_bytes", U(m->stack_reserved));
    cJSON_AddNumberToObject(o, "stack_resident_bytes", U(m->stack_resident));
    cJSON_AddNumberToObject(o, "stack_max_used_bytes", U(m->stack_max_used));
}

static void add_hist(cJSON *o, const tk_metrics_sh_t *m)
{
    /* non-empty buckets as [upper bound µs (exclusive), count]: the dashboard
     * subtracts two polls to get the percentiles of the last second */
    cJSON *h = cJSON_AddArrayToObject(o, "latency_histogram");
    for (unsigned i = 0; i < TK_METRICS_NBUCKETS; i++) {
        if (!m->hist[i])
            continue;
        uint64_t lo, hi;
        tk_metrics_bucket_bounds(i, &lo, &hi);
        double pair[2] = {hi == UINT64_MAX ? U(lo) * 2 : U(hi), U(m->hist[i])};
        cJSON_AddItemToArray(h, cJSON_CreateDoubleArray(pair, 2));
    }
}

void tk_stats_json_stats_block(cJSON *o, const tk_metrics_snap_t *s, uint64_t now_sec,
                               unsigned flags)
{
    const tk_metrics_sh_t *m = &s->m;
    cJSON_AddNumberToObject(o, "requests_total", U(m->requests));
    cJSON_AddItemToObject(o, "requests_per_second",
                          tk_stats_json_rates(s, now_sec, TK_STATS_JSON_REQUESTS));
    cJSON_AddItemToObject(o, "latency_us", tk_stats_json_latency(s, flags));
    cJSON_AddNumberToObject(o, "errors_total", U(errors_total(m)));
    cJSON_AddItemToObject(o, "errors_per_second",
                          tk_stats_json_rates(s, now_sec, TK_STATS_JSON_ERRORS));
    cJSON *e = cJSON_AddObjectToObject(o, "errors");
    for (unsigned i = 0; i < TK_METRICS_ERR_N; i++)
        cJSON_AddNumberToObject(e, tk_metrics_err_name((tk_metrics_err_t)i), U(m->errors[i]));
    cJSON_AddItemToObject(o, "status", tk_stats_json_status(m->status));
    cJSON_AddNumberToObject(o, "bytes_in_total", U(m->bytes_in));
    cJSON_AddNumberToObject(o, "bytes_out_total", U(m->bytes_out));
    cJSON_AddItemToObject(o, "bytes_in_per_second",
                          tk_stats_json_rates(s, now_sec, TK_STATS_JSON_BYTES_IN));
    cJSON_AddItemToObject(o, "bytes_out_per_second",
                          tk_stats_json_rates(s, now_sec, TK_STATS_JSON_BYTES_OUT));
    cJSON *c = cJSON_AddObjectToObject(o, "connections");
    cJSON_AddNumberToObject(c, "accepted", U(m->conns_accepted));
    cJSON_AddNumberToObject(c, "closed", U(m->conns_closed));
    cJSON_AddNumberToObject(c, "open", U(m->conns_active + m->conns_idle));
    cJSON_AddNumberToObject(c, "active", U(m->conns_active));
    cJSON_AddNumberToObject(c, "idle", U(m->conns_idle));
    cJSON *k = cJSON_AddObjectToObject(o, "cache");
    cJSON_AddNumberToObject(k, "hits", U(m->cache_hits));
    cJSON_AddNumberToObject(k, "misses", U(m->cache_misses));
    cJSON_AddNumberToObject(k, "errors", U(m->cache_errors));
    cJSON_AddNumberToObject(k, "bypasses", U(m->cache_bypasses));
    cJSON_AddNumberToObject(k, "timeouts", U(m->cache_timeouts));
    uint64_t lookups = m->cache_hits + m->cache_misses;
    cJSON_AddNumberToObject(k, "hit_ratio", lookups ? U(m->cache_hits) / U(lookups) : 0.0);
    cJSON_AddNumberToObject(k, "connected", U(m->cache_connected));
    cJSON_AddNumberToObject(k, "latency_us_mean",
                            m->cache_lat_count ? U(m->cache_lat_sum_us) / U(m->cache_lat_count)
                                               : 0.0);
    tk_stats_json_cache_topo(k, &m->cache_topo);
    cJSON *p = cJSON_AddObjectToObject(o, "process");
    cJSON_AddNumberToObject(p, "rss_bytes", U(m->rss_bytes));
    cJSON_AddNumberToObject(p, "cpu_user_s", U(m->cpu_user_ns) / 1e9);
    cJSON_AddNumberToObject(p, "cpu_system_s", U(m->cpu_sys_ns) / 1e9);
    if (flags & TK_STATS_JSON_THREADS) {
        cJSON *t = cJSON_AddObjectToObject(o, "threads");
        cJSON_AddItemToObject(t, "by_state", tk_stats_json_gt_by_state(m));
        tk_stats_json_gt_counters(t, m);
    }
    if (flags & TK_STATS_JSON_HIST)
        add_hist(o, m);
}

cJSON *tk_stats_json_routes(const tk_metrics_sh_t *m)
{
    cJSON *a = cJSON_CreateArray();
    for (unsigned i = 0; i < TK_METRICS_MAX_ROUTES; i++) {
        const tk_metrics_route_sh_t *rt = &m->routes[i];
        if (!rt->name[0])
            continue;
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "route", rt->name);
        cJSON_AddNumberToObject(x, "requests", U(rt->requests));
        cJSON_AddNumberToObject(x, "mean_latency_us",
                                rt->requests ? U(rt->latency_us_sum) / U(rt->requests) : 0.0);
        cJSON_AddItemToObject(x, "status", tk_stats_json_status(rt->status));
        cJSON_AddItemToArray(a, x);
    }
    return a;
}

void tk_stats_json_head(cJSON *o, const tk_shm_header_sh_t *h, uint64_t now_real_ns)
{
    cJSON_AddStringToObject(o, "name", h->name);
    cJSON_AddNumberToObject(o, "master_pid", h->master_pid);
    cJSON_AddNumberToObject(o, "generation", U(h->generation));
    cJSON_AddNumberToObject(
        o, "uptime_s",
        h->created_ns && now_real_ns > h->created_ns ? U(now_real_ns - h->created_ns) / 1e9 : 0.0);
}

void tk_stats_json_worker_head(cJSON *o, unsigned slot, const tk_shm_worker_sh_t *w)
{
    cJSON_AddNumberToObject(o, "slot", slot);
    cJSON_AddNumberToObject(o, "pid", w->pid);
    cJSON_AddNumberToObject(o, "generation", U(w->generation));
    cJSON_AddStringToObject(o, "state", tk_shm_wstate_name((tk_shm_wstate_t)w->state));
}

void tk_stats_json_db(cJSON *o, const tk_broker_sh_t *b)
{
    if (!b) {
        cJSON_AddBoolToObject(o, "configured", 0);
        return;
    }
    tk_broker_stats_t st;
    tk_broker_stats(b, -1, &st);
    cJSON_AddBoolToObject(o, "configured", 1);
    cJSON_AddNumberToObject(o, "max_open", b->max_open);
    cJSON_AddNumberToObject(o, "max_idle", b->max_idle);
    cJSON_AddNumberToObject(o, "open", U(st.open));
    cJSON_AddNumberToObject(o, "in_use", U(st.in_use));
    cJSON_AddNumberToObject(o, "idle", U(st.idle));
    /* live gauges other processes update: one relaxed load each */
    cJSON_AddNumberToObject(o, "free_slots", __atomic_load_n(&b->nfree, __ATOMIC_RELAXED));
    cJSON_AddNumberToObject(o, "waiting", __atomic_load_n(&b->qlen, __ATOMIC_RELAXED));
    cJSON_AddNumberToObject(o, "waiting_high_water", __atomic_load_n(&b->qhwm, __ATOMIC_RELAXED));
    /* queued inside a worker for room on its shared pipelined connections */
    cJSON_AddNumberToObject(o, "waiting_local", __atomic_load_n(&b->lwaiting, __ATOMIC_RELAXED));
    cJSON_AddNumberToObject(o, "waiting_local_high_water",
                            __atomic_load_n(&b->lwhwm, __ATOMIC_RELAXED));
    cJSON_AddNumberToObject(o, "waiting_all_high_water",
                            __atomic_load_n(&b->twhwm, __ATOMIC_RELAXED));
    cJSON_AddNumberToObject(o, "wait_count", U(st.wait_count));
    cJSON_AddNumberToObject(o, "wait_count_local", U(st.wait_count_local));
    cJSON_AddNumberToObject(o, "wait_duration_us", U(st.wait_ns) / 1e3);
    cJSON_AddNumberToObject(o, "max_idle_closed", U(st.max_idle_closed));
    cJSON_AddNumberToObject(o, "max_idle_time_closed", U(st.max_idle_time_closed));
    cJSON_AddNumberToObject(o, "max_lifetime_closed", U(st.max_lifetime_closed));
    cJSON_AddNumberToObject(o, "acquires", U(st.acquires));
    cJSON_AddNumberToObject(o, "acquire_timeouts", U(st.acquire_timeouts));
    cJSON_AddNumberToObject(o, "queue_full", U(st.queue_full));
    cJSON_AddNumberToObject(o, "query_timeouts", U(st.query_timeouts));
    cJSON_AddNumberToObject(o, "connect_errors", U(st.connect_errors));
    cJSON_AddNumberToObject(o, "errors_closed", U(st.errors_closed));
    cJSON_AddNumberToObject(o, "handoffs_local", U(st.handoffs_local));
    cJSON_AddNumberToObject(o, "handoffs_remote", U(st.handoffs_remote));
    cJSON *h = cJSON_AddArrayToObject(o, "wait_histogram");
    for (int i = 0; i < TK_BROKER_HIST_BUCKETS; i++) {
        cJSON *x = cJSON_CreateObject();
        uint64_t le = tk_broker_hist_bound_us(i);
        if (le == UINT64_MAX)
            cJSON_AddStringToObject(x, "le_us", "+Inf");
        else
            cJSON_AddNumberToObject(x, "le_us", U(le));
        cJSON_AddNumberToObject(x, "count", U(st.wait_hist[i]));
        cJSON_AddItemToArray(h, x);
    }
}

void tk_stats_json_db_worker(cJSON *o, const tk_broker_sh_t *b, unsigned slot)
{
    tk_broker_stats_t ws;
    tk_broker_stats(b, (int)slot, &ws);
    cJSON_AddNumberToObject(o, "open", U(ws.open));
    cJSON_AddNumberToObject(o, "in_use", U(ws.in_use));
    cJSON_AddNumberToObject(o, "idle", U(ws.idle));
    cJSON_AddNumberToObject(o, "waiting",
                            __atomic_load_n(&b->workers[slot].nwaiting, __ATOMIC_RELAXED));
    cJSON_AddNumberToObject(o, "waiting_local", U(ws.local_waiting));
    cJSON_AddNumberToObject(o, "wait_count", U(ws.wait_count));
    cJSON_AddNumberToObject(o, "wait_count_local", U(ws.wait_count_local));
    cJSON_AddNumberToObject(o, "wait_duration_us", U(ws.wait_ns) / 1e3);
    cJSON_AddNumberToObject(o, "acquires", U(ws.acquires));
    cJSON_AddNumberToObject(o, "connect_errors", U(ws.connect_errors));
    /* counts only: the bounds are the total's wait_histogram le_us */
    cJSON *h = cJSON_AddArrayToObject(o, "wait_histogram_counts");
    for (int i = 0; i < TK_BROKER_HIST_BUCKETS; i++)
        cJSON_AddItemToArray(h, cJSON_CreateNumber(U(ws.wait_hist[i])));
}

void tk_stats_json_db_backends(cJSON *o, tk_shm_t *shm, uint64_t now_mono_ns)
{
    const tk_dbview_sh_t *v = tk_shm_dbview(shm);
    unsigned n = tk_dbview_count(v);
    if (n == 0)
        return;
    cJSON_AddNumberToObject(o, "probe_lease_pid", __atomic_load_n(&v->lease_pid, __ATOMIC_RELAXED));
    cJSON_AddNumberToObject(o, "replica_max_lag_ms", U(v->max_lag_ms));
    cJSON_AddStringToObject(o, "read_from", v->read_from_primary ? "primary" : "replicas");
    cJSON *a = cJSON_AddArrayToObject(o, "backends");
    for (unsigned i = 0; i < n; i++) {
        const tk_dbview_be_sh_t *b = &v->be[i];
        const tk_broker_sh_t *br = tk_shm_broker_be(shm, i);
        cJSON *x = cJSON_CreateObject();
        char name[TK_DBVIEW_NAME];
        memcpy(name, b->name, sizeof(name));
        name[sizeof(name) - 1] = '\0'; /* others write it: never trust its terminator */
        cJSON_AddNumberToObject(x, "index", i);
        cJSON_AddStringToObject(x, "role", i == 0 ? "primary" : "replica");
        cJSON_AddStringToObject(x, "name", name);
        cJSON_AddStringToObject(
            x, "health", tk_dbview_health_name(__atomic_load_n(&b->health, __ATOMIC_RELAXED)));
        cJSON_AddNumberToObject(x, "lag_ms", U(__atomic_load_n(&b->lag_ms, __ATOMIC_RELAXED)));
        uint64_t lsn = __atomic_load_n(&b->lsn, __ATOMIC_RELAXED);
        char l[24];
        snprintf(l, sizeof(l), "%X/%X", (unsigned)(lsn >> 32), (unsigned)(lsn & 0xffffffffu));
        cJSON_AddStringToObject(x, "lsn", l);
        cJSON_AddNumberToObject(x, "timeline", __atomic_load_n(&b->timeline, __ATOMIC_RELAXED));
        cJSON_AddBoolToObject(x, "in_recovery",
                              __atomic_load_n(&b->in_recovery, __ATOMIC_RELAXED) != 0);
        uint64_t p = __atomic_load_n(&b->probed_ns, __ATOMIC_RELAXED);
        cJSON_AddNumberToObject(x, "probe_age_ms",
                                p && now_mono_ns > p ? U((now_mono_ns - p) / 1000000u) : -1);
        cJSON_AddNumberToObject(x, "probe_errors",
                                U(__atomic_load_n(&b->probe_errors, __ATOMIC_RELAXED)));
        cJSON_AddNumberToObject(x, "inflight", U(__atomic_load_n(&b->inflight, __ATOMIC_RELAXED)));
        cJSON_AddNumberToObject(x, "routed", U(__atomic_load_n(&b->routed, __ATOMIC_RELAXED)));
        cJSON_AddNumberToObject(x, "fallbacks",
                                U(__atomic_load_n(&b->fallbacks, __ATOMIC_RELAXED)));
        if (br && br->magic == TK_BROKER_MAGIC && br->size == sizeof(tk_broker_sh_t)) {
            tk_broker_stats_t st;
            tk_broker_stats(br, -1, &st);
            cJSON_AddNumberToObject(x, "max_open", br->max_open);
            cJSON_AddNumberToObject(x, "open", U(st.open));
            cJSON_AddNumberToObject(x, "in_use", U(st.in_use));
            cJSON_AddNumberToObject(x, "idle", U(st.idle));
            cJSON_AddNumberToObject(x, "waiting", __atomic_load_n(&br->qlen, __ATOMIC_RELAXED));
            cJSON_AddNumberToObject(x, "acquires", U(st.acquires));
            cJSON_AddNumberToObject(x, "acquire_timeouts", U(st.acquire_timeouts));
            cJSON_AddNumberToObject(x, "connect_errors", U(st.connect_errors));
        }
        cJSON_AddItemToArray(a, x);
    }
}

/* A string from shared memory, bounded whatever its terminator. */
static cJSON *topo_str(const char *s, size_t cap)
{
    char buf[TK_CACHE_NODE_ADDR];
    size_t n = strnlen(s, cap < sizeof(buf) ? cap : sizeof(buf) - 1);
    memcpy(buf, s, n);
    buf[n] = '\0';
    return cJSON_CreateString(buf);
}

void tk_stats_json_cache_topo(cJSON *k, const tk_cache_topo_t *t)
{
    cJSON_AddItemToObject(k, "master", topo_str(t->master, sizeof(t->master)));
    cJSON_AddNumberToObject(k, "sentinels", t->sentinels);
    cJSON_AddStringToObject(k, "read_from", t->read_replicas ? "replicas" : "master");
    cJSON_AddNumberToObject(k, "failovers", U(t->failovers));
    cJSON_AddNumberToObject(k, "switch_messages", U(t->switch_messages));
    cJSON_AddNumberToObject(k, "sentinel_queries", U(t->sentinel_queries));
    cJSON_AddNumberToObject(k, "sentinel_errors", U(t->sentinel_errors));
    cJSON_AddNumberToObject(k, "unknown_master", U(t->unknown_master));
    cJSON_AddNumberToObject(k, "role_mismatches", U(t->role_mismatches));
    cJSON_AddNumberToObject(k, "replica_reads", U(t->replica_reads));
    cJSON *w = cJSON_AddObjectToObject(k, "invalidation_wait");
    cJSON_AddNumberToObject(w, "waits", U(t->inval_waits));
    cJSON_AddNumberToObject(w, "short", U(t->inval_wait_short));
    cJSON_AddNumberToObject(w, "us_mean",
                            t->inval_waits ? U(t->inval_wait_us_sum) / U(t->inval_waits) : 0.0);
    cJSON_AddNumberToObject(w, "us_max", U(t->inval_wait_us_max));
    cJSON *a = cJSON_AddArrayToObject(k, "nodes");
    cJSON *reading = cJSON_AddArrayToObject(k, "reading_from");
    for (unsigned i = 0; i < TK_CACHE_MAX_NODES; i++) {
        const tk_cache_node_stats_t *n = &t->nodes[i];
        if (n->addr[0] == '\0')
            continue;
        cJSON *x = cJSON_CreateObject();
        cJSON_AddItemToObject(x, "addr", topo_str(n->addr, sizeof(n->addr)));
        cJSON_AddStringToObject(x, "role", tk_cache_role_name(n->role));
        cJSON_AddNumberToObject(x, "reading", n->reading);
        cJSON_AddNumberToObject(x, "commands", U(n->commands));
        cJSON_AddNumberToObject(x, "errors", U(n->errors));
        cJSON_AddNumberToObject(x, "latency_us_mean",
                                n->lat_count ? U(n->lat_sum_us) / U(n->lat_count) : 0.0);
        cJSON_AddItemToArray(a, x);
        if (n->reading)
            cJSON_AddItemToArray(reading, topo_str(n->addr, sizeof(n->addr)));
    }
}
