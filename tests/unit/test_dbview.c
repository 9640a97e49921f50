/* test_dbview.c: unit tests for the database backends' shared view (the probe lease), the LSN
 * text form of Tenk-LSN, and the db.replica settings (repeatable, each with its line). */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "db/db.h"
#include "proc/conf.h"
#include "shm/dbview.h"

static void test_lease(void **state)
{
    (void)state;
    static tk_dbview_sh_t v;
    const char *names[] = {"p", "r1"};
    tk_dbview_init(&v, 2, names, 1000, 0);
    assert_true(tk_dbview_valid(&v));
    assert_int_equal(tk_dbview_count(&v), 2);
    assert_string_equal(v.be[1].name, "r1");
    assert_int_equal(v.be[0].role, 0);
    assert_int_equal(v.be[1].role, 1);
    /* free: the first taker wins, the second waits until it expires */
    assert_int_equal(tk_dbview_lease(&v, 100, 1000, 500), 1);
    assert_int_equal(tk_dbview_lease(&v, 200, 1200, 500), 0);
    /* the holder renews */
    assert_int_equal(tk_dbview_lease(&v, 100, 1400, 500), 1);
    assert_int_equal(tk_dbview_lease(&v, 200, 1800, 500), 0);
    /* a holder that stopped renewing (dead, stalled) loses it */
    assert_int_equal(tk_dbview_lease(&v, 200, 1901, 500), 1);
    assert_int_equal(v.lease_pid, 200);
    assert_int_equal(v.lease_takeovers, 2);
    /* letting go: only the holder can */
    tk_dbview_unlease(&v, 100);
    assert_int_equal(v.lease_pid, 200);
    tk_dbview_unlease(&v, 200);
    assert_int_equal(v.lease_pid, 0);
    /* a view others scribbled on is refused, and its count is bounded */
    v.nbackends = 1000;
    assert_int_equal(tk_dbview_count(&v), TK_DBVIEW_MAX);
    v.size = 1;
    assert_int_equal(tk_dbview_count(&v), 0);
    assert_string_equal(tk_dbview_health_name(99), "?");
}

static void test_lsn_text(void **state)
{
    (void)state;
    uint64_t l = 0;
    char buf[24];
    assert_int_equal(tk_db_lsn_parse("16/B374D848", 11, &l), 0);
    assert_true(l == ((uint64_t)0x16 << 32 | 0xB374D848u));
    assert_int_equal(tk_db_lsn_format(l, buf, sizeof(buf)), 11);
    assert_string_equal(buf, "16/B374D848");
    assert_int_equal(tk_db_lsn_parse("0/0", 3, &l), 0);
    assert_true(l == 0);
    assert_int_equal(tk_db_lsn_parse("ffffffff/ffffffff", 17, &l), 0);
    assert_true(l == UINT64_MAX);
    static const char *bad[] = {"",      "/",           "1/",   "/1",   "1",   "x/1",
                                "1/1/1", "123456789/1", "1/-1", "1 /1", "1/1 "};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(tk_db_lsn_parse(bad[i], strlen(bad[i]), &l), -1);
    assert_int_equal(tk_db_lsn_format(l, buf, 4), -1);
}

static void test_conf_replicas(void **state)
{
    (void)state;
    static tk_conf_t c;
    char err[512];
    const char *text = "[db]\nprimary = host=/tmp\nreplica = host=/tmp port=2\n"
                       "replica = host=/tmp port=3\nreplica_max_lag = 250ms\nread_from = primary\n";
    tk_conf_defaults(&c);
    assert_int_equal(c.db_replica_max_lag_ms, 1000);
    assert_string_equal(c.db_read_from, "replicas");
    assert_int_equal(tk_conf_load_buffer(&c, "t.conf", text, strlen(text), err, sizeof(err)), 0);
    assert_int_equal(c.db_nreplicas, 2);
    assert_string_equal(c.db_replica[1], "host=/tmp port=3");
    assert_int_equal(c.db_replica_line[0], 3);
    assert_int_equal(c.db_replica_line[1], 4);
    assert_int_equal(c.db_replica_max_lag_ms, 250);
    assert_int_equal(tk_conf_validate(&c, err, sizeof(err)), 0);
    /* a malformed one is named by its line */
    const char *bad = "[db]\nprimary = host=/tmp\nreplica = host=/tmp\nreplica = port='2\n";
    tk_conf_defaults(&c);
    assert_int_equal(tk_conf_load_buffer(&c, "b.conf", bad, strlen(bad), err, sizeof(err)), 0);
    assert_int_equal(tk_conf_validate(&c, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "b.conf:4: db.replica:"));
    /* too many, an unknown read_from, replicas without a primary */
    const char *many = "[db]\nprimary = a=1\nreplica = a=1\nreplica = a=1\nreplica = a=1\n"
                       "replica = a=1\nreplica = a=1\n";
    tk_conf_defaults(&c);
    assert_int_equal(tk_conf_load_buffer(&c, "m.conf", many, strlen(many), err, sizeof(err)), -1);
    assert_non_null(strstr(err, "m.conf:7: db.replica: too many replicas"));
    const char *rf = "[db]\nprimary = host=/tmp\nread_from = both\n";
    tk_conf_defaults(&c);
    assert_int_equal(tk_conf_load_buffer(&c, "r.conf", rf, strlen(rf), err, sizeof(err)), -1);
    assert_non_null(strstr(err, "r.conf:3: db.read_from: not one of the choices"));
    tk_conf_defaults(&c);
    assert_int_equal(tk_conf_set(&c, "db", "replica", "host=/tmp", err, sizeof(err)), 0);
    assert_int_equal(tk_conf_validate(&c, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "replicas need db.primary"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lease),
        cmocka_unit_test(test_lsn_text),
        cmocka_unit_test(test_conf_replicas),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
