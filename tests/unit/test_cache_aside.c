/* test_cache_aside.c: single flight and cache-aside (tk_cache_fetch, invalidation) against a
 * real Redis (TENK_REDIS), green threads on a real scheduler (server/cache/cache_aside.c). */
#include "config.h"

#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <cmocka.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "cache/cache.h"
#include "runtime/scheduler.h"
#include "cache_fixture.h"

/* --- single flight ------------------------------------------------------------------------ */

static int g_loads;
static int g_load_ms = 30;

/* A loader that takes a while (yielding), so concurrent callers pile up. */
static int slow_loader(void *arg, const char *key, size_t keylen, char **val, size_t *vallen)
{
    (void)arg;
    g_loads++;
    if (tk_gt_sleep_ms(g_load_ms) != 0)
        return -1; /* cancelled */
    if (keylen >= 7 && memcmp(key + keylen - 7, "missing", 7) == 0)
        return 1;
    *val = malloc(keylen + 4);
    memcpy(*val, "v=", 2);
    memcpy(*val + 2, key, keylen);
    *vallen = keylen + 2;
    return 0;
}

typedef struct {
    tk_cache_flight_t *f;
    const char *key;
    int rc, shared, ok;
    int64_t deadline;
} flight_arg_t;

static void flight_one(void *arg)
{
    flight_arg_t *a = arg;
    char *v;
    size_t n;
    a->rc = tk_cache_flight_do(a->f, a->key, strlen(a->key), slow_loader, NULL, a->deadline, &v, &n,
                               &a->shared);
    if (a->rc == 0)
        a->ok = n == strlen(a->key) + 2 && memcmp(v + 2, a->key, n - 2) == 0;
    free(v);
}

#define NFL 20
static flight_arg_t g_fa[NFL + 2];

static void body_flight(void *arg)
{
    env_t *e = arg;
    tk_cache_flight_t *f = tk_cache_flight_new(e->cache);
    tk_gt_t *gts[NFL + 2];

    CHECK(f != NULL);
    g_loads = 0;
    memset(g_fa, 0, sizeof(g_fa));
    for (int i = 0; i < NFL; i++) {
        g_fa[i] = (flight_arg_t){f, "user:42", -5, -5, 0, -1};
        CHECK((gts[i] = tk_gt_spawn(e->sched, "fl", flight_one, &g_fa[i])) != NULL);
        tk_gt_joinable(gts[i]);
    }
    /* Another key loads on its own; an impatient waiter gives up. */
    g_fa[NFL] = (flight_arg_t){f, "user:43", -5, -5, 0, -1};
    g_fa[NFL + 1] = (flight_arg_t){f, "user:42", -5, -5, 0, tk_now_ms() + 5};
    for (int i = NFL; i < NFL + 2; i++) {
        CHECK((gts[i] = tk_gt_spawn(e->sched, "fl", flight_one, &g_fa[i])) != NULL);
        tk_gt_joinable(gts[i]);
    }
    for (int i = 0; i < NFL + 2; i++)
        tk_gt_join(gts[i]);

    CHECKF(g_loads == 2, "%d loads", g_loads);
    int shared = 0;
    for (int i = 0; i < NFL + 1; i++) {
        CHECKF(g_fa[i].rc == 0 && g_fa[i].ok, "caller %d rc %d", i, g_fa[i].rc);
        shared += g_fa[i].shared;
    }
    CHECK(shared == NFL - 1);
    CHECK(g_fa[NFL + 1].rc == -1);
    CHECK(tk_cache_flight_pending(f) == 0);

    /* Done flights are forgotten: the next call loads again. */
    char *v;
    size_t n;
    int sh;
    CHECK(tk_cache_flight_do(f, "user:42", 7, slow_loader, NULL, -1, &v, &n, &sh) == 0);
    free(v);
    CHECK(g_loads == 3 && sh == 0);
    CHECK(tk_cache_flight_do(f, "user:missing", 12, slow_loader, NULL, -1, &v, &n, &sh) == 1);
    CHECK(v == NULL);

    tk_cache_stats_t st;
    tk_cache_stats(e->cache, &st);
    CHECK(st.flight_loads == 4 && st.flight_shared == NFL - 1);

    /* A cancelled leader (its client went away) doesn't fail the waiters:
     * one of them loads again. */
    g_loads = 0;
    for (int i = 0; i < 5; i++) {
        g_fa[i] = (flight_arg_t){f, "user:44", -5, -5, 0, -1};
        CHECK((gts[i] = tk_gt_spawn(e->sched, "fl", flight_one, &g_fa[i])) != NULL);
        tk_gt_joinable(gts[i]);
    }
    tk_gt_sleep_ms(g_load_ms / 3); /* all five are in: gts[0] leads, four wait */
    CHECK(tk_cache_flight_pending(f) == 1 && g_loads == 1);
    tk_gt_cancel(gts[0]);
    for (int i = 0; i < 5; i++)
        tk_gt_join(gts[i]);
    CHECKF(g_fa[0].rc == -1 && g_loads == 2, "leader rc %d, %d loads", g_fa[0].rc, g_loads);
    for (int i = 1; i < 5; i++)
        CHECKF(g_fa[i].rc == 0 && g_fa[i].ok, "waiter %d rc %d", i, g_fa[i].rc);
    CHECK(tk_cache_flight_pending(f) == 0);
    tk_cache_flight_free(f);
}

static void test_flight(void **state)
{
    (void)state;
    /* The flight needs no Redis: a dead address only feeds the stats. */
    env_t *e = env_new("127.0.0.1:1", NULL);
    env_run(e, body_flight, e);
    env_free(e);
}

/* --- cache-aside: tk_cache_fetch ----------------------------------------------------------- */

static tk_cache_flight_t *g_ff;
static int g_fetch_ok;

static void fetch_one(void *arg)
{
    env_t *e = arg;
    char *v;
    size_t n;
    int hit;
    const char *key = K("fetch");
    int rc = tk_cache_fetch(e->cache, g_ff, key, strlen(key), 60, slow_loader, NULL, &v, &n, &hit);
    CHECK(rc == 0 && hit == 0 && n == strlen(key) + 2);
    free(v);
    g_fetch_ok++;
}

static void body_fetch(void *arg)
{
    env_t *e = arg;
    tk_cache_t *c = e->cache;
    tk_gt_t *gts[NFL];
    char *v;
    size_t n;
    int hit;

    CHECK(wait_ready(c, 2000));
    g_ff = tk_cache_flight_new(c);
    g_loads = 0;
    g_fetch_ok = 0;
    for (int i = 0; i < NFL; i++) {
        CHECK((gts[i] = tk_gt_spawn(e->sched, "fetch", fetch_one, e)) != NULL);
        tk_gt_joinable(gts[i]);
    }
    for (int i = 0; i < NFL; i++)
        tk_gt_join(gts[i]);
    CHECK(g_fetch_ok == NFL && g_loads == 1);

    /* The leader stored it: now a hit, no load. */
    const char *key = K("fetch");
    CHECK(tk_cache_fetch(c, g_ff, key, strlen(key), 60, slow_loader, NULL, &v, &n, &hit) == 0);
    CHECK(hit == 1 && g_loads == 1 && n == strlen(key) + 2);
    free(v);
    redisContext *side = side_conn(redis_addr());
    long long ttl = side_int(side, "TTL", key);
    CHECKF(ttl > 50 && ttl <= 60, "TTL %lld", ttl);

    /* "Not found" is cached negatively, with the negative TTL. */
    const char *mk = K("fetch:missing");
    CHECK(tk_cache_fetch(c, g_ff, mk, strlen(mk), 0, slow_loader, NULL, &v, &n, &hit) == 1);
    CHECK(hit == 0 && v == NULL && g_loads == 2);
    CHECK(tk_cache_fetch(c, g_ff, mk, strlen(mk), 0, slow_loader, NULL, &v, &n, &hit) == 1);
    CHECK(hit == 1 && v == NULL && g_loads == 2);
    ttl = side_int(side, "TTL", mk);
    CHECKF(ttl > 0 && ttl <= 10, "negative TTL %lld", ttl);

    /* Invalidation: after it the next fetch loads again. */
    CHECK(tk_cache_invalidate(c, g_ff, key, strlen(key)) == TK_CACHE_HIT);
    CHECK(tk_cache_fetch(c, g_ff, key, strlen(key), 60, slow_loader, NULL, &v, &n, &hit) == 0);
    CHECK(hit == 0 && g_loads == 3);
    free(v);

    /* Invalidated while a load is in flight: that load's (maybe old) result is
     * not stored, and a fetch that starts afterwards loads anew. */
    CHECK(tk_cache_invalidate(c, g_ff, key, strlen(key)) == TK_CACHE_HIT);
    g_fetch_ok = 0;
    tk_gt_t *a = tk_gt_spawn(e->sched, "fetch", fetch_one, e);
    CHECK(a != NULL);
    tk_gt_joinable(a);
    int64_t deadline = tk_now_ms() + 1000;
    while (tk_cache_flight_pending(g_ff) == 0 && tk_now_ms() < deadline)
        tk_gt_sleep_ms(1);
    CHECK(tk_cache_flight_pending(g_ff) == 1 && g_loads == 4);
    CHECK(tk_cache_invalidate(c, g_ff, key, strlen(key)) == TK_CACHE_MISS);
    CHECK(tk_cache_flight_pending(g_ff) == 0);
    tk_gt_t *b = tk_gt_spawn(e->sched, "fetch", fetch_one, e);
    CHECK(b != NULL);
    tk_gt_joinable(b);
    tk_gt_join(a);
    CHECK(g_fetch_ok == 1 && side_int(side, "EXISTS", key) == 0); /* a stored nothing */
    tk_gt_join(b);
    CHECK(g_fetch_ok == 2 && g_loads == 5 && side_int(side, "EXISTS", key) == 1);
    side_int(side, "DEL", key);
    side_int(side, "DEL", mk);
    redisFree(side);
    tk_cache_flight_free(g_ff);
}

static void test_fetch(void **state)
{
    (void)state;
    if (!redis_addr())
        skip();
    env_t *e = env_new(redis_addr(), NULL);
    env_run(e, body_fetch, e);
    env_free(e);
}

/* Another worker's client: its invalidation has nothing to do with our flight. */
static tk_cache_t *g_other;

/* A load during which another worker commits a change and invalidates. */
static int racing_loader(void *arg, const char *key, size_t keylen, char **val, size_t *vallen)
{
    (void)arg;
    g_loads++;
    *val = strdup("old row");
    *vallen = 7;
    tk_cache_invalidate(g_other, NULL, key, keylen);
    return 0;
}

static void body_cross_worker(void *arg)
{
    env_t *e = arg;
    const char *key = K("race");
    char *v;
    size_t n;
    int hit;
    char err[256];
    tk_cache_opts_t co;
    tk_cache_opts_default(&co);
    co.addr = redis_addr();
    co.timeout_ms = 1000;
    g_other = tk_cache_new(e->base, &co, err, sizeof(err));
    CHECKF(g_other != NULL, "tk_cache_new: %s", err);
    CHECK(wait_ready(e->cache, 2000) && wait_ready(g_other, 2000));
    tk_cache_flight_t *f = tk_cache_flight_new(e->cache);
    redisContext *side = side_conn(redis_addr());
    g_loads = 0;
    /* the load read "old row" before the other worker's invalidation: not stored */
    CHECK(tk_cache_fetch(e->cache, f, key, strlen(key), 60, racing_loader, NULL, &v, &n, &hit) ==
          0);
    free(v);
    CHECK(g_loads == 1 && side_int(side, "EXISTS", key) == 0);
    /* a load that starts after the invalidation stores as usual */
    CHECK(tk_cache_fetch(e->cache, f, key, strlen(key), 60, slow_loader, NULL, &v, &n, &hit) == 0);
    free(v);
    CHECK(side_int(side, "EXISTS", key) == 1);
    side_int(side, "DEL", key);
    char vk[160];
    snprintf(vk, sizeof(vk), "%s#ver", key);
    long long ttl = side_int(side, "TTL", vk);
    CHECKF(ttl > 3500 && ttl <= 3600, "version key TTL %lld", ttl);
    side_int(side, "DEL", vk);
    redisFree(side);
    tk_cache_flight_free(f);
    tk_cache_free(g_other);
    g_other = NULL;
}

static void test_fetch_cross_worker(void **state)
{
    (void)state;
    if (!redis_addr())
        skip();
    env_t *e = env_new(redis_addr(), NULL);
    env_run(e, body_cross_worker, e);
    env_free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flight),
        cmocka_unit_test(test_fetch),
        cmocka_unit_test(test_fetch_cross_worker),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
