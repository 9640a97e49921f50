/* tfb.c: TechEmpower's database tests: /db, /queries, /fortunes, /updates. */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "db.h"
#include "handlers.h"
#include "http_response.h"
#include "sched.h"

#define TFB_ROWS        10000
#define TFB_MAX_QUERIES 500

enum {
    ROUTE_DB = TK_ROUTE_TFB_FIRST,
    ROUTE_QUERIES,
    ROUTE_FORTUNES,
    ROUTE_UPDATES,
};

static int st_world = -1, st_fortune = -1, st_update = -1;

/* Per-worker PRNG (xorshift64*): no locks, no syscalls. */
static uint64_t rng_state;

static int random_id(void)
{
    if (rng_state == 0)
        rng_state = (tk_now_ns() ^ ((uint64_t)getpid() << 32)) | 1;
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (int)((rng_state * 2685821657736338717ull >> 33) % TFB_ROWS) + 1;
}

/* Answer a database failure: 503 (+ Retry-After), 504 or 500. */
static void db_fail(tk_http_ctx_t *ctx, tk_db_status_t st)
{
    int status = tk_db_http_status(st);
    if (st == TK_DB_CANCELLED)
        return; /* the client is gone; the engine drops the connection */
    if (status == 503)
        tk_http_add_header(ctx, "Retry-After", "1");
    tk_http_respond_error(ctx, status, tk_db_status_name(st));
}

/* TechEmpower's rule for ?queries=: missing, non-numeric or < 1 is 1; > 500 is 500. */
static int queries_param(tk_http_ctx_t *ctx)
{
    char buf[64];
    int n = tk_http_query(ctx, "queries", buf, sizeof(buf));
    if (n <= 0)
        return 1;
    char *end;
    long v = strtol(buf, &end, 10);
    if (end == buf)
        return 1;
    if (v < 1)
        return 1;
    if (v > TFB_MAX_QUERIES)
        return TFB_MAX_QUERIES;
    return (int)v;
}

/* Fetch one world row by id on c; 0 and *rn, or a status. */
static tk_db_status_t world_get(tk_db_conn_t *c, int id, int *rn)
{
    char idbuf[12];
    const char *v[1] = {idbuf};
    PGresult *r;
    snprintf(idbuf, sizeof(idbuf), "%d", id);
    tk_db_status_t st = tk_db_exec(c, st_world, 1, v, NULL, &r);
    if (st != TK_DB_OK)
        return st;
    if (PQntuples(r) != 1) {
        PQclear(r);
        return TK_DB_ERROR;
    }
    *rn = atoi(PQgetvalue(r, 0, 1));
    PQclear(r);
    return TK_DB_OK;
}

/* GET /db: one random World row as {"id":N,"randomNumber":N}. */
static void h_db(tk_http_ctx_t *ctx)
{
    tk_db_status_t st;
    int id = random_id(), rn;
    tk_db_conn_t *c = tk_db_acquire(&st);
    if (c == NULL) {
        db_fail(ctx, st);
        return;
    }
    st = world_get(c, id, &rn);
    tk_db_release(c);
    if (st != TK_DB_OK) {
        db_fail(ctx, st);
        return;
    }
    tk_http_buf_t *b = tk_http_body_buf(ctx);
    tk_http_buf_printf(b, "{\"id\":%d,\"randomNumber\":%d}", id, rn);
    tk_http_respond_buf(ctx, 200, "application/json");
}

/* N random rows, one round trip each (the test's rule), on one connection. */
static int fetch_worlds(tk_http_ctx_t *ctx, int n, int *ids, int *rns)
{
    tk_db_status_t st;
    tk_db_conn_t *c = tk_db_acquire(&st);
    if (c == NULL) {
        db_fail(ctx, st);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        ids[i] = random_id();
        if ((st = world_get(c, ids[i], &rns[i])) != TK_DB_OK) {
            tk_db_release(c);
            db_fail(ctx, st);
            return -1;
        }
    }
    tk_db_release(c);
    return 0;
}

static void write_worlds(tk_http_ctx_t *ctx, int n, const int *ids, const int *rns)
{
    tk_http_buf_t *b = tk_http_body_buf(ctx);
    char *w = tk_http_buf_reserve(b, (size_t)n * 40 + 2);
    if (w == NULL) {
        tk_http_respond_error(ctx, 500, "out of memory");
        return;
    }
    size_t off = 0;
    w[off++] = '[';
    for (int i = 0; i < n; i++)
        off += (size_t)snprintf(w + off, 40, "%s{\"id\":%d,\"randomNumber\":%d}", i ? "," : "",
                                ids[i], rns[i]);
    w[off++] = ']';
    tk_http_buf_commit(b, off);
    tk_http_respond_buf(ctx, 200, "application/json");
}

/* GET /queries?queries=N */
static void h_queries(tk_http_ctx_t *ctx)
{
    int ids[TFB_MAX_QUERIES], rns[TFB_MAX_QUERIES];
    int n = queries_param(ctx);
    if (fetch_worlds(ctx, n, ids, rns) == 0)
        write_worlds(ctx, n, ids, rns);
}

/* GET /updates?queries=N: read N random rows one by one, give each a new
 * random number, write them back in one statement (allowed by the rules),
 * ids sorted so that concurrent batches lock rows in the same order. */
static void h_updates(tk_http_ctx_t *ctx)
{
    int ids[TFB_MAX_QUERIES], rns[TFB_MAX_QUERIES], order[TFB_MAX_QUERIES];
    int n = queries_param(ctx);
    tk_db_status_t st;
    tk_db_conn_t *c = tk_db_acquire(&st);
    if (c == NULL) {
        db_fail(ctx, st);
        return;
    }
    for (int i = 0; i < n; i++) {
        ids[i] = random_id();
        if ((st = world_get(c, ids[i], &rns[i])) != TK_DB_OK)
            goto fail;
        rns[i] = random_id();
    }
    /* Deduplicate by id (the last value of an id wins, like sequential
     * updates would), sorted by id. Arrays as '{1,2,3}' text. */
    for (int i = 0; i < n; i++)
        order[i] = i;
    /* sort indices by id, stable by position */
    for (int i = 1; i < n; i++) {
        int k = order[i], j = i - 1;
        while (j >= 0 && ids[order[j]] > ids[k]) {
            order[j + 1] = order[j];
            j--;
        }
        order[j + 1] = k;
    }
    {
        char *a = malloc((size_t)n * 12 + 3), *bb = malloc((size_t)n * 12 + 3);
        size_t la = 0, lb = 0;
        if (!a || !bb) {
            free(a);
            free(bb);
            st = TK_DB_ERROR;
            goto fail;
        }
        a[la++] = '{';
        bb[lb++] = '{';
        for (int i = 0; i < n; i++) {
            int k = order[i];
            if (i + 1 < n && ids[order[i + 1]] == ids[k])
                continue; /* a later duplicate carries the final value */
            la += (size_t)sprintf(a + la, "%s%d", la > 1 ? "," : "", ids[k]);
            lb += (size_t)sprintf(bb + lb, "%s%d", lb > 1 ? "," : "", rns[k]);
        }
        a[la++] = '}';
        a[la] = '\0';
        bb[lb++] = '}';
        bb[lb] = '\0';
        /* Duplicates in the response carry the final value too: in each
         * run of one id, the last by position (the sort is stable). */
        for (int i = 0; i < n;) {
            int j = i;
            while (j + 1 < n && ids[order[j + 1]] == ids[order[i]])
                j++;
            for (int k = i; k < j; k++)
                rns[order[k]] = rns[order[j]];
            i = j + 1;
        }
        const char *v[2] = {a, bb};
        PGresult *r;
        st = tk_db_exec(c, st_update, 2, v, NULL, &r);
        free(a);
        free(bb);
        PQclear(r);
        if (st != TK_DB_OK)
            goto fail;
    }
    tk_db_release(c);
    write_worlds(ctx, n, ids, rns);
    return;
fail:
    tk_db_release(c);
    db_fail(ctx, st);
}

typedef struct {
    int id;
    const char *msg;
    size_t len;
} fortune_t;

static int cmp_fortune(const void *a, const void *b)
{
    const fortune_t *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->msg, y->msg, n);
    if (c != 0)
        return c;
    return (x->len > y->len) - (x->len < y->len);
}

/* Append s HTML-escaped (& < > " ') to b. */
static void html_escape(tk_http_buf_t *b, const char *s, size_t len)
{
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        const char *rep;
        switch (s[i]) {
        case '&':
            rep = "&amp;";
            break;
        case '<':
            rep = "&lt;";
            break;
        case '>':
            rep = "&gt;";
            break;
        case '"':
            rep = "&quot;";
            break;
        case '\'':
            rep = "&#39;";
            break;
        default:
            continue;
        }
        tk_http_buf_append(b, s + start, i - start);
        tk_http_buf_append_str(b, rep);
        start = i + 1;
    }
    tk_http_buf_append(b, s + start, len - start);
}

/* GET /fortunes: all rows plus one added at request time, sorted by message
 * in the application, as an escaped HTML table. */
static void h_fortunes(tk_http_ctx_t *ctx)
{
    static const char extra[] = "Additional fortune added at request time.";
    PGresult *r;
    tk_db_status_t st = tk_db_query(st_fortune, 0, NULL, NULL, &r, NULL);
    if (st != TK_DB_OK) {
        db_fail(ctx, st);
        return;
    }
    int n = PQntuples(r);
    fortune_t *f = malloc(sizeof(*f) * (size_t)(n + 1));
    if (f == NULL) {
        PQclear(r);
        tk_http_respond_error(ctx, 500, "out of memory");
        return;
    }
    for (int i = 0; i < n; i++) {
        f[i].id = atoi(PQgetvalue(r, i, 0));
        f[i].msg = PQgetvalue(r, i, 1);
        f[i].len = (size_t)PQgetlength(r, i, 1);
    }
    f[n].id = 0;
    f[n].msg = extra;
    f[n].len = sizeof(extra) - 1;
    qsort(f, (size_t)n + 1, sizeof(*f), cmp_fortune);

    tk_http_buf_t *b = tk_http_body_buf(ctx);
    tk_http_buf_append_str(b, "<!DOCTYPE html><html><head><title>Fortunes</title></head><body>"
                              "<table><tr><th>id</th><th>message</th></tr>");
    for (int i = 0; i <= n; i++) {
        tk_http_buf_printf(b, "<tr><td>%d</td><td>", f[i].id);
        html_escape(b, f[i].msg, f[i].len);
        tk_http_buf_append_str(b, "</td></tr>");
    }
    tk_http_buf_append_str(b, "</table></body></html>");
    free(f);
    PQclear(r);
    tk_http_respond_buf(ctx, 200, "text/html; charset=utf-8");
}

void tk_handlers_register_tfb(tk_router_t *r)
{
    st_world = tk_db_stmt("SELECT id, randomnumber FROM world WHERE id = $1", 1);
    st_fortune = tk_db_stmt("SELECT id, message FROM fortune", 0);
    st_update = tk_db_stmt("UPDATE world SET randomnumber = u.rn "
                           "FROM unnest($1::int[], $2::int[]) AS u(id, rn) WHERE world.id = u.id",
                           2);
    tk_router_add(r, "GET", "/db", h_db, ROUTE_DB);
    tk_router_add(r, "GET", "/queries", h_queries, ROUTE_QUERIES);
    tk_router_add(r, "GET", "/fortunes", h_fortunes, ROUTE_FORTUNES);
    tk_router_add(r, "GET", "/updates", h_updates, ROUTE_UPDATES);
}
