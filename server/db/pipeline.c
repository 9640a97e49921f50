/* pipeline.c: shared connections in libpq pipeline mode: sending, batching, reading, failing. */
#include "config.h"

#include "db/db_int.h"

#include <event2/event.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proc/log.h"
#include "runtime/scheduler.h"

static void pipe_release_if_done(tk_db_conn_t *c);

/* Take c off list *head; 1 if it was there. */
static int pipe_unlink(tk_db_conn_t **head, const tk_db_conn_t *c)
{
    for (tk_db_conn_t **pp = head; *pp; pp = &(*pp)->pnext)
        if (*pp == c) {
            *pp = c->pnext;
            return 1;
        }
    return 0;
}

/* Whether c takes no new queries (it is on D.retiring, not D.pipes). */
static int pipe_is_retiring(const tk_db_conn_t *c)
{
    for (const tk_db_conn_t *p = D.retiring; p; p = p->pnext)
        if (p == c)
            return 1;
    return 0;
}

/* c takes no new queries: from D.pipes to D.retiring (if not there yet). */
static void pipe_set_retiring(tk_db_conn_t *c)
{
    if (pipe_unlink(&D.pipes, c)) {
        c->pnext = D.retiring;
        D.retiring = c;
    }
}

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

pipe_item_t *tk_db_item_get(void)
{
    pipe_item_t *it = D.ifree;
    if (it)
        D.ifree = it->next;
    else if ((it = malloc(sizeof(*it))) == NULL)
        return NULL;
    /* Zero all but the parameter copy (pv, plens, pbuf: written before they
     * are read, for joinable queries only): a query takes one item, and the
     * copy is most of its size. */
    memset(it, 0, offsetof(pipe_item_t, pv));
    it->retried = 0;
    it->aborted = 0;
    it->started_ms = 0;
    it->st = TK_DB_OK;
    it->res = NULL;
    memset(it->sqlstate, 0, sizeof(it->sqlstate));
    return it;
}

void tk_db_item_put(pipe_item_t *it)
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
    tk_db_item_put(it);
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
    tk_db_note_error(c, NULL);
    c->broken = 1;
    pipe_set_retiring(c);
    c->dirty = 0;
    while ((it = c->phead) != NULL) {
        c->phead = it->next;
        if (it->kind != PI_QUERY) {
            tk_db_item_put(it);
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
    tk_db_use(c->be);
    int f = PQflush(c->pg);
    if (f < 0)
        pipe_fail(c);
    else if (f == 0)
        event_del(c->wev);
}

/* Whether c is still one of this worker's pipelined connections (pointer
 * identity only: c is never dereferenced here). */
static int pipe_alive(const tk_db_conn_t *c)
{
    for (const tk_db_conn_t *p = D.pipes; p; p = p->pnext)
        if (p == c)
            return 1;
    return pipe_is_retiring(c);
}

/* Read what arrived and hand results to their waiters. */
static void on_pipe_read(evutil_socket_t fd, short what, void *arg)
{
    tk_db_conn_t *c = arg;
    int done = 0;
    (void)fd;
    (void)what;
    tk_db_use(c->be);
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
                it->st = tk_db_error_status(it->sqlstate);
            }
            PQclear(r);
            continue;
        }
        /* it is complete */
        c->phead = it->next;
        if (c->phead == NULL)
            c->ptail = NULL;
        if (it->kind != PI_QUERY) {
            tk_db_item_put(it);
            continue;
        }
        c->inflight--;
        done++;
        if (it->aborted && it->w && !it->retried && !pipe_is_retiring(c)) {
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
        tk_db_pipe_dispatch();
        /* A send that failed in there failed and released its connection,
         * which may be this one: go on only while c is still one of ours. */
        if (!pipe_alive(c))
            return;
    }
    if (c->phead == NULL && D.qhead == NULL && tk_broker_qlen(D.b) > 0 && !pipe_is_retiring(c)) {
        c->shared_out = 1; /* unused here and others queue: give it back now */
        pipe_set_retiring(c);
    }
    if (pipe_is_retiring(c))
        pipe_release_if_done(c);
}

/* A retiring connection with nothing in flight leaves pipeline mode and is
 * released like an exclusive one (idle here, or to the broker's queue). */
static void pipe_release_if_done(tk_db_conn_t *c)
{
    if (c->phead != NULL || c->dirty)
        return;
    if (pipe_unlink(&D.retiring, c) || pipe_unlink(&D.pipes, c))
        D.npipes--;
    event_free(c->rev);
    event_free(c->wev);
    c->rev = c->wev = NULL;
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
            tk_db_conn_discard(c);
            return;
        }
    }
    tk_db_release(c); /* closes it if broken or dirty */
}

/* Stop sending to c; it is released once its queries are answered. */
void tk_db_pipe_retire(tk_db_conn_t *c)
{
    pipe_set_retiring(c);
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
void tk_db_pipe_dispatch(void)
{
    while (D.qhead) {
        pipe_item_t *it = D.qhead;
        if (it->w == NULL) { /* its waiters gave up */
            unjoinable(it);
            D.qhead = it->next;
            if (D.qhead == NULL)
                D.qtail = NULL;
            D.qlen--;
            tk_db_item_put(it);
            continue;
        }
        /* One whose current query isn't running long (head-of-line
         * blocking) if there is one; among those, one already written to in
         * this loop iteration (dirty) while it has room, so that the
         * iteration's queries leave in as few writes (and backend wake-ups)
         * as possible; else the least loaded. */
        tk_db_conn_t *best = NULL;
        int best_stalled = 0;
        int64_t now = tk_now_ms();
        for (tk_db_conn_t *c = D.pipes; c; c = c->pnext) {
            if (c->inflight >= TK_DB_PIPE_DEPTH)
                continue;
            int st = pipe_stalled(c, now);
            if (best == NULL || st < best_stalled ||
                (st == best_stalled &&
                 (c->dirty > best->dirty ||
                  (c->dirty == best->dirty && c->inflight < best->inflight)))) {
                best = c;
                best_stalled = st;
            }
        }
        if (best == NULL)
            return;
        tk_db_conn_t *c = best;
        const char *name = g_stmts[it->stmt].name;
        if (!(c->prepared & (1ull << it->stmt))) {
            pipe_item_t *p = tk_db_item_get();
            if (p == NULL || !PQsendPrepare(c->pg, name, g_stmts[it->stmt].sql,
                                            g_stmts[it->stmt].nparams, NULL)) {
                if (p)
                    tk_db_item_put(p);
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
void tk_db_pipe_on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tk_db_use(arg);
    D.flush_pending = 0;
    /* retiring ones too: what was sent on them still needs its Sync */
    for (int l = 0; l < 2; l++)
        for (tk_db_conn_t *c = l ? D.retiring : D.pipes, *n; c; c = n) {
            n = c->pnext;
            if (!c->dirty)
                continue;
            c->dirty = 0;
            pipe_item_t *it = tk_db_item_get();
            if (it == NULL || !PQpipelineSync(c->pg)) {
                if (it)
                    tk_db_item_put(it);
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
int tk_db_pipe_grow(int64_t deadline, tk_db_status_t *st, int *waited)
{
    tk_db_conn_t *c = NULL;
    D.opening++;
    if (D.npipes == 0) {
        c = tk_db_acquire_counted(st,
                                  waited); /* a wait is counted there: not again by the caller */
    } else if (D.idle) {
        c = tk_db_acquire(st); /* takes the idle one, never queues */
    } else {
        int slot, kept;
        if (tk_now_ms() >= D.down_until_ms && tk_broker_try_acquire(D.b, D.w, &slot) == 0) {
            c = tk_db_conn_open(slot, deadline, st, &kept);
            if (c == NULL) {
                if (!kept)
                    tk_db_slot_discard(slot);
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
    tk_db_pipe_dispatch();
    return 0;
}

/* Whether the calling waiter should open one more connection. */
int tk_db_pipe_want_more(void)
{
    if (D.opening || D.qhead == NULL)
        return 0;
    if (D.npipes == 0)
        return 1;
    if (D.npipes >= TK_DB_PIPE_MAX)
        return 0;
    int64_t now = tk_now_ms();
    for (tk_db_conn_t *c = D.pipes; c; c = c->pnext)
        if (c->inflight < TK_DB_PIPE_OPEN_AT && !pipe_stalled(c, now))
            return 0;
    return D.idle != NULL ||
           (tk_now_ms() >= D.down_until_ms && __atomic_load_n(&D.b->nfree, __ATOMIC_RELAXED) > 0 &&
            tk_broker_qlen(D.b) == 0);
}

/* Someone queues in the broker (another worker with no connection, or an
 * exclusive acquire): give one shared connection back, the least loaded; the
 * last one only when it is unused or the queue's head is getting old. */
void tk_db_pipe_share(void)
{
    if (D.npipes == 0 || tk_broker_qlen(D.b) == 0 || D.retiring != NULL)
        return; /* (one at a time) */
    tk_db_conn_t *least = NULL;
    for (tk_db_conn_t *c = D.pipes; c; c = c->pnext) {
        if (least == NULL || c->inflight < least->inflight)
            least = c;
    }
    if (D.npipes == 1 && (least->phead != NULL || D.qhead != NULL) &&
        tk_broker_head_age_ns(D.b) < (uint64_t)D.conf->db_acquire_timeout_ms * 250000u)
        return;
    least->shared_out = 1;
    tk_db_pipe_retire(least);
}

/* A sent pipelined query ran past its deadline: cancel it on the server and
 * retire the connection carrying it (it takes nothing new and is recycled
 * once the rest of its batch is answered). */
void tk_db_pipe_cancel_item(const pipe_item_t *it)
{
    for (int l = 0; l < 2; l++)
        for (tk_db_conn_t *c = l ? D.retiring : D.pipes; c; c = c->pnext)
            for (const pipe_item_t *p = c->phead; p; p = p->next)
                if (p == it) {
                    if (l == 0) {
                        tk_db_send_cancel(c);
                        pipe_set_retiring(c);
                    }
                    return;
                }
}
