/* admin.c: the admin listener's route table and token check, /debug/stats and /debug/threads;
 * /metrics, /debug/config and /dashboard are in admin_metrics.c, admin_config.c, dashboard.c. */
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
#include "proc/conf.h"
#include "handlers/handlers.h"
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

int tk_admin_proc_usage(pid_t pid, uint64_t *rss, double *user_s, double *sys_s)
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

int tk_admin_view(tk_http_ctx_t *ctx, tk_view_t *v)
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
    tk_stats_json_db_backends(o, v->shm, v->now_mono_ns);
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
    if (tk_admin_view(ctx, &v) != 0)
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
    tk_admin_proc_usage(v.h.master_pid, &rss, &us, &ss);
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
    {"GET", "/metrics", tk_admin_metrics, 0},
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
