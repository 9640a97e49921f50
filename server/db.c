/* db.c: PostgreSQL through asynchronous libpq on green threads, within the broker's budget. */
#include "config.h"

#include "db.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "sched.h"

#define TK_DB_MAX_STMTS      64
#define TK_DB_BACKOFF_MIN_MS 50
#define TK_DB_BACKOFF_MAX_MS 500  /* a restarted database is found again well within 2 s */
#define TK_DB_DRAIN_MS       2000 /* a cancelled query gets this long to finish */
#define TK_DB_STEAL_GRACE_MS 50   /* an idle connection is kept this long while others queue */
#define TK_DB_CONNECT_MS     5000 /* a connect left to the background gets this long */
#define TK_DB_TICK_MS        100  /* maintenance timer */

typedef struct {
    char *sql;
    int nparams;
} stmt_t;

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
    char sqlstate[6];
    char errmsg[160];
    struct tk_db_conn *next; /* idle list */
};

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
    waiter_t *waiters[TK_BROKER_MAX_WAITERS];
} D;

static stmt_t g_stmts[TK_DB_MAX_STMTS];
static int g_nstmts;

static void hand_local(int entry, tk_db_conn_t *c, int slot);
static void conn_close(tk_db_conn_t *c);

#define STAT(field, d) TK_BROKER_STAT(D.b, D.w, field, (d))

/* --- statements ------------------------------------------------------------------------- */

int tk_db_stmt(const char *sql, int nparams)
{
    for (int i = 0; i < g_nstmts; i++)
        if (strcmp(g_stmts[i].sql, sql) == 0)
            return i;
    if (g_nstmts >= TK_DB_MAX_STMTS)
        return -1;
    g_stmts[g_nstmts].sql = strdup(sql);
    if (g_stmts[g_nstmts].sql == NULL)
        return -1;
    g_stmts[g_nstmts].nparams = nparams;
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

int tk_db_http_status(tk_db_status_t st)
{
    switch (st) {
    case TK_DB_OK:
        return 200;
    case TK_DB_TIMEOUT:
        return 504;
    case TK_DB_ERROR:
        return 500;
    case TK_DB_CANCELLED:
        return 499;
    case TK_DB_UNAVAILABLE:
    case TK_DB_DISABLED:
    default:
        return 503;
    }
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
        STAT(max_idle_closed, 1);
        conn_close(c);
        break;
    case TK_BROKER_FREED:
        break;
    case TK_BROKER_TO_LOCAL:
        hand_local(entry, c, slot);
        break;
    case TK_BROKER_TO_REMOTE:
        STAT(handoffs_remote, 1);
        if (c)
            conn_close(c);
        tk_broker_wake(wake);
        break;
    }
}

/* Close the libpq side of c and free it; the slot is the caller's business. */
static void conn_close(tk_db_conn_t *c)
{
    if (c->pg)
        PQfinish(c->pg);
    STAT(open, -1);
    free(c);
}

/* Close c and give its slot back (to the queue's head if anyone waits).
 * The connection is closed before the slot moves, so the cap holds. */
static void conn_discard(tk_db_conn_t *c)
{
    int slot = c->slot, entry, wake;
    conn_close(c);
    tk_broker_rel_t r = tk_broker_free_slot(D.b, D.w, slot, &entry, &wake);
    dispose(r, entry, wake, NULL, slot);
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
    /* PQconnectStart does not block on the network; host names are resolved
     * synchronously (use an address or a local socket path in db.conninfo). */
    c->pg = PQconnectStart(D.conf->db_conninfo);
    c->poll = PGRES_POLLING_WRITING;
    if (c->pg == NULL || PQstatus(c->pg) == CONNECTION_BAD) {
        connect_failed(c);
        conn_close(c);
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
    conn_close(c);
    return NULL;
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

tk_db_conn_t *tk_db_acquire(tk_db_status_t *st)
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
        if (expired(c, tk_now_ns(), &lt) || PQstatus(c->pg) != CONNECTION_OK) {
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
                st = TK_DB_ERROR;
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
    PQfinish(c->pg);
    c->pg = NULL;
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
    char name[16];
    tk_db_status_t st;

    snprintf(name, sizeof(name), "tk%d", stmt);
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
    if (st == TK_DB_UNAVAILABLE && c->fresh) {
        /* First use after idling and the connection is dead: nothing reached
         * the server, so one retry on a new connection is safe. */
        c->fresh = 0;
        if (reconnect_in_place(c, deadline) == 0)
            st = exec_once(c, stmt, nparams, values, lengths, res, deadline);
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

tk_db_status_t tk_db_query(int stmt, int nparams, const char *const *values, const int *lengths,
                           PGresult **res, char sqlstate[6])
{
    tk_db_status_t st;
    tk_db_conn_t *c = tk_db_acquire(&st);
    *res = NULL;
    if (sqlstate)
        sqlstate[0] = '\0';
    if (c == NULL)
        return st;
    st = tk_db_exec(c, stmt, nparams, values, lengths, res);
    if (sqlstate)
        memcpy(sqlstate, c->sqlstate, 6);
    tk_db_release(c);
    return st;
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
    if (D.wake_ev == NULL || D.timer_ev == NULL || event_add(D.wake_ev, NULL) != 0 ||
        event_add(D.timer_ev, &tv) != 0) {
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
        TK_LOG(TK_LOG_INFO,
               "db: %llu acquisitions, %llu waited (%llu ms), %llu timeouts, hand-offs %llu local "
               "%llu remote, %llu connects (%llu ms), %llu connect errors",
               (unsigned long long)st.acquires, (unsigned long long)st.wait_count,
               (unsigned long long)(st.wait_ns / 1000000u), (unsigned long long)st.acquire_timeouts,
               (unsigned long long)st.handoffs_local, (unsigned long long)st.handoffs_remote,
               (unsigned long long)D.nconnects, (unsigned long long)(D.connect_ns / 1000000u),
               (unsigned long long)st.connect_errors);
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
            conn_close(c);
        }
        memset(D.waiters, 0, sizeof(D.waiters));
        tk_broker_reclaim_pid(D.b, getpid());
    }
    D.enabled = 0;
    if (D.wake_ev)
        event_free(D.wake_ev);
    if (D.timer_ev)
        event_free(D.timer_ev);
    D.wake_ev = D.timer_ev = NULL;
}
