/* heavy.c: GET /heavy, the "type C" request: sequential queries plus CPU work that yields. */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "db/db.h"
#include "handlers/db_status.h"
#include "handlers/handlers.h"
#include "http/http_response.h"
#include "runtime/scheduler.h"

#define HEAVY_ROUNDS 400000u /* ~1-2 ms of mixing on this class of machine */
#define HEAVY_SLICE_NS                                                                             \
    (20u * 1000u) /* CPU between yields: with 64 of these runnable, a request queued behind them   \
                     waits ~64 slices (1.3 ms) per scheduler round */

static int st_user, st_world, st_count;
static uint64_t rng;

static uint64_t next_rand(void)
{
    if (rng == 0)
        rng = (tk_now_ns() ^ ((uint64_t)getpid() << 32)) | 1;
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 2685821657736338717ull;
}

/* CPU work: a hash chain over the query results, handing the worker to the
 * other green threads every HEAVY_SLICE_NS so that /health stays fast. */
static uint64_t crunch(uint64_t seed, unsigned *yields)
{
    uint64_t h = seed ^ 0xcbf29ce484222325ull;
    uint64_t slice = tk_now_ns();
    for (unsigned i = 0; i < HEAVY_ROUNDS; i++) {
        h ^= i;
        h *= 0x100000001b3ull;
        h ^= h >> 29;
        if ((i & 255) == 255 && tk_now_ns() - slice > HEAVY_SLICE_NS) {
            tk_gt_yield();
            (*yields)++;
            slice = tk_now_ns();
        }
    }
    return h;
}

/* Three dependent queries on one connection, released before the CPU part
 * so the connection isn't held while computing. */
static void h_heavy(tk_http_ctx_t *ctx)
{
    char uid[24], wid[24];
    const char *v[1];
    PGresult *r1 = NULL, *r2 = NULL, *r3 = NULL;
    tk_db_status_t st;
    unsigned yields = 0;

    snprintf(uid, sizeof(uid), "%llu", (unsigned long long)(next_rand() % 10000 + 1));
    tk_db_conn_t *c = tk_db_acquire(&st);
    if (c == NULL) {
        tk_handlers_db_error(ctx, st);
        return;
    }
    v[0] = uid;
    if ((st = tk_db_exec(c, st_user, 1, v, NULL, &r1)) != TK_DB_OK)
        goto fail;
    /* the world row picked from the user's id: a dependent second query */
    snprintf(wid, sizeof(wid), "%d",
             PQntuples(r1) ? (int)(strtoll(PQgetvalue(r1, 0, 0), NULL, 10) % 10000) + 1 : 1);
    v[0] = wid;
    if ((st = tk_db_exec(c, st_world, 1, v, NULL, &r2)) != TK_DB_OK)
        goto fail;
    if ((st = tk_db_exec(c, st_count, 0, NULL, NULL, &r3)) != TK_DB_OK)
        goto fail;
    tk_db_release(c);
    c = NULL;

    uint64_t seed = (uint64_t)strtoull(PQntuples(r2) ? PQgetvalue(r2, 0, 1) : "0", NULL, 10);
    uint64_t h = crunch(seed, &yields);
    tk_http_buf_t *b = tk_http_body_buf(ctx);
    tk_http_buf_printf(b,
                       "{\"user_id\":%s,\"world\":{\"id\":%s,\"randomNumber\":%s},"
                       "\"fortunes\":%s,\"hash\":\"%016llx\",\"yields\":%u}",
                       PQntuples(r1) ? PQgetvalue(r1, 0, 0) : "null", wid,
                       PQntuples(r2) ? PQgetvalue(r2, 0, 1) : "null", PQgetvalue(r3, 0, 0),
                       (unsigned long long)h, yields);
    PQclear(r1);
    PQclear(r2);
    PQclear(r3);
    tk_http_respond_buf(ctx, 200, "application/json");
    return;
fail:
    PQclear(r1);
    PQclear(r2);
    PQclear(r3);
    tk_db_release(c);
    tk_handlers_db_error(ctx, st);
}

void tk_handlers_register_heavy(tk_router_t *r, const tk_handlers_env_t *env)
{
    (void)env; /* needs none of the worker's services */
    const unsigned rj = TK_DB_READ | TK_DB_JOINABLE;
    st_user = tk_db_stmt("SELECT id, name FROM users WHERE id >= $1 ORDER BY id LIMIT 1", 1, rj);
    st_world = tk_db_stmt("SELECT id, randomnumber FROM world WHERE id = $1", 1, rj);
    st_count = tk_db_stmt("SELECT count(*) FROM fortune", 0, rj);
    tk_router_add(r, "GET", "/heavy", h_heavy);
}
