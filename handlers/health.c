/* health.c: the endpoints with nothing behind them: /health, /json, /plaintext. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "db/db.h"
#include "handlers/handlers.h"
#include "http/http_response.h"
#include "runtime/scheduler.h"
#include "shm/segment.h"

static tk_shm_t *health_shm; /* the instance's segment (lame-duck flag); may be NULL */

/* GET /health: what a load balancer's check needs, cheap enough to poll under
 * any load (a flag in shared memory and the db client's own view, no query).
 * 503 during the lame duck before a stop or reload (server.drain_delay), so
 * the balancer takes this host out while it still serves everything else;
 * 503 while this worker cannot connect to the primary, since a host that
 * says "up" while every request fails is worse than no check. */
static void health(tk_http_ctx_t *ctx)
{
    static const char ok[] = "{\"status\":\"ok\"}";
    static const char lame[] = "{\"status\":\"draining\"}";
    static const char nodb[] = "{\"status\":\"database unreachable\"}";
    if (health_shm && tk_shm_lame_duck(health_shm))
        tk_http_respond(ctx, 503, "application/json", lame, sizeof(lame) - 1);
    else if (!tk_db_primary_reachable())
        tk_http_respond(ctx, 503, "application/json", nodb, sizeof(nodb) - 1);
    else
        tk_http_respond(ctx, 200, "application/json", ok, sizeof(ok) - 1);
}

/* GET /json: TechEmpower's JSON test: a fresh object serialised per request,
 * as its rules require (no cached bytes). */
static void json(tk_http_ctx_t *ctx)
{
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "message", "Hello, World!")) {
        cJSON_Delete(o);
        tk_http_respond_error(ctx, 500, "out of memory");
        return;
    }
    /* print into the per-request body buffer: no malloc for the text */
    tk_http_buf_t *b = tk_http_body_buf(ctx);
    char *w = tk_http_buf_reserve(b, 64);
    if (w && cJSON_PrintPreallocated(o, w, 64, 0)) {
        b->len += strlen(w);
        tk_http_respond_buf(ctx, 200, "application/json");
    } else {
        tk_http_respond_json(ctx, 200, o);
    }
    cJSON_Delete(o);
}

/* GET /plaintext: TechEmpower's plaintext test. */
static void plaintext(tk_http_ctx_t *ctx)
{
    static const char body[] = "Hello, World!";
    tk_http_respond(ctx, 200, "text/plain", body, sizeof(body) - 1);
}

/* POST /debug/echo (admin listener only, registered by admin.c): the request
 * body back, with its content type; lets tests drive request bodies, chunked
 * uploads, 100-continue and gzip through the real engine. */
void tk_handlers_debug_echo(tk_http_ctx_t *ctx)
{
    char ct[128] = "application/octet-stream";
    tk_str_t v = tk_http_header(ctx, "Content-Type");
    if (v.p && v.len < sizeof(ct)) {
        memcpy(ct, v.p, v.len);
        ct[v.len] = '\0';
    }
    tk_str_t body = tk_http_body(ctx);
    tk_http_respond(ctx, 200, ct, body.p, body.len);
}

/* GET /debug/stream?n=N (admin listener only, registered by admin.c): N lines
 * sent as separate chunks, a yield between them; exercises chunked (1.1) and
 * close-delimited (1.0) responses. */
void tk_handlers_debug_stream(tk_http_ctx_t *ctx)
{
    char v[16];
    int n = 3;
    if (tk_http_query(ctx, "n", v, sizeof(v)) > 0)
        n = atoi(v);
    if (n < 0 || n > 1000) {
        tk_http_respond_error(ctx, 400, "n must be 0..1000");
        return;
    }
    if (tk_http_stream_begin(ctx, 200, "text/plain") != 0)
        return;
    for (int i = 0; i < n; i++) {
        char line[32];
        int len = snprintf(line, sizeof(line), "line %d\n", i);
        if (tk_http_stream_write(ctx, line, (size_t)len) != 0)
            return;
        tk_gt_yield();
    }
    tk_http_stream_end(ctx);
}

void tk_handlers_register_health(tk_router_t *r, const tk_handlers_env_t *env)
{
    health_shm = env->shm;
    tk_router_add(r, "GET", "/health", health);
    tk_router_add(r, "GET", "/json", json);
    tk_router_add(r, "GET", "/plaintext", plaintext);
}
