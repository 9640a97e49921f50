/* test_view.c: unit tests for the read-only segment view (attach, load, totals, stale, reload). */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "shm/broker.h"
#include "shm/metrics.h"
#include "shm/segment.h"
#include "shm/view.h"

static char name[64];
static char path[128];

/* A fresh, unique instance name per test, removed afterwards. */
static int setup(void **state)
{
    static int n;
    (void)state;
    snprintf(name, sizeof(name), "utest-view-%d-%d", (int)getpid(), n++);
    assert_int_equal(tk_shm_path(name, path, sizeof(path)), 0);
    unlink(path);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(path);
    return 0;
}

/* n requests counted in slot's metrics, as its worker would. */
static void count(tk_shm_t *m, unsigned slot, int n)
{
    tk_shm_worker_bind(m, slot);
    for (int i = 0; i < n; i++)
        tk_metrics_request(0, 200, 1000, 1, 1);
    tk_metrics_bind(NULL);
}

/* Used slots only, a dead one's counters in the totals, states counted, the
 * copy independent of later writes, and a second load replacing the first. */
static void test_load(void **state)
{
    (void)state;
    char err[256] = "";
    tk_shm_t *m = tk_shm_create(name, 4, (uid_t)-1, (gid_t)-1, err, sizeof(err));
    assert_non_null(m);
    tk_shm_set_generation(m, 2);
    tk_shm_worker_started(m, 0, 1000, 2, 0);
    tk_shm_worker_set_state(m, 0, TK_SHM_W_RUNNING);
    tk_shm_worker_started(m, 1, 1001, 1, 1);
    tk_shm_worker_set_state(m, 1, TK_SHM_W_DRAINING);
    tk_shm_worker_started(m, 2, 1002, 2, 1);
    count(m, 0, 3);
    count(m, 1, 2);
    count(m, 2, 1);
    tk_shm_worker_reap(m, 2, 9);

    tk_shm_t *r = tk_view_attach(name, 1, err, sizeof(err));
    assert_non_null(r);
    assert_false(tk_shm_writable(r));
    tk_view_t v = {0};
    assert_int_equal(tk_view_load(&v, r), 0);
    assert_ptr_equal(v.shm, r);
    assert_string_equal(v.h.name, name);
    assert_int_equal(v.nw, 3); /* slot 3 was never used */
    assert_int_equal(v.w[0].slot, 0);
    assert_int_equal(v.w[2].slot, 2);
    assert_int_equal(v.w[1].w.pid, 1001);
    assert_int_equal(v.w[0].snap->m.requests, 3);
    assert_int_equal(v.total->m.requests, 6); /* the dead slot's counts stay */
    assert_int_equal(tk_view_count_state(&v, TK_SHM_W_RUNNING, 1), 1);
    assert_int_equal(tk_view_count_state(&v, TK_SHM_W_DRAINING, 0), 1);
    assert_int_equal(tk_view_count_state(&v, TK_SHM_W_DRAINING, 1), 0); /* old generation */
    assert_int_equal(tk_view_count_state(&v, TK_SHM_W_DEAD, 0), 1);
    assert_true(tk_view_live_state(v.w[0].w.state));
    assert_true(tk_view_live_state(v.w[1].w.state));
    assert_false(tk_view_live_state(v.w[2].w.state));
    assert_false(tk_view_live_state(TK_SHM_W_EMPTY));
    assert_true(v.now_real_ns > 0 && v.now_mono_ns > 0);
    assert_true(tk_view_uptime_s(&v, v.h.created_ns) >= 0.0);
    assert_true(tk_view_uptime_s(&v, v.now_real_ns - 2000000000ull) > 1.9);
    assert_true(tk_view_uptime_s(&v, 0) == 0.0);
    assert_non_null(tk_view_broker(r));

    /* a copy: later counts show only after the next load, which frees the first */
    count(m, 0, 4);
    assert_int_equal(v.total->m.requests, 6);
    assert_int_equal(tk_view_load(&v, r), 0);
    assert_int_equal(v.total->m.requests, 10);
    tk_view_free(&v);
    assert_int_equal(v.nw, 0);
    assert_null(v.w);
    assert_null(v.total);
    tk_view_free(&v); /* twice is harmless */

    /* a broker table of another build is refused */
    tk_shm_broker(m)->size += 1;
    assert_null(tk_view_broker(r));
    tk_shm_broker(m)->size -= 1;
    tk_shm_detach(r);
    tk_shm_detach(m);
}

/* No segment: a reason. A stale one: refused with require_live, mapped without. */
static void test_missing_and_stale(void **state)
{
    (void)state;
    char err[256] = "";
    assert_null(tk_view_attach(name, 0, err, sizeof(err)));
    assert_true(err[0] != '\0');

    tk_shm_t *m = tk_shm_create(name, 2, (uid_t)-1, (gid_t)-1, err, sizeof(err));
    assert_non_null(m);
    tk_shm_header(m)->master_pid = 1; /* alive, but not the process that created it */
    err[0] = '\0';
    assert_null(tk_view_attach(name, 1, err, sizeof(err)));
    assert_non_null(strstr(err, "stale"));
    assert_non_null(strstr(err, name));
    tk_shm_t *r = tk_view_attach(name, 0, err, sizeof(err));
    assert_non_null(r);
    tk_view_t v = {0};
    assert_int_equal(tk_view_load(&v, r), 0);
    assert_int_equal(v.nw, 0);
    assert_int_equal(v.total->m.requests, 0);
    tk_view_free(&v);
    tk_shm_detach(r);
    tk_shm_detach(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_and_stale, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
