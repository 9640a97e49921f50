/* cache_aside.c: single flight and cache-aside fetch/invalidate with versioned keys (Lua). */
#include "config.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_int.h"

/* --- single flight ------------------------------------------------------------------- */

#define FLIGHT_BUCKETS 64

/* A green thread parked on a call; lives on its own stack, linked only while parked. */
typedef struct flight_waiter {
    struct flight_waiter *next;
    tk_gt_t *gt;
} flight_waiter_t;

/* One load in progress (or finished and still being copied by its waiters). */
typedef struct flight_call {
    struct flight_call *next; /* hash chain, while in progress */
    char *key;
    size_t keylen;
    flight_waiter_t *waiters;
    unsigned refs; /* the leader + waiters that have not copied the result yet */
    int done;
    int stale; /* forgotten (invalidated) while loading: don't store the result */
    int retry; /* the leader was cancelled: waiters start over instead of failing */
    int rc;
    char *val;
    size_t len;
} flight_call_t;

struct tk_cache_flight {
    tk_cache_t *stats_of;
    size_t pending;
    flight_call_t *b[FLIGHT_BUCKETS];
};

tk_cache_flight_t *tk_cache_flight_new(tk_cache_t *stats_of)
{
    tk_cache_flight_t *f = calloc(1, sizeof(*f));
    if (f)
        f->stats_of = stats_of;
    return f;
}

void tk_cache_flight_free(tk_cache_flight_t *f)
{
    if (f == NULL)
        return;
    assert(f->pending == 0);
    free(f);
}

size_t tk_cache_flight_pending(const tk_cache_flight_t *f)
{
    return f ? f->pending : 0;
}

static unsigned flight_hash(const char *k, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)k[i]) * 16777619u;
    return h % FLIGHT_BUCKETS;
}

static void call_unref(flight_call_t *fc)
{
    assert(fc->refs > 0);
    if (--fc->refs == 0) {
        free(fc->val);
        free(fc->key);
        free(fc);
    }
}

/* Give the caller its copy of a finished call's result. */
static int call_result(flight_call_t *fc, char **val, size_t *vallen)
{
    if (fc->rc == 0 && fc->val != NULL) {
        if (fc->refs == 1) { /* last one: take it instead of copying */
            *val = fc->val;
            fc->val = NULL;
        } else if ((*val = tk_cache_dup_bytes(fc->val, fc->len)) == NULL) {
            return -1;
        }
        *vallen = fc->len;
    }
    return fc->rc;
}

static flight_call_t *flight_find(const tk_cache_flight_t *f, unsigned h, const char *key,
                                  size_t keylen)
{
    flight_call_t *fc;

    for (fc = f->b[h]; fc; fc = fc->next)
        if (fc->keylen == keylen && memcmp(fc->key, key, keylen) == 0)
            break;
    return fc;
}

/* Take fc out of the table (new callers then start a new load). */
static void flight_unlink(tk_cache_flight_t *f, unsigned h, flight_call_t *fc)
{
    for (flight_call_t **pp = &f->b[h]; *pp; pp = &(*pp)->next)
        if (*pp == fc) {
            *pp = fc->next;
            fc->next = NULL;
            f->pending--;
            return;
        }
}

int tk_cache_flight_forget(tk_cache_flight_t *f, const char *key, size_t keylen)
{
    unsigned h;
    flight_call_t *fc;

    if (f == NULL)
        return 0;
    h = flight_hash(key, keylen);
    if ((fc = flight_find(f, h, key, keylen)) == NULL)
        return 0;
    fc->stale = 1;
    flight_unlink(f, h, fc);
    return 1;
}

/* tk_cache_flight_do(); *lead (may be NULL) is set to the call record before
 * the loader runs when the caller leads, so tk_cache_fetch() can check it. */
static int flight_do(tk_cache_flight_t *f, const char *key, size_t keylen, tk_cache_loader_fn fn,
                     void *arg, int64_t deadline_ms, char **val, size_t *vallen, int *shared,
                     flight_call_t **lead)
{
    flight_call_t *fc;
    unsigned h;
    int rc;

    *val = NULL;
    *vallen = 0;
    if (shared)
        *shared = 0;
    if (f == NULL)
        return fn(arg, key, keylen, val, vallen);
    h = flight_hash(key, keylen);
again:
    fc = flight_find(f, h, key, keylen);
    if (fc != NULL) {
        /* A load is in progress: wait for it. */
        flight_waiter_t w = {fc->waiters, tk_gt_self()};
        if (w.gt == NULL)
            return -1;
        fc->waiters = &w;
        fc->refs++;
        while (!fc->done) {
            if (tk_gt_park(TK_GT_WAIT_GT, deadline_ms) == 0)
                continue;
            if (fc->done)
                break;
            /* Timed out or cancelled: unlink ourselves and leave. */
            for (flight_waiter_t **wp = &fc->waiters; *wp; wp = &(*wp)->next)
                if (*wp == &w) {
                    *wp = w.next;
                    break;
                }
            call_unref(fc);
            return -1;
        }
        if (fc->retry) {
            call_unref(fc);
            goto again;
        }
        if (shared)
            *shared = 1;
        if (f->stats_of)
            f->stats_of->st.flight_shared++;
        rc = call_result(fc, val, vallen);
        call_unref(fc);
        return rc;
    }

    /* We lead: register, load, publish, wake the waiters. */
    fc = calloc(1, sizeof(*fc));
    if (fc == NULL || (fc->key = tk_cache_dup_bytes(key, keylen)) == NULL) {
        free(fc);
        return -1;
    }
    fc->keylen = keylen;
    fc->refs = 1;
    fc->next = f->b[h];
    f->b[h] = fc;
    f->pending++;
    if (f->stats_of)
        f->stats_of->st.flight_loads++;
    if (lead)
        *lead = fc;

    fc->rc = fn(arg, key, keylen, &fc->val, &fc->len);
    if (fc->rc != 0) {
        free(fc->val);
        fc->val = NULL;
        fc->len = 0;
    }
    /* A load that failed because its leader is being cancelled (its client
     * went away) says nothing about the key: the waiters try again. */
    fc->retry = fc->rc < 0 && tk_gt_self() != NULL && tk_gt_cancelled(tk_gt_self());

    if (!fc->stale)
        flight_unlink(f, h, fc);
    fc->done = 1;
    for (flight_waiter_t *w = fc->waiters; w; w = w->next)
        tk_gt_unpark(w->gt);
    fc->waiters = NULL;
    rc = call_result(fc, val, vallen);
    call_unref(fc);
    return rc;
}

int tk_cache_flight_do(tk_cache_flight_t *f, const char *key, size_t keylen, tk_cache_loader_fn fn,
                       void *arg, int64_t deadline_ms, char **val, size_t *vallen, int *shared)
{
    return flight_do(f, key, keylen, fn, arg, deadline_ms, val, vallen, shared, NULL);
}

/* --- cache-aside ------------------------------------------------------------------------ */

/* Across workers (and servers) a load can read a row, another process commit
 * a change to it and invalidate the key, and only then the load store what it
 * read: the old row would stay cached for the whole TTL. So every key has a
 * version key ("<key>#ver") that tk_cache_invalidate() increments atomically
 * with the DEL, a load reads it in the same MGET as its miss, and stores only
 * if it is still the same (a script, so check and SET are one step in Redis).
 * A version key lives TK_CACHE_VERSION_TTL_S after the last invalidation:
 * longer than any load can take (db.acquire_timeout + db.query_timeout are
 * at most 10 min each, redis.timeout 1 min); after that, "no version" is
 * what a load that started then reads too. */
#define TK_CACHE_VERSION_TTL_S  3600
#define TK_CACHE_VERSION_SUFFIX "#ver"

static const char k_store_script[] =
    "local v = redis.call('GET', KEYS[2]) "
    "if (v or '') ~= ARGV[3] then return 0 end "
    "if ARGV[2] ~= '0' then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) "
    "else redis.call('SET', KEYS[1], ARGV[1]) end "
    "return 1";
static const char k_invalidate_script[] = "redis.call('INCR', KEYS[2]) "
                                          "redis.call('EXPIRE', KEYS[2], ARGV[1]) "
                                          "return redis.call('DEL', KEYS[1])";

/* "<key>#ver", malloc'd (NULL: out of memory). */
static char *version_key(const char *key, size_t keylen, size_t *len)
{
    size_t sl = sizeof(TK_CACHE_VERSION_SUFFIX) - 1;
    char *v = malloc(keylen + sl + 1);
    if (v == NULL)
        return NULL;
    memcpy(v, key, keylen);
    memcpy(v + keylen, TK_CACHE_VERSION_SUFFIX, sl + 1);
    *len = keylen + sl;
    return v;
}

/* EVAL script with 2 keys and nargs arguments; the script answers an integer:
 * HIT when > 0, MISS when 0. May yield. */
static tk_cache_rc_t eval2(tk_cache_t *c, const char *script, const char *k1, size_t k1len,
                           const char *k2, size_t k2len, int nargs, const char *const *args,
                           const size_t *arglens)
{
    const char *argv[8] = {"EVAL", script, "2", k1, k2};
    size_t lens[8] = {4, strlen(script), 1, k1len, k2len};
    cache_req_t *q;
    tk_cache_rc_t rc;
    int probe, own;

    assert(nargs <= 3);
    for (int i = 0; i < nargs; i++) {
        argv[5 + i] = args[i];
        lens[5 + i] = arglens[i];
    }
    if (tk_cache_begin(c, K_EVAL, &q, &probe, &rc) < 0)
        return rc;
    rc = tk_cache_roundtrip(c, q, probe, 5 + nargs, argv, lens, &own);
    if (own)
        free(q);
    return rc;
}

/* GET key and its version key in one MGET. HIT: *val as tk_cache_get();
 * MISS: *ver is the version (malloc'd) or NULL when there is none. */
static tk_cache_rc_t get_versioned(tk_cache_t *c, const char *key, size_t keylen, const char *vkey,
                                   size_t vkeylen, char **val, size_t *vallen, char **ver,
                                   size_t *verlen)
{
    const char *argv[3] = {"MGET", key, vkey};
    size_t lens[3] = {4, keylen, vkeylen};
    tk_cache_item_t items[2];
    cache_req_t *q;
    tk_cache_rc_t rc;
    int probe, own;

    *val = *ver = NULL;
    *vallen = *verlen = 0;
    tk_cache_items_set(items, 2, TK_CACHE_ERROR);
    /* A replica may lag: a stale version only makes the store below refuse
     * (the master's version is newer), never store an old row. */
    c = tk_cache_reader(c);
    if (tk_cache_begin(c, K_MGET, &q, &probe, &rc) < 0)
        return rc;
    q->items = items;
    q->n = 2;
    rc = tk_cache_roundtrip(c, q, probe, 3, argv, lens, &own);
    if (!own)
        return rc; /* abandoned: the reply will not touch items */
    free(q);
    if (rc != TK_CACHE_OK) {
        tk_cache_items_free(items, 2);
        return rc;
    }
    if (items[0].rc == TK_CACHE_HIT) {
        c->st.hits++;
        *val = items[0].val;
        *vallen = items[0].len;
        free(items[1].val);
        return TK_CACHE_HIT;
    }
    c->st.misses++;
    *ver = items[1].val;
    *verlen = items[1].len;
    return TK_CACHE_MISS;
}

/* SET key val (EX ttl_s when > 0) only if key's version is still ver. */
static tk_cache_rc_t store_versioned(tk_cache_t *c, const char *key, size_t keylen,
                                     const char *vkey, size_t vkeylen, const char *val,
                                     size_t vallen, int ttl_s, const char *ver, size_t verlen)
{
    char ttl[24];
    const char *args[3] = {val ? val : "", ttl, ver ? ver : ""};
    size_t lens[3] = {vallen, 0, ver ? verlen : 0};
    lens[1] = (size_t)snprintf(ttl, sizeof(ttl), "%d", ttl_s > 0 ? ttl_s : 0);
    return eval2(c, k_store_script, key, keylen, vkey, vkeylen, 3, args, lens);
}

typedef struct {
    tk_cache_t *c;
    int ttl_s;
    int store; /* GET said MISS: Redis works, so store what we load */
    tk_cache_loader_fn fn;
    void *arg;
    flight_call_t *fc; /* the leader's call record */
    char *vkey;        /* the version key, and the version the GET saw (NULL: none) */
    size_t vkeylen;
    char *ver;
    size_t verlen;
} fetch_ctx_t;

/* The leader's load: the real loader, then the store, before waiters are
 * released, so a miss right after this flight finds the value in Redis. */
static int fetch_load(void *arg, const char *key, size_t keylen, char **val, size_t *vallen)
{
    fetch_ctx_t *x = arg;
    int rc = x->fn(x->arg, key, keylen, val, vallen);

    /* Invalidated while we loaded: what we read may predate the change. In
     * this worker the flight says so; in another, the version key does. */
    if (x->c == NULL || !x->store || (x->fc && x->fc->stale))
        return rc;
    if (rc == 0 && *vallen > 0)
        store_versioned(x->c, key, keylen, x->vkey, x->vkeylen, *val, *vallen, x->ttl_s, x->ver,
                        x->verlen);
    else if (rc == 1 && x->c->o.negative_ttl_s > 0)
        store_versioned(x->c, key, keylen, x->vkey, x->vkeylen, "", 0, x->c->o.negative_ttl_s,
                        x->ver, x->verlen);
    return rc;
}

int tk_cache_fetch(tk_cache_t *c, tk_cache_flight_t *f, const char *key, size_t keylen, int ttl_s,
                   tk_cache_loader_fn fn, void *arg, char **val, size_t *vallen, int *hit)
{
    fetch_ctx_t x = {c, ttl_s > 0 ? ttl_s : (c ? c->o.ttl_s : 0), 0, fn, arg, NULL, NULL, 0, NULL,
                     0};
    tk_cache_rc_t rc;
    int r;

    if (hit)
        *hit = 0;
    *val = NULL;
    *vallen = 0;
    if (c != NULL && (x.vkey = version_key(key, keylen, &x.vkeylen)) != NULL)
        rc = get_versioned(c, key, keylen, x.vkey, x.vkeylen, val, vallen, &x.ver, &x.verlen);
    else
        rc = c == NULL ? TK_CACHE_BYPASS : TK_CACHE_ERROR;
    if (rc == TK_CACHE_HIT) {
        free(x.vkey);
        if (hit)
            *hit = 1;
        if (*vallen == 0) { /* cached "not found" */
            free(*val);
            *val = NULL;
            return 1;
        }
        return 0;
    }
    x.store = rc == TK_CACHE_MISS;
    r = flight_do(f, key, keylen, fetch_load, &x, -1, val, vallen, NULL, &x.fc);
    free(x.vkey);
    free(x.ver);
    return r;
}

/* Bound the window in which a replica still serves an invalidated key: WAIT
 * until every healthy replica has the DEL (Redis' own replication offsets),
 * for at most 3/4 of timeout_ms so the reply beats our own timer. */
static void wait_replicas(tk_cache_t *c)
{
    char nrep[16], ms[16];
    const char *argv[3] = {"WAIT", nrep, ms};
    size_t lens[3] = {4, 0, 0};
    int wait_ms = c->o.timeout_ms * 3 / 4;
    cache_req_t *q;
    tk_cache_rc_t rc;
    int probe, own;
    uint64_t t0 = tk_now_ns(), us;

    lens[1] = (size_t)snprintf(nrep, sizeof(nrep), "%d", c->nreplicas);
    lens[2] = (size_t)snprintf(ms, sizeof(ms), "%d", wait_ms > 0 ? wait_ms : 1); /* 0 = forever */
    if (tk_cache_begin(c, K_WAIT, &q, &probe, &rc) < 0)
        return;
    rc = tk_cache_roundtrip(c, q, probe, 3, argv, lens, &own);
    us = (tk_now_ns() - t0) / 1000u;
    c->topo.inval_waits++;
    c->topo.inval_wait_us_sum += us;
    if (us > c->topo.inval_wait_us_max)
        c->topo.inval_wait_us_max = us;
    if (!own || rc != TK_CACHE_OK || q->len < (size_t)c->nreplicas)
        c->topo.inval_wait_short++;
    if (own)
        free(q);
}

tk_cache_rc_t tk_cache_invalidate(tk_cache_t *c, tk_cache_flight_t *f, const char *key,
                                  size_t keylen)
{
    char ttl[24];
    const char *args[1] = {ttl};
    size_t lens[1], vkeylen;
    tk_cache_rc_t rc;

    tk_cache_flight_forget(f, key, keylen);
    if (c == NULL)
        return TK_CACHE_BYPASS;
    char *vkey = version_key(key, keylen, &vkeylen);
    if (vkey == NULL)
        return tk_cache_del(c, key, keylen);
    lens[0] = (size_t)snprintf(ttl, sizeof(ttl), "%d", TK_CACHE_VERSION_TTL_S);
    rc = eval2(c, k_invalidate_script, key, keylen, vkey, vkeylen, 1, args, lens);
    free(vkey);
    if ((rc == TK_CACHE_HIT || rc == TK_CACHE_MISS) && c->rd != NULL && c->nreplicas > 0)
        wait_replicas(c);
    return rc;
}
