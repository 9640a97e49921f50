/* test_db.c: the db client against a real PostgreSQL (TENK_DB): only statements declared
 * TK_DB_READ share pipelined connections or are re-run, whatever their SQL looks like; joining
 * identical queries, aborted batches, a cancel past db.query_timeout. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <cmocka.h>
#include <event2/event.h>

#include "shm/broker.h"
#include "proc/conf.h"
#include "db/db.h"
#include "runtime/scheduler.h"

/* cmocka's failures longjmp, which must not cross a coroutine stack: green
 * threads record the first failure here and return; the test asserts after. */
static char g_fail[512];
#define CHECKF(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            if (!g_fail[0]) {                                                                      \
                int n_ = snprintf(g_fail, sizeof(g_fail), "%s:%d: ", __FILE__, __LINE__);          \
                snprintf(g_fail + n_, sizeof(g_fail) - (size_t)n_, __VA_ARGS__);                   \
            }                                                                                      \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#define NCALLS 8 /* identical queries queued at once */

/* The wake-up eventfd of worker 0, once for every test. */
static void need_wake(void)
{
    static int once;
    if (!once) {
        assert_int_equal(tk_broker_wake_create(1), 0);
        once = 1;
    }
}

/* What the SQL-text heuristic got wrong: locking reads it did not see, and a
 * SELECT with a side effect (it sets session state on whatever connection). */
static const char *const k_sql[] = {
    "SELECT id FROM users WHERE id = $1 FOR KEY SHARE",
    "SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE",
    "SELECT id FROM users WHERE id = $1\nFOR UPDATE",
    "SELECT set_config('tenk.test_db', $1, false)",
};

typedef struct {
    int stmt;
    const char *param;
    tk_db_status_t want;
    int done;
} call_t;

typedef struct {
    int failing; /* a declared read that fails for "0": aborts the rest of its batch */
    int stmt;    /* the statement under test */
    unsigned flags;
    tk_db_counts_t before, after;
} case_t;

static void run_call(void *arg)
{
    call_t *c = arg;
    const char *v[1] = {c->param};
    PGresult *res = NULL;
    char sqlstate[6] = "";
    tk_db_status_t st = tk_db_query(c->stmt, 1, v, NULL, &res, sqlstate);
    PQclear(res);
    CHECKF(st == c->want, "stmt %d (%s): %s (sqlstate %s), want %s", c->stmt, c->param,
           tk_db_status_name(st), sqlstate, tk_db_status_name(c->want));
    c->done = 1;
}

/* One batch: the failing read first, the statement under test right behind
 * it, both started in the same loop iteration (so, pipelined, in one batch). */
static void body(void *arg)
{
    case_t *k = arg;
    call_t warm = {k->failing, "1", TK_DB_OK, 0};
    run_call(&warm); /* a shared connection exists, and the failing statement is prepared */
    CHECKF(warm.done, "warm-up failed");
    call_t a = {k->failing, "0", TK_DB_ERROR, 0};
    call_t b = {k->stmt, "1", TK_DB_OK, 0};
    tk_gt_t *ga = tk_gt_spawn(tk_sched_current(), "a", run_call, &a);
    tk_gt_t *gb = tk_gt_spawn(tk_sched_current(), "b", run_call, &b);
    CHECKF(ga && gb, "tk_gt_spawn failed");
    tk_gt_joinable(ga);
    tk_gt_joinable(gb);
    tk_db_counts(&k->before);
    tk_gt_join(ga);
    tk_gt_join(gb);
    tk_db_counts(&k->after);
    CHECKF(a.done && b.done, "a call failed");
}

/* db.statements for the next with_client() (NULL: the default). */
static const char *g_statements;

/* Run fn on a green thread of a fresh db client (no connection yet), with
 * db.query_timeout query_timeout_ms (0: the default). */
static void with_client(const char *db, int query_timeout_ms, tk_gt_fn fn, void *arg)
{
    tk_broker_sh_t *b =
        mmap(NULL, sizeof(*b), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(b != MAP_FAILED);
    assert_int_equal(tk_broker_sh_init(b, 4), 0);
    tk_conf_t conf;
    tk_conf_defaults(&conf);
    snprintf(conf.db_conninfo, sizeof(conf.db_conninfo), "%s", db);
    if (query_timeout_ms > 0)
        conf.db_query_timeout_ms = query_timeout_ms;
    if (g_statements)
        snprintf(conf.db_statements, sizeof(conf.db_statements), "%s", g_statements);
    struct event_base *base = event_base_new();
    tk_sched_opts_t so;
    tk_sched_opts_default(&so);
    so.stack_size = 256 * 1024;
    tk_sched_t *s = tk_sched_new(base, &so);
    assert_non_null(s);
    assert_int_equal(tk_db_worker_init(base, b, 0, &conf), 0);
    g_fail[0] = '\0';
    assert_non_null(tk_gt_spawn(s, "test", fn, arg));
    int r = tk_sched_run(s);
    tk_db_worker_fini();
    tk_sched_free(s);
    event_base_free(base);
    munmap(b, sizeof(*b));
    if (r != 0 || g_fail[0])
        fail_msg("run %d: %s", r, g_fail);
}

static void run_case(const char *db, const char *sql, unsigned flags, tk_db_counts_t *delta)
{
    case_t k = {0};
    k.failing = tk_db_stmt("SELECT 1 / $1::int", 1, TK_DB_READ);
    k.stmt = tk_db_stmt(sql, 1, flags);
    k.flags = flags;
    assert_true(k.failing >= 0 && k.stmt >= 0);
    with_client(db, 0, body, &k);
    delta->pipelined = k.after.pipelined - k.before.pipelined;
    delta->retried = k.after.retried - k.before.retried;
}

static void test_declared_reads(void **state)
{
    (void)state;
    const char *db = getenv("TENK_DB");
    if (!db || !db[0])
        skip(); /* needs the devenv's PostgreSQL */
    need_wake();
    for (size_t i = 0; i < sizeof(k_sql) / sizeof(k_sql[0]); i++) {
        tk_db_counts_t d;
        /* not declared: runs alone on a connection of its own, never re-run */
        run_case(db, k_sql[i], 0, &d);
        if (d.pipelined != 1 || d.retried != 0)
            fail_msg("undeclared %s: %llu pipelined (want 1: the failing read only), %llu "
                     "retried (want 0)",
                     k_sql[i], (unsigned long long)d.pipelined, (unsigned long long)d.retried);
        /* declared a read: shares the batch, is aborted with it and re-run */
        run_case(db, k_sql[i], TK_DB_READ, &d);
        if (d.pipelined < 2 || d.retried != 1)
            fail_msg("declared %s: %llu pipelined (want >= 2), %llu retried (want 1)", k_sql[i],
                     (unsigned long long)d.pipelined, (unsigned long long)d.retried);
    }
}

static void test_flags(void **state)
{
    (void)state;
    /* joinable means nothing without read-only */
    assert_int_equal(tk_db_stmt("SELECT 2", 0, TK_DB_JOINABLE), -1);
    /* the same SQL with other flags is another statement */
    int a = tk_db_stmt("SELECT 3", 0, TK_DB_READ);
    int b = tk_db_stmt("SELECT 3", 0, TK_DB_READ | TK_DB_JOINABLE);
    int c = tk_db_stmt("SELECT 3", 0, TK_DB_READ);
    assert_true(a >= 0 && b >= 0);
    assert_int_not_equal(a, b);
    assert_int_equal(a, c);
}

/* --- the shared pipelined connections ------------------------------------------------- */

/* Every execution of these advances the sequence by one: a count kept by the
 * server. (Declaring nextval() a read is a lie told only here, to count.) */
#define NEXT_SQL "SELECT nextval('tk_test_pipe_seq') + 0 * $1::bigint"
static int s_joinable, s_plain, s_last, s_fail, s_sleep_pipe, s_sleep_excl, s_active;

static void register_stmts(void)
{
    s_joinable = tk_db_stmt(NEXT_SQL, 1, TK_DB_READ | TK_DB_JOINABLE);
    s_plain = tk_db_stmt(NEXT_SQL, 1, TK_DB_READ);
    s_last = tk_db_stmt("SELECT last_value FROM tk_test_pipe_seq WHERE $1::int = 1", 1, 0);
    s_fail = tk_db_stmt("SELECT 1 / $1::int", 1, TK_DB_READ);
    s_sleep_pipe =
        tk_db_stmt("SELECT pg_sleep($1::float8) /* tk_test_cancel_pipe */", 1, TK_DB_READ);
    s_sleep_excl = tk_db_stmt("SELECT pg_sleep($1::float8) /* tk_test_cancel_excl */", 1, 0);
    s_active = tk_db_stmt("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
                          "pid <> pg_backend_pid() AND query LIKE $1",
                          1, 0);
}

static const char *need_db(void)
{
    const char *db = getenv("TENK_DB");
    if (!db || !db[0])
        return NULL;
    static int once;
    need_wake();
    if (!once) {
        register_stmts();
        once = 1;
    }
    return db;
}

/* An integer result of stmt with parameter p, or -1 (and g_fail set). */
static long long query_int(int stmt, const char *p, tk_db_status_t *st)
{
    const char *v[1] = {p};
    PGresult *res = NULL;
    long long n = -1;
    *st = tk_db_query(stmt, 1, v, NULL, &res, NULL);
    if (*st == TK_DB_OK && PQntuples(res) == 1)
        n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return n;
}

/* --- joining ------------------------------------------------------------------------------ */

static void seq_setup(void *arg)
{
    long long *last = arg;
    tk_db_status_t st;
    tk_db_conn_t *c = tk_db_acquire(&st);
    CHECKF(c, "acquire: %s", tk_db_status_name(st));
    st = tk_db_exec_sql(c, "SET client_min_messages = warning", NULL); /* "already exists" */
    if (st == TK_DB_OK)
        st = tk_db_exec_sql(c, "CREATE SEQUENCE IF NOT EXISTS tk_test_pipe_seq", NULL);
    if (st == TK_DB_OK)
        st = tk_db_exec_sql(c, "SELECT nextval('tk_test_pipe_seq')", NULL); /* last_value counts */
    tk_db_release(c);
    CHECKF(st == TK_DB_OK, "sequence: %s", tk_db_status_name(st));
    *last = query_int(s_last, "1", &st);
    CHECKF(st == TK_DB_OK && *last > 0, "last_value: %s", tk_db_status_name(st));
}

typedef struct {
    int stmt;
    const char *param; /* NULL: "7" */
    tk_db_status_t st;
    long long value;
} pcall_t;

typedef struct {
    int stmt;
    pcall_t calls[NCALLS];
    tk_db_counts_t before, after;
    long long last;
} same_t;

static void pcall_run(void *arg)
{
    pcall_t *c = arg;
    c->value = query_int(c->stmt, c->param ? c->param : "7", &c->st);
}

/* NCALLS identical queries started in one loop iteration, while the client
 * has no connection yet: all wait in its queue until the first connects. */
static void same_queries(void *arg)
{
    same_t *k = arg;
    tk_gt_t *gt[NCALLS];
    tk_db_counts(&k->before);
    for (int i = 0; i < NCALLS; i++) {
        k->calls[i].stmt = k->stmt;
        gt[i] = tk_gt_spawn(tk_sched_current(), "q", pcall_run, &k->calls[i]);
        CHECKF(gt[i], "tk_gt_spawn failed");
        tk_gt_joinable(gt[i]);
    }
    for (int i = 0; i < NCALLS; i++)
        tk_gt_join(gt[i]);
    tk_db_counts(&k->after);
    for (int i = 0; i < NCALLS; i++)
        CHECKF(k->calls[i].st == TK_DB_OK, "call %d: %s", i, tk_db_status_name(k->calls[i].st));
    tk_db_status_t st;
    k->last = query_int(s_last, "1", &st);
    CHECKF(st == TK_DB_OK, "last_value: %s", tk_db_status_name(st));
}

static void test_join_identical(void **state)
{
    (void)state;
    const char *db = need_db();
    if (db == NULL)
        skip(); /* needs the devenv's PostgreSQL */
    long long last = 0;
    same_t k = {.stmt = s_joinable};
    with_client(db, 0, seq_setup, &last);
    with_client(db, 0, same_queries, &k);
    /* one execution on the server, one query sent, everyone the same row */
    assert_int_equal(k.last - last, 1);
    assert_int_equal(k.after.pipelined - k.before.pipelined, 1);
    assert_int_equal(k.after.joined - k.before.joined, NCALLS - 1);
    for (int i = 0; i < NCALLS; i++)
        assert_int_equal(k.calls[i].value, k.last);
}

static void test_not_joinable_each_run(void **state)
{
    (void)state;
    const char *db = need_db();
    if (db == NULL)
        skip();
    long long last = 0;
    same_t k = {.stmt = s_plain};
    with_client(db, 0, seq_setup, &last);
    with_client(db, 0, same_queries, &k);
    /* declared a read but not joinable: each one executed */
    assert_int_equal(k.last - last, NCALLS);
    assert_int_equal(k.after.pipelined - k.before.pipelined, NCALLS);
    assert_int_equal(k.after.joined - k.before.joined, 0);
    for (int i = 0; i < NCALLS; i++)
        for (int j = 0; j < i; j++)
            assert_int_not_equal(k.calls[i].value, k.calls[j].value);
}

/* --- db.statements ---------------------------------------------------------------------------- */

typedef struct {
    long long value, named;
    char plan_cache_mode[32];
    tk_db_counts_t c0, c1;
} stmts_t;

/* A declared read through tk_db_query(), then on a connection of its own a statement run
 * with tk_db_exec() and what that connection holds: named statements, plan_cache_mode. */
static void statements_body(void *arg)
{
    stmts_t *u = arg;
    tk_db_status_t st;
    PGresult *r = NULL;
    const char *v[1] = {"1"};
    tk_db_counts(&u->c0);
    u->value = query_int(s_fail, "1", &st);
    CHECKF(st == TK_DB_OK, "read: %s", tk_db_status_name(st));
    tk_db_counts(&u->c1);
    tk_db_conn_t *c = tk_db_acquire(&st);
    CHECKF(c != NULL, "acquire: %s", tk_db_status_name(st));
    st = tk_db_exec(c, s_fail, 1, v, NULL, &r);
    PQclear(r);
    if (st == TK_DB_OK)
        st = tk_db_exec_sql(c, "SELECT count(*) FROM pg_prepared_statements", &r);
    if (st == TK_DB_OK) {
        u->named = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        PQclear(r);
        st = tk_db_exec_sql(c, "SHOW plan_cache_mode", &r);
    }
    if (st == TK_DB_OK) {
        snprintf(u->plan_cache_mode, sizeof(u->plan_cache_mode), "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    tk_db_release(c);
    CHECKF(st == TK_DB_OK, "exec: %s", tk_db_status_name(st));
}

/* prepared (default): reads pipelined, statements prepared under a name, generic plans.
 * unnamed (PgBouncer): nothing pipelined, nothing prepared, no session setting. */
static void test_statements_modes(void **state)
{
    (void)state;
    const char *db = need_db();
    if (db == NULL)
        skip();
    stmts_t p = {0}, u = {0};
    g_statements = "prepared";
    with_client(db, 0, statements_body, &p);
    g_statements = "unnamed";
    with_client(db, 0, statements_body, &u);
    g_statements = NULL;
    assert_int_equal(p.value, 1);
    assert_int_equal(p.c1.pipelined - p.c0.pipelined, 1);
    assert_true(p.named >= 1);
    assert_string_equal(p.plan_cache_mode, "force_generic_plan");
    assert_int_equal(u.value, 1);
    assert_int_equal(u.c1.pipelined - u.c0.pipelined, 0);
    assert_int_equal(u.named, 0);
    assert_string_not_equal(u.plan_cache_mode, "force_generic_plan");
}

/* --- an aborted batch ---------------------------------------------------------------------- */

typedef struct {
    long long before, after;
    tk_db_counts_t c0, c1;
    pcall_t bad, read;
} abort_t;

static void aborted_batch(void *arg)
{
    abort_t *k = arg;
    tk_db_status_t st;
    k->before = query_int(s_last, "1", &st);
    CHECKF(st == TK_DB_OK, "last_value: %s", tk_db_status_name(st));
    query_int(s_fail, "1", &st); /* a shared connection exists: both go out at once */
    CHECKF(st == TK_DB_OK, "warm-up: %s", tk_db_status_name(st));
    k->bad.stmt = s_fail;
    k->bad.param = "0"; /* division by zero: aborts the rest of its batch */
    k->read.stmt = s_plain;
    tk_db_counts(&k->c0);
    tk_gt_t *a = tk_gt_spawn(tk_sched_current(), "bad", pcall_run, &k->bad);
    tk_gt_t *b = tk_gt_spawn(tk_sched_current(), "read", pcall_run, &k->read);
    CHECKF(a && b, "tk_gt_spawn failed");
    tk_gt_joinable(a);
    tk_gt_joinable(b);
    tk_gt_join(a);
    tk_gt_join(b);
    tk_db_counts(&k->c1);
    k->after = query_int(s_last, "1", &st);
    CHECKF(st == TK_DB_OK, "last_value: %s", tk_db_status_name(st));
}

static void test_aborted_batch_rerun(void **state)
{
    (void)state;
    const char *db = need_db();
    if (db == NULL)
        skip();
    long long last = 0;
    abort_t k = {0};
    with_client(db, 0, seq_setup, &last);
    with_client(db, 0, aborted_batch, &k);
    assert_int_equal(k.bad.st, TK_DB_ERROR);
    /* the read behind it was aborted with the batch, then run once more */
    assert_int_equal(k.read.st, TK_DB_OK);
    assert_int_equal(k.c1.retried - k.c0.retried, 1);
    assert_int_equal(k.after - k.before, 1);
    assert_int_equal(k.read.value, k.after);
}

/* --- a cancel past the deadline ---------------------------------------------------------- */

#define QUERY_TIMEOUT_MS 300
#define GONE_WITHIN_MS   2000 /* the sleep asks for 5 s: only a cancel ends it sooner */

/* Wait (polling pg_stat_activity) until no backend runs a query containing
 * marker; 0, or -1 when one still does after GONE_WITHIN_MS. */
static int wait_not_active(const char *marker)
{
    char like[64];
    snprintf(like, sizeof(like), "%%%s%%", marker);
    int64_t until = tk_now_ms() + GONE_WITHIN_MS;
    for (;;) {
        tk_db_status_t st;
        long long n = query_int(s_active, like, &st);
        if (st == TK_DB_OK && n == 0)
            return 0;
        if (tk_now_ms() >= until)
            return -1;
        tk_gt_sleep_ms(20);
    }
}

typedef struct {
    int64_t pipe_ms, excl_ms;
    tk_db_status_t pipe_st, excl_st, pipe_after, excl_after;
    int pipe_gone, excl_gone;
} cancel_t;

static void cancel_past_deadline(void *arg)
{
    cancel_t *k = arg;
    tk_db_status_t st;
    /* shared pipelined connection */
    int64_t t0 = tk_now_ms();
    query_int(s_sleep_pipe, "5", &k->pipe_st);
    k->pipe_ms = tk_now_ms() - t0;
    k->pipe_gone = wait_not_active("tk_test_cancel_pipe");
    query_int(s_sleep_pipe, "0", &k->pipe_after);
    /* exclusive connection */
    tk_db_conn_t *c = tk_db_acquire(&st);
    CHECKF(c, "acquire: %s", tk_db_status_name(st));
    const char *v[1] = {"5"};
    PGresult *res = NULL;
    t0 = tk_now_ms();
    k->excl_st = tk_db_exec(c, s_sleep_excl, 1, v, NULL, &res);
    k->excl_ms = tk_now_ms() - t0;
    PQclear(res);
    tk_db_release(c); /* the query still runs: cancelled and drained in the background */
    k->excl_gone = wait_not_active("tk_test_cancel_excl");
    query_int(s_sleep_excl, "0", &k->excl_after);
}

static void test_cancel_past_deadline(void **state)
{
    (void)state;
    const char *db = need_db();
    if (db == NULL)
        skip();
    cancel_t k = {0};
    with_client(db, QUERY_TIMEOUT_MS, cancel_past_deadline, &k);
    /* a timeout at the deadline, the server's query stopped, and the client
     * still serves queries (on the same connection or a new one) */
    assert_int_equal(k.pipe_st, TK_DB_TIMEOUT);
    assert_in_range(k.pipe_ms, QUERY_TIMEOUT_MS - 5, QUERY_TIMEOUT_MS + 1000);
    assert_int_equal(k.pipe_gone, 0);
    assert_int_equal(k.pipe_after, TK_DB_OK);
    assert_int_equal(k.excl_st, TK_DB_TIMEOUT);
    assert_in_range(k.excl_ms, QUERY_TIMEOUT_MS - 5, QUERY_TIMEOUT_MS + 1000);
    assert_int_equal(k.excl_gone, 0);
    assert_int_equal(k.excl_after, TK_DB_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flags),
        cmocka_unit_test(test_declared_reads),
        cmocka_unit_test(test_join_identical),
        cmocka_unit_test(test_not_joinable_each_run),
        cmocka_unit_test(test_aborted_batch_rerun),
        cmocka_unit_test(test_cancel_past_deadline),
        cmocka_unit_test(test_statements_modes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
