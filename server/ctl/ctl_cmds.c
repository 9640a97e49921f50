/* ctl_cmds.c: the tenkctl commands status, stats, threads, db (views of a
 * snapshot of the segment), reload and stop (signal the master whose pid the
 * segment records and wait for the outcome); `top` is in ctl_top.c.
 *
 * --json output (stable: fields are only ever added). Rates are per second over
 * the last 1/10/60 complete seconds; latencies in microseconds, from the
 * cumulative histogram (log-linear buckets, about 3% resolution).
 *   stats:   name, master_pid, generation, uptime_s, consistent, requests_total,
 *            requests_per_second{1s,10s,60s}, latency_us{p50,p90,p99,p999,mean},
 *            errors_total, errors_per_second{..}, errors{parse,limit,timeout,5xx},
 *            status{1xx..5xx,other}, bytes_in_total, bytes_out_total,
 *            bytes_in_per_second{..}, bytes_out_per_second{..},
 *            connections{accepted,closed,open,active,idle},
 *            cache{hits,misses,errors,bypasses,timeouts,hit_ratio,connected,latency_us_mean},
 *            process{rss_bytes,cpu_user_s,cpu_system_s},
 *            threads{by_state{STATE:n},threads,created,switches,long_runs,
 *            stack_reserved_bytes,stack_resident_bytes} (as `threads --json`; a dead
 *            worker's gauges are zeroed when it is reaped, so the totals are the live ones),
 *            routes[{route,requests,mean_latency_us,status}],
 *            workers[{slot,pid,generation,state, + the same fields as the totals}]
 *   status:  name, master_pid, generation, uptime_s, conf_path, workers_configured,
 *            workers_running, stopping, layout_version, workers[{slot,pid,generation,
 *            state,index,uptime_s,restarts,last_exit,heartbeat_age_s,accepting}]
 *   threads: total{STATE:n}, percent{STATE:%}, threads, created, switches, long_runs,
 *            stack_reserved_bytes, stack_resident_bytes, stack_max_used_bytes (0 unless
 *            runtime.stack_paint), workers[{.., by_state{..}}]
 *   db:      configured, max_open, max_idle, open, in_use, idle, free_slots, waiting,
 *            waiting_high_water, wait_count, wait_duration_us, *_closed, acquires,
 *            acquire_timeouts, queue_full, query_timeouts, connect_errors,
 *            handoffs_local, handoffs_remote, wait_histogram[{le_us,count}], workers[..]
 *            (all of these: the primary's broker); probe_lease_pid, replica_max_lag_ms,
 *            read_from, backends[{index,role,name,health,lag_ms,lsn,timeline,in_recovery,
 *            probe_age_ms,probe_errors,inflight,routed,fallbacks,max_open,open,in_use,idle,
 *            waiting,acquires,acquire_timeouts,connect_errors}] (the primary, then each replica)
 *   reload:  ok, generation, workers_running, workers_configured (or ok=false, error)
 *   stop:    ok, master_pid, seconds
 * Totals include the counters of dead worker slots, so they never go down. */
#include "config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl/ctl.h"
#include "shm/abi.h"
#include "shm/broker.h"
#include "shm/metrics.h"
#include "shm/segment.h"
#include "shm/stats_json.h"
#include "shm/view.h"

/* --- status ------------------------------------------------------------------------ */

int tk_ctl_cmd_status(tk_view_t *v)
{
    char b1[32], b2[32], b3[32];
    if (tk_ctl_opt.json) {
        cJSON *o = cJSON_CreateObject();
        tk_ctl_json_head(o, v);
        cJSON_AddStringToObject(o, "conf_path", v->h.conf_path);
        cJSON_AddNumberToObject(o, "workers_configured", v->h.workers);
        cJSON_AddNumberToObject(o, "workers_running", tk_view_count_state(v, TK_SHM_W_RUNNING, 1));
        cJSON_AddBoolToObject(o, "stopping", v->h.stopping != 0);
        cJSON_AddNumberToObject(o, "layout_version", v->h.layout_version);
        cJSON *a = cJSON_AddArrayToObject(o, "workers");
        for (unsigned i = 0; i < v->nw; i++) {
            tk_view_worker_t *w = &v->w[i];
            cJSON *x = cJSON_CreateObject();
            tk_ctl_json_worker_head(x, w);
            cJSON_AddNumberToObject(x, "index", w->w.index);
            cJSON_AddNumberToObject(
                x, "uptime_s",
                tk_view_live_state(w->w.state) ? tk_view_uptime_s(v, w->w.start_ns) : 0);
            cJSON_AddNumberToObject(x, "restarts", w->w.respawns);
            if (w->w.last_status < 0)
                cJSON_AddNullToObject(x, "last_exit");
            else
                cJSON_AddStringToObject(x, "last_exit",
                                        tk_ctl_fmt_status(w->w.last_status, b1, sizeof(b1)));
            uint64_t hb = w->snap->m.live.heartbeat_ns;
            cJSON_AddNumberToObject(x, "heartbeat_age_s",
                                    hb && v->now_mono_ns > hb ? (double)(v->now_mono_ns - hb) / 1e9
                                                              : 0);
            cJSON_AddBoolToObject(x, "accepting", w->snap->m.live.accepting != 0);
            cJSON_AddItemToArray(a, x);
        }
        tk_ctl_json_print(o);
        return CTL_OK;
    }
    printf("%stenk '%s'%s  master pid %d  up %s  generation %llu%s\n", BOLD, v->h.name, RST,
           (int)v->h.master_pid,
           tk_ctl_fmt_dur(tk_view_uptime_s(v, v->h.created_ns), b1, sizeof(b1)),
           (unsigned long long)v->h.generation, v->h.stopping ? "  (stopping)" : "");
    printf("%-10s%s\n", "config", v->h.conf_path[0] ? v->h.conf_path : "(defaults)");
    printf("%-10s%u configured, %u running\n\n", "workers", v->h.workers,
           tk_view_count_state(v, TK_SHM_W_RUNNING, 1));
    printf("%s%-5s %-8s %-4s %-9s %-8s %-9s %-10s %-10s %s%s\n", BOLD, "SLOT", "PID", "GEN",
           "STATE", "UPTIME", "RESTARTS", "LAST EXIT", "HEARTBEAT", "ACCEPTING", RST);
    for (unsigned i = 0; i < v->nw; i++) {
        tk_view_worker_t *w = &v->w[i];
        int live = tk_view_live_state(w->w.state);
        uint64_t hb = w->snap->m.live.heartbeat_ns;
        char hbs[32] = "-";
        if (live && hb && v->now_mono_ns >= hb)
            snprintf(hbs, sizeof(hbs), "%.1fs ago", (double)(v->now_mono_ns - hb) / 1e9);
        printf("%-5u %-8d %-4llu %s%-9s%s %-8s %-9u %-10s %-10s %s\n", w->slot, (int)w->w.pid,
               (unsigned long long)w->w.generation, tk_ctl_state_color(w->w.state),
               tk_shm_wstate_name((tk_shm_wstate_t)w->w.state), RST,
               live ? tk_ctl_fmt_dur(tk_view_uptime_s(v, w->w.start_ns), b2, sizeof(b2)) : "-",
               w->w.respawns, tk_ctl_fmt_status(w->w.last_status, b3, sizeof(b3)), hbs,
               live ? (w->snap->m.live.accepting ? "yes" : "no") : "-");
    }
    return CTL_OK;
}

/* --- stats -------------------------------------------------------------------------- */

/* The cache tier: master, nodes read from, failovers, each node's commands,
 * errors and latency. Strings come from shared memory: printed bounded. */
static void print_cache_topo(const tk_cache_topo_t *t)
{
    int any = 0;
    for (unsigned i = 0; i < TK_CACHE_MAX_NODES; i++)
        any |= t->nodes[i].addr[0] != '\0';
    if (!any && !t->sentinels)
        return;
    printf("%-14s master %.*s  read from %s", "redis", TK_CACHE_NODE_ADDR - 1,
           t->master[0] ? t->master : "(none)", t->read_replicas ? "replicas" : "master");
    if (t->sentinels)
        printf("  sentinels %u  failovers %llu  +switch-master %llu  sentinel errors %llu",
               t->sentinels, (unsigned long long)t->failovers,
               (unsigned long long)t->switch_messages, (unsigned long long)t->sentinel_errors);
    if (t->role_mismatches || t->unknown_master)
        printf("  role mismatches %llu  unknown master %llu",
               (unsigned long long)t->role_mismatches, (unsigned long long)t->unknown_master);
    printf("\n");
    if (t->inval_waits)
        printf("%-14s %llu waits, %llu short, %.0f us mean, %llu us max\n", "  inval. WAIT",
               (unsigned long long)t->inval_waits, (unsigned long long)t->inval_wait_short,
               (double)t->inval_wait_us_sum / (double)t->inval_waits,
               (unsigned long long)t->inval_wait_us_max);
    for (unsigned i = 0; i < TK_CACHE_MAX_NODES; i++) {
        const tk_cache_node_stats_t *n = &t->nodes[i];
        if (n->addr[0] == '\0')
            continue;
        printf("  node %-22.*s %-8s %s  commands %llu  errors %llu  %.0f us mean\n",
               TK_CACHE_NODE_ADDR - 1, n->addr, tk_cache_role_name(n->role),
               n->reading ? "reading" : "       ", (unsigned long long)n->commands,
               (unsigned long long)n->errors,
               n->lat_count ? (double)n->lat_sum_us / (double)n->lat_count : 0.0);
    }
}

int tk_ctl_cmd_stats(tk_view_t *v)
{
    const tk_metrics_snap_t *t = v->total;
    const tk_metrics_sh_t *m = &t->m;
    if (tk_ctl_opt.json) {
        cJSON *o = cJSON_CreateObject();
        tk_ctl_json_head(o, v);
        /* false if a worker died mid-update: its slot may be off by one request */
        cJSON_AddBoolToObject(o, "consistent", !t->torn);
        /* green threads by state too: scripts/bench plots them once a second */
        tk_stats_json_stats_block(o, t, v->now_sec, TK_STATS_JSON_THREADS);
        cJSON_AddItemToObject(o, "routes", tk_stats_json_routes(m));
        cJSON *a = cJSON_AddArrayToObject(o, "workers");
        for (unsigned i = 0; i < v->nw; i++) {
            cJSON *x = cJSON_CreateObject();
            tk_ctl_json_worker_head(x, &v->w[i]);
            tk_stats_json_stats_block(x, v->w[i].snap, v->now_sec, TK_STATS_JSON_THREADS);
            cJSON_AddItemToArray(a, x);
        }
        tk_ctl_json_print(o);
        return CTL_OK;
    }

    char b[8][32];
    tk_metrics_rate_t r[3];
    static const unsigned win[] = {1, 10, 60};
    for (int i = 0; i < 3; i++)
        tk_metrics_rate(t, v->now_sec, win[i], &r[i]);
    printf("%stenk '%s'%s  master pid %d  up %s  generation %llu  %u workers running\n\n", BOLD,
           v->h.name, RST, (int)v->h.master_pid,
           tk_ctl_fmt_dur(tk_view_uptime_s(v, v->h.created_ns), b[0], 32),
           (unsigned long long)v->h.generation, tk_view_count_state(v, TK_SHM_W_RUNNING, 0));
    printf("%s%-14s %12s %12s %12s%s\n", BOLD, "", "1s", "10s", "60s", RST);
    printf("%-14s %12s %12s %12s\n", "requests/s", tk_ctl_fmt_rate(r[0].requests, b[0], 32),
           tk_ctl_fmt_rate(r[1].requests, b[1], 32), tk_ctl_fmt_rate(r[2].requests, b[2], 32));
    printf("%-14s %12s %12s %12s\n", "errors/s", tk_ctl_fmt_rate(r[0].errors, b[0], 32),
           tk_ctl_fmt_rate(r[1].errors, b[1], 32), tk_ctl_fmt_rate(r[2].errors, b[2], 32));
    printf("%-14s %12s %12s %12s\n", "bytes in/s", tk_ctl_fmt_bytes(r[0].bytes_in, b[0], 32),
           tk_ctl_fmt_bytes(r[1].bytes_in, b[1], 32), tk_ctl_fmt_bytes(r[2].bytes_in, b[2], 32));
    printf("%-14s %12s %12s %12s\n\n", "bytes out/s", tk_ctl_fmt_bytes(r[0].bytes_out, b[0], 32),
           tk_ctl_fmt_bytes(r[1].bytes_out, b[1], 32), tk_ctl_fmt_bytes(r[2].bytes_out, b[2], 32));

    uint64_t et = tk_ctl_errors_total(m);
    printf("%-14s %llu  (errors %llu, %.2f%%)\n", "requests", (unsigned long long)m->requests,
           (unsigned long long)et, tk_ctl_pct((double)et, (double)m->requests));
    printf("%-14s p50 %s  p90 %s  p99 %s  p99.9 %s  mean %s\n", "latency",
           tk_ctl_fmt_us(tk_metrics_percentile(t, 50), b[0], 32),
           tk_ctl_fmt_us(tk_metrics_percentile(t, 90), b[1], 32),
           tk_ctl_fmt_us(tk_metrics_percentile(t, 99), b[2], 32),
           tk_ctl_fmt_us(tk_metrics_percentile(t, 99.9), b[3], 32),
           tk_ctl_fmt_us(tk_metrics_mean_us(t), b[4], 32));
    printf("%-14s 1xx %llu  2xx %llu  3xx %llu  4xx %llu  5xx %llu  other %llu\n", "status",
           (unsigned long long)m->status[1], (unsigned long long)m->status[2],
           (unsigned long long)m->status[3], (unsigned long long)m->status[4],
           (unsigned long long)m->status[5], (unsigned long long)m->status[0]);
    printf("%-14s", "errors");
    for (unsigned i = 0; i < TK_METRICS_ERR_N; i++)
        printf(" %s %llu%s", tk_metrics_err_name((tk_metrics_err_t)i),
               (unsigned long long)m->errors[i], i + 1 < TK_METRICS_ERR_N ? " " : "");
    printf("\n%-14s open %llu (active %llu, idle %llu)  accepted %llu  closed %llu\n",
           "connections", (unsigned long long)(m->conns_active + m->conns_idle),
           (unsigned long long)m->conns_active, (unsigned long long)m->conns_idle,
           (unsigned long long)m->conns_accepted, (unsigned long long)m->conns_closed);
    printf("%-14s in %s  out %s\n", "bytes", tk_ctl_fmt_bytes((double)m->bytes_in, b[0], 32),
           tk_ctl_fmt_bytes((double)m->bytes_out, b[1], 32));
    /* the states with threads in them; `tenkctl threads` has the full table */
    printf("%-14s %llu", "green threads", (unsigned long long)tk_ctl_gt_total(m));
    for (unsigned s = 0, n = 0; s < TK_GT_NSTATES; s++)
        if (m->gt_by_state[s])
            printf("%s%s %llu", n++ ? ", " : " (", tk_gt_state_name((tk_gt_state_t)s),
                   (unsigned long long)m->gt_by_state[s]);
    printf("%s\n", tk_ctl_gt_total(m) ? ")" : "");
    if (m->cache_hits + m->cache_misses + m->cache_errors + m->cache_bypasses)
        printf("%-14s hits %llu  misses %llu  errors %llu  bypasses %llu  (hit rate %.1f%%, "
               "redis %.0f us mean)\n",
               "cache", (unsigned long long)m->cache_hits, (unsigned long long)m->cache_misses,
               (unsigned long long)m->cache_errors, (unsigned long long)m->cache_bypasses,
               tk_ctl_pct((double)m->cache_hits, (double)(m->cache_hits + m->cache_misses)),
               m->cache_lat_count ? (double)m->cache_lat_sum_us / m->cache_lat_count : 0.0);
    print_cache_topo(&m->cache_topo);

    printf("\n%s%-5s %-8s %-9s %12s %10s %9s %9s %9s %8s %6s%s\n", BOLD, "SLOT", "PID", "STATE",
           "REQUESTS", "REQ/S 10s", "P50", "P99", "P99.9", "ERRORS", "CONNS", RST);
    for (unsigned i = 0; i < v->nw; i++) {
        tk_view_worker_t *w = &v->w[i];
        const tk_metrics_sh_t *wm = &w->snap->m;
        tk_metrics_rate_t wr;
        tk_metrics_rate(w->snap, v->now_sec, 10, &wr);
        printf("%-5u %-8d %s%-9s%s %12llu %10s %9s %9s %9s %8llu %6llu\n", w->slot, (int)w->w.pid,
               tk_ctl_state_color(w->w.state), tk_shm_wstate_name((tk_shm_wstate_t)w->w.state), RST,
               (unsigned long long)wm->requests, tk_ctl_fmt_rate(wr.requests, b[0], 32),
               tk_ctl_fmt_us(tk_metrics_percentile(w->snap, 50), b[1], 32),
               tk_ctl_fmt_us(tk_metrics_percentile(w->snap, 99), b[2], 32),
               tk_ctl_fmt_us(tk_metrics_percentile(w->snap, 99.9), b[3], 32),
               (unsigned long long)tk_ctl_errors_total(wm),
               (unsigned long long)(wm->conns_active + wm->conns_idle));
    }

    int any = 0;
    for (unsigned i = 0; i < TK_METRICS_MAX_ROUTES; i++) {
        const tk_metrics_route_sh_t *rt = &m->routes[i];
        if (!rt->name[0] || !rt->requests) /* --json lists them all */
            continue;
        if (!any++)
            printf("\n%s%-32s %12s %10s %10s %8s %8s%s\n", BOLD, "ROUTE", "REQUESTS", "MEAN", "2xx",
                   "4xx", "5xx", RST);
        printf(
            "%-32.32s %12llu %10s %10llu %8llu %8llu\n", rt->name, (unsigned long long)rt->requests,
            tk_ctl_fmt_us(rt->requests ? (double)rt->latency_us_sum / rt->requests : 0, b[0], 32),
            (unsigned long long)rt->status[2], (unsigned long long)rt->status[4],
            (unsigned long long)rt->status[5]);
    }
    return CTL_OK;
}

/* --- threads ------------------------------------------------------------------------ */

int tk_ctl_cmd_threads(tk_view_t *v)
{
    tk_metrics_snap_t *live = tk_ctl_xcalloc(1, sizeof(*live));
    unsigned nlive = 0;
    tk_view_worker_t **lw = tk_ctl_xcalloc(v->nw + 1, sizeof(*lw));
    for (unsigned i = 0; i < v->nw; i++)
        if (tk_view_live_state(v->w[i].w.state)) {
            lw[nlive++] = &v->w[i];
            tk_metrics_merge(live, v->w[i].snap);
        }
    const tk_metrics_sh_t *t = &live->m;
    uint64_t total = tk_ctl_gt_total(t);

    if (tk_ctl_opt.json) {
        cJSON *o = cJSON_CreateObject();
        tk_ctl_json_head(o, v);
        cJSON *tt = cJSON_AddObjectToObject(o, "total");
        cJSON *pp = cJSON_AddObjectToObject(o, "percent");
        for (unsigned s = 0; s < TK_GT_NSTATES; s++) {
            const char *n = tk_gt_state_name((tk_gt_state_t)s);
            cJSON_AddNumberToObject(tt, n, (double)t->gt_by_state[s]);
            cJSON_AddNumberToObject(pp, n, tk_ctl_pct((double)t->gt_by_state[s], (double)total));
        }
        tk_stats_json_gt_counters(o, t);
        cJSON *a = cJSON_AddArrayToObject(o, "workers");
        for (unsigned i = 0; i < nlive; i++) {
            const tk_metrics_sh_t *m = &lw[i]->snap->m;
            cJSON *x = cJSON_CreateObject();
            tk_ctl_json_worker_head(x, lw[i]);
            cJSON_AddItemToObject(x, "by_state", tk_stats_json_gt_by_state(m));
            tk_stats_json_gt_counters(x, m);
            cJSON_AddItemToArray(a, x);
        }
        tk_ctl_json_print(o);
        free(lw);
        free(live);
        return CTL_OK;
    }

    char b[2][32], hdr[32];
    printf("%sgreen threads of tenk '%s' by state%s (%u live workers)\n\n", BOLD, v->h.name, RST,
           nlive);
    printf("%s%-14s", BOLD, "STATE");
    for (unsigned i = 0; i < nlive; i++) {
        snprintf(hdr, sizeof(hdr), "w%u:%d", lw[i]->slot, (int)lw[i]->w.pid);
        printf(" %12s", hdr);
    }
    printf(" %12s %8s%s\n", "TOTAL", "%", RST);
    for (unsigned s = 0; s <= TK_GT_NSTATES; s++) {
        int sum = s == TK_GT_NSTATES;
        printf("%s%-14s", sum ? BOLD : "", sum ? "total" : tk_gt_state_name((tk_gt_state_t)s));
        for (unsigned i = 0; i < nlive; i++) {
            const tk_metrics_sh_t *m = &lw[i]->snap->m;
            printf(" %12llu", (unsigned long long)(sum ? tk_ctl_gt_total(m) : m->gt_by_state[s]));
        }
        uint64_t n = sum ? total : t->gt_by_state[s];
        printf(" %12llu %7.1f%%%s\n", (unsigned long long)n, tk_ctl_pct((double)n, (double)total),
               sum ? RST : "");
    }
    printf("\n");
    static const struct {
        const char *label;
        size_t off;
        int bytes;
    } rows[] = {
        {"created", offsetof(tk_metrics_sh_t, gt_created), 0},
        {"switches", offsetof(tk_metrics_sh_t, gt_switches), 0},
        {"long runs", offsetof(tk_metrics_sh_t, gt_long_runs), 0},
        {"stack reserved", offsetof(tk_metrics_sh_t, stack_reserved), 1},
        {"stack resident", offsetof(tk_metrics_sh_t, stack_resident), 1},
        {"stack max used", offsetof(tk_metrics_sh_t, stack_max_used), 1}, /* stack_paint */
    };
    for (unsigned k = 0; k < sizeof(rows) / sizeof(rows[0]); k++) {
        printf("%-14s", rows[k].label);
        for (unsigned i = 0; i < nlive; i++) {
            uint64_t x = *(const uint64_t *)((const char *)&lw[i]->snap->m + rows[k].off);
            if (rows[k].bytes)
                printf(" %12s", tk_ctl_fmt_bytes((double)x, b[0], 32));
            else
                printf(" %12llu", (unsigned long long)x);
        }
        uint64_t x = *(const uint64_t *)((const char *)t + rows[k].off);
        if (rows[k].bytes)
            printf(" %12s\n", tk_ctl_fmt_bytes((double)x, b[1], 32));
        else
            printf(" %12llu\n", (unsigned long long)x);
    }
    free(lw);
    free(live);
    return CTL_OK;
}

/* --- db ----------------------------------------------------------------------------- */

/* A worker attaches to the broker only when db.conninfo is set: a table no
 * worker ever attached to means the database is not configured. */
int tk_ctl_db_configured(const tk_broker_sh_t *b)
{
    if (!b)
        return 0;
    for (unsigned i = 0; i < TK_BROKER_MAX_WORKERS; i++)
        if (__atomic_load_n(&b->workers[i].gen, __ATOMIC_RELAXED) != 0)
            return 1;
    return 0;
}

/* One row per backend: role, health, lag, and its own broker's budget. Everything read from
 * the segment is bounded: the count, the name's length, the health's name. */
static void ctl_db_backends(tk_view_t *v)
{
    const tk_dbview_sh_t *dv = tk_shm_dbview(v->shm);
    unsigned n = tk_dbview_count(dv);
    if (n == 0)
        return;
    printf("\n%s%-3s %-8s %-22s %-10s %8s %-14s %4s %6s %6s %6s %6s %9s %9s%s\n", BOLD, "#", "ROLE",
           "BACKEND", "HEALTH", "LAG", "LSN", "TLI", "MAX", "OPEN", "INUSE", "QUEUE", "ROUTED",
           "FALLBACK", RST);
    for (unsigned i = 0; i < n; i++) {
        const tk_dbview_be_sh_t *b = &dv->be[i];
        const tk_broker_sh_t *br = tk_shm_broker_be(v->shm, i);
        char name[TK_DBVIEW_NAME], lag[24], lsn[24];
        memcpy(name, b->name, sizeof(name));
        name[sizeof(name) - 1] = '\0';
        uint64_t l = __atomic_load_n(&b->lsn, __ATOMIC_RELAXED);
        snprintf(lsn, sizeof(lsn), "%X/%X", (unsigned)(l >> 32), (unsigned)(l & 0xffffffffu));
        if (i == 0)
            snprintf(lag, sizeof(lag), "-");
        else
            snprintf(lag, sizeof(lag), "%llums",
                     (unsigned long long)__atomic_load_n(&b->lag_ms, __ATOMIC_RELAXED));
        tk_broker_stats_t st = {0};
        unsigned max = 0, q = 0;
        if (br && br->magic == TK_BROKER_MAGIC && br->size == sizeof(tk_broker_sh_t)) {
            tk_broker_stats(br, -1, &st);
            max = br->max_open;
            q = __atomic_load_n(&br->qlen, __ATOMIC_RELAXED);
        }
        printf("%-3u %-8s %-22.22s %-10s %8s %-14s %4u %6u %6llu %6llu %6u %9llu %9llu\n", i,
               i == 0 ? "primary" : "replica", name,
               tk_dbview_health_name(__atomic_load_n(&b->health, __ATOMIC_RELAXED)), lag, lsn,
               __atomic_load_n(&b->timeline, __ATOMIC_RELAXED), max, (unsigned long long)st.open,
               (unsigned long long)st.in_use, q,
               (unsigned long long)__atomic_load_n(&b->routed, __ATOMIC_RELAXED),
               (unsigned long long)__atomic_load_n(&b->fallbacks, __ATOMIC_RELAXED));
    }
}

int tk_ctl_cmd_db(tk_view_t *v)
{
    const tk_broker_sh_t *b = tk_view_broker(v->shm);
    if (!tk_ctl_db_configured(b)) {
        if (tk_ctl_opt.json) {
            cJSON *o = cJSON_CreateObject();
            tk_ctl_json_head(o, v);
            tk_stats_json_db(o, NULL);
            tk_ctl_json_print(o);
        } else
            printf("database: not configured\n");
        return CTL_OK;
    }
    tk_broker_stats_t st;
    tk_broker_stats(b, -1, &st);
    uint32_t max_open = b->max_open, nfree = b->nfree, qlen = b->qlen, qhwm = b->qhwm;
    double avg_wait_us = st.wait_count ? (double)st.wait_ns / 1e3 / (double)st.wait_count : 0;

    if (tk_ctl_opt.json) {
        cJSON *o = cJSON_CreateObject();
        tk_ctl_json_head(o, v);
        tk_stats_json_db(o, b);
        tk_stats_json_db_backends(o, v->shm, v->now_mono_ns);
        cJSON *a = cJSON_AddArrayToObject(o, "workers");
        for (unsigned i = 0; i < v->nw; i++) {
            tk_view_worker_t *w = &v->w[i];
            if (!tk_view_live_state(w->w.state) || w->slot >= TK_BROKER_MAX_WORKERS)
                continue;
            cJSON *x = cJSON_CreateObject();
            tk_ctl_json_worker_head(x, w);
            tk_stats_json_db_worker(x, b, w->slot);
            cJSON_AddItemToArray(a, x);
        }
        tk_ctl_json_print(o);
        return CTL_OK;
    }

    char b1[32], b2[32], b3[32];
    printf("%sdatabase pool of tenk '%s'%s  (db.max_open %u, db.max_idle %u)\n\n", BOLD, v->h.name,
           RST, max_open, b->max_idle);
    printf("%-16s open %llu  in use %llu  idle %llu  free slots %u\n", "connections",
           (unsigned long long)st.open, (unsigned long long)st.in_use, (unsigned long long)st.idle,
           nfree);
    /* broker: the cross-worker queue; local: inside a worker, for room on its
     * shared pipelined connections (both are waits for a connection) */
    printf("%-16s broker %u now (high-water %u)  local %u now (high-water %u)  all high-water %u\n",
           "waiting", qlen, qhwm, __atomic_load_n(&b->lwaiting, __ATOMIC_RELAXED),
           __atomic_load_n(&b->lwhwm, __ATOMIC_RELAXED),
           __atomic_load_n(&b->twhwm, __ATOMIC_RELAXED));
    uint64_t p99 = tk_broker_hist_quantile_us(st.wait_hist, 0.99);
    printf("%-16s %llu waits (%llu local), %s in total, %s on average, p99 <= %s\n", "wait",
           (unsigned long long)st.wait_count, (unsigned long long)st.wait_count_local,
           tk_ctl_fmt_us((double)st.wait_ns / 1e3, b1, sizeof(b1)),
           tk_ctl_fmt_us(avg_wait_us, b2, sizeof(b2)),
           p99 == UINT64_MAX ? "inf" : tk_ctl_fmt_us((double)p99, b3, sizeof(b3)));
    printf("%-16s %llu  (timeouts %llu, queue full %llu, query timeouts %llu)\n", "acquires",
           (unsigned long long)st.acquires, (unsigned long long)st.acquire_timeouts,
           (unsigned long long)st.queue_full, (unsigned long long)st.query_timeouts);
    printf("%-16s max idle %llu  idle time %llu  lifetime %llu  after errors %llu\n", "closed",
           (unsigned long long)st.max_idle_closed, (unsigned long long)st.max_idle_time_closed,
           (unsigned long long)st.max_lifetime_closed, (unsigned long long)st.errors_closed);
    printf("%-16s %llu  handoffs local %llu  remote %llu\n", "connect errors",
           (unsigned long long)st.connect_errors, (unsigned long long)st.handoffs_local,
           (unsigned long long)st.handoffs_remote);
    ctl_db_backends(v);
    printf("\n%s%-5s %-8s %8s %8s %8s %8s %8s %10s %10s %10s%s\n", BOLD, "SLOT", "PID", "OPEN",
           "IN USE", "IDLE", "WAITING", "LOCAL", "WAITS", "WAIT P99", "ACQUIRES", RST);
    for (unsigned i = 0; i < v->nw; i++) {
        tk_view_worker_t *w = &v->w[i];
        if (!tk_view_live_state(w->w.state) || w->slot >= TK_BROKER_MAX_WORKERS)
            continue;
        tk_broker_stats_t ws;
        tk_broker_stats(b, (int)w->slot, &ws);
        uint64_t wp99 = tk_broker_hist_quantile_us(ws.wait_hist, 0.99);
        printf("%-5u %-8d %8llu %8llu %8llu %8u %8llu %10llu %10s %10llu\n", w->slot, (int)w->w.pid,
               (unsigned long long)ws.open, (unsigned long long)ws.in_use,
               (unsigned long long)ws.idle, b->workers[w->slot].nwaiting,
               (unsigned long long)ws.local_waiting, (unsigned long long)ws.wait_count,
               wp99 == UINT64_MAX ? "inf" : tk_ctl_fmt_us((double)wp99, b3, sizeof(b3)),
               (unsigned long long)ws.acquires);
    }
    return CTL_OK;
}

/* --- reload / stop ------------------------------------------------------------------ */

/* Signal only a master verified as this segment's tenkd (tk_shm_signal_master). */
static int ctl_signal_master(tk_shm_t *shm, int sig)
{
    char err[512];
    pid_t pid = 0;
    int r = tk_shm_signal_master(shm, sig, &pid, err, sizeof(err));
    if (r == -2) {
        fprintf(stderr, "tenkctl: %s\n", err);
        return -1;
    }
    if (r < 0) {
        if (errno == EPERM)
            fprintf(stderr,
                    "tenkctl: permission denied signalling master pid %d: run as its user or "
                    "root\n",
                    (int)pid);
        else
            fprintf(stderr, "tenkctl: kill(%d, %s) failed: %s\n", (int)pid, strsignal(sig),
                    strerror(errno));
        return -1;
    }
    return 0;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* SIGHUP, then wait for the master's verdict (reload_seq moves) and for the new
 * generation's workers to accept. */
int tk_ctl_cmd_reload(tk_shm_t *shm)
{
    tk_shm_header_sh_t *h = tk_shm_header(shm);
    uint64_t seq0 = __atomic_load_n(&h->reload_seq, __ATOMIC_ACQUIRE);
    uint64_t gen0 = __atomic_load_n(&h->generation, __ATOMIC_ACQUIRE);
    double timeout = tk_ctl_opt.timeout_s >= 0 ? tk_ctl_opt.timeout_s : 60;
    uint64_t deadline = tk_ctl_clock_ns(CLOCK_MONOTONIC) + (uint64_t)(timeout * 1e9);

    if (ctl_signal_master(shm, SIGHUP) < 0)
        return CTL_FAIL;
    for (;;) {
        if (__atomic_load_n(&h->reload_seq, __ATOMIC_ACQUIRE) != seq0)
            break;
        if (!tk_shm_master_alive(shm)) {
            fprintf(stderr, "tenkctl: the master (pid %d) exited during the reload\n",
                    (int)h->master_pid);
            return CTL_FAIL;
        }
        if (tk_ctl_clock_ns(CLOCK_MONOTONIC) >= deadline) {
            fprintf(stderr, "tenkctl: no reload outcome after %.0f s (still generation %llu)\n",
                    timeout, (unsigned long long)gen0);
            return CTL_FAIL;
        }
        sleep_ms(20);
    }
    if (!__atomic_load_n(&h->reload_ok, __ATOMIC_ACQUIRE)) {
        char why[TK_SHM_ERROR_MAX];
        memcpy(why, h->reload_error, sizeof(why));
        why[sizeof(why) - 1] = '\0';
        if (tk_ctl_opt.json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddBoolToObject(o, "ok", 0);
            cJSON_AddStringToObject(o, "error", why);
            cJSON_AddNumberToObject(o, "generation", (double)h->generation);
            tk_ctl_json_print(o);
        }
        fprintf(stderr, "tenkctl: reload of '%s' failed, still running generation %llu: %s\n",
                tk_ctl_opt.name, (unsigned long long)h->generation, why);
        return CTL_FAIL;
    }
    uint64_t gen = __atomic_load_n(&h->generation, __ATOMIC_ACQUIRE);
    unsigned want = h->workers, running = 0;
    /* the master reports success once the new generation accepts; confirm it */
    for (;;) {
        running = 0;
        for (unsigned i = 0; i < tk_shm_nslots(shm); i++) {
            tk_shm_worker_sh_t *w = tk_shm_worker(shm, i);
            if (__atomic_load_n(&w->state, __ATOMIC_ACQUIRE) == TK_SHM_W_RUNNING &&
                w->generation == gen)
                running++;
        }
        if (running >= want || tk_ctl_clock_ns(CLOCK_MONOTONIC) >= deadline)
            break;
        sleep_ms(20);
    }
    if (tk_ctl_opt.json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "ok", running >= want);
        cJSON_AddNumberToObject(o, "generation", (double)gen);
        cJSON_AddNumberToObject(o, "workers_running", running);
        cJSON_AddNumberToObject(o, "workers_configured", want);
        tk_ctl_json_print(o);
    } else if (running >= want)
        printf("reloaded '%s': generation %llu, %u workers running\n", tk_ctl_opt.name,
               (unsigned long long)gen, running);
    if (running < want) {
        fprintf(stderr, "tenkctl: generation %llu has only %u of %u workers running\n",
                (unsigned long long)gen, running, want);
        return CTL_FAIL;
    }
    return CTL_OK;
}

/* SIGTERM (fast) or SIGQUIT (graceful), then wait for the master to be gone. */
int tk_ctl_cmd_stop(tk_shm_t *shm)
{
    pid_t pid = tk_shm_header(shm)->master_pid;
    double timeout =
        tk_ctl_opt.timeout_s >= 0 ? tk_ctl_opt.timeout_s : (tk_ctl_opt.graceful ? 90 : 30);
    uint64_t t0 = tk_ctl_clock_ns(CLOCK_MONOTONIC);
    uint64_t deadline = t0 + (uint64_t)(timeout * 1e9);
    if (ctl_signal_master(shm, tk_ctl_opt.graceful ? SIGQUIT : SIGTERM) < 0)
        return CTL_FAIL;
    while (tk_shm_master_alive(shm)) {
        if (tk_ctl_clock_ns(CLOCK_MONOTONIC) >= deadline) {
            fprintf(stderr, "tenkctl: master pid %d still running %.0f s after %s\n", (int)pid,
                    timeout, tk_ctl_opt.graceful ? "SIGQUIT" : "SIGTERM");
            return CTL_FAIL;
        }
        sleep_ms(20);
    }
    double took = (double)(tk_ctl_clock_ns(CLOCK_MONOTONIC) - t0) / 1e9;
    if (tk_ctl_opt.json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "ok", 1);
        cJSON_AddNumberToObject(o, "master_pid", pid);
        cJSON_AddNumberToObject(o, "seconds", took);
        tk_ctl_json_print(o);
    } else
        printf("stopped '%s' (master pid %d) in %.1f s\n", tk_ctl_opt.name, (int)pid, took);
    return CTL_OK;
}
