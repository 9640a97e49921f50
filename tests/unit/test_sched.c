/* test_sched.c: unit tests for the green-thread scheduler (server/runtime/scheduler.c). */
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
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "runtime/coro.h"
#include "proc/log.h"
#include "runtime/scheduler.h"
#include "runtime/waitq.h"
#include "sched_fixture.h"

/* --- FIFO ordering --------------------------------------------------------------- */

static int order[64], norder;

static void fifo_fn(void *arg)
{
    for (int round = 0; round < 3; round++) {
        order[norder++] = (int)(intptr_t)arg;
        tk_gt_yield();
    }
}

static void test_fifo(void **state)
{
    fixture_t *f = *state;
    norder = 0;
    for (intptr_t i = 0; i < 5; i++)
        assert_non_null(tk_gt_spawn(f->s, "fifo", fifo_fn, (void *)i));
    assert_int_equal(tk_sched_run(f->s), 0);
    assert_int_equal(norder, 15);
    for (int i = 0; i < 15; i++)
        assert_int_equal(order[i], i % 5);
    assert_idle(f->s);
}

/* --- 100,000 threads, stacks pooled -------------------------------------------- */

static unsigned long ran;

static void tiny_fn(void *arg)
{
    ran++;
}

static void spawner_fn(void *arg)
{
    tk_sched_t *s = arg;
    for (int wave = 0; wave < 100; wave++) {
        for (int i = 0; i < 1000; i++)
            assert_non_null(tk_gt_spawn(s, "tiny", tiny_fn, NULL));
        tk_gt_yield(); /* the wave runs and ends before we are back */
    }
}

static void test_many_threads(void **state)
{
    fixture_t *f = *state;
    tk_sched_stats_t st;
    ran = 0;
    assert_non_null(tk_gt_spawn(f->s, "spawner", spawner_fn, f->s));
    assert_int_equal(tk_sched_run(f->s), 0);
    assert_int_equal(ran, 100000);
    tk_sched_stats(f->s, &st);
    assert_int_equal(st.created, 100001);
    assert_int_equal(st.exited, 100001);
    assert_idle(f->s);
    /* every stack is back in the pool: reserved address space is exactly the
     * pooled stacks, and at most one wave (+ the spawner) was ever mapped */
    assert_true(st.pooled_stacks >= 1000 && st.pooled_stacks <= 1001);
    assert_int_equal(st.stack_reserved, st.pooled_stacks * (64 * 1024 + TK_CORO_GUARD));
    assert_true(st.switches >= 100001);
    /* residency: every stack has at least its header page resident; the
     * budgeted refresh agrees with a full scan once nothing changes */
    tk_sched_stats_t ex;
    tk_sched_stats_exact(f->s, &ex);
    assert_true(ex.stack_resident >= ex.pooled_stacks * (uint64_t)sysconf(_SC_PAGESIZE));
    assert_true(ex.stack_resident <= ex.stack_reserved);
    tk_sched_stats(f->s, &st);
    assert_int_equal(st.stack_resident, ex.stack_resident);
}

/* --- park and wake on a socketpair ----------------------------------------------- */

typedef struct {
    int fd;
    int rc, err;
    char got;
    int64_t deadline;
    int64_t woke_ms;
    int done;
} waiter_t;

static void reader_fn(void *arg)
{
    waiter_t *w = arg;
    w->rc = tk_gt_wait_fd(w->fd, EV_READ, TK_GT_WAIT_NET, w->deadline);
    w->err = errno;
    w->woke_ms = tk_now_ms();
    if (w->rc == 0 && read(w->fd, &w->got, 1) != 1)
        w->got = '?';
    w->done = 1;
}

typedef struct {
    tk_sched_t *s;
    int fd;
    int saw_wait_net;
} writer_t;

static void writer_fn(void *arg)
{
    writer_t *w = arg;
    tk_sched_stats_t st;
    tk_gt_yield(); /* the reader parks first */
    tk_sched_stats(w->s, &st);
    w->saw_wait_net = (int)st.by_state[TK_GT_WAIT_NET];
    assert_int_equal(st.by_state[TK_GT_RUNNING], 1);
    assert_int_equal(write(w->fd, "x", 1), 1);
}

static void test_park_socketpair(void **state)
{
    fixture_t *f = *state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    waiter_t r = {.fd = sv[0], .deadline = -1};
    writer_t w = {.s = f->s, .fd = sv[1]};
    tk_gt_t *rg = tk_gt_spawn(f->s, "reader", reader_fn, &r);
    assert_non_null(rg);
    assert_non_null(tk_gt_spawn(f->s, "writer", writer_fn, &w));
    assert_int_equal(tk_sched_run(f->s), 0);
    assert_int_equal(w.saw_wait_net, 1);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.got, 'x');
    assert_idle(f->s);
    close(sv[0]);
    close(sv[1]);
}

/* A thread woken by fd readiness runs within the same loop iteration, also
 * when the caller drives libevent itself. */
static void test_wake_same_iteration(void **state)
{
    fixture_t *f = *state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    waiter_t r = {.fd = sv[0], .deadline = -1};
    assert_non_null(tk_gt_spawn(f->s, "reader", reader_fn, &r));
    /* one iteration: the reader runs and parks */
    assert_int_equal(event_base_loop(f->base, EVLOOP_ONCE), 0);
    assert_int_equal(r.done, 0);
    assert_int_equal(write(sv[1], "y", 1), 1);
    /* one more iteration: the fd event fires and the reader finishes in it */
    assert_int_equal(event_base_loop(f->base, EVLOOP_ONCE), 0);
    assert_int_equal(r.done, 1);
    assert_int_equal(r.got, 'y');
    assert_idle(f->s);
    close(sv[0]);
    close(sv[1]);
}

typedef struct {
    tk_sched_t *s;
    int ran;
} spawn_cb_t;

static void mark_fn(void *arg)
{
    ((spawn_cb_t *)arg)->ran = 1;
}

static void spawn_from_cb(evutil_socket_t fd, short what, void *arg)
{
    spawn_cb_t *c = arg;
    assert_non_null(tk_gt_spawn(c->s, "from-cb", mark_fn, c));
    assert_int_equal(c->ran, 0); /* not inline: after this callback returns */
}

static void test_spawn_from_callback(void **state)
{
    fixture_t *f = *state;
    spawn_cb_t c = {.s = f->s};
    struct event *ev = evtimer_new(f->base, spawn_from_cb, &c);
    struct timeval tv = {0, 1000};
    evtimer_add(ev, &tv);
    assert_int_equal(event_base_loop(f->base, EVLOOP_ONCE), 0);
    assert_int_equal(c.ran, 1);
    event_free(ev);
    assert_idle(f->s);
}

/* tk_sched_run_ready(): a thread spawned from a callback runs at once, its
 * stack is back in the pool for the next spawn, and threads that yielded are
 * left for the yield event (once per loop iteration). */
typedef struct {
    tk_sched_t *s;
    int spins, stop;
    int ran[4];
    const void *stack[4];
} ready_t;

static ready_t *g_ready;

static void ready_fn(void *arg)
{
    int i = (int)(intptr_t)arg;
    int local;
    g_ready->ran[i] = 1;
    g_ready->stack[i] = &local;
}

static void spinner_fn(void *arg)
{
    ready_t *r = arg;
    while (!r->stop) {
        r->spins++;
        tk_gt_yield();
    }
}

static void ready_cb(evutil_socket_t fd, short what, void *arg)
{
    ready_t *r = arg;
    for (int i = 0; i < 4; i++) {
        int before = r->spins;
        assert_non_null(tk_gt_spawn(r->s, "ready", ready_fn, (void *)(intptr_t)i));
        tk_sched_run_ready(r->s);
        assert_int_equal(r->ran[i], 1);     /* ran inline */
        assert_int_equal(r->spins, before); /* the yielder did not */
    }
}

static void test_run_ready(void **state)
{
    fixture_t *f = *state;
    ready_t r = {.s = f->s};
    g_ready = &r;
    assert_non_null(tk_gt_spawn(f->s, "spinner", spinner_fn, &r));
    assert_int_equal(event_base_loop(f->base, EVLOOP_ONCE), 0);
    assert_int_equal(r.spins, 1);
    struct event *ev = evtimer_new(f->base, ready_cb, &r);
    struct timeval tv = {0, 0};
    evtimer_add(ev, &tv);
    int spins = r.spins;
    assert_int_equal(event_base_loop(f->base, EVLOOP_ONCE), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(r.ran[i], 1);
    /* one stack served all four: each went back before the next spawn */
    for (int i = 1; i < 4; i++)
        assert_ptr_equal(r.stack[i], r.stack[0]);
    /* and the yielder ran at most once in that iteration */
    assert_true(r.spins - spins <= 1);
    r.stop = 1;
    while (tk_sched_live(f->s) > 0)
        assert_int_equal(event_base_loop(f->base, EVLOOP_ONCE), 0);
    event_free(ev);
    assert_idle(f->s);
}

/* --- deadlines ---------------------------------------------------------------- */

typedef struct {
    int rc_fd, err_fd, rc_park, err_park, rc_sleep;
    int64_t late_fd, late_park, slept;
} deadline_t;

static void deadline_fn(void *arg)
{
    deadline_t *d = arg;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    int64_t dl = tk_now_ms() + 30;
    d->rc_fd = tk_gt_wait_fd(sv[0], EV_READ, TK_GT_WAIT_DB, dl);
    d->err_fd = errno;
    d->late_fd = tk_now_ms() - dl;
    dl = tk_now_ms() + 20;
    d->rc_park = tk_gt_park(TK_GT_WAIT_BROKER, dl);
    d->err_park = errno;
    d->late_park = tk_now_ms() - dl;
    int64_t t0 = tk_now_ms();
    d->rc_sleep = tk_gt_sleep_ms(15);
    d->slept = tk_now_ms() - t0;
    close(sv[0]);
    close(sv[1]);
}

static void test_deadlines(void **state)
{
    fixture_t *f = *state;
    deadline_t d;
    memset(&d, 0, sizeof(d));
    assert_non_null(tk_gt_spawn(f->s, "deadline", deadline_fn, &d));
    assert_int_equal(tk_sched_run(f->s), 0);
    assert_int_equal(d.rc_fd, -1);
    assert_int_equal(d.err_fd, ETIMEDOUT);
    assert_true(d.late_fd >= 0 && d.late_fd < 1000);
    assert_int_equal(d.rc_park, -1);
    assert_int_equal(d.err_park, ETIMEDOUT);
    assert_true(d.late_park >= 0 && d.late_park < 1000);
    assert_int_equal(d.rc_sleep, 0);
    assert_true(d.slept >= 15);
    assert_idle(f->s);
}

/* --- park / unpark ---------------------------------------------------------------- */

typedef struct {
    tk_gt_t *parked;
    int rc, unpark_rc_early, unpark_rc;
    tk_gt_state_t seen;
} unpark_t;

static void parker_fn(void *arg)
{
    unpark_t *u = arg;
    u->rc = tk_gt_park(TK_GT_WAIT_CACHE, -1);
}

static void unparker_fn(void *arg)
{
    unpark_t *u = arg;
    u->unpark_rc_early = tk_gt_unpark(u->parked); /* still runnable: not parked */
    tk_gt_yield();
    u->seen = tk_gt_state(u->parked);
    u->unpark_rc = tk_gt_unpark(u->parked);
}

static void test_park_unpark(void **state)
{
    fixture_t *f = *state;
    unpark_t u = {.rc = 99};
    assert_non_null(tk_gt_spawn(f->s, "unparker", unparker_fn, &u));
    u.parked = tk_gt_spawn(f->s, "parker", parker_fn, &u);
    assert_non_null(u.parked);
    assert_int_equal(tk_sched_run(f->s), 0);
    assert_int_equal(u.unpark_rc_early, -1);
    assert_int_equal(u.seen, TK_GT_WAIT_CACHE);
    assert_int_equal(u.unpark_rc, 0);
    assert_int_equal(u.rc, 0);
    assert_idle(f->s);
}

/* --- cancellation and defers ---------------------------------------------------------- */

typedef struct {
    int fd;
    int rc, err, rc_after, err_after;
    char trail[8];
    int ntrail;
    tk_gt_t *victim;
} cancel_t;

static void push_a(void *arg)
{
    cancel_t *c = arg;
    c->trail[c->ntrail++] = 'a';
}
static void push_b(void *arg)
{
    cancel_t *c = arg;
    c->trail[c->ntrail++] = 'b';
}

static void victim_fn(void *arg)
{
    cancel_t *c = arg;
    assert_int_equal(tk_gt_defer(push_a, c), 0);
    assert_int_equal(tk_gt_defer(push_b, c), 0);
    c->rc = tk_gt_wait_fd(c->fd, EV_READ, TK_GT_WAIT_NET, -1);
    c->err = errno;
    c->rc_after = tk_gt_sleep_ms(1000); /* cancelled: must not park again */
    c->err_after = errno;
}

static void canceller_fn(void *arg)
{
    cancel_t *c = arg;
    tk_gt_yield();
    assert_int_equal(tk_gt_state(c->victim), TK_GT_WAIT_NET);
    tk_gt_cancel(c->victim);
    assert_true(tk_gt_cancelled(c->victim));
}

static void test_cancel(void **state)
{
    fixture_t *f = *state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    cancel_t c = {.fd = sv[0]};
    c.victim = tk_gt_spawn(f->s, "victim", victim_fn, &c);
    assert_non_null(tk_gt_spawn(f->s, "canceller", canceller_fn, &c));
    int64_t t0 = tk_now_ms();
    assert_int_equal(tk_sched_run(f->s), 0);
    assert_true(tk_now_ms() - t0 < 900);
    assert_int_equal(c.rc, -1);
    assert_int_equal(c.err, ECANCELED);
    assert_int_equal(c.rc_after, -1);
    assert_int_equal(c.err_after, ECANCELED);
    assert_int_equal(c.ntrail, 2);
    assert_memory_equal(c.trail, "ba", 2); /* LIFO */
    assert_idle(f->s);
    close(sv[0]);
    close(sv[1]);
}

static int ndefers_run;
static void count_defer(void *arg)
{
    ndefers_run++;
}

static void many_defers_fn(void *arg)
{
    for (int i = 0; i < 20; i++)
        assert_int_equal(tk_gt_defer(count_defer, NULL), 0);
    tk_gt_park(TK_GT_WAIT_NET, -1); /* until the scheduler is freed */
}

/* tk_sched_free cancels parked threads and runs their defers. */
static void test_free_cancels(void **state)
{
    struct event_base *base = event_base_new();
    tk_sched_t *s = tk_sched_new(base, NULL);
    assert_non_null(s);
    ndefers_run = 0;
    for (int i = 0; i < 3; i++)
        assert_non_null(tk_gt_spawn(s, "parked", many_defers_fn, NULL));
    assert_int_equal(event_base_loop(base, EVLOOP_ONCE), 0);
    assert_int_equal(tk_sched_live(s), 3);
    /* nothing can wake them: tk_sched_run reports the deadlock */
    assert_int_equal(tk_sched_run(s), -1);
    assert_int_equal(errno, EDEADLK);
    tk_sched_free(s);
    assert_int_equal(ndefers_run, 60);
    event_base_free(base);
}

/* A thread spawned by a cancelled thread while tk_sched_free unwinds (a
 * start-up job that spawns helpers) is cancelled too: it must not park for
 * real and then be released from under whatever holds its handle (the Redis
 * client's pending reply did that: SEGV at worker exit). */
static int child_park_rc, child_park_err, children_done;
static void late_child_fn(void *arg)
{
    errno = 0;
    child_park_rc = tk_gt_park(TK_GT_WAIT_CACHE, -1);
    child_park_err = errno;
    children_done++;
}

static void late_spawner_fn(void *arg)
{
    tk_gt_park(TK_GT_WAIT_DB, -1); /* woken by the cancel of tk_sched_free */
    assert_non_null(tk_gt_spawn(tk_sched_current(), "late", late_child_fn, NULL));
}

static void test_free_cancels_threads_spawned_while_freeing(void **state)
{
    struct event_base *base = event_base_new();
    tk_sched_t *s = tk_sched_new(base, NULL);
    assert_non_null(s);
    child_park_rc = 0;
    child_park_err = 0;
    children_done = 0;
    assert_non_null(tk_gt_spawn(s, "spawner", late_spawner_fn, NULL));
    assert_int_equal(event_base_loop(base, EVLOOP_ONCE), 0);
    assert_int_equal(tk_sched_live(s), 1);
    tk_sched_free(s);
    assert_int_equal(children_done, 1); /* it ran to its end, not force-released */
    assert_int_equal(child_park_rc, -1);
    assert_int_equal(child_park_err, ECANCELED);
    event_base_free(base);
}

/* --- join ---------------------------------------------------------------------------- */

typedef struct {
    tk_gt_t *target;
    int target_done, rc, saw_done;
} join_t;

static void target_fn(void *arg)
{
    join_t *j = arg;
    tk_gt_sleep_ms(5);
    j->target_done = 1;
}

static void joiner_fn(void *arg)
{
    join_t *j = arg;
    j->rc = tk_gt_join(j->target);
    j->saw_done = j->target_done;
}

static void quick_fn(void *arg) {}

static void test_join(void **state)
{
    fixture_t *f = *state;
    join_t j = {.rc = 99};
    j.target = tk_gt_spawn(f->s, "target", target_fn, &j);
    tk_gt_joinable(j.target);
    assert_non_null(tk_gt_spawn(f->s, "joiner", joiner_fn, &j));
    assert_int_equal(tk_sched_run(f->s), 0);
    assert_int_equal(j.rc, 0);
    assert_int_equal(j.saw_done, 1);
    assert_idle(f->s);

    /* joining a thread that already ended, from outside any green thread */
    tk_gt_t *q = tk_gt_spawn(f->s, "quick", quick_fn, NULL);
    tk_gt_joinable(q);
    assert_int_equal(tk_sched_run(f->s), 0);
    assert_int_equal(tk_gt_join(q), 0);
    assert_idle(f->s);
    tk_sched_stats_t st;
    tk_sched_stats(f->s, &st);
    assert_int_equal(st.pooled_stacks, 2); /* both stacks back once joined */
    assert_int_equal(st.stack_reserved % 2, 0);
}

/* --- state accounting ------------------------------------------------------------- */

typedef struct {
    tk_sched_t *s;
    int fd;
    tk_mutex_t m;
    uint64_t counted[TK_GT_NSTATES];
    tk_sched_stats_t st;
    unsigned visited;
} acct_t;

static void acct_sleeper(void *arg)
{
    tk_gt_sleep_ms(10000);
}
static void acct_netter(void *arg)
{
    acct_t *a = arg;
    tk_gt_wait_fd(a->fd, EV_READ, TK_GT_WAIT_NET, -1);
}
static void acct_locker(void *arg)
{
    acct_t *a = arg;
    if (tk_mutex_lock(&a->m) == 0) {
        tk_gt_sleep_ms(10000);
        tk_mutex_unlock(&a->m);
    }
}
static void acct_yielder(void *arg)
{
    for (int i = 0; i < 3 && !tk_gt_cancelled(tk_gt_self()); i++)
        tk_gt_yield();
}

static void acct_visit(tk_gt_t *gt, void *arg)
{
    acct_t *a = arg;
    a->counted[tk_gt_state(gt)]++;
    a->visited++;
}

static void acct_cancel(tk_gt_t *gt, void *arg)
{
    if (gt != tk_gt_self())
        tk_gt_cancel(gt);
}

static void acct_checker(void *arg)
{
    acct_t *a = arg;
    tk_gt_yield(); /* everyone else has run once and parked or yielded */
    tk_sched_foreach(a->s, acct_visit, a);
    tk_sched_stats(a->s, &a->st);
    tk_sched_foreach(a->s, acct_cancel, NULL);
}

/* Every live thread is in exactly one state, and the counts agree. */
static void test_state_accounting(void **state)
{
    fixture_t *f = *state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    acct_t a;
    memset(&a, 0, sizeof(a));
    a.s = f->s;
    a.fd = sv[0];
    tk_mutex_init(&a.m);
    tk_gt_spawn(f->s, "sleeper", acct_sleeper, &a);
    tk_gt_spawn(f->s, "netter", acct_netter, &a);
    tk_gt_spawn(f->s, "locker1", acct_locker, &a); /* holds m, sleeps */
    tk_gt_spawn(f->s, "locker2", acct_locker, &a); /* queued on m */
    tk_gt_spawn(f->s, "yielder", acct_yielder, &a);
    tk_gt_spawn(f->s, "checker", acct_checker, &a);
    assert_int_equal(tk_sched_run(f->s), 0);
    assert_int_equal(a.visited, 6);
    for (int i = 0; i < TK_GT_NSTATES; i++)
        assert_int_equal(a.counted[i], a.st.by_state[i]);
    assert_int_equal(a.st.by_state[TK_GT_RUNNING], 1);
    assert_int_equal(a.st.by_state[TK_GT_RUNNABLE], 1);
    assert_int_equal(a.st.by_state[TK_GT_SLEEPING], 2);
    assert_int_equal(a.st.by_state[TK_GT_WAIT_NET], 1);
    assert_int_equal(a.st.by_state[TK_GT_WAIT_GT], 1);
    assert_int_equal(a.st.created - a.st.exited, 6);
    assert_string_equal(tk_gt_state_name(TK_GT_WAIT_NET), "wait_net");
    assert_idle(f->s);
    close(sv[0]);
    close(sv[1]);
}

/* --- limits, long runs, options ------------------------------------------------------ */

static void test_max_threads(void **state)
{
    tk_sched_opts_t o;
    tk_sched_opts_default(&o);
    o.max_threads = 3;
    struct event_base *base = event_base_new();
    tk_sched_t *s = tk_sched_new(base, &o);
    for (int i = 0; i < 3; i++)
        assert_non_null(tk_gt_spawn(s, "q", quick_fn, NULL));
    errno = 0;
    assert_null(tk_gt_spawn(s, "q", quick_fn, NULL));
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(tk_sched_run(s), 0);
    assert_non_null(tk_gt_spawn(s, "q", quick_fn, NULL));
    assert_int_equal(tk_sched_run(s), 0);
    tk_sched_free(s);
    event_base_free(base);
}

static void hog_fn(void *arg)
{
    uint64_t until = tk_now_ns() + 3000000u; /* 3 ms without yielding */
    while (tk_now_ns() < until)
        ;
    tk_gt_yield();
    tk_gt_sleep_ms(0);
}

static void test_long_run(void **state)
{
    tk_sched_opts_t o;
    tk_sched_opts_default(&o);
    o.long_run_ns = 1000000u;
    struct event_base *base = event_base_new();
    tk_sched_t *s = tk_sched_new(base, &o);
    tk_sched_stats_t st;
    char path[] = "/tmp/tk-test-sched-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(tk_log_open(path), 0);
    assert_non_null(tk_gt_spawn(s, "hog", hog_fn, NULL));
    assert_int_equal(tk_sched_run(s), 0);
    tk_log_open(NULL);
    tk_sched_stats(s, &st);
    /* >= : on a loaded machine a short slice may be preempted past 1 ms too */
    assert_true(st.long_runs >= 1);
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_non_null(strstr(buf, "green thread 1 (hog) ran "));
    assert_non_null(strstr(buf, "without yielding"));
    close(fd);
    unlink(path);
    tk_sched_free(s);
    event_base_free(base);
}

/* Parking calls need a green thread; outside one they fail, never block. */
static void test_outside_thread(void **state)
{
    fixture_t *f = *state;
    tk_sem_t sem;
    tk_sem_init(&sem, 1);
    assert_null(tk_gt_self());
    assert_int_equal(tk_gt_defer(count_defer, NULL), -1);
    assert_int_equal(errno, EPERM);
    assert_int_equal(tk_gt_sleep_ms(1), -1);
    assert_int_equal(errno, EPERM);
    assert_int_equal(tk_gt_park(TK_GT_WAIT_NET, -1), -1);
    assert_int_equal(errno, EPERM);
    assert_int_equal(tk_gt_wait_fd(0, EV_READ, TK_GT_WAIT_NET, -1), -1);
    assert_int_equal(errno, EPERM);
    assert_int_equal(tk_sem_wait(&sem, -1), 0); /* available: no need to park */
    assert_int_equal(tk_sem_wait(&sem, -1), -1);
    assert_int_equal(errno, EPERM);
    tk_sem_post(&sem); /* posting from a callback is fine */
    assert_int_equal(sem.count, 1);
    assert_ptr_equal(tk_sched_current(), f->s);
    assert_ptr_equal(tk_sched_base(f->s), f->base);
    /* one scheduler per thread */
    errno = 0;
    assert_null(tk_sched_new(f->base, NULL));
    assert_int_equal(errno, EBUSY);
}

static void test_opts_check(void **state)
{
    tk_sched_opts_t o;
    char err[200];
    tk_sched_opts_default(&o);
    assert_int_equal(tk_sched_opts_check(&o, err, sizeof(err)), 0);
    o.stack_size = 1000;
    assert_int_equal(tk_sched_opts_check(&o, err, sizeof(err)), -1);
    assert_string_equal(err, "runtime.stack_size: 1000 is out of range 16384..8388608");
    o.stack_size = 16u << 20;
    assert_int_equal(tk_sched_opts_check(&o, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "runtime.stack_size"));
    tk_sched_opts_default(&o);
    o.max_threads = 2000000;
    assert_int_equal(tk_sched_opts_check(&o, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "runtime.max_threads: 2000000 is out of range 0..1000000"));
    tk_sched_opts_default(&o);
    o.long_run_ns = 0;
    assert_int_equal(tk_sched_opts_check(&o, err, sizeof(err)), -1);
    assert_string_equal(err, "runtime.long_run_ms: 0 is out of range 1..60000");
    o.long_run_ns = 61000000000ull;
    assert_int_equal(tk_sched_opts_check(&o, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "runtime.long_run_ms: 61000"));
    /* tk_sched_new refuses them too */
    struct event_base *base = event_base_new();
    errno = 0;
    assert_null(tk_sched_new(base, &o));
    assert_int_equal(errno, EINVAL);
    event_base_free(base);
}

/* --- guard-page overflow (in a forked child) --------------------------------------------- */

#pragma GCC diagnostic ignored "-Winfinite-recursion"
static int recurse(int depth)
{
    volatile char pad[512];
    pad[0] = (char)depth;
    pad[511] = (char)depth;
    return recurse(depth + 1) + pad[0] + pad[511];
}

static void overflow_fn(void *arg)
{
    tk_gt_set_note(tk_gt_self(), "192.0.2.7", 9, "POST /users?x=1", 15);
    recurse(0);
}

static void test_overflow(void **state)
{
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(pipefd[1], 2);
        close(pipefd[0]);
        tk_sched_opts_t o;
        tk_sched_opts_default(&o);
        o.stack_size = 32 * 1024;
        struct event_base *base = event_base_new();
        tk_sched_t *s = tk_sched_new(base, &o);
        tk_gt_spawn(s, "quick", quick_fn, NULL);
        tk_gt_spawn(s, "deep-recursion", overflow_fn, NULL);
        tk_sched_run(s);
        _exit(0); /* not reached */
    }
    close(pipefd[1]);
    char out[8192];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof(out) - 1 && (r = read(pipefd[0], out + n, sizeof(out) - 1 - n)) > 0)
        n += (size_t)r;
    out[n] = '\0';
    close(pipefd[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGSEGV);
    assert_non_null(strstr(out, "green thread 2 (deep-recursion) overflowed its 32768-byte stack "
                                "serving 192.0.2.7 POST /users?x=1\n"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fifo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_park_socketpair, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wake_same_iteration, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spawn_from_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_ready, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadlines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_park_unpark, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test(test_free_cancels),
        cmocka_unit_test(test_free_cancels_threads_spawned_while_freeing),
        cmocka_unit_test_setup_teardown(test_join, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_accounting, setup, teardown),
        cmocka_unit_test(test_max_threads),
        cmocka_unit_test(test_long_run),
        cmocka_unit_test(test_opts_check),
        cmocka_unit_test_setup_teardown(test_outside_thread, setup, teardown),
        cmocka_unit_test(test_overflow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
