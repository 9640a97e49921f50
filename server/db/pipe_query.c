/* pipe_query.c: the callers' side of the shared connections: queueing, joining identical
 * queries, waiting, deadlines. */
#include "config.h"

#include "db/db_int.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proc/log.h"
#include "runtime/scheduler.h"

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
    if ((it = tk_db_item_get()) == NULL)
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

/* A query past its deadline: not started yet (everything before it on its
 * connection still runs) is an acquire timeout; started, it runs too long:
 * stop it on the server (its connection takes nothing new and is recycled
 * once the rest is answered). */
static tk_db_status_t past_deadline(pipe_item_t *it)
{
    if (it->state == PI_QUEUED || it->started_ms == 0) {
        STAT(acquire_timeouts, 1);
        return TK_DB_UNAVAILABLE;
    }
    STAT(query_timeouts, 1);
    tk_db_pipe_cancel_item(it);
    return TK_DB_TIMEOUT;
}

tk_db_status_t tk_db_pipe_query(int stmt, int nparams, const char *const *values,
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
        tk_db_pipe_dispatch();
        tk_db_pipe_share();
    }
    for (;;) {
        if (me.done)
            break;
        if (me.item->state == PI_QUEUED) {
            tk_db_pipe_dispatch(); /* room may have appeared (a retry put it back) */
            if (me.done)
                break;
        }
        it = me.item;
        if (it->state == PI_QUEUED) {
            if (tk_db_pipe_want_more()) {
                tk_db_status_t gst;
                if (tk_db_pipe_grow(acq_deadline, &gst, &counted) != 0 && D.npipes == 0 &&
                    !me.done && me.item->state == PI_QUEUED) {
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
        int r = tk_db_park(it->state == PI_QUEUED ? TK_GT_WAIT_BROKER : TK_GT_WAIT_DB, deadline);
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
        } else {
            st = past_deadline(it);
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

/* Several pipelined SELECTs for one green thread, all sent at once. */
tk_db_status_t tk_db_pipe_query_many(int stmt, int n, int nparams, const char *const *values,
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
        tk_db_pipe_dispatch();
        tk_db_pipe_share();
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
                st = past_deadline(it);
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
            tk_db_pipe_dispatch();
            if (tk_db_pipe_want_more()) {
                tk_db_status_t gst;
                if (tk_db_pipe_grow(acq_deadline, &gst, &counted) != 0 && D.npipes == 0) {
                    st = gst;
                    break;
                }
                continue;
            }
            if (D.npipes == 0 && deadline > tk_now_ms() + 50)
                deadline = tk_now_ms() + 50; /* nobody to send them: look again soon */
            local_wait_begin(&lw);
        }
        if (tk_db_park(TK_GT_WAIT_DB, deadline) != 0 && errno == ECANCELED)
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
