/* db.c: PostgreSQL through asynchronous libpq on green threads, within the broker's budget:
 * the worker's client (init, events, exit), tk_db_query() and the counters. */
#include "config.h"

#include "db/db_int.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proc/log.h"
#include "runtime/scheduler.h"

tk_db_state_t tk_db_be[TK_DB_MAX_BACKENDS];
tk_db_state_t *tk_db_cur = &tk_db_be[0];
int tk_db_nbe = 1;
tk_dbview_sh_t *tk_db_view;
static tk_broker_sh_t *g_brokers[TK_DB_MAX_BACKENDS]; /* set by tk_db_set_backends() */
static int g_nbrokers;
tk_db_stmt_t tk_db_stmts[TK_DB_MAX_STMTS];
int tk_db_nstmts;

const char *tk_db_status_name(tk_db_status_t st)
{
    static const char *names[] = {
        "ok",        "database unavailable",   "database timeout", "database error",
        "cancelled", "database not configured"};
    return (unsigned)st < sizeof(names) / sizeof(names[0]) ? names[st] : "?";
}

/* db.statements = unnamed (PgBouncer in transaction mode) sends no declared read on the shared
 * pipelined connections: through PgBouncer 1.18, with several Syncs in flight on one client
 * connection, answers crossed to other clients' queries (README, PgBouncer). Every query
 * then takes a connection of its own, one query per round trip. */

/* n queries of stmt on one exclusive connection of the current backend. */
static tk_db_status_t exec_many(int stmt, int n, int nparams, const char *const *values,
                                PGresult **res)
{
    tk_db_status_t st = TK_DB_OK;
    for (int i = 0; i < n; i++)
        res[i] = NULL;
    tk_db_conn_t *c = tk_db_acquire(&st);
    if (c == NULL)
        return tk_db_note_outcome(st);
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

/* One query of stmt on an exclusive connection of the current backend. */
static tk_db_status_t exec_one(int stmt, int nparams, const char *const *values, const int *lengths,
                               PGresult **res, char sqlstate[6])
{
    tk_db_status_t st;
    tk_db_conn_t *c = tk_db_acquire(&st);
    if (c == NULL)
        return tk_db_note_outcome(st);
    st = tk_db_exec(c, stmt, nparams, values, lengths, res);
    if (sqlstate)
        memcpy(sqlstate, c->sqlstate, 6);
    tk_db_release(c);
    return st;
}

/* One declared read (n == 0: tk_db_query()'s single one) on backend s. */
typedef struct {
    int stmt, n, nparams;
    const char *const *values;
    const int *lengths;
    PGresult **res;
    char *sqlstate;
} read_t;

static tk_db_status_t read_on(tk_db_state_t *s, const read_t *q)
{
    tk_db_state_t *old = tk_db_use(s);
    tk_db_route_inflight(s, 1);
    tk_db_status_t st;
    if (s->unnamed)
        st = q->n ? exec_many(q->stmt, q->n, q->nparams, q->values, q->res)
                  : exec_one(q->stmt, q->nparams, q->values, q->lengths, q->res, q->sqlstate);
    else
        st = tk_db_note_outcome(
            q->n ? tk_db_pipe_query_many(q->stmt, q->n, q->nparams, q->values, q->res)
                 : tk_db_pipe_query(q->stmt, q->nparams, q->values, q->lengths, q->res,
                                    q->sqlstate));
    tk_db_route_inflight(s, -1);
    tk_db_use(old);
    return st;
}

/* A declared read where the router says; one that could not run on a replica
 * (down, gone: no connection) runs again on the primary, since reads are
 * re-runnable by declaration, and the replica is skipped for a moment. One
 * sent to the primary only by preference (a cache fill) that finds it lost
 * runs on a replica: no write can happen meanwhile. */
static tk_db_status_t read_routed(const read_t *q)
{
    tk_db_state_t *s = tk_db_route_read();
    tk_db_status_t st = read_on(s, q);
    if (st != TK_DB_UNAVAILABLE)
        return st;
    if (s->idx != 0) {
        tk_db_route_failed(s);
        return read_on(&tk_db_be[0], q);
    }
    tk_db_state_t *r = tk_db_route_read_fallback();
    return r ? read_on(r, q) : st;
}

tk_db_status_t tk_db_query_many(int stmt, int n, int nparams, const char *const *values,
                                PGresult **res)
{
    if (n <= 0)
        return TK_DB_OK;
    if (!tk_db_be[0].enabled) {
        for (int i = 0; i < n; i++)
            res[i] = NULL;
        return TK_DB_DISABLED;
    }
    if (stmt >= 0 && stmt < g_nstmts && (g_stmts[stmt].flags & TK_DB_READ))
        return read_routed(&(read_t){stmt, n, nparams, values, NULL, res, NULL});
    return exec_many(stmt, n, nparams, values, res);
}

tk_db_status_t tk_db_query(int stmt, int nparams, const char *const *values, const int *lengths,
                           PGresult **res, char sqlstate[6])
{
    *res = NULL;
    if (sqlstate)
        sqlstate[0] = '\0';
    if (!tk_db_be[0].enabled)
        return TK_DB_DISABLED;
    if (stmt >= 0 && stmt < g_nstmts && (g_stmts[stmt].flags & TK_DB_READ))
        return read_routed(&(read_t){stmt, 0, nparams, values, lengths, res, sqlstate});
    return exec_one(stmt, nparams, values, lengths, res, sqlstate);
}

/* Three failures in a row: one slow statement or one full queue is not an outage. */
int tk_db_primary_reachable(void)
{
    return tk_db_be_reachable(&tk_db_be[0]);
}

void tk_db_counts(tk_db_counts_t *out)
{
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < tk_db_nbe; i++) {
        out->pipelined += tk_db_be[i].npiped;
        out->retried += tk_db_be[i].nretried;
        out->joined += tk_db_be[i].njoined;
    }
}

void tk_db_set_backends(tk_broker_sh_t *const *brokers, unsigned n, tk_dbview_sh_t *view)
{
    g_nbrokers = 0;
    for (unsigned i = 0; i < n && i < TK_DB_MAX_BACKENDS; i++)
        g_brokers[g_nbrokers++] = brokers[i];
    tk_db_view = view;
}

/* Someone (another worker, the master) granted us slots, or wants our idle
 * connections because its waiters queue. */
static void wake_be(void)
{
    int entry, slot;
    uint64_t ticket;
    while (tk_broker_next_grant(D.b, D.w, &entry, &ticket, &slot)) {
        waiter_t *wt = D.waiters[entry];
        if (wt && wt->ticket == ticket) {
            D.waiters[entry] = NULL;
            wt->done = 1;
            wt->conn = NULL;
            wt->slot = slot;
            tk_gt_unpark(wt->gt);
        } else {
            tk_db_slot_discard(slot);
        }
    }
    tk_db_give_up_idle();
    tk_db_pipe_share();
}

/* Green thread: one connection to the primary and SELECT 1; its outcome
 * resets (or keeps) the unreachable state (tk_db_primary_reachable). */
static void probe_main(void *arg)
{
    tk_db_status_t st;
    PGresult *r = NULL;
    (void)arg;
    tk_db_use(&tk_db_be[0]); /* a green thread's main sets its backend */
    tk_db_conn_t *c = tk_db_acquire(&st);
    if (c != NULL) {
        st = tk_db_exec_sql(c, "SELECT 1", &r);
        PQclear(r);
        tk_db_release(c);
    }
    tk_db_note_outcome(st);
    D.probing = 0;
}

/* One eventfd per worker serves every backend's broker. */
static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    tk_broker_wake_drain(tk_db_be[0].w);
    for (int i = 0; i < tk_db_nbe; i++)
        if (tk_db_be[i].enabled) {
            tk_db_use(&tk_db_be[i]);
            wake_be();
        }
    tk_db_use(&tk_db_be[0]);
}

static void timer_be(void)
{
    tk_db_conn_t **pp = &D.idle;
    uint64_t now = tk_now_ns();
    while (*pp) {
        tk_db_conn_t *c = *pp;
        int lt = 0, old = 0;
        if (tk_db_expired(c, now, &lt))
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
        tk_db_conn_discard(c);
    }
    tk_db_give_up_idle();
    /* Shared connections unused for a while go back to the idle list (and
     * from there to db.max_idle_time); one goes back when others queue. */
    for (tk_db_conn_t *c = D.pipes, *n; c; c = n) {
        n = c->pnext;
        if (c->phead == NULL && D.qhead == NULL &&
            now - c->last_ns > (uint64_t)TK_DB_PIPE_IDLE_MS * 1000000u)
            tk_db_pipe_retire(c);
    }
    tk_db_pipe_share();
    int64_t ms = tk_now_ms();
    /* the primary, while unreachable (replicas have the lag probe) */
    if (D.idx == 0 && !tk_db_be_reachable(&D) && !D.probing && ms >= D.probe_next_ms &&
        ms >= D.down_until_ms) {
        D.probe_next_ms = ms + TK_DB_PROBE_MS;
        D.probing = tk_gt_spawn(tk_sched_current(), "db-probe", probe_main, NULL) != NULL;
    }
}

/* Every TK_DB_TICK_MS: close idle connections past max_idle_time or
 * max_lifetime, and give up idle ones others are waiting for; the lag probe. */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    for (int i = 0; i < tk_db_nbe; i++)
        if (tk_db_be[i].enabled) {
            tk_db_use(&tk_db_be[i]);
            timer_be();
        }
    tk_db_use(&tk_db_be[0]);
    tk_db_probe_tick();
}

/* Set up backend i's client (events of its own: the flush). */
static int init_be(int i, tk_broker_sh_t *b, struct event_base *base, int slot,
                   const tk_conf_t *conf)
{
    tk_db_state_t *s = &tk_db_be[i];
    memset(s, 0, sizeof(*s));
    s->idx = i;
    s->unnamed = strcmp(conf->db_statements, "unnamed") == 0;
    s->base = base;
    s->b = b;
    s->w = slot;
    s->conf = conf;
    s->conninfo = i == 0 ? conf->db_conninfo : conf->db_replica[i - 1];
    s->hostaddr = i == 0 && conf->db_hostaddr[0] ? conf->db_hostaddr : NULL;
    s->gen = tk_broker_worker_attach(b, slot, getpid());
    tk_broker_set_starve(b, (uint64_t)conf->db_acquire_timeout_ms * 750000u);
    s->flush_ev = event_new(base, -1, 0, tk_db_pipe_on_flush, s);
    if (s->flush_ev == NULL)
        return -1;
    s->enabled = 1;
    return 0;
}

int tk_db_worker_init(struct event_base *base, tk_broker_sh_t *b, int slot, const tk_conf_t *conf)
{
    struct timeval tv = {0, TK_DB_TICK_MS * 1000};

    memset(tk_db_be, 0, sizeof(tk_db_be));
    tk_db_cur = &tk_db_be[0];
    tk_db_nbe = 1;
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
    /* the replicas the master set up brokers for (db.replica changes need a restart) */
    int n = 1;
    if (g_nbrokers > 1 && tk_dbview_count(tk_db_view) > 1) {
        n = 1 + conf->db_nreplicas;
        if (n > g_nbrokers)
            n = g_nbrokers;
        if (n > (int)tk_dbview_count(tk_db_view))
            n = (int)tk_dbview_count(tk_db_view);
    }
    for (int i = 0; i < n; i++)
        if (init_be(i, i == 0 ? b : g_brokers[i], base, slot, conf) != 0) {
            TK_LOG(TK_LOG_ERR, "db: event_new() failed");
            tk_db_nbe = i + 1;
            tk_db_worker_fini();
            return -1;
        }
    tk_db_nbe = n;
    D.wake_ev = event_new(base, fd, EV_READ | EV_PERSIST, on_wake, NULL);
    D.timer_ev = event_new(base, -1, EV_PERSIST, on_timer, NULL);
    if (D.wake_ev == NULL || D.timer_ev == NULL || event_add(D.wake_ev, NULL) != 0 ||
        event_add(D.timer_ev, &tv) != 0) {
        TK_LOG(TK_LOG_ERR, "db: event_new() failed");
        tk_db_worker_fini();
        return -1;
    }
    return 0;
}

static void fini_be(void)
{
    if (D.enabled) {
        tk_broker_stats_t st;
        tk_broker_stats(D.b, D.w, &st);
        TK_LOG(
            TK_LOG_INFO,
            "db: backend %d: %llu acquisitions, %llu waited (%llu ms), %llu timeouts, hand-offs "
            "%llu local "
            "%llu remote, %llu connects (%llu ms), %llu connect errors, %llu pipelined queries in "
            "%llu batches, %llu joined; %llu closed backends gone after %llu us on average "
            "(max %llu us), %llu not waited for",
            D.idx, (unsigned long long)st.acquires, (unsigned long long)st.wait_count,
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
            tk_db_conn_close(c, 0);
        }
        while (D.pipes || D.retiring) {
            tk_db_conn_t **l = D.pipes ? &D.pipes : &D.retiring;
            tk_db_conn_t *c = *l;
            *l = c->pnext;
            D.npipes--;
            event_free(c->rev);
            event_free(c->wev);
            while (c->phead) {
                pipe_item_t *it = c->phead;
                c->phead = it->next;
                it->w = NULL; /* the scheduler is gone: nobody to wake */
                tk_db_item_put(it);
            }
            tk_db_conn_close(c, 0);
        }
        tk_db_closing_drain();
        while (D.qhead) {
            pipe_item_t *it = D.qhead;
            D.qhead = it->next;
            it->w = NULL;
            tk_db_item_put(it);
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
    if (D.flush_ev)
        event_free(D.flush_ev);
    D.flush_ev = NULL;
}

void tk_db_worker_fini(void)
{
    tk_db_probe_fini();
    for (int i = tk_db_nbe - 1; i >= 0; i--) {
        tk_db_use(&tk_db_be[i]);
        fini_be();
    }
    tk_db_use(&tk_db_be[0]);
    if (D.wake_ev)
        event_free(D.wake_ev);
    if (D.timer_ev)
        event_free(D.timer_ev);
    D.wake_ev = D.timer_ev = NULL;
}

tk_db_status_t tk_db_write_lsn(uint64_t *lsn)
{
    tk_db_status_t st;
    PGresult *r = NULL;
    *lsn = 0;
    tk_db_conn_t *c = tk_db_acquire(&st); /* the primary's */
    if (c == NULL)
        return st;
    st = tk_db_exec_sql(c, "SELECT pg_current_wal_insert_lsn()::text", &r);
    tk_db_release(c);
    if (st == TK_DB_OK) {
        if (r && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
            st = tk_db_lsn_parse(PQgetvalue(r, 0, 0), (size_t)PQgetlength(r, 0, 0), lsn) == 0
                     ? TK_DB_OK
                     : TK_DB_ERROR;
        else
            st = TK_DB_ERROR;
    }
    PQclear(r);
    return st;
}
