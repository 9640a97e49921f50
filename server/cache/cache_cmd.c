/* cache_cmd.c: Redis commands for a green thread: send, park until reply or timeout, account. */
#include "config.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "cache/cache_int.h"

/* --- commands ------------------------------------------------------------------------ */

static const uint64_t lat_bounds[TK_CACHE_LAT_NBUCKETS] = TK_CACHE_LAT_BOUNDS_US;

char *tk_cache_dup_bytes(const char *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

static void record_latency(tk_cache_t *c, uint64_t sent_ns)
{
    uint64_t us = (tk_now_ns() - sent_ns) / 1000u;
    int i = 0;

    while (i < TK_CACHE_LAT_NBUCKETS - 1 && us > lat_bounds[i])
        i++;
    c->st.lat_buckets[i]++;
    c->st.lat_sum_us += us;
    c->st.lat_count++;
    if (c->node) {
        c->node->lat_sum_us += us;
        c->node->lat_count++;
    }
}

static void node_error(tk_cache_t *c)
{
    if (c->node)
        c->node->errors++;
}

/* Fill a waiting request from its reply (NULL: the connection went away). */
static void fill(cache_req_t *q, redisReply *r)
{
    q->rc = TK_CACHE_ERROR;
    if (r == NULL)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        tk_cache_set_err(q->c, "redis error", r->str);
        return;
    }
    switch (q->kind) {
    case K_GET:
        if (r->type == REDIS_REPLY_NIL) {
            q->rc = TK_CACHE_MISS;
        } else if (r->type == REDIS_REPLY_STRING) {
            q->val = tk_cache_dup_bytes(r->str, (size_t)r->len);
            q->len = (size_t)r->len;
            q->rc = q->val ? TK_CACHE_HIT : TK_CACHE_ERROR;
        }
        break;
    case K_SET:
        if (r->type == REDIS_REPLY_STATUS)
            q->rc = TK_CACHE_OK;
        break;
    case K_WAIT: /* the number of replicas that acknowledged, in len */
        if (r->type == REDIS_REPLY_INTEGER) {
            q->rc = TK_CACHE_OK;
            q->len = r->integer > 0 ? (size_t)r->integer : 0;
        }
        break;
    case K_DEL:
    case K_EVAL: /* our scripts answer an integer: > 0 done, 0 not */
        if (r->type == REDIS_REPLY_INTEGER)
            q->rc = r->integer > 0 ? TK_CACHE_HIT : TK_CACHE_MISS;
        break;
    case K_MGET_INT:
        if (r->type == REDIS_REPLY_ARRAY && r->elements == q->n) {
            q->rc = TK_CACHE_OK;
            for (size_t i = 0; i < q->n; i++) {
                const redisReply *e = r->element[i];
                int v = -1;
                if (e->type == REDIS_REPLY_STRING && e->len >= 1 && e->len <= 9) {
                    v = 0;
                    for (size_t k = 0; k < e->len && v >= 0; k++)
                        v = e->str[k] >= '0' && e->str[k] <= '9' ? v * 10 + (e->str[k] - '0') : -1;
                }
                q->ints[i] = v;
            }
        }
        break;
    case K_MGET:
        if (r->type == REDIS_REPLY_ARRAY && r->elements == q->n) {
            q->rc = TK_CACHE_OK;
            for (size_t i = 0; i < q->n; i++) {
                redisReply *e = r->element[i];
                tk_cache_item_t *it = &q->items[i];
                it->val = NULL;
                it->len = 0;
                if (e->type == REDIS_REPLY_STRING) {
                    it->val = tk_cache_dup_bytes(e->str, (size_t)e->len);
                    it->len = (size_t)e->len;
                    it->rc = it->val ? TK_CACHE_HIT : TK_CACHE_ERROR;
                } else {
                    it->rc = TK_CACHE_MISS;
                }
            }
        }
        break;
    }
}

/* hiredis' reply callback for every user command (also run with r == NULL
 * for each pending command when the connection is freed). */
static void on_reply(redisAsyncContext *ac, void *r, void *priv)
{
    cache_req_t *q = priv;
    tk_cache_t *c = q->c;

    (void)ac;
    c->st.inflight--;
    if (r != NULL)
        record_latency(c, q->sent_ns);
    if (q->state == REQ_ABANDONED) {
        /* Its caller has moved on: drop the reply, touch nothing of theirs. */
        c->abandoned--;
        if (r != NULL)
            c->st.late_replies++;
        free(q);
        return;
    }
    assert(q->state == REQ_WAITING);
    fill(q, r);
    q->state = REQ_DONE;
    tk_gt_unpark(q->gt);
}

/* Send one command for the calling green thread and park until its reply or
 * the timeout. Sets *own to 1 when q is DONE (the caller reads and frees it),
 * to 0 when q now belongs to hiredis' callback (ERROR returned; q may already
 * be freed: don't touch it). Accounts breaker and error stats. */
tk_cache_rc_t tk_cache_roundtrip(tk_cache_t *c, cache_req_t *q, int probe, int argc,
                                 const char **argv, const size_t *argvlen, int *own)
{
    int64_t deadline = tk_now_ms() + c->o.timeout_ms;
    tk_cache_rc_t rc;

    q->c = c;
    q->gt = tk_gt_self();
    q->state = REQ_WAITING;
    q->sent_ns = tk_now_ns();
    *own = 1;
    if (redisAsyncCommandArgv(c->ac, on_reply, q, argc, argv, argvlen) != REDIS_OK) {
        tk_cache_set_err(c, "redisAsyncCommandArgv() failed", NULL);
        q->rc = TK_CACHE_ERROR;
        q->state = REQ_DONE;
        c->st.errors++;
        node_error(c);
        tk_cache_note_failure(c, probe);
        return TK_CACHE_ERROR;
    }
    c->st.commands++;
    if (c->node)
        c->node->commands++;
    c->st.inflight++;
    if (c->st.inflight > c->st.inflight_peak)
        c->st.inflight_peak = c->st.inflight;
    while (q->state == REQ_WAITING) {
        if (tk_gt_park(TK_GT_WAIT_CACHE, deadline) == 0)
            continue; /* woken: re-check (a stray wake-up parks again) */
        if (q->state != REQ_WAITING)
            break; /* the reply came in the same turn as the deadline */
        int timed_out = errno == ETIMEDOUT;
        q->state = REQ_ABANDONED; /* hiredis' callback frees it */
        *own = 0;
        c->abandoned++;
        node_error(c);
        if (timed_out) {
            c->st.timeouts++;
            tk_cache_set_err(c, "command timed out", NULL);
        } else {
            c->st.errors++;
        }
        /* A breaker that opens on timeouts means the connection is stuck
         * behind unanswered commands: drop it rather than wait on it. */
        if (tk_cache_note_failure(c, probe) && c->abandoned > 0)
            tk_cache_drop_conn(c, "commands timing out");
        return TK_CACHE_ERROR;
    }
    rc = q->rc;
    if (rc == TK_CACHE_ERROR) {
        c->st.errors++;
        node_error(c);
        tk_cache_note_failure(c, probe);
    } else {
        tk_cache_note_success(c);
    }
    return rc;
}

/* Common entry checks; returns 0 when the caller may send (q allocated). */
int tk_cache_begin(tk_cache_t *c, int kind, cache_req_t **qp, int *probe, tk_cache_rc_t *rc)
{
    if (c == NULL) {
        *rc = TK_CACHE_BYPASS;
        return -1;
    }
    if (tk_gt_self() == NULL) {
        tk_cache_set_err(c, "called outside a green thread", NULL);
        c->st.errors++;
        *rc = TK_CACHE_ERROR;
        return -1;
    }
    if (!tk_cache_admit(c, probe)) {
        c->st.bypasses++;
        *rc = TK_CACHE_BYPASS;
        return -1;
    }
    *qp = calloc(1, sizeof(**qp));
    if (*qp == NULL) {
        if (*probe)
            c->brk_state = BRK_OPEN; /* give the probe back */
        c->st.errors++;
        *rc = TK_CACHE_ERROR;
        return -1;
    }
    (*qp)->kind = kind;
    return 0;
}

tk_cache_rc_t tk_cache_get(tk_cache_t *c, const char *key, size_t keylen, char **val,
                           size_t *vallen)
{
    const char *argv[2] = {"GET", key};
    size_t lens[2] = {3, keylen};
    cache_req_t *q;
    tk_cache_rc_t rc;
    int probe, own;

    *val = NULL;
    *vallen = 0;
    c = tk_cache_reader(c); /* a replica, with redis.read_from = replicas */
    if (tk_cache_begin(c, K_GET, &q, &probe, &rc) < 0)
        return rc;
    rc = tk_cache_roundtrip(c, q, probe, 2, argv, lens, &own);
    if (!own)
        return rc;
    if (rc == TK_CACHE_HIT) {
        c->st.hits++;
        *val = q->val;
        *vallen = q->len;
    } else if (rc == TK_CACHE_MISS) {
        c->st.misses++;
    }
    free(q);
    return rc;
}

tk_cache_rc_t tk_cache_set(tk_cache_t *c, const char *key, size_t keylen, const char *val,
                           size_t vallen, int ttl_s)
{
    char ttl[24];
    const char *argv[5] = {"SET", key, val ? val : "", "EX", ttl};
    size_t lens[5] = {3, keylen, vallen, 2, 0};
    cache_req_t *q;
    tk_cache_rc_t rc;
    int probe, own;

    if (tk_cache_begin(c, K_SET, &q, &probe, &rc) < 0)
        return rc;
    lens[4] = (size_t)snprintf(ttl, sizeof(ttl), "%d", ttl_s);
    rc = tk_cache_roundtrip(c, q, probe, ttl_s > 0 ? 5 : 3, argv, lens, &own);
    if (own)
        free(q);
    return rc;
}

tk_cache_rc_t tk_cache_del(tk_cache_t *c, const char *key, size_t keylen)
{
    const char *argv[2] = {"DEL", key};
    size_t lens[2] = {3, keylen};
    cache_req_t *q;
    tk_cache_rc_t rc;
    int probe, own;

    if (tk_cache_begin(c, K_DEL, &q, &probe, &rc) < 0)
        return rc;
    rc = tk_cache_roundtrip(c, q, probe, 2, argv, lens, &own);
    if (own)
        free(q);
    return rc;
}

void tk_cache_items_set(tk_cache_item_t *items, size_t n, tk_cache_rc_t rc)
{
    for (size_t i = 0; i < n; i++) {
        items[i].rc = rc;
        items[i].val = NULL;
        items[i].len = 0;
    }
}

/* Up to this many keys, an MGET's arguments stay on the (green thread's) stack: 1 KiB. */
#define MGET_STACK 64

/* Send MGET keys for q (begun by tk_cache_begin()) and wait for its reply; *own as for
 * tk_cache_roundtrip() (0 also when the arguments could not be allocated: q is freed). */
static tk_cache_rc_t mget_roundtrip(tk_cache_t *c, cache_req_t *q, int probe,
                                    const char *const *keys, const size_t *keylens, size_t n,
                                    int *own)
{
    const char *argv_s[MGET_STACK + 1], **argv = argv_s;
    size_t lens_s[MGET_STACK + 1], *lens = lens_s;
    if (n > MGET_STACK) {
        argv = malloc((n + 1) * sizeof(*argv));
        lens = malloc((n + 1) * sizeof(*lens));
        if (argv == NULL || lens == NULL) {
            free(argv);
            free(lens);
            free(q);
            if (probe)
                c->brk_state = BRK_OPEN;
            c->st.errors++;
            *own = 0;
            return TK_CACHE_ERROR;
        }
    }
    argv[0] = "MGET";
    lens[0] = 4;
    for (size_t i = 0; i < n; i++) {
        argv[i + 1] = keys[i];
        lens[i + 1] = keylens ? keylens[i] : strlen(keys[i]);
    }
    q->n = n;
    /* hiredis copies the arguments into its output buffer at once. */
    tk_cache_rc_t rc = tk_cache_roundtrip(c, q, probe, (int)(n + 1), argv, lens, own);
    if (argv != argv_s) {
        free(argv);
        free(lens);
    }
    return rc;
}

tk_cache_rc_t tk_cache_mget(tk_cache_t *c, const char *const *keys, const size_t *keylens, size_t n,
                            tk_cache_item_t *items)
{
    cache_req_t *q;
    tk_cache_rc_t rc;
    int probe, own;

    tk_cache_items_set(items, n, TK_CACHE_ERROR);
    if (n == 0)
        return TK_CACHE_OK;
    c = tk_cache_reader(c);
    if (tk_cache_begin(c, K_MGET, &q, &probe, &rc) < 0) {
        tk_cache_items_set(items, n, rc);
        return rc;
    }
    q->items = items;
    rc = mget_roundtrip(c, q, probe, keys, keylens, n, &own);
    if (!own) {
        tk_cache_items_set(items, n, TK_CACHE_ERROR);
        return rc;
    }
    free(q);
    if (rc != TK_CACHE_OK) {
        tk_cache_items_set(items, n, rc);
        return rc;
    }
    for (size_t i = 0; i < n; i++) {
        if (items[i].rc == TK_CACHE_HIT)
            c->st.hits++;
        else if (items[i].rc == TK_CACHE_MISS)
            c->st.misses++;
    }
    return rc;
}

void tk_cache_items_free(tk_cache_item_t *items, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(items[i].val);
        items[i].val = NULL;
    }
}

/* MGET with the values parsed in hiredis' reply callback: no copy per key. */
tk_cache_rc_t tk_cache_mget_int(tk_cache_t *c, const char *const *keys, const size_t *keylens,
                                size_t n, int *vals)
{
    cache_req_t *q;
    tk_cache_rc_t rc;
    int probe, own;

    for (size_t i = 0; i < n; i++)
        vals[i] = -1;
    if (n == 0)
        return TK_CACHE_OK;
    c = tk_cache_reader(c); /* a replica, with redis.read_from = replicas */
    if (tk_cache_begin(c, K_MGET_INT, &q, &probe, &rc) < 0)
        return rc;
    q->ints = vals;
    rc = mget_roundtrip(c, q, probe, keys, keylens, n, &own);
    if (!own)
        return rc; /* vals untouched by the reply: still -1 */
    free(q);
    if (rc != TK_CACHE_OK) {
        for (size_t i = 0; i < n; i++)
            vals[i] = -1;
        return rc;
    }
    for (size_t i = 0; i < n; i++) {
        if (vals[i] >= 0)
            c->st.hits++;
        else
            c->st.misses++;
    }
    return rc;
}
