/* admin_metrics.c: GET /metrics, the Prometheus text format, written from one table of metric
 * descriptors by one emitter. */
#include "config.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cache/cache.h"
#include "handlers/admin_int.h"
#include "http/http_response.h"
#include "proc/conf.h"
#include "runtime/scheduler.h"
#include "shm/broker.h"
#include "shm/metrics.h"
#include "shm/segment.h"
#include "shm/view.h"

/* What one /metrics answer reads: the segment's copy, the database pool and
 * the master's usage, each read once. */
typedef struct {
    const tk_view_t *v;
    const tk_broker_sh_t *br; /* NULL: no database configured */
    int master_ok;            /* the master's /proc entry was read */
    uint64_t master_rss;
    double master_cpu[2]; /* user, system seconds */
} prom_t;

/* A histogram's samples: cumulative counts at each finite bound, then the total. */
#define PROM_MAX_LE 64
typedef struct {
    unsigned n;
    double le[PROM_MAX_LE]; /* seconds */
    uint64_t cum[PROM_MAX_LE];
    uint64_t count;
    double sum; /* seconds */
} prom_hist_t;

/* Where a sample's value is read. */
typedef enum {
    SRC_METRICS, /* a uint64_t at off (+ label index) in the worker's tk_metrics_sh_t */
    SRC_DB,      /* the same in the worker's tk_broker_stats_t */
    SRC_GET,     /* get() or getd() */
} prom_src_t;

/* How a value is printed: an integer, or value / div as %.9g, %.6f or %.3f. */
typedef enum { V_INT, V_G9, V_F6, V_F3 } prom_fmt_t;

enum {
    F_INSTANCE = 1, /* one series for the instance, no worker label */
    F_LIVE = 2,     /* live workers only (gauges); otherwise every used slot */
    F_DB_SLOT = 4,  /* workers with a database-pool slot only */
    F_DB = 8,       /* only with a database configured */
    F_CACHE = 16,   /* only with Redis configured */
    F_MASTER = 32,  /* only when the master's usage was read */
};

typedef struct {
    const char *name, *type, *help;
    unsigned flags;
    const char *label; /* a second label's name, or NULL */
    unsigned nlabel;   /* its values: label_value(0 .. nlabel-1) */
    const char *(*label_value)(unsigned k);
    prom_src_t src;
    size_t off;
    uint64_t (*get)(const prom_t *p, const tk_view_worker_t *w, unsigned k);
    double (*getd)(const prom_t *p, const tk_view_worker_t *w, unsigned k);
    prom_fmt_t fmt;
    double div;
    /* histograms: the samples of one worker (or of the instance, w NULL) */
    void (*hist)(const prom_t *p, const tk_view_worker_t *w, prom_hist_t *h);
    /* families of their own shape (per route): write the samples */
    void (*emit)(tk_http_buf_t *b, const prom_t *p);
} prom_metric_t;

/* --- writing --------------------------------------------------------------------------- */

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

static void put_double(tk_http_buf_t *b, prom_fmt_t fmt, double x)
{
    switch (fmt) {
    case V_G9:
        tk_http_buf_printf(b, " %.9g\n", x);
        break;
    case V_F6:
        tk_http_buf_printf(b, " %.6f\n", x);
        break;
    default:
        tk_http_buf_printf(b, " %.3f\n", x);
        break;
    }
}

static void put_value(tk_http_buf_t *b, const prom_metric_t *d, const prom_t *p,
                      const tk_view_worker_t *w, unsigned k)
{
    if (d->getd) {
        put_double(b, d->fmt, d->getd(p, w, k));
        return;
    }
    uint64_t x = 0;
    if (d->src == SRC_METRICS) {
        x = *(const uint64_t *)((const char *)&w->snap->m + d->off + k * sizeof(uint64_t));
    } else if (d->src == SRC_DB) {
        tk_broker_stats_t st;
        tk_broker_stats(p->br, (int)w->slot, &st);
        x = *(const uint64_t *)((const char *)&st + d->off + k * sizeof(uint64_t));
    } else {
        x = d->get(p, w, k);
    }
    if (d->fmt == V_INT)
        tk_http_buf_printf(b, " %llu\n", (unsigned long long)x);
    else
        put_double(b, d->fmt, (double)x / d->div);
}

/* name{worker="W",label="V"} value, one line per label value; without
 * w the instance's series, without a label the bare name. */
static void put_samples(tk_http_buf_t *b, const prom_metric_t *d, const prom_t *p,
                        const tk_view_worker_t *w)
{
    for (unsigned k = 0; k < (d->label ? d->nlabel : 1); k++) {
        tk_http_buf_append_str(b, d->name);
        if (w && d->label)
            tk_http_buf_printf(b, "{worker=\"%u\",%s=\"%s\"}", w->slot, d->label,
                               d->label_value(k));
        else if (w)
            tk_http_buf_printf(b, "{worker=\"%u\"}", w->slot);
        else if (d->label)
            tk_http_buf_printf(b, "{%s=\"%s\"}", d->label, d->label_value(k));
        put_value(b, d, p, w, k);
    }
}

static void put_hist(tk_http_buf_t *b, const prom_metric_t *d, const prom_t *p,
                     const tk_view_worker_t *w)
{
    prom_hist_t h;
    d->hist(p, w, &h);
    char wl[32] = "";
    if (w)
        snprintf(wl, sizeof(wl), "worker=\"%u\",", w->slot);
    for (unsigned k = 0; k < h.n; k++)
        tk_http_buf_printf(b, "%s_bucket{%sle=\"%g\"} %llu\n", d->name, wl, h.le[k],
                           (unsigned long long)h.cum[k]);
    tk_http_buf_printf(b, "%s_bucket{%sle=\"+Inf\"} %llu\n", d->name, wl,
                       (unsigned long long)h.count);
    if (w) {
        tk_http_buf_printf(b, "%s_sum{worker=\"%u\"} %.6f\n", d->name, w->slot, h.sum);
        tk_http_buf_printf(b, "%s_count{worker=\"%u\"} %llu\n", d->name, w->slot,
                           (unsigned long long)h.count);
    } else {
        tk_http_buf_printf(b, "%s_sum %.6f\n", d->name, h.sum);
        tk_http_buf_printf(b, "%s_count %llu\n", d->name, (unsigned long long)h.count);
    }
}

/* One family: its HELP and TYPE, then its samples for each worker it covers
 * (a dead slot's counters keep counting in its respawned successor, so each
 * counter series stays monotonic; gauges are for live workers only). */
static void put_family(tk_http_buf_t *b, const prom_metric_t *d, const prom_t *p)
{
    family(b, d->name, d->type, d->help);
    if (d->emit) {
        d->emit(b, p);
        return;
    }
    if (d->flags & F_INSTANCE) {
        if (d->hist)
            put_hist(b, d, p, NULL);
        else
            put_samples(b, d, p, NULL);
        return;
    }
    const tk_view_t *v = p->v;
    for (unsigned i = 0; i < v->nw; i++) {
        const tk_view_worker_t *w = &v->w[i];
        if ((d->flags & F_LIVE) && !tk_view_live_state(w->w.state))
            continue;
        if ((d->flags & F_DB_SLOT) && w->slot >= TK_BROKER_MAX_WORKERS)
            continue;
        if (d->hist)
            put_hist(b, d, p, w);
        else
            put_samples(b, d, p, w);
    }
}

/* --- the per-route families --------------------------------------------------------------- */

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

static void emit_info(tk_http_buf_t *b, const prom_t *p)
{
    tk_http_buf_append_str(b, "tenk_info{name=\"");
    put_label(b, p->v->h.name);
    tk_http_buf_printf(b, "\",version=\"%s\"} 1\n", PACKAGE_VERSION);
}

static void emit_requests(tk_http_buf_t *b, const prom_t *p)
{
    const tk_view_t *v = p->v;
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
}

static void emit_route_latency(tk_http_buf_t *b, const prom_t *p)
{
    const tk_view_t *v = p->v;
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
}

/* --- the cache tier's nodes ------------------------------------------------------------- */

/* A node address from a worker's slot, bounded whatever its terminator. */
static void put_node(tk_http_buf_t *b, const char *addr)
{
    char a[TK_CACHE_NODE_ADDR];
    size_t n = strnlen(addr, sizeof(a) - 1);
    memcpy(a, addr, n);
    a[n] = '\0';
    put_label(b, a);
}

static void emit_cache_master(tk_http_buf_t *b, const prom_t *p)
{
    const tk_view_t *v = p->v;
    for (unsigned i = 0; i < v->nw; i++) {
        const tk_cache_topo_t *t = &v->w[i].snap->m.cache_topo;
        if (!tk_view_live_state(v->w[i].w.state) || t->master[0] == '\0')
            continue;
        tk_http_buf_printf(b, "tenk_cache_master{worker=\"%u\",node=\"", v->w[i].slot);
        put_node(b, t->master);
        tk_http_buf_append_str(b, "\"} 1\n");
    }
}

/* One family over every (worker, node): which value is what. */
enum { NODE_COMMANDS, NODE_ERRORS, NODE_LAT_SUM, NODE_LAT_COUNT, NODE_READING };

static void emit_nodes(tk_http_buf_t *b, const prom_t *p, const char *name, int what)
{
    const tk_view_t *v = p->v;
    for (unsigned i = 0; i < v->nw; i++) {
        const tk_cache_topo_t *t = &v->w[i].snap->m.cache_topo;
        for (unsigned k = 0; k < TK_CACHE_MAX_NODES; k++) {
            const tk_cache_node_stats_t *n = &t->nodes[k];
            if (n->addr[0] == '\0')
                continue;
            if (what == NODE_READING && !tk_view_live_state(v->w[i].w.state))
                continue;
            tk_http_buf_printf(b, "%s{worker=\"%u\",node=\"", name, v->w[i].slot);
            put_node(b, n->addr);
            tk_http_buf_printf(b, "\",role=\"%s\"} ", tk_cache_role_name(n->role));
            switch (what) {
            case NODE_COMMANDS:
                tk_http_buf_printf(b, "%llu\n", (unsigned long long)n->commands);
                break;
            case NODE_ERRORS:
                tk_http_buf_printf(b, "%llu\n", (unsigned long long)n->errors);
                break;
            case NODE_LAT_SUM:
                tk_http_buf_printf(b, "%.6f\n", (double)n->lat_sum_us / 1e6);
                break;
            case NODE_LAT_COUNT:
                tk_http_buf_printf(b, "%llu\n", (unsigned long long)n->lat_count);
                break;
            default:
                tk_http_buf_printf(b, "%u\n", n->reading ? 1u : 0u);
                break;
            }
        }
    }
}

static void emit_node_commands(tk_http_buf_t *b, const prom_t *p)
{
    emit_nodes(b, p, "tenk_cache_node_commands_total", NODE_COMMANDS);
}
static void emit_node_errors(tk_http_buf_t *b, const prom_t *p)
{
    emit_nodes(b, p, "tenk_cache_node_errors_total", NODE_ERRORS);
}
static void emit_node_lat_sum(tk_http_buf_t *b, const prom_t *p)
{
    emit_nodes(b, p, "tenk_cache_node_reply_seconds_total", NODE_LAT_SUM);
}
static void emit_node_lat_count(tk_http_buf_t *b, const prom_t *p)
{
    emit_nodes(b, p, "tenk_cache_node_replies_total", NODE_LAT_COUNT);
}
static void emit_node_reading(tk_http_buf_t *b, const prom_t *p)
{
    emit_nodes(b, p, "tenk_cache_node_reading", NODE_READING);
}

/* --- histograms ------------------------------------------------------------------------- */

/* Prometheus buckets (seconds) cut from the fine log-linear histogram. */
static const double prom_le[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                 0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30,    60};
#define PROM_NLE (sizeof(prom_le) / sizeof(prom_le[0]))

static void hist_http(const prom_t *p, const tk_view_worker_t *w, prom_hist_t *h)
{
    const tk_metrics_sh_t *m = &w->snap->m;
    unsigned fb = 0;
    uint64_t cum = 0;
    h->n = PROM_NLE;
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
        h->le[k] = prom_le[k];
        h->cum[k] = cum;
    }
    for (; fb < TK_METRICS_NBUCKETS; fb++)
        cum += m->hist[fb];
    h->count = cum;
    h->sum = (double)m->latency_us_sum / 1e6;
}

/* The pool's wait histogram, all workers together. */
static void hist_db_wait(const prom_t *p, const tk_view_worker_t *w, prom_hist_t *h)
{
    tk_broker_stats_t all;
    tk_broker_stats(p->br, -1, &all);
    uint64_t cum = 0;
    h->n = 0;
    for (int i = 0; i < TK_BROKER_HIST_BUCKETS; i++) {
        cum += all.wait_hist[i];
        uint64_t le = tk_broker_hist_bound_us(i);
        if (le == UINT64_MAX)
            continue; /* the last bucket is +Inf */
        h->le[h->n] = (double)le / 1e6;
        h->cum[h->n++] = cum;
    }
    h->count = cum;
    h->sum = (double)all.wait_ns / 1e9;
}

static void hist_cache(const prom_t *p, const tk_view_worker_t *w, prom_hist_t *h)
{
    static const uint64_t bounds[TK_CACHE_LAT_NBUCKETS] = TK_CACHE_LAT_BOUNDS_US;
    const tk_metrics_sh_t *m = &w->snap->m;
    uint64_t cum = 0;
    h->n = 0;
    for (unsigned k = 0; k < TK_CACHE_LAT_NBUCKETS; k++) {
        cum += m->cache_lat[k];
        if (bounds[k] == UINT64_MAX)
            continue; /* the "more" bucket is +Inf */
        h->le[h->n] = (double)bounds[k] / 1e6;
        h->cum[h->n++] = cum;
    }
    h->count = cum;
    h->sum = (double)m->cache_lat_sum_us / 1e6;
}

/* --- labels and values that are not a field ---------------------------------------------- */

static const char *err_kind(unsigned k)
{
    return tk_metrics_err_name((tk_metrics_err_t)k);
}

static const char *gt_state(unsigned k)
{
    return tk_gt_state_name((tk_gt_state_t)k);
}

static const char *conn_state(unsigned k)
{
    return k ? "idle" : "active"; /* conns_active, conns_idle */
}

static const char *cpu_mode(unsigned k)
{
    return k ? "system" : "user"; /* cpu_user_ns, cpu_sys_ns */
}

static const tk_shm_wstate_t wstates[] = {TK_SHM_W_STARTING, TK_SHM_W_RUNNING, TK_SHM_W_DRAINING,
                                          TK_SHM_W_DEAD};
#define NWSTATES (sizeof(wstates) / sizeof(wstates[0]))

static const char *wstate(unsigned k)
{
    return tk_shm_wstate_name(wstates[k]);
}

static uint64_t workers_in(const prom_t *p, const tk_view_worker_t *w, unsigned k)
{
    unsigned n = 0;
    for (unsigned i = 0; i < p->v->nw; i++)
        n += p->v->w[i].w.state == (uint32_t)wstates[k];
    return n;
}

static double heartbeat_age(const prom_t *p, const tk_view_worker_t *w, unsigned k)
{
    uint64_t hb = w->snap->m.live.heartbeat_ns, now = p->v->now_mono_ns;
    return hb && now > hb ? (double)(now - hb) / 1e9 : 0.0;
}

static uint64_t accepting(const prom_t *p, const tk_view_worker_t *w, unsigned k)
{
    return w->snap->m.live.accepting;
}

static uint64_t restarts(const prom_t *p, const tk_view_worker_t *w, unsigned k)
{
    return w->w.respawns;
}

static uint64_t master_rss(const prom_t *p, const tk_view_worker_t *w, unsigned k)
{
    return p->master_rss;
}

static double master_cpu(const prom_t *p, const tk_view_worker_t *w, unsigned k)
{
    return p->master_cpu[k];
}

static double start_time(const prom_t *p, const tk_view_worker_t *w, unsigned k)
{
    return (double)p->v->h.created_ns / 1e9;
}

static uint64_t generation(const prom_t *p, const tk_view_worker_t *w, unsigned k)
{
    return p->v->h.generation;
}

static uint64_t reloads(const prom_t *p, const tk_view_worker_t *w, unsigned k)
{
    return p->v->h.reload_seq;
}

static uint64_t db_max_open(const prom_t *p, const tk_view_worker_t *w, unsigned k)
{
    return p->br->max_open;
}

static uint64_t db_max_idle(const prom_t *p, const tk_view_worker_t *w, unsigned k)
{
    return p->br->max_idle;
}

static uint64_t db_waiting(const prom_t *p, const tk_view_worker_t *w, unsigned k)
{
    return __atomic_load_n(&p->br->workers[w->slot].nwaiting, __ATOMIC_RELAXED);
}

static uint64_t db_waiting_local(const prom_t *p, const tk_view_worker_t *w, unsigned k)
{
    return __atomic_load_n(&p->br->workers[w->slot].st.local_waiting, __ATOMIC_RELAXED);
}

/* (scaled as it always was: x * 1e-9, not x / 1e9, to keep the digits) */
static double db_wait_seconds(const prom_t *p, const tk_view_worker_t *w, unsigned k)
{
    tk_broker_stats_t st;
    tk_broker_stats(p->br, (int)w->slot, &st);
    return (double)st.wait_ns * 1e-9;
}

static uint64_t db_qhwm(const prom_t *p, const tk_view_worker_t *w, unsigned k)
{
    return __atomic_load_n(&p->br->qhwm, __ATOMIC_RELAXED);
}

static uint64_t db_lwhwm(const prom_t *p, const tk_view_worker_t *w, unsigned k)
{
    return __atomic_load_n(&p->br->lwhwm, __ATOMIC_RELAXED);
}

static uint64_t db_twhwm(const prom_t *p, const tk_view_worker_t *w, unsigned k)
{
    return __atomic_load_n(&p->br->twhwm, __ATOMIC_RELAXED);
}

/* --- the table ---------------------------------------------------------------------------- */

/* A uint64_t field: of the worker's metrics, of its database-pool statistics. */
#define M(field)        .src = SRC_METRICS, .off = offsetof(tk_metrics_sh_t, field)
#define DB(field)       .src = SRC_DB, .off = offsetof(tk_broker_stats_t, field)
#define GET(fn)         .src = SRC_GET, .get = (fn)
#define GETD(fn, f)     .src = SRC_GET, .getd = (fn), .fmt = (f)
#define LABEL(l, n, fn) .label = (l), .nlabel = (n), .label_value = (fn)
#define DB_COUNTER      F_DB | F_DB_SLOT
#define DB_GAUGE        F_DB | F_DB_SLOT | F_LIVE

/* Every family, in the order /metrics lists them. */
static const prom_metric_t metrics[] = {
    {"tenk_info", "gauge", "Constant 1, labelled with the instance name and version.",
     .emit = emit_info},
    /* HTTP */
    {"tenk_http_requests_total", "counter",
     "HTTP responses sent, by worker, route and status class (route \"unmatched\": no route, "
     "e.g. 404).",
     .emit = emit_requests},
    {"tenk_http_route_latency_seconds_total", "counter",
     "Sum of response times per route (divide by tenk_http_requests_total for the mean).",
     .emit = emit_route_latency},
    {"tenk_http_request_duration_seconds", "histogram",
     "Time from a request's first byte to its response being queued.", .hist = hist_http},
    {"tenk_http_request_bytes_total", "counter", "Request bytes read from clients.", 0,
     M(bytes_in)},
    {"tenk_http_response_bytes_total", "counter", "Response bytes queued to clients.", 0,
     M(bytes_out)},
    {"tenk_http_errors_total", "counter",
     "Requests that ended in an error, by kind (parse, limit, timeout, 5xx).", 0,
     LABEL("kind", TK_METRICS_ERR_N, err_kind), M(errors)},
    {"tenk_connections", "gauge",
     "Open client connections: active (a request in progress) or idle (keep-alive).", F_LIVE,
     LABEL("state", 2, conn_state), M(conns_active)},
    {"tenk_connections_accepted_total", "counter", "Connections accepted.", 0, M(conns_accepted)},
    {"tenk_connections_closed_total", "counter", "Connections closed.", 0, M(conns_closed)},
    /* the scheduler */
    {"tenk_green_threads", "gauge", "Live green threads by state.", F_LIVE,
     LABEL("state", TK_GT_NSTATES, gt_state), M(gt_by_state)},
    {"tenk_green_threads_created_total", "counter", "Green threads created.", 0, M(gt_created)},
    {"tenk_green_threads_exited_total", "counter", "Green threads that ended.", 0, M(gt_exited)},
    {"tenk_green_thread_switches_total", "counter", "Context switches between green threads.", 0,
     M(gt_switches)},
    {"tenk_green_thread_long_runs_total", "counter",
     "Times a green thread ran longer than runtime.long_run without yielding.", 0, M(gt_long_runs)},
    {"tenk_green_thread_stack_reserved_bytes", "gauge",
     "Address space held by live and pooled green-thread stacks.", F_LIVE, M(stack_reserved)},
    {"tenk_green_thread_stack_resident_bytes", "gauge", "Resident memory of green-thread stacks.",
     F_LIVE, M(stack_resident)},
    {"tenk_green_thread_pooled_stacks", "gauge", "Stacks kept for reuse.", F_LIVE,
     M(pooled_stacks)},
    /* the processes */
    {"tenk_process_resident_memory_bytes", "gauge", "Resident memory of each worker process.",
     F_LIVE, M(rss_bytes)},
    {"tenk_process_cpu_seconds_total", "counter",
     "CPU time of the processes that ran in each worker slot, by mode.", 0,
     LABEL("mode", 2, cpu_mode), M(cpu_user_ns), .fmt = V_F6, .div = 1e9},
    {"tenk_process_start_time_seconds", "gauge",
     "Start of each live worker process since the Unix epoch.", F_LIVE, M(proc_start_ns),
     .fmt = V_G9, .div = 1e9},
    {"tenk_worker_heartbeat_age_seconds", "gauge",
     "Time since each live worker's event loop last ticked.", F_LIVE, GETD(heartbeat_age, V_G9)},
    {"tenk_worker_accepting", "gauge", "1 while the worker accepts new connections.", F_LIVE,
     GET(accepting)},
    {"tenk_worker_restarts_total", "counter", "Times a dead worker was replaced in this slot.", 0,
     GET(restarts)},
    {"tenk_workers", "gauge", "Worker slots by state.", F_INSTANCE,
     LABEL("state", NWSTATES, wstate), GET(workers_in)},
    {"tenk_master_resident_memory_bytes", "gauge", "Resident memory of the master process.",
     F_INSTANCE | F_MASTER, GET(master_rss)},
    {"tenk_master_cpu_seconds_total", "counter", "CPU time of the master process, by mode.",
     F_INSTANCE | F_MASTER, LABEL("mode", 2, cpu_mode), GETD(master_cpu, V_F6)},
    {"tenk_start_time_seconds", "gauge", "When the master created the instance.", F_INSTANCE,
     GETD(start_time, V_F3)},
    {"tenk_generation", "gauge", "Current worker generation (1 at start, +1 per reload).",
     F_INSTANCE, GET(generation)},
    {"tenk_reloads_total", "counter", "Reload requests (SIGHUP) handled.", F_INSTANCE,
     GET(reloads)},
    /* the database pool, mirroring Go's sql.DBStats */
    {"tenk_db_max_open_connections", "gauge",
     "Connection budget shared by all workers (db.max_open).", F_DB | F_INSTANCE, GET(db_max_open)},
    {"tenk_db_max_idle_connections", "gauge", "Idle connections kept at most (db.max_idle).",
     F_DB | F_INSTANCE, GET(db_max_idle)},
    {"tenk_db_open_connections", "gauge", "Connections established or being established.", DB_GAUGE,
     DB(open)},
    {"tenk_db_in_use_connections", "gauge", "Connections handed to a request.", DB_GAUGE,
     DB(in_use)},
    {"tenk_db_idle_connections", "gauge", "Open connections not in use.", DB_GAUGE, DB(idle)},
    {"tenk_db_waiting", "gauge", "Green threads queued for a connection slot.", DB_GAUGE,
     GET(db_waiting)},
    {"tenk_db_waiting_high_water", "gauge", "Longest the wait queue has been.", F_DB | F_INSTANCE,
     GET(db_qhwm)},
    {"tenk_db_waiting_local", "gauge",
     "Green threads queued inside the worker for a shared pipelined connection.", DB_GAUGE,
     GET(db_waiting_local)},
    {"tenk_db_waiting_local_high_water", "gauge",
     "Most green threads queued inside workers at once.", F_DB | F_INSTANCE, GET(db_lwhwm)},
    {"tenk_db_waiting_all_high_water", "gauge",
     "Most green threads waiting for a connection at once, broker queue and local.",
     F_DB | F_INSTANCE, GET(db_twhwm)},
    {"tenk_db_wait_count_total", "counter", "Acquisitions that had to queue (broker or local).",
     DB_COUNTER, DB(wait_count)},
    {"tenk_db_wait_count_local_total", "counter",
     "Of those, queued inside the worker for a shared pipelined connection.", DB_COUNTER,
     DB(wait_count_local)},
    {"tenk_db_wait_duration_seconds_total", "counter", "Total time spent queued.", DB_COUNTER,
     GETD(db_wait_seconds, V_G9)},
    {"tenk_db_max_idle_closed_total", "counter",
     "Connections closed because db.max_idle idle ones existed.", DB_COUNTER, DB(max_idle_closed)},
    {"tenk_db_max_idle_time_closed_total", "counter",
     "Connections closed after db.max_idle_time unused.", DB_COUNTER, DB(max_idle_time_closed)},
    {"tenk_db_max_lifetime_closed_total", "counter", "Connections closed after db.max_lifetime.",
     DB_COUNTER, DB(max_lifetime_closed)},
    {"tenk_db_errors_closed_total", "counter",
     "Connections closed after an error or a dirty state.", DB_COUNTER, DB(errors_closed)},
    {"tenk_db_acquires_total", "counter", "Successful connection acquisitions.", DB_COUNTER,
     DB(acquires)},
    {"tenk_db_acquire_timeouts_total", "counter", "db.acquire_timeout expiries (503).", DB_COUNTER,
     DB(acquire_timeouts)},
    {"tenk_db_queue_full_total", "counter", "Acquisitions refused: wait queue full (503).",
     DB_COUNTER, DB(queue_full)},
    {"tenk_db_query_timeouts_total", "counter", "db.query_timeout expiries (504).", DB_COUNTER,
     DB(query_timeouts)},
    {"tenk_db_connect_errors_total", "counter", "Failed connection attempts.", DB_COUNTER,
     DB(connect_errors)},
    {"tenk_db_handoffs_local_total", "counter",
     "Connections released straight to a waiter of the same worker.", DB_COUNTER,
     DB(handoffs_local)},
    {"tenk_db_handoffs_remote_total", "counter", "Slots handed over to another worker's waiter.",
     DB_COUNTER, DB(handoffs_remote)},
    {"tenk_db_wait_seconds", "histogram", "Time green threads spent queued for a slot.",
     F_DB | F_INSTANCE, .hist = hist_db_wait},
    /* the Redis cache */
    {"tenk_cache_hits_total", "counter", "Redis cache lookups that found the value.", F_CACHE,
     M(cache_hits)},
    {"tenk_cache_misses_total", "counter", "Redis cache lookups that did not.", F_CACHE,
     M(cache_misses)},
    {"tenk_cache_errors_total", "counter", "Redis cache operations that failed.", F_CACHE,
     M(cache_errors)},
    {"tenk_cache_bypasses_total", "counter",
     "Cache calls that skipped Redis (down, or the breaker open).", F_CACHE, M(cache_bypasses)},
    {"tenk_cache_timeouts_total", "counter", "Redis commands past redis.timeout.", F_CACHE,
     M(cache_timeouts)},
    {"tenk_cache_connected", "gauge", "1 while the worker's Redis connection is up.",
     F_CACHE | F_LIVE, M(cache_connected)},
    {"tenk_cache_reply_duration_seconds", "histogram", "Time Redis took to reply.", F_CACHE,
     .hist = hist_cache},
    /* Sentinel and replicas: counters since each worker started */
    {"tenk_cache_master", "gauge", "The Redis master each worker writes to.", F_CACHE,
     .emit = emit_cache_master},
    {"tenk_cache_failovers_total", "counter", "Master changes the worker followed.", F_CACHE,
     M(cache_topo.failovers)},
    {"tenk_cache_switch_messages_total", "counter", "+switch-master messages received.", F_CACHE,
     M(cache_topo.switch_messages)},
    {"tenk_cache_sentinel_errors_total", "counter",
     "Sentinels down, timed out or answering nonsense.", F_CACHE, M(cache_topo.sentinel_errors)},
    {"tenk_cache_unknown_master_total", "counter", "Sentinel answers: no such master name.",
     F_CACHE, M(cache_topo.unknown_master)},
    {"tenk_cache_role_mismatches_total", "counter",
     "Nodes named master that ROLE said were not (not written to).", F_CACHE,
     M(cache_topo.role_mismatches)},
    {"tenk_cache_replica_reads_total", "counter", "GET/MGET sent to a replica.", F_CACHE,
     M(cache_topo.replica_reads)},
    {"tenk_cache_invalidation_waits_total", "counter",
     "WAITs for the replicas after an invalidation.", F_CACHE, M(cache_topo.inval_waits)},
    {"tenk_cache_invalidation_waits_short_total", "counter",
     "Of those, WAITs that ended before every replica acknowledged.", F_CACHE,
     M(cache_topo.inval_wait_short)},
    {"tenk_cache_invalidation_wait_seconds_total", "counter", "Time spent in those WAITs.", F_CACHE,
     M(cache_topo.inval_wait_us_sum), .fmt = V_F6, .div = 1e6},
    {"tenk_cache_node_commands_total", "counter", "Commands sent, per Redis node.", F_CACHE,
     .emit = emit_node_commands},
    {"tenk_cache_node_errors_total", "counter", "Commands failed, per Redis node.", F_CACHE,
     .emit = emit_node_errors},
    {"tenk_cache_node_reply_seconds_total", "counter", "Reply time, per Redis node.", F_CACHE,
     .emit = emit_node_lat_sum},
    {"tenk_cache_node_replies_total", "counter", "Replies timed, per Redis node.", F_CACHE,
     .emit = emit_node_lat_count},
    {"tenk_cache_node_reading", "gauge", "1 where the worker's GET/MGET go.", F_CACHE,
     .emit = emit_node_reading},
};

/* Every family the instance has (cache: Redis is configured). */
static void prom_write(tk_http_buf_t *b, const prom_t *p, int cache)
{
    for (size_t i = 0; i < sizeof(metrics) / sizeof(metrics[0]); i++) {
        const prom_metric_t *d = &metrics[i];
        if (((d->flags & F_DB) && !p->br) || ((d->flags & F_CACHE) && !cache) ||
            ((d->flags & F_MASTER) && !p->master_ok))
            continue;
        put_family(b, d, p);
    }
}

/* One series per database backend, labelled backend="primary"|"replica-N" (and the health
 * by name): the view and each backend's own broker. Bounded reads only. */
static void prom_backends(tk_http_buf_t *b, tk_shm_t *shm)
{
    const tk_dbview_sh_t *v = tk_shm_dbview(shm);
    unsigned n = tk_dbview_count(v);
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        {"tenk_db_backend_up", "gauge",
         "1 if the backend is healthy (a replica: within db.replica_max_lag)."},
        {"tenk_db_backend_health", "gauge",
         "The backend's health, by name (1 for the current one)."},
        {"tenk_db_backend_lag_seconds", "gauge",
         "A replica's replay lag as the probe measured it."},
        {"tenk_db_backend_max_open", "gauge", "The backend's connection cap (its own broker)."},
        {"tenk_db_backend_open_connections", "gauge",
         "Connections open to the backend, all workers."},
        {"tenk_db_backend_in_use_connections", "gauge", "Of those, handed to a request."},
        {"tenk_db_backend_inflight_queries", "gauge", "Queries running on the backend now."},
        {"tenk_db_backend_queries_total", "counter", "Queries routed to the backend."},
        {"tenk_db_backend_fallbacks_total", "counter",
         "Reads that failed on the replica and ran on the primary."},
    };
    if (n == 0)
        return;
    for (unsigned f = 0; f < sizeof(fam) / sizeof(fam[0]); f++) {
        tk_http_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", fam[f].name, fam[f].help, fam[f].name,
                           fam[f].type);
        for (unsigned i = 0; i < n; i++) {
            const tk_dbview_be_sh_t *be = &v->be[i];
            const tk_broker_sh_t *br = tk_shm_broker_be(shm, i);
            char label[24];
            if (i == 0)
                snprintf(label, sizeof(label), "primary");
            else
                snprintf(label, sizeof(label), "replica-%u", i);
            uint32_t h = __atomic_load_n(&be->health, __ATOMIC_RELAXED);
            tk_broker_stats_t st = {0};
            unsigned max = 0;
            if (br && br->magic == TK_BROKER_MAGIC && br->size == sizeof(tk_broker_sh_t)) {
                tk_broker_stats(br, -1, &st);
                max = br->max_open;
            }
            double x = 0;
            switch (f) {
            case 0:
                x = h == TK_DBVIEW_OK;
                break;
            case 1:
                for (uint32_t k = 0; k <= TK_DBVIEW_WRONG_ROLE; k++)
                    tk_http_buf_printf(b, "%s{backend=\"%s\",health=\"%s\"} %d\n", fam[f].name,
                                       label, tk_dbview_health_name(k), k == h);
                continue;
            case 2:
                x = (double)__atomic_load_n(&be->lag_ms, __ATOMIC_RELAXED) / 1e3;
                break;
            case 3:
                x = max;
                break;
            case 4:
                x = (double)st.open;
                break;
            case 5:
                x = (double)st.in_use;
                break;
            case 6:
                x = (double)__atomic_load_n(&be->inflight, __ATOMIC_RELAXED);
                break;
            case 7:
                x = (double)__atomic_load_n(&be->routed, __ATOMIC_RELAXED);
                break;
            default:
                x = (double)__atomic_load_n(&be->fallbacks, __ATOMIC_RELAXED);
                break;
            }
            tk_http_buf_printf(b, "%s{backend=\"%s\"} %.9g\n", fam[f].name, label, x);
        }
    }
}

void tk_admin_metrics(tk_http_ctx_t *ctx)
{
    tk_view_t v;
    if (tk_admin_view(ctx, &v) != 0)
        return;
    const tk_conf_t *conf = tk_http_conf(ctx);
    prom_t p = {.v = &v};
    const tk_broker_sh_t *br = tk_view_broker(v.shm);
    if (br && conf->db_conninfo[0])
        p.br = br;
    p.master_ok =
        v.h.master_pid > 0 &&
        tk_admin_proc_usage(v.h.master_pid, &p.master_rss, &p.master_cpu[0], &p.master_cpu[1]) == 0;
    prom_write(tk_http_body_buf(ctx), &p, conf->redis_addr[0] != 0 || conf->redis_nsentinels > 0);
    if (p.br)
        prom_backends(tk_http_body_buf(ctx), v.shm);
    tk_view_free(&v);
    tk_http_respond_buf(ctx, 200, "text/plain; version=0.0.4; charset=utf-8");
}
