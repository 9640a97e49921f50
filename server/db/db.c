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

tk_db_state_t tk_db_state;
tk_db_stmt_t tk_db_stmts[TK_DB_MAX_STMTS];
int tk_db_nstmts;

const char *tk_db_status_name(tk_db_status_t st)
{
    static const char *names[] = {
        "ok",        "database unavailable",   "database timeout", "database error",
        "cancelled", "database not configured"};
    return (unsigned)st < sizeof(names) / sizeof(names[0]) ? names[st] : "?";
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
        return tk_db_note_outcome(tk_db_pipe_query_many(stmt, n, nparams, values, res));
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
        return tk_db_note_outcome(tk_db_pipe_query(stmt, nparams, values, lengths, res, sqlstate));
    tk_db_conn_t *c = tk_db_acquire(&st);
    if (c == NULL)
        return tk_db_note_outcome(st);
    st = tk_db_exec(c, stmt, nparams, values, lengths, res);
    if (sqlstate)
        memcpy(sqlstate, c->sqlstate, 6);
    tk_db_release(c);
    return st;
}

/* Three failures in a row: one slow statement or one full queue is not an outage. */
int tk_db_primary_reachable(void)
{
    return !D.enabled || (D.backoff_ms == 0 && D.fails_in_row < 3);
}

void tk_db_counts(tk_db_counts_t *out)
{
    out->pipelined = D.npiped;
    out->retried = D.nretried;
    out->joined = D.njoined;
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
            tk_db_slot_discard(slot);
        }
    }
    tk_db_give_up_idle();
    tk_db_pipe_share();
}

/* Green thread: one connection and SELECT 1; its outcome resets (or keeps)
 * the unreachable state (tk_db_primary_reachable). */
static void probe_main(void *arg)
{
    tk_db_status_t st;
    PGresult *r = NULL;
    (void)arg;
    tk_db_conn_t *c = tk_db_acquire(&st);
    if (c != NULL) {
        st = tk_db_exec_sql(c, "SELECT 1", &r);
        PQclear(r);
        tk_db_release(c);
    }
    tk_db_note_outcome(st);
    D.probing = 0;
}

/* Every TK_DB_TICK_MS: close idle connections past max_idle_time or
 * max_lifetime, and give up idle ones others are waiting for; probe the
 * database while it is unreachable. */
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
    if (!tk_db_primary_reachable() && !D.probing && ms >= D.probe_next_ms &&
        ms >= D.down_until_ms) {
        D.probe_next_ms = ms + TK_DB_PROBE_MS;
        D.probing = tk_gt_spawn(tk_sched_current(), "db-probe", probe_main, NULL) != NULL;
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
    D.flush_ev = event_new(base, -1, 0, tk_db_pipe_on_flush, NULL);
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
    if (D.wake_ev)
        event_free(D.wake_ev);
    if (D.timer_ev)
        event_free(D.timer_ev);
    if (D.flush_ev)
        event_free(D.flush_ev);
    D.wake_ev = D.timer_ev = D.flush_ev = NULL;
}
