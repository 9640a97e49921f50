/* tfb.c: TechEmpower's database tests: /db, /queries, /fortunes, /updates, /cached-queries. */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/cache.h"
#include "db/db.h"
#include "handlers/db_status.h"
#include "handlers/handlers.h"
#include "http/http_response.h"
#include "proc/log.h"
#include "runtime/scheduler.h"

#define TFB_ROWS        10000
#define TFB_MAX_QUERIES 500

/* Background refills of cachedworld keys found missing, per worker: bounded so
 * that a flushed Redis under load costs a few green threads, not one each. */
#define TFB_MAX_REFILLS 4

static int st_world = -1, st_fortune = -1, st_update = -1, st_cworld = -1, st_cworld_all = -1;
/* The worker's services (tk_handlers_register_tfb), for the worker's life. */
static const tk_handlers_env_t *env;
static int refills_running;

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

/* Decimal text of v at p (no NUL); returns its length (at most 10). printf's
 * format parsing costs more than the whole /db answer's other formatting. */
static size_t put_uint(char *p, unsigned v)
{
    char t[10];
    size_t n = 0, i;
    do {
        t[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (i = 0; i < n; i++)
        p[i] = t[n - 1 - i];
    return n;
}

/* {"id":ID,"randomNumber":RN} at p; returns its length (at most 45). */
static size_t put_world(char *p, int id, int rn)
{
    size_t o = 0;
    memcpy(p, "{\"id\":", 6);
    o = 6;
    o += put_uint(p + o, (unsigned)id);
    memcpy(p + o, ",\"randomNumber\":", 16);
    o += 16;
    o += put_uint(p + o, (unsigned)rn);
    p[o++] = '}';
    return o;
}

/* TechEmpower's rule for ?queries= (and ?count=): missing, non-numeric or < 1
 * is 1; > 500 is 500. */
static int count_param(tk_http_ctx_t *ctx, const char *name)
{
    char buf[64];
    int n = tk_http_query(ctx, name, buf, sizeof(buf));
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

static int queries_param(tk_http_ctx_t *ctx)
{
    return count_param(ctx, "queries");
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
    char idbuf[12];
    const char *v[1] = {idbuf};
    int id = random_id(), rn;
    PGresult *r;
    idbuf[put_uint(idbuf, (unsigned)id)] = '\0';
    /* tk_db_query(): a plain SELECT shares a pipelined connection */
    tk_db_status_t st = tk_db_query(st_world, 1, v, NULL, &r, NULL);
    if (st == TK_DB_OK && PQntuples(r) != 1) {
        PQclear(r);
        st = TK_DB_ERROR;
    }
    if (st != TK_DB_OK) {
        tk_handlers_db_error(ctx, st);
        return;
    }
    rn = atoi(PQgetvalue(r, 0, 1));
    PQclear(r);
    tk_http_buf_t *b = tk_http_body_buf(ctx);
    char *w = tk_http_buf_reserve(b, 48);
    if (w == NULL) {
        tk_http_respond_error(ctx, 500, "out of memory");
        return;
    }
    tk_http_buf_commit(b, put_world(w, id, rn));
    tk_http_respond_buf(ctx, 200, "application/json");
}

/* N random rows, one query each (the test's rule: no IN list), sent
 * together on the worker's pipelined connections (tk_db_query_many()). */
static int fetch_worlds(tk_http_ctx_t *ctx, int n, int *ids, int *rns)
{
    /* on the heap: green-thread stacks are small */
    struct {
        char idtext[TFB_MAX_QUERIES][12];
        const char *v[TFB_MAX_QUERIES];
        PGresult *r[TFB_MAX_QUERIES];
    } *m = malloc(sizeof(*m));
    if (m == NULL) {
        tk_http_respond_error(ctx, 500, "out of memory");
        return -1;
    }
    char(*idtext)[12] = m->idtext;
    const char **v = m->v;
    PGresult **r = m->r;
    for (int i = 0; i < n; i++) {
        ids[i] = random_id();
        idtext[i][put_uint(idtext[i], (unsigned)ids[i])] = '\0';
        v[i] = idtext[i];
    }
    tk_db_status_t st = tk_db_query_many(st_world, n, 1, v, r);
    for (int i = 0; i < n && st == TK_DB_OK; i++)
        if (PQntuples(r[i]) != 1)
            st = TK_DB_ERROR;
        else
            rns[i] = atoi(PQgetvalue(r[i], 0, 1));
    for (int i = 0; i < n; i++)
        PQclear(r[i]);
    free(m);
    if (st != TK_DB_OK) {
        tk_handlers_db_error(ctx, st);
        return -1;
    }
    return 0;
}

static void write_worlds(tk_http_ctx_t *ctx, int n, const int *ids, const int *rns)
{
    tk_http_buf_t *b = tk_http_body_buf(ctx);
    char *w = tk_http_buf_reserve(b, (size_t)n * 46 + 2);
    if (w == NULL) {
        tk_http_respond_error(ctx, 500, "out of memory");
        return;
    }
    size_t off = 0;
    w[off++] = '[';
    for (int i = 0; i < n; i++) {
        if (i)
            w[off++] = ',';
        off += put_world(w + off, ids[i], rns[i]);
    }
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
        tk_handlers_db_error(ctx, st);
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
    tk_handlers_db_error(ctx, st);
}

/* A fortune row as views into the PGresult (or the static extra row): sorted
 * and escaped from there, never copied. */
typedef struct {
    const char *id, *msg;
    size_t idlen, len;
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

/* s HTML-escaped (& < > " ') at w, which has room for 6 bytes per input byte;
 * returns the bytes written. Runs of plain bytes are copied whole. */
static size_t html_escape(char *w, const char *s, size_t len)
{
    size_t o = 0, start = 0;
    for (size_t i = 0; i < len; i++) {
        const char *rep;
        size_t rl;
        switch (s[i]) {
        case '&':
            rep = "&amp;", rl = 5;
            break;
        case '<':
            rep = "&lt;", rl = 4;
            break;
        case '>':
            rep = "&gt;", rl = 4;
            break;
        case '"':
            rep = "&quot;", rl = 6;
            break;
        case '\'':
            rep = "&#39;", rl = 5;
            break;
        default:
            continue;
        }
        memcpy(w + o, s + start, i - start);
        o += i - start;
        memcpy(w + o, rep, rl);
        o += rl;
        start = i + 1;
    }
    memcpy(w + o, s + start, len - start);
    return o + len - start;
}

#define PUT_LIT(w, o, lit) (memcpy((w) + (o), (lit), sizeof(lit) - 1), (o) += sizeof(lit) - 1)

/* GET /fortunes: all rows plus one added at request time, sorted by message
 * in the application, as an escaped HTML table: the rows are views into the
 * result, sorted in place, and the page is written in one pass into space
 * reserved for the worst case (every byte escaped). */
static void h_fortunes(tk_http_ctx_t *ctx)
{
    static const char extra[] = "Additional fortune added at request time.";
    static const char head[] = "<!DOCTYPE html><html><head><title>Fortunes</title></head><body>"
                               "<table><tr><th>id</th><th>message</th></tr>";
    static const char tail[] = "</table></body></html>";
    fortune_t local[32], *f = local;
    PGresult *r;
    tk_db_status_t st = tk_db_query(st_fortune, 0, NULL, NULL, &r, NULL);
    if (st != TK_DB_OK) {
        tk_handlers_db_error(ctx, st);
        return;
    }
    int n = PQntuples(r);
    if (n + 1 > (int)(sizeof(local) / sizeof(local[0])) &&
        (f = malloc(sizeof(*f) * (size_t)(n + 1))) == NULL) {
        PQclear(r);
        tk_http_respond_error(ctx, 500, "out of memory");
        return;
    }
    size_t room = sizeof(head) + sizeof(tail) + (sizeof(extra) - 1) * 6 + 32;
    for (int i = 0; i < n; i++) {
        f[i].id = PQgetvalue(r, i, 0);
        f[i].idlen = (size_t)PQgetlength(r, i, 0);
        f[i].msg = PQgetvalue(r, i, 1);
        f[i].len = (size_t)PQgetlength(r, i, 1);
        room += f[i].idlen + f[i].len * 6 + 32;
    }
    f[n].id = "0";
    f[n].idlen = 1;
    f[n].msg = extra;
    f[n].len = sizeof(extra) - 1;
    qsort(f, (size_t)n + 1, sizeof(*f), cmp_fortune);

    tk_http_buf_t *b = tk_http_body_buf(ctx);
    char *w = tk_http_buf_reserve(b, room);
    if (w == NULL) {
        if (f != local)
            free(f);
        PQclear(r);
        tk_http_respond_error(ctx, 500, "out of memory");
        return;
    }
    size_t o = 0;
    PUT_LIT(w, o, head);
    for (int i = 0; i <= n; i++) {
        PUT_LIT(w, o, "<tr><td>");
        memcpy(w + o, f[i].id, f[i].idlen);
        o += f[i].idlen;
        PUT_LIT(w, o, "</td><td>");
        o += html_escape(w + o, f[i].msg, f[i].len);
        PUT_LIT(w, o, "</td></tr>");
    }
    PUT_LIT(w, o, tail);
    tk_http_buf_commit(b, o);
    if (f != local)
        free(f);
    PQclear(r);
    tk_http_respond_buf(ctx, 200, "text/html; charset=utf-8");
}

/* --- /cached-queries: cachedworld rows from Redis ------------------------------------ */

/* "cachedworld:{id}" holds the row's randomNumber as decimal text, without a
 * TTL (the table never changes). One worker loads all of them at start
 * (warm_main below); keys found missing later (Redis restarted or
 * flushed) are put back by a refill in the background. */
#define CWORLD_KEY_MAX 24

typedef struct {
    int n;
    int ids[TFB_MAX_QUERIES], rns[TFB_MAX_QUERIES];
} refill_t;

static void refill_main(void *arg)
{
    refill_t *f = arg;
    tk_cache_t *c = env->cache;
    char key[CWORLD_KEY_MAX], val[16];
    for (int i = 0; i < f->n; i++) {
        int kl = snprintf(key, sizeof(key), "cachedworld:%d", f->ids[i]);
        int vl = snprintf(val, sizeof(val), "%d", f->rns[i]);
        if (tk_cache_set(c, key, (size_t)kl, val, (size_t)vl, 0) != TK_CACHE_OK)
            break; /* Redis unwell again: the next miss will try */
    }
    free(f);
    refills_running--;
}

/* Put n (id, randomNumber) pairs back into Redis without making the request
 * wait for it; skipped when enough refills are running already. */
static void refill_spawn(const int *ids, const int *rns, int n)
{
    tk_sched_t *s = tk_sched_current();
    if (n == 0 || s == NULL || refills_running >= TFB_MAX_REFILLS)
        return;
    refill_t *f = malloc(sizeof(*f));
    if (f == NULL)
        return;
    f->n = n;
    memcpy(f->ids, ids, sizeof(int) * (size_t)n);
    memcpy(f->rns, rns, sizeof(int) * (size_t)n);
    if (tk_gt_spawn(s, "cachedworld-refill", refill_main, f) == NULL) {
        free(f);
        return;
    }
    refills_running++;
}

/* Rows the cache could not give (miss[0..nmiss-1] index ids/rns) from the
 * database, in one query. Returns 0, or answers the failure itself. */
static int cworld_from_db(tk_http_ctx_t *ctx, const int *ids, int *rns, const int *miss, int nmiss)
{
    char *arr = malloc((size_t)nmiss * 12 + 3);
    size_t la = 0;
    if (arr == NULL) {
        tk_http_respond_error(ctx, 500, "out of memory");
        return -1;
    }
    arr[la++] = '{';
    for (int i = 0; i < nmiss; i++)
        la += (size_t)sprintf(arr + la, "%s%d", i ? "," : "", ids[miss[i]]);
    arr[la++] = '}';
    arr[la] = '\0';
    const char *v[1] = {arr};
    PGresult *r;
    tk_db_status_t st = tk_db_query(st_cworld, 1, v, NULL, &r, NULL);
    free(arr);
    if (st != TK_DB_OK) {
        tk_handlers_db_error(ctx, st);
        return -1;
    }
    for (int i = 0; i < nmiss; i++)
        rns[miss[i]] = -1;
    /* at most 500 x 500 comparisons: cheaper than building an index */
    for (int row = 0, rows = PQntuples(r); row < rows; row++) {
        int id = atoi(PQgetvalue(r, row, 0)), rn = atoi(PQgetvalue(r, row, 1));
        for (int i = 0; i < nmiss; i++)
            if (ids[miss[i]] == id)
                rns[miss[i]] = rn;
    }
    PQclear(r);
    for (int i = 0; i < nmiss; i++)
        if (rns[miss[i]] < 0) {
            tk_http_respond_error(ctx, 500, "cachedworld row missing");
            return -1;
        }
    return 0;
}

typedef struct {
    int ids[TFB_MAX_QUERIES], rns[TFB_MAX_QUERIES], miss[TFB_MAX_QUERIES];
    char keys[TFB_MAX_QUERIES][CWORLD_KEY_MAX];
    const char *keyp[TFB_MAX_QUERIES];
    size_t keylen[TFB_MAX_QUERIES];
    int refill_ids[TFB_MAX_QUERIES], refill_rns[TFB_MAX_QUERIES];
} cq_t;

/* GET /cached-queries?count=N: N random cachedworld rows with one MGET; what
 * Redis lacks (or all of it, when Redis is down, slow or skipped) comes from
 * the database, and real misses are put back in the background. */
static void h_cached_queries(tk_http_ctx_t *ctx)
{
    int n = count_param(ctx, "count"), nmiss = 0;
    cq_t *q = malloc(sizeof(*q)); /* ~50 KiB: too much for a green thread's stack */
    if (q == NULL) {
        tk_http_respond_error(ctx, 500, "out of memory");
        return;
    }
    for (int i = 0; i < n; i++) {
        q->ids[i] = random_id();
        memcpy(q->keys[i], "cachedworld:", 12);
        q->keylen[i] = 12 + put_uint(q->keys[i] + 12, (unsigned)q->ids[i]);
        q->keyp[i] = q->keys[i];
    }
    /* the values are parsed as the reply is read: no copy of each */
    tk_cache_rc_t rc = tk_cache_mget_int(env->cache, q->keyp, q->keylen, (size_t)n, q->rns);
    for (int i = 0; i < n; i++)
        if (q->rns[i] < 0)
            q->miss[nmiss++] = i;
    if (nmiss > 0) {
        if (cworld_from_db(ctx, q->ids, q->rns, q->miss, nmiss) != 0) {
            free(q);
            return;
        }
        /* only when Redis answered: after an error or a bypass it is unwell,
         * and the next request will find out whether it is back */
        if (rc == TK_CACHE_OK) {
            for (int i = 0; i < nmiss; i++) {
                q->refill_ids[i] = q->ids[q->miss[i]];
                q->refill_rns[i] = q->rns[q->miss[i]];
            }
            refill_spawn(q->refill_ids, q->refill_rns, nmiss);
        }
    }
    write_worlds(ctx, n, q->ids, q->rns);
    free(q);
}

/* Start-up load of every cachedworld row into Redis, by one worker
 * (tk_handlers_first()): one query, then SETs from a few green threads so that
 * they pipeline on the connection instead of paying a round trip each. */
#define WARM_THREADS 8
#define WARM_WAIT_MS 10000 /* for the connection to Redis */

typedef struct {
    PGresult *r;
    int next, rows;
    int left; /* setter threads still running; the last one frees */
    int stored, failed;
    int64_t start_ms;
} warm_t;

static void warm_setter(void *arg)
{
    warm_t *w = arg;
    tk_cache_t *c = env->cache;
    char key[CWORLD_KEY_MAX];
    while (!w->failed && w->next < w->rows) {
        int i = w->next++;
        int kl = snprintf(key, sizeof(key), "cachedworld:%s", PQgetvalue(w->r, i, 0));
        if (tk_cache_set(c, key, (size_t)kl, PQgetvalue(w->r, i, 1),
                         (size_t)PQgetlength(w->r, i, 1), 0) != TK_CACHE_OK) {
            w->failed = 1; /* the misses will refill what is left */
            break;
        }
        w->stored++;
    }
    if (--w->left > 0)
        return;
    if (w->failed)
        TK_LOG(TK_LOG_WARN, "cachedworld: %d of %d keys loaded into Redis: %s", w->stored, w->rows,
               tk_cache_last_error(c));
    else
        TK_LOG(TK_LOG_INFO, "cachedworld: %d keys loaded into Redis in %lld ms", w->stored,
               (long long)(tk_now_ms() - w->start_ms));
    PQclear(w->r);
    free(w);
}

static void warm_main(void *arg)
{
    tk_cache_t *c = env->cache;
    int64_t deadline = tk_now_ms() + WARM_WAIT_MS;
    (void)arg;
    while (!tk_cache_ready(c)) {
        if (tk_now_ms() >= deadline) {
            TK_LOG(TK_LOG_WARN, "cachedworld not loaded: no Redis connection (%s)",
                   tk_cache_last_error(c));
            return;
        }
        if (tk_gt_sleep_ms(20) != 0)
            return;
    }
    if (!tk_handlers_first(env)) {
        TK_LOG(TK_LOG_DEBUG, "cachedworld: another worker loads it");
        return;
    }
    warm_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return;
    w->start_ms = tk_now_ms();
    tk_db_status_t st = tk_db_query(st_cworld_all, 0, NULL, NULL, &w->r, NULL);
    if (st != TK_DB_OK) {
        TK_LOG(TK_LOG_WARN, "cachedworld not loaded: %s", tk_db_status_name(st));
        free(w);
        return;
    }
    w->rows = PQntuples(w->r);
    /* setters first run on a later turn, so counting them as they are
     * spawned cannot race with one finishing */
    for (int i = 0; i < WARM_THREADS; i++)
        if (tk_gt_spawn(tk_sched_current(), "cachedworld-load", warm_setter, w) != NULL)
            w->left++;
    if (w->left == 0) {
        PQclear(w->r);
        free(w);
    }
}

void tk_handlers_register_tfb(tk_router_t *r, const tk_handlers_env_t *e)
{
    env = e;
    /* Reads, never TK_DB_JOINABLE: TechEmpower's verifier counts the queries
     * each request runs, so identical ones must each run. */
    st_world = tk_db_stmt("SELECT id, randomnumber FROM world WHERE id = $1", 1, TK_DB_READ);
    st_fortune = tk_db_stmt("SELECT id, message FROM fortune", 0, TK_DB_READ);
    st_update = tk_db_stmt("UPDATE world SET randomnumber = u.rn "
                           "FROM unnest($1::int[], $2::int[]) AS u(id, rn) WHERE world.id = u.id",
                           2, 0);
    st_cworld = tk_db_stmt("SELECT id, randomnumber FROM cachedworld WHERE id = ANY($1::int[])", 1,
                           TK_DB_READ);
    tk_router_add(r, "GET", "/db", h_db);
    tk_router_add(r, "GET", "/queries", h_queries);
    tk_router_add(r, "GET", "/fortunes", h_fortunes);
    tk_router_add(r, "GET", "/updates", h_updates);
    st_cworld_all = tk_db_stmt("SELECT id, randomnumber FROM cachedworld", 0, TK_DB_READ);
    tk_router_add(r, "GET", "/cached-queries", h_cached_queries);
    /* runs once the worker's loop turns */
    if (env->cache != NULL && tk_sched_current() != NULL)
        tk_gt_spawn(tk_sched_current(), "cachedworld-load", warm_main, NULL);
}
