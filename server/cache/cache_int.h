/* cache_int.h: what the parts of the Redis client share (private to server/cache/). */
#ifndef TK_CACHE_INT_H
#define TK_CACHE_INT_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/async.h>

#include "cache/cache.h"
#include "runtime/scheduler.h"

/* The breaker's three states. */
enum { BRK_CLOSED, BRK_OPEN, BRK_HALF_OPEN };

/* Who owns a request record: while WAITING, the parked caller (the reply
 * callback fills it and wakes the caller, who frees it); once ABANDONED (the
 * caller timed out or was cancelled and has returned), hiredis' callback,
 * which frees it without touching the caller or its buffers. */
enum { REQ_WAITING, REQ_DONE, REQ_ABANDONED };
enum { K_GET, K_SET, K_DEL, K_MGET, K_MGET_INT, K_EVAL, K_WAIT };

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
    int *ints;              /* K_MGET_INT: the caller's array, same rule */
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

    /* Sentinel mode and reads from replicas (cache_sentinel.c). */
    int targeted;                /* 0: no node to connect to (none known yet, or refused) */
    int want_master;             /* check ROLE in the handshake: only a master will do */
    tk_cache_t *parent;          /* a replica reader: the client it reads for */
    tk_cache_t *rd;              /* the replica reader; NULL unless read_replicas */
    tk_cache_node_stats_t *node; /* where this connection's commands are counted */
    struct cache_sentinel *sn;   /* NULL without Sentinels */
    int nreplicas;               /* healthy replicas last named (WAIT asks for them) */
    tk_cache_topo_t topo;        /* the owner's view; nodes[] is the node table */
    int64_t log_at[4];           /* tk_cache_log_limited(): last line per class */
};

/* Log classes of tk_cache_log_limited(). */
enum { LOG_SENTINEL, LOG_UNKNOWN_MASTER, LOG_ROLE, LOG_SWITCH };
#define TK_CACHE_LOG_EVERY_MS 10000
/* One log line per class every TK_CACHE_LOG_EVERY_MS per worker (a dead
 * Sentinel must not fill the log); returns 1 if it was written. */
int tk_cache_log_limited(tk_cache_t *owner, int cls, int level, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* cache.c: errors, breaker, connection. */
void tk_cache_set_err(tk_cache_t *c, const char *what, const char *detail);
int tk_cache_admit(tk_cache_t *c, int *probe);
void tk_cache_note_success(tk_cache_t *c);
int tk_cache_note_failure(tk_cache_t *c, int probe);
void tk_cache_drop_conn(tk_cache_t *c, const char *why);

/* cache.c: move a client to another node (host NULL: to none, the cache is then
 * bypassed). Returns 1 if that changed its node. */
int tk_cache_retarget(tk_cache_t *c, const char *host, int port);
/* The node table entry for addr, added if new (may evict an unused one). */
tk_cache_node_stats_t *tk_cache_node(tk_cache_t *owner, const char *addr);
/* The client GET/MGET should use: the replica reader when it is ready, else c. */
tk_cache_t *tk_cache_reader(tk_cache_t *c);

/* cache_ev.c: hiredis' event hooks, writes batched per loop pass (for hiredis' own
 * redisLibeventAttach()). REDIS_OK or REDIS_ERR. */
struct event_base;
int tk_cache_ev_attach(redisAsyncContext *ac, struct event_base *base);

/* cache_sentinel.c: discovery and the +switch-master subscription. */
int tk_cache_sentinel_start(tk_cache_t *c, const tk_cache_opts_t *o, char *err, size_t errlen);
void tk_cache_sentinel_free(tk_cache_t *c);
/* Ask the Sentinels again soon (a node refused its role, a connection was lost). */
void tk_cache_sentinel_kick(tk_cache_t *c);

/* cache_cmd.c: one command's round trip, for cache_aside.c. */
char *tk_cache_dup_bytes(const char *p, size_t n);
int tk_cache_begin(tk_cache_t *c, int kind, cache_req_t **qp, int *probe, tk_cache_rc_t *rc);
tk_cache_rc_t tk_cache_roundtrip(tk_cache_t *c, cache_req_t *q, int probe, int argc,
                                 const char **argv, const size_t *argvlen, int *own);
void tk_cache_items_set(tk_cache_item_t *items, size_t n, tk_cache_rc_t rc);

#endif
