/* db_int.h: what the parts of the db client share (private to server/db/). */
#ifndef TK_DB_INT_H
#define TK_DB_INT_H

#include <errno.h>
#include <event2/util.h>
#include <libpq-fe.h>
#include <stdint.h>

#include "db/db.h"
#include "runtime/scheduler.h"
#include "shm/dbview.h"

struct event;

#define TK_DB_MAX_STMTS      64
#define TK_DB_BACKOFF_MIN_MS 50
#define TK_DB_BACKOFF_MAX_MS 500  /* a restarted database is found again well within 2 s */
#define TK_DB_DRAIN_MS       2000 /* a cancelled query gets this long to finish */
#define TK_DB_STEAL_GRACE_MS 50   /* an idle connection is kept this long while others queue */
#define TK_DB_CONNECT_MS     5000 /* a connect left to the background gets this long */
#define TK_DB_TICK_MS        100  /* maintenance timer */
#define TK_DB_PROBE_MS       500  /* unreachable: how often a probe tries */
#define TK_DB_PIPE_DEPTH     32   /* queries in flight on one shared connection */
#define TK_DB_PIPE_OPEN_AT   8    /* open another when every one has this many */
#define TK_DB_PIPE_MAX       32   /* shared connections per worker (db.max_open caps) */
#define TK_DB_PIPE_STALL_MS  100  /* a query running this long: send elsewhere if possible */
#define TK_DB_PIPE_MAXP      8    /* parameters of a joinable query ... */
#define TK_DB_PIPE_PBUF      120  /* ... and their total size */
#define TK_DB_PIPE_BUCKETS   64   /* joinable queued queries, by hash */
#define TK_DB_PIPE_IDLE_MS   100  /* an unused shared connection goes back to the pool */
#define TK_DB_GONE_MS        1000 /* longest wait for a closed backend to exit */
#define TK_DB_GONE_LOGGED    8    /* closes whose wait is logged (debug), per worker */

typedef struct {
    char *sql;
    int nparams;
    unsigned flags; /* TK_DB_READ, TK_DB_JOINABLE: declared by whoever registered it */
    char name[8];   /* prepared statement name: "tk<i>" */
} tk_db_stmt_t;

/* One query sent (or to be sent) on a shared pipelined connection, or an
 * internal pipeline entry (PREPARE, Sync). Pooled: a waiter that gives up
 * leaves it behind (orphan) for the reader to free when its result comes. */
typedef struct pipe_waiter pipe_waiter_t;

typedef struct pipe_item {
    struct pipe_item *next;
    int kind;         /* PI_QUERY, PI_PREP, PI_SYNC */
    int state;        /* PI_QUEUED (worker FIFO), PI_SENT, PI_DONE */
    pipe_waiter_t *w; /* green threads waiting for it; none: dropped or orphaned */
    uint32_t hash;    /* of stmt and parameters, when they were copied (joinable) */
    int stmt, nparams;
    const char *const *values; /* own copy (pv) or the only waiter's */
    const int *lengths;
    const char *pv[TK_DB_PIPE_MAXP];
    int plens[TK_DB_PIPE_MAXP];
    char pbuf[TK_DB_PIPE_PBUF];
    int retried;
    int aborted;        /* PGRES_PIPELINE_ABORTED: an earlier query of its batch failed */
    int64_t started_ms; /* when everything sent before it had finished (0: not yet) */
    tk_db_status_t st;
    PGresult *res;
    char sqlstate[6];
} pipe_item_t;

/* One green thread waiting for a pipelined query (on its stack). */
struct pipe_waiter {
    pipe_waiter_t *next;
    tk_gt_t *gt;
    pipe_item_t *item; /* until done */
    uint64_t enq_ns;   /* queued ... */
    uint64_t sent_ns;  /* ... and sent on a shared connection (0: not yet) */
    int done;
    tk_db_status_t st;
    PGresult *res;
    char sqlstate[6];
};

enum { PI_QUERY, PI_PREP, PI_SYNC };
enum { PI_QUEUED, PI_SENT, PI_DONE };

struct tk_db_state;

struct tk_db_conn {
    struct tk_db_state *be; /* the backend it is connected to */
    PGconn *pg;
    int slot;               /* broker slot it holds */
    uint64_t created_ns;    /* for db.max_lifetime */
    uint64_t idle_since_ns; /* for db.max_idle_time */
    uint64_t prepared;      /* bit i: statement i prepared on this connection */
    int in_flight;          /* a query was sent and its results not all read */
    int broken;             /* unusable: close on release */
    int fresh;              /* reused from idle, no query run yet (may retry once) */
    int poll;               /* PostgresPollingStatusType while connecting */
    unsigned notices;       /* messages on_notice() logged */
    char sqlstate[6];
    char errmsg[160];
    struct tk_db_conn *next; /* idle list */
    /* Where a connection is says what it is: on D.idle (idle), on D.pipes
     * (shared, pipeline mode), on D.retiring (shared, takes no new queries,
     * released once its results are read), on no list (held by one green
     * thread, or being connected or drained by a background one); closed ones
     * whose backend has not exited are closing_t on D.closing. The flags left
     * are facts about one use (in_flight, broken, fresh, dirty), counters and
     * the reason it retires (shared_out), not lifecycles. */
    /* Shared (pipeline mode) connections: many green threads' queries at once. */
    int dirty;                  /* queries sent since the last Sync */
    int inflight;               /* PI_QUERY items on the list */
    int busy_g;                 /* counted as in_use (else idle) in the statistics */
    int shared_out;             /* retired because others queue in the broker */
    pipe_item_t *phead, *ptail; /* everything sent, in result order */
    struct event *rev, *wev;
    uint64_t last_ns;         /* last time a query was sent or answered */
    struct tk_db_conn *pnext; /* D.pipes or D.retiring list */
};

/* A closed connection whose backend has not exited yet. PQfinish() sends
 * Terminate and closes libpq's socket at once, but the backend process, and
 * its row in pg_stat_activity, outlive it by a moment; PostgreSQL keeps its
 * end of the socket open until the process dies, so a dup() of ours sees EOF
 * exactly when the backend is gone. Until then the slot stays held by this
 * worker (the broker counts it against db.max_open) and the connection
 * counts as open; then the slot goes back to the broker
 * (tk_broker_free_slot(): the queue's head or the free list). Waited for in
 * the event loop, never blocking it; after TK_DB_GONE_MS (or a read error)
 * we stop waiting and free the slot anyway. */
typedef struct closing {
    struct tk_db_state *be;
    struct closing *next, *prev;
    struct event *ev;
    int fd;         /* dup of the connection's socket */
    int slot;       /* broker slot to free once the backend is gone, -1: none */
    uint64_t t0_ns; /* when PQfinish() was called */
} closing_t;

/* A green thread queued in the broker, found by its entry index. */
typedef struct {
    tk_gt_t *gt;
    uint64_t ticket;
    int done; /* served: conn (hand-off of a live connection) or slot (connect) */
    tk_db_conn_t *conn;
    int slot;
} waiter_t;

/* The worker's client of one backend (the primary, or a read replica): one
 * per backend per process. Everything below is per backend: pools, queues,
 * broker, back-off. */
typedef struct tk_db_state {
    int enabled;
    int idx;              /* 0 = primary, 1.. = replica */
    const char *conninfo; /* db.primary or this db.replica */
    const char *hostaddr; /* the master's resolution of conninfo's hosts, NULL if none */
    int unnamed;          /* db.statements = unnamed: no named statements, no session state */
    struct event_base *base;
    tk_broker_sh_t *b;
    int w;
    uint32_t gen;
    const tk_conf_t *conf;
    struct event *wake_ev, *timer_ev;
    tk_db_conn_t *idle; /* LIFO: the warmest connection first */
    int nidle;
    int64_t down_until_ms; /* database unreachable: fail fast until then */
    int64_t skip_until_ms; /* a replica whose query failed: reads skip it until then */
    /* queries failed in a row (timed out, or no connection within
     * db.acquire_timeout), none answered since: with a lost link the open
     * connections hang (no error, no reset) until db.query_timeout, long
     * before a new connect fails; /health counts this as unreachable. Any
     * answered query resets it, so a busy but working database never counts. */
    unsigned fails_in_row;
    /* while unreachable, a probe (connect + SELECT 1) every
     * TK_DB_PROBE_MS: a host its load balancer took out gets no request
     * that would find the database back */
    int probing;
    int64_t probe_next_ms;
    int backoff_ms;
    uint64_t nconnects, connect_ns; /* for the exit summary */
    uint64_t npiped, nsyncs;        /* pipelined queries, and the batches they went in */
    waiter_t *waiters[TK_BROKER_MAX_WAITERS];
    /* pipelined shared connections */
    tk_db_conn_t *pipes;        /* connections in pipeline mode taking queries */
    tk_db_conn_t *retiring;     /* ... and those taking no more, released once empty */
    int npipes;                 /* on both lists */
    int opening;                /* a green thread is getting one more */
    pipe_item_t *qhead, *qtail; /* queries waiting for room, FIFO */
    int qlen;
    pipe_item_t *ifree; /* item pool */
    struct event *flush_ev;
    int flush_pending;
    pipe_item_t *joinable[TK_DB_PIPE_BUCKETS]; /* queued, not sent yet: may be joined */
    uint64_t njoined;
    uint64_t nretried; /* queries run again (declared reads only) */
    /* connections closed whose backend has not exited yet */
    closing_t *closing;
    int nclosing;
    uint64_t ngone, gone_ns, gone_max_ns, ngone_giveup; /* for the exit summary */
} tk_db_state_t;

/* Backend 0 is the primary. tk_db_cur is the one the code below works on
 * (the D of the moved code): every entry point (public function, event
 * callback, green thread's main) sets it, and every park restores it
 * (tk_db_park(), tk_db_wait_fd()), since other green threads run meanwhile. */
#define TK_DB_MAX_BACKENDS TK_DBVIEW_MAX
extern tk_db_state_t tk_db_be[TK_DB_MAX_BACKENDS];
extern tk_db_state_t *tk_db_cur;
extern int tk_db_nbe;              /* backends set up */
extern tk_dbview_sh_t *tk_db_view; /* shared view (NULL: primary only) */

static inline tk_db_state_t *tk_db_use(tk_db_state_t *s)
{
    tk_db_state_t *old = tk_db_cur;
    tk_db_cur = s;
    return old;
}
static inline int tk_db_park(tk_gt_state_t why, int64_t deadline_ms)
{
    tk_db_state_t *s = tk_db_cur;
    int r = tk_gt_park(why, deadline_ms);
    int e = errno;
    tk_db_cur = s;
    errno = e;
    return r;
}
static inline int tk_db_wait_fd(int fd, short events, tk_gt_state_t why, int64_t deadline_ms)
{
    tk_db_state_t *s = tk_db_cur;
    int r = tk_gt_wait_fd(fd, events, why, deadline_ms);
    int e = errno;
    tk_db_cur = s;
    errno = e;
    return r;
}

/* A backend is unreachable from this worker while its last connect failed (back-off running)
 * or its last three queries failed: one slow statement or one full queue is not an outage. */
static inline int tk_db_be_reachable(const tk_db_state_t *s)
{
    return !s->enabled || (s->backoff_ms == 0 && s->fails_in_row < 3);
}

/* Keep the current backend's fails_in_row (see above) from a query's outcome. */
static inline tk_db_status_t tk_db_note_outcome(tk_db_status_t st)
{
    if (st == TK_DB_OK)
        tk_db_cur->fails_in_row = 0;
    else if (st == TK_DB_TIMEOUT || st == TK_DB_UNAVAILABLE)
        tk_db_cur->fails_in_row++;
    return st;
}

extern tk_db_stmt_t tk_db_stmts[TK_DB_MAX_STMTS];
extern int tk_db_nstmts;

/* Short names from when the client was one file: the moved code reads as before. */
#define D        (*tk_db_cur)
#define g_stmts  tk_db_stmts
#define g_nstmts tk_db_nstmts

#define STAT(field, d) TK_BROKER_STAT(D.b, D.w, field, (d))

/* conn.c: a connection's life */
void tk_db_dispose(tk_broker_rel_t r, int entry, int wake, tk_db_conn_t *c, int slot);
void tk_db_conn_close(tk_db_conn_t *c, int free_slot);
void tk_db_conn_discard(tk_db_conn_t *c);
void tk_db_slot_discard(int slot);
tk_db_status_t tk_db_error_status(const char *sqlstate);
void tk_db_note_error(tk_db_conn_t *c, const PGresult *r);
tk_db_conn_t *tk_db_conn_open(int slot, int64_t deadline_ms, tk_db_status_t *st, int *kept);
int tk_db_idle_alive(tk_db_conn_t *c);
int tk_db_expired(const tk_db_conn_t *c, uint64_t now, int *why_lifetime);
void tk_db_send_cancel(tk_db_conn_t *c);
int tk_db_reconnect_in_place(tk_db_conn_t *c, int64_t deadline);
void tk_db_give_up_idle(void);
void tk_db_closing_drain(void);

/* exclusive.c: tk_db_acquire(); *waited (if not NULL) set to 1 when it queued
 * in the broker (and counted the wait). */
tk_db_conn_t *tk_db_acquire_counted(tk_db_status_t *st, int *waited);

/* route.c: where a query goes, the request's read-your-writes state */
/* The backend for a declared read of this request: a healthy replica, the
 * least loaded, that has replayed the request's LSN; else the primary. */
tk_db_state_t *tk_db_route_read(void);
/* A primary-preferring read found the primary lost: a usable replica (never
 * after a write in the request; honours its LSN), or NULL. */
tk_db_state_t *tk_db_route_read_fallback(void);
/* This request wrote (or holds a connection of its own): its reads go to the primary. */
void tk_db_route_wrote(void);
/* Remember a replica failed at the connection level: skip it for a moment. */
void tk_db_route_failed(tk_db_state_t *s);
/* Counting queries in flight per backend in the shared view. */
void tk_db_route_inflight(const tk_db_state_t *s, int delta);
/* probe.c: the lag probe (the lease holder only), from the maintenance timer */
void tk_db_probe_tick(void);
void tk_db_probe_fini(void);

/* pipeline.c: the shared connections */
pipe_item_t *tk_db_item_get(void);
void tk_db_item_put(pipe_item_t *it);
void tk_db_pipe_dispatch(void);
void tk_db_pipe_on_flush(evutil_socket_t fd, short what, void *arg);
int tk_db_pipe_grow(int64_t deadline, tk_db_status_t *st, int *waited);
int tk_db_pipe_want_more(void);
void tk_db_pipe_share(void);
void tk_db_pipe_retire(tk_db_conn_t *c);
void tk_db_pipe_cancel_item(const pipe_item_t *it);

/* pipe_query.c: declared reads on the shared connections */
tk_db_status_t tk_db_pipe_query(int stmt, int nparams, const char *const *values,
                                const int *lengths, PGresult **res, char sqlstate[6]);
tk_db_status_t tk_db_pipe_query_many(int stmt, int n, int nparams, const char *const *values,
                                     PGresult **res);

#endif
