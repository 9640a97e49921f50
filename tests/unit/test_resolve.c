/* test_resolve.c: the master's resolution of the host names in db.conninfo and redis.addr. */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "proc/conf.h"
#include "proc/resolve.h"

static tk_conf_t C;

static int resolve(const char *conninfo, const char *redis, char *err, size_t errlen)
{
    tk_conf_defaults(&C);
    snprintf(C.db_conninfo, sizeof(C.db_conninfo), "%s", conninfo);
    snprintf(C.redis_addr, sizeof(C.redis_addr), "%s", redis);
    return tk_resolve_conf(&C, err, errlen);
}

/* localhost is in /etc/hosts: resolving it needs no network. */
static int is_loopback(const char *a)
{
    return strcmp(a, "127.0.0.1") == 0 || strcmp(a, "::1") == 0;
}

static void test_names_become_addresses(void **state)
{
    char err[512] = "";
    (void)state;
    assert_int_equal(
        resolve("host=localhost port=5432 dbname=tenk", "localhost:6379", err, sizeof(err)), 0);
    assert_true(is_loopback(C.db_hostaddr));
    assert_true(strcmp(C.redis_resolved, "127.0.0.1:6379") == 0 ||
                strcmp(C.redis_resolved, "[::1]:6379") == 0);
    /* a list: sockets and addresses keep an empty entry, names get theirs */
    assert_int_equal(
        resolve("host=/run/postgresql,localhost,10.1.2.3 dbname=tenk", "", err, sizeof(err)), 0);
    assert_true(strncmp(C.db_hostaddr, ",", 1) == 0);
    char *second = C.db_hostaddr + 1, *comma = strchr(second, ',');
    assert_non_null(comma);
    *comma = '\0';
    assert_true(is_loopback(second));
    assert_string_equal(comma + 1, "");
    /* the URI form too */
    assert_int_equal(resolve("postgresql://u@localhost:1/tenk", "", err, sizeof(err)), 0);
    assert_true(is_loopback(C.db_hostaddr));
}

static void test_nothing_to_resolve(void **state)
{
    char err[512] = "";
    (void)state;
    const char *const infos[] = {"",
                                 "dbname=tenk",
                                 "host=/run/postgresql dbname=tenk",
                                 "host=127.0.0.1 port=1",
                                 "host=::1",
                                 "host=db.example hostaddr=10.0.0.1"};
    for (size_t i = 0; i < sizeof(infos) / sizeof(infos[0]); i++) {
        assert_int_equal(resolve(infos[i], "", err, sizeof(err)), 0);
        assert_string_equal(C.db_hostaddr, "");
    }
    const char *const addrs[] = {"", "/run/redis.sock", "127.0.0.1:6379", "[::1]:6379"};
    for (size_t i = 0; i < sizeof(addrs) / sizeof(addrs[0]); i++) {
        assert_int_equal(resolve("", addrs[i], err, sizeof(err)), 0);
        assert_string_equal(C.redis_resolved, "");
    }
}

/* ".invalid" never resolves (RFC 6761): refused with the setting named. */
static void test_unresolvable_is_refused(void **state)
{
    char err[512] = "";
    (void)state;
    assert_int_equal(resolve("host=no-such-host.invalid dbname=tenk", "", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "db.conninfo"));
    assert_non_null(strstr(err, "no-such-host.invalid"));
    assert_non_null(strstr(err, "hostaddr"));
    assert_int_equal(resolve("", "no-such-host.invalid:6379", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "redis.addr"));
    assert_non_null(strstr(err, "IP address"));
    assert_int_equal(resolve("host='unterminated", "", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "db.conninfo"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_become_addresses),
        cmocka_unit_test(test_nothing_to_resolve),
        cmocka_unit_test(test_unresolvable_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
