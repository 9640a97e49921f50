/* admin.c: the admin listener's route table and token check, /metrics, /debug/stats and
 * /debug/threads; /debug/config and /dashboard are in admin_config.c and dashboard.c. */
#include "config.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "handlers/admin.h"
#include "handlers/admin_int.h"
#include "shm/procstat.h"
#include "shm/broker.h"
#include "cache/cache.h"
#include "proc/conf.h"
#include "handlers/handlers.h"
#include "http/http_parser.h"
#include "http/http_response.h"
#include "proc/log.h"
#include "shm/metrics.h"
#include "runtime/scheduler.h"
#include "shm/segment.h"
#include "shm/stats_json.h"
#include "shm/view.h"

/* How long /debug/threads waits for the other workers' tables. */
#define THREADS_TIMEOUT_MS 2000

/* --- the segment ---------------------------------------------------------------------- */

/* The worker's own attachment is private to worker.c, so the admin side maps
 * the segment a second time, read-only, by instance name, once per process. */
static tk_shm_t *g_shm;

static tk_shm_t *segment(const tk_http_ctx_t *ctx)
{
    if (!g_shm && tk_http_conf(ctx)) {
        char err[256];
        /* our own master: no liveness check */
        g_shm = tk_view_attach(tk_http_conf(ctx)->name, 0, err, sizeof(err));
    }
    return g_shm;
}

/* RSS and CPU of another process (the master) from /proc. 0 or -1. */
static int proc_usage(pid_t pid, uint64_t *rss, double *user_s, double *sys_s)
{
    tk_procstat_t ps;
    if (pid <= 0 || tk_procstat_read(pid, &ps) < 0)
        return -1;
    double hz = (double)sysconf(_SC_CLK_TCK);
    *user_s = (double)ps.utime_ticks / hz;
    *sys_s = (double)ps.stime_ticks / hz;
    *rss = ps.rss_pages * (uint64_t)sysconf(_SC_PAGESIZE);
    return 0;
}

/* --- authentication ---------------------------------------------------------------------- */

/* Compare in time that depends only on the lengths, never on where the first
 * difference is. */
static int token_equal(const char *want, size_t wlen, const char *got, size_t glen)
{
    unsigned char d = (unsigned char)(wlen != glen);
    for (size_t i = 0; i < wlen; i++)
        d |= (unsigned char)want[i] ^ (unsigned char)(i < glen ? got[i] : 0);
    return d == 0;
}

/* admin.token set: require "Authorization: Bearer TOKEN". */
static int authorized(tk_http_ctx_t *ctx)
{
    const char *tok = tk_http_conf(ctx) ? tk_http_conf(ctx)->admin_token : "";
    if (!tok[0])
        return 1;
    tk_str_t h = tk_http_header(ctx, "Authorization");
    static const char scheme[] = "Bearer ";
    int ok = 0;
    if (h.p && h.len > sizeof(scheme) - 1 && strncasecmp(h.p, scheme, sizeof(scheme) - 1) == 0) {
        const char *g = h.p + sizeof(scheme) - 1;
        size_t glen = h.len - (sizeof(scheme) - 1);
        while (glen && *g == ' ')
            g++, glen--;
        ok = token_equal(tok, strlen(tok), g, glen);
    }
    if (!ok) {
        tk_http_add_header(ctx, "WWW-Authenticate", "Bearer realm=\"tenk admin\"");
        tk_http_respond_error(ctx, 401, "a valid admin token is required");
    }
    return ok;
}

static int get_segment(tk_http_ctx_t *ctx, tk_view_t *v)
{
    tk_shm_t *shm = segment(ctx);
    if (!shm) {
        tk_http_respond_error(ctx, 503, "shared memory not available");
        return -1;
    }
    *v = (tk_view_t){0};
    if (tk_view_load_nowait(v, shm) != 0) { /* never sleeps: we are on the loop */
        tk_http_respond_error(ctx, 500, "out of memory");
        return -1;
    }
    return 0;
}

/* --- /metrics ------------------------------------------------------------------------------ */

/* Prometheus buckets (seconds) cut from the fine log-linear histogram. */
static const double prom_le[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                 0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30,    60};
#define PROM_NLE (sizeof(prom_le) / sizeof(prom_le[0]))

static void family(tk_http_buf_t *b, const char *name, const char *type, const char *help)
{
    tk_http_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value with \, " and newline escaped. */
static void put_label(tk_http_buf_t *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            tk_http_buf_printf(b, "\\%c", *s);
        else if (*s == '\n')
            tk_http_buf_append(b, "\\n", 2);
        else
            tk_http_buf_append(b, s, 1);
    }
}

static void sample_u(tk_http_buf_t *b, const char *name, unsigned worker, uint64_t v)
{
    tk_http_buf_printf(b, "%s{worker=\"%u\"} %llu\n", name, worker, (unsigned long long)v);
}

static void sample_d(tk_http_buf_t *b, const char *name, unsigned worker, double v)
{
    tk_http_buf_printf(b, "%s{worker=\"%u\"} %.9g\n", name, worker, v);
}

/* Per-worker counter: every used slot (a dead slot's counters keep counting
 * in its respawned successor, so each series stays monotonic). */
static void counter_w(tk_http_buf_t *b, const tk_view_t *v, const char *name, const char *help,
                      size_t off)
{
    family(b, name, "counter", help);
    for (unsigned i = 0; i < v->nw; i++)
        sample_u(b, name, v->w[i].slot, *(const uint64_t *)((const char *)&v->w[i].snap->m + off));
}

/* Per-worker gauge: live workers only. */
static void gauge_w(tk_http_buf_t *b, const tk_view_t *v, const char *name, const char *help,
                    size_t off)
{
    family(b, name, "gauge", help);
    for (unsigned i = 0; i < v->nw; i++)
        if (tk_view_live_state(v->w[i].w.state))
            sample_u(b, name, v->w[i].slot,
                     *(const uint64_t *)((const char *)&v->w[i].snap->m + off));
}

static const char *const class_label[6] = {"other", "1xx", "2xx", "3xx", "4xx", "5xx"};

/* "GET /users/{id}" -> method and pattern labels. */
static void route_labels(tk_http_buf_t *b, const char *name)
{
    const char *sp = strchr(name, ' ');
    char method[16] = "";
    const char *pattern = name;
    if (sp && (size_t)(sp - name) < sizeof(method)) {
        memcpy(method, name, (size_t)(sp - name));
        method[sp - name] = '\0';
        pattern = sp + 1;
    }
    tk_http_buf_append_str(b, "method=\"");
    put_label(b, method);
    tk_http_buf_append_str(b, "\",route=\"");
    put_label(b, pattern);
    tk_http_buf_append_str(b, "\"");
}

static void metrics_http(tk_http_buf_t *b, const tk_view_t *v)
{
    family(b, "tenk_http_requests_total", "counter",
           "HTTP responses sent, by worker, route and status class (route \"unmatched\": no "
           "route, e.g. 404).");
    for (unsigned i = 0; i < v->nw; i++) {
        const tk_metrics_sh_t *m = &v->w[i].snap->m;
        uint64_t rest[6];
        memcpy(rest, m->status, sizeof(rest));
        for (unsigned r = 0; r < TK_METRICS_MAX_ROUTES; r++) {
            const tk_metrics_route_sh_t *rt = &m->routes[r];
            if (!rt->name[0] || !rt->requests)
                continue;
            for (int c = 0; c < 6; c++) {
                if (!rt->status[c])
                    continue;
                rest[c] -= rt->status[c] <= rest[c] ? rt->status[c] : rest[c];
                tk_http_buf_printf(b, "tenk_http_requests_total{worker=\"%u\",", v->w[i].slot);
                route_labels(b, rt->name);
                tk_http_buf_printf(b, ",code=\"%s\"} %llu\n", class_label[c],
                                   (unsigned long long)rt->status[c]);
            }
        }
        for (int c = 0; c < 6; c++)
            if (rest[c])
                tk_http_buf_printf(b,
                                   "tenk_http_requests_total{worker=\"%u\",method=\"\",route="
                                   "\"unmatched\",code=\"%s\"} %llu\n",
                                   v->w[i].slot, class_label[c], (unsigned long long)rest[c]);
    }

    family(b, "tenk_http_route_latency_seconds_total", "counter",
           "Sum of response times per route (divide by tenk_http_requests_total for the mean).");
    for (unsigned i = 0; i < v->nw; i++) {
        const tk_metrics_sh_t *m = &v->w[i].snap->m;
        for (unsigned r = 0; r < TK_METRICS_MAX_ROUTES; r++) {
            const tk_metrics_route_sh_t *rt = &m->routes[r];
            if (!rt->name[0] || !rt->requests)
                continue;
            tk_http_buf_printf(b, "tenk_http_route_latency_seconds_total{worker=\"%u\",",
                               v->w[i].slot);
            route_labels(b, rt->name);
            tk_http_buf_printf(b, "} %.6f\n", (double)rt->latency_us_sum / 1e6);
        }
    }

    family(b, "tenk_http_request_duration_seconds", "histogram",
           "Time from a request's first byte to its response being queued.");
    for (unsigned i = 0; i < v->nw; i++) {
        const tk_metrics_sh_t *m = &v->w[i].snap->m;
        unsigned fb = 0;
        uint64_t cum = 0;
        for (unsigned k = 0; k < PROM_NLE; k++) {
            /* integer µs values: bucket [lo, hi) lies at or under le when hi-1 <= le */
            uint64_t le_us = (uint64_t)(prom_le[k] * 1e6 + 0.5);
            for (; fb < TK_METRICS_NBUCKETS; fb++) {
                uint64_t lo, hi;
                tk_metrics_bucket_bounds(fb, &lo, &hi);
                if (hi == UINT64_MAX || hi - 1 > le_us)
                    break;
                cum += m->hist[fb];
            }
            tk_http_buf_printf(
                b, "tenk_http_request_duration_seconds_bucket{worker=\"%u\",le=\"%g\"} %llu\n",
                v->w[i].slot, prom_le[k], (unsigned long long)cum);
        }
        for (; fb < TK_METRICS_NBUCKETS; fb++)
            cum += m->hist[fb];
        tk_http_buf_printf(b,
                           "tenk_http_request_duration_seconds_bucket{worker=\"%u\",le=\"+Inf\"} "
                           "%llu\n",
                           v->w[i].slot, (unsigned long long)cum);
        tk_http_buf_printf(b, "tenk_http_request_duration_seconds_sum{worker=\"%u\"} %.6f\n",
                           v->w[i].slot, (double)m->latency_us_sum / 1e6);
        tk_http_buf_printf(b, "tenk_http_request_duration_seconds_count{worker=\"%u\"} %llu\n",
                           v->w[i].slot, (unsigned long long)cum);
    }

    counter_w(b, v, "tenk_http_request_bytes_total", "Request bytes read from clients.",
              offsetof(tk_metrics_sh_t, bytes_in));
    counter_w(b, v, "tenk_http_response_bytes_total", "Response bytes queued to clients.",
              offsetof(tk_metrics_sh_t, bytes_out));
    family(b, "tenk_http_errors_total", "counter",
           "Requests that ended in an error, by kind (parse, limit, timeout, 5xx).");
    for (unsigned i = 0; i < v->nw; i++)
        for (int k = 0; k < TK_METRICS_ERR_N; k++)
            tk_http_buf_printf(b, "tenk_http_errors_total{worker=\"%u\",kind=\"%s\"} %llu\n",
                               v->w[i].slot, tk_metrics_err_name((tk_metrics_err_t)k),
                               (unsigned long long)v->w[i].snap->m.errors[k]);

    family(b, "tenk_connections", "gauge",
           "Open client connections: active (a request in progress) or idle (keep-alive).");
    for (unsigned i = 0; i < v->nw; i++) {
        if (!tk_view_live_state(v->w[i].w.state))
            continue;
        const tk_metrics_sh_t *m = &v->w[i].snap->m;
        tk_http_buf_printf(b, "tenk_connections{worker=\"%u\",state=\"active\"} %llu\n",
                           v->w[i].slot, (unsigned long long)m->conns_active);
        tk_http_buf_printf(b, "tenk_connections{worker=\"%u\",state=\"idle\"} %llu\n", v->w[i].slot,
                           (unsigned long long)m->conns_idle);
    }
    counter_w(b, v, "tenk_connections_accepted_total", "Connections accepted.",
              offsetof(tk_metrics_sh_t, conns_accepted));
    counter_w(b, v, "tenk_connections_closed_total", "Connections closed.",
              offsetof(tk_metrics_sh_t, conns_closed));
}

static void metrics_sched(tk_http_buf_t *b, const tk_view_t *v)
{
    family(b, "tenk_green_threads", "gauge", "Live green threads by state.");
    for (unsigned i = 0; i < v->nw; i++) {
        if (!tk_view_live_state(v->w[i].w.state))
            continue;
        for (unsigned s = 0; s < TK_GT_NSTATES; s++)
            tk_http_buf_printf(b, "tenk_green_threads{worker=\"%u\",state=\"%s\"} %llu\n",
                               v->w[i].slot, tk_gt_state_name((tk_gt_state_t)s),
                               (unsigned long long)v->w[i].snap->m.gt_by_state[s]);
    }
    counter_w(b, v, "tenk_green_threads_created_total", "Green threads created.",
              offsetof(tk_metrics_sh_t, gt_created));
    counter_w(b, v, "tenk_green_threads_exited_total", "Green threads that ended.",
              offsetof(tk_metrics_sh_t, gt_exited));
    counter_w(b, v, "tenk_green_thread_switches_total", "Context switches between green threads.",
              offsetof(tk_metrics_sh_t, gt_switches));
    counter_w(b, v, "tenk_green_thread_long_runs_total",
              "Times a green thread ran longer than runtime.long_run without yielding.",
              offsetof(tk_metrics_sh_t, gt_long_runs));
    gauge_w(b, v, "tenk_green_thread_stack_reserved_bytes",
            "Address space held by live and pooled green-thread stacks.",
            offsetof(tk_metrics_sh_t, stack_reserved));
    gauge_w(b, v, "tenk_green_thread_stack_resident_bytes",
            "Resident memory of green-thread stacks.", offsetof(tk_metrics_sh_t, stack_resident));
    gauge_w(b, v, "tenk_green_thread_pooled_stacks", "Stacks kept for reuse.",
            offsetof(tk_metrics_sh_t, pooled_stacks));
}

static void metrics_process(tk_http_buf_t *b, const tk_view_t *v)
{
    gauge_w(b, v, "tenk_process_resident_memory_bytes", "Resident memory of each worker process.",
            offsetof(tk_metrics_sh_t, rss_bytes));
    family(b, "tenk_process_cpu_seconds_total", "counter",
           "CPU time of the processes that ran in each worker slot, by mode.");
    for (unsigned i = 0; i < v->nw; i++) {
        const tk_metrics_sh_t *m = &v->w[i].snap->m;
        tk_http_buf_printf(b, "tenk_process_cpu_seconds_total{worker=\"%u\",mode=\"user\"} %.6f\n",
                           v->w[i].slot, (double)m->cpu_user_ns / 1e9);
        tk_http_buf_printf(b,
                           "tenk_process_cpu_seconds_total{worker=\"%u\",mode=\"system\"} %.6f\n",
                           v->w[i].slot, (double)m->cpu_sys_ns / 1e9);
    }
    family(b, "tenk_process_start_time_seconds", "gauge",
           "Start of each live worker process since the Unix epoch.");
    for (unsigned i = 0; i < v->nw; i++)
        if (tk_view_live_state(v->w[i].w.state))
            sample_d(b, "tenk_process_start_time_seconds", v->w[i].slot,
                     (double)v->w[i].snap->m.proc_start_ns / 1e9);
    family(b, "tenk_worker_heartbeat_age_seconds", "gauge",
           "Time since each live worker's event loop last ticked.");
    for (unsigned i = 0; i < v->nw; i++) {
        if (!tk_view_live_state(v->w[i].w.state))
            continue;
        uint64_t hb = v->w[i].snap->m.live.heartbeat_ns;
        sample_d(b, "tenk_worker_heartbeat_age_seconds", v->w[i].slot,
                 hb && v->now_mono_ns > hb ? (double)(v->now_mono_ns - hb) / 1e9 : 0.0);
    }
    family(b, "tenk_worker_accepting", "gauge", "1 while the worker accepts new connections.");
    for (unsigned i = 0; i < v->nw; i++)
        if (tk_view_live_state(v->w[i].w.state))
            sample_u(b, "tenk_worker_accepting", v->w[i].slot, v->w[i].snap->m.live.accepting);
    family(b, "tenk_worker_restarts_total", "counter",
           "Times a dead worker was replaced in this slot.");
    for (unsigned i = 0; i < v->nw; i++)
        sample_u(b, "tenk_worker_restarts_total", v->w[i].slot, v->w[i].w.respawns);
    family(b, "tenk_workers", "gauge", "Worker slots by state.");
    static const tk_shm_wstate_t states[] = {TK_SHM_W_STARTING, TK_SHM_W_RUNNING, TK_SHM_W_DRAINING,
                                             TK_SHM_W_DEAD};
    for (size_t k = 0; k < sizeof(states) / sizeof(states[0]); k++) {
        unsigned n = 0;
        for (unsigned i = 0; i < v->nw; i++)
            n += v->w[i].w.state == (uint32_t)states[k];
        tk_http_buf_printf(b, "tenk_workers{state=\"%s\"} %u\n", tk_shm_wstate_name(states[k]), n);
    }

    uint64_t rss;
    double us, ss;
    if (v->h.master_pid > 0 && proc_usage(v->h.master_pid, &rss, &us, &ss) == 0) {
        family(b, "tenk_master_resident_memory_bytes", "gauge",
               "Resident memory of the master process.");
        tk_http_buf_printf(b, "tenk_master_resident_memory_bytes %llu\n", (unsigned long long)rss);
        family(b, "tenk_master_cpu_seconds_total", "counter",
               "CPU time of the master process, by mode.");
        tk_http_buf_printf(b, "tenk_master_cpu_seconds_total{mode=\"user\"} %.6f\n", us);
        tk_http_buf_printf(b, "tenk_master_cpu_seconds_total{mode=\"system\"} %.6f\n", ss);
    }
    family(b, "tenk_start_time_seconds", "gauge", "When the master created the instance.");
    tk_http_buf_printf(b, "tenk_start_time_seconds %.3f\n", (double)v->h.created_ns / 1e9);
    family(b, "tenk_generation", "gauge", "Current worker generation (1 at start, +1 per reload).");
    tk_http_buf_printf(b, "tenk_generation %llu\n", (unsigned long long)v->h.generation);
    family(b, "tenk_reloads_total", "counter", "Reload requests (SIGHUP) handled.");
    tk_http_buf_printf(b, "tenk_reloads_total %llu\n", (unsigned long long)v->h.reload_seq);
}

static void db_counter(tk_http_buf_t *b, const tk_view_t *v, const tk_broker_sh_t *br,
                       const char *name, const char *help, size_t off, double scale)
{
    family(b, name, "counter", help);
    for (unsigned i = 0; i < v->nw; i++) {
        if (v->w[i].slot >= TK_BROKER_MAX_WORKERS)
            continue;
        tk_broker_stats_t st;
        tk_broker_stats(br, (int)v->w[i].slot, &st);
        uint64_t x = *(const uint64_t *)((const char *)&st + off);
        if (scale == 1.0)
            sample_u(b, name, v->w[i].slot, x);
        else
            sample_d(b, name, v->w[i].slot, (double)x * scale);
    }
}

/* The database pool, mirroring Go's sql.DBStats. */
static void metrics_db(tk_http_buf_t *b, const tk_view_t *v, const tk_broker_sh_t *br)
{
    family(b, "tenk_db_max_open_connections", "gauge",
           "Connection budget shared by all workers (db.max_open).");
    tk_http_buf_printf(b, "tenk_db_max_open_connections %u\n", br->max_open);
    family(b, "tenk_db_max_idle_connections", "gauge",
           "Idle connections kept at most (db.max_idle).");
    tk_http_buf_printf(b, "tenk_db_max_idle_connections %u\n", br->max_idle);
    static const struct {
        const char *name, *help;
        size_t off;
    } gauges[] = {
        {"tenk_db_open_connections", "Connections established or being established.",
         offsetof(tk_broker_stats_t, open)},
        {"tenk_db_in_use_connections", "Connections handed to a request.",
         offsetof(tk_broker_stats_t, in_use)},
        {"tenk_db_idle_connections", "Open connections not in use.",
         offsetof(tk_broker_stats_t, idle)},
    };
    for (size_t k = 0; k < sizeof(gauges) / sizeof(gauges[0]); k++) {
        family(b, gauges[k].name, "gauge", gauges[k].help);
        for (unsigned i = 0; i < v->nw; i++) {
            if (!tk_view_live_state(v->w[i].w.state) || v->w[i].slot >= TK_BROKER_MAX_WORKERS)
                continue;
            tk_broker_stats_t st;
            tk_broker_stats(br, (int)v->w[i].slot, &st);
            sample_u(b, gauges[k].name, v->w[i].slot,
                     *(const uint64_t *)((const char *)&st + gauges[k].off));
        }
    }
    family(b, "tenk_db_waiting", "gauge", "Green threads queued for a connection slot.");
    for (unsigned i = 0; i < v->nw; i++)
        if (tk_view_live_state(v->w[i].w.state) && v->w[i].slot < TK_BROKER_MAX_WORKERS)
            sample_u(b, "tenk_db_waiting", v->w[i].slot,
                     __atomic_load_n(&br->workers[v->w[i].slot].nwaiting, __ATOMIC_RELAXED));
    family(b, "tenk_db_waiting_high_water", "gauge", "Longest the wait queue has been.");
    tk_http_buf_printf(b, "tenk_db_waiting_high_water %u\n",
                       __atomic_load_n(&br->qhwm, __ATOMIC_RELAXED));
    family(b, "tenk_db_waiting_local", "gauge",
           "Green threads queued inside the worker for a shared pipelined connection.");
    for (unsigned i = 0; i < v->nw; i++)
        if (tk_view_live_state(v->w[i].w.state) && v->w[i].slot < TK_BROKER_MAX_WORKERS)
            sample_u(
                b, "tenk_db_waiting_local", v->w[i].slot,
                __atomic_load_n(&br->workers[v->w[i].slot].st.local_waiting, __ATOMIC_RELAXED));
    family(b, "tenk_db_waiting_local_high_water", "gauge",
           "Most green threads queued inside workers at once.");
    tk_http_buf_printf(b, "tenk_db_waiting_local_high_water %u\n",
                       __atomic_load_n(&br->lwhwm, __ATOMIC_RELAXED));
    family(b, "tenk_db_waiting_all_high_water", "gauge",
           "Most green threads waiting for a connection at once, broker queue and local.");
    tk_http_buf_printf(b, "tenk_db_waiting_all_high_water %u\n",
                       __atomic_load_n(&br->twhwm, __ATOMIC_RELAXED));
    db_counter(b, v, br, "tenk_db_wait_count_total",
               "Acquisitions that had to queue (broker or local).",
               offsetof(tk_broker_stats_t, wait_count), 1.0);
    db_counter(b, v, br, "tenk_db_wait_count_local_total",
               "Of those, queued inside the worker for a shared pipelined connection.",
               offsetof(tk_broker_stats_t, wait_count_local), 1.0);
    db_counter(b, v, br, "tenk_db_wait_duration_seconds_total", "Total time spent queued.",
               offsetof(tk_broker_stats_t, wait_ns), 1e-9);
    db_counter(b, v, br, "tenk_db_max_idle_closed_total",
               "Connections closed because db.max_idle idle ones existed.",
               offsetof(tk_broker_stats_t, max_idle_closed), 1.0);
    db_counter(b, v, br, "tenk_db_max_idle_time_closed_total",
               "Connections closed after db.max_idle_time unused.",
               offsetof(tk_broker_stats_t, max_idle_time_closed), 1.0);
    db_counter(b, v, br, "tenk_db_max_lifetime_closed_total",
               "Connections closed after db.max_lifetime.",
               offsetof(tk_broker_stats_t, max_lifetime_closed), 1.0);
    db_counter(b, v, br, "tenk_db_errors_closed_total",
               "Connections closed after an error or a dirty state.",
               offsetof(tk_broker_stats_t, errors_closed), 1.0);
    db_counter(b, v, br, "tenk_db_acquires_total", "Successful connection acquisitions.",
               offsetof(tk_broker_stats_t, acquires), 1.0);
    db_counter(b, v, br, "tenk_db_acquire_timeouts_total", "db.acquire_timeout expiries (503).",
               offsetof(tk_broker_stats_t, acquire_timeouts), 1.0);
    db_counter(b, v, br, "tenk_db_queue_full_total", "Acquisitions refused: wait queue full (503).",
               offsetof(tk_broker_stats_t, queue_full), 1.0);
    db_counter(b, v, br, "tenk_db_query_timeouts_total", "db.query_timeout expiries (504).",
               offsetof(tk_broker_stats_t, query_timeouts), 1.0);
    db_counter(b, v, br, "tenk_db_connect_errors_total", "Failed connection attempts.",
               offsetof(tk_broker_stats_t, connect_errors), 1.0);
    db_counter(b, v, br, "tenk_db_handoffs_local_total",
               "Connections released straight to a waiter of the same worker.",
               offsetof(tk_broker_stats_t, handoffs_local), 1.0);
    db_counter(b, v, br, "tenk_db_handoffs_remote_total",
               "Slots handed over to another worker's waiter.",
               offsetof(tk_broker_stats_t, handoffs_remote), 1.0);

    tk_broker_stats_t all;
    tk_broker_stats(br, -1, &all);
    family(b, "tenk_db_wait_seconds", "histogram", "Time green threads spent queued for a slot.");
    uint64_t cum = 0;
    for (int i = 0; i < TK_BROKER_HIST_BUCKETS; i++) {
        cum += all.wait_hist[i];
        uint64_t le = tk_broker_hist_bound_us(i);
        if (le == UINT64_MAX)
            tk_http_buf_printf(b, "tenk_db_wait_seconds_bucket{le=\"+Inf\"} %llu\n",
                               (unsigned long long)cum);
        else
            tk_http_buf_printf(b, "tenk_db_wait_seconds_bucket{le=\"%g\"} %llu\n", (double)le / 1e6,
                               (unsigned long long)cum);
    }
    if (tk_broker_hist_bound_us(TK_BROKER_HIST_BUCKETS - 1) != UINT64_MAX)
        tk_http_buf_printf(b, "tenk_db_wait_seconds_bucket{le=\"+Inf\"} %llu\n",
                           (unsigned long long)cum);
    tk_http_buf_printf(b, "tenk_db_wait_seconds_sum %.6f\n", (double)all.wait_ns / 1e9);
    tk_http_buf_printf(b, "tenk_db_wait_seconds_count %llu\n", (unsigned long long)cum);
}

static void metrics_cache(tk_http_buf_t *b, const tk_view_t *v)
{
    counter_w(b, v, "tenk_cache_hits_total", "Redis cache lookups that found the value.",
              offsetof(tk_metrics_sh_t, cache_hits));
    counter_w(b, v, "tenk_cache_misses_total", "Redis cache lookups that did not.",
              offsetof(tk_metrics_sh_t, cache_misses));
    counter_w(b, v, "tenk_cache_errors_total", "Redis cache operations that failed.",
              offsetof(tk_metrics_sh_t, cache_errors));
    counter_w(b, v, "tenk_cache_bypasses_total",
              "Cache calls that skipped Redis (down, or the breaker open).",
              offsetof(tk_metrics_sh_t, cache_bypasses));
    counter_w(b, v, "tenk_cache_timeouts_total", "Redis commands past redis.timeout.",
              offsetof(tk_metrics_sh_t, cache_timeouts));
    gauge_w(b, v, "tenk_cache_connected", "1 while the worker's Redis connection is up.",
            offsetof(tk_metrics_sh_t, cache_connected));
    static const uint64_t bounds[TK_CACHE_LAT_NBUCKETS] = TK_CACHE_LAT_BOUNDS_US;
    family(b, "tenk_cache_reply_duration_seconds", "histogram", "Time Redis took to reply.");
    for (unsigned i = 0; i < v->nw; i++) {
        const tk_metrics_sh_t *m = &v->w[i].snap->m;
        uint64_t cum = 0;
        for (unsigned k = 0; k < TK_CACHE_LAT_NBUCKETS; k++) {
            cum += m->cache_lat[k];
            if (bounds[k] == UINT64_MAX)
                continue; /* the "more" bucket is +Inf below */
            tk_http_buf_printf(b,
                               "tenk_cache_reply_duration_seconds_bucket{worker=\"%u\",le=\"%g\"} "
                               "%llu\n",
                               v->w[i].slot, (double)bounds[k] / 1e6, (unsigned long long)cum);
        }
        tk_http_buf_printf(b,
                           "tenk_cache_reply_duration_seconds_bucket{worker=\"%u\",le=\"+Inf\"} "
                           "%llu\n",
                           v->w[i].slot, (unsigned long long)cum);
        tk_http_buf_printf(b, "tenk_cache_reply_duration_seconds_sum{worker=\"%u\"} %.6f\n",
                           v->w[i].slot, (double)m->cache_lat_sum_us / 1e6);
        tk_http_buf_printf(b, "tenk_cache_reply_duration_seconds_count{worker=\"%u\"} %llu\n",
                           v->w[i].slot, (unsigned long long)cum);
    }
}

static void h_metrics(tk_http_ctx_t *ctx)
{
    tk_view_t v;
    if (get_segment(ctx, &v) != 0)
        return;
    tk_http_buf_t *b = tk_http_body_buf(ctx);
    family(b, "tenk_info", "gauge", "Constant 1, labelled with the instance name and version.");
    tk_http_buf_append_str(b, "tenk_info{name=\"");
    put_label(b, v.h.name);
    tk_http_buf_printf(b, "\",version=\"%s\"} 1\n", PACKAGE_VERSION);
    metrics_http(b, &v);
    metrics_sched(b, &v);
    metrics_process(b, &v);
    const tk_broker_sh_t *br = tk_view_broker(v.shm);
    if (br && tk_http_conf(ctx)->db_conninfo[0])
        metrics_db(b, &v, br);
    if (tk_http_conf(ctx)->redis_addr[0])
        metrics_cache(b, &v);
    tk_view_free(&v);
    tk_http_respond_buf(ctx, 200, "text/plain; version=0.0.4; charset=utf-8");
}

/* --- /debug/stats ------------------------------------------------------------------------ */

/* tenkctl's per-worker block plus p95 and threads by state (the dashboard's). */
#define ADMIN_BLOCK (TK_STATS_JSON_P95 | TK_STATS_JSON_THREADS)

/* The pool's totals plus one entry per live worker. */
static cJSON *json_db(const tk_view_t *v, const tk_broker_sh_t *b)
{
    cJSON *o = cJSON_CreateObject();
    tk_stats_json_db(o, b);
    if (!b)
        return o;
    cJSON *a = cJSON_AddArrayToObject(o, "workers");
    for (unsigned i = 0; i < v->nw; i++) {
        const tk_view_worker_t *w = &v->w[i];
        if (!tk_view_live_state(w->w.state) || w->slot >= TK_BROKER_MAX_WORKERS)
            continue;
        cJSON *x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "slot", w->slot);
        cJSON_AddNumberToObject(x, "pid", w->w.pid);
        tk_stats_json_db_worker(x, b, w->slot);
        cJSON_AddItemToArray(a, x);
    }
    return o;
}

static void last_exit(char *buf, size_t len, int status)
{
    if (status < 0)
        snprintf(buf, len, "none");
    else if ((status & 0x7f) == 0)
        snprintf(buf, len, "exit %d", (status >> 8) & 0xff);
    else
        snprintf(buf, len, "signal %d", status & 0x7f);
}

static void h_stats(tk_http_ctx_t *ctx)
{
    tk_view_t v;
    if (get_segment(ctx, &v) != 0)
        return;
    cJSON *o = cJSON_CreateObject();
    tk_stats_json_head(o, &v.h, v.now_real_ns);
    cJSON_AddNumberToObject(o, "time_ms", (double)(v.now_real_ns / 1000000ull));
    cJSON_AddStringToObject(o, "conf_path", v.h.conf_path);
    cJSON_AddNumberToObject(o, "workers_configured", v.h.workers);
    unsigned running = 0;
    for (unsigned i = 0; i < v.nw; i++)
        running += v.w[i].w.state == TK_SHM_W_RUNNING && v.w[i].w.generation == v.h.generation;
    cJSON_AddNumberToObject(o, "workers_running", running);
    cJSON_AddBoolToObject(o, "stopping", v.h.stopping != 0);
    cJSON_AddNumberToObject(o, "reloads", (double)v.h.reload_seq);
    cJSON_AddNumberToObject(o, "cpu_count", (double)sysconf(_SC_NPROCESSORS_ONLN));
    /* false when a worker died in the middle of an update (its slot may be torn) */
    cJSON_AddBoolToObject(o, "consistent", !v.total->torn);
    /* the dashboard also wants threads by state and the raw histogram */
    tk_stats_json_stats_block(o, v.total, v.now_sec, ADMIN_BLOCK | TK_STATS_JSON_HIST);

    cJSON *ms = cJSON_AddObjectToObject(o, "master");
    uint64_t rss = 0;
    double us = 0, ss = 0;
    proc_usage(v.h.master_pid, &rss, &us, &ss);
    cJSON_AddNumberToObject(ms, "pid", v.h.master_pid);
    cJSON_AddNumberToObject(ms, "rss_bytes", (double)rss);
    cJSON_AddNumberToObject(ms, "cpu_user_s", us);
    cJSON_AddNumberToObject(ms, "cpu_system_s", ss);

    cJSON_AddItemToObject(o, "routes", tk_stats_json_routes(&v.total->m));
    cJSON *a = cJSON_AddArrayToObject(o, "workers");
    for (unsigned i = 0; i < v.nw; i++) {
        const tk_view_worker_t *w = &v.w[i];
        cJSON *x = cJSON_CreateObject();
        char le[32];
        tk_stats_json_worker_head(x, w->slot, &w->w);
        cJSON_AddNumberToObject(x, "index", w->w.index);
        cJSON_AddNumberToObject(x, "restarts", w->w.respawns);
        last_exit(le, sizeof(le), w->w.last_status);
        cJSON_AddStringToObject(x, "last_exit", le);
        uint64_t hb = w->snap->m.live.heartbeat_ns;
        cJSON_AddNumberToObject(x, "heartbeat_age_s",
                                hb && v.now_mono_ns > hb ? (double)(v.now_mono_ns - hb) / 1e9 : 0);
        cJSON_AddBoolToObject(x, "accepting", w->snap->m.live.accepting != 0);
        cJSON_AddBoolToObject(x, "live", tk_view_live_state(w->w.state));
        tk_stats_json_stats_block(x, w->snap, v.now_sec, ADMIN_BLOCK);
        cJSON_AddItemToArray(a, x);
    }
    cJSON_AddItemToObject(
        o, "db", json_db(&v, tk_http_conf(ctx)->db_conninfo[0] ? tk_view_broker(v.shm) : NULL));
    tk_view_free(&v);
    tk_http_add_header(ctx, "Cache-Control", "no-store");
    tk_http_respond_json(ctx, 200, o);
    cJSON_Delete(o);
}

/* --- /debug/threads ---------------------------------------------------------------------- */

/* The green threads of every live worker: each worker lists its own (the
 * worker's thread-dump service, env->gt_dump), asked while this request's
 * thread is parked, so no worker stops for another. */
static tk_handlers_gt_dump_fn g_gt_dump;

/* ,"error":"..." (a worker that could not be asked), JSON-escaped by cJSON. */
static void put_error(tk_http_buf_t *b, const char *err)
{
    cJSON *s = cJSON_CreateString(err);
    char *text = s ? cJSON_PrintUnformatted(s) : NULL;
    tk_http_buf_append_str(b, ",\"error\":");
    tk_http_buf_append_str(b, text ? text : "null");
    cJSON_free(text);
    cJSON_Delete(s);
}

static void h_threads(tk_http_ctx_t *ctx)
{
    tk_shm_t *shm = segment(ctx);
    if (!shm) {
        tk_http_respond_error(ctx, 503, "shared memory not available");
        return;
    }
    tk_http_buf_t *b = tk_http_body_buf(ctx);
    tk_http_buf_t workers;
    tk_http_buf_init(&workers);
    tk_http_buf_append_str(b, "{\"threads\":[");
    int first = 1;
    unsigned nslots = tk_shm_nslots(shm);
    int64_t deadline = tk_now_ms() + THREADS_TIMEOUT_MS;
    /* copy the table first: a worker may come or go while we wait */
    tk_shm_worker_sh_t *tab = calloc(nslots ? nslots : 1, sizeof(*tab));
    if (!tab) {
        tk_http_buf_free(&workers);
        tk_http_respond_error(ctx, 500, "out of memory");
        return;
    }
    for (unsigned i = 0; i < nslots; i++)
        memcpy(&tab[i], tk_shm_worker(shm, i), sizeof(tab[i]));
    for (unsigned i = 0; i < nslots; i++) {
        if (!tk_view_live_state(tab[i].state) || tab[i].pid <= 0)
            continue;
        char err[128] = "not available in this worker";
        size_t before = b->len;
        int rc =
            g_gt_dump ? g_gt_dump(tab[i].pid, (int)i, b, &first, deadline, err, sizeof(err)) : -1;
        /* count what this worker contributed (objects start with {"id":) */
        unsigned n = 0;
        for (const char *p = b->data + before; p && p < b->data + b->len;) {
            p = memmem(p, (size_t)(b->data + b->len - p), "{\"id\":", 6);
            if (!p)
                break;
            n++;
            p += 6;
        }
        const tk_metrics_sh_t *ms = tk_shm_metrics(shm, i); /* high-water: runtime.stack_paint */
        tk_http_buf_printf(
            &workers, "%s{\"slot\":%u,\"pid\":%d,\"threads\":%u,\"stack_max_used\":%llu",
            workers.len ? "," : "", i, (int)tab[i].pid, n,
            ms ? (unsigned long long)__atomic_load_n(&ms->stack_max_used, __ATOMIC_RELAXED) : 0ull);
        if (rc != 0)
            put_error(&workers, err);
        tk_http_buf_append(&workers, "}", 1);
    }
    free(tab);
    tk_http_buf_append_str(b, "],\"workers\":[");
    tk_http_buf_append(b, workers.data ? workers.data : "", workers.len);
    tk_http_buf_append_str(b, "]}");
    tk_http_buf_free(&workers);
    tk_http_add_header(ctx, "Cache-Control", "no-store");
    tk_http_respond_buf(ctx, 200, "application/json");
}

/* Every admin-only route. Each is served through admin_route(), which asks
 * for the token (when admin.token is set) before anything else, so a route
 * added here can't forget it. OPEN: /dashboard only (see dashboard.c). TEST:
 * served only with admin.debug_endpoints on (404 otherwise).
 * tests/integration/test_trust.py reads this table. */
enum { OPEN = 1, TEST = 2 };
static const struct {
    const char *method, *pattern;
    tk_http_handler_fn fn;
    int flags;
} admin_routes[] = {
    {"GET", "/metrics", h_metrics, 0},
    {"GET", "/debug/stats", h_stats, 0},
    {"GET", "/debug/threads", h_threads, 0},
    {"GET", "/debug/config", tk_admin_config, 0},
    {"GET", "/dashboard", tk_admin_dashboard, OPEN},
    {"GET", "/debug/stream", tk_handlers_debug_stream, TEST},
    {"POST", "/debug/echo", tk_handlers_debug_echo, TEST},
};
#define NADMIN_ROUTES (sizeof(admin_routes) / sizeof(admin_routes[0]))
/* The router's id of each row, filled at registration (-1: not registered). */
static int admin_route_ids[NADMIN_ROUTES];

static void admin_route(tk_http_ctx_t *ctx)
{
    for (size_t i = 0; i < NADMIN_ROUTES; i++) {
        if (admin_route_ids[i] != tk_http_route_id(ctx))
            continue;
        if (!(admin_routes[i].flags & OPEN) && !authorized(ctx))
            return;
        if ((admin_routes[i].flags & TEST) && !tk_http_conf(ctx)->admin_debug_endpoints) {
            tk_http_respond_error(ctx, 404, "not found (admin.debug_endpoints is off)");
            return;
        }
        admin_routes[i].fn(ctx);
        return;
    }
    tk_http_respond_error(ctx, 404, "not found");
}

void tk_handlers_register_admin(tk_router_t *r, const tk_handlers_env_t *env)
{
    g_gt_dump = env ? env->gt_dump : NULL;
    for (size_t i = 0; i < NADMIN_ROUTES; i++)
        admin_route_ids[i] =
            tk_router_add(r, admin_routes[i].method, admin_routes[i].pattern, admin_route);
}

void tk_admin_fini(void)
{
    g_gt_dump = NULL;
    if (g_shm) {
        tk_shm_detach(g_shm);
        g_shm = NULL;
    }
}
