/* exclusive.c: a connection for one green thread: tk_db_acquire(), tk_db_exec(), tk_db_release().
 */
#include "config.h"

#include "db/db_int.h"

#include <errno.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proc/log.h"
#include "runtime/scheduler.h"

/* tk_db_acquire(); *waited (if not NULL) set to 1 when it queued in the
 * broker (and counted the wait). */
tk_db_conn_t *tk_db_acquire_counted(tk_db_status_t *st, int *waited)
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
        if (tk_db_expired(c, tk_now_ns(), &lt) || !tk_db_idle_alive(c)) {
            if (lt)
                STAT(max_lifetime_closed, 1);
            tk_db_conn_discard(c);
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
        int r = tk_db_park(TK_GT_WAIT_BROKER, deadline);
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
                tk_db_slot_discard(wt.slot);
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
    tk_db_conn_t *c = tk_db_conn_open(slot, deadline, st, &kept);
    if (c == NULL) {
        if (!kept)
            tk_db_slot_discard(slot);
        return NULL;
    }
    STAT(in_use, 1);
    STAT(acquires, 1);
    return c;
}

tk_db_conn_t *tk_db_acquire(tk_db_status_t *st)
{
    /* a connection of its own: writes, transactions, so the primary; the
     * request's later reads follow it there */
    tk_db_state_t *old = tk_db_use(&tk_db_be[0]);
    tk_db_route_wrote();
    tk_db_conn_t *c = tk_db_acquire_counted(st, NULL);
    tk_db_use(old);
    return c;
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
        if (tk_db_wait_fd(fd, EV_READ | EV_WRITE, TK_GT_WAIT_DB, deadline) != 0)
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
                tk_db_note_error(c, r);
                st = tk_db_error_status(c->sqlstate);
                PQclear(keep);
                keep = NULL;
            }
            PQclear(r);
        }
        if (tk_db_wait_fd(fd, EV_READ, TK_GT_WAIT_DB, deadline) != 0)
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
    tk_db_note_error(c, NULL);
    c->broken = 1;
    c->in_flight = 0;
    return TK_DB_UNAVAILABLE;
}

static tk_db_status_t exec_once(tk_db_conn_t *c, int stmt, int nparams, const char *const *values,
                                const int *lengths, PGresult **res, int64_t deadline)
{
    const char *name = g_stmts[stmt].name;
    tk_db_status_t st;

    if (D.unnamed) {
        /* Parse, Bind, Execute of the unnamed statement in one round trip:
         * nothing outlives the transaction (PgBouncer's transaction mode). */
        if (!PQsendQueryParams(c->pg, g_stmts[stmt].sql, nparams, NULL, values, lengths, NULL, 0))
            goto broken;
        c->in_flight = 1;
        return collect(c, deadline, res);
    }
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
    tk_db_note_error(c, NULL);
    c->broken = 1;
    return TK_DB_UNAVAILABLE;
}

static tk_db_status_t exec_in(tk_db_conn_t *c, int stmt, int nparams, const char *const *values,
                              const int *lengths, PGresult **res);

tk_db_status_t tk_db_exec(tk_db_conn_t *c, int stmt, int nparams, const char *const *values,
                          const int *lengths, PGresult **res)
{
    tk_db_state_t *old = tk_db_use(c->be);
    tk_db_status_t st = exec_in(c, stmt, nparams, values, lengths, res);
    tk_db_use(old);
    return st;
}

static tk_db_status_t exec_in(tk_db_conn_t *c, int stmt, int nparams, const char *const *values,
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
        if (tk_db_reconnect_in_place(c, deadline) == 0) {
            D.nretried++;
            st = exec_once(c, stmt, nparams, values, lengths, res, deadline);
        }
    }
    c->fresh = 0;
    return tk_db_note_outcome(st);
}

static tk_db_status_t exec_sql_in(tk_db_conn_t *c, const char *sql, PGresult **res);

tk_db_status_t tk_db_exec_sql(tk_db_conn_t *c, const char *sql, PGresult **res)
{
    tk_db_state_t *old = tk_db_use(c->be);
    tk_db_status_t st = exec_sql_in(c, sql, res);
    tk_db_use(old);
    return st;
}

static tk_db_status_t exec_sql_in(tk_db_conn_t *c, const char *sql, PGresult **res)
{
    int64_t deadline = tk_now_ms() + D.conf->db_query_timeout_ms;
    PGresult *r = NULL;
    tk_db_status_t st;

    c->fresh = 0;
    c->sqlstate[0] = '\0';
    if (c->broken || c->in_flight)
        return TK_DB_ERROR;
    if (!PQsendQuery(c->pg, sql)) {
        tk_db_note_error(c, NULL);
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

/* Green thread: wait for an abandoned query to end, then release normally. */
static void drain_main(void *arg)
{
    tk_db_conn_t *c = arg;
    tk_db_use(c->be);
    tk_db_send_cancel(c);
    tk_db_status_t st = collect(c, tk_now_ms() + TK_DB_DRAIN_MS, NULL);
    (void)st;
    if (c->in_flight || c->broken) {
        STAT(errors_closed, 1);
        tk_db_conn_discard(c);
        return;
    }
    STAT(in_use, 1); /* tk_db_release() takes it off again */
    tk_db_release(c);
}

static void release_in(tk_db_conn_t *c);

void tk_db_release(tk_db_conn_t *c)
{
    if (c == NULL)
        return;
    tk_db_state_t *old = tk_db_use(c->be);
    release_in(c);
    tk_db_use(old);
}

static void release_in(tk_db_conn_t *c)
{
    int entry, wake, lt;

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
        tk_db_conn_discard(c);
        return;
    }
    if (tk_db_expired(c, tk_now_ns(), &lt)) {
        STAT(max_lifetime_closed, 1);
        tk_db_conn_discard(c);
        return;
    }
    tk_broker_rel_t r = tk_broker_release(D.b, D.w, c->slot, &entry, &wake);
    tk_db_dispose(r, entry, wake, c, c->slot);
}
