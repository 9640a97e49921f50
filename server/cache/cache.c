/* cache.c: the per-worker Redis client's connection: connect, handshake, back-off, breaker. */
#include "config.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "cache/cache_int.h"
#include "proc/log.h"

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
    tk_cache_sentinel_kick(c); /* a lost master may mean a failover: ask at once */
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
        snprintf(msg, sizeof(msg), "%s failed: %s", c->want_master ? "ROLE" : "PING", reply->str);
        tk_cache_drop_conn(c, msg);
        return;
    }
    if (c->want_master) {
        /* A Sentinel's answer may be stale: a demoted master answers "slave". */
        int master = reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1 &&
                     reply->element[0]->type == REDIS_REPLY_STRING &&
                     strcmp(reply->element[0]->str, "master") == 0;
        if (!master) {
            c->topo.role_mismatches++;
            tk_cache_log_limited(c, LOG_ROLE, TK_LOG_WARN,
                                 "redis: %s was named master but ROLE says it is not; not "
                                 "writing to it",
                                 c->addr);
            tk_cache_set_err(c, "ROLE: not a master", c->addr);
            if (c->node)
                c->node->role = TK_CACHE_ROLE_REPLICA;
            tk_cache_retarget(c, NULL, 0);
            tk_cache_sentinel_kick(c);
            return;
        }
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
    if (tk_cache_ev_attach(ac, c->base) != REDIS_OK) {
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
    redisAsyncCommand(ac, on_ready, c, c->want_master ? "ROLE" : "PING");
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
    } else if (c->targeted) {
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

/* The options with defaults filled in; -1 on a bad one. */
static int opts_fill(tk_cache_opts_t *o, char *err, size_t errlen)
{
    tk_cache_opts_t d;

    tk_cache_opts_default(&d);
    /* Fields left 0 take the defaults. */
#define DEF(f)                                                                                     \
    if (o->f <= 0)                                                                                 \
    o->f = d.f
    DEF(timeout_ms);
    DEF(ttl_s);
    if (o->negative_ttl_s < 0) /* 0 is meaningful: no negative caching */
        o->negative_ttl_s = d.negative_ttl_s;
    DEF(reconnect_min_ms);
    DEF(reconnect_max_ms);
    DEF(breaker_failures);
    DEF(breaker_cooloff_ms);
#undef DEF
    if (o->reconnect_max_ms < o->reconnect_min_ms)
        o->reconnect_max_ms = o->reconnect_min_ms;
    if (o->db < 0) {
        snprintf(err, errlen, "redis db %d: must be >= 0", o->db);
        return -1;
    }
    return 0;
}

/* One client (a connection with its breaker and back-off), not connecting yet. */
static tk_cache_t *cache_alloc(struct event_base *base, const tk_cache_opts_t *o, char *err,
                               size_t errlen)
{
    tk_cache_t *c = calloc(1, sizeof(*c));

    if (c == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->base = base;
    c->o = *o;
    c->addr = strdup(o->addr ? o->addr : "");
    c->password = o->password ? strdup(o->password) : NULL;
    c->timer = evtimer_new(base, on_timer, c);
    if (c->addr == NULL || (o->password && c->password == NULL) || c->timer == NULL) {
        snprintf(err, errlen, "out of memory");
        tk_cache_free(c);
        return NULL;
    }
    c->o.addr = c->addr;
    c->o.password = c->password;
    /* the strings below are the owner's (tk_cache_sentinel_start copies them) */
    c->o.sentinels = NULL;
    c->o.master_name = NULL;
    c->o.sentinel_password = NULL;
    c->backoff_ms = c->o.reconnect_min_ms;
    return c;
}

tk_cache_t *tk_cache_new(struct event_base *base, const tk_cache_opts_t *opts, char *err,
                         size_t errlen)
{
    tk_cache_opts_t o;
    tk_cache_t *c;

    if (opts == NULL || (opts->nsentinels <= 0 && (opts->addr == NULL || opts->addr[0] == '\0'))) {
        snprintf(err, errlen, "redis address is empty");
        return NULL;
    }
    o = *opts;
    if (opts_fill(&o, err, errlen) < 0)
        return NULL;
    if (o.nsentinels > 0)
        o.addr = ""; /* not used: the Sentinels name the master */
    if ((c = cache_alloc(base, &o, err, errlen)) == NULL)
        return NULL;
    if (o.nsentinels > 0) {
        c->want_master = 1;
        c->topo.sentinels = (uint32_t)o.nsentinels;
        c->topo.read_replicas = o.read_replicas ? 1 : 0;
        if (o.read_replicas) {
            if ((c->rd = cache_alloc(base, &o, err, errlen)) == NULL) {
                tk_cache_free(c);
                return NULL;
            }
            c->rd->parent = c;
        }
        if (tk_cache_sentinel_start(c, &o, err, errlen) < 0) {
            tk_cache_free(c);
            return NULL;
        }
        return c;
    }
    if (parse_addr(c, err, errlen) < 0) {
        tk_cache_free(c);
        return NULL;
    }
    c->targeted = 1;
    c->node = tk_cache_node(c, c->addr);
    if (c->node)
        c->node->role = TK_CACHE_ROLE_MASTER;
    snprintf(c->topo.master, sizeof(c->topo.master), "%s", c->addr);
    conn_start(c);
    return c;
}

void tk_cache_free(tk_cache_t *c)
{
    if (c == NULL)
        return;
    tk_cache_sentinel_free(c);
    tk_cache_free(c->rd);
    c->rd = NULL;
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
    if (c->rd) { /* reads from the replica count as the cache's */
        const tk_cache_stats_t *r = &c->rd->st;
        out->hits += r->hits;
        out->misses += r->misses;
        out->errors += r->errors;
        out->timeouts += r->timeouts;
        out->commands += r->commands;
        out->late_replies += r->late_replies;
        out->inflight += r->inflight;
        out->lat_sum_us += r->lat_sum_us;
        out->lat_count += r->lat_count;
        for (int i = 0; i < TK_CACHE_LAT_NBUCKETS; i++)
            out->lat_buckets[i] += r->lat_buckets[i];
    }
}

void tk_cache_topo(const tk_cache_t *c, tk_cache_topo_t *out)
{
    const tk_cache_t *reader;

    if (c == NULL) {
        memset(out, 0, sizeof(*out));
        return;
    }
    *out = c->topo;
    if (!c->targeted)
        out->master[0] = '\0'; /* none in use: the cache is bypassed */
    reader = c->rd && c->rd->ready ? c->rd : c;
    for (int i = 0; i < TK_CACHE_MAX_NODES; i++)
        out->nodes[i].reading = reader->ready && reader->node == &c->topo.nodes[i];
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

/* --- nodes: retargeting, the node table, the reader ------------------------------- */

tk_cache_node_stats_t *tk_cache_node(tk_cache_t *owner, const char *addr)
{
    tk_cache_node_stats_t *free_slot = NULL, *victim = NULL;

    for (int i = 0; i < TK_CACHE_MAX_NODES; i++) {
        tk_cache_node_stats_t *n = &owner->topo.nodes[i];
        if (strcmp(n->addr, addr) == 0)
            return n;
        if (n->addr[0] == '\0' && free_slot == NULL)
            free_slot = n;
        /* evict the least used entry that no connection counts into now */
        if (n->addr[0] && n != owner->node && (owner->rd == NULL || n != owner->rd->node) &&
            (victim == NULL || n->commands < victim->commands))
            victim = n;
    }
    if (free_slot == NULL)
        free_slot = victim;
    if (free_slot == NULL)
        return NULL;
    memset(free_slot, 0, sizeof(*free_slot));
    snprintf(free_slot->addr, sizeof(free_slot->addr), "%s", addr);
    return free_slot;
}

int tk_cache_retarget(tk_cache_t *c, const char *host, int port)
{
    tk_cache_t *owner = c->parent ? c->parent : c;
    char addr[TK_CACHE_NODE_ADDR];
    char *a;

    if (host == NULL) {
        if (!c->targeted)
            return 0;
        c->targeted = 0;
        c->node = NULL;
        if (c->ac)
            tk_cache_drop_conn(c, "no node to use");
        evtimer_del(c->timer);
        return 1;
    }
    if (c->targeted && c->port == port && strcmp(c->host, host) == 0)
        return 0;
    if (strlen(host) >= sizeof(c->host))
        return 0;
    snprintf(addr, sizeof(addr), strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
    if ((a = strdup(addr)) == NULL)
        return 0;
    free(c->addr);
    c->addr = a;
    c->o.addr = a;
    snprintf(c->host, sizeof(c->host), "%s", host);
    c->port = port;
    c->targeted = 1;
    c->node = tk_cache_node(owner, addr);
    if (c->ac)
        tk_cache_drop_conn(c, "moving to another node");
    /* connect at once: this is a new node, not a retry of a failing one */
    evtimer_del(c->timer);
    c->backoff_ms = c->o.reconnect_min_ms;
    conn_start(c);
    return 1;
}

tk_cache_t *tk_cache_reader(tk_cache_t *c)
{
    if (c == NULL || c->rd == NULL || !tk_cache_ready(c->rd))
        return c;
    c->topo.replica_reads++;
    return c->rd;
}

int tk_cache_log_limited(tk_cache_t *owner, int cls, int level, const char *fmt, ...)
{
    int64_t now = tk_now_ms();
    char msg[256];
    va_list ap;

    if (owner->log_at[cls] != 0 && now - owner->log_at[cls] < TK_CACHE_LOG_EVERY_MS)
        return 0;
    owner->log_at[cls] = now;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    TK_LOG((tk_log_level_t)level, "%s", msg);
    return 1;
}
