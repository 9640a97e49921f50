/* test_db.c: declared reads against a real PostgreSQL (TENK_DB): only statements declared
 * TK_DB_READ share pipelined connections or are re-run, whatever their SQL looks like. */
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

static void run_case(const char *db, const char *sql, unsigned flags, tk_db_counts_t *delta)
{
    tk_broker_sh_t *b =
        mmap(NULL, sizeof(*b), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(b != MAP_FAILED);
    assert_int_equal(tk_broker_sh_init(b, 4), 0);
    tk_conf_t conf;
    tk_conf_defaults(&conf);
    snprintf(conf.db_conninfo, sizeof(conf.db_conninfo), "%s", db);
    struct event_base *base = event_base_new();
    tk_sched_opts_t so;
    tk_sched_opts_default(&so);
    so.stack_size = 256 * 1024;
    tk_sched_t *s = tk_sched_new(base, &so);
    assert_non_null(s);
    assert_int_equal(tk_db_worker_init(base, b, 0, &conf), 0);

    case_t k = {0};
    k.failing = tk_db_stmt("SELECT 1 / $1::int", 1, TK_DB_READ);
    k.stmt = tk_db_stmt(sql, 1, flags);
    k.flags = flags;
    assert_true(k.failing >= 0 && k.stmt >= 0);
    g_fail[0] = '\0';
    assert_non_null(tk_gt_spawn(s, "test", body, &k));
    /* the db client's timer keeps the loop alive: stop once the body is done */
    int r = tk_sched_run(s);
    tk_db_worker_fini();
    tk_sched_free(s);
    event_base_free(base);
    munmap(b, sizeof(*b));
    if (r != 0 || g_fail[0])
        fail_msg("%s [flags %u]: run %d: %s", sql, flags, r, g_fail);
    delta->pipelined = k.after.pipelined - k.before.pipelined;
    delta->retried = k.after.retried - k.before.retried;
}

static void test_declared_reads(void **state)
{
    (void)state;
    const char *db = getenv("TENK_DB");
    if (!db || !db[0])
        skip(); /* needs the devenv's PostgreSQL */
    assert_int_equal(tk_broker_wake_create(1), 0);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flags),
        cmocka_unit_test(test_declared_reads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
