/* test_metrics.c: unit tests for the per-worker metrics slots (histogram, merge, seqlock). */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shm/metrics.h"

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A zeroed slot in MAP_SHARED memory, so a forked child writes what we read. */
static tk_metrics_sh_t *shared_slot(void)
{
    void *p = mmap(NULL, sizeof(tk_metrics_sh_t), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    return p;
}

static void free_slot(tk_metrics_sh_t *m)
{
    munmap(m, sizeof(*m));
}

static uint64_t hist_total(const tk_metrics_sh_t *m)
{
    uint64_t t = 0;
    for (unsigned i = 0; i < TK_METRICS_NBUCKETS; i++)
        t += m->hist[i];
    return t;
}

/* Every value lands in a bucket whose bounds contain it; buckets are ordered and
 * never wider than 1/16 of their lower bound (past the linear range). */
static void test_buckets(void **state)
{
    (void)state;
    unsigned prev = 0;
    for (uint64_t us = 0; us < 70000000ull; us = us < 100 ? us + 1 : us + us / 37) {
        unsigned b = tk_metrics_bucket(us);
        uint64_t lo, hi;
        assert_true(b < TK_METRICS_NBUCKETS);
        assert_true(b >= prev);
        prev = b;
        tk_metrics_bucket_bounds(b, &lo, &hi);
        assert_true(lo <= us);
        if (b != TK_METRICS_NBUCKETS - 1) {
            assert_true(us < hi);
            if (lo >= TK_METRICS_SUB)
                assert_true((hi - lo) * 16 <= lo);
        }
    }
    assert_true(tk_metrics_bucket(59999999) < TK_METRICS_NBUCKETS - 1);
    assert_int_equal(tk_metrics_bucket(60000000), TK_METRICS_NBUCKETS - 1);
    assert_int_equal(tk_metrics_bucket(UINT64_MAX / 1000), TK_METRICS_NBUCKETS - 1);
}

static void assert_near(double got, double want, double rel)
{
    if (fabs(got - want) > want * rel) {
        print_error("got %.1f, want %.1f (+-%.1f%%)\n", got, want, rel * 100);
        fail();
    }
}

/* Percentiles of injected latencies, within half a bucket (3.2%). */
static void test_percentiles(void **state)
{
    (void)state;
    tk_metrics_sh_t *slot = shared_slot();
    tk_metrics_bind(slot);
    tk_metrics_snap_t s;

    tk_metrics_snapshot(slot, &s);
    assert_true(tk_metrics_percentile(&s, 50) == 0.0);

    /* 1..10000 ms in a shuffled-ish order (order must not matter) */
    for (uint64_t i = 0; i < 10000; i++) {
        uint64_t v = (i * 7919) % 10000 + 1; /* a permutation of 1..10000 */
        tk_metrics_request(0, 200, v * 1000000ull, 0, 0);
    }
    assert_int_equal(tk_metrics_snapshot(slot, &s), 0);
    assert_int_equal(s.m.requests, 10000);
    assert_int_equal(hist_total(&s.m), 10000);
    assert_near(tk_metrics_percentile(&s, 50), 5000e3, 0.033);
    assert_near(tk_metrics_percentile(&s, 90), 9000e3, 0.033);
    assert_near(tk_metrics_percentile(&s, 99), 9900e3, 0.033);
    assert_near(tk_metrics_percentile(&s, 99.9), 9990e3, 0.033);
    assert_near(tk_metrics_mean_us(&s), 5000.5e3, 0.001);
    free_slot(slot);

    /* bimodal: 990 fast (120 us), 10 slow (45 ms): p99 fast, p99.9 slow */
    slot = shared_slot();
    tk_metrics_bind(slot);
    for (int i = 0; i < 1000; i++)
        tk_metrics_request(0, 200, i % 100 == 7 ? 45000000ull : 120000ull, 0, 0);
    tk_metrics_snapshot(slot, &s);
    assert_near(tk_metrics_percentile(&s, 50), 120, 0.033);
    assert_near(tk_metrics_percentile(&s, 99), 120, 0.033);
    assert_near(tk_metrics_percentile(&s, 99.9), 45000, 0.033);
    assert_near(tk_metrics_percentile(&s, 100), 45000, 0.033);
    /* sub-microsecond and over-60-s values are kept, not lost */
    tk_metrics_request(0, 200, 300, 0, 0);
    tk_metrics_request(0, 200, 120ull * 1000000000ull, 0, 0);
    tk_metrics_snapshot(slot, &s);
    assert_int_equal(s.m.hist[0], 1);
    assert_int_equal(s.m.hist[TK_METRICS_NBUCKETS - 1], 1);
    assert_true(tk_metrics_percentile(&s, 100) == 60e6);
    free_slot(slot);
    tk_metrics_bind(NULL);
}

/* Status classes, routes, errors, connections. */
static void test_counters(void **state)
{
    (void)state;
    tk_metrics_sh_t *slot = shared_slot();
    tk_metrics_bind(slot);
    tk_metrics_route_register(0, "GET /health");
    tk_metrics_route_register(3, "GET /users/{id}");
    tk_metrics_route_register(TK_METRICS_MAX_ROUTES, "ignored");
    tk_metrics_request(0, 200, 1000, 10, 100);
    tk_metrics_request(3, 404, 2000, 20, 200);
    tk_metrics_request(3, 503, 3000, 30, 300);
    tk_metrics_request(-1u, 999, 4000, 40, 400);
    tk_metrics_error(TK_METRICS_ERR_PARSE);
    tk_metrics_error(TK_METRICS_ERR_N); /* ignored */
    tk_metrics_conn_accepted();
    tk_metrics_conn_accepted();
    tk_metrics_conn_closed();
    tk_metrics_conns_set(1, 4);

    tk_metrics_snap_t s;
    tk_metrics_snapshot(slot, &s);
    assert_int_equal(s.m.requests, 4);
    assert_int_equal(s.m.status[2], 1);
    assert_int_equal(s.m.status[4], 1);
    assert_int_equal(s.m.status[5], 1);
    assert_int_equal(s.m.status[0], 1);
    assert_int_equal(s.m.bytes_in, 100);
    assert_int_equal(s.m.bytes_out, 1000);
    assert_int_equal(s.m.latency_us_sum, 10);
    assert_int_equal(s.m.errors[TK_METRICS_ERR_PARSE], 1);
    assert_int_equal(s.m.errors[TK_METRICS_ERR_5XX], 1);
    assert_int_equal(s.m.conns_accepted, 2);
    assert_int_equal(s.m.conns_closed, 1);
    assert_int_equal(s.m.conns_active, 1);
    assert_int_equal(s.m.conns_idle, 4);
    assert_int_equal(s.m.nroutes, 4);
    assert_string_equal(s.m.routes[0].name, "GET /health");
    assert_string_equal(s.m.routes[3].name, "GET /users/{id}");
    assert_int_equal(s.m.routes[3].requests, 2);
    assert_int_equal(s.m.routes[3].status[4], 1);
    assert_int_equal(s.m.routes[3].status[5], 1);
    assert_int_equal(s.m.live.pid, (uint32_t)getpid());
    assert_true(s.m.live.heartbeat_ns > 0);
    assert_string_equal(tk_metrics_err_name(TK_METRICS_ERR_TIMEOUT), "timeout");

    /* re-registering the same name keeps the counts; another name starts afresh */
    tk_metrics_route_register(3, "GET /users/{id}");
    tk_metrics_snapshot(slot, &s);
    assert_int_equal(s.m.routes[3].requests, 2);
    tk_metrics_route_register(3, "POST /users");
    tk_metrics_snapshot(slot, &s);
    assert_int_equal(s.m.routes[3].requests, 0);
    free_slot(slot);
    tk_metrics_bind(NULL);
}

/* A respawned process adds to its predecessor's counters; scheduler and CPU
 * counters are published as deltas, gauges replaced; reap zeroes gauges only. */
static void test_respawn_and_gauges(void **state)
{
    (void)state;
    tk_metrics_sh_t *slot = shared_slot();
    tk_sched_stats_t st;
    memset(&st, 0, sizeof(st));

    tk_metrics_bind(slot);
    st.by_state[TK_GT_WAIT_NET] = 7;
    st.created = 10;
    st.switches = 100;
    st.stack_reserved = 65536;
    tk_metrics_sched_publish(&st);
    st.created = 15;
    st.switches = 150;
    st.by_state[TK_GT_WAIT_NET] = 3;
    tk_metrics_sched_publish(&st);
    tk_metrics_request(0, 200, 1000, 1, 1);
    tk_metrics_conns_set(5, 6);

    tk_metrics_snap_t s;
    tk_metrics_snapshot(slot, &s);
    assert_int_equal(s.m.gt_created, 15);
    assert_int_equal(s.m.gt_switches, 150);
    assert_int_equal(s.m.gt_by_state[TK_GT_WAIT_NET], 3);
    assert_int_equal(s.m.binds, 1);

    /* the master reaps: gauges go, counters stay */
    tk_metrics_reap(slot);
    tk_metrics_snapshot(slot, &s);
    assert_int_equal(s.m.requests, 1);
    assert_int_equal(s.m.gt_created, 15);
    assert_int_equal(s.m.conns_active, 0);
    assert_int_equal(s.m.gt_by_state[TK_GT_WAIT_NET], 0);
    assert_int_equal(s.m.stack_reserved, 0);
    assert_int_equal(s.m.live.pid, 0);

    /* a new process binds the same slot: its scheduler counts from zero again */
    tk_metrics_bind(slot);
    memset(&st, 0, sizeof(st));
    st.created = 4;
    st.switches = 40;
    tk_metrics_sched_publish(&st);
    tk_metrics_request(0, 200, 1000, 1, 1);
    tk_metrics_snapshot(slot, &s);
    assert_int_equal(s.m.gt_created, 19);
    assert_int_equal(s.m.gt_switches, 190);
    assert_int_equal(s.m.requests, 2);
    assert_int_equal(s.m.binds, 2);

    /* cache totals are per process too: deltas add up across a respawn */
    tk_metrics_cache_publish(10, 5, 1, 1);
    tk_metrics_cache_publish(12, 6, 1, 1);
    tk_metrics_snapshot(slot, &s);
    assert_int_equal(s.m.cache_hits, 12);
    assert_int_equal(s.m.cache_misses, 6);
    assert_int_equal(s.m.cache_connected, 1);
    tk_metrics_reap(slot);
    tk_metrics_bind(slot);
    tk_metrics_cache_publish(3, 0, 0, 0);
    tk_metrics_snapshot(slot, &s);
    assert_int_equal(s.m.cache_hits, 15);
    assert_int_equal(s.m.cache_errors, 1);
    assert_int_equal(s.m.cache_connected, 0);

    /* process statistics: RSS present, CPU time grows with work */
    assert_int_equal(tk_metrics_proc_publish(), 0);
    tk_metrics_snapshot(slot, &s);
    assert_true(s.m.rss_bytes > 1024 * 1024);
    uint64_t cpu0 = s.m.cpu_user_ns + s.m.cpu_sys_ns;
    /* burn 50 ms of CPU (not wall time: the box may be busy), within 5 s */
    volatile uint64_t x = 0;
    struct timespec c0, c1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
    uint64_t deadline = now_ns() + 5000000000ull;
    do {
        for (int k = 0; k < 100000; k++)
            x += 1;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
        assert_true(now_ns() < deadline);
    } while ((c1.tv_sec - c0.tv_sec) * 1000000000ll + (c1.tv_nsec - c0.tv_nsec) < 50000000ll);
    assert_int_equal(tk_metrics_proc_publish(), 0);
    tk_metrics_snapshot(slot, &s);
    assert_true(s.m.cpu_user_ns + s.m.cpu_sys_ns > cpu0);
    free_slot(slot);
    tk_metrics_bind(NULL);
}

/* Two workers merged: totals add, percentiles of the union, routes by name. */
static void test_merge(void **state)
{
    (void)state;
    tk_metrics_sh_t *a = shared_slot(), *b = shared_slot();
    tk_metrics_bind(a);
    tk_metrics_route_register(0, "GET /a");
    tk_metrics_route_register(1, "GET /both");
    for (int i = 0; i < 900; i++)
        tk_metrics_request(1, 200, 100000, 1, 2); /* 100 us */
    tk_metrics_request(0, 500, 100000, 1, 2);
    tk_metrics_bind(b);
    tk_metrics_route_register(0, "GET /both"); /* a different id for the same route */
    for (int i = 0; i < 99; i++)
        tk_metrics_request(0, 200, 10000000, 1, 2); /* 10 ms */
    tk_metrics_conns_set(2, 3);

    tk_metrics_snap_t sa, sb, all;
    tk_metrics_snapshot(a, &sa);
    tk_metrics_snapshot(b, &sb);
    memset(&all, 0, sizeof(all));
    tk_metrics_merge(&all, &sa);
    tk_metrics_merge(&all, &sb);
    assert_int_equal(all.m.requests, 1000);
    assert_int_equal(hist_total(&all.m), 1000);
    assert_int_equal(all.m.bytes_out, 2000);
    assert_int_equal(all.m.errors[TK_METRICS_ERR_5XX], 1);
    assert_int_equal(all.m.conns_idle, 3);
    assert_near(tk_metrics_percentile(&all, 50), 100, 0.033);
    assert_near(tk_metrics_percentile(&all, 90), 100, 0.033);
    assert_near(tk_metrics_percentile(&all, 95), 10000, 0.033);
    int both = -1, only_a = -1;
    for (int i = 0; i < TK_METRICS_MAX_ROUTES; i++) {
        if (!strcmp(all.m.routes[i].name, "GET /both"))
            both = i;
        if (!strcmp(all.m.routes[i].name, "GET /a"))
            only_a = i;
    }
    assert_true(both >= 0 && only_a >= 0);
    assert_int_equal(all.m.routes[both].requests, 999);
    assert_int_equal(all.m.routes[only_a].requests, 1);

    /* rolling rates: all requests fell into the last one or two seconds */
    uint64_t now = tk_metrics_now_sec();
    tk_metrics_rate_t r;
    tk_metrics_rate(&all, now + 1, 2, &r);
    assert_true(fabs(r.requests * 2 - 1000) < 0.01);
    assert_true(fabs(r.bytes_out * 2 - 2000) < 0.01);
    assert_true(fabs(r.errors * 2 - 1) < 0.01);
    tk_metrics_rate(&all, now + 1, 60, &r);
    assert_true(fabs(r.requests * 60 - 1000) < 0.01);
    /* seconds that have passed out of the window count for nothing */
    tk_metrics_rate(&all, now + 70, 10, &r);
    assert_true(r.requests == 0.0);
    free_slot(a);
    free_slot(b);
    tk_metrics_bind(NULL);
}

/* Snapshots stay consistent while a forked child writes as fast as it can. */
static void test_seqlock_concurrent(void **state)
{
    (void)state;
    tk_metrics_sh_t *slot = shared_slot();
    volatile int *stop =
        mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(stop != MAP_FAILED);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        tk_metrics_bind(slot);
        tk_metrics_route_register(2, "GET /x");
        for (uint64_t i = 0; !*stop && i < 200000000ull; i++) {
            tk_metrics_request(2, 200, (i % 5000) * 1000, 3, 7);
            tk_metrics_conns_set(i, i);
            /* a sliver of "request handling" between updates: a writer with
             * no gap at all starves any seqlock reader, which no real worker is */
            for (volatile int k = 0; k < 300; k++)
                ;
        }
        _exit(0);
    }
    /* read until enough snapshots overlapped a moving writer (a busy box may
     * schedule the child rarely: bounded by 10 s, not a fixed duration) */
    uint64_t deadline = now_ns() + 10000000000ull, snaps = 0, last = 0, changed = 0;
    tk_metrics_snap_t *s = malloc(sizeof(*s));
    assert_non_null(s);
    while ((snaps < 2000 || changed < 200) && now_ns() < deadline) {
        /* A writer preempted mid-update for 50 ms (a loaded box, an ASan
         * build) is reported as torn rather than waited for: that is the
         * snapshot's contract, so only consistent copies are checked here. */
        if (tk_metrics_snapshot(slot, s) != 0) {
            assert_true(s->torn);
            continue;
        }
        const tk_metrics_sh_t *m = &s->m;
        /* fields written in different places of one update agree */
        assert_int_equal(hist_total(m), m->requests);
        assert_int_equal(m->status[2], m->requests);
        assert_int_equal(m->bytes_in, 3 * m->requests);
        assert_int_equal(m->bytes_out, 7 * m->requests);
        assert_int_equal(m->routes[2].requests, m->requests);
        assert_int_equal(m->conns_active, m->conns_idle);
        assert_true(m->requests >= last);
        changed += m->requests != last;
        last = m->requests;
        snaps++;
    }
    *stop = 1;
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    /* an ASan build on a busy machine once reached fewer than 2,000 consistent
     * copies in the 10 s: what matters is that many were checked mid-write */
    if (snaps < 2000)
        print_message("only %llu consistent snapshots (%llu changed) in 10 s\n",
                      (unsigned long long)snaps, (unsigned long long)changed);
    assert_true(snaps >= 200);
    assert_true(changed >= 100); /* the writer really was running during the reads */
    free(s);
    munmap((void *)stop, 4096);
    free_slot(slot);
}

/* A writer killed at a random point (maybe mid-update) leaves a readable slot;
 * and one stuck mid-update is reported torn within the bound, then repaired. */
static void test_killed_writer(void **state)
{
    (void)state;
    tk_metrics_snap_t *s = malloc(sizeof(*s));
    assert_non_null(s);
    for (int round = 0; round < 5; round++) {
        tk_metrics_sh_t *slot = shared_slot();
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            tk_metrics_bind(slot);
            for (;;)
                tk_metrics_request(0, 200, 5000, 1, 1);
        }
        /* wait until it is writing, then kill it without warning */
        uint64_t deadline = now_ns() + 2000000000ull;
        while (__atomic_load_n(&slot->requests, __ATOMIC_RELAXED) < 1000 + round * 5000u)
            assert_true(now_ns() < deadline);
        kill(pid, SIGKILL);
        assert_int_equal(waitpid(pid, NULL, 0), pid);

        uint64_t t0 = now_ns();
        int torn = tk_metrics_snapshot(slot, s);
        assert_true(now_ns() - t0 < 1000000000ull);
        assert_true(s->m.requests > 0);
        /* the master reaps: the slot reads cleanly afterwards, counters kept */
        tk_metrics_reap(slot);
        assert_int_equal(tk_metrics_snapshot(slot, s), 0);
        assert_int_equal(s->torn, 0);
        assert_true(s->m.requests >= 1000);
        uint64_t h = hist_total(&s->m);
        assert_true(h == s->m.requests || (torn && h + 1 >= s->m.requests));
        free_slot(slot);
    }

    /* deterministic: a sequence left odd, as a writer killed between its two stores */
    tk_metrics_sh_t *slot = shared_slot();
    tk_metrics_bind(slot);
    tk_metrics_request(0, 200, 5000, 1, 1);
    slot->seq |= 1;
    uint64_t t0 = now_ns();
    assert_int_equal(tk_metrics_snapshot(slot, s), 1);
    assert_int_equal(s->torn, 1);
    assert_true(now_ns() - t0 < 1000000000ull);
    assert_int_equal(s->m.requests, 1);
    /* the next process bound to the slot repairs it */
    tk_metrics_bind(slot);
    assert_int_equal(slot->seq & 1, 0);
    assert_int_equal(tk_metrics_snapshot(slot, s), 0);
    assert_int_equal(s->m.requests, 1);
    free_slot(slot);
    free(s);
    tk_metrics_bind(NULL);
}

/* A worker's loop reads the other slots (/metrics, /debug/stats) without ever
 * sleeping: a slot stuck mid-update costs a bounded number of copies and
 * comes back torn, where the tool's reader waits 50 ms for it. */
static void test_snapshot_nowait(void **state)
{
    (void)state;
    tk_metrics_snap_t *s = malloc(sizeof(*s));
    assert_non_null(s);
    tk_metrics_sh_t *slot = shared_slot();
    tk_metrics_bind(slot);
    tk_metrics_request(0, 200, 5000, 1, 1);
    assert_int_equal(tk_metrics_snapshot_nowait(slot, s), 0);
    assert_int_equal(s->torn, 0);
    assert_int_equal(s->m.requests, 1);

    slot->seq |= 1; /* a writer stopped between its two stores */
    uint64_t t0 = now_ns();
    assert_int_equal(tk_metrics_snapshot_nowait(slot, s), 1);
    uint64_t took = now_ns() - t0;
    assert_int_equal(s->torn, 1);
    assert_int_equal(s->m.requests, 1); /* the last copy, flagged */
    assert_true(took < 5000000ull);
    t0 = now_ns();
    assert_int_equal(tk_metrics_snapshot(slot, s), 1);
    assert_true(now_ns() - t0 >= 40000000ull); /* the sleeping reader's wait */
    /* repaired by the next bind */
    tk_metrics_bind(slot);
    assert_int_equal(tk_metrics_snapshot_nowait(slot, s), 0);
    free_slot(slot);
    free(s);
    tk_metrics_bind(NULL);
}

/* Unbound (shm-less) runs write to a private slot. */
static void test_private_slot(void **state)
{
    (void)state;
    tk_metrics_bind(NULL);
    tk_metrics_sh_t *p = tk_metrics_slot();
    assert_non_null(p);
    uint64_t before = p->requests;
    tk_metrics_request(0, 200, 1, 0, 0);
    tk_metrics_heartbeat();
    tk_metrics_set_accepting(1);
    assert_int_equal(p->requests, before + 1);
    assert_int_equal(p->live.accepting, 1);
}

/* Cache topologies merge by node address; each worker sees every failover, so
 * failovers take the maximum; an unterminated address (a torn or hostile
 * slot) is cut, never read past. */
static void test_cache_topo_merge(void **state)
{
    (void)state;
    tk_cache_topo_t a, b, d;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&d, 0, sizeof(d));
    snprintf(a.master, sizeof(a.master), "10.0.0.1:6379");
    a.failovers = 1;
    a.sentinels = 3;
    a.sentinel_errors = 2;
    snprintf(a.nodes[0].addr, sizeof(a.nodes[0].addr), "10.0.0.1:6379");
    a.nodes[0].role = TK_CACHE_ROLE_MASTER;
    a.nodes[0].commands = 10;
    snprintf(a.nodes[1].addr, sizeof(a.nodes[1].addr), "10.0.0.2:6379");
    a.nodes[1].role = TK_CACHE_ROLE_REPLICA;
    a.nodes[1].reading = 1;
    a.nodes[1].commands = 5;
    a.inval_wait_us_max = 700;
    snprintf(b.master, sizeof(b.master), "10.0.0.3:6379");
    b.failovers = 2;
    b.sentinel_errors = 1;
    snprintf(b.nodes[3].addr, sizeof(b.nodes[3].addr), "10.0.0.2:6379");
    b.nodes[3].role = TK_CACHE_ROLE_REPLICA;
    b.nodes[3].reading = 1;
    b.nodes[3].commands = 7;
    b.nodes[3].errors = 1;
    memset(b.nodes[4].addr, 'x', sizeof(b.nodes[4].addr)); /* no NUL */
    b.nodes[4].commands = 1;
    b.inval_wait_us_max = 300;
    tk_metrics_cache_topo_merge(&d, &a);
    tk_metrics_cache_topo_merge(&d, &b);
    assert_string_equal(d.master, "10.0.0.3:6379"); /* the one that saw more failovers */
    assert_int_equal(d.failovers, 2);
    assert_int_equal(d.sentinels, 3);
    assert_int_equal(d.sentinel_errors, 3);
    assert_int_equal(d.inval_wait_us_max, 700);
    assert_string_equal(d.nodes[0].addr, "10.0.0.1:6379");
    assert_int_equal(d.nodes[0].commands, 10);
    assert_string_equal(d.nodes[1].addr, "10.0.0.2:6379");
    assert_int_equal(d.nodes[1].commands, 12);
    assert_int_equal(d.nodes[1].errors, 1);
    assert_int_equal(d.nodes[1].reading, 2); /* two workers read from it */
    assert_int_equal(d.nodes[1].role, TK_CACHE_ROLE_REPLICA);
    assert_int_equal(strlen(d.nodes[2].addr), TK_CACHE_NODE_ADDR - 1);
    assert_int_equal(d.nodes[2].commands, 1);
    assert_string_equal(tk_cache_role_name(d.nodes[0].role), "master");
    assert_string_equal(tk_cache_role_name(99), "none");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buckets),         cmocka_unit_test(test_percentiles),
        cmocka_unit_test(test_counters),        cmocka_unit_test(test_respawn_and_gauges),
        cmocka_unit_test(test_merge),           cmocka_unit_test(test_seqlock_concurrent),
        cmocka_unit_test(test_killed_writer),   cmocka_unit_test(test_private_slot),
        cmocka_unit_test(test_snapshot_nowait), cmocka_unit_test(test_cache_topo_merge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
