/* cache_fixture.h: shared harness for the Redis client tests (test_cache, test_cache_aside):
 * failure recording for green threads, unique keys, a scheduler+client env, a side connection. */
#ifndef TK_TEST_CACHE_FIXTURE_H
#define TK_TEST_CACHE_FIXTURE_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "cache/cache.h"
#include "runtime/scheduler.h"

/* cmocka's failures longjmp, which must not cross a coroutine stack: green
 * threads record the first failure here and return; the test asserts after. */
static char g_fail[512];
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            if (!g_fail[0])                                                                        \
                snprintf(g_fail, sizeof(g_fail), "%s:%d: CHECK(%s)", __FILE__, __LINE__, #cond);   \
            return;                                                                                \
        }                                                                                          \
    } while (0)
#define CHECKF(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            if (!g_fail[0]) {                                                                      \
                int n_ = snprintf(g_fail, sizeof(g_fail), "%s:%d: CHECK(%s): ", __FILE__,          \
                                  __LINE__, #cond);                                                \
                snprintf(g_fail + n_, sizeof(g_fail) - (size_t)n_, __VA_ARGS__);                   \
            }                                                                                      \
            return;                                                                                \
        }                                                                                          \
    } while (0)

static const char *redis_addr(void)
{
    const char *a = getenv("TENK_REDIS");
    return a && a[0] ? a : NULL;
}

/* A key unique to this process, so parallel runs don't collide. */
static const char *K(const char *name)
{
    static char buf[8][128];
    static int i;
    char *b = buf[i++ % 8];
    snprintf(b, 128, "tk:test:%ld:%s", (long)getpid(), name);
    return b;
}

/* --- harness: a scheduler on a fresh event base ------------------------------------ */

typedef struct {
    struct event_base *base;
    tk_sched_t *sched;
    tk_cache_t *cache;
    void *arg;
} env_t;

static env_t *env_new(const char *addr, void (*tune)(tk_cache_opts_t *))
{
    env_t *e = calloc(1, sizeof(*e));
    tk_sched_opts_t so;
    tk_cache_opts_t co;
    char err[256];

    assert_non_null(e);
    e->base = event_base_new();
    assert_non_null(e->base);
    tk_sched_opts_default(&so);
    so.stack_size = 256 * 1024; /* room for sanitizers */
    e->sched = tk_sched_new(e->base, &so);
    assert_non_null(e->sched);
    tk_cache_opts_default(&co);
    co.addr = addr;
    /* Generous: these tests are about behaviour, not speed, and must not
     * flake on a loaded machine or under sanitizers; tests of timeouts tune it. */
    co.timeout_ms = 1000;
    if (tune)
        tune(&co);
    e->cache = tk_cache_new(e->base, &co, err, sizeof(err));
    if (e->cache == NULL)
        fail_msg("tk_cache_new: %s", err);
    g_fail[0] = '\0';
    return e;
}

static void env_free(env_t *e)
{
    tk_cache_free(e->cache);
    tk_sched_free(e->sched);
    event_base_free(e->base);
    free(e);
}

/* Run body in a green thread until every green thread is done; then check
 * what they recorded. Frees e first when it fails, so the next test starts clean
 * (one scheduler per thread). */
static void env_run(env_t *e, tk_gt_fn body, void *arg)
{
    int spawned = tk_gt_spawn(e->sched, "test", body, arg) != NULL;
    int ran = spawned ? tk_sched_run(e->sched) : -1;
    if (!spawned || ran != 0 || g_fail[0]) {
        env_free(e);
        fail_msg("spawned %d, tk_sched_run %d: %s", spawned, ran, g_fail);
    }
}

/* Inside a green thread: wait (bounded) until the client is connected. */
static int wait_ready(tk_cache_t *c, int64_t ms)
{
    int64_t deadline = tk_now_ms() + ms;
    while (!tk_cache_ready(c)) {
        if (tk_now_ms() > deadline)
            return 0;
        tk_gt_sleep_ms(2);
    }
    return 1;
}

/* A second, blocking connection for looking at Redis from the outside. */
static redisContext *side_conn(const char *addr)
{
    char host[64];
    const char *colon = strrchr(addr, ':');
    size_t n = (size_t)(colon - addr);
    struct timeval tv = {2, 0};

    memcpy(host, addr, n);
    host[n] = '\0';
    redisContext *rc = redisConnectWithTimeout(host, atoi(colon + 1), tv);
    assert_non_null(rc);
    assert_int_equal(rc->err, 0);
    return rc;
}

static long long side_int(redisContext *rc, const char *cmd, const char *key)
{
    redisReply *r = redisCommand(rc, "%s %s", cmd, key);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -999;
    freeReplyObject(r);
    return v;
}

#endif
