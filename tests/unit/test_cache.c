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
#include "cache_fixture.h"

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

/* tk_cache_mget_int(): numbers parsed from the reply; anything else, or a missing key, is -1;
 * more keys than fit its stack arrays take the heap path. */
static void body_mget_int(void *arg)
{
    env_t *e = arg;
    tk_cache_t *c = e->cache;
    static const char *vals[6] = {"123", "0", "abc", "", "1234567890", NULL};
    static const int want[6] = {123, 0, -1, -1, -1, -1};
    char names[80][64];
    const char *keys[80];
    size_t lens[80];
    int got[80];

    CHECK(wait_ready(c, 2000));
    for (int i = 0; i < 80; i++) {
        snprintf(names[i], sizeof(names[i]), "%s", K(""));
        size_t l = strlen(names[i]);
        snprintf(names[i] + l, sizeof(names[i]) - l, "n%d", i);
        keys[i] = names[i];
        lens[i] = strlen(names[i]);
        tk_cache_del(c, keys[i], lens[i]);
    }
    for (int i = 0; i < 5; i++)
        CHECK(tk_cache_set(c, keys[i], lens[i], vals[i], strlen(vals[i]), 60) == TK_CACHE_OK);
    tk_cache_stats_t st0, st1;
    tk_cache_stats(c, &st0);
    CHECK(tk_cache_mget_int(c, keys, lens, 6, got) == TK_CACHE_OK);
    for (int i = 0; i < 6; i++)
        CHECKF(got[i] == want[i], "key %d: %d, want %d", i, got[i], want[i]);
    tk_cache_stats(c, &st1);
    CHECK(st1.hits - st0.hits == 2 && st1.misses - st0.misses == 4);

    /* 80 keys: every even one holds its index, the odd ones are missing */
    for (int i = 0; i < 6; i++)
        tk_cache_del(c, keys[i], lens[i]);
    for (int i = 0; i < 80; i += 2) {
        char v[8];
        int vl = snprintf(v, sizeof(v), "%d", i);
        CHECK(tk_cache_set(c, keys[i], lens[i], v, (size_t)vl, 60) == TK_CACHE_OK);
    }
    CHECK(tk_cache_mget_int(c, keys, lens, 80, got) == TK_CACHE_OK);
    for (int i = 0; i < 80; i++)
        CHECKF(got[i] == (i % 2 ? -1 : i), "key %d: %d", i, got[i]);
    for (int i = 0; i < 80; i++)
        tk_cache_del(c, keys[i], lens[i]);
}

static void test_mget_int(void **state)
{
    (void)state;
    int got[2] = {7, 7};
    const char *keys[2] = {"a", "b"};
    assert_int_equal(tk_cache_mget_int(NULL, keys, NULL, 2, got), TK_CACHE_BYPASS);
    assert_int_equal(got[0], -1);
    assert_int_equal(got[1], -1);
    if (!redis_addr())
        skip();
    env_t *e = env_new(redis_addr(), NULL);
    env_run(e, body_mget_int, e);
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

/* Proves the loop stays responsive while a cache call waits. Bounded: a failed CHECK ends the
 * test's body without clearing g_ticking, and the loop must still run dry so the failure shows. */
static void ticker(void *arg)
{
    (void)arg;
    int64_t end = tk_now_ms() + 10000;
    while (g_ticking && tk_now_ms() < end) {
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_cache),       cmocka_unit_test(test_basic),
        cmocka_unit_test(test_mget_int),       cmocka_unit_test(test_ttl),
        cmocka_unit_test(test_concurrent),     cmocka_unit_test(test_timeout_slow),
        cmocka_unit_test(test_timeout_silent), cmocka_unit_test(test_dead_address),
        cmocka_unit_test(test_restart),        cmocka_unit_test(test_breaker),
        cmocka_unit_test(test_unix_socket),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
