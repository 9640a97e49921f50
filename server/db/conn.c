/* conn.c: a connection's life: open (broker slot, libpq connect), close (waiting for the
 * backend to exit), reconnect, cancel, and the statement table. */
#include "config.h"

#include "db/db_int.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proc/log.h"
#include "runtime/scheduler.h"

static void hand_local(int entry, tk_db_conn_t *c, int slot);

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

/* What the broker said about a slot or connection we gave up. */
void tk_db_dispose(tk_broker_rel_t r, int entry, int wake, tk_db_conn_t *c, int slot)
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
        tk_db_conn_close(c, 1);
        break;
    case TK_BROKER_CLOSE_MOVE:
        /* for another worker's waiter: it gets the slot (TO_REMOTE from
         * tk_broker_free_slot()) once this backend is gone */
        tk_db_conn_close(c, 1);
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
        tk_db_slot_discard(slot);
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
    tk_db_use(k->be);
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
        k->be = tk_db_cur;
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
        tk_db_slot_discard(slot);
}

/* Close the libpq side of c and free it. free_slot: its slot goes back to
 * the broker once the backend has exited (else the slot is the caller's). */
void tk_db_conn_close(tk_db_conn_t *c, int free_slot)
{
    PGconn *pg = c->pg;
    int slot = free_slot ? c->slot : -1;
    c->pg = NULL;
    pg_close(pg, slot); /* (c is still there for libpq's notice receiver) */
    free(c);
}

/* Close c and give its slot back (to the queue's head if anyone waits) once
 * its backend has exited, so the cap holds in pg_stat_activity too. */
void tk_db_conn_discard(tk_db_conn_t *c)
{
    tk_db_conn_close(c, 1);
}

/* A slot with no connection that nobody here wants any more. */
void tk_db_slot_discard(int slot)
{
    int entry, wake;
    tk_broker_rel_t r = tk_broker_free_slot(D.b, D.w, slot, &entry, &wake);
    tk_db_dispose(r, entry, wake, NULL, slot);
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
            tk_db_slot_discard(slot);
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
tk_db_status_t tk_db_error_status(const char *sqlstate)
{
    if (sqlstate && (strncmp(sqlstate, "57", 2) == 0 || strncmp(sqlstate, "08", 2) == 0))
        return TK_DB_UNAVAILABLE;
    return TK_DB_ERROR;
}

void tk_db_note_error(tk_db_conn_t *c, const PGresult *r)
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
        if (tk_db_wait_fd(PQsocket(c->pg), ev, TK_GT_WAIT_DB, deadline_ms) != 0)
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
    tk_db_use(c->be);
    int r = connect_poll(c, tk_now_ms() + TK_DB_CONNECT_MS);
    if (r != 0) {
        /* -2: no answer within TK_DB_CONNECT_MS (a host cut off drops the
         * SYNs; libpq would wait for the kernel's retries): a failure too */
        if (r == -1 || r == -2)
            connect_failed(c);
        tk_db_conn_discard(c);
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
tk_db_conn_t *tk_db_conn_open(int slot, int64_t deadline_ms, tk_db_status_t *st, int *kept)
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
    c->be = tk_db_cur;
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
     * Placed before the conninfo, so an "options" there overrides it.
     * db.statements = unnamed sets no session state: PgBouncer refuses a
     * startup "options" ("unsupported startup parameter"), and an unnamed
     * statement is planned for its parameters anyway. */
    static const char *const kw[] = {"options", "dbname", "hostaddr", NULL};
    const char *const val[] = {"-c plan_cache_mode=force_generic_plan", D.conninfo, D.hostaddr,
                               NULL};
    int skip = D.unnamed ? 1 : 0;
    c->pg = PQconnectStartParams(kw + skip, val + skip, 1);
    c->poll = PGRES_POLLING_WRITING;
    if (c->pg)
        PQsetNoticeReceiver(c->pg, on_notice, c);
    if (c->pg == NULL || PQstatus(c->pg) == CONNECTION_BAD) {
        connect_failed(c);
        tk_db_conn_close(c, 0); /* no socket, or nothing on the server: nothing to wait for */
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
        tk_db_conn_close(c, 1);
        return NULL;
    }
    tk_db_conn_close(c, 0);
    return NULL;
}

/* Whether an idle connection is still alive: one non-blocking read (EAGAIN
 * normally) finds a backend the server ended while it sat idle; its FATAL
 * message is parsed (PQisBusy()) and goes to on_notice(), and a second read
 * then sees the end of the stream. A dead one is not handed out. */
int tk_db_idle_alive(tk_db_conn_t *c)
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

int tk_db_expired(const tk_db_conn_t *c, uint64_t now, int *why_lifetime)
{
    *why_lifetime = 0;
    if (D.conf->db_max_lifetime_ms > 0 &&
        now - c->created_ns > (uint64_t)D.conf->db_max_lifetime_ms * 1000000u) {
        *why_lifetime = 1;
        return 1;
    }
    return 0;
}

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
void tk_db_send_cancel(tk_db_conn_t *c)
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

/* Replace a connection that turned out dead (the database restarted while
 * it was idle) by a new one on the same slot. */
int tk_db_reconnect_in_place(tk_db_conn_t *c, int64_t deadline)
{
    tk_db_status_t st;
    /* The old backend must be gone before a new one starts on this slot:
     * park until its socket ends (usually at once: it died). */
    int fd = PQsocket(c->pg) >= 0 ? fcntl(PQsocket(c->pg), F_DUPFD_CLOEXEC, 0) : -1;
    PQfinish(c->pg);
    c->pg = NULL;
    if (fd >= 0) {
        int64_t until = tk_now_ms() + TK_DB_GONE_MS;
        while (closing_read(fd) == 1 && tk_db_wait_fd(fd, EV_READ, TK_GT_WAIT_DB, until) == 0)
            ;
        close(fd);
    }
    STAT(open, -1);
    /* (no background finish here: c keeps the slot) */
    tk_db_conn_t *n = tk_db_conn_open(c->slot, deadline, &st, NULL);
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

/* Others queue while we keep idle connections: give up those idle for
 * longer than the grace (a just-released one is likely to be wanted here
 * again soon, and moving it costs two backend starts). */
void tk_db_give_up_idle(void)
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
        tk_db_conn_discard(c);
    }
}

/* At exit (the loop has stopped, so blocking is fine): wait up to
 * TK_DB_GONE_MS in all for the backends of the connections closed so far,
 * so that the slots the reclaim then frees are free at the server too. The
 * slots are left to that reclaim. */
void tk_db_closing_drain(void)
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
