/* cache.h: the per-worker Redis client for green threads (async hiredis on libevent).
 *
 * One tk_cache_t per worker holds one async connection on the worker's event
 * loop; every green thread of that worker shares it and their commands are
 * pipelined on it. The calls below look blocking to a handler: each one "may
 * yield" (the caller parks in state TK_GT_WAIT_CACHE until the reply or the
 * timeout) and must run inside a green thread.
 *
 * The cache may fail without failing a request: a call returns
 *   TK_CACHE_BYPASS at once, without yielding, while there is no connection
 *                   (connecting, reconnecting with back-off) or while the
 *                   circuit breaker is open; the caller goes to the database;
 *   TK_CACHE_ERROR  when Redis answered with an error, the connection broke
 *                   or the command ran past timeout_ms; the caller does the same.
 * A late reply to a timed-out command is read and dropped. After
 * breaker_failures consecutive failures the breaker opens for breaker_cooloff_ms,
 * then lets one probe command through: success closes it, failure reopens it.
 * When the breaker opened on timeouts, the connection is dropped (it is stuck
 * behind unanswered commands) and re-established with back-off; a fresh
 * connection's handshake (AUTH, SELECT, PING) counts as a successful probe.
 *
 * Every function accepts c == NULL (no cache configured) and then returns
 * TK_CACHE_BYPASS, so handlers need no special case. */
#ifndef TK_CACHE_H
#define TK_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "shm/abi.h" /* TK_CACHE_LAT_*, tk_cache_stats_t */

struct event_base;

typedef enum {
    TK_CACHE_HIT = 0, /* get: the key exists; set/del: done */
    TK_CACHE_MISS,    /* get: no such key; del: the key did not exist */
    TK_CACHE_ERROR,   /* error reply, broken connection, timeout or cancellation */
    TK_CACHE_BYPASS,  /* Redis skipped: no connection or breaker open (no yield) */
} tk_cache_rc_t;
#define TK_CACHE_OK TK_CACHE_HIT

const char *tk_cache_rc_name(tk_cache_rc_t rc);

typedef struct {
    const char *addr;       /* "host:port", "[v6]:port" or a unix socket path (starts with '/') */
    const char *password;   /* NULL or "" = no AUTH */
    int db;                 /* SELECT db when != 0 */
    int timeout_ms;         /* bound on connect+handshake and on every command; default 50 */
    int ttl_s;              /* default TTL of tk_cache_fetch(); 300 */
    int negative_ttl_s;     /* TTL of a cached "not found"; 10; 0 = not cached */
    int reconnect_min_ms;   /* first back-off after a failed or lost connection; 100 */
    int reconnect_max_ms;   /* back-off doubles up to this; 2000 */
    int breaker_failures;   /* consecutive failures that open the breaker; 5 */
    int breaker_cooloff_ms; /* how long it stays open before one probe; 1000 */
    /* Sentinel mode (nsentinels > 0; addr is then not used): the master comes
     * from the Sentinels (SENTINEL get-master-addr-by-name, asked in turn, polled
     * every TK_CACHE_SENTINEL_POLL_MS and followed on +switch-master) and is
     * checked with ROLE before use. Until one is known the cache is bypassed. */
    const char *const *sentinels; /* "host:port" each (IP literals: no blocking resolve) */
    int nsentinels;
    const char *master_name;       /* NULL = "tenk" */
    const char *sentinel_password; /* NULL or "" = no AUTH to the Sentinels */
    int read_replicas;             /* 1: GET/MGET go to a healthy replica (SENTINEL replicas) */
    unsigned spread; /* picks the replica (modulo the healthy ones): the worker's index */
} tk_cache_opts_t;

#define TK_CACHE_SENTINEL_POLL_MS 1000

void tk_cache_opts_default(tk_cache_opts_t *o);

typedef struct tk_cache tk_cache_t;

/* Create the client on base and start connecting at once (non-blocking: a
 * host name other than an IP literal is resolved synchronously, so configure
 * an address). Returns NULL with a message in err on bad options. */
tk_cache_t *tk_cache_new(struct event_base *base, const tk_cache_opts_t *opts, char *err,
                         size_t errlen);
/* Close the connection and free. No green thread may be inside a call on c. */
void tk_cache_free(tk_cache_t *c);
void tk_cache_stats(const tk_cache_t *c, tk_cache_stats_t *out);
/* Where commands go: the master, the nodes read from, what the Sentinels said. */
void tk_cache_topo(const tk_cache_t *c, tk_cache_topo_t *out);
/* 1 when commands would be sent now (connected, breaker not open). */
int tk_cache_ready(const tk_cache_t *c);
/* The last connection or reply error as text ("" if none), for the log. */
const char *tk_cache_last_error(const tk_cache_t *c);

/* GET key. HIT: *val is a malloc'd copy (NUL-terminated, free() it) and
 * *vallen its length; otherwise *val is NULL. May yield. */
tk_cache_rc_t tk_cache_get(tk_cache_t *c, const char *key, size_t keylen, char **val,
                           size_t *vallen);
/* SET key val, with EX ttl_s when ttl_s > 0. OK or ERROR/BYPASS. May yield. */
tk_cache_rc_t tk_cache_set(tk_cache_t *c, const char *key, size_t keylen, const char *val,
                           size_t vallen, int ttl_s);
/* DEL key: OK if it existed, MISS if not. May yield. */
tk_cache_rc_t tk_cache_del(tk_cache_t *c, const char *key, size_t keylen);

/* One key of tk_cache_mget(). */
typedef struct {
    tk_cache_rc_t rc; /* HIT (val set), MISS, or the call's ERROR/BYPASS */
    char *val;        /* malloc'd, NUL-terminated; NULL unless HIT */
    size_t len;
} tk_cache_item_t;

/* One MGET for n keys (keylens may be NULL for NUL-terminated keys). Returns
 * OK when Redis answered (then each item is HIT or MISS), else ERROR/BYPASS
 * and every item carries that rc. Free values with tk_cache_items_free().
 * May yield. */
tk_cache_rc_t tk_cache_mget(tk_cache_t *c, const char *const *keys, const size_t *keylens, size_t n,
                            tk_cache_item_t *items);
void tk_cache_items_free(tk_cache_item_t *items, size_t n);
/* The same MGET for values that are small decimal numbers: vals[i] gets key
 * i's value parsed as it is read from the reply (no copy of it is made), or
 * -1 for a missing key or a value that is not 1 to 9 digits. Returns OK when
 * Redis answered, else ERROR/BYPASS with every vals[i] -1. May yield. */
tk_cache_rc_t tk_cache_mget_int(tk_cache_t *c, const char *const *keys, const size_t *keylens,
                                size_t n, int *vals);

/* --- single flight -----------------------------------------------------------
 *
 * Within one worker, concurrent callers of tk_cache_flight_do() for the same
 * key make ONE call of the loader: the first caller (the leader) runs it, the
 * others park (state TK_GT_WAIT_GT) until it returns, and each gets its own
 * copy of the leader's result. The entry is forgotten as soon as the leader
 * is done, so a later call loads again (it is a de-duplicator, not a cache).
 * A flight group belongs to one scheduler (one worker); no locks are needed
 * because green threads of one worker never run at the same time. */

/* Load the value for key. Returns 0 with *val (malloc'd, may be NULL for an
 * empty value) when found, 1 when not found, -1 on error. May yield. */
typedef int (*tk_cache_loader_fn)(void *arg, const char *key, size_t keylen, char **val,
                                  size_t *vallen);

typedef struct tk_cache_flight tk_cache_flight_t;

/* stats_of may be NULL; otherwise flight_loads/flight_shared are counted in
 * that client's statistics. */
tk_cache_flight_t *tk_cache_flight_new(tk_cache_t *stats_of);
/* No call may be in progress on f. */
void tk_cache_flight_free(tk_cache_flight_t *f);

/* Run fn(arg, key, ...) unless a call for key is already in progress, in which
 * case wait (until deadline_ms, tk_now_ms() based, <0 = no limit) and share
 * its result. Returns the loader's 0/1/-1; -1 also when waiting timed out or
 * was cancelled. On 0, *val and *vallen hold the caller's own malloc'd copy.
 * *shared (may be NULL) is set to 1 when the result came from another
 * caller's load. May yield. */
int tk_cache_flight_do(tk_cache_flight_t *f, const char *key, size_t keylen, tk_cache_loader_fn fn,
                       void *arg, int64_t deadline_ms, char **val, size_t *vallen, int *shared);
/* Forget the load in progress for key, if any: its callers still get its
 * result, but later callers start a new load, and tk_cache_fetch() does not
 * store the forgotten one's result (it may predate a change). Returns 1 if a
 * load was in progress. Never yields. */
int tk_cache_flight_forget(tk_cache_flight_t *f, const char *key, size_t keylen);
/* Calls for which a leader is running now (for tests and /debug). */
size_t tk_cache_flight_pending(const tk_cache_flight_t *f);

/* --- cache-aside ----------------------------------------------------------------
 *
 * tk_cache_fetch(): GET key; on a hit return it. Otherwise (miss, error or
 * bypass) load it through the flight group, so concurrent misses for the key
 * make one loader call. When Redis answered the leader's GET with a miss, the
 * leader stores the result before the others are released: found values with
 * ttl_s (<= 0: the client's ttl_s), "not found" as an empty value with the
 * client's negative_ttl_s (an empty value in Redis therefore means "not
 * found": don't cache real empty values with this). After an error or bypass
 * nothing is stored (Redis is unwell: don't wait on it twice). The store is
 * conditional: the GET also reads the key's version ("<key>#ver"), and the
 * value is stored only if no tk_cache_invalidate() of the key, in any worker
 * or server, came in between (one Lua script in Redis).
 * Returns 0 found (*val malloc'd, free() it), 1 not found, -1 error (the
 * loader failed). *hit (may be NULL) is 1 when Redis served it. c may be NULL
 * (no cache: just the flight). May yield. */
int tk_cache_fetch(tk_cache_t *c, tk_cache_flight_t *f, const char *key, size_t keylen, int ttl_s,
                   tk_cache_loader_fn fn, void *arg, char **val, size_t *vallen, int *hit);

/* Invalidate key after the database commit that changed it: forget an
 * in-flight load of it in this worker, then, in one step in Redis, DEL it and
 * increment its version key (kept an hour), so that no load in flight
 * anywhere, which may have read the old row, stores it (tk_cache_fetch()).
 * With reads from replicas, then WAIT until every healthy replica has applied
 * it (at most 3/4 of timeout_ms), so that a read after this returns does not
 * find the old value on a replica (README, "Cache consistency with replicas").
 * OK if it was cached, MISS if not, ERROR/BYPASS when Redis is unavailable
 * (then the TTL bounds staleness). May yield. */
tk_cache_rc_t tk_cache_invalidate(tk_cache_t *c, tk_cache_flight_t *f, const char *key,
                                  size_t keylen);

#endif
