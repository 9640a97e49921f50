/* cache_sentinel.c: the cache client's Sentinel side: find the master and the healthy replicas,
 * follow +switch-master, poll in case a message is missed.
 *
 * Debian's hiredis 0.14 has no Sentinel support and no async timeouts: this
 * is plain async commands (SENTINEL get-master-addr-by-name, SENTINEL replicas,
 * SUBSCRIBE +switch-master) on two connections per worker, with our own
 * timers. A Sentinel that is down, slow or answers nonsense costs one timeout
 * and the next one is asked; none of it ever fails a request: while no master
 * is known the client is untargeted and every call bypasses Redis. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "cache/cache_int.h"
#include "proc/log.h"

#define SN_MAX      8
#define SN_HOST     256
#define SN_REPLICAS 16 /* replicas looked at per answer */

typedef struct cache_sentinel {
    tk_cache_t *c;
    int n;
    char host[SN_MAX][SN_HOST];
    int port[SN_MAX];
    char *name, *password;
    int timeout_ms;

    /* queries: one round = get-master-addr-by-name (+ replicas) to one Sentinel */
    redisAsyncContext *qac; /* NULL while not connected */
    int qidx;               /* the Sentinel asked */
    int pending;            /* replies due in this round */
    int tried;              /* Sentinels that failed this round */
    int nils;               /* ... of which said "no such master" */
    struct event *qtimer;   /* the round's deadline */
    struct event *poll;     /* the next round */
    int64_t last_kick;

    /* +switch-master, subscribed on every Sentinel: the first to publish wins
     * (the others learn of a failover up to seconds later) */
    redisAsyncContext *sac[SN_MAX];
    int sub_ok[SN_MAX]; /* SUBSCRIBE acknowledged */
    int64_t sub_since[SN_MAX];
    int discovered; /* a master was found once: later changes are failovers */
} cache_sentinel_t;

static void round_start(cache_sentinel_t *sn);

/* Which Sentinel's subscription ac is, or -1. */
static int sub_index(const cache_sentinel_t *sn, const redisAsyncContext *ac)
{
    for (int i = 0; i < sn->n; i++)
        if (ac == sn->sac[i])
            return i;
    return -1;
}
static void round_fail(cache_sentinel_t *sn, const char *why, int nil);

static void poll_in(cache_sentinel_t *sn, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(sn->poll, &tv);
}

static void sn_on_connect(const redisAsyncContext *ac, int status)
{
    cache_sentinel_t *sn = ac->data;

    if (status == REDIS_OK)
        return;
    /* hiredis frees ac after this; its pending callbacks get NULL first or
     * never ran: forget it here either way. */
    int i = sub_index(sn, ac);
    if (i >= 0) {
        sn->sac[i] = NULL;
        sn->c->topo.sentinel_errors++;
    } else if (ac == sn->qac) {
        sn->qac = NULL;
        round_fail(sn, ac->errstr[0] ? ac->errstr : "connect failed", 0);
    }
}

static void sn_on_disconnect(const redisAsyncContext *ac, int status)
{
    cache_sentinel_t *sn = ac->data;

    (void)status;
    /* pending callbacks already ran with NULL and forgot ac; this is the rest */
    int i = sub_index(sn, ac);
    if (i >= 0)
        sn->sac[i] = NULL;
    if (ac == sn->qac) {
        sn->qac = NULL;
        sn->pending = 0;
        evtimer_del(sn->qtimer);
    }
}

static void sn_on_auth(redisAsyncContext *ac, void *r, void *priv)
{
    cache_sentinel_t *sn = priv;
    redisReply *reply = r;

    if (reply && reply->type == REDIS_REPLY_ERROR)
        tk_cache_log_limited(sn->c, LOG_SENTINEL, TK_LOG_WARN, "redis: Sentinel AUTH failed: %s",
                             reply->str);
    (void)ac; /* the commands after it fail too, and are handled there */
}

static redisAsyncContext *sn_connect(cache_sentinel_t *sn, int i)
{
    redisAsyncContext *ac = redisAsyncConnect(sn->host[i], sn->port[i]);

    if (ac == NULL)
        return NULL;
    if (ac->err) {
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = sn;
    if (tk_cache_ev_attach(ac, sn->c->base) != REDIS_OK) {
        redisAsyncFree(ac);
        return NULL;
    }
    redisAsyncSetConnectCallback(ac, sn_on_connect);
    redisAsyncSetDisconnectCallback(ac, sn_on_disconnect);
    if (sn->password && sn->password[0])
        redisAsyncCommand(ac, sn_on_auth, sn, "AUTH %s", sn->password);
    return ac;
}

/* --- query rounds ----------------------------------------------------------------- */

/* This Sentinel failed (down, timed out, nonsense): ask the next one now, or,
 * once each was asked this round, wait for the next poll. */
static void round_fail(cache_sentinel_t *sn, const char *why, int nil)
{
    redisAsyncContext *ac = sn->qac;
    tk_cache_t *c = sn->c;

    sn->qac = NULL; /* before the free: its callbacks then ignore it */
    sn->pending = 0;
    evtimer_del(sn->qtimer);
    if (ac)
        redisAsyncFree(ac);
    if (nil) {
        sn->nils++;
    } else {
        c->topo.sentinel_errors++;
        tk_cache_log_limited(c, LOG_SENTINEL, TK_LOG_WARN, "redis: Sentinel %s:%d: %s",
                             sn->host[sn->qidx], sn->port[sn->qidx], why);
    }
    sn->qidx = (sn->qidx + 1) % sn->n;
    if (++sn->tried < sn->n) {
        round_start(sn);
        return;
    }
    if (sn->nils > 0) {
        /* Nobody named a master: say so now and then. */
        tk_cache_log_limited(c, LOG_UNKNOWN_MASTER, TK_LOG_WARN,
                             "redis: no Sentinel knows master \"%s\": the cache is bypassed "
                             "(requests are served from PostgreSQL)",
                             sn->name);
    }
    if (sn->nils == sn->n) /* every Sentinel says the name is unknown: drop any old master */
        tk_cache_retarget(c, NULL, 0);
    sn->tried = sn->nils = 0;
}

static void round_done_one(cache_sentinel_t *sn)
{
    if (--sn->pending > 0)
        return;
    evtimer_del(sn->qtimer);
    sn->tried = sn->nils = 0;
}

static int parse_port(const char *s, size_t len)
{
    long v = 0;
    if (len == 0 || len > 5)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v >= 1 && v <= 65535 ? (int)v : -1;
}

static int host_ok(const char *s, size_t len)
{
    if (len == 0 || len >= SN_HOST)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'z') ||
              (s[i] >= 'A' && s[i] <= 'Z') || s[i] == '.' || s[i] == ':' || s[i] == '-'))
            return 0;
    return 1;
}

/* A Sentinel named host:port as the master. */
static void master_found(cache_sentinel_t *sn, const char *host, int port, const char *how)
{
    tk_cache_t *c = sn->c;
    char addr[TK_CACHE_NODE_ADDR];

    snprintf(addr, sizeof(addr), strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
    /* topo.master is the last master named (a failover is a change of it);
     * tk_cache_topo() shows "" while it is not in use */
    if (strcmp(addr, c->topo.master) != 0) {
        tk_cache_node_stats_t *old = c->node;
        if (sn->discovered) {
            c->topo.failovers++;
            TK_LOG(TK_LOG_NOTICE, "redis: master moved from %s to %s (%s)", c->topo.master, addr,
                   how);
        } else {
            TK_LOG(TK_LOG_INFO, "redis: master %s (%s)", addr, how);
        }
        if (old && old->role == TK_CACHE_ROLE_MASTER)
            old->role = TK_CACHE_ROLE_NONE;
        snprintf(c->topo.master, sizeof(c->topo.master), "%s", addr);
    }
    sn->discovered = 1;
    tk_cache_retarget(c, host, port); /* no-op when already there */
    if (c->node)
        c->node->role = TK_CACHE_ROLE_MASTER;
}

static void on_master_addr(redisAsyncContext *ac, void *r, void *priv)
{
    cache_sentinel_t *sn = priv;
    redisReply *reply = r;
    char host[SN_HOST];
    int port;

    if (ac != sn->qac)
        return;
    if (reply == NULL) {
        sn->qac = NULL; /* hiredis is freeing it */
        round_fail(sn, ac->errstr[0] ? ac->errstr : "connection lost", 0);
        return;
    }
    if (reply->type == REDIS_REPLY_NIL) {
        sn->c->topo.sentinel_queries++;
        sn->c->topo.unknown_master++;
        round_fail(sn, "unknown master name", 1);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_STRING ||
        !host_ok(reply->element[0]->str, (size_t)reply->element[0]->len) ||
        (port = parse_port(reply->element[1]->str, (size_t)reply->element[1]->len)) < 0) {
        round_fail(sn, reply->type == REDIS_REPLY_ERROR ? reply->str : "answered nonsense", 0);
        return;
    }
    sn->c->topo.sentinel_queries++;
    memcpy(host, reply->element[0]->str, (size_t)reply->element[0]->len);
    host[reply->element[0]->len] = '\0';
    master_found(sn, host, port, "Sentinel");
    round_done_one(sn);
}

/* The value of field key in a flat [k, v, k, v...] array, or NULL. */
static const redisReply *field(const redisReply *a, const char *key)
{
    for (size_t i = 0; i + 1 < a->elements; i += 2)
        if (a->element[i]->type == REDIS_REPLY_STRING && strcmp(a->element[i]->str, key) == 0 &&
            a->element[i + 1]->type == REDIS_REPLY_STRING)
            return a->element[i + 1];
    return NULL;
}

/* 1 if host a:port pa sorts before b:pb. */
static int node_before(const char *a, int pa, const char *b, int pb)
{
    int d = strcmp(a, b);
    return d < 0 || (d == 0 && pa < pb);
}

static void on_replicas(redisAsyncContext *ac, void *r, void *priv)
{
    cache_sentinel_t *sn = priv;
    tk_cache_t *c = sn->c;
    redisReply *reply = r;
    char hosts[SN_REPLICAS][SN_HOST];
    int ports[SN_REPLICAS], nh = 0;

    if (ac != sn->qac)
        return;
    if (reply == NULL) {
        sn->qac = NULL;
        round_fail(sn, ac->errstr[0] ? ac->errstr : "connection lost", 0);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY) {
        if (reply->type == REDIS_REPLY_ERROR && c->rd) /* unknown name: said by the other reply */
            tk_cache_retarget(c->rd, NULL, 0);
        if (reply->type == REDIS_REPLY_ERROR)
            round_done_one(sn);
        else
            round_fail(sn, "answered nonsense", 0);
        return;
    }
    for (size_t i = 0; i < reply->elements && nh < SN_REPLICAS; i++) {
        const redisReply *e = reply->element[i], *ip, *port, *flags, *link;
        int p;
        if (e->type != REDIS_REPLY_ARRAY)
            continue;
        ip = field(e, "ip");
        port = field(e, "port");
        flags = field(e, "flags");
        link = field(e, "master-link-status");
        if (ip == NULL || port == NULL || !host_ok(ip->str, (size_t)ip->len) ||
            (p = parse_port(port->str, (size_t)port->len)) < 0)
            continue;
        /* healthy: not down by anyone's account, and replicating */
        if (flags && (strstr(flags->str, "s_down") || strstr(flags->str, "o_down") ||
                      strstr(flags->str, "disconnected")))
            continue;
        if (link && strcmp(link->str, "ok") != 0)
            continue;
        memcpy(hosts[nh], ip->str, (size_t)ip->len);
        hosts[nh][ip->len] = '\0';
        ports[nh] = p;
        char addr[TK_CACHE_NODE_ADDR];
        snprintf(addr, sizeof(addr), strchr(hosts[nh], ':') ? "[%s]:%d" : "%s:%d", hosts[nh], p);
        tk_cache_node_stats_t *node = tk_cache_node(c, addr);
        if (node)
            node->role = TK_CACHE_ROLE_REPLICA;
        nh++;
    }
    sn->c->topo.sentinel_queries++;
    c->nreplicas = nh;
    if (c->rd) {
        if (nh == 0) {
            tk_cache_retarget(c->rd, NULL, 0); /* reads go to the master meanwhile */
        } else {
            /* The same order in every worker (Sentinels list replicas in any
             * order), then the worker's index spreads them; a replica that
             * comes back takes its share again at the next poll. */
            int pick = 0;
            unsigned rank = c->o.spread % (unsigned)nh;
            for (int i = 0; i < nh; i++) {
                unsigned below = 0;
                for (int j = 0; j < nh; j++)
                    below += node_before(hosts[j], ports[j], hosts[i], ports[i]);
                if (below == rank)
                    pick = i;
            }
            tk_cache_retarget(c->rd, hosts[pick], ports[pick]);
        }
    }
    round_done_one(sn);
}

static void round_start(cache_sentinel_t *sn)
{
    int ms = sn->timeout_ms;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

    if (sn->pending > 0)
        return;
    if (sn->qac == NULL && (sn->qac = sn_connect(sn, sn->qidx)) == NULL) {
        round_fail(sn, "cannot connect", 0);
        return;
    }
    if (redisAsyncCommand(sn->qac, on_master_addr, sn, "SENTINEL get-master-addr-by-name %s",
                          sn->name) == REDIS_OK)
        sn->pending++;
    if (sn->c->rd &&
        redisAsyncCommand(sn->qac, on_replicas, sn, "SENTINEL replicas %s", sn->name) == REDIS_OK)
        sn->pending++;
    if (sn->pending == 0) {
        round_fail(sn, "cannot send", 0);
        return;
    }
    evtimer_add(sn->qtimer, &tv);
}

static void on_qtimer(evutil_socket_t fd, short what, void *arg)
{
    cache_sentinel_t *sn = arg;

    (void)fd;
    (void)what;
    if (sn->pending > 0)
        round_fail(sn, "timed out", 0);
}

/* --- +switch-master ------------------------------------------------------------------ */

static void sub_drop(cache_sentinel_t *sn, int i)
{
    redisAsyncContext *ac = sn->sac[i];

    sn->sac[i] = NULL; /* before the free: its callbacks then ignore it */
    if (ac)
        redisAsyncFree(ac);
}

static void on_switch(redisAsyncContext *ac, void *r, void *priv)
{
    cache_sentinel_t *sn = priv;
    redisReply *reply = r;
    char name[64], oldip[SN_HOST], newip[SN_HOST];
    int oldport, newport;

    int i = sub_index(sn, ac);

    if (i < 0)
        return;
    if (reply == NULL) {
        sn->sac[i] = NULL; /* being freed; the next poll subscribes again */
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING) {
        sn->c->topo.sentinel_errors++;
        sub_drop(sn, i);
        return;
    }
    if (strcmp(reply->element[0]->str, "subscribe") == 0) {
        sn->sub_ok[i] = 1;
        return;
    }
    if (strcmp(reply->element[0]->str, "message") != 0 ||
        reply->element[2]->type != REDIS_REPLY_STRING)
        return;
    /* "<name> <old-ip> <old-port> <new-ip> <new-port>" */
    if (sscanf(reply->element[2]->str, "%63s %255s %d %255s %d", name, oldip, &oldport, newip,
               &newport) != 5 ||
        strcmp(name, sn->name) != 0)
        return;
    if (!host_ok(newip, strlen(newip)) || newport < 1 || newport > 65535) {
        sn->c->topo.sentinel_errors++;
        return;
    }
    sn->c->topo.switch_messages++;
    master_found(sn, newip, newport, "+switch-master");
    tk_cache_sentinel_kick(sn->c); /* the replicas changed too */
}

static void sub_ensure(cache_sentinel_t *sn, int i)
{
    if (sn->sac[i]) {
        /* connected but never acknowledged: a Sentinel that swallows commands */
        if (sn->sub_ok[i] || tk_now_ms() - sn->sub_since[i] < 2 * sn->timeout_ms)
            return;
        sn->c->topo.sentinel_errors++;
        sub_drop(sn, i);
    }
    sn->sub_ok[i] = 0;
    sn->sub_since[i] = tk_now_ms();
    if ((sn->sac[i] = sn_connect(sn, i)) == NULL)
        return;
    if (redisAsyncCommand(sn->sac[i], on_switch, sn, "SUBSCRIBE +switch-master") != REDIS_OK)
        sub_drop(sn, i);
}

static void on_poll(evutil_socket_t fd, short what, void *arg)
{
    cache_sentinel_t *sn = arg;

    (void)fd;
    (void)what;
    for (int i = 0; i < sn->n; i++)
        sub_ensure(sn, i);
    round_start(sn);
    poll_in(sn, TK_CACHE_SENTINEL_POLL_MS);
}

/* --- life cycle ------------------------------------------------------------------------ */

void tk_cache_sentinel_kick(tk_cache_t *c)
{
    tk_cache_t *owner = c->parent ? c->parent : c;
    cache_sentinel_t *sn = owner->sn;
    int64_t now = tk_now_ms();

    if (sn == NULL || now - sn->last_kick < TK_CACHE_SENTINEL_POLL_MS / 4)
        return; /* at most a few extra rounds a second */
    sn->last_kick = now;
    poll_in(sn, 10);
}

static int split_hostport(const char *s, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(s, ':'), *hs = s, *he;

    if (colon == NULL)
        return -1;
    he = colon;
    if (s[0] == '[') {
        hs = s + 1;
        if (colon == s || colon[-1] != ']')
            return -1;
        he = colon - 1;
    }
    if (he <= hs || (size_t)(he - hs) >= hostlen ||
        (*port = parse_port(colon + 1, strlen(colon + 1))) < 0)
        return -1;
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = '\0';
    return 0;
}

int tk_cache_sentinel_start(tk_cache_t *c, const tk_cache_opts_t *o, char *err, size_t errlen)
{
    cache_sentinel_t *sn;

    if (o->nsentinels > SN_MAX) {
        snprintf(err, errlen, "at most %d Sentinels", SN_MAX);
        return -1;
    }
    if ((sn = calloc(1, sizeof(*sn))) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    c->sn = sn;
    sn->c = c;
    sn->n = o->nsentinels;
    for (int i = 0; i < sn->n; i++)
        if (split_hostport(o->sentinels[i], sn->host[i], SN_HOST, &sn->port[i]) < 0) {
            snprintf(err, errlen, "redis.sentinel \"%s\": expected HOST:PORT", o->sentinels[i]);
            return -1;
        }
    sn->name = strdup(o->master_name && o->master_name[0] ? o->master_name : "tenk");
    sn->password = o->sentinel_password ? strdup(o->sentinel_password) : NULL;
    sn->qtimer = evtimer_new(c->base, on_qtimer, sn);
    sn->poll = evtimer_new(c->base, on_poll, sn);
    if (sn->name == NULL || (o->sentinel_password && sn->password == NULL) || sn->qtimer == NULL ||
        sn->poll == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    /* Sentinels answer from memory: allow for a busy machine, not for a dead one. */
    sn->timeout_ms = o->timeout_ms * 4 > 250 ? o->timeout_ms * 4 : 250;
    /* spread the workers over the Sentinels */
    sn->qidx = (int)(o->spread % (unsigned)sn->n);
    poll_in(sn, 0);
    return 0;
}

void tk_cache_sentinel_free(tk_cache_t *c)
{
    cache_sentinel_t *sn = c->sn;
    redisAsyncContext *ac;

    if (sn == NULL)
        return;
    c->sn = NULL;
    if (sn->poll)
        event_free(sn->poll);
    if (sn->qtimer)
        event_free(sn->qtimer);
    sn->poll = sn->qtimer = NULL;
    if ((ac = sn->qac) != NULL) {
        sn->qac = NULL;
        redisAsyncFree(ac);
    }
    for (int i = 0; i < sn->n; i++)
        if ((ac = sn->sac[i]) != NULL) {
            sn->sac[i] = NULL;
            redisAsyncFree(ac);
        }
    free(sn->name);
    free(sn->password);
    free(sn);
}
