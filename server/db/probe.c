/* probe.c: replication lag, measured once per instance. The worker holding the dbview's lease
 * runs one green thread that, a few times a second, asks the primary for its WAL position and
 * each replica for its replay position, on connections of its own (application_name
 * tenk-probe, outside the brokers' caps), and publishes role, health and lag in the dbview for
 * every worker's routing and for tenkctl. A holder that dies or stalls loses the lease to the
 * next worker whose timer finds it expired. */
#include "config.h"

#include "db/db_int.h"

#include <errno.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proc/log.h"
#include "runtime/scheduler.h"

#define PROBE_EVERY_MS 200  /* a round: the primary, then each replica */
#define PROBE_WAIT_MS  700  /* connect or answer within this, else the backend is down */
#define PROBE_LEASE_MS 3000 /* renewed every round and between backends */
#define PROBE_RING     64   /* primary positions kept: 12.8 s at 5 per second */

typedef struct {
    PGconn *pg[TK_DB_MAX_BACKENDS];
    tk_gt_t *gt;
    int running, stop;
    /* the primary's positions, oldest first: what a replica has not replayed dates its lag */
    uint64_t ring_lsn[PROBE_RING];
    int64_t ring_ms[PROBE_RING];
    int ring_n, ring_at;
    uint32_t primary_tli;
    uint64_t primary_lsn;                     /* this round's, 0 if the primary did not answer */
    uint64_t last_replay[TK_DB_MAX_BACKENDS]; /* each replica's replay position last round */
    int healthy_replicas;                     /* -1 = not counted yet */
} probe_t;

static probe_t P = {.healthy_replicas = -1};

static void probe_close(int i)
{
    if (P.pg[i]) {
        PQfinish(P.pg[i]);
        P.pg[i] = NULL;
    }
}

/* Connect backend i's probe connection (parks on its socket). 0 or -1. */
static int probe_connect(int i, int64_t deadline)
{
    static const char *const kw[] = {"dbname", "hostaddr", "application_name", NULL};
    const char *const val[] = {tk_db_be[i].conninfo, tk_db_be[i].hostaddr, "tenk-probe", NULL};
    PGconn *pg = PQconnectStartParams(kw, val, 1);
    if (pg == NULL)
        return -1;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    while (PQstatus(pg) != CONNECTION_BAD && st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
        short ev = st == PGRES_POLLING_READING ? EV_READ : EV_WRITE;
        if (tk_gt_wait_fd(PQsocket(pg), ev, TK_GT_WAIT_DB, deadline) != 0)
            break;
        st = PQconnectPoll(pg);
    }
    if (st != PGRES_POLLING_OK || PQsetnonblocking(pg, 1) != 0) {
        PQfinish(pg);
        return -1;
    }
    P.pg[i] = pg;
    return 0;
}

/* One query on backend i's probe connection; the single row's result, or NULL. */
static PGresult *probe_query(int i, const char *sql)
{
    int64_t deadline = tk_now_ms() + PROBE_WAIT_MS;
    if (P.pg[i] == NULL && probe_connect(i, deadline) != 0)
        return NULL;
    PGconn *pg = P.pg[i];
    PGresult *keep = NULL;
    if (!PQsendQuery(pg, sql))
        goto fail;
    for (;;) {
        int f = PQflush(pg);
        if (f < 0)
            goto fail;
        if (f == 1) {
            if (tk_gt_wait_fd(PQsocket(pg), EV_WRITE, TK_GT_WAIT_DB, deadline) != 0)
                goto fail;
            continue;
        }
        if (!PQconsumeInput(pg))
            goto fail;
        while (!PQisBusy(pg)) {
            PGresult *r = PQgetResult(pg);
            if (r == NULL) {
                if (keep && PQresultStatus(keep) == PGRES_TUPLES_OK && PQntuples(keep) == 1)
                    return keep;
                PQclear(keep);
                return NULL;
            }
            if (keep == NULL)
                keep = r;
            else
                PQclear(r);
        }
        if (tk_gt_wait_fd(PQsocket(pg), EV_READ, TK_GT_WAIT_DB, deadline) != 0)
            goto fail;
    }
fail:
    PQclear(keep);
    probe_close(i); /* a connection in an unknown state: the next round starts afresh */
    return NULL;
}

static uint64_t lsn_of(const PGresult *r, int col)
{
    uint64_t lsn = 0;
    if (PQgetisnull(r, 0, col))
        return 0;
    const char *s = PQgetvalue(r, 0, col);
    return tk_db_lsn_parse(s, strlen(s), &lsn) == 0 ? lsn : 0;
}

static void publish(int i, uint32_t health, uint64_t lsn, uint64_t lag_ms, uint32_t tli,
                    int in_recovery)
{
    if (P.stop || tk_gt_cancelled(tk_gt_self()))
        return; /* this worker is leaving: its last, cancelled round says nothing */
    tk_dbview_be_sh_t *b = &tk_db_view->be[i];
    uint32_t was = __atomic_load_n(&b->health, __ATOMIC_RELAXED);
    if (lsn)
        __atomic_store_n(&b->lsn, lsn, __ATOMIC_RELAXED);
    __atomic_store_n(&b->lag_ms, lag_ms, __ATOMIC_RELAXED);
    if (tli)
        __atomic_store_n(&b->timeline, tli, __ATOMIC_RELAXED);
    if (in_recovery >= 0)
        __atomic_store_n(&b->in_recovery, (uint32_t)in_recovery, __ATOMIC_RELAXED);
    if (health != TK_DBVIEW_DOWN) {
        __atomic_store_n(&b->probed_ns, tk_now_ns(), __ATOMIC_RELAXED);
        __atomic_fetch_add(&b->probes, 1, __ATOMIC_RELAXED);
    } else {
        __atomic_fetch_add(&b->probe_errors, 1, __ATOMIC_RELAXED);
    }
    /* the LSN first, the health last: a reader that sees OK sees this round's LSN */
    __atomic_store_n(&b->health, health, __ATOMIC_RELEASE);
    if (was != health) {
        __atomic_fetch_add(&b->changes, 1, __ATOMIC_RELAXED);
        TK_LOG(health == TK_DBVIEW_OK ? TK_LOG_NOTICE : TK_LOG_WARN,
               "db: %s %d (%s) is %s (was %s)%s", i == 0 ? "primary" : "replica", i, b->name,
               tk_dbview_health_name(health), tk_dbview_health_name(was),
               health == TK_DBVIEW_LAGGING ? ": past db.replica_max_lag" : "");
    }
}

static void probe_primary(void)
{
    PGresult *r = probe_query(
        0, "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,"
           " pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN NULL ELSE"
           " ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END");
    P.primary_lsn = 0;
    if (r == NULL) {
        publish(0, TK_DBVIEW_DOWN, 0, 0, 0, -1);
        return;
    }
    int rec = PQgetvalue(r, 0, 1)[0] == 't';
    uint64_t lsn = lsn_of(r, 0);
    uint32_t tli = PQgetisnull(r, 0, 2) ? 0 : (uint32_t)strtoul(PQgetvalue(r, 0, 2), NULL, 10);
    PQclear(r);
    if (rec || lsn == 0) {
        /* not the primary (yet): a multi-host db.primary finds the new one on reconnect */
        probe_close(0);
        publish(0, TK_DBVIEW_WRONG_ROLE, 0, 0, 0, rec);
        return;
    }
    if (P.primary_tli && tli && tli != P.primary_tli)
        TK_LOG(TK_LOG_NOTICE, "db: the primary is now on timeline %u (was %u): a failover",
               (unsigned)tli, (unsigned)P.primary_tli);
    if (tli)
        P.primary_tli = tli;
    P.primary_lsn = lsn;
    int k = (P.ring_at + P.ring_n) % PROBE_RING;
    if (P.ring_n == PROBE_RING)
        P.ring_at = (P.ring_at + 1) % PROBE_RING;
    else
        P.ring_n++;
    P.ring_lsn[k] = lsn;
    P.ring_ms[k] = tk_now_ms();
    publish(0, TK_DBVIEW_OK, lsn, 0, tli, 0);
}

/* How long a replica at replay position lsn has been behind: the age of the oldest primary
 * position it has not replayed (0 if it has them all). Clock-free, and idle-safe: with no
 * writes nothing is stale, whatever pg_last_xact_replay_timestamp() says. */
static uint64_t lag_of(uint64_t lsn, int64_t now)
{
    for (int j = 0; j < P.ring_n; j++) {
        int k = (P.ring_at + j) % PROBE_RING;
        if (P.ring_lsn[k] > lsn)
            return now > P.ring_ms[k] ? (uint64_t)(now - P.ring_ms[k]) : 0;
    }
    return 0;
}

static void probe_replica(int i)
{
    PGresult *r = probe_query(i, "SELECT pg_last_wal_replay_lsn()::text, pg_is_in_recovery(),"
                                 " (SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1)");
    if (r == NULL) {
        publish(i, TK_DBVIEW_DOWN, 0, 0, 0, -1);
        return;
    }
    int rec = PQgetvalue(r, 0, 1)[0] == 't';
    uint64_t lsn = lsn_of(r, 0);
    uint32_t tli = PQgetisnull(r, 0, 2) ? 0 : (uint32_t)strtoul(PQgetvalue(r, 0, 2), NULL, 10);
    PQclear(r);
    if (!rec) {
        publish(i, TK_DBVIEW_WRONG_ROLE, 0, 0, 0, 0); /* promoted, or a lone server */
        return;
    }
    if (tli && P.primary_tli && tli != P.primary_tli) {
        publish(i, TK_DBVIEW_WRONG_ROLE, lsn, 0, tli, 1); /* follows another timeline */
        return;
    }
    /* Had replayed, a round ago, WAL the primary has not written even now: it holds history
     * the primary does not (an old primary made a standby without pg_rewind, a replica that
     * was ahead of the one promoted), whatever its WAL receiver says, if anything. */
    uint64_t before = P.last_replay[i];
    P.last_replay[i] = lsn;
    if (before && P.primary_lsn && before > P.primary_lsn) {
        publish(i, TK_DBVIEW_WRONG_ROLE, lsn, 0, tli, 1);
        return;
    }
    uint64_t lag = lag_of(lsn, tk_now_ms());
    /* With the primary lost, its last positions still date the lag: reads keep flowing
     * from replicas that had replayed them. */
    uint64_t max = __atomic_load_n(&tk_db_view->max_lag_ms, __ATOMIC_RELAXED);
    publish(i, lag > max ? TK_DBVIEW_LAGGING : TK_DBVIEW_OK, lsn, lag, tli, 1);
}

static void count_healthy(void)
{
    int n = 0;
    if (P.stop || tk_gt_cancelled(tk_gt_self()))
        return;
    for (int i = 1; i < tk_db_nbe; i++)
        if (__atomic_load_n(&tk_db_view->be[i].health, __ATOMIC_RELAXED) == TK_DBVIEW_OK)
            n++;
    if (tk_db_nbe > 1 && n == 0 && P.healthy_replicas != 0)
        TK_LOG(TK_LOG_WARN, "db: no healthy replica: reads go to the primary");
    else if (n > 0 && P.healthy_replicas == 0)
        TK_LOG(TK_LOG_NOTICE, "db: %d healthy replica(s): reads go to the replicas again", n);
    P.healthy_replicas = n;
}

static int renew(void)
{
    return tk_dbview_lease(tk_db_view, getpid(), tk_now_ns(), PROBE_LEASE_MS * 1000000ull);
}

static void probe_main(void *arg)
{
    (void)arg;
    TK_LOG(TK_LOG_INFO, "db: this worker measures the replicas' lag (probe lease)");
    while (!P.stop && renew()) {
        int64_t t0 = tk_now_ms();
        probe_primary();
        for (int i = 1; i < tk_db_nbe && !P.stop && renew(); i++)
            probe_replica(i);
        count_healthy();
        int64_t left = PROBE_EVERY_MS - (tk_now_ms() - t0);
        if (P.stop || tk_gt_sleep_ms(left > 10 ? left : 10) != 0)
            break;
    }
    for (int i = 0; i < TK_DB_MAX_BACKENDS; i++)
        probe_close(i);
    P.running = 0;
    P.gt = NULL;
}

void tk_db_probe_tick(void)
{
    /* only with replicas: a primary-only instance opens nothing more than before */
    if (P.running || P.stop || tk_db_view == NULL || !tk_db_be[0].enabled || tk_db_nbe <= 1)
        return;
    if (!tk_dbview_lease(tk_db_view, getpid(), tk_now_ns(), PROBE_LEASE_MS * 1000000ull))
        return;
    tk_sched_t *s = tk_sched_current();
    if (s == NULL)
        return;
    P.gt = tk_gt_spawn(s, "db-probe", probe_main, NULL);
    P.running = P.gt != NULL;
    if (!P.running)
        tk_dbview_unlease(tk_db_view, getpid());
}

void tk_db_probe_fini(void)
{
    P.stop = 1;
    if (P.running && P.gt)
        tk_gt_cancel(P.gt);
    for (int i = 0; i < TK_DB_MAX_BACKENDS; i++)
        probe_close(i);
    if (tk_db_view)
        tk_dbview_unlease(tk_db_view, getpid());
}
