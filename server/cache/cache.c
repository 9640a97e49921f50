/* cache.c: the per-worker Redis client's connection: connect, handshake, back-off, breaker. */
#include "config.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "cache/cache_int.h"

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

void tk_cache_set_err(tk_cache_t *c, const char *what, const char *detail)
{
    char buf[sizeof(c->lasterr)]; /* what or detail may be c->lasterr itself */

    snprintf(buf, sizeof(buf), "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
    memcpy(c->lasterr, buf, sizeof(buf));
}

/* --- circuit breaker ----------------------------------------------------------- */

/* May a command be sent now? An open breaker past its cool-off lets exactly
 * one probe through (*probe = 1) and turns half open until it resolves. */
int tk_cache_admit(tk_cache_t *c, int *probe)
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

void tk_cache_note_success(tk_cache_t *c)
{
    c->brk_failures = 0;
    c->brk_state = BRK_CLOSED;
    c->st.breaker_open = 0;
}

/* Count one failure; returns 1 if it opened the breaker. */
int tk_cache_note_failure(tk_cache_t *c, int probe)
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
    tk_cache_note_failure(c, 0);
    schedule_reconnect(c);
}

/* Forget the connection and free it (its pending callbacks run now with a
 * NULL reply: waiters get ERROR, abandoned records are freed), then schedule a
 * reconnect. Safe inside a hiredis callback: hiredis defers the free. */
void tk_cache_drop_conn(tk_cache_t *c, const char *why)
{
    redisAsyncContext *ac = c->ac;
    int was_ready = c->ready;

    if (ac == NULL)
        return;
    tk_cache_set_err(c, why, NULL);
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
    tk_cache_set_err(c, "connect failed", ac->errstr);
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
    tk_cache_set_err(c, "connection lost", ac->err ? ac->errstr : NULL);
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
        tk_cache_set_err(c, "handshake failed",
                         reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
        tk_cache_drop_conn(c, c->lasterr);
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
        tk_cache_drop_conn(c, msg);
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
    tk_cache_note_success(c);
}

static void conn_start(tk_cache_t *c)
{
    redisAsyncContext *ac;
    struct timeval tv = {c->o.timeout_ms / 1000, (c->o.timeout_ms % 1000) * 1000};

    assert(c->ac == NULL);
    ac = c->port ? redisAsyncConnect(c->host, c->port) : redisAsyncConnectUnix(c->addr);
    if (ac == NULL) {
        tk_cache_set_err(c, "connect failed", "out of memory");
        conn_failed(c);
        return;
    }
    if (ac->err) {
        tk_cache_set_err(c, "connect failed", ac->errstr);
        redisAsyncFree(ac);
        conn_failed(c);
        return;
    }
    ac->data = c;
    if (redisLibeventAttach(ac, c->base) != REDIS_OK) {
        tk_cache_set_err(c, "connect failed", "libevent attach");
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
            tk_cache_drop_conn(c, "connect timed out");
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
