/* cache.c: the per-worker Redis client: async hiredis, green-thread waits, timeouts, breaker. */
#include "config.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "cache/cache.h"
#include "runtime/scheduler.h"

/* The breaker's three states. */
enum { BRK_CLOSED, BRK_OPEN, BRK_HALF_OPEN };

/* Who owns a request record: while WAITING, the parked caller (the reply
 * callback fills it and wakes the caller, who frees it); once ABANDONED (the
 * caller timed out or was cancelled and has returned), hiredis' callback,
 * which frees it without touching the caller or its buffers. */
enum { REQ_WAITING, REQ_DONE, REQ_ABANDONED };
enum { K_GET, K_SET, K_DEL, K_MGET, K_EVAL };

typedef struct cache_req {
    tk_cache_t *c;
    int state;
    int kind;
    tk_gt_t *gt;
    uint64_t sent_ns;
    tk_cache_rc_t rc;
    char *val; /* K_GET result, owned by the record until taken */
    size_t len;
    tk_cache_item_t *items; /* K_MGET: the caller's array; written only while WAITING */
    size_t n;
} cache_req_t;

struct tk_cache {
    struct event_base *base;
    tk_cache_opts_t o;
    char *addr, *password;
    char host[256];
    int port; /* 0 = unix socket at addr */

    redisAsyncContext *ac; /* NULL while disconnected */
    int ready;             /* handshake done: commands may be sent */
    int ever_failed;       /* a connection failed or was lost since the last success */
    struct event *timer;   /* connect timeout while connecting, back-off delay while down */
    int backoff_ms;

    int brk_state;
    int brk_failures;   /* consecutive */
    int64_t brk_until;  /* tk_now_ms() when an open breaker lets a probe through */
    uint64_t abandoned; /* timed-out commands whose reply is still due */

    tk_cache_stats_t st;
    char lasterr[128];
};

static const uint64_t lat_bounds[TK_CACHE_LAT_NBUCKETS] = TK_CACHE_LAT_BOUNDS_US;

const char *tk_cache_rc_name(tk_cache_rc_t rc)
{
    switch (rc) {
    case TK_CACHE_HIT:
        return "hit";
    case TK_CACHE_MISS:
        return "miss";
    case TK_CACHE_ERROR:
        return "error";
    case TK_CACHE_BYPASS:
        return "bypass";
    }
    return "?";
}

void tk_cache_opts_default(tk_cache_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->timeout_ms = 50;
    o->ttl_s = 300;
    o->negative_ttl_s = 10;
    o->reconnect_min_ms = 100;
    o->reconnect_max_ms = 2000;
    o->breaker_failures = 5;
    o->breaker_cooloff_ms = 1000;
}

static void set_err(tk_cache_t *c, const char *what, const char *detail)
{
    char buf[sizeof(c->lasterr)]; /* what or detail may be c->lasterr itself */

    snprintf(buf, sizeof(buf), "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
    memcpy(c->lasterr, buf, sizeof(buf));
}

/* --- circuit breaker ----------------------------------------------------------- */

/* May a command be sent now? An open breaker past its cool-off lets exactly
 * one probe through (*probe = 1) and turns half open until it resolves. */
static int admit(tk_cache_t *c, int *probe)
{
    *probe = 0;
    if (!c->ready)
        return 0;
    switch (c->brk_state) {
    case BRK_CLOSED:
        return 1;
    case BRK_OPEN:
        if (tk_now_ms() < c->brk_until)
            return 0;
        c->brk_state = BRK_HALF_OPEN;
        *probe = 1;
        return 1;
    default:
        return 0; /* half open: the probe is still out */
    }
}

static void brk_open(tk_cache_t *c)
{
    c->brk_state = BRK_OPEN;
    c->brk_until = tk_now_ms() + c->o.breaker_cooloff_ms;
    c->st.breaker_opens++;
    c->st.breaker_open = 1;
}

static void note_success(tk_cache_t *c)
{
    c->brk_failures = 0;
    c->brk_state = BRK_CLOSED;
    c->st.breaker_open = 0;
}

static void drop_conn(tk_cache_t *c, const char *why);

/* Count one failure; returns 1 if it opened the breaker. */
static int note_failure(tk_cache_t *c, int probe)
{
    c->brk_failures++;
    if ((c->brk_state == BRK_HALF_OPEN && probe) ||
        (c->brk_state == BRK_CLOSED && c->brk_failures >= c->o.breaker_failures)) {
        brk_open(c);
        return 1;
    }
    return 0;
}

/* --- connection ------------------------------------------------------------------ */

static void conn_start(tk_cache_t *c);

static void schedule_reconnect(tk_cache_t *c)
{
    struct timeval tv = {c->backoff_ms / 1000, (c->backoff_ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
    c->backoff_ms *= 2;
    if (c->backoff_ms > c->o.reconnect_max_ms)
        c->backoff_ms = c->o.reconnect_max_ms;
}

/* A connection attempt failed before it was ready. */
static void conn_failed(tk_cache_t *c)
{
    c->st.connect_failures++;
    c->ever_failed = 1;
    note_failure(c, 0);
    schedule_reconnect(c);
}

/* Forget the connection and free it (its pending callbacks run now with a
 * NULL reply: waiters get ERROR, abandoned records are freed), then schedule a
 * reconnect. Safe inside a hiredis callback: hiredis defers the free. */
static void drop_conn(tk_cache_t *c, const char *why)
{
    redisAsyncContext *ac = c->ac;
    int was_ready = c->ready;

    if (ac == NULL)
        return;
    set_err(c, why, NULL);
    c->ac = NULL;
    c->ready = 0;
    c->st.connected = 0;
    evtimer_del(c->timer);
    redisAsyncFree(ac);
    if (was_ready) {
        c->st.disconnects++;
        c->ever_failed = 1;
        schedule_reconnect(c);
    } else {
        conn_failed(c);
    }
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    tk_cache_t *c = ac->data;

    if (status == REDIS_OK || ac != c->ac)
        return;
    /* hiredis frees ac right after this callback (no disconnect callback). */
    set_err(c, "connect failed", ac->errstr);
    c->ac = NULL;
    evtimer_del(c->timer);
    conn_failed(c);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    tk_cache_t *c = ac->data;

    (void)status;
    if (ac != c->ac)
        return; /* one we dropped ourselves */
    /* hiredis already ran the pending callbacks and frees ac after this. */
    set_err(c, "connection lost", ac->err ? ac->errstr : NULL);
    c->ac = NULL;
    c->st.connected = 0;
    evtimer_del(c->timer);
    if (c->ready) {
        c->ready = 0;
        c->st.disconnects++;
        c->ever_failed = 1;
        schedule_reconnect(c);
    } else {
        conn_failed(c);
    }
}

/* Reply to AUTH or SELECT: anything but +OK fails the handshake. */
static void on_handshake(redisAsyncContext *ac, void *r, void *priv)
{
    tk_cache_t *c = priv;
    redisReply *reply = r;

    if (ac != c->ac || reply == NULL)
        return; /* being freed; the free path accounts for it */
    if (reply->type != REDIS_REPLY_STATUS) {
        set_err(c, "handshake failed",
                reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
        drop_conn(c, c->lasterr);
    }
}

/* Reply to the PING that ends the handshake: the connection is ready. */
static void on_ready(redisAsyncContext *ac, void *r, void *priv)
{
    tk_cache_t *c = priv;
    redisReply *reply = r;

    if (ac != c->ac || reply == NULL)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        char msg[96];
        snprintf(msg, sizeof(msg), "PING failed: %s", reply->str);
        drop_conn(c, msg);
        return;
    }
    evtimer_del(c->timer);
    c->ready = 1;
    c->st.connected = 1;
    c->st.connects++;
    if (c->ever_failed)
        c->st.reconnects++;
    c->ever_failed = 0;
    c->backoff_ms = c->o.reconnect_min_ms;
    c->lasterr[0] = '\0';
    note_success(c);
}

static void conn_start(tk_cache_t *c)
{
    redisAsyncContext *ac;
    struct timeval tv = {c->o.timeout_ms / 1000, (c->o.timeout_ms % 1000) * 1000};

    assert(c->ac == NULL);
    ac = c->port ? redisAsyncConnect(c->host, c->port) : redisAsyncConnectUnix(c->addr);
    if (ac == NULL) {
        set_err(c, "connect failed", "out of memory");
        conn_failed(c);
        return;
    }
    if (ac->err) {
        set_err(c, "connect failed", ac->errstr);
        redisAsyncFree(ac);
        conn_failed(c);
        return;
    }
    ac->data = c;
    if (redisLibeventAttach(ac, c->base) != REDIS_OK) {
        set_err(c, "connect failed", "libevent attach");
        redisAsyncFree(ac);
        conn_failed(c);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    c->ac = ac;
    /* The handshake is queued now and written once connect(2) completes; the
     * timer bounds connect + handshake together. */
    if (c->password && c->password[0])
        redisAsyncCommand(ac, on_handshake, c, "AUTH %s", c->password);
    if (c->o.db != 0)
        redisAsyncCommand(ac, on_handshake, c, "SELECT %d", c->o.db);
    redisAsyncCommand(ac, on_ready, c, "PING");
    evtimer_add(c->timer, &tv);
}

/* The one timer: a connect timeout while connecting, else the back-off is over. */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    tk_cache_t *c = arg;

    (void)fd;
    (void)what;
    if (c->ac != NULL) {
        if (!c->ready)
            drop_conn(c, "connect timed out");
    } else {
        conn_start(c);
    }
}

static int parse_addr(tk_cache_t *c, char *err, size_t errlen)
{
    const char *a = c->addr, *colon, *hs = a, *he;
    char *end;
    long port;

    if (a[0] == '/') {
        c->port = 0;
        return 0;
    }
    if (a[0] == '[') {
        hs = a + 1;
        he = strchr(hs, ']');
        if (he == NULL || he[1] != ':') {
            snprintf(err, errlen, "redis address \"%s\": expected [v6]:port", a);
            return -1;
        }
        colon = he + 1;
    } else {
        colon = strrchr(a, ':');
        he = colon;
    }
    if (colon == NULL || he == hs || (size_t)(he - hs) >= sizeof(c->host)) {
        snprintf(err, errlen, "redis address \"%s\": expected host:port or /socket/path", a);
        return -1;
    }
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || port < 1 || port > 65535) {
        snprintf(err, errlen, "redis address \"%s\": bad port", a);
        return -1;
    }
    memcpy(c->host, hs, (size_t)(he - hs));
    c->host[he - hs] = '\0';
    c->port = (int)port;
    return 0;
}

tk_cache_t *tk_cache_new(struct event_base *base, const tk_cache_opts_t *opts, char *err,
                         size_t errlen)
{
    tk_cache_opts_t d;
    tk_cache_t *c;

    tk_cache_opts_default(&d);
    if (opts == NULL || opts->addr == NULL || opts->addr[0] == '\0') {
        snprintf(err, errlen, "redis address is empty");
        return NULL;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->base = base;
    c->o = *opts;
    /* Fields left 0 take the defaults. */
#define DEF(f)                                                                                     \
    if (c->o.f <= 0)                                                                               \
    c->o.f = d.f
    DEF(timeout_ms);
    DEF(ttl_s);
    if (c->o.negative_ttl_s < 0) /* 0 is meaningful: no negative caching */
        c->o.negative_ttl_s = d.negative_ttl_s;
    DEF(reconnect_min_ms);
    DEF(reconnect_max_ms);
    DEF(breaker_failures);
    DEF(breaker_cooloff_ms);
#undef DEF
    if (c->o.reconnect_max_ms < c->o.reconnect_min_ms)
        c->o.reconnect_max_ms = c->o.reconnect_min_ms;
    if (c->o.db < 0) {
        snprintf(err, errlen, "redis db %d: must be >= 0", c->o.db);
        free(c);
        return NULL;
    }
    c->addr = strdup(opts->addr);
    c->password = opts->password ? strdup(opts->password) : NULL;
    c->timer = evtimer_new(base, on_timer, c);
    if (c->addr == NULL || (opts->password && c->password == NULL) || c->timer == NULL) {
        snprintf(err, errlen, "out of memory");
        tk_cache_free(c);
        return NULL;
    }
    c->o.addr = c->addr;
    c->o.password = c->password;
    if (parse_addr(c, err, errlen) < 0) {
        tk_cache_free(c);
        return NULL;
    }
    c->backoff_ms = c->o.reconnect_min_ms;
    conn_start(c);
    return c;
}

void tk_cache_free(tk_cache_t *c)
{
    if (c == NULL)
        return;
    if (c->ac) {
        redisAsyncContext *ac = c->ac;
        c->ac = NULL;
        c->ready = 0;
        redisAsyncFree(ac);
    }
    if (c->timer)
        event_free(c->timer);
    free(c->addr);
    free(c->password);
    free(c);
}

void tk_cache_stats(const tk_cache_t *c, tk_cache_stats_t *out)
{
    if (c == NULL) {
        memset(out, 0, sizeof(*out));
        return;
    }
    *out = c->st;
    out->breaker_open = c->brk_state != BRK_CLOSED;
}

int tk_cache_ready(const tk_cache_t *c)
{
    if (c == NULL || !c->ready)
        return 0;
    return c->brk_state == BRK_CLOSED || (c->brk_state == BRK_OPEN && tk_now_ms() >= c->brk_until);
}

const char *tk_cache_last_error(const tk_cache_t *c)
{
    return c ? c->lasterr : "no cache configured";
}

/* --- commands ------------------------------------------------------------------------ */

static char *dup_bytes(const char *p, size_t n)
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
}

/* Fill a waiting request from its reply (NULL: the connection went away). */
static void fill(cache_req_t *q, redisReply *r)
{
    q->rc = TK_CACHE_ERROR;
    if (r == NULL)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        set_err(q->c, "redis error", r->str);
        return;
    }
    switch (q->kind) {
    case K_GET:
        if (r->type == REDIS_REPLY_NIL) {
            q->rc = TK_CACHE_MISS;
        } else if (r->type == REDIS_REPLY_STRING) {
            q->val = dup_bytes(r->str, (size_t)r->len);
            q->len = (size_t)r->len;
            q->rc = q->val ? TK_CACHE_HIT : TK_CACHE_ERROR;
        }
        break;
    case K_SET:
        if (r->type == REDIS_REPLY_STATUS)
            q->rc = TK_CACHE_OK;
        break;
    case K_DEL:
    case K_EVAL: /* our scripts answer an integer: > 0 done, 0 not */
        if (r->type == REDIS_REPLY_INTEGER)
            q->rc = r->integer > 0 ? TK_CACHE_HIT : TK_CACHE_MISS;
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
                    it->val = dup_bytes(e->str, (size_t)e->len);
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
static tk_cache_rc_t roundtrip(tk_cache_t *c, cache_req_t *q, int probe, int argc,
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
        set_err(c, "redisAsyncCommandArgv() failed", NULL);
        q->rc = TK_CACHE_ERROR;
        q->state = REQ_DONE;
        c->st.errors++;
        note_failure(c, probe);
        return TK_CACHE_ERROR;
    }
    c->st.commands++;
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
        if (timed_out) {
            c->st.timeouts++;
            set_err(c, "command timed out", NULL);
        } else {
            c->st.errors++;
        }
        /* A breaker that opens on timeouts means the connection is stuck
         * behind unanswered commands: drop it rather than wait on it. */
        if (note_failure(c, probe) && c->abandoned > 0)
            drop_conn(c, "commands timing out");
        return TK_CACHE_ERROR;
    }
    rc = q->rc;
    if (rc == TK_CACHE_ERROR) {
        c->st.errors++;
        note_failure(c, probe);
    } else {
        note_success(c);
    }
    return rc;
}

/* Common entry checks; returns 0 when the caller may send (q allocated). */
static int begin(tk_cache_t *c, int kind, cache_req_t **qp, int *probe, tk_cache_rc_t *rc)
{
    if (c == NULL) {
        *rc = TK_CACHE_BYPASS;
        return -1;
    }
    if (tk_gt_self() == NULL) {
        set_err(c, "called outside a green thread", NULL);
        c->st.errors++;
        *rc = TK_CACHE_ERROR;
        return -1;
    }
    if (!admit(c, probe)) {
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
    if (begin(c, K_GET, &q, &probe, &rc) < 0)
        return rc;
    rc = roundtrip(c, q, probe, 2, argv, lens, &own);
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

    if (begin(c, K_SET, &q, &probe, &rc) < 0)
        return rc;
    lens[4] = (size_t)snprintf(ttl, sizeof(ttl), "%d", ttl_s);
    rc = roundtrip(c, q, probe, ttl_s > 0 ? 5 : 3, argv, lens, &own);
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

    if (begin(c, K_DEL, &q, &probe, &rc) < 0)
        return rc;
    rc = roundtrip(c, q, probe, 2, argv, lens, &own);
    if (own)
        free(q);
    return rc;
}

static void items_set(tk_cache_item_t *items, size_t n, tk_cache_rc_t rc)
{
    for (size_t i = 0; i < n; i++) {
        items[i].rc = rc;
        items[i].val = NULL;
        items[i].len = 0;
    }
}

tk_cache_rc_t tk_cache_mget(tk_cache_t *c, const char *const *keys, const size_t *keylens, size_t n,
                            tk_cache_item_t *items)
{
    const char **argv;
    size_t *lens;
    cache_req_t *q;
    tk_cache_rc_t rc;
    int probe, own;

    items_set(items, n, TK_CACHE_ERROR);
    if (n == 0)
        return TK_CACHE_OK;
    if (begin(c, K_MGET, &q, &probe, &rc) < 0) {
        items_set(items, n, rc);
        return rc;
    }
    argv = malloc((n + 1) * sizeof(*argv));
    lens = malloc((n + 1) * sizeof(*lens));
    if (argv == NULL || lens == NULL) {
        free(argv);
        free(lens);
        free(q);
        if (probe)
            c->brk_state = BRK_OPEN;
        c->st.errors++;
        return TK_CACHE_ERROR;
    }
    argv[0] = "MGET";
    lens[0] = 4;
    for (size_t i = 0; i < n; i++) {
        argv[i + 1] = keys[i];
        lens[i + 1] = keylens ? keylens[i] : strlen(keys[i]);
    }
    q->items = items;
    q->n = n;
    /* hiredis copies the arguments into its output buffer at once. */
    rc = roundtrip(c, q, probe, (int)(n + 1), argv, lens, &own);
    free(argv);
    free(lens);
    if (!own) {
        items_set(items, n, TK_CACHE_ERROR);
        return rc;
    }
    free(q);
    if (rc != TK_CACHE_OK) {
        items_set(items, n, rc);
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
        } else if ((*val = dup_bytes(fc->val, fc->len)) == NULL) {
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
    if (fc == NULL || (fc->key = dup_bytes(key, keylen)) == NULL) {
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
    if (begin(c, K_EVAL, &q, &probe, &rc) < 0)
        return rc;
    rc = roundtrip(c, q, probe, 5 + nargs, argv, lens, &own);
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
    items_set(items, 2, TK_CACHE_ERROR);
    if (begin(c, K_MGET, &q, &probe, &rc) < 0)
        return rc;
    q->items = items;
    q->n = 2;
    rc = roundtrip(c, q, probe, 3, argv, lens, &own);
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
    return rc;
}
