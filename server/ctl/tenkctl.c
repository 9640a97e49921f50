/* tenkctl.c: inspect and control a running tenkd through its shared-memory segment.
 *
 * Everything is read from /dev/shm/tenk-NAME (read-only mapping, lock-free
 * snapshots), so it works on a server too busy to answer HTTP. reload and stop
 * signal the master whose pid the segment records and wait for the outcome.
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
 *   reload:  ok, generation, workers_running, workers_configured (or ok=false, error)
 *   stop:    ok, master_pid, seconds
 * Totals include the counters of dead worker slots, so they never go down. */
#include "config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "shm/abi.h"
#include "shm/broker.h"
#include "shm/metrics.h"
#include "shm/segment.h"
#include "shm/stats_json.h"
#include "shm/view.h"

#define CTL_DEFAULT_NAME "tenk"

/* Exit codes: 0 success, 1 failure (no server, refused, timed out), 2 usage. */
enum { CTL_OK = 0, CTL_FAIL = 1, CTL_USAGE = 2 };

static struct {
    const char *name;
    int json;
    int color;
    int graceful;
    int once;
    double timeout_s; /* reload/stop; <0 = default */
} opt = {CTL_DEFAULT_NAME, 0, -1, 0, 0, -1};

/* --- small helpers ------------------------------------------------------------------ */

static void die_oom(void)
{
    fprintf(stderr, "tenkctl: out of memory\n");
    exit(CTL_FAIL);
}

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n, sz);
    if (!p)
        die_oom();
    return p;
}

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static const char *C(const char *code)
{
    return opt.color ? code : "";
}
#define BOLD  C("\033[1m")
#define DIM   C("\033[2m")
#define RED   C("\033[31m")
#define GREEN C("\033[32m")
#define YELL  C("\033[33m")
#define RST   C("\033[0m")

static const char *state_color(uint32_t s)
{
    switch (s) {
    case TK_SHM_W_RUNNING:
        return GREEN;
    case TK_SHM_W_STARTING:
    case TK_SHM_W_DRAINING:
        return YELL;
    case TK_SHM_W_DEAD:
        return RED;
    default:
        return "";
    }
}

/* 950us, 12.3ms, 1.25s */
static const char *fmt_us(double us, char *buf, size_t len)
{
    if (us <= 0)
        snprintf(buf, len, "-");
    else if (us < 1000)
        snprintf(buf, len, "%.0fus", us);
    else if (us < 1e6)
        snprintf(buf, len, "%.1fms", us / 1e3);
    else
        snprintf(buf, len, "%.2fs", us / 1e6);
    return buf;
}

/* 5s, 3m07s, 2h05m, 4d03h */
static const char *fmt_dur(double s, char *buf, size_t len)
{
    unsigned long long t = s > 0 ? (unsigned long long)s : 0;
    if (t < 60)
        snprintf(buf, len, "%llus", t);
    else if (t < 3600)
        snprintf(buf, len, "%llum%02llus", t / 60, t % 60);
    else if (t < 86400)
        snprintf(buf, len, "%lluh%02llum", t / 3600, t % 3600 / 60);
    else
        snprintf(buf, len, "%llud%02lluh", t / 86400, t % 86400 / 3600);
    return buf;
}

static const char *fmt_bytes(double b, char *buf, size_t len)
{
    static const char *const u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (b >= 1024 && i < 4) {
        b /= 1024;
        i++;
    }
    snprintf(buf, len, i ? "%.1f%s" : "%.0f%s", b, u[i]);
    return buf;
}

static const char *fmt_rate(double r, char *buf, size_t len)
{
    snprintf(buf, len, r >= 100 || r == 0 ? "%.0f" : "%.1f", r);
    return buf;
}

/* "exit 0", "signal 9", "-" */
static const char *fmt_status(int st, char *buf, size_t len)
{
    if (st < 0)
        snprintf(buf, len, "-");
    else if ((st & 0x7f) == 0)
        snprintf(buf, len, "exit %d", (st >> 8) & 0xff);
    else
        snprintf(buf, len, "signal %d", st & 0x7f);
    return buf;
}

static double pct(double part, double whole)
{
    return whole > 0 ? 100.0 * part / whole : 0.0;
}

static uint64_t errors_total(const tk_metrics_sh_t *m)
{
    uint64_t t = 0;
    for (unsigned i = 0; i < TK_METRICS_ERR_N; i++)
        t += m->errors[i];
    return t;
}

static uint64_t gt_total(const tk_metrics_sh_t *m)
{
    uint64_t t = 0;
    for (unsigned i = 0; i < TK_GT_NSTATES; i++)
        t += m->gt_by_state[i];
    return t;
}

/* --- reading the segment --------------------------------------------------------------- */

/* Attach read-only and require a live master the segment can be trusted for
 * (tk_shm_trust: start time, owner). On failure print why, return NULL. */
static tk_shm_t *ctl_attach(void)
{
    char err[512];
    tk_shm_t *shm = tk_view_attach(opt.name, 1, err, sizeof(err));
    if (shm && tk_shm_trust(shm, NULL, err, sizeof(err)) != 0) {
        tk_shm_detach(shm);
        shm = NULL;
    }
    if (!shm)
        fprintf(stderr, "tenkctl: %s\n", err);
    return shm;
}

static void view_load(tk_view_t *v, tk_shm_t *shm)
{
    if (tk_view_load(v, shm) != 0)
        die_oom();
}

/* --- JSON helpers ---------------------------------------------------------------------- */

static void json_print(cJSON *o)
{
    char *s = cJSON_Print(o);
    if (!s)
        die_oom();
    puts(s);
    free(s);
    cJSON_Delete(o);
}

static void json_head(cJSON *o, const tk_view_t *v)
{
    tk_stats_json_head(o, &v->h, v->now_real_ns);
}

static void json_worker_head(cJSON *o, const tk_view_worker_t *w)
{
    tk_stats_json_worker_head(o, w->slot, &w->w);
}

/* --- status ------------------------------------------------------------------------ */

static int cmd_status(tk_view_t *v)
{
    char b1[32], b2[32], b3[32];
    if (opt.json) {
        cJSON *o = cJSON_CreateObject();
        json_head(o, v);
        cJSON_AddStringToObject(o, "conf_path", v->h.conf_path);
        cJSON_AddNumberToObject(o, "workers_configured", v->h.workers);
        cJSON_AddNumberToObject(o, "workers_running", tk_view_count_state(v, TK_SHM_W_RUNNING, 1));
        cJSON_AddBoolToObject(o, "stopping", v->h.stopping != 0);
        cJSON_AddNumberToObject(o, "layout_version", v->h.layout_version);
        cJSON *a = cJSON_AddArrayToObject(o, "workers");
        for (unsigned i = 0; i < v->nw; i++) {
            tk_view_worker_t *w = &v->w[i];
            cJSON *x = cJSON_CreateObject();
            json_worker_head(x, w);
            cJSON_AddNumberToObject(x, "index", w->w.index);
            cJSON_AddNumberToObject(
                x, "uptime_s",
                tk_view_live_state(w->w.state) ? tk_view_uptime_s(v, w->w.start_ns) : 0);
            cJSON_AddNumberToObject(x, "restarts", w->w.respawns);
            if (w->w.last_status < 0)
                cJSON_AddNullToObject(x, "last_exit");
            else
                cJSON_AddStringToObject(x, "last_exit",
                                        fmt_status(w->w.last_status, b1, sizeof(b1)));
            uint64_t hb = w->snap->m.live.heartbeat_ns;
            cJSON_AddNumberToObject(x, "heartbeat_age_s",
                                    hb && v->now_mono_ns > hb ? (double)(v->now_mono_ns - hb) / 1e9
                                                              : 0);
            cJSON_AddBoolToObject(x, "accepting", w->snap->m.live.accepting != 0);
            cJSON_AddItemToArray(a, x);
        }
        json_print(o);
        return CTL_OK;
    }
    printf("%stenk '%s'%s  master pid %d  up %s  generation %llu%s\n", BOLD, v->h.name, RST,
           (int)v->h.master_pid, fmt_dur(tk_view_uptime_s(v, v->h.created_ns), b1, sizeof(b1)),
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
               (unsigned long long)w->w.generation, state_color(w->w.state),
               tk_shm_wstate_name((tk_shm_wstate_t)w->w.state), RST,
               live ? fmt_dur(tk_view_uptime_s(v, w->w.start_ns), b2, sizeof(b2)) : "-",
               w->w.respawns, fmt_status(w->w.last_status, b3, sizeof(b3)), hbs,
               live ? (w->snap->m.live.accepting ? "yes" : "no") : "-");
    }
    return CTL_OK;
}

/* --- stats -------------------------------------------------------------------------- */

static int cmd_stats(tk_view_t *v)
{
    const tk_metrics_snap_t *t = v->total;
    const tk_metrics_sh_t *m = &t->m;
    if (opt.json) {
        cJSON *o = cJSON_CreateObject();
        json_head(o, v);
        /* false if a worker died mid-update: its slot may be off by one request */
        cJSON_AddBoolToObject(o, "consistent", !t->torn);
        /* green threads by state too: scripts/bench plots them once a second */
        tk_stats_json_stats_block(o, t, v->now_sec, TK_STATS_JSON_THREADS);
        cJSON_AddItemToObject(o, "routes", tk_stats_json_routes(m));
        cJSON *a = cJSON_AddArrayToObject(o, "workers");
        for (unsigned i = 0; i < v->nw; i++) {
            cJSON *x = cJSON_CreateObject();
            json_worker_head(x, &v->w[i]);
            tk_stats_json_stats_block(x, v->w[i].snap, v->now_sec, TK_STATS_JSON_THREADS);
            cJSON_AddItemToArray(a, x);
        }
        json_print(o);
        return CTL_OK;
    }

    char b[8][32];
    tk_metrics_rate_t r[3];
    static const unsigned win[] = {1, 10, 60};
    for (int i = 0; i < 3; i++)
        tk_metrics_rate(t, v->now_sec, win[i], &r[i]);
    printf("%stenk '%s'%s  master pid %d  up %s  generation %llu  %u workers running\n\n", BOLD,
           v->h.name, RST, (int)v->h.master_pid,
           fmt_dur(tk_view_uptime_s(v, v->h.created_ns), b[0], 32),
           (unsigned long long)v->h.generation, tk_view_count_state(v, TK_SHM_W_RUNNING, 0));
    printf("%s%-14s %12s %12s %12s%s\n", BOLD, "", "1s", "10s", "60s", RST);
    printf("%-14s %12s %12s %12s\n", "requests/s", fmt_rate(r[0].requests, b[0], 32),
           fmt_rate(r[1].requests, b[1], 32), fmt_rate(r[2].requests, b[2], 32));
    printf("%-14s %12s %12s %12s\n", "errors/s", fmt_rate(r[0].errors, b[0], 32),
           fmt_rate(r[1].errors, b[1], 32), fmt_rate(r[2].errors, b[2], 32));
    printf("%-14s %12s %12s %12s\n", "bytes in/s", fmt_bytes(r[0].bytes_in, b[0], 32),
           fmt_bytes(r[1].bytes_in, b[1], 32), fmt_bytes(r[2].bytes_in, b[2], 32));
    printf("%-14s %12s %12s %12s\n\n", "bytes out/s", fmt_bytes(r[0].bytes_out, b[0], 32),
           fmt_bytes(r[1].bytes_out, b[1], 32), fmt_bytes(r[2].bytes_out, b[2], 32));

    uint64_t et = errors_total(m);
    printf("%-14s %llu  (errors %llu, %.2f%%)\n", "requests", (unsigned long long)m->requests,
           (unsigned long long)et, pct((double)et, (double)m->requests));
    printf("%-14s p50 %s  p90 %s  p99 %s  p99.9 %s  mean %s\n", "latency",
           fmt_us(tk_metrics_percentile(t, 50), b[0], 32),
           fmt_us(tk_metrics_percentile(t, 90), b[1], 32),
           fmt_us(tk_metrics_percentile(t, 99), b[2], 32),
           fmt_us(tk_metrics_percentile(t, 99.9), b[3], 32),
           fmt_us(tk_metrics_mean_us(t), b[4], 32));
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
    printf("%-14s in %s  out %s\n", "bytes", fmt_bytes((double)m->bytes_in, b[0], 32),
           fmt_bytes((double)m->bytes_out, b[1], 32));
    /* the states with threads in them; `tenkctl threads` has the full table */
    printf("%-14s %llu", "green threads", (unsigned long long)gt_total(m));
    for (unsigned s = 0, n = 0; s < TK_GT_NSTATES; s++)
        if (m->gt_by_state[s])
            printf("%s%s %llu", n++ ? ", " : " (", tk_gt_state_name((tk_gt_state_t)s),
                   (unsigned long long)m->gt_by_state[s]);
    printf("%s\n", gt_total(m) ? ")" : "");
    if (m->cache_hits + m->cache_misses + m->cache_errors + m->cache_bypasses)
        printf("%-14s hits %llu  misses %llu  errors %llu  bypasses %llu  (hit rate %.1f%%, "
               "redis %.0f us mean)\n",
               "cache", (unsigned long long)m->cache_hits, (unsigned long long)m->cache_misses,
               (unsigned long long)m->cache_errors, (unsigned long long)m->cache_bypasses,
               pct((double)m->cache_hits, (double)(m->cache_hits + m->cache_misses)),
               m->cache_lat_count ? (double)m->cache_lat_sum_us / m->cache_lat_count : 0.0);

    printf("\n%s%-5s %-8s %-9s %12s %10s %9s %9s %9s %8s %6s%s\n", BOLD, "SLOT", "PID", "STATE",
           "REQUESTS", "REQ/S 10s", "P50", "P99", "P99.9", "ERRORS", "CONNS", RST);
    for (unsigned i = 0; i < v->nw; i++) {
        tk_view_worker_t *w = &v->w[i];
        const tk_metrics_sh_t *wm = &w->snap->m;
        tk_metrics_rate_t wr;
        tk_metrics_rate(w->snap, v->now_sec, 10, &wr);
        printf("%-5u %-8d %s%-9s%s %12llu %10s %9s %9s %9s %8llu %6llu\n", w->slot, (int)w->w.pid,
               state_color(w->w.state), tk_shm_wstate_name((tk_shm_wstate_t)w->w.state), RST,
               (unsigned long long)wm->requests, fmt_rate(wr.requests, b[0], 32),
               fmt_us(tk_metrics_percentile(w->snap, 50), b[1], 32),
               fmt_us(tk_metrics_percentile(w->snap, 99), b[2], 32),
               fmt_us(tk_metrics_percentile(w->snap, 99.9), b[3], 32),
               (unsigned long long)errors_total(wm),
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
        printf("%-32.32s %12llu %10s %10llu %8llu %8llu\n", rt->name,
               (unsigned long long)rt->requests,
               fmt_us(rt->requests ? (double)rt->latency_us_sum / rt->requests : 0, b[0], 32),
               (unsigned long long)rt->status[2], (unsigned long long)rt->status[4],
               (unsigned long long)rt->status[5]);
    }
    return CTL_OK;
}

/* --- threads ------------------------------------------------------------------------ */

static int cmd_threads(tk_view_t *v)
{
    tk_metrics_snap_t *live = xcalloc(1, sizeof(*live));
    unsigned nlive = 0;
    tk_view_worker_t **lw = xcalloc(v->nw + 1, sizeof(*lw));
    for (unsigned i = 0; i < v->nw; i++)
        if (tk_view_live_state(v->w[i].w.state)) {
            lw[nlive++] = &v->w[i];
            tk_metrics_merge(live, v->w[i].snap);
        }
    const tk_metrics_sh_t *t = &live->m;
    uint64_t total = gt_total(t);

    if (opt.json) {
        cJSON *o = cJSON_CreateObject();
        json_head(o, v);
        cJSON *tt = cJSON_AddObjectToObject(o, "total");
        cJSON *pp = cJSON_AddObjectToObject(o, "percent");
        for (unsigned s = 0; s < TK_GT_NSTATES; s++) {
            const char *n = tk_gt_state_name((tk_gt_state_t)s);
            cJSON_AddNumberToObject(tt, n, (double)t->gt_by_state[s]);
            cJSON_AddNumberToObject(pp, n, pct((double)t->gt_by_state[s], (double)total));
        }
        tk_stats_json_gt_counters(o, t);
        cJSON *a = cJSON_AddArrayToObject(o, "workers");
        for (unsigned i = 0; i < nlive; i++) {
            const tk_metrics_sh_t *m = &lw[i]->snap->m;
            cJSON *x = cJSON_CreateObject();
            json_worker_head(x, lw[i]);
            cJSON_AddItemToObject(x, "by_state", tk_stats_json_gt_by_state(m));
            tk_stats_json_gt_counters(x, m);
            cJSON_AddItemToArray(a, x);
        }
        json_print(o);
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
            printf(" %12llu", (unsigned long long)(sum ? gt_total(m) : m->gt_by_state[s]));
        }
        uint64_t n = sum ? total : t->gt_by_state[s];
        printf(" %12llu %7.1f%%%s\n", (unsigned long long)n, pct((double)n, (double)total),
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
                printf(" %12s", fmt_bytes((double)x, b[0], 32));
            else
                printf(" %12llu", (unsigned long long)x);
        }
        uint64_t x = *(const uint64_t *)((const char *)t + rows[k].off);
        if (rows[k].bytes)
            printf(" %12s\n", fmt_bytes((double)x, b[1], 32));
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
static int db_configured(const tk_broker_sh_t *b)
{
    if (!b)
        return 0;
    for (unsigned i = 0; i < TK_BROKER_MAX_WORKERS; i++)
        if (__atomic_load_n(&b->workers[i].gen, __ATOMIC_RELAXED) != 0)
            return 1;
    return 0;
}

static int cmd_db(tk_view_t *v)
{
    const tk_broker_sh_t *b = tk_view_broker(v->shm);
    if (!db_configured(b)) {
        if (opt.json) {
            cJSON *o = cJSON_CreateObject();
            json_head(o, v);
            tk_stats_json_db(o, NULL);
            json_print(o);
        } else
            printf("database: not configured\n");
        return CTL_OK;
    }
    tk_broker_stats_t st;
    tk_broker_stats(b, -1, &st);
    uint32_t max_open = b->max_open, nfree = b->nfree, qlen = b->qlen, qhwm = b->qhwm;
    double avg_wait_us = st.wait_count ? (double)st.wait_ns / 1e3 / (double)st.wait_count : 0;

    if (opt.json) {
        cJSON *o = cJSON_CreateObject();
        json_head(o, v);
        tk_stats_json_db(o, b);
        cJSON *a = cJSON_AddArrayToObject(o, "workers");
        for (unsigned i = 0; i < v->nw; i++) {
            tk_view_worker_t *w = &v->w[i];
            if (!tk_view_live_state(w->w.state) || w->slot >= TK_BROKER_MAX_WORKERS)
                continue;
            cJSON *x = cJSON_CreateObject();
            json_worker_head(x, w);
            tk_stats_json_db_worker(x, b, w->slot);
            cJSON_AddItemToArray(a, x);
        }
        json_print(o);
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
           fmt_us((double)st.wait_ns / 1e3, b1, sizeof(b1)), fmt_us(avg_wait_us, b2, sizeof(b2)),
           p99 == UINT64_MAX ? "inf" : fmt_us((double)p99, b3, sizeof(b3)));
    printf("%-16s %llu  (timeouts %llu, queue full %llu, query timeouts %llu)\n", "acquires",
           (unsigned long long)st.acquires, (unsigned long long)st.acquire_timeouts,
           (unsigned long long)st.queue_full, (unsigned long long)st.query_timeouts);
    printf("%-16s max idle %llu  idle time %llu  lifetime %llu  after errors %llu\n", "closed",
           (unsigned long long)st.max_idle_closed, (unsigned long long)st.max_idle_time_closed,
           (unsigned long long)st.max_lifetime_closed, (unsigned long long)st.errors_closed);
    printf("%-16s %llu  handoffs local %llu  remote %llu\n", "connect errors",
           (unsigned long long)st.connect_errors, (unsigned long long)st.handoffs_local,
           (unsigned long long)st.handoffs_remote);
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
               wp99 == UINT64_MAX ? "inf" : fmt_us((double)wp99, b3, sizeof(b3)),
               (unsigned long long)ws.acquires);
    }
    return CTL_OK;
}

/* --- top ---------------------------------------------------------------------------- */

static volatile sig_atomic_t top_quit, top_resized;
static struct termios top_saved;
static int top_raw;

static void top_on_signal(int sig)
{
    if (sig == SIGWINCH)
        top_resized = 1;
    else
        top_quit = 1;
}

static void top_restore(void)
{
    if (!top_raw)
        return;
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &top_saved);
    /* show the cursor, leave the alternate screen */
    fputs("\033[?25h\033[?1049l", stdout);
    fflush(stdout);
    top_raw = 0;
}

/* One frame, assembled as plain lines first so clipping to the width is exact;
 * a line's first `bold` characters are drawn bold. */
typedef struct {
    char text[512];
    int bold; /* leading characters to draw bold; -1 = the whole line inverse */
    int warn; /* draw the rest in red */
} top_line_t;

typedef struct {
    top_line_t l[128];
    int n;
} top_frame_t;

static void top_add(top_frame_t *f, int bold, int warn, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void top_add(top_frame_t *f, int bold, int warn, const char *fmt, ...)
{
    if (f->n >= (int)(sizeof(f->l) / sizeof(f->l[0])))
        return;
    top_line_t *l = &f->l[f->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->text, sizeof(l->text), fmt, ap);
    va_end(ap);
    l->bold = bold;
    l->warn = warn;
}

/* Per-slot values of the previous frame, for CPU% and recent latency. */
typedef struct {
    uint64_t cpu_ns[TK_SHM_MAX_SLOTS];
    uint64_t mono_ns;
    tk_metrics_snap_t *prev_total;
    int have;
} top_prev_t;

static void top_build(top_frame_t *f, tk_view_t *v, top_prev_t *p)
{
    char b[10][32];
    const tk_metrics_snap_t *t = v->total;
    const tk_metrics_sh_t *m = &t->m;
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    f->n = 0;

    top_add(f, -1, 0,
            "tenk '%s'  master %d  generation %llu  up %s  %u/%u workers running  %02d:%02d:%02d",
            v->h.name, (int)v->h.master_pid, (unsigned long long)v->h.generation,
            fmt_dur(tk_view_uptime_s(v, v->h.created_ns), b[0], 32),
            tk_view_count_state(v, TK_SHM_W_RUNNING, 1), v->h.workers, tm.tm_hour, tm.tm_min,
            tm.tm_sec);
    top_add(f, 0, 0, "%s", "");

    tk_metrics_rate_t r1, r10, r60;
    tk_metrics_rate(t, v->now_sec, 1, &r1);
    tk_metrics_rate(t, v->now_sec, 10, &r10);
    tk_metrics_rate(t, v->now_sec, 60, &r60);
    top_add(f, 12, 0, "%-12s 1s %-10s 10s %-10s 60s %-10s total %llu", "requests/s",
            fmt_rate(r1.requests, b[0], 32), fmt_rate(r10.requests, b[1], 32),
            fmt_rate(r60.requests, b[2], 32), (unsigned long long)m->requests);

    /* latency over the last refresh interval when there is one, else since start */
    tk_metrics_snap_t *d = xcalloc(1, sizeof(*d));
    const char *window = "since start";
    uint64_t dn = 0;
    if (p->have) {
        for (unsigned i = 0; i < TK_METRICS_NBUCKETS; i++) {
            uint64_t a = m->hist[i], z = p->prev_total->m.hist[i];
            d->m.hist[i] = a > z ? a - z : 0;
            dn += d->m.hist[i];
        }
    }
    const tk_metrics_snap_t *ls = t;
    if (dn) {
        ls = d;
        window = "last interval";
    }
    top_add(f, 12, 0, "%-12s p50 %-9s p90 %-9s p99 %-9s p99.9 %-9s (%s)", "latency",
            fmt_us(tk_metrics_percentile(ls, 50), b[0], 32),
            fmt_us(tk_metrics_percentile(ls, 90), b[1], 32),
            fmt_us(tk_metrics_percentile(ls, 99), b[2], 32),
            fmt_us(tk_metrics_percentile(ls, 99.9), b[3], 32), window);
    free(d);

    uint64_t et = errors_total(m);
    top_add(f, 12, r10.errors > 0,
            "%-12s %s/s (%.2f%% of requests, 10s)  parse %llu  limit %llu  timeout %llu  5xx %llu",
            "errors", fmt_rate(r10.errors, b[0], 32), pct(r10.errors, r10.requests),
            (unsigned long long)m->errors[TK_METRICS_ERR_PARSE],
            (unsigned long long)m->errors[TK_METRICS_ERR_LIMIT],
            (unsigned long long)m->errors[TK_METRICS_ERR_TIMEOUT],
            (unsigned long long)m->errors[TK_METRICS_ERR_5XX]);
    (void)et;
    top_add(f, 12, 0, "%-12s open %llu  active %llu  idle %llu  accepted %llu  in %s/s  out %s/s",
            "connections", (unsigned long long)(m->conns_active + m->conns_idle),
            (unsigned long long)m->conns_active, (unsigned long long)m->conns_idle,
            (unsigned long long)m->conns_accepted, fmt_bytes(r10.bytes_in, b[0], 32),
            fmt_bytes(r10.bytes_out, b[1], 32));

    /* green threads of live workers */
    uint64_t by[TK_GT_NSTATES] = {0}, gtt = 0;
    for (unsigned i = 0; i < v->nw; i++)
        if (tk_view_live_state(v->w[i].w.state))
            for (unsigned s = 0; s < TK_GT_NSTATES; s++)
                by[s] += v->w[i].snap->m.gt_by_state[s];
    char line[512];
    int off = snprintf(line, sizeof(line), "%-12s", "threads");
    for (unsigned s = 0; s < TK_GT_NSTATES; s++) {
        gtt += by[s];
        off += snprintf(line + off, sizeof(line) - (size_t)off, " %s %llu ",
                        tk_gt_state_name((tk_gt_state_t)s), (unsigned long long)by[s]);
    }
    top_add(f, 12, 0, "%s", line);

    const tk_broker_sh_t *br = tk_shm_broker(v->shm);
    if (db_configured(br)) {
        tk_broker_stats_t st;
        tk_broker_stats(br, -1, &st);
        top_add(f, 12, br->qlen > 0,
                "%-12s in use %llu  idle %llu  waiting %u  open %llu/%u  timeouts %llu", "database",
                (unsigned long long)st.in_use, (unsigned long long)st.idle, br->qlen,
                (unsigned long long)st.open, br->max_open, (unsigned long long)st.acquire_timeouts);
    } else
        top_add(f, 12, 0, "%-12s not configured", "database");
    uint64_t lookups = m->cache_hits + m->cache_misses;
    if (lookups || m->cache_errors)
        top_add(f, 12, 0, "%-12s hit rate %.1f%%  hits %llu  misses %llu  errors %llu", "cache",
                pct((double)m->cache_hits, (double)lookups), (unsigned long long)m->cache_hits,
                (unsigned long long)m->cache_misses, (unsigned long long)m->cache_errors);
    else
        top_add(f, 12, 0, "%-12s no lookups", "cache");
    top_add(f, 0, 0, "%s", "");

    top_add(f, -2, 0, "%-5s %-8s %-9s %10s %9s %8s %8s %6s %7s %6s %10s", "SLOT", "PID", "STATE",
            "REQ/S", "P99", "ERRORS", "CONNS", "GT", "CPU%", "RSS", "UPTIME");
    double dt = p->have && v->now_mono_ns > p->mono_ns ? (double)(v->now_mono_ns - p->mono_ns) : 0;
    for (unsigned i = 0; i < v->nw; i++) {
        tk_view_worker_t *w = &v->w[i];
        const tk_metrics_sh_t *wm = &w->snap->m;
        if (!tk_view_live_state(w->w.state))
            continue;
        tk_metrics_rate_t wr;
        tk_metrics_rate(w->snap, v->now_sec, 1, &wr);
        uint64_t cpu = wm->cpu_user_ns + wm->cpu_sys_ns;
        char cpus[16] = "-";
        if (dt > 0 && w->slot < TK_SHM_MAX_SLOTS && cpu >= p->cpu_ns[w->slot])
            snprintf(cpus, sizeof(cpus), "%.1f", 100.0 * (double)(cpu - p->cpu_ns[w->slot]) / dt);
        top_add(f, 0, 0, "%-5u %-8d %-9s %10s %9s %8llu %8llu %6llu %7s %6s %10s", w->slot,
                (int)w->w.pid, tk_shm_wstate_name((tk_shm_wstate_t)w->w.state),
                fmt_rate(wr.requests, b[0], 32),
                fmt_us(tk_metrics_percentile(w->snap, 99), b[1], 32),
                (unsigned long long)errors_total(wm),
                (unsigned long long)(wm->conns_active + wm->conns_idle),
                (unsigned long long)gt_total(wm), cpus, fmt_bytes((double)wm->rss_bytes, b[2], 32),
                fmt_dur(tk_view_uptime_s(v, w->w.start_ns), b[3], 32));
    }

    /* remember this frame */
    for (unsigned i = 0; i < v->nw; i++)
        if (v->w[i].slot < TK_SHM_MAX_SLOTS)
            p->cpu_ns[v->w[i].slot] = v->w[i].snap->m.cpu_user_ns + v->w[i].snap->m.cpu_sys_ns;
    p->mono_ns = v->now_mono_ns;
    memcpy(p->prev_total, t, sizeof(*t));
    p->have = 1;
}

/* Draw the frame at the top-left, each line clipped to cols, rest cleared. */
static void top_draw(const top_frame_t *f, int rows, int cols, int plain)
{
    size_t cap = (size_t)(rows + 2) * ((size_t)cols + 32) + 64;
    char *out = xcalloc(1, cap);
    size_t o = 0;
#define PUT(...) o += (size_t)snprintf(out + o, cap - o, __VA_ARGS__)
    if (!plain)
        PUT("\033[H");
    int maxl = plain ? f->n : rows - 1; /* keep the last row for the key hint */
    for (int i = 0; i < f->n && i < maxl; i++) {
        const top_line_t *l = &f->l[i];
        int len = (int)strlen(l->text);
        if (len > cols)
            len = cols;
        if (plain) {
            PUT("%.*s\n", len, l->text);
            continue;
        }
        if (l->bold == -1) /* title: the full width in inverse video */
            PUT("\033[7m%.*s%*s\033[0m", len, l->text, cols - len, "");
        else if (l->bold == -2)
            PUT("\033[1m%.*s\033[0m", len, l->text);
        else {
            int bl = l->bold < len ? l->bold : len;
            PUT("\033[1m%.*s\033[0m%s%.*s\033[0m", bl, l->text, l->warn ? "\033[31m" : "", len - bl,
                l->text + bl);
        }
        PUT("\033[K\r\n");
    }
    if (!plain) {
        PUT("\033[J\033[%d;1H\033[2mq: quit%s\033[0m\033[K", rows,
            cols >= 40 ? "   refresh: 1 s" : "");
    }
#undef PUT
    fwrite(out, 1, o, stdout);
    fflush(stdout);
    free(out);
}

static int cmd_top(tk_shm_t *shm)
{
    tk_view_t v = {0};
    top_prev_t *p = xcalloc(1, sizeof(*p));
    p->prev_total = xcalloc(1, sizeof(*p->prev_total));
    top_frame_t *f = xcalloc(1, sizeof(*f));
    int rc = CTL_OK;

    if (opt.once || !isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
        if (!opt.once) {
            fprintf(stderr, "tenkctl: top needs a terminal (use 'top --once' for one frame)\n");
            rc = CTL_USAGE;
        } else {
            view_load(&v, shm);
            top_build(f, &v, p);
            top_draw(f, 0, 511, 1);
        }
        goto out;
    }

    if (tcgetattr(STDIN_FILENO, &top_saved) < 0) {
        fprintf(stderr, "tenkctl: tcgetattr() failed: %s\n", strerror(errno));
        rc = CTL_FAIL;
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = top_on_signal; /* no SA_RESTART: poll() wakes up with EINTR */
    sigaction(SIGWINCH, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    struct termios raw = top_saved;
    raw.c_lflag &= (tcflag_t) ~(ICANON | ECHO);
    raw.c_cc[VMIN] = 0;
    raw.c_cc[VTIME] = 0;
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw);
    top_raw = 1;
    atexit(top_restore);
    fputs("\033[?1049h\033[?25l\033[2J", stdout); /* alternate screen, hide the cursor */

    uint64_t next = 0;
    while (!top_quit) {
        uint64_t now = clock_ns(CLOCK_MONOTONIC);
        if (now >= next || top_resized) {
            struct winsize ws;
            int rows = 24, cols = 80;
            if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0) {
                rows = ws.ws_row;
                cols = ws.ws_col;
            }
            if (top_resized)
                fputs("\033[2J", stdout);
            if (now >= next) {
                if (!tk_shm_master_alive(shm)) {
                    top_restore();
                    fprintf(stderr, "tenkctl: tenk '%s' stopped\n", opt.name);
                    rc = CTL_FAIL;
                    goto out;
                }
                view_load(&v, shm);
                top_build(f, &v, p);
                next = now + 1000000000ull;
            }
            top_resized = 0;
            top_draw(f, rows, cols, 0);
        }
        uint64_t wait_ms = next > now ? (next - now) / 1000000u + 1 : 0;
        struct pollfd pfd = {.fd = STDIN_FILENO, .events = POLLIN};
        int n = poll(&pfd, 1, (int)wait_ms);
        if (n > 0) {
            char buf[64];
            ssize_t k = read(STDIN_FILENO, buf, sizeof(buf));
            if (k == 0)
                top_quit = 1; /* the terminal went away */
            for (ssize_t i = 0; i < k; i++)
                if (buf[i] == 'q' || buf[i] == 'Q' || buf[i] == 3 /* ^C */)
                    top_quit = 1;
        }
    }
    top_restore();
out:
    tk_view_free(&v);
    free(p->prev_total);
    free(p);
    free(f);
    return rc;
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
static int cmd_reload(tk_shm_t *shm)
{
    tk_shm_header_sh_t *h = tk_shm_header(shm);
    uint64_t seq0 = __atomic_load_n(&h->reload_seq, __ATOMIC_ACQUIRE);
    uint64_t gen0 = __atomic_load_n(&h->generation, __ATOMIC_ACQUIRE);
    double timeout = opt.timeout_s >= 0 ? opt.timeout_s : 60;
    uint64_t deadline = clock_ns(CLOCK_MONOTONIC) + (uint64_t)(timeout * 1e9);

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
        if (clock_ns(CLOCK_MONOTONIC) >= deadline) {
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
        if (opt.json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddBoolToObject(o, "ok", 0);
            cJSON_AddStringToObject(o, "error", why);
            cJSON_AddNumberToObject(o, "generation", (double)h->generation);
            json_print(o);
        }
        fprintf(stderr, "tenkctl: reload of '%s' failed, still running generation %llu: %s\n",
                opt.name, (unsigned long long)h->generation, why);
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
        if (running >= want || clock_ns(CLOCK_MONOTONIC) >= deadline)
            break;
        sleep_ms(20);
    }
    if (opt.json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "ok", running >= want);
        cJSON_AddNumberToObject(o, "generation", (double)gen);
        cJSON_AddNumberToObject(o, "workers_running", running);
        cJSON_AddNumberToObject(o, "workers_configured", want);
        json_print(o);
    } else if (running >= want)
        printf("reloaded '%s': generation %llu, %u workers running\n", opt.name,
               (unsigned long long)gen, running);
    if (running < want) {
        fprintf(stderr, "tenkctl: generation %llu has only %u of %u workers running\n",
                (unsigned long long)gen, running, want);
        return CTL_FAIL;
    }
    return CTL_OK;
}

/* SIGTERM (fast) or SIGQUIT (graceful), then wait for the master to be gone. */
static int cmd_stop(tk_shm_t *shm)
{
    pid_t pid = tk_shm_header(shm)->master_pid;
    double timeout = opt.timeout_s >= 0 ? opt.timeout_s : (opt.graceful ? 90 : 30);
    uint64_t t0 = clock_ns(CLOCK_MONOTONIC);
    uint64_t deadline = t0 + (uint64_t)(timeout * 1e9);
    if (ctl_signal_master(shm, opt.graceful ? SIGQUIT : SIGTERM) < 0)
        return CTL_FAIL;
    while (tk_shm_master_alive(shm)) {
        if (clock_ns(CLOCK_MONOTONIC) >= deadline) {
            fprintf(stderr, "tenkctl: master pid %d still running %.0f s after %s\n", (int)pid,
                    timeout, opt.graceful ? "SIGQUIT" : "SIGTERM");
            return CTL_FAIL;
        }
        sleep_ms(20);
    }
    double took = (double)(clock_ns(CLOCK_MONOTONIC) - t0) / 1e9;
    if (opt.json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "ok", 1);
        cJSON_AddNumberToObject(o, "master_pid", pid);
        cJSON_AddNumberToObject(o, "seconds", took);
        json_print(o);
    } else
        printf("stopped '%s' (master pid %d) in %.1f s\n", opt.name, (int)pid, took);
    return CTL_OK;
}

/* --- main --------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: tenkctl [-n NAME] [--color|--no-color] COMMAND [--json]\n"
            "\n"
            "Reads the shared memory of the tenkd instance NAME (default '%s'; also $TENK_NAME);\n"
            "needs no HTTP port.\n"
            "\n"
            "commands:\n"
            "  status              master pid, uptime, generation, config, workers\n"
            "  stats               requests/s (1/10/60 s), latency percentiles, errors, bytes,\n"
            "                      connections, per worker and per route\n"
            "  threads             green threads by scheduler state, per worker and in total\n"
            "  db                  database connection pool (broker) statistics\n"
            "  top [--once]        live view refreshing every second; q quits\n"
            "  reload [--timeout S]          SIGHUP; waits for the new generation or the error\n"
            "  stop [--graceful] [--timeout S]  SIGTERM (SIGQUIT with --graceful); waits for exit\n"
            "\n"
            "--json prints one JSON object. Exit status: 0 ok, 1 failure (no such server,\n"
            "permission denied, layout version mismatch, reload refused, timeout), 2 usage.\n",
            CTL_DEFAULT_NAME);
}

int main(int argc, char **argv)
{
    const char *cmd = NULL;
    const char *env = getenv("TENK_NAME");
    if (env && *env)
        opt.name = env;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-n") || !strcmp(a, "--name")) {
            if (++i >= argc) {
                fprintf(stderr, "tenkctl: %s needs a name\n", a);
                return CTL_USAGE;
            }
            opt.name = argv[i];
        } else if (!strncmp(a, "--name=", 7))
            opt.name = a + 7;
        else if (!strcmp(a, "--json"))
            opt.json = 1;
        else if (!strcmp(a, "--color"))
            opt.color = 1;
        else if (!strcmp(a, "--no-color"))
            opt.color = 0;
        else if (!strcmp(a, "--graceful"))
            opt.graceful = 1;
        else if (!strcmp(a, "--once"))
            opt.once = 1;
        else if (!strcmp(a, "--timeout") || !strncmp(a, "--timeout=", 10)) {
            const char *s = a[9] == '=' ? a + 10 : (++i < argc ? argv[i] : NULL);
            char *end;
            if (!s || (opt.timeout_s = strtod(s, &end), *end || opt.timeout_s < 0)) {
                fprintf(stderr, "tenkctl: --timeout needs a number of seconds\n");
                return CTL_USAGE;
            }
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help") || !strcmp(a, "help")) {
            usage(stdout);
            return CTL_OK;
        } else if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
            printf("tenkctl %s (shared-memory layout %u)\n", PACKAGE_VERSION,
                   TK_SHM_LAYOUT_VERSION);
            return CTL_OK;
        } else if (a[0] == '-') {
            fprintf(stderr, "tenkctl: unknown option %s\n", a);
            usage(stderr);
            return CTL_USAGE;
        } else if (!cmd)
            cmd = a;
        else {
            fprintf(stderr, "tenkctl: unexpected argument '%s'\n", a);
            return CTL_USAGE;
        }
    }
    if (!cmd) {
        usage(stderr);
        return CTL_USAGE;
    }
    static const char *const cmds[] = {"status", "stats", "threads", "db", "top", "reload", "stop"};
    int known = 0;
    for (unsigned i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
        known |= !strcmp(cmd, cmds[i]);
    if (!known) {
        fprintf(stderr, "tenkctl: unknown command '%s'\n", cmd);
        usage(stderr);
        return CTL_USAGE;
    }
    if (opt.color < 0)
        opt.color = isatty(STDOUT_FILENO) && !getenv("NO_COLOR") && !opt.json;

    tk_shm_t *shm = ctl_attach();
    if (!shm)
        return CTL_FAIL;
    int rc;
    if (!strcmp(cmd, "top"))
        rc = cmd_top(shm);
    else if (!strcmp(cmd, "reload"))
        rc = cmd_reload(shm);
    else if (!strcmp(cmd, "stop"))
        rc = cmd_stop(shm);
    else {
        tk_view_t v = {0};
        view_load(&v, shm);
        if (!strcmp(cmd, "status"))
            rc = cmd_status(&v);
        else if (!strcmp(cmd, "stats"))
            rc = cmd_stats(&v);
        else if (!strcmp(cmd, "threads"))
            rc = cmd_threads(&v);
        else
            rc = cmd_db(&v);
        tk_view_free(&v);
    }
    tk_shm_detach(shm);
    return rc;
}
