/* test_cache.c: the Redis client against a real Redis (TENK_REDIS), green threads on a real
 * scheduler. */
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

/* --- set / get / del / mget ------------------------------------------------------------ */

static void body_basic(void *arg)
{
    env_t *e = arg;
    tk_cache_t *c = e->cache;
    char *v;
    size_t n;
    static const char bin[] = {'a', 0, 'b', '\r', '\n', 'c'};

    CHECK(wait_ready(c, 2000));
    CHECK(tk_cache_set(c, K("a"), strlen(K("a")), "alpha", 5, 0) == TK_CACHE_OK);
    CHECK(tk_cache_get(c, K("a"), strlen(K("a")), &v, &n) == TK_CACHE_HIT);
    CHECK(n == 5 && v != NULL && memcmp(v, "alpha", 6) == 0);
    free(v);
    CHECK(tk_cache_get(c, K("nope"), strlen(K("nope")), &v, &n) == TK_CACHE_MISS);
    CHECK(v == NULL && n == 0);

    /* Binary-safe keys and values. */
    CHECK(tk_cache_set(c, K("bin"), strlen(K("bin")), bin, sizeof(bin), 60) == TK_CACHE_OK);
    CHECK(tk_cache_get(c, K("bin"), strlen(K("bin")), &v, &n) == TK_CACHE_HIT);
    CHECK(n == sizeof(bin) && memcmp(v, bin, n) == 0);
    free(v);

    CHECK(tk_cache_del(c, K("a"), strlen(K("a"))) == TK_CACHE_HIT);
    CHECK(tk_cache_del(c, K("a"), strlen(K("a"))) == TK_CACHE_MISS);
    CHECK(tk_cache_get(c, K("a"), strlen(K("a")), &v, &n) == TK_CACHE_MISS);

    CHECK(tk_cache_set(c, K("m1"), strlen(K("m1")), "one", 3, 60) == TK_CACHE_OK);
    CHECK(tk_cache_set(c, K("m3"), strlen(K("m3")), "", 0, 60) == TK_CACHE_OK);
    const char *keys[4] = {K("m1"), K("m2"), K("m3"), K("bin")};
    size_t lens[4] = {strlen(keys[0]), strlen(keys[1]), strlen(keys[2]), strlen(keys[3])};
    tk_cache_item_t it[4];
    CHECK(tk_cache_mget(c, keys, lens, 4, it) == TK_CACHE_OK);
    int ok = it[0].rc == TK_CACHE_HIT && it[0].len == 3 && memcmp(it[0].val, "one", 3) == 0 &&
             it[1].rc == TK_CACHE_MISS && it[1].val == NULL && it[2].rc == TK_CACHE_HIT &&
             it[2].len == 0 && it[3].rc == TK_CACHE_HIT && it[3].len == sizeof(bin);
    tk_cache_items_free(it, 4);
    CHECK(ok);
    for (int i = 0; i < 4; i++)
        tk_cache_del(c, keys[i], lens[i]);

    tk_cache_stats_t st;
    tk_cache_stats(c, &st);
    CHECKF(st.hits == 5 && st.misses == 3, "hits %llu misses %llu", (unsigned long long)st.hits,
           (unsigned long long)st.misses);
    CHECK(st.errors == 0 && st.timeouts == 0 && st.bypasses == 0 && st.connects == 1);
    CHECK(st.lat_count == st.commands && st.lat_count > 0);
    uint64_t sum = 0;
    for (int i = 0; i < TK_CACHE_LAT_NBUCKETS; i++)
        sum += st.lat_buckets[i];
    CHECK(sum == st.lat_count);
}

static void test_basic(void **state)
{
    (void)state;
    if (!redis_addr())
        skip();
    env_t *e = env_new(redis_addr(), NULL);
    env_run(e, body_basic, e);
    env_free(e);
}

/* Outside a green thread or without a cache the calls never block. */
static void test_no_cache(void **state)
{
    (void)state;
    char *v = (char *)1;
    size_t n = 1;
    assert_int_equal(tk_cache_get(NULL, "k", 1, &v, &n), TK_CACHE_BYPASS);
    assert_null(v);
    assert_int_equal(tk_cache_set(NULL, "k", 1, "v", 1, 0), TK_CACHE_BYPASS);
    assert_int_equal(tk_cache_del(NULL, "k", 1), TK_CACHE_BYPASS);
    tk_cache_item_t it[1];
    const char *keys[1] = {"k"};
    assert_int_equal(tk_cache_mget(NULL, keys, NULL, 1, it), TK_CACHE_BYPASS);
    assert_int_equal(it[0].rc, TK_CACHE_BYPASS);
    assert_string_equal(tk_cache_rc_name(TK_CACHE_MISS), "miss");

    struct event_base *b = event_base_new();
    tk_cache_opts_t o;
    char err[128];
    tk_cache_opts_default(&o);
    o.addr = "nocolon";
    assert_null(tk_cache_new(b, &o, err, sizeof(err)));
    assert_non_null(strstr(err, "nocolon"));
    o.addr = "127.0.0.1:99999";
    assert_null(tk_cache_new(b, &o, err, sizeof(err)));
    o.addr = "";
    assert_null(tk_cache_new(b, &o, err, sizeof(err)));
    event_base_free(b);
}

/* --- TTL ----------------------------------------------------------------------------- */

static void body_ttl(void *arg)
{
    env_t *e = arg;
    tk_cache_t *c = e->cache;
    redisContext *side = side_conn(redis_addr());
    char *v;
    size_t n;

    CHECK(wait_ready(c, 2000));
    CHECK(tk_cache_set(c, K("ttl100"), strlen(K("ttl100")), "x", 1, 100) == TK_CACHE_OK);
    long long t = side_int(side, "TTL", K("ttl100"));
    CHECKF(t > 90 && t <= 100, "TTL %lld", t);
    CHECK(tk_cache_set(c, K("nottl"), strlen(K("nottl")), "x", 1, 0) == TK_CACHE_OK);
    CHECK(side_int(side, "TTL", K("nottl")) == -1);
    side_int(side, "DEL", K("ttl100"));
    side_int(side, "DEL", K("nottl"));
    redisFree(side);

    /* A 1 s TTL really expires: poll for the miss with a deadline. */
    CHECK(tk_cache_set(c, K("short"), strlen(K("short")), "x", 1, 1) == TK_CACHE_OK);
    CHECK(tk_cache_get(c, K("short"), strlen(K("short")), &v, &n) == TK_CACHE_HIT);
    free(v);
    int64_t start = tk_now_ms(), deadline = start + 3000;
    tk_cache_rc_t rc;
    while ((rc = tk_cache_get(c, K("short"), strlen(K("short")), &v, &n)) == TK_CACHE_HIT) {
        free(v);
        CHECK(tk_now_ms() < deadline);
        tk_gt_sleep_ms(20);
    }
    CHECK(rc == TK_CACHE_MISS);
    CHECKF(tk_now_ms() - start >= 900, "expired after %lld ms", (long long)(tk_now_ms() - start));
}

static void test_ttl(void **state)
{
    (void)state;
    if (!redis_addr())
        skip();
    env_t *e = env_new(redis_addr(), NULL);
    env_run(e, body_ttl, e);
    env_free(e);
}

/* --- 200 green threads pipelined on one connection ------------------------------------- */

#define NCONC 200
static int g_conc_ok;

static void conc_one(void *arg)
{
    env_t *e = arg;
    static int next;
    int i = next++;
    char key[64], want[32], *v;
    size_t n;

    snprintf(key, sizeof(key), "%s:%d", K("conc"), i);
    snprintf(want, sizeof(want), "value-%d", i);
    CHECK(tk_cache_get(e->cache, key, strlen(key), &v, &n) == TK_CACHE_HIT);
    int same = n == strlen(want) && memcmp(v, want, n) == 0;
    free(v);
    CHECK(same);
    g_conc_ok++;
}

static void body_concurrent(void *arg)
{
    env_t *e = arg;
    char key[64], val[32];

    CHECK(wait_ready(e->cache, 2000));
    for (int i = 0; i < NCONC; i++) {
        snprintf(key, sizeof(key), "%s:%d", K("conc"), i);
        snprintf(val, sizeof(val), "value-%d", i);
        CHECK(tk_cache_set(e->cache, key, strlen(key), val, strlen(val), 60) == TK_CACHE_OK);
    }
    tk_cache_stats_t before;
    tk_cache_stats(e->cache, &before);
    CHECK(before.inflight_peak == 1); /* so far one at a time */
    for (int i = 0; i < NCONC; i++)
        CHECK(tk_gt_spawn(e->sched, "get", conc_one, e) != NULL);
}

static void test_concurrent(void **state)
{
    (void)state;
    if (!redis_addr())
        skip();
    env_t *e = env_new(redis_addr(), NULL);
    g_conc_ok = 0;
    env_run(e, body_concurrent, e);
    assert_int_equal(g_conc_ok, NCONC);
    tk_cache_stats_t st;
    tk_cache_stats(e->cache, &st);
    /* All 200 GETs were in flight together on the one connection. */
    assert_int_equal(st.connects, 1);
    assert_int_equal(st.hits, NCONC);
    assert_true(st.inflight_peak >= NCONC / 2);
    assert_int_equal(st.inflight, 0);
    assert_int_equal(st.timeouts + st.errors + st.bypasses, 0);
    env_free(e);
}

/* --- a server that answers the handshake, then too slowly or never --------------------- */

typedef struct {
    struct event_base *base;
    int lfd, cfd;
    struct event *lev, *cev;
    int delay_ms; /* per reply; < 0: never answer after the handshake */
    int greeted;
    int port;
} slow_srv_t;

static void slow_reply(evutil_socket_t fd, short what, void *arg)
{
    slow_srv_t *s = arg;
    (void)fd;
    (void)what;
    if (s->cfd >= 0 && write(s->cfd, "$-1\r\n", 5) < 0) {
        /* the client may be gone; nothing to do */
    }
}

static void slow_read(evutil_socket_t fd, short what, void *arg)
{
    slow_srv_t *s = arg;
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof(buf));
    (void)what;
    if (n <= 0) {
        event_free(s->cev);
        s->cev = NULL;
        close(s->cfd);
        s->cfd = -1;
        return;
    }
    /* Each command is one RESP array: count the '*' (the test's keys have none). */
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] != '*')
            continue;
        if (!s->greeted) {
            s->greeted = 1; /* the handshake PING */
            if (write(fd, "+PONG\r\n", 7) != 7)
                return;
        } else if (s->delay_ms >= 0) {
            struct timeval tv = {0, s->delay_ms * 1000};
            event_base_once(s->base, -1, EV_TIMEOUT, slow_reply, s, &tv);
        }
    }
}

static void slow_accept(evutil_socket_t fd, short what, void *arg)
{
    slow_srv_t *s = arg;
    (void)what;
    int cfd = accept(fd, NULL, NULL);
    if (cfd < 0)
        return;
    if (s->cfd >= 0) { /* one client at a time: a reconnect replaces it */
        event_free(s->cev);
        close(s->cfd);
    }
    s->cfd = cfd;
    s->greeted = 0;
    s->cev = event_new(s->base, cfd, EV_READ | EV_PERSIST, slow_read, s);
    event_add(s->cev, NULL);
}

static void slow_srv_start(slow_srv_t *s, struct event_base *base, int delay_ms)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);

    memset(s, 0, sizeof(*s));
    s->base = base;
    s->cfd = -1;
    s->delay_ms = delay_ms;
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->lfd >= 0);
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(s->lfd, 16), 0);
    assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&sa, &sl), 0);
    s->port = ntohs(sa.sin_port);
    s->lev = event_new(base, s->lfd, EV_READ | EV_PERSIST, slow_accept, s);
    event_add(s->lev, NULL);
}

static void slow_srv_stop(slow_srv_t *s)
{
    if (s->cev)
        event_free(s->cev);
    if (s->cfd >= 0)
        close(s->cfd);
    event_free(s->lev);
    close(s->lfd);
}

static int g_ticks;
static int g_ticking;

/* Proves the loop stays responsive while a cache call waits. */
static void ticker(void *arg)
{
    (void)arg;
    while (g_ticking) {
        tk_gt_sleep_ms(5);
        g_ticks++;
    }
}

static void tune_slow(tk_cache_opts_t *o)
{
    o->timeout_ms = 50;
    o->breaker_failures = 3;
    o->breaker_cooloff_ms = 300;
    o->reconnect_min_ms = 200;
}

static void body_timeout(void *arg)
{
    env_t *e = arg;
    tk_cache_t *c = e->cache;
    slow_srv_t *srv = (slow_srv_t *)((env_t *)arg)->arg;
    tk_cache_stats_t st;
    char *v;
    size_t n;

    CHECK(wait_ready(c, 2000));
    g_ticking = 1;
    g_ticks = 0;
    CHECK(tk_gt_spawn(e->sched, "ticker", ticker, NULL) != NULL);

    /* 1: the reply would come after 100 ms; the call gives up at ~50 ms. */
    int64_t t0 = tk_now_ms();
    tk_cache_rc_t rc = tk_cache_get(c, "slow:1", 6, &v, &n);
    int64_t took = tk_now_ms() - t0;
    CHECK(rc == TK_CACHE_ERROR && v == NULL);
    CHECKF(took >= 45 && took < 400, "took %lld ms", (long long)took);
    CHECKF(g_ticks >= 3, "only %d ticks while waiting", g_ticks);

    if (srv->delay_ms >= 0) {
        /* The late reply arrives and is dropped without touching us. */
        int64_t deadline = tk_now_ms() + 1000;
        do {
            tk_cache_stats(c, &st);
            if (st.late_replies >= 1)
                break;
            tk_gt_sleep_ms(5);
        } while (tk_now_ms() < deadline);
        CHECK(st.late_replies == 1 && st.inflight == 0);
    }

    /* 2, 3: two more timeouts open the breaker (3 failures); the stuck connection is dropped. */
    CHECK(tk_cache_get(c, "slow:2", 6, &v, &n) == TK_CACHE_ERROR);
    CHECK(tk_cache_set(c, "slow:3", 6, "v", 1, 0) == TK_CACHE_ERROR);
    tk_cache_stats(c, &st);
    CHECK(st.timeouts == 3 && st.breaker_opens == 1 && st.disconnects == 1);
    CHECK(!tk_cache_ready(c));

    /* Now calls bypass at once, without yielding. */
    int ticks = g_ticks;
    t0 = tk_now_ms();
    for (int i = 0; i < 100; i++)
        CHECK(tk_cache_get(c, "slow:4", 6, &v, &n) == TK_CACHE_BYPASS);
    CHECK(tk_now_ms() - t0 < 100 && g_ticks == ticks);
    tk_cache_stats(c, &st);
    CHECK(st.bypasses == 100);

    /* The client reconnects after its back-off; the fresh handshake closes the breaker. */
    CHECK(wait_ready(c, 2000));
    tk_cache_stats(c, &st);
    CHECK(st.reconnects == 1 && st.breaker_open == 0);
    g_ticking = 0;
}

static void run_timeout(int delay_ms)
{
    env_t *e;
    slow_srv_t srv;
    char addr[64];

    /* The fake server lives on the test's own loop, next to the client. */
    e = calloc(1, sizeof(*e));
    assert_non_null(e);
    e->base = event_base_new();
    tk_sched_opts_t so;
    tk_sched_opts_default(&so);
    so.stack_size = 256 * 1024;
    e->sched = tk_sched_new(e->base, &so);
    assert_non_null(e->sched);
    slow_srv_start(&srv, e->base, delay_ms);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", srv.port);
    tk_cache_opts_t co;
    char err[128];
    tk_cache_opts_default(&co);
    co.addr = addr;
    tune_slow(&co);
    e->cache = tk_cache_new(e->base, &co, err, sizeof(err));
    assert_non_null(e->cache);
    e->arg = &srv;
    g_fail[0] = '\0';
    assert_non_null(tk_gt_spawn(e->sched, "test", body_timeout, e));
    int ran = tk_sched_run(e->sched);
    tk_cache_free(e->cache);
    e->cache = NULL;
    slow_srv_stop(&srv);
    env_free(e);
    assert_int_equal(ran, 0);
    if (g_fail[0])
        fail_msg("%s", g_fail);
}

static void test_timeout_slow(void **state)
{
    (void)state;
    run_timeout(100); /* replies come, but late */
}

static void test_timeout_silent(void **state)
{
    (void)state;
    run_timeout(-1); /* never replies after the handshake */
}

/* --- dead address ------------------------------------------------------------------------ */

static void tune_dead(tk_cache_opts_t *o)
{
    o->reconnect_min_ms = 5;
    o->reconnect_max_ms = 20;
    o->breaker_failures = 3;
}

static void body_dead(void *arg)
{
    env_t *e = arg;
    tk_cache_t *c = e->cache;
    tk_cache_stats_t st;
    char *v;
    size_t n;

    int64_t deadline = tk_now_ms() + 2000;
    for (;;) {
        tk_cache_stats(c, &st);
        if (st.breaker_opens >= 1)
            break;
        CHECK(tk_now_ms() < deadline);
        tk_gt_sleep_ms(2);
    }
    CHECK(st.connect_failures >= 3 && st.connects == 0);
    CHECK(tk_cache_last_error(c)[0] != '\0');
    int64_t t0 = tk_now_ms();
    for (int i = 0; i < 1000; i++)
        CHECK(tk_cache_get(c, "k", 1, &v, &n) == TK_CACHE_BYPASS);
    CHECK(tk_now_ms() - t0 < 200);
    const char *keys[2] = {"a", "b"};
    tk_cache_item_t it[2];
    CHECK(tk_cache_mget(c, keys, NULL, 2, it) == TK_CACHE_BYPASS && it[1].rc == TK_CACHE_BYPASS);
    tk_cache_stats(c, &st);
    CHECK(st.bypasses == 1001 && st.commands == 0);
}

static void test_dead_address(void **state)
{
    (void)state;
    /* Port 1 on loopback: connection refused at once. */
    env_t *e = env_new("127.0.0.1:1", tune_dead);
    env_run(e, body_dead, e);
    env_free(e);
}

/* --- our own redis-server, killed and restarted ------------------------------------------ */

static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static pid_t redis_start(int port)
{
    char p[16];
    snprintf(p, sizeof(p), "%d", port);
    pid_t pid = fork();
    if (pid == 0) {
        execlp("redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--daemonize", "no", "--requirepass", "sekrit", "--loglevel",
               "warning", "--logfile", "/dev/null", (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Blocking wait (bounded) until the server answers PING. */
static int redis_wait_up(int port, int ms)
{
    struct timespec ts = {0, 5 * 1000000};
    struct timeval tv = {0, 200000};
    for (int waited = 0; waited < ms; waited += 5) {
        redisContext *rc = redisConnectWithTimeout("127.0.0.1", port, tv);
        if (rc && !rc->err) {
            redisReply *r = redisCommand(rc, "PING");
            int ok = r != NULL; /* +PONG, or -NOAUTH: it answers either way */
            freeReplyObject(r);
            redisFree(rc);
            if (ok)
                return 1;
        } else if (rc) {
            redisFree(rc);
        }
        nanosleep(&ts, NULL);
    }
    return 0;
}

static void redis_kill(pid_t pid)
{
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

typedef struct {
    int port;
    pid_t pid;
} own_redis_t;

static void tune_restart(tk_cache_opts_t *o)
{
    o->timeout_ms = 100;
    o->password = "sekrit";
    o->db = 2;
    o->reconnect_min_ms = 20;
    o->reconnect_max_ms = 100;
}

static void body_restart(void *arg)
{
    env_t *e = arg;
    own_redis_t *r = e->arg;
    tk_cache_t *c = e->cache;
    tk_cache_stats_t st;
    char *v;
    size_t n;

    CHECK(wait_ready(c, 3000));
    CHECK(tk_cache_set(c, "user:1", 6, "u1", 2, 60) == TK_CACHE_OK);
    CHECK(tk_cache_get(c, "user:1", 6, &v, &n) == TK_CACHE_HIT);
    free(v);

    redis_kill(r->pid);
    r->pid = -1;
    /* Calls fall back (ERROR while the loss is noticed, then BYPASS), never hang. */
    int64_t deadline = tk_now_ms() + 2000;
    tk_cache_rc_t rc;
    for (;;) {
        int64_t t0 = tk_now_ms();
        rc = tk_cache_get(c, "user:1", 6, &v, &n);
        CHECK(rc == TK_CACHE_ERROR || rc == TK_CACHE_BYPASS);
        CHECK(tk_now_ms() - t0 < 500);
        if (rc == TK_CACHE_BYPASS)
            break;
        CHECK(tk_now_ms() < deadline);
        tk_gt_sleep_ms(2);
    }
    tk_cache_stats(c, &st);
    CHECK(st.disconnects == 1 && st.connected == 0);

    r->pid = redis_start(r->port);
    CHECK(r->pid > 0);
    /* Waits for the restarted server, then the client's reconnect; the scheduler keeps running. */
    CHECK(wait_ready(c, 5000));
    CHECK(tk_cache_get(c, "user:1", 6, &v, &n) == TK_CACHE_MISS); /* a fresh, empty server */
    CHECK(tk_cache_set(c, "user:1", 6, "u1b", 3, 60) == TK_CACHE_OK);
    CHECK(tk_cache_get(c, "user:1", 6, &v, &n) == TK_CACHE_HIT);
    int same = n == 3 && memcmp(v, "u1b", 3) == 0;
    free(v);
    CHECK(same);
    tk_cache_stats(c, &st);
    CHECK(st.reconnects == 1 && st.connects == 2);

    /* AUTH and SELECT took effect: the key is in db 2 only. */
    struct timeval tv = {2, 0};
    redisContext *side = redisConnectWithTimeout("127.0.0.1", r->port, tv);
    CHECK(side && !side->err);
    redisReply *rr = redisCommand(side, "AUTH sekrit");
    freeReplyObject(rr);
    long long in0 = side_int(side, "EXISTS", "user:1");
    rr = redisCommand(side, "SELECT 2");
    freeReplyObject(rr);
    long long in2 = side_int(side, "EXISTS", "user:1");
    redisFree(side);
    CHECKF(in0 == 0 && in2 == 1, "in db0 %lld, in db2 %lld", in0, in2);

    /* A wrong password fails the handshake: never ready, calls bypass. */
    tk_cache_opts_t o;
    char err[128], addr[64];
    tk_cache_opts_default(&o);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", r->port);
    o.addr = addr;
    o.password = "wrong";
    o.reconnect_min_ms = 10;
    tk_cache_t *bad = tk_cache_new(tk_sched_base(tk_sched_current()), &o, err, sizeof(err));
    CHECK(bad != NULL);
    int64_t deadline2 = tk_now_ms() + 2000;
    do {
        tk_cache_stats(bad, &st);
        if (st.connect_failures >= 2)
            break;
        tk_gt_sleep_ms(2);
    } while (tk_now_ms() < deadline2);
    int bad_ok = st.connect_failures >= 2 && st.connects == 0 &&
                 tk_cache_get(bad, "user:1", 6, &v, &n) == TK_CACHE_BYPASS &&
                 strstr(tk_cache_last_error(bad), "handshake") != NULL;
    if (!bad_ok)
        fprintf(stderr, "wrong password: %s\n", tk_cache_last_error(bad));
    tk_cache_free(bad);
    CHECK(bad_ok);
}

static void test_restart(void **state)
{
    (void)state;
    own_redis_t r;
    char addr[64];

    if (!redis_addr())
        skip(); /* same prerequisites as the devenv: redis-server installed */
    r.port = free_port();
    r.pid = redis_start(r.port);
    assert_true(r.pid > 0);
    if (!redis_wait_up(r.port, 5000)) {
        redis_kill(r.pid);
        fail_msg("own redis-server on port %d did not come up", r.port);
    }
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", r.port);
    env_t *e = env_new(addr, tune_restart);
    e->arg = &r;
    g_fail[0] = '\0';
    assert_non_null(tk_gt_spawn(e->sched, "test", body_restart, e));
    int ran = tk_sched_run(e->sched);
    if (r.pid > 0)
        redis_kill(r.pid);
    env_free(e);
    assert_int_equal(ran, 0);
    if (g_fail[0])
        fail_msg("%s", g_fail);
}

/* --- breaker on error replies from a healthy connection -------------------------------- */

static void tune_breaker(tk_cache_opts_t *o)
{
    o->breaker_failures = 4;
    o->breaker_cooloff_ms = 100;
}

static int g_probe_rc = -1, g_side_rc = -1;

static void probe_get(void *arg)
{
    env_t *e = arg;
    char *v;
    size_t n;
    g_probe_rc = tk_cache_get(e->cache, K("good"), strlen(K("good")), &v, &n);
    free(v);
}

static void side_get(void *arg)
{
    env_t *e = arg;
    char *v;
    size_t n;
    g_side_rc = tk_cache_get(e->cache, K("good"), strlen(K("good")), &v, &n);
    free(v);
}

static int wait_cooloff(tk_cache_t *c, int64_t ms)
{
    int64_t deadline = tk_now_ms() + ms;
    while (!tk_cache_ready(c)) {
        if (tk_now_ms() > deadline)
            return 0;
        tk_gt_sleep_ms(5);
    }
    return 1;
}

static void body_breaker(void *arg)
{
    env_t *e = arg;
    tk_cache_t *c = e->cache;
    redisContext *side = side_conn(redis_addr());
    tk_cache_stats_t st;
    char *v;
    size_t n;
    const char *lk = K("list");

    CHECK(wait_ready(c, 2000));
    redisReply *rr = redisCommand(side, "RPUSH %s x", lk);
    freeReplyObject(rr);
    redisFree(side);
    CHECK(tk_cache_set(c, K("good"), strlen(K("good")), "g", 1, 60) == TK_CACHE_OK);

    /* GET on a list: WRONGTYPE error replies. The 4th consecutive one opens it. */
    for (int i = 0; i < 4; i++)
        CHECK(tk_cache_get(c, lk, strlen(lk), &v, &n) == TK_CACHE_ERROR);
    tk_cache_stats(c, &st);
    CHECK(st.errors == 4 && st.breaker_opens == 1 && st.breaker_open == 1);
    CHECK(st.connected == 1 && !tk_cache_ready(c)); /* still connected, but skipped */
    CHECK(strstr(tk_cache_last_error(c), "WRONGTYPE") != NULL);
    CHECK(tk_cache_get(c, K("good"), strlen(K("good")), &v, &n) == TK_CACHE_BYPASS);

    /* After the cool-off one probe goes through; it fails: open again. */
    CHECK(wait_cooloff(c, 1000));
    CHECK(tk_cache_get(c, lk, strlen(lk), &v, &n) == TK_CACHE_ERROR);
    tk_cache_stats(c, &st);
    CHECK(st.breaker_opens == 2 && !tk_cache_ready(c));

    /* Next probe succeeds; while it is out, other callers still bypass. */
    CHECK(wait_cooloff(c, 1000));
    tk_gt_t *p = tk_gt_spawn(e->sched, "probe", probe_get, e);
    tk_gt_t *o = tk_gt_spawn(e->sched, "other", side_get, e);
    CHECK(p && o);
    tk_gt_joinable(p);
    tk_gt_joinable(o);
    tk_gt_join(p);
    tk_gt_join(o);
    CHECK(g_probe_rc == TK_CACHE_HIT && g_side_rc == TK_CACHE_BYPASS);
    tk_cache_stats(c, &st);
    CHECK(st.breaker_open == 0 && tk_cache_ready(c) && st.breaker_opens == 2);
    CHECK(tk_cache_get(c, K("good"), strlen(K("good")), &v, &n) == TK_CACHE_HIT);
    free(v);
    CHECK(st.disconnects == 0 && st.connects == 1);
    tk_cache_del(c, lk, strlen(lk));
    tk_cache_del(c, K("good"), strlen(K("good")));
}

static void test_breaker(void **state)
{
    (void)state;
    if (!redis_addr())
        skip();
    env_t *e = env_new(redis_addr(), tune_breaker);
    env_run(e, body_breaker, e);
    env_free(e);
}

/* --- unix socket, database number -------------------------------------------------------- */

static void tune_db5(tk_cache_opts_t *o)
{
    o->db = 5;
}

static void body_unix(void *arg)
{
    env_t *e = arg;
    tk_cache_t *c = e->cache;
    const char *k = K("unix");
    char *v;
    size_t n;

    CHECK(wait_ready(c, 2000));
    CHECK(tk_cache_set(c, k, strlen(k), "u", 1, 60) == TK_CACHE_OK);
    CHECK(tk_cache_get(c, k, strlen(k), &v, &n) == TK_CACHE_HIT);
    free(v);
    redisContext *side = side_conn(redis_addr());
    long long in0 = side_int(side, "EXISTS", k);
    redisReply *rr = redisCommand(side, "SELECT 5");
    freeReplyObject(rr);
    long long in5 = side_int(side, "EXISTS", k);
    side_int(side, "DEL", k);
    redisFree(side);
    CHECKF(in0 == 0 && in5 == 1, "db0 %lld db5 %lld", in0, in5);
}

static void test_unix_socket(void **state)
{
    (void)state;
    const char *sock = getenv("TENK_REDIS_SOCKET");
    if (!redis_addr() || !sock || !sock[0])
        skip();
    env_t *e = env_new(sock, tune_db5);
    env_run(e, body_unix, e);
    env_free(e);
}

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
        cmocka_unit_test(test_no_cache),
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_ttl),
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_timeout_slow),
        cmocka_unit_test(test_timeout_silent),
        cmocka_unit_test(test_dead_address),
        cmocka_unit_test(test_restart),
        cmocka_unit_test(test_breaker),
        cmocka_unit_test(test_unix_socket),
        cmocka_unit_test(test_flight),
        cmocka_unit_test(test_fetch),
        cmocka_unit_test(test_fetch_cross_worker),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
