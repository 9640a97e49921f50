/* db.c: PostgreSQL through asynchronous libpq on green threads, within the broker's budget. */
#include "config.h"

#include "db/db.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proc/log.h"
#include "runtime/scheduler.h"

#define TK_DB_MAX_STMTS      64
#define TK_DB_BACKOFF_MIN_MS 50
#define TK_DB_BACKOFF_MAX_MS 500  /* a restarted database is found again well within 2 s */
#define TK_DB_DRAIN_MS       2000 /* a cancelled query gets this long to finish */
#define TK_DB_STEAL_GRACE_MS 50   /* an idle connection is kept this long while others queue */
#define TK_DB_CONNECT_MS     5000 /* a connect left to the background gets this long */
#define TK_DB_TICK_MS        100  /* maintenance timer */
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
} stmt_t;

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

struct tk_db_conn {
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
    /* Shared (pipeline mode) connections: many green threads' queries at once. */
    int pipe;                   /* in pipeline mode, on D.pipes */
    int retiring;               /* takes no new queries; released once empty */
    int dirty;                  /* queries sent since the last Sync */
    int inflight;               /* PI_QUERY items on the list */
    int busy_g;                 /* counted as in_use (else idle) in the statistics */
    int shared_out;             /* retired because others queue in the broker */
    pipe_item_t *phead, *ptail; /* everything sent, in result order */
    struct event *rev, *wev;
    uint64_t last_ns;         /* last time a query was sent or answered */
    struct tk_db_conn *pnext; /* D.pipes list */
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

static struct {
    int enabled;
    struct event_base *base;
    tk_broker_sh_t *b;
    int w;
    uint32_t gen;
    const tk_conf_t *conf;
    struct event *wake_ev, *timer_ev;
    tk_db_conn_t *idle; /* LIFO: the warmest connection first */
    int nidle;
    int64_t down_until_ms; /* database unreachable: fail fast until then */
    int backoff_ms;
    uint64_t nconnects, connect_ns; /* for the exit summary */
    uint64_t npiped, nsyncs;        /* pipelined queries, and the batches they went in */
    waiter_t *waiters[TK_BROKER_MAX_WAITERS];
    /* pipelined shared connections */
    tk_db_conn_t *pipes; /* connections in pipeline mode */
    int npipes;
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
} D;

static stmt_t g_stmts[TK_DB_MAX_STMTS];
static int g_nstmts;

static void hand_local(int entry, tk_db_conn_t *c, int slot);
static void conn_close(tk_db_conn_t *c, int free_slot);
static void slot_discard(int slot);

#define STAT(field, d) TK_BROKER_STAT(D.b, D.w, field, (d))

/* --- statements ------------------------------------------------------------------------- */

int tk_db_stmt(const char *sql, int nparams, unsigned flags)
{
    if ((flags & TK_DB_JOINABLE) && !(flags & TK_DB_READ))
        return -1;
    for (int i = 0; i < g_nstmts; i++)
        if (strcmp(g_stmts[i].sql, sql) == 0 && g_stmts[i].flags == flags)
            return i;
    if (g_nstmts >= TK_DB_MAX_STMTS)
        return -1;
    g_stmts[g_nstmts].sql = strdup(sql);
    if (g_stmts[g_nstmts].sql == NULL)
        return -1;
    g_stmts[g_nstmts].nparams = nparams;
    snprintf(g_stmts[g_nstmts].name, sizeof(g_stmts[g_nstmts].name), "tk%d", g_nstmts);
    g_stmts[g_nstmts].flags = flags;
    return g_nstmts++;
}

const char *tk_db_sqlstate(const tk_db_conn_t *c)
{
    return c ? c->sqlstate : "";
}

const char *tk_db_errmsg(const tk_db_conn_t *c)
{
    return c ? c->errmsg : "";
}

const char *tk_db_status_name(tk_db_status_t st)
{
    static const char *names[] = {
        "ok",        "database unavailable",   "database timeout", "database error",
        "cancelled", "database not configured"};
    return (unsigned)st < sizeof(names) / sizeof(names[0]) ? names[st] : "?";
}

/* --- connections ------------------------------------------------------------------------- */

/* What the broker said about a slot or connection we gave up. */
static void dispose(tk_broker_rel_t r, int entry, int wake, tk_db_conn_t *c, int slot)
{
    switch (r) {
    case TK_BROKER_KEEP_IDLE:
        c->next = D.idle;
        D.idle = c;
        D.nidle++;
        c->idle_since_ns = tk_now_ns();
        STAT(idle, 1);
        break;
    case TK_BROKER_CLOSE_IDLE:
        /* the slot is still ours: freed once the backend is gone */
        STAT(max_idle_closed, 1);
        conn_close(c, 1);
        break;
    case TK_BROKER_CLOSE_MOVE:
        /* for another worker's waiter: it gets the slot (TO_REMOTE from
         * tk_broker_free_slot()) once this backend is gone */
        conn_close(c, 1);
        break;
    case TK_BROKER_FREED:
        break;
    case TK_BROKER_TO_LOCAL:
        hand_local(entry, c, slot);
        break;
    case TK_BROKER_TO_REMOTE:
        /* only a bare slot: tk_broker_release() never grants a live one */
        STAT(handoffs_remote, 1);
        tk_broker_wake(wake);
        break;
    }
}

/* The backend of a closed connection is gone (or we stopped waiting for
 * it): the connection no longer counts, and its slot goes back. */
static void closing_done(closing_t *k, const char *how)
{
    uint64_t ns = tk_now_ns() - k->t0_ns;
    if (k->prev)
        k->prev->next = k->next;
    else
        D.closing = k->next;
    if (k->next)
        k->next->prev = k->prev;
    D.nclosing--;
    if (k->ev)
        event_free(k->ev);
    close(k->fd);
    if (how == NULL) {
        D.ngone++;
        D.gone_ns += ns;
        if (ns > D.gone_max_ns)
            D.gone_max_ns = ns;
        if (D.ngone <= TK_DB_GONE_LOGGED)
            TK_LOG(TK_LOG_DEBUG, "db: backend gone %llu us after PQfinish()",
                   (unsigned long long)(ns / 1000u));
    } else {
        D.ngone_giveup++;
        TK_LOG(TK_LOG_DEBUG, "db: stopped waiting for a closed backend after %llu us: %s",
               (unsigned long long)(ns / 1000u), how);
    }
    STAT(open, -1);
    int slot = k->slot;
    free(k);
    if (slot >= 0)
        slot_discard(slot);
}

/* Read what is left on a closed connection's socket until EOF: 0 EOF, 1
 * not yet, -1 error (errno). */
static int closing_read(int fd)
{
    char buf[512];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n == 0)
            return 0;
        if (n > 0)
            continue; /* a late message of the backend's: not the end yet */
        if (errno == EINTR)
            continue;
        return errno == EAGAIN || errno == EWOULDBLOCK ? 1 : -1;
    }
}

static void on_closing(evutil_socket_t fd, short what, void *arg)
{
    closing_t *k = arg;
    (void)fd;
    if (what & EV_TIMEOUT) {
        closing_done(k, "timeout");
        return;
    }
    int r = closing_read(k->fd);
    if (r == 0) {
        closing_done(k, NULL);
    } else if (r < 0) {
        closing_done(k, strerror(errno));
    } else {
        /* EV_READ without EOF (a late message): wait again, within the bound */
        uint64_t spent = tk_now_ns() - k->t0_ns, bound = (uint64_t)TK_DB_GONE_MS * 1000000u;
        uint64_t left = spent < bound ? bound - spent : 0;
        struct timeval tv = {(time_t)(left / 1000000000u),
                             (suseconds_t)(left % 1000000000u / 1000u)};
        if (left == 0 || event_add(k->ev, &tv) != 0)
            closing_done(k, "timeout");
    }
}

/* PQfinish(pg); once its backend has exited, free slot (if >= 0) and count
 * the connection off. pg NULL: nothing to wait for. */
static void pg_close(PGconn *pg, int slot)
{
    int fd = -1;
    if (pg && PQsocket(pg) >= 0)
        fd = fcntl(PQsocket(pg), F_DUPFD_CLOEXEC, 0);
    if (pg)
        PQfinish(pg);
    closing_t *k = fd >= 0 ? calloc(1, sizeof(*k)) : NULL;
    if (k) {
        k->fd = fd;
        k->slot = slot;
        k->t0_ns = tk_now_ns();
        k->next = D.closing;
        if (D.closing)
            D.closing->prev = k;
        D.closing = k;
        D.nclosing++;
        /* usually already there: the backend exits within a millisecond or so */
        int r = closing_read(fd);
        if (r <= 0) {
            closing_done(k, r == 0 ? NULL : strerror(errno));
            return;
        }
        struct timeval tv = {TK_DB_GONE_MS / 1000, (TK_DB_GONE_MS % 1000) * 1000};
        k->ev = D.base ? event_new(D.base, fd, EV_READ, on_closing, k) : NULL;
        if (k->ev == NULL || event_add(k->ev, &tv) != 0)
            closing_done(k, "no event");
        return;
    }
    if (fd >= 0)
        close(fd);
    STAT(open, -1);
    if (slot >= 0)
        slot_discard(slot);
}

/* Close the libpq side of c and free it. free_slot: its slot goes back to
 * the broker once the backend has exited (else the slot is the caller's). */
static void conn_close(tk_db_conn_t *c, int free_slot)
{
    PGconn *pg = c->pg;
    int slot = free_slot ? c->slot : -1;
    c->pg = NULL;
    pg_close(pg, slot); /* (c is still there for libpq's notice receiver) */
    free(c);
}

/* Close c and give its slot back (to the queue's head if anyone waits) once
 * its backend has exited, so the cap holds in pg_stat_activity too. */
static void conn_discard(tk_db_conn_t *c)
{
    conn_close(c, 1);
}

/* A slot with no connection that nobody here wants any more. */
static void slot_discard(int slot)
{
    int entry, wake;
    tk_broker_rel_t r = tk_broker_free_slot(D.b, D.w, slot, &entry, &wake);
    dispose(r, entry, wake, NULL, slot);
}

/* Serve a waiter of this worker: with a live connection (c) or a bare slot. */
static void hand_local(int entry, tk_db_conn_t *c, int slot)
{
    waiter_t *wt = D.waiters[entry];
    if (wt == NULL) {
        /* Nobody (the waiter went away): pass it on again. */
        if (c) {
            STAT(in_use, 1); /* tk_db_release() counts it off once more */
            tk_db_release(c);
        } else
            slot_discard(slot);
        return;
    }
    STAT(handoffs_local, 1);
    D.waiters[entry] = NULL;
    wt->done = 1;
    wt->conn = c;
    wt->slot = slot;
    tk_gt_unpark(wt->gt);
}

/* The status for a statement that failed with sqlstate. Operator intervention
 * (class 57: the server is shutting down, crashed, or not yet accepting) and
 * connection exceptions (class 08) say the database is unavailable, not that
 * the statement is wrong: the client gets 503, as for a server that is down. */
static tk_db_status_t error_status(const char *sqlstate)
{
    if (sqlstate && (strncmp(sqlstate, "57", 2) == 0 || strncmp(sqlstate, "08", 2) == 0))
        return TK_DB_UNAVAILABLE;
    return TK_DB_ERROR;
}

static void note_error(tk_db_conn_t *c, const PGresult *r)
{
    const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = r ? PQresultErrorMessage(r) : PQerrorMessage(c->pg);
    snprintf(c->sqlstate, sizeof(c->sqlstate), "%s", st ? st : "");
    snprintf(c->errmsg, sizeof(c->errmsg), "%s", msg ? msg : "");
    size_t n = strlen(c->errmsg);
    while (n > 0 && (c->errmsg[n - 1] == '\n' || c->errmsg[n - 1] == ' '))
        c->errmsg[--n] = '\0';
}

/* A failed connection attempt: count it, back off (the database is
 * probably down: later requests fail fast instead of piling up on it). */
static void connect_failed(tk_db_conn_t *c)
{
    STAT(connect_errors, 1);
    if (D.backoff_ms == 0) {
        char msg[200];
        snprintf(msg, sizeof(msg), "%s", c->pg ? PQerrorMessage(c->pg) : "out of memory");
        for (char *p = msg; *p; p++)
            if (*p == '\n')
                *p = ' ';
        TK_LOG(TK_LOG_WARN, "db: connect failed: %s", msg);
    }
    D.backoff_ms = D.backoff_ms ? D.backoff_ms * 2 : TK_DB_BACKOFF_MIN_MS;
    if (D.backoff_ms > TK_DB_BACKOFF_MAX_MS)
        D.backoff_ms = TK_DB_BACKOFF_MAX_MS;
    D.down_until_ms = tk_now_ms() + D.backoff_ms;
}

/* Drive PQconnectPoll() from c->poll until done: 0 connected, -1 failed
 * (libpq said so), -2 our deadline passed, -3 cancelled. */
static int connect_poll(tk_db_conn_t *c, int64_t deadline_ms)
{
    while (c->poll != PGRES_POLLING_OK) {
        if (c->poll == PGRES_POLLING_FAILED)
            return -1;
        short ev = c->poll == PGRES_POLLING_READING ? EV_READ : EV_WRITE;
        if (tk_gt_wait_fd(PQsocket(c->pg), ev, TK_GT_WAIT_DB, deadline_ms) != 0)
            return errno == ECANCELED ? -3 : -2;
        c->poll = PQconnectPoll(c->pg);
    }
    if (PQsetnonblocking(c->pg, 1) != 0)
        return -1;
    D.nconnects++;
    D.connect_ns += tk_now_ns() - c->created_ns;
    D.backoff_ms = 0;
    D.down_until_ms = 0;
    return 0;
}

/* Green thread: finish a connection its requester stopped waiting for, then
 * release it like any other (it serves the next waiter or idles). */
static void finish_main(void *arg)
{
    tk_db_conn_t *c = arg;
    int r = connect_poll(c, tk_now_ms() + TK_DB_CONNECT_MS);
    if (r != 0) {
        if (r == -1)
            connect_failed(c);
        conn_discard(c);
        return;
    }
    STAT(in_use, 1); /* tk_db_release() counts it off */
    tk_db_release(c);
}

/* libpq's notices: the server's NOTICE/WARNING messages, and errors that
 * arrive while no query runs (e.g. "FATAL: terminating connection due to
 * administrator command" when the backend is killed): the default receiver
 * prints them to stderr, bypassing the log; they go through TK_LOG instead,
 * one line each, at a level from their severity. */
static void on_notice(void *arg, const PGresult *r)
{
    tk_db_conn_t *c = arg;
    c->notices++;
    const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorMessage(r);
    char line[400];
    tk_log_level_t lv = TK_LOG_INFO; /* LOG, INFO */
    if (sev && strncmp(sev, "DEBUG", 5) == 0)
        lv = TK_LOG_DEBUG;
    else if (sev && strcmp(sev, "WARNING") == 0)
        lv = TK_LOG_WARN;
    else if (sev &&
             (strcmp(sev, "ERROR") == 0 || strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0))
        lv = TK_LOG_ERR;
    else if (sev && strcmp(sev, "NOTICE") == 0)
        lv = TK_LOG_NOTICE;
    else if (sev == NULL)
        lv = TK_LOG_WARN; /* libpq's own ("message type 0x.. arrived while idle") */
    snprintf(line, sizeof(line), "%s", msg ? msg : "");
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    size_t n = strlen(line);
    while (n > 0 && line[n - 1] == ' ')
        line[--n] = '\0';
    TK_LOG(lv, "db: postgres: %s", line);
}

/* Open a connection on slot, parking on its socket until deadline_ms. NULL
 * on failure: then the slot is still the caller's, unless *kept says a
 * background green thread took it over to finish a slow connect (the
 * requester's deadline passed, not the database's: the work is not wasted).
 * kept NULL: never hand over. */
static tk_db_conn_t *conn_open(int slot, int64_t deadline_ms, tk_db_status_t *st, int *kept)
{
    int64_t now = tk_now_ms();
    if (kept)
        *kept = 0;
    if (now < D.down_until_ms) {
        *st = TK_DB_UNAVAILABLE; /* known down: don't hammer it, fail fast */
        return NULL;
    }
    tk_db_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        *st = TK_DB_UNAVAILABLE;
        return NULL;
    }
    c->slot = slot;
    c->created_ns = tk_now_ns();
    STAT(open, 1);
    /* PQconnectStart does not block on the network, but resolves host names
     * synchronously: the master resolved them (tk_resolve_conf) and hostaddr,
     * placed after the conninfo, hands libpq the addresses. */
    /* Generic plans for our prepared statements: with the default
     * plan_cache_mode, a statement like "... WHERE id > $1 ORDER BY id
     * LIMIT $2" is re-planned on every execution (the generic plan's
     * estimate looks worse than the custom plans'), which more than halves
     * the database's throughput (pgbench: 7.9k -> 17.5k per second here).
     * Placed before the conninfo, so an "options" there overrides it. */
    static const char *const kw[] = {"options", "dbname", "hostaddr", NULL};
    const char *const val[] = {"-c plan_cache_mode=force_generic_plan", D.conf->db_conninfo,
                               D.conf->db_hostaddr[0] ? D.conf->db_hostaddr : NULL, NULL};
    c->pg = PQconnectStartParams(kw, val, 1);
    c->poll = PGRES_POLLING_WRITING;
    if (c->pg)
        PQsetNoticeReceiver(c->pg, on_notice, c);
    if (c->pg == NULL || PQstatus(c->pg) == CONNECTION_BAD) {
        connect_failed(c);
        conn_close(c, 0); /* no socket, or nothing on the server: nothing to wait for */
        *st = TK_DB_UNAVAILABLE;
        return NULL;
    }
    int r = connect_poll(c, deadline_ms);
    if (r == 0)
        return c;
    *st = r == -3 ? TK_DB_CANCELLED : TK_DB_UNAVAILABLE;
    if (r == -1) {
        connect_failed(c);
    } else if (kept && tk_gt_spawn(tk_sched_current(), "db-connect", finish_main, c) != NULL) {
        *kept = 1;
        return NULL;
    }
    if (kept) {
        /* a backend may have started: the slot goes once it is gone */
        *kept = 1;
        conn_close(c, 1);
        return NULL;
    }
    conn_close(c, 0);
    return NULL;
}

/* Whether an idle connection is still alive: one non-blocking read (EAGAIN
 * normally) finds a backend the server ended while it sat idle; its FATAL
 * message is parsed (PQisBusy()) and goes to on_notice(), and a second read
 * then sees the end of the stream. A dead one is not handed out. */
static int idle_alive(tk_db_conn_t *c)
{
    for (int i = 0; i < 2; i++) {
        if (PQstatus(c->pg) != CONNECTION_OK || !PQconsumeInput(c->pg))
            return 0;
        unsigned before = c->notices;
        (void)PQisBusy(c->pg);
        if (c->notices == before)
            break;
    }
    return PQstatus(c->pg) == CONNECTION_OK;
}

static int expired(const tk_db_conn_t *c, uint64_t now, int *why_lifetime)
{
    *why_lifetime = 0;
    if (D.conf->db_max_lifetime_ms > 0 &&
        now - c->created_ns > (uint64_t)D.conf->db_max_lifetime_ms * 1000000u) {
        *why_lifetime = 1;
        return 1;
    }
    return 0;
}

/* tk_db_acquire(); *waited (if not NULL) set to 1 when it queued in the
 * broker (and counted the wait). */
static tk_db_conn_t *acquire(tk_db_status_t *st, int *waited)
{
    int64_t deadline = tk_now_ms() + D.conf->db_acquire_timeout_ms;
    int slot = -1, entry, wake;
    uint64_t ticket;

    if (!D.enabled) {
        *st = TK_DB_DISABLED;
        return NULL;
    }
    /* 1. An idle connection of our own. */
    while (D.idle) {
        tk_db_conn_t *c = D.idle;
        int lt;
        D.idle = c->next;
        D.nidle--;
        STAT(idle, -1);
        if (expired(c, tk_now_ns(), &lt) || !idle_alive(c)) {
            if (lt)
                STAT(max_lifetime_closed, 1);
            conn_discard(c);
            continue;
        }
        tk_broker_idle_take(D.b, D.w, c->slot);
        c->fresh = 1;
        STAT(in_use, 1);
        STAT(acquires, 1);
        return c;
    }
    if (tk_now_ms() < D.down_until_ms) {
        *st = TK_DB_UNAVAILABLE;
        return NULL;
    }
    /* 2. A free slot, or 3. the queue. */
    switch (tk_broker_acquire(D.b, D.w, D.gen, &slot, &entry, &ticket, &wake)) {
    case TK_BROKER_GOT:
        break;
    case TK_BROKER_QUEUED: {
        waiter_t wt = {.gt = tk_gt_self(), .ticket = ticket, .slot = -1};
        uint64_t t0 = tk_now_ns();
        if (wake >= 0)
            tk_broker_wake(wake); /* it sits on an idle connection: make it let go */
        D.waiters[entry] = &wt;
        int r = tk_gt_park(TK_GT_WAIT_BROKER, deadline);
        int err = errno;
        if (D.waiters[entry] == &wt)
            D.waiters[entry] = NULL;
        tk_broker_stats_wait(D.b, D.w, tk_now_ns() - t0);
        if (waited)
            *waited = 1;
        if (!wt.done) {
            /* Timed out or cancelled; a grant may have raced in. */
            if (tk_broker_cancel(D.b, D.w, entry, ticket, &slot) == 1) {
                wt.done = 1;
                wt.slot = slot;
            }
        }
        if (!wt.done) {
            if (r != 0 && err == ECANCELED) {
                *st = TK_DB_CANCELLED;
            } else {
                STAT(acquire_timeouts, 1);
                *st = TK_DB_UNAVAILABLE;
            }
            return NULL;
        }
        if (r != 0 && err == ECANCELED) {
            if (wt.conn) {
                STAT(in_use, 1);
                tk_db_release(wt.conn);
            } else
                slot_discard(wt.slot);
            *st = TK_DB_CANCELLED;
            return NULL;
        }
        if (wt.conn) {
            STAT(in_use, 1);
            STAT(acquires, 1);
            wt.conn->fresh = 0;
            return wt.conn;
        }
        slot = wt.slot;
        if (deadline < tk_now_ms() + 100)
            deadline = tk_now_ms() + 100; /* granted at the wire: still give connect a chance */
        break;
    }
    case TK_BROKER_FULL:
        STAT(queue_full, 1);
        *st = TK_DB_UNAVAILABLE;
        return NULL;
    default:
        *st = TK_DB_UNAVAILABLE;
        return NULL;
    }
    int kept;
    tk_db_conn_t *c = conn_open(slot, deadline, st, &kept);
    if (c == NULL) {
        if (!kept)
            slot_discard(slot);
        return NULL;
    }
    STAT(in_use, 1);
    STAT(acquires, 1);
    return c;
}

tk_db_conn_t *tk_db_acquire(tk_db_status_t *st)
{
    return acquire(st, NULL);
}

/* --- queries ----------------------------------------------------------------------------- */

/* Background clean-up of a connection whose query was abandoned. */
static void *cancel_thread(void *arg)
{
    PGcancel *cn = arg;
    char err[256];
    PQcancel(cn, err, sizeof(err)); /* blocking, but on this helper thread only */
    PQfreeCancel(cn);
    return NULL;
}

/* Ask the server to stop the running query. PQcancel() connects to the
 * server and waits for it: it would block the loop, so it runs on a short
 * detached thread. (Closing the connection instead would leave the query
 * running on a backend we no longer count, breaking the cap.) */
static void send_cancel(tk_db_conn_t *c)
{
    PGcancel *cn = PQgetCancel(c->pg);
    pthread_t th;
    pthread_attr_t a;
    if (cn == NULL)
        return;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&a, 64 * 1024);
    if (pthread_create(&th, &a, cancel_thread, cn) != 0)
        PQfreeCancel(cn);
    pthread_attr_destroy(&a);
}

/* A sent pipelined query ran past its deadline: cancel it on the server and
 * retire the connection carrying it (it takes nothing new and is recycled
 * once the rest of its batch is answered). */
static void pipe_cancel_item(const pipe_item_t *it)
{
    for (tk_db_conn_t *c = D.pipes; c; c = c->pnext)
        for (const pipe_item_t *p = c->phead; p; p = p->next)
            if (p == it) {
                if (!c->retiring) {
                    send_cancel(c);
                    c->retiring = 1;
                }
                return;
            }
}

/* Read every result of the query in flight; keep the first good one in *res
 * (if res), note the first error. Parks on the socket. */
static tk_db_status_t collect(tk_db_conn_t *c, int64_t deadline, PGresult **res)
{
    int fd = PQsocket(c->pg);
    tk_db_status_t st = TK_DB_OK;
    PGresult *keep = NULL;

    /* Send everything (a large parameter may not fit the socket buffer). */
    for (;;) {
        int f = PQflush(c->pg);
        if (f == 0)
            break;
        if (f < 0)
            goto broken;
        if (tk_gt_wait_fd(fd, EV_READ | EV_WRITE, TK_GT_WAIT_DB, deadline) != 0)
            goto parked_fail;
        if (!PQconsumeInput(c->pg))
            goto broken;
    }
    for (;;) {
        while (!PQisBusy(c->pg)) {
            PGresult *r = PQgetResult(c->pg);
            if (r == NULL) {
                c->in_flight = 0;
                if (res)
                    *res = keep;
                else
                    PQclear(keep);
                if (st == TK_DB_OK && keep == NULL)
                    st = TK_DB_ERROR;
                return st;
            }
            ExecStatusType es = PQresultStatus(r);
            if (es == PGRES_TUPLES_OK || es == PGRES_COMMAND_OK) {
                if (keep == NULL && st == TK_DB_OK) {
                    keep = r;
                    continue;
                }
            } else if (st == TK_DB_OK) {
                note_error(c, r);
                st = error_status(c->sqlstate);
                PQclear(keep);
                keep = NULL;
            }
            PQclear(r);
        }
        if (tk_gt_wait_fd(fd, EV_READ, TK_GT_WAIT_DB, deadline) != 0)
            goto parked_fail;
        if (!PQconsumeInput(c->pg))
            goto broken;
    }
parked_fail:
    PQclear(keep);
    if (errno == ECANCELED)
        return TK_DB_CANCELLED;
    STAT(query_timeouts, 1);
    snprintf(c->errmsg, sizeof(c->errmsg), "query timeout");
    return TK_DB_TIMEOUT; /* in_flight stays set: release drains or closes it */
broken:
    PQclear(keep);
    note_error(c, NULL);
    c->broken = 1;
    c->in_flight = 0;
    return TK_DB_UNAVAILABLE;
}

/* Replace a connection that turned out dead (the database restarted while
 * it was idle) by a new one on the same slot. */
static int reconnect_in_place(tk_db_conn_t *c, int64_t deadline)
{
    tk_db_status_t st;
    /* The old backend must be gone before a new one starts on this slot:
     * park until its socket ends (usually at once: it died). */
    int fd = PQsocket(c->pg) >= 0 ? fcntl(PQsocket(c->pg), F_DUPFD_CLOEXEC, 0) : -1;
    PQfinish(c->pg);
    c->pg = NULL;
    if (fd >= 0) {
        int64_t until = tk_now_ms() + TK_DB_GONE_MS;
        while (closing_read(fd) == 1 && tk_gt_wait_fd(fd, EV_READ, TK_GT_WAIT_DB, until) == 0)
            ;
        close(fd);
    }
    STAT(open, -1);
    /* (no background finish here: c keeps the slot) */
    tk_db_conn_t *n = conn_open(c->slot, deadline, &st, NULL);
    if (n == NULL) {
        STAT(open, 1); /* c still counts until it is discarded */
        c->broken = 1;
        return -1;
    }
    c->pg = n->pg;
    c->created_ns = n->created_ns;
    c->prepared = 0;
    c->broken = 0;
    free(n);
    return 0;
}

static tk_db_status_t exec_once(tk_db_conn_t *c, int stmt, int nparams, const char *const *values,
                                const int *lengths, PGresult **res, int64_t deadline)
{
    const char *name = g_stmts[stmt].name;
    tk_db_status_t st;

    if (!(c->prepared & (1ull << stmt))) {
        if (!PQsendPrepare(c->pg, name, g_stmts[stmt].sql, g_stmts[stmt].nparams, NULL))
            goto broken;
        c->in_flight = 1;
        if ((st = collect(c, deadline, NULL)) != TK_DB_OK) {
            /* A failed PREPARE returns no result: collect says ERROR. */
            return st;
        }
        c->prepared |= 1ull << stmt;
    }
    if (!PQsendQueryPrepared(c->pg, name, nparams, values, lengths, NULL, 0))
        goto broken;
    c->in_flight = 1;
    return collect(c, deadline, res);
broken:
    note_error(c, NULL);
    c->broken = 1;
    return TK_DB_UNAVAILABLE;
}

tk_db_status_t tk_db_exec(tk_db_conn_t *c, int stmt, int nparams, const char *const *values,
                          const int *lengths, PGresult **res)
{
    int64_t deadline = tk_now_ms() + D.conf->db_query_timeout_ms;
    tk_db_status_t st;

    *res = NULL;
    c->sqlstate[0] = '\0';
    c->errmsg[0] = '\0';
    if (stmt < 0 || stmt >= g_nstmts || c->broken || c->in_flight)
        return TK_DB_ERROR;
    st = exec_once(c, stmt, nparams, values, lengths, res, deadline);
    if (st == TK_DB_UNAVAILABLE && c->fresh && (g_stmts[stmt].flags & TK_DB_READ)) {
        /* First use after idling and the connection is dead: re-running a
         * declared read on a new connection is safe even if the first run
         * reached the server; anything else fails (it may have run). */
        c->fresh = 0;
        if (reconnect_in_place(c, deadline) == 0) {
            D.nretried++;
            st = exec_once(c, stmt, nparams, values, lengths, res, deadline);
        }
    }
    c->fresh = 0;
    return st;
}

tk_db_status_t tk_db_exec_sql(tk_db_conn_t *c, const char *sql, PGresult **res)
{
    int64_t deadline = tk_now_ms() + D.conf->db_query_timeout_ms;
    PGresult *r = NULL;
    tk_db_status_t st;

    c->fresh = 0;
    c->sqlstate[0] = '\0';
    if (c->broken || c->in_flight)
        return TK_DB_ERROR;
    if (!PQsendQuery(c->pg, sql)) {
        note_error(c, NULL);
        c->broken = 1;
        return TK_DB_UNAVAILABLE;
    }
    c->in_flight = 1;
    st = collect(c, deadline, &r);
    if (res)
        *res = r;
    else
        PQclear(r);
    return st;
}

/* --- release --------------------------------------------------------------------------- */

/* Green thread: wait for an abandoned query to end, then release normally. */
static void drain_main(void *arg)
{
    tk_db_conn_t *c = arg;
    send_cancel(c);
    tk_db_status_t st = collect(c, tk_now_ms() + TK_DB_DRAIN_MS, NULL);
    (void)st;
    if (c->in_flight || c->broken) {
        STAT(errors_closed, 1);
        conn_discard(c);
        return;
    }
    STAT(in_use, 1); /* tk_db_release() takes it off again */
    tk_db_release(c);
}

void tk_db_release(tk_db_conn_t *c)
{
    int entry, wake, lt;

    if (c == NULL)
        return;
    STAT(in_use, -1);
    if (c->in_flight && !c->broken) {
        /* The query was abandoned (timeout, client gone): the connection
         * keeps its slot until the server has stopped. */
        if (tk_gt_spawn(tk_sched_current(), "db-drain", drain_main, c) != NULL)
            return;
    }
    if (c->in_flight || c->broken || PQstatus(c->pg) != CONNECTION_OK ||
        PQtransactionStatus(c->pg) != PQTRANS_IDLE) {
        /* Never hand on a dirty connection: close it (a ROLLBACK round trip
         * would be the alternative; handlers here don't leave transactions
         * open, so this is only the error path). */
        STAT(errors_closed, 1);
        conn_discard(c);
        return;
    }
    if (expired(c, tk_now_ns(), &lt)) {
        STAT(max_lifetime_closed, 1);
        conn_discard(c);
        return;
    }
    tk_broker_rel_t r = tk_broker_release(D.b, D.w, c->slot, &entry, &wake);
    dispose(r, entry, wake, c, c->slot);
}

/* --- shared pipelined connections ------------------------------------------------------- */

/* Declared reads (tk_db_query() on a TK_DB_READ statement) don't take a
 * connection for themselves: they are sent on one of this worker's shared
 * connections in libpq pipeline mode, behind the queries of other green
 * threads, and everything sent in one loop iteration ends with one Sync.
 * One write and one read carry many queries each way, and the backend goes
 * from one to the next without sleeping: fewer system calls and context
 * switches on both sides, and one backend wake-up and one transaction per
 * batch instead of per query. A connection takes at most pipe_depth queries at a
 * time; the rest wait here in FIFO order (the broker's queue only sees a
 * worker that has no connection at all). "Acquired" for a pipelined query
 * means: everything sent before it on its connection has finished; a query
 * that isn't there within db.acquire_timeout answers 503 like a queued
 * acquire (a sent one is left to finish, its result dropped: a declared
 * read has no effect), and db.query_timeout counts from that moment. */

static pipe_item_t *item_get(void)
{
    pipe_item_t *it = D.ifree;
    if (it)
        D.ifree = it->next;
    else if ((it = malloc(sizeof(*it))) == NULL)
        return NULL;
    memset(it, 0, sizeof(*it));
    return it;
}

static void item_put(pipe_item_t *it)
{
    if (it->res)
        PQclear(it->res);
    it->res = NULL;
    it->next = D.ifree;
    D.ifree = it;
}

/* The query is answered (or failed): every waiter gets its own result
 * (copies for those who joined), and the item goes back to the pool. */
static void item_finish(pipe_item_t *it, tk_db_status_t st)
{
    it->state = PI_DONE;
    if (it->st == TK_DB_OK)
        it->st = st;
    for (pipe_waiter_t *w = it->w, *n; w; w = n) {
        n = w->next;
        w->st = it->st;
        memcpy(w->sqlstate, it->sqlstate, sizeof(w->sqlstate));
        if (it->st == TK_DB_OK && it->res) {
            if (n == NULL) {
                w->res = it->res; /* the last one takes the original */
                it->res = NULL;
            } else if ((w->res = PQcopyResult(it->res, PG_COPYRES_ATTRS | PG_COPYRES_TUPLES)) ==
                       NULL) {
                w->st = TK_DB_UNAVAILABLE;
            }
        }
        w->done = 1;
        w->item = NULL;
        tk_gt_unpark(w->gt);
    }
    it->w = NULL;
    item_put(it);
}

/* Forget a joinable queued item (it is being sent or dropped). */
static void unjoinable(pipe_item_t *it)
{
    pipe_item_t **slot = &D.joinable[it->hash % TK_DB_PIPE_BUCKETS];
    if (*slot == it)
        *slot = NULL;
}

static void schedule_flush(void)
{
    if (!D.flush_pending) {
        D.flush_pending = 1;
        event_active(D.flush_ev, EV_TIMEOUT, 1);
    }
}

/* Queue it (again) at the front of the worker's FIFO. */
static void q_push_front(pipe_item_t *it)
{
    it->state = PI_QUEUED;
    it->next = D.qhead;
    D.qhead = it;
    if (D.qtail == NULL)
        D.qtail = it;
    D.qlen++;
}

static void pipe_release_if_done(tk_db_conn_t *c);

/* The in_use/idle gauges of a shared connection follow whether it has
 * queries in flight (force: count it in use, as an exclusive one is). */
static void pipe_gauge(tk_db_conn_t *c, int force)
{
    int busy = force || c->inflight > 0;
    if (busy == c->busy_g)
        return;
    STAT(in_use, busy ? 1 : -1);
    STAT(idle, busy ? -1 : 1);
    c->busy_g = busy;
}

/* The connection failed: everything on it fails (a declared read that was
 * only queued behind a failed batch goes back to the FIFO), and it is closed. */
static void pipe_fail(tk_db_conn_t *c)
{
    pipe_item_t *it, *rhead = NULL, *rtail = NULL;
    int n = 0;
    note_error(c, NULL);
    c->broken = 1;
    c->retiring = 1;
    c->dirty = 0;
    while ((it = c->phead) != NULL) {
        c->phead = it->next;
        if (it->kind != PI_QUERY) {
            item_put(it);
            continue;
        }
        c->inflight--;
        if (it->w && !it->retried) {
            /* A declared read: run it again on another connection (the
             * database restarted under an idle connection, say). */
            PQclear(it->res);
            it->res = NULL;
            it->st = TK_DB_OK;
            it->aborted = 0;
            it->retried = 1;
            D.nretried++;
            it->started_ms = 0;
            it->state = PI_QUEUED;
            it->next = NULL;
            if (rtail)
                rtail->next = it;
            else
                rhead = it;
            rtail = it;
            n++;
            continue;
        }
        item_finish(it, TK_DB_UNAVAILABLE);
    }
    c->ptail = NULL;
    if (rhead) {
        /* Back at the front, in order; wake the first so that it finds (or
         * opens) a connection for them. */
        rtail->next = D.qhead;
        if (D.qhead == NULL)
            D.qtail = rtail;
        D.qhead = rhead;
        D.qlen += n;
        tk_gt_unpark(rhead->w->gt);
    }
    pipe_gauge(c, 0);
    pipe_release_if_done(c);
}

static void on_pipe_write(evutil_socket_t fd, short what, void *arg)
{
    tk_db_conn_t *c = arg;
    (void)fd;
    (void)what;
    int f = PQflush(c->pg);
    if (f < 0)
        pipe_fail(c);
    else if (f == 0)
        event_del(c->wev);
}

static void pipe_dispatch(void);

/* Whether c is still one of this worker's pipelined connections (pointer
 * identity only: c is never dereferenced here). */
static int pipe_alive(const tk_db_conn_t *c)
{
    for (const tk_db_conn_t *p = D.pipes; p; p = p->pnext)
        if (p == c)
            return 1;
    return 0;
}

/* Read what arrived and hand results to their waiters. */
static void on_pipe_read(evutil_socket_t fd, short what, void *arg)
{
    tk_db_conn_t *c = arg;
    int done = 0;
    (void)fd;
    (void)what;
    if (!PQconsumeInput(c->pg)) {
        pipe_fail(c);
        return;
    }
    while (c->phead && !PQisBusy(c->pg)) {
        pipe_item_t *it = c->phead;
        PGresult *r = PQgetResult(c->pg);
        if (it->kind == PI_SYNC) {
            if (r == NULL)
                break; /* not there yet */
            if (PQresultStatus(r) != PGRES_PIPELINE_SYNC) {
                PQclear(r);
                pipe_fail(c);
                return;
            }
            PQclear(r);
        } else if (r != NULL) {
            ExecStatusType es = PQresultStatus(r);
            if (es == PGRES_PIPELINE_SYNC) {
                PQclear(r);
                pipe_fail(c);
                return;
            }
            if (it->kind == PI_QUERY && (es == PGRES_TUPLES_OK || es == PGRES_COMMAND_OK) &&
                it->res == NULL && it->st == TK_DB_OK) {
                it->res = r;
                continue;
            }
            if (it->kind == PI_PREP && es != PGRES_COMMAND_OK)
                c->prepared &= ~(1ull << it->stmt); /* not prepared: again on the next query */
            if (es == PGRES_PIPELINE_ABORTED) {
                it->aborted = 1;
            } else if (es != PGRES_TUPLES_OK && es != PGRES_COMMAND_OK && it->st == TK_DB_OK) {
                const char *ss = PQresultErrorField(r, PG_DIAG_SQLSTATE);
                snprintf(it->sqlstate, sizeof(it->sqlstate), "%s", ss ? ss : "");
                it->st = error_status(it->sqlstate);
            }
            PQclear(r);
            continue;
        }
        /* it is complete */
        c->phead = it->next;
        if (c->phead == NULL)
            c->ptail = NULL;
        if (it->kind != PI_QUERY) {
            item_put(it);
            continue;
        }
        c->inflight--;
        done++;
        if (it->aborted && it->w && !it->retried && !c->retiring) {
            /* Not run: an earlier query of its batch failed. Run it again. */
            PQclear(it->res);
            it->res = NULL;
            it->aborted = 0;
            it->retried = 1;
            D.nretried++;
            it->started_ms = 0;
            q_push_front(it);
        } else {
            item_finish(it, it->aborted ? TK_DB_ERROR : TK_DB_OK);
        }
    }
    if (done) {
        int64_t now = tk_now_ms();
        pipe_gauge(c, 0);
        c->last_ns = tk_now_ns();
        for (pipe_item_t *it = c->phead; it; it = it->next)
            if (it->kind == PI_QUERY) {
                if (it->started_ms == 0)
                    it->started_ms = now;
                break;
            }
    }
    if (done && D.qhead) {
        pipe_dispatch();
        /* A send that failed in there failed and released its connection,
         * which may be this one: go on only while c is still one of ours. */
        if (!pipe_alive(c))
            return;
    }
    if (!c->retiring && c->phead == NULL && D.qhead == NULL && tk_broker_qlen(D.b) > 0)
        c->retiring = c->shared_out = 1; /* unused here and others queue: give it back now */
    if (c->retiring)
        pipe_release_if_done(c);
}

/* A retiring connection with nothing in flight leaves pipeline mode and is
 * released like an exclusive one (idle here, or to the broker's queue). */
static void pipe_release_if_done(tk_db_conn_t *c)
{
    if (c->phead != NULL || c->dirty)
        return;
    for (tk_db_conn_t **pp = &D.pipes; *pp; pp = &(*pp)->pnext)
        if (*pp == c) {
            *pp = c->pnext;
            D.npipes--;
            break;
        }
    event_free(c->rev);
    event_free(c->wev);
    c->rev = c->wev = NULL;
    c->pipe = 0;
    c->inflight = 0;
    pipe_gauge(c, 1); /* tk_db_release() counts it off in_use */
    if (!c->broken) {
        PGresult *r;
        while ((r = PQgetResult(c->pg)) != NULL)
            PQclear(r);
        if (PQexitPipelineMode(c->pg) != 1)
            c->broken = 1;
    }
    c->in_flight = 0;
    if (!c->broken && c->shared_out) {
        /* Given up because another worker queues: the slot goes to it now
         * (closing here; that worker connects), not after an idle grace. */
        int hw = tk_broker_head_worker(D.b);
        if (hw >= 0 && hw != D.w) {
            STAT(in_use, -1);
            conn_discard(c);
            return;
        }
    }
    tk_db_release(c); /* closes it if broken or dirty */
}

/* Stop sending to c; it is released once its queries are answered. */
static void pipe_retire(tk_db_conn_t *c)
{
    c->retiring = 1;
    pipe_release_if_done(c);
}

/* Adopt a fresh or idle exclusive connection as a shared one. */
static int pipe_adopt(tk_db_conn_t *c)
{
    int fd = PQsocket(c->pg);
    if (PQenterPipelineMode(c->pg) != 1)
        return -1;
    c->rev = event_new(D.base, fd, EV_READ | EV_PERSIST, on_pipe_read, c);
    c->wev = event_new(D.base, fd, EV_WRITE | EV_PERSIST, on_pipe_write, c);
    if (c->rev == NULL || c->wev == NULL || event_add(c->rev, NULL) != 0) {
        if (c->rev)
            event_free(c->rev);
        if (c->wev)
            event_free(c->wev);
        c->rev = c->wev = NULL;
        PQexitPipelineMode(c->pg);
        return -1;
    }
    c->pipe = 1;
    c->retiring = 0;
    c->shared_out = 0;
    c->dirty = 0;
    c->inflight = 0;
    c->phead = c->ptail = NULL;
    c->busy_g = 1; /* as acquired */
    pipe_gauge(c, 0);
    c->last_ns = tk_now_ns();
    c->pnext = D.pipes;
    D.pipes = c;
    D.npipes++;
    return 0;
}

static void pipe_append(tk_db_conn_t *c, pipe_item_t *it)
{
    it->next = NULL;
    if (c->ptail)
        c->ptail->next = it;
    else
        c->phead = it;
    c->ptail = it;
}

/* Whether c's current query has been running for a while (a slow query or
 * a lock: what is sent behind it waits). */
static int pipe_stalled(const tk_db_conn_t *c, int64_t now)
{
    for (const pipe_item_t *it = c->phead; it; it = it->next)
        if (it->kind == PI_QUERY)
            return it->started_ms > 0 && now - it->started_ms > TK_DB_PIPE_STALL_MS;
    return 0;
}

/* Send queued queries while a connection has room. */
static void pipe_dispatch(void)
{
    while (D.qhead) {
        pipe_item_t *it = D.qhead;
        if (it->w == NULL) { /* its waiters gave up */
            unjoinable(it);
            D.qhead = it->next;
            if (D.qhead == NULL)
                D.qtail = NULL;
            D.qlen--;
            item_put(it);
            continue;
        }
        /* The least loaded connection, one whose current query isn't
         * running long (head-of-line blocking) if there is one. */
        tk_db_conn_t *best = NULL;
        int best_stalled = 0;
        int64_t now = tk_now_ms();
        for (tk_db_conn_t *c = D.pipes; c; c = c->pnext) {
            if (c->retiring || c->inflight >= TK_DB_PIPE_DEPTH)
                continue;
            int st = pipe_stalled(c, now);
            if (best == NULL || st < best_stalled ||
                (st == best_stalled && c->inflight < best->inflight)) {
                best = c;
                best_stalled = st;
            }
        }
        if (best == NULL)
            return;
        tk_db_conn_t *c = best;
        const char *name = g_stmts[it->stmt].name;
        if (!(c->prepared & (1ull << it->stmt))) {
            pipe_item_t *p = item_get();
            if (p == NULL || !PQsendPrepare(c->pg, name, g_stmts[it->stmt].sql,
                                            g_stmts[it->stmt].nparams, NULL)) {
                if (p)
                    item_put(p);
                pipe_fail(c);
                continue;
            }
            p->kind = PI_PREP;
            p->stmt = it->stmt;
            p->state = PI_SENT;
            pipe_append(c, p);
            c->prepared |= 1ull << it->stmt;
        }
        if (!PQsendQueryPrepared(c->pg, name, it->nparams, it->values, it->lengths, NULL, 0)) {
            pipe_fail(c);
            continue;
        }
        D.qhead = it->next;
        if (D.qhead == NULL)
            D.qtail = NULL;
        D.qlen--;
        unjoinable(it);
        it->state = PI_SENT;
        it->started_ms = c->inflight == 0 ? tk_now_ms() : 0;
        uint64_t now_ns = tk_now_ns();
        for (pipe_waiter_t *w = it->w; w; w = w->next)
            if (w->sent_ns == 0)
                w->sent_ns = now_ns;
        pipe_append(c, it);
        c->inflight++;
        D.npiped++;
        pipe_gauge(c, 0);
        c->last_ns = tk_now_ns();
        if (!c->dirty) {
            c->dirty = 1;
            schedule_flush();
        }
    }
}

/* End of a loop iteration: one Sync (and one write) per connection for
 * everything sent on it since the last. */
static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    D.flush_pending = 0;
    for (tk_db_conn_t *c = D.pipes, *n; c; c = n) {
        n = c->pnext;
        if (!c->dirty)
            continue;
        c->dirty = 0;
        pipe_item_t *it = item_get();
        if (it == NULL || !PQpipelineSync(c->pg)) {
            if (it)
                item_put(it);
            pipe_fail(c);
            continue;
        }
        it->kind = PI_SYNC;
        it->state = PI_SENT;
        D.nsyncs++;
        pipe_append(c, it);
        if (PQisnonblocking(c->pg) && PQflush(c->pg) == 1)
            event_add(c->wev, NULL);
    }
}

/* One more shared connection, without queueing when this worker already has
 * some (own idle one, or a free slot nobody waits for); with none, a normal
 * acquire (may queue in the broker). May yield. */
static int pipe_grow(int64_t deadline, tk_db_status_t *st, int *waited)
{
    tk_db_conn_t *c = NULL;
    D.opening++;
    if (D.npipes == 0) {
        c = acquire(st, waited); /* a wait is counted there: not again by the caller */
    } else if (D.idle) {
        c = tk_db_acquire(st); /* takes the idle one, never queues */
    } else {
        int slot, kept;
        if (tk_now_ms() >= D.down_until_ms && tk_broker_try_acquire(D.b, D.w, &slot) == 0) {
            c = conn_open(slot, deadline, st, &kept);
            if (c == NULL) {
                if (!kept)
                    slot_discard(slot);
            } else {
                STAT(in_use, 1);
                STAT(acquires, 1);
            }
        }
    }
    D.opening--;
    if (c == NULL)
        return -1;
    if (pipe_adopt(c) != 0) {
        c->broken = 1;
        tk_db_release(c);
        *st = TK_DB_UNAVAILABLE;
        return -1;
    }
    pipe_dispatch();
    return 0;
}

/* Whether the calling waiter should open one more connection. */
static int pipe_want_more(void)
{
    if (D.opening || D.qhead == NULL)
        return 0;
    if (D.npipes == 0)
        return 1;
    if (D.npipes >= TK_DB_PIPE_MAX)
        return 0;
    int64_t now = tk_now_ms();
    for (tk_db_conn_t *c = D.pipes; c; c = c->pnext)
        if (!c->retiring && c->inflight < TK_DB_PIPE_OPEN_AT && !pipe_stalled(c, now))
            return 0;
    return D.idle != NULL ||
           (tk_now_ms() >= D.down_until_ms && __atomic_load_n(&D.b->nfree, __ATOMIC_RELAXED) > 0 &&
            tk_broker_qlen(D.b) == 0);
}

/* Someone queues in the broker (another worker with no connection, or an
 * exclusive acquire): give one shared connection back, the least loaded; the
 * last one only when it is unused or the queue's head is getting old. */
static void pipe_share(void)
{
    if (D.npipes == 0 || tk_broker_qlen(D.b) == 0)
        return;
    tk_db_conn_t *least = NULL;
    for (tk_db_conn_t *c = D.pipes; c; c = c->pnext) {
        if (c->retiring)
            return; /* one at a time */
        if (least == NULL || c->inflight < least->inflight)
            least = c;
    }
    if (D.npipes == 1 && (least->phead != NULL || D.qhead != NULL) &&
        tk_broker_head_age_ns(D.b) < (uint64_t)D.conf->db_acquire_timeout_ms * 250000u)
        return;
    least->shared_out = 1;
    pipe_retire(least);
}

/* FNV-1a of the statement and its parameters. */
static uint32_t params_hash(int stmt, int nparams, const char *const *values, const int *lens)
{
    uint32_t h = 2166136261u ^ (uint32_t)stmt;
    for (int i = 0; i < nparams; i++) {
        const unsigned char *p = (const unsigned char *)values[i];
        size_t n = p ? (size_t)lens[i] : 0;
        h = (h ^ (p ? 0x5a : 0xa5)) * 16777619u;
        for (size_t k = 0; k < n; k++)
            h = (h ^ p[k]) * 16777619u;
    }
    return h;
}

/* A queued (not yet sent) identical query to join, or NULL. Joining one
 * that has not been sent is safe for a TK_DB_JOINABLE read: it runs after every
 * joiner arrived, so each sees what a query of its own would have seen
 * (its own earlier writes included). */
static pipe_item_t *find_joinable(uint32_t h, int stmt, int nparams, const char *const *values,
                                  const int *lens)
{
    pipe_item_t *it = D.joinable[h % TK_DB_PIPE_BUCKETS];
    if (it == NULL || it->hash != h || it->stmt != stmt || it->nparams != nparams ||
        it->state != PI_QUEUED || it->w == NULL)
        return NULL;
    for (int i = 0; i < nparams; i++) {
        if ((values[i] == NULL) != (it->values[i] == NULL))
            return NULL;
        if (values[i] && (lens[i] != it->lengths[i] || memcmp(values[i], it->values[i], lens[i])))
            return NULL;
    }
    return it;
}

/* Take waiter w off its item (it gives up). An item left without waiters
 * is dropped at dispatch (queued) or orphaned (sent: its result is freed
 * when it comes). */
static void waiter_leave(pipe_waiter_t *w)
{
    pipe_item_t *it = w->item;
    if (it == NULL)
        return;
    for (pipe_waiter_t **pp = &it->w; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    w->item = NULL;
}

static int pipe_enqueue(pipe_waiter_t *w, int stmt, int nparams, const char *const *values,
                        const int *lens);

/* A pipelined query that finds every shared connection full waits in this
 * worker's FIFO, not in the broker's queue: for its request that is the same
 * thing (waiting for a connection), so it is counted in wait_count, wait_ns
 * and the histogram like a broker wait, and also in wait_count_local; the
 * local_waiting gauge and its high-water marks are separate from the
 * broker queue's (waiting) so neither hides the other. *lw: 0 never queued,
 * 1 queued now, 2 was queued. */
static void local_wait_begin(int *lw)
{
    if (*lw == 0) {
        *lw = 1;
        tk_broker_local_waiting(D.b, D.w, 1);
    }
}

static void local_wait_end(int *lw)
{
    if (*lw == 1) {
        *lw = 2;
        tk_broker_local_waiting(D.b, D.w, -1);
    }
}

/* Done with a request's pipelined queries: record its wait (queued until its
 * last query was sent; until now if one never was). */
static void local_wait_done(int *lw, int counted, const pipe_waiter_t *ws, int n)
{
    local_wait_end(lw);
    if (*lw == 0 || counted)
        return; /* counted: it queued in the broker too, one wait per request */
    uint64_t now = tk_now_ns(), wait = 0;
    for (int i = 0; i < n; i++) {
        uint64_t end = ws[i].sent_ns ? ws[i].sent_ns : now;
        if (ws[i].enq_ns && end > ws[i].enq_ns && end - ws[i].enq_ns > wait)
            wait = end - ws[i].enq_ns;
    }
    tk_broker_stats_wait_local(D.b, D.w, wait);
}

static tk_db_status_t pipe_query(int stmt, int nparams, const char *const *values,
                                 const int *lengths, PGresult **res, char sqlstate[6])
{
    int64_t t0 = tk_now_ms();
    int64_t acq_deadline = t0 + D.conf->db_acquire_timeout_ms;
    tk_db_status_t st = TK_DB_UNAVAILABLE;
    int lw = 0, counted = 0, lens[TK_DB_PIPE_MAXP];
    pipe_waiter_t me = {.gt = tk_gt_self()};
    pipe_item_t *it;

    if (nparams <= TK_DB_PIPE_MAXP) {
        for (int i = 0; i < nparams; i++)
            lens[i] = values[i] == NULL ? 0 : lengths ? lengths[i] : (int)strlen(values[i]);
        lengths = lens;
    }
    if (pipe_enqueue(&me, stmt, nparams, values, lengths) != 0)
        return TK_DB_UNAVAILABLE;
    if (me.item->state == PI_QUEUED && me.item->w == &me && me.next == NULL) {
        /* a new query (not joined): send what can be sent */
        pipe_dispatch();
        pipe_share();
    }
    for (;;) {
        if (me.done)
            break;
        if (me.item->state == PI_QUEUED) {
            pipe_dispatch(); /* room may have appeared (a retry put it back) */
            if (me.done)
                break;
        }
        it = me.item;
        if (it->state == PI_QUEUED) {
            if (pipe_want_more()) {
                tk_db_status_t gst;
                if (pipe_grow(acq_deadline, &gst, &counted) != 0 && D.npipes == 0 && !me.done &&
                    me.item->state == PI_QUEUED) {
                    /* Nothing to send it on. */
                    waiter_leave(&me);
                    local_wait_done(&lw, counted, &me, 1);
                    if (gst == TK_DB_UNAVAILABLE && tk_now_ms() >= acq_deadline)
                        STAT(acquire_timeouts, 1);
                    /* let the next one try (or fail fast while it is down) */
                    for (pipe_item_t *q = D.qhead; q; q = q->next)
                        if (q->w) {
                            tk_gt_unpark(q->w->gt);
                            break;
                        }
                    return gst;
                }
                continue;
            }
            local_wait_begin(&lw);
        }
        int64_t deadline =
            it->started_ms ? it->started_ms + D.conf->db_query_timeout_ms : acq_deadline;
        if (D.npipes == 0 && it->state == PI_QUEUED && deadline > tk_now_ms() + 50)
            deadline = tk_now_ms() + 50; /* nobody to send it: look again soon */
        int r = tk_gt_park(it->state == PI_QUEUED ? TK_GT_WAIT_BROKER : TK_GT_WAIT_DB, deadline);
        if (me.done || me.item->state != PI_QUEUED)
            local_wait_end(&lw);
        if (r == 0 || me.done)
            continue;
        int err = errno;
        it = me.item;
        if (err == ETIMEDOUT &&
            tk_now_ms() <
                (it->started_ms ? it->started_ms + D.conf->db_query_timeout_ms : acq_deadline))
            continue;
        /* Give up: cancelled, not started in time, or the query timed out. */
        if (it->state == PI_QUEUED) {
            st = err == ECANCELED ? TK_DB_CANCELLED : TK_DB_UNAVAILABLE;
            if (st == TK_DB_UNAVAILABLE)
                STAT(acquire_timeouts, 1);
        } else if (err == ECANCELED) {
            st = TK_DB_CANCELLED;
        } else if (it->started_ms == 0) {
            STAT(acquire_timeouts, 1);
            st = TK_DB_UNAVAILABLE;
        } else {
            /* This one runs too long: stop it on the server; the connection
             * takes nothing new and is recycled once the rest is answered. */
            STAT(query_timeouts, 1);
            st = TK_DB_TIMEOUT;
            pipe_cancel_item(it);
        }
        waiter_leave(&me);
        local_wait_done(&lw, counted, &me, 1);
        return st;
    }
    local_wait_done(&lw, counted, &me, 1);
    STAT(acquires, 1);
    st = me.st;
    if (sqlstate)
        memcpy(sqlstate, me.sqlstate, 6);
    if (st == TK_DB_OK && me.res == NULL)
        st = TK_DB_ERROR;
    if (st == TK_DB_OK)
        *res = me.res;
    else
        PQclear(me.res);
    return st;
}

/* Queue one pipelined query for waiter w (joining an identical queued one
 * when possible). lens[] holds the parameter lengths. 0, or -1 (no memory). */
static int pipe_enqueue(pipe_waiter_t *w, int stmt, int nparams, const char *const *values,
                        const int *lens)
{
    size_t total = 0;
    int joinable =
        (g_stmts[stmt].flags & TK_DB_JOINABLE) && lens != NULL && nparams <= TK_DB_PIPE_MAXP;
    uint32_t h = 0;
    pipe_item_t *it = NULL;

    w->enq_ns = tk_now_ns();
    w->sent_ns = 0;
    for (int i = 0; joinable && i < nparams; i++)
        total += (size_t)lens[i] + 1;
    if (joinable && total <= TK_DB_PIPE_PBUF) {
        h = params_hash(stmt, nparams, values, lens);
        it = find_joinable(h, stmt, nparams, values, lens);
        if (it) {
            D.njoined++;
            w->next = it->w;
            it->w = w;
            w->item = it;
            return 0;
        }
    } else {
        joinable = 0;
    }
    if ((it = item_get()) == NULL)
        return -1;
    it->kind = PI_QUERY;
    it->stmt = stmt;
    it->nparams = nparams;
    if (joinable) {
        /* Own copy of the parameters: whoever joins may outlive us. */
        char *p = it->pbuf;
        for (int i = 0; i < nparams; i++) {
            it->pv[i] = values[i] ? p : NULL;
            if (values[i]) {
                memcpy(p, values[i], (size_t)lens[i]);
                p[lens[i]] = '\0';
                p += lens[i] + 1;
            }
        }
        memcpy(it->plens, lens, sizeof(int) * (size_t)nparams);
        it->values = it->pv;
        it->lengths = it->plens;
        it->hash = h;
        D.joinable[h % TK_DB_PIPE_BUCKETS] = it;
    } else {
        it->values = values;
        it->lengths = lens;
    }
    it->state = PI_QUEUED;
    it->w = w;
    w->item = it;
    if (D.qtail)
        D.qtail->next = it;
    else
        D.qhead = it;
    D.qtail = it;
    D.qlen++;
    return 0;
}

/* Several pipelined SELECTs for one green thread, all sent at once. */
static tk_db_status_t pipe_query_many(int stmt, int n, int nparams, const char *const *values,
                                      PGresult **res)
{
    int64_t t0 = tk_now_ms();
    int64_t acq_deadline = t0 + D.conf->db_acquire_timeout_ms;
    tk_db_status_t st = TK_DB_OK;
    pipe_waiter_t *ws = calloc((size_t)n, sizeof(*ws));
    int *lens = malloc(sizeof(int) * (size_t)(n * nparams + 1));
    int queued = 0, lw = 0, counted = 0;

    if (ws == NULL || lens == NULL) {
        free(ws);
        free(lens);
        return TK_DB_UNAVAILABLE;
    }
    for (int k = 0; k < n * nparams; k++)
        lens[k] = values[k] ? (int)strlen(values[k]) : 0;
    for (int i = 0; i < n; i++) {
        ws[i].gt = tk_gt_self();
        if (pipe_enqueue(&ws[i], stmt, nparams, values + i * nparams, lens + i * nparams) != 0) {
            st = TK_DB_UNAVAILABLE;
            break;
        }
        queued++;
    }
    if (st == TK_DB_OK) {
        pipe_dispatch();
        pipe_share();
    }
    while (st == TK_DB_OK) {
        /* Done? Else the earliest deadline of those still waiting. */
        int64_t deadline = INT64_MAX, now = tk_now_ms();
        int pending = 0, unsent = 0;
        for (int i = 0; i < n && st == TK_DB_OK; i++) {
            if (ws[i].done) {
                if (ws[i].st != TK_DB_OK || ws[i].res == NULL)
                    st = ws[i].st != TK_DB_OK ? ws[i].st : TK_DB_ERROR;
                continue;
            }
            pipe_item_t *it = ws[i].item;
            int64_t d =
                it->started_ms ? it->started_ms + D.conf->db_query_timeout_ms : acq_deadline;
            if (now >= d) {
                if (it->state == PI_QUEUED || it->started_ms == 0) {
                    STAT(acquire_timeouts, 1);
                    st = TK_DB_UNAVAILABLE;
                } else {
                    STAT(query_timeouts, 1);
                    st = TK_DB_TIMEOUT;
                    pipe_cancel_item(it);
                }
                break;
            }
            pending++;
            unsent += it->state == PI_QUEUED;
            if (d < deadline)
                deadline = d;
        }
        if (st != TK_DB_OK || pending == 0)
            break;
        if (!unsent)
            local_wait_end(&lw);
        if (unsent) {
            pipe_dispatch();
            if (pipe_want_more()) {
                tk_db_status_t gst;
                if (pipe_grow(acq_deadline, &gst, &counted) != 0 && D.npipes == 0) {
                    st = gst;
                    break;
                }
                continue;
            }
            if (D.npipes == 0 && deadline > tk_now_ms() + 50)
                deadline = tk_now_ms() + 50; /* nobody to send them: look again soon */
            local_wait_begin(&lw);
        }
        if (tk_gt_park(TK_GT_WAIT_DB, deadline) != 0 && errno == ECANCELED)
            st = TK_DB_CANCELLED;
    }
    local_wait_done(&lw, counted, ws, queued);
    for (int i = 0; i < queued; i++) {
        if (!ws[i].done)
            waiter_leave(&ws[i]);
        if (st == TK_DB_OK) {
            res[i] = ws[i].res;
        } else {
            PQclear(ws[i].res);
            res[i] = NULL;
        }
    }
    for (int i = queued; i < n; i++)
        res[i] = NULL;
    if (st == TK_DB_OK)
        STAT(acquires, n);
    free(ws);
    free(lens);
    return st;
}

tk_db_status_t tk_db_query_many(int stmt, int n, int nparams, const char *const *values,
                                PGresult **res)
{
    tk_db_status_t st = TK_DB_OK;
    if (n <= 0)
        return TK_DB_OK;
    if (!D.enabled) {
        for (int i = 0; i < n; i++)
            res[i] = NULL;
        return TK_DB_DISABLED;
    }
    if (stmt >= 0 && stmt < g_nstmts && (g_stmts[stmt].flags & TK_DB_READ))
        return pipe_query_many(stmt, n, nparams, values, res);
    for (int i = 0; i < n; i++)
        res[i] = NULL;
    tk_db_conn_t *c = tk_db_acquire(&st);
    if (c == NULL)
        return st;
    for (int i = 0; i < n && st == TK_DB_OK; i++)
        st = tk_db_exec(c, stmt, nparams, values + i * nparams, NULL, &res[i]);
    tk_db_release(c);
    if (st != TK_DB_OK)
        for (int i = 0; i < n; i++) {
            PQclear(res[i]);
            res[i] = NULL;
        }
    return st;
}

tk_db_status_t tk_db_query(int stmt, int nparams, const char *const *values, const int *lengths,
                           PGresult **res, char sqlstate[6])
{
    tk_db_status_t st;
    *res = NULL;
    if (sqlstate)
        sqlstate[0] = '\0';
    if (!D.enabled)
        return TK_DB_DISABLED;
    if (stmt >= 0 && stmt < g_nstmts && (g_stmts[stmt].flags & TK_DB_READ))
        return pipe_query(stmt, nparams, values, lengths, res, sqlstate);
    tk_db_conn_t *c = tk_db_acquire(&st);
    if (c == NULL)
        return st;
    st = tk_db_exec(c, stmt, nparams, values, lengths, res);
    if (sqlstate)
        memcpy(sqlstate, c->sqlstate, 6);
    tk_db_release(c);
    return st;
}

void tk_db_counts(tk_db_counts_t *out)
{
    out->pipelined = D.npiped;
    out->retried = D.nretried;
}

/* --- worker plumbing ------------------------------------------------------------------- */

/* Others queue while we keep idle connections: give up those idle for
 * longer than the grace (a just-released one is likely to be wanted here
 * again soon, and moving it costs two backend starts). */
static void give_up_idle(void)
{
    uint64_t now = tk_now_ns();
    tk_db_conn_t **pp = &D.idle;
    while (*pp && tk_broker_qlen(D.b) > 0) {
        tk_db_conn_t *c = *pp;
        if (now - c->idle_since_ns < (uint64_t)TK_DB_STEAL_GRACE_MS * 1000000u) {
            pp = &c->next;
            continue;
        }
        *pp = c->next;
        D.nidle--;
        STAT(idle, -1);
        conn_discard(c);
    }
}

/* Someone (another worker, the master) granted us slots, or wants our idle
 * connections because its waiters queue. */
static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    int entry, slot;
    uint64_t ticket;
    (void)fd;
    (void)what;
    (void)arg;
    tk_broker_wake_drain(D.w);
    while (tk_broker_next_grant(D.b, D.w, &entry, &ticket, &slot)) {
        waiter_t *wt = D.waiters[entry];
        if (wt && wt->ticket == ticket) {
            D.waiters[entry] = NULL;
            wt->done = 1;
            wt->conn = NULL;
            wt->slot = slot;
            tk_gt_unpark(wt->gt);
        } else {
            slot_discard(slot);
        }
    }
    give_up_idle();
    pipe_share();
}

/* Every TK_DB_TICK_MS: close idle connections past max_idle_time or
 * max_lifetime, and give up idle ones others are waiting for. */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    tk_db_conn_t **pp = &D.idle;
    uint64_t now = tk_now_ns();
    (void)fd;
    (void)what;
    (void)arg;
    while (*pp) {
        tk_db_conn_t *c = *pp;
        int lt = 0, old = 0;
        if (expired(c, now, &lt))
            old = 1;
        else if (D.conf->db_max_idle_time_ms > 0 &&
                 now - c->idle_since_ns > (uint64_t)D.conf->db_max_idle_time_ms * 1000000u)
            old = 1;
        if (!old) {
            pp = &c->next;
            continue;
        }
        *pp = c->next;
        D.nidle--;
        STAT(idle, -1);
        if (lt)
            STAT(max_lifetime_closed, 1);
        else
            STAT(max_idle_time_closed, 1);
        conn_discard(c);
    }
    give_up_idle();
    /* Shared connections unused for a while go back to the idle list (and
     * from there to db.max_idle_time); one goes back when others queue. */
    for (tk_db_conn_t *c = D.pipes, *n; c; c = n) {
        n = c->pnext;
        if (!c->retiring && c->phead == NULL && D.qhead == NULL &&
            now - c->last_ns > (uint64_t)TK_DB_PIPE_IDLE_MS * 1000000u)
            pipe_retire(c);
    }
    pipe_share();
}

/* At exit (the loop has stopped, so blocking is fine): wait up to
 * TK_DB_GONE_MS in all for the backends of the connections closed so far,
 * so that the slots the reclaim then frees are free at the server too. The
 * slots are left to that reclaim. */
static void closing_drain(void)
{
    int64_t until = tk_now_ms() + TK_DB_GONE_MS;
    while (D.closing) {
        struct pollfd pf[64];
        closing_t *ks[64];
        int n = 0;
        for (closing_t *k = D.closing; k && n < 64; k = k->next) {
            pf[n].fd = k->fd;
            pf[n].events = POLLIN;
            pf[n].revents = 0;
            ks[n++] = k;
        }
        int64_t left = until - tk_now_ms();
        if (left <= 0 || (poll(pf, (nfds_t)n, (int)left) < 0 && errno != EINTR))
            break;
        for (int i = 0; i < n; i++) {
            if (pf[i].revents == 0)
                continue;
            int r = closing_read(ks[i]->fd);
            if (r != 1) {
                ks[i]->slot = -1;
                closing_done(ks[i], r == 0 ? NULL : "read error");
            }
        }
    }
    while (D.closing) {
        D.closing->slot = -1;
        closing_done(D.closing, "exiting");
    }
}

int tk_db_worker_init(struct event_base *base, tk_broker_sh_t *b, int slot, const tk_conf_t *conf)
{
    struct timeval tv = {0, TK_DB_TICK_MS * 1000};

    memset(&D, 0, sizeof(D));
    D.base = base;
    D.b = b;
    D.w = slot;
    D.conf = conf;
    if (b == NULL || conf->db_conninfo[0] == '\0')
        return 0; /* no database: every acquire says DISABLED */
    if (slot < 0 || slot >= TK_BROKER_MAX_WORKERS) {
        TK_LOG(TK_LOG_ERR, "db: worker slot %d out of range", slot);
        return -1;
    }
    int fd = tk_broker_wake_fd(slot);
    if (fd < 0) {
        TK_LOG(TK_LOG_ERR, "db: no wake-up eventfd for worker %d (tk_broker_wake_create())", slot);
        return -1;
    }
    D.gen = tk_broker_worker_attach(b, slot, getpid());
    tk_broker_set_starve(b, (uint64_t)conf->db_acquire_timeout_ms * 750000u);
    D.wake_ev = event_new(base, fd, EV_READ | EV_PERSIST, on_wake, NULL);
    D.timer_ev = event_new(base, -1, EV_PERSIST, on_timer, NULL);
    D.flush_ev = event_new(base, -1, 0, on_flush, NULL);
    if (D.wake_ev == NULL || D.timer_ev == NULL || D.flush_ev == NULL ||
        event_add(D.wake_ev, NULL) != 0 || event_add(D.timer_ev, &tv) != 0) {
        TK_LOG(TK_LOG_ERR, "db: event_new() failed");
        tk_db_worker_fini();
        return -1;
    }
    D.enabled = 1;
    return 0;
}

void tk_db_worker_fini(void)
{
    if (D.enabled) {
        tk_broker_stats_t st;
        tk_broker_stats(D.b, D.w, &st);
        TK_LOG(
            TK_LOG_INFO,
            "db: %llu acquisitions, %llu waited (%llu ms), %llu timeouts, hand-offs %llu local "
            "%llu remote, %llu connects (%llu ms), %llu connect errors, %llu pipelined queries in "
            "%llu batches, %llu joined; %llu closed backends gone after %llu us on average "
            "(max %llu us), %llu not waited for",
            (unsigned long long)st.acquires, (unsigned long long)st.wait_count,
            (unsigned long long)(st.wait_ns / 1000000u), (unsigned long long)st.acquire_timeouts,
            (unsigned long long)st.handoffs_local, (unsigned long long)st.handoffs_remote,
            (unsigned long long)D.nconnects, (unsigned long long)(D.connect_ns / 1000000u),
            (unsigned long long)st.connect_errors, (unsigned long long)D.npiped,
            (unsigned long long)D.nsyncs, (unsigned long long)D.njoined,
            (unsigned long long)D.ngone,
            (unsigned long long)(D.ngone ? D.gone_ns / D.ngone / 1000u : 0),
            (unsigned long long)(D.gone_max_ns / 1000u), (unsigned long long)D.ngone_giveup);
    }
    if (D.enabled) {
        /* Close our idle connections, then give back in one step every slot
         * and queue entry of this process (in-use connections of threads that
         * could not unwind die with the process a moment later). Waiters of
         * other workers get the slots. */
        while (D.idle) {
            tk_db_conn_t *c = D.idle;
            D.idle = c->next;
            D.nidle--;
            STAT(idle, -1);
            conn_close(c, 0);
        }
        while (D.pipes) {
            tk_db_conn_t *c = D.pipes;
            D.pipes = c->pnext;
            D.npipes--;
            event_free(c->rev);
            event_free(c->wev);
            while (c->phead) {
                pipe_item_t *it = c->phead;
                c->phead = it->next;
                it->w = NULL; /* the scheduler is gone: nobody to wake */
                item_put(it);
            }
            conn_close(c, 0);
        }
        closing_drain();
        while (D.qhead) {
            pipe_item_t *it = D.qhead;
            D.qhead = it->next;
            it->w = NULL;
            item_put(it);
        }
        D.qtail = NULL;
        D.qlen = 0;
        memset(D.joinable, 0, sizeof(D.joinable));
        while (D.ifree) {
            pipe_item_t *it = D.ifree;
            D.ifree = it->next;
            free(it);
        }
        memset(D.waiters, 0, sizeof(D.waiters));
        tk_broker_reclaim_pid(D.b, getpid());
    }
    D.enabled = 0;
    if (D.wake_ev)
        event_free(D.wake_ev);
    if (D.timer_ev)
        event_free(D.timer_ev);
    if (D.flush_ev)
        event_free(D.flush_ev);
    D.wake_ev = D.timer_ev = D.flush_ev = NULL;
}
