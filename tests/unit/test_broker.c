/* test_broker.c: the connection broker in a MAP_SHARED mapping, with forked
 * processes: the cap, FIFO order, the release policy, reclaim of a killed
 * holder, and recovery of the robust lock after kill -9. */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shm/broker.h"

/* Shared between the test and its children. */
typedef struct {
    int inuse;                      /* slots currently used by some child */
    int max_inuse;                  /* high-water mark of inuse */
    int errors;                     /* protocol violations seen by children */
    int owner[TK_BROKER_MAX_SLOTS]; /* pid using each slot, 0 = none */
    int seq[16];                    /* FIFO test: order in which children were served */
    int nseq;
    int ready;
} shared_t;

static tk_broker_sh_t *B;
static shared_t *S;

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int setup(void **state)
{
    (void)state;
    B = mmap(NULL, sizeof(*B), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    S = mmap(NULL, sizeof(*S), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (B == MAP_FAILED || S == MAP_FAILED)
        return -1;
    memset(S, 0, sizeof(*S));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    munmap(B, sizeof(*B));
    munmap(S, sizeof(*S));
    return 0;
}

static void assert_consistent(void)
{
    char err[256] = "";
    assert_int_equal(tk_broker_lock(B), 0);
    int r = tk_broker_check_locked(B, err, sizeof(err));
    tk_broker_unlock(B);
    if (r != 0)
        fail_msg("broker inconsistent: %s", err);
}

/* Wait (bounded) until cond() holds. */
#define WAIT_FOR(cond, ms)                                                                         \
    do {                                                                                           \
        uint64_t dl_ = mono_ms() + (ms);                                                           \
        while (!(cond)) {                                                                          \
            if (mono_ms() > dl_)                                                                   \
                fail_msg("timed out waiting for " #cond);                                          \
            usleep(200);                                                                           \
        }                                                                                          \
    } while (0)

static void test_basic(void **state)
{
    int slot, entry, wake, e2;
    uint64_t ticket;
    (void)state;
    assert_int_equal(tk_broker_sh_init(B, 2), 0);
    uint32_t g0 = tk_broker_worker_attach(B, 0, getpid());
    uint32_t g1 = tk_broker_worker_attach(B, 1, getpid());
    assert_true(g0 >= 1 && g1 >= 1);

    int s0, s1;
    assert_int_equal(tk_broker_acquire(B, 0, g0, &s0, &entry, &ticket, &wake), TK_BROKER_GOT);
    assert_int_equal(tk_broker_acquire(B, 0, g0, &s1, &entry, &ticket, &wake), TK_BROKER_GOT);
    assert_int_not_equal(s0, s1);
    /* Cap reached: worker 1 queues. */
    assert_int_equal(tk_broker_acquire(B, 1, g1, &slot, &entry, &ticket, &wake), TK_BROKER_QUEUED);
    assert_int_equal(tk_broker_qlen(B), 1);
    assert_consistent();

    /* Cancel while waiting: the entry is gone, nothing granted. */
    assert_int_equal(tk_broker_cancel(B, 1, entry, ticket, &slot), 0);
    assert_int_equal(tk_broker_qlen(B), 0);
    assert_consistent();

    /* Queue again; worker 0 closes a connection: the slot goes to worker 1. */
    assert_int_equal(tk_broker_acquire(B, 1, g1, &slot, &entry, &ticket, &wake), TK_BROKER_QUEUED);
    assert_int_equal(tk_broker_free_slot(B, 0, s0, &e2, &wake), TK_BROKER_TO_REMOTE);
    assert_int_equal(wake, 1);
    assert_consistent();
    int ge, gs;
    uint64_t gt;
    assert_int_equal(tk_broker_next_grant(B, 1, &ge, &gt, &gs), 1);
    assert_int_equal(ge, entry);
    assert_true(gt == ticket);
    assert_int_equal(gs, s0);
    assert_int_equal(tk_broker_next_grant(B, 1, &ge, &gt, &gs), 0);
    assert_consistent();

    /* Granted-then-cancelled: the waiter keeps the slot. */
    assert_int_equal(tk_broker_acquire(B, 1, g1, &slot, &entry, &ticket, &wake), TK_BROKER_QUEUED);
    assert_int_equal(tk_broker_free_slot(B, 0, s1, &e2, &wake), TK_BROKER_TO_REMOTE);
    assert_int_equal(tk_broker_cancel(B, 1, entry, ticket, &slot), 1);
    assert_int_equal(slot, s1);
    assert_consistent();

    /* Worker 1 now holds both. Releasing with an empty queue keeps them idle
     * up to max_idle (1 here), the second is closed. */
    tk_broker_set_max_idle(B, 1);
    assert_int_equal(tk_broker_release(B, 1, s0, &e2, &wake), TK_BROKER_KEEP_IDLE);
    assert_int_equal(tk_broker_release(B, 1, s1, &e2, &wake), TK_BROKER_CLOSE_IDLE);
    assert_int_equal(B->nidle, 1);
    /* ... but its slot is still worker 1's until the backend is gone. */
    assert_int_equal(B->nfree, 0);
    assert_int_equal(B->workers[1].nheld, 2);
    assert_consistent();
    assert_int_equal(tk_broker_free_slot(B, 1, s1, &e2, &wake), TK_BROKER_FREED);
    assert_int_equal(B->nfree, 1);
    assert_consistent();

    /* Worker 0 takes the free one; then queues, and is told that worker 1
     * sits on an idle connection. */
    assert_int_equal(tk_broker_acquire(B, 0, g0, &slot, &entry, &ticket, &wake), TK_BROKER_GOT);
    assert_int_equal(tk_broker_acquire(B, 0, g0, &slot, &entry, &ticket, &wake), TK_BROKER_QUEUED);
    assert_int_equal(wake, 1);
    /* Worker 1 gives it up: free_slot of an idle slot goes to the head. */
    assert_int_equal(tk_broker_free_slot(B, 1, s0, &e2, &wake), TK_BROKER_TO_REMOTE);
    assert_int_equal(wake, 0);
    assert_int_equal(B->nidle, 0);
    assert_consistent();
}

/* tk_broker_try_acquire() never queues and never overtakes a waiter; a
 * waiter queued while nobody is idle wakes a worker that holds slots (its
 * shared connections give one up); the head's age is reported. */
static void test_try_acquire_and_wake_holder(void **state)
{
    int s0, s1, slot, entry, wake, e2;
    uint64_t ticket;
    (void)state;
    assert_int_equal(tk_broker_sh_init(B, 2), 0);
    uint32_t g0 = tk_broker_worker_attach(B, 0, getpid());
    uint32_t g1 = tk_broker_worker_attach(B, 1, getpid());

    assert_int_equal(tk_broker_head_age_ns(B), 0);
    assert_int_equal(tk_broker_try_acquire(B, 0, &s0), 0);
    assert_int_equal(tk_broker_try_acquire(B, 0, &s1), 0);
    assert_int_not_equal(s0, s1);
    assert_int_equal(tk_broker_try_acquire(B, 1, &slot), -1); /* cap: no slot, no queue entry */
    assert_int_equal(tk_broker_qlen(B), 0);
    assert_int_equal(B->workers[0].nheld, 2);
    assert_consistent();

    /* Worker 1 queues; nobody is idle, so the holder (worker 0) is woken. */
    assert_int_equal(tk_broker_acquire(B, 1, g1, &slot, &entry, &ticket, &wake), TK_BROKER_QUEUED);
    assert_int_equal(wake, 0);
    usleep(2000);
    assert_true(tk_broker_head_age_ns(B) >= 1000000u);

    /* A freed slot goes to the waiter, not to a try_acquire. */
    assert_int_equal(tk_broker_free_slot(B, 0, s0, &e2, &wake), TK_BROKER_TO_REMOTE);
    assert_int_equal(wake, 1);
    assert_int_equal(tk_broker_try_acquire(B, 0, &slot), -1);
    int ge, gs;
    uint64_t gt;
    assert_int_equal(tk_broker_next_grant(B, 1, &ge, &gt, &gs), 1);
    assert_int_equal(gs, s0);
    assert_int_equal(tk_broker_head_age_ns(B), 0);
    assert_consistent();

    /* With the queue empty and a slot free, try_acquire gets it. */
    assert_int_equal(tk_broker_free_slot(B, 1, s0, &e2, &wake), TK_BROKER_FREED);
    assert_int_equal(tk_broker_try_acquire(B, 1, &slot), 0);
    assert_int_equal(slot, s0);
    assert_consistent();
    (void)g0;
}

static void test_release_policy(void **state)
{
    int s, entry1, entry0, e, wake, slot;
    uint64_t t1, t0;
    (void)state;
    assert_int_equal(tk_broker_sh_init(B, 1), 0);
    uint32_t g0 = tk_broker_worker_attach(B, 0, getpid());
    uint32_t g1 = tk_broker_worker_attach(B, 1, getpid());
    assert_int_equal(tk_broker_acquire(B, 0, g0, &s, &e, &t0, &wake), TK_BROKER_GOT);

    /* Worker 1 queued first, worker 0 right after (within the bias): the
     * release keeps the connection in worker 0. */
    B->local_bias_ns = 1000000000ull;
    assert_int_equal(tk_broker_acquire(B, 1, g1, &slot, &entry1, &t1, &wake), TK_BROKER_QUEUED);
    assert_int_equal(tk_broker_acquire(B, 0, g0, &slot, &entry0, &t0, &wake), TK_BROKER_QUEUED);
    assert_int_equal(tk_broker_release(B, 0, s, &e, &wake), TK_BROKER_TO_LOCAL);
    assert_int_equal(e, entry0);
    assert_int_equal(tk_broker_qlen(B), 1);
    assert_consistent();

    /* Without bias: strict FIFO, the slot moves to worker 1. */
    B->local_bias_ns = 0;
    assert_int_equal(tk_broker_acquire(B, 0, g0, &slot, &entry0, &t0, &wake), TK_BROKER_QUEUED);
    assert_int_equal(tk_broker_release(B, 0, s, &e, &wake), TK_BROKER_CLOSE_MOVE);
    assert_int_equal(tk_broker_free_slot(B, 0, s, &e, &wake), TK_BROKER_TO_REMOTE);
    assert_int_equal(wake, 1);
    int ge, gs;
    uint64_t gt;
    assert_int_equal(tk_broker_next_grant(B, 1, &ge, &gt, &gs), 1);
    assert_true(gt == t1);
    /* The head is now worker 0's: the slot moves there once closed. */
    assert_int_equal(tk_broker_release(B, 1, gs, &e, &wake), TK_BROKER_CLOSE_MOVE);
    assert_int_equal(tk_broker_free_slot(B, 1, gs, &e, &wake), TK_BROKER_TO_REMOTE);
    assert_int_equal(wake, 0);
    assert_consistent();
    assert_int_equal(tk_broker_next_grant(B, 0, &ge, &gt, &s), 1);

    /* Default policy. Worker 1 queues; worker 0 has nobody waiting: it keeps
     * its connection warm (idle) instead of moving it. */
    B->local_bias_ns = TK_BROKER_LOCAL_BIAS_NS;
    assert_int_equal(tk_broker_acquire(B, 1, g1, &slot, &entry1, &t1, &wake), TK_BROKER_QUEUED);
    assert_int_equal(tk_broker_release(B, 0, s, &e, &wake), TK_BROKER_KEEP_IDLE);
    assert_int_equal(B->nidle, 1);
    assert_consistent();
    /* Giving it up (db.c does after a grace) serves the head. */
    assert_int_equal(tk_broker_free_slot(B, 0, s, &e, &wake), TK_BROKER_TO_REMOTE);
    assert_int_equal(tk_broker_next_grant(B, 1, &ge, &gt, &s), 1);
    assert_true(gt == t1);

    /* Worker 1 holds the slot. Worker 0 queues, then worker 1 queues: worker 1
     * serves its own waiter while worker 0's wait is not much longer... */
    assert_int_equal(tk_broker_acquire(B, 0, g0, &slot, &entry0, &t0, &wake), TK_BROKER_QUEUED);
    assert_int_equal(tk_broker_acquire(B, 1, g1, &slot, &entry1, &t1, &wake), TK_BROKER_QUEUED);
    assert_int_equal(tk_broker_release(B, 1, s, &e, &wake), TK_BROKER_TO_LOCAL);
    assert_int_equal(e, entry1);
    /* ...but once worker 0's head has waited more than twice as long (+ bias),
     * the slot moves to it. */
    assert_int_equal(tk_broker_acquire(B, 1, g1, &slot, &entry1, &t1, &wake), TK_BROKER_QUEUED);
    B->entries[entry0].enq_ns -= 300000000ull; /* queued 300 ms ago */
    B->last_move_ns = 0;
    assert_int_equal(tk_broker_release(B, 1, s, &e, &wake), TK_BROKER_CLOSE_MOVE);
    assert_int_equal(tk_broker_free_slot(B, 1, s, &e, &wake), TK_BROKER_TO_REMOTE);
    assert_int_equal(wake, 0);
    assert_int_equal(tk_broker_next_grant(B, 0, &ge, &gt, &s), 1);
    assert_true(gt == t0);
    /* Moves are rate-limited: right after one, a lagging head waits... */
    assert_int_equal(tk_broker_acquire(B, 1, g1, &slot, &entry1, &t1, &wake), TK_BROKER_QUEUED);
    assert_int_equal(tk_broker_acquire(B, 0, g0, &slot, &entry0, &t0, &wake), TK_BROKER_QUEUED);
    /* (queue: w1 older, w1 newer, w0) worker 0 releases: head is worker 1's */
    B->entries[B->qhead].enq_ns -= 300000000ull;
    assert_int_equal(tk_broker_release(B, 0, s, &e, &wake), TK_BROKER_TO_LOCAL);
    assert_int_equal(e, entry0);
    /* ...unless it is about to starve. */
    assert_int_equal(tk_broker_acquire(B, 0, g0, &slot, &entry0, &t0, &wake), TK_BROKER_QUEUED);
    B->entries[B->qhead].enq_ns -= B->starve_ns;
    assert_int_equal(tk_broker_release(B, 0, s, &e, &wake), TK_BROKER_CLOSE_MOVE);
    assert_int_equal(tk_broker_free_slot(B, 0, s, &e, &wake), TK_BROKER_TO_REMOTE);
    assert_int_equal(wake, 1);
    assert_consistent();
}

/* One simulated worker: loops acquire/use/release for iters rounds, polling
 * for grants (its "eventfd"). Exits 0 if all went well. */
static void child_worker(int w, int iters, unsigned seed)
{
    uint32_t gen = tk_broker_worker_attach(B, w, getpid());
    int idle[TK_BROKER_MAX_SLOTS], nidle = 0;
    srand(seed);
    for (int i = 0; i < iters; i++) {
        int slot = -1, entry, wake, e;
        uint64_t ticket;
        if (nidle > 0) {
            slot = idle[--nidle];
            tk_broker_idle_take(B, w, slot);
        } else {
            tk_broker_acq_t r = tk_broker_acquire(B, w, gen, &slot, &entry, &ticket, &wake);
            if (r == TK_BROKER_QUEUED) {
                uint64_t dl = mono_ms() + 5000;
                int ge, gs;
                uint64_t gt;
                while (!tk_broker_next_grant(B, w, &ge, &gt, &gs)) {
                    if (mono_ms() > dl) {
                        __atomic_fetch_add(&S->errors, 1, __ATOMIC_SEQ_CST);
                        _exit(2);
                    }
                    sched_yield();
                }
                if (ge != entry || gt != ticket)
                    __atomic_fetch_add(&S->errors, 1, __ATOMIC_SEQ_CST);
                slot = gs;
            } else if (r != TK_BROKER_GOT) {
                _exit(3);
            }
        }
        /* Use it: nobody else may hold this slot, and the total stays <= cap. */
        int zero = 0;
        if (!__atomic_compare_exchange_n(&S->owner[slot], &zero, getpid(), 0, __ATOMIC_SEQ_CST,
                                         __ATOMIC_SEQ_CST))
            __atomic_fetch_add(&S->errors, 1, __ATOMIC_SEQ_CST);
        int n = __atomic_add_fetch(&S->inuse, 1, __ATOMIC_SEQ_CST);
        int m = __atomic_load_n(&S->max_inuse, __ATOMIC_SEQ_CST);
        while (n > m && !__atomic_compare_exchange_n(&S->max_inuse, &m, n, 0, __ATOMIC_SEQ_CST,
                                                     __ATOMIC_SEQ_CST))
            ;
        if (rand() % 4 == 0)
            sched_yield();
        __atomic_sub_fetch(&S->inuse, 1, __ATOMIC_SEQ_CST);
        __atomic_store_n(&S->owner[slot], 0, __ATOMIC_SEQ_CST);
        /* Release: keep it (idle) or close it, at random. */
        tk_broker_rel_t rr = (rand() % 3 == 0) ? tk_broker_free_slot(B, w, slot, &e, &wake)
                                               : tk_broker_release(B, w, slot, &e, &wake);
        if (rr == TK_BROKER_KEEP_IDLE) {
            idle[nidle++] = slot;
        } else if (rr == TK_BROKER_TO_LOCAL) {
            __atomic_fetch_add(&S->errors, 1, __ATOMIC_SEQ_CST); /* we never have 2 waiters */
        } else if (rr == TK_BROKER_CLOSE_IDLE || rr == TK_BROKER_CLOSE_MOVE) {
            /* "Closing" (the backend lingers): the slot must still be ours
             * and nobody else's, until we free it. */
            zero = 0;
            if (!__atomic_compare_exchange_n(&S->owner[slot], &zero, getpid(), 0, __ATOMIC_SEQ_CST,
                                             __ATOMIC_SEQ_CST))
                __atomic_fetch_add(&S->errors, 1, __ATOMIC_SEQ_CST);
            sched_yield();
            __atomic_store_n(&S->owner[slot], 0, __ATOMIC_SEQ_CST);
            tk_broker_free_slot(B, w, slot, &e, &wake);
        }
        /* Others queue while we sit on idle ones: give them up. */
        while (nidle > 0 && tk_broker_qlen(B) > 0)
            tk_broker_free_slot(B, w, idle[--nidle], &e, &wake);
    }
    while (nidle > 0) {
        int e, wake;
        tk_broker_free_slot(B, w, idle[--nidle], &e, &wake);
    }
    _exit(0);
}

static void test_cap_across_processes(void **state)
{
    enum { NW = 6, ITERS = 3000 };
    pid_t pids[NW];
    (void)state;
    assert_int_equal(tk_broker_sh_init(B, 3), 0);
    tk_broker_set_max_idle(B, 2);
    memset(S, 0, sizeof(*S));
    for (int i = 0; i < NW; i++) {
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0)
            child_worker(i, ITERS, (unsigned)i + 1);
    }
    for (int i = 0; i < NW; i++) {
        int st;
        assert_int_equal(waitpid(pids[i], &st, 0), pids[i]);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
    }
    assert_int_equal(S->errors, 0);
    assert_true(S->max_inuse <= 3);
    assert_true(S->max_inuse >= 2); /* there was contention */
    assert_int_equal(B->nfree, 3);
    assert_int_equal(B->qlen, 0);
    assert_true(B->qhwm >= 1);
    assert_consistent();
}

/* FIFO child: queue for a slot, record the order of service, give it back. */
static void child_fifo(int w, int id)
{
    uint32_t gen = tk_broker_worker_attach(B, w, getpid());
    int slot, entry, wake, ge, gs, e;
    uint64_t ticket, gt;
    if (tk_broker_acquire(B, w, gen, &slot, &entry, &ticket, &wake) != TK_BROKER_QUEUED)
        _exit(4);
    uint64_t dl = mono_ms() + 5000;
    while (!tk_broker_next_grant(B, w, &ge, &gt, &gs)) {
        if (mono_ms() > dl)
            _exit(5);
        usleep(100);
    }
    int k = __atomic_fetch_add(&S->nseq, 1, __ATOMIC_SEQ_CST);
    S->seq[k] = id;
    tk_broker_free_slot(B, w, gs, &e, &wake);
    _exit(0);
}

static void test_fifo_across_processes(void **state)
{
    enum { NC = 5 };
    pid_t pids[NC];
    int s, e, wake;
    uint64_t t;
    (void)state;
    assert_int_equal(tk_broker_sh_init(B, 1), 0);
    B->local_bias_ns = 0;
    memset(S, 0, sizeof(*S));
    uint32_t g0 = tk_broker_worker_attach(B, 0, getpid());
    assert_int_equal(tk_broker_acquire(B, 0, g0, &s, &e, &t, &wake), TK_BROKER_GOT);
    /* Children queue one after another, in a known order. */
    for (int i = 0; i < NC; i++) {
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0)
            child_fifo(i + 1, i);
        WAIT_FOR(tk_broker_qlen(B) == (unsigned)i + 1, 5000);
    }
    assert_int_equal(tk_broker_free_slot(B, 0, s, &e, &wake), TK_BROKER_TO_REMOTE);
    assert_int_equal(wake, 1);
    for (int i = 0; i < NC; i++) {
        int st;
        assert_int_equal(waitpid(pids[i], &st, 0), pids[i]);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    assert_int_equal(S->nseq, NC);
    for (int i = 0; i < NC; i++)
        assert_int_equal(S->seq[i], i);
    assert_int_equal(B->nfree, 1);
    assert_consistent();
}

static void test_reclaim_killed_holder(void **state)
{
    int s, e, wake;
    uint64_t t;
    pid_t holder, waiter;
    int pfd[2];
    (void)state;
    assert_int_equal(tk_broker_sh_init(B, 3), 0);
    memset(S, 0, sizeof(*S));
    assert_int_equal(pipe(pfd), 0);
    uint32_t g0 = tk_broker_worker_attach(B, 0, getpid());
    assert_int_equal(tk_broker_acquire(B, 0, g0, &s, &e, &t, &wake), TK_BROKER_GOT);

    holder = fork();
    assert_true(holder >= 0);
    if (holder == 0) {
        /* Take the two other slots and queue a third request, then hang. */
        uint32_t g = tk_broker_worker_attach(B, 1, getpid());
        int a, bb, c, ee, ww;
        uint64_t tt;
        if (tk_broker_acquire(B, 1, g, &a, &ee, &tt, &ww) != TK_BROKER_GOT ||
            tk_broker_acquire(B, 1, g, &bb, &ee, &tt, &ww) != TK_BROKER_GOT ||
            tk_broker_acquire(B, 1, g, &c, &ee, &tt, &ww) != TK_BROKER_QUEUED)
            _exit(1);
        if (write(pfd[1], "x", 1) != 1)
            _exit(1);
        for (;;)
            pause();
    }
    char ch;
    assert_int_equal(read(pfd[0], &ch, 1), 1);
    assert_int_equal(B->nfree, 0);
    assert_int_equal(tk_broker_qlen(B), 1);

    /* Another process queues behind the doomed one. */
    waiter = fork();
    assert_true(waiter >= 0);
    if (waiter == 0)
        child_fifo(2, 7);
    WAIT_FOR(tk_broker_qlen(B) == 2, 5000);

    assert_int_equal(kill(holder, SIGKILL), 0);
    assert_int_equal(waitpid(holder, NULL, 0), holder);
    assert_int_equal(tk_broker_reclaim_pid(B, holder), 2);
    /* The freed slots: one went to the waiter (then came back), the dead
     * process's queue entry is gone. */
    int st;
    assert_int_equal(waitpid(waiter, &st, 0), waiter);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_int_equal(S->nseq, 1);
    assert_int_equal(S->seq[0], 7);
    assert_int_equal(tk_broker_qlen(B), 0);
    assert_int_equal(B->nfree, 2);
    assert_int_equal(B->workers[1].nheld, 0);
    assert_true(B->reclaims >= 1);
    assert_consistent();
    /* Reclaiming again finds nothing. */
    assert_int_equal(tk_broker_reclaim_pid(B, holder), 0);
    close(pfd[0]);
    close(pfd[1]);
}

/* A child takes the lock, damages the structure halfway through an
 * operation, and is killed holding it. */
static void test_robust_lock_recovery(void **state)
{
    int pfd[2], s, e, wake;
    uint64_t t;
    (void)state;
    assert_int_equal(tk_broker_sh_init(B, 2), 0);
    uint32_t g0 = tk_broker_worker_attach(B, 0, getpid());
    uint32_t g1 = tk_broker_worker_attach(B, 1, getpid());
    assert_int_equal(tk_broker_acquire(B, 0, g0, &s, &e, &t, &wake), TK_BROKER_GOT);
    assert_int_equal(tk_broker_acquire(B, 0, g0, &s, &e, &t, &wake), TK_BROKER_GOT);
    int e1, e2;
    uint64_t t1, t2;
    assert_int_equal(tk_broker_acquire(B, 1, g1, &s, &e1, &t1, &wake), TK_BROKER_QUEUED);
    assert_int_equal(tk_broker_acquire(B, 1, g1, &s, &e2, &t2, &wake), TK_BROKER_QUEUED);
    assert_consistent();
    assert_int_equal(pipe(pfd), 0);

    pid_t p = fork();
    assert_true(p >= 0);
    if (p == 0) {
        if (tk_broker_lock(B) != 0)
            _exit(1);
        /* Half of an unqueue: the head is unlinked, the counts are not. */
        B->qhead = B->entries[B->qhead].next;
        B->entries[B->qhead].prev = -1;
        B->nfree = 77;
        if (write(pfd[1], "x", 1) != 1)
            _exit(1);
        for (;;)
            pause();
    }
    char ch;
    assert_int_equal(read(pfd[0], &ch, 1), 1);
    assert_int_equal(kill(p, SIGKILL), 0);
    assert_int_equal(waitpid(p, NULL, 0), p);

    uint64_t repairs = B->repairs;
    assert_int_equal(tk_broker_lock(B), 0); /* EOWNERDEAD inside, repaired */
    assert_true(B->repairs == repairs + 1);
    char err[256];
    int r = tk_broker_check_locked(B, err, sizeof(err));
    tk_broker_unlock(B);
    if (r != 0)
        fail_msg("after repair: %s", err);
    /* Both waiters are back in the queue in their order, and the lock works. */
    assert_int_equal(tk_broker_qlen(B), 2);
    assert_int_equal(B->qhead, e1);
    assert_int_equal(B->nfree, 0);
    assert_int_equal(tk_broker_lock(B), 0);
    tk_broker_unlock(B);
    assert_true(B->repairs == repairs + 1);
    close(pfd[0]);
    close(pfd[1]);
}

static void test_wake_and_stats(void **state)
{
    tk_broker_stats_t st;
    (void)state;
    assert_int_equal(tk_broker_sh_init(B, 4), 0);
    assert_int_equal(tk_broker_wake_create(2), 0);
    assert_true(tk_broker_wake_fd(0) >= 0 && tk_broker_wake_fd(1) >= 0);
    assert_int_equal(tk_broker_wake_fd(2), -1);
    assert_true(tk_broker_wake_drain(1) == 0);
    tk_broker_wake(1);
    tk_broker_wake(1);
    assert_true(tk_broker_wake_drain(1) == 2);
    assert_true(tk_broker_wake_drain(0) == 0);
    tk_broker_wake_close();

    tk_broker_worker_attach(B, 0, getpid());
    tk_broker_worker_attach(B, 1, getpid());
    tk_broker_stats_wait(B, 0, 50000);          /* 50 us: bucket 0 */
    tk_broker_stats_wait(B, 1, 3000000);        /* 3 ms: bucket 20 (2.69 < x <= 3.2 ms) */
    tk_broker_stats_wait(B, 1, 10000000000ull); /* 10 s: last bucket */
    TK_BROKER_STAT(B, 0, open, 3);
    TK_BROKER_STAT(B, 0, open, -1);
    TK_BROKER_STAT(B, 1, open, 1);
    tk_broker_stats(B, -1, &st);
    assert_true(st.wait_count == 3);
    assert_true(st.open == 3);
    assert_true(st.wait_hist[0] == 1 && st.wait_hist[20] == 1);
    assert_true(st.wait_hist[TK_BROKER_HIST_BUCKETS - 1] == 1);
    tk_broker_stats(B, 1, &st);
    assert_true(st.wait_count == 2 && st.open == 1);
    assert_true(tk_broker_hist_bound_us(0) == 100);
    assert_true(tk_broker_hist_bound_us(1) == 119 && tk_broker_hist_bound_us(4) == 200);
    assert_true(tk_broker_hist_bound_us(TK_BROKER_HIST_BUCKETS - 1) == UINT64_MAX);
    /* four buckets per octave: each bound 1.15..1.22 times the previous */
    for (int i = 1; i < TK_BROKER_HIST_BUCKETS - 1; i++) {
        double r = (double)tk_broker_hist_bound_us(i) / (double)tk_broker_hist_bound_us(i - 1);
        assert_true(r > 1.15 && r < 1.22);
    }
    /* every wait lands in the first bucket whose bound is >= it */
    for (uint64_t us = 1; us < 5000000; us = us * 9 / 8 + 1) {
        tk_broker_stats_t one;
        tk_broker_sh_init(B, 4);
        tk_broker_worker_attach(B, 0, getpid());
        tk_broker_stats_wait(B, 0, us * 1000);
        tk_broker_stats(B, 0, &one);
        int k = 0;
        while (one.wait_hist[k] == 0)
            k++;
        assert_true(us <= tk_broker_hist_bound_us(k));
        assert_true(k == 0 || us > tk_broker_hist_bound_us(k - 1));
    }
    /* quantiles: 99 waits of ~1 ms and one of 1 s: p50 and p99 ~1 ms, max 1 s */
    tk_broker_sh_init(B, 4);
    tk_broker_worker_attach(B, 0, getpid());
    for (int i = 0; i < 99; i++)
        tk_broker_stats_wait(B, 0, 1000000);
    tk_broker_stats_wait_local(B, 0, 1000000000);
    tk_broker_stats(B, 0, &st);
    assert_true(st.wait_count == 100 && st.wait_count_local == 1);
    assert_true(tk_broker_hist_quantile_us(st.wait_hist, 0.5) == 1131);
    assert_true(tk_broker_hist_quantile_us(st.wait_hist, 0.99) == 1131);
    assert_true(tk_broker_hist_quantile_us(st.wait_hist, 1.0) >= 1000000);
    /* local waiting: gauge, total and high-water marks; a dead worker's go */
    tk_broker_local_waiting(B, 0, 1);
    tk_broker_local_waiting(B, 0, 1);
    tk_broker_local_waiting(B, 0, -1);
    assert_true(B->lwaiting == 1 && B->lwhwm == 2 && B->twhwm == 2);
    tk_broker_stats(B, 0, &st);
    assert_true(st.local_waiting == 1);
    tk_broker_reclaim_pid(B, getpid());
    assert_true(B->lwaiting == 0 && B->lwhwm == 2);
}

/* Rule 2: a worker holding two slots more than the head's gives one at once
 * (once the head has waited the bias), even with a younger waiter of its own. */
static void test_release_towards_poorer_worker(void **state)
{
    int s1, s2, e, slot, entry0, entry1, wake, ge, gs;
    uint64_t t0, t1, gt;
    (void)state;
    assert_int_equal(tk_broker_sh_init(B, 2), 0);
    uint32_t g0 = tk_broker_worker_attach(B, 0, getpid());
    uint32_t g1 = tk_broker_worker_attach(B, 1, getpid());
    assert_int_equal(tk_broker_acquire(B, 0, g0, &s1, &e, &t0, &wake), TK_BROKER_GOT);
    assert_int_equal(tk_broker_acquire(B, 0, g0, &s2, &e, &t0, &wake), TK_BROKER_GOT);
    /* worker 1 (no slot) queues, then worker 0 */
    assert_int_equal(tk_broker_acquire(B, 1, g1, &slot, &entry1, &t1, &wake), TK_BROKER_QUEUED);
    assert_int_equal(tk_broker_acquire(B, 0, g0, &slot, &entry0, &t0, &wake), TK_BROKER_QUEUED);
    /* head younger than the bias: worker 0 serves its own (2x rule) */
    assert_int_equal(tk_broker_release(B, 0, s1, &e, &wake), TK_BROKER_TO_LOCAL);
    assert_int_equal(e, entry0);
    /* the head has waited the bias: the slot moves, no rate limit applies */
    assert_int_equal(tk_broker_acquire(B, 0, g0, &slot, &entry0, &t0, &wake), TK_BROKER_QUEUED);
    B->entries[entry1].enq_ns -= TK_BROKER_LOCAL_BIAS_NS + 1000000ull;
    B->entries[entry0].enq_ns -= TK_BROKER_LOCAL_BIAS_NS; /* within 2x of the head */
    B->last_move_ns = mono_ms() * 1000000ull;             /* a move just happened */
    assert_int_equal(tk_broker_release(B, 0, s1, &e, &wake), TK_BROKER_CLOSE_MOVE);
    assert_int_equal(tk_broker_free_slot(B, 0, s1, &e, &wake), TK_BROKER_TO_REMOTE);
    assert_int_equal(wake, 1);
    assert_int_equal(tk_broker_next_grant(B, 1, &ge, &gt, &gs), 1);
    assert_true(gt == t1);
    /* now one each: worker 1 queues again; worker 0's release is not rule 2
     * (1 + 1 < 1 is false) and a move was just made: it serves its own */
    assert_int_equal(tk_broker_acquire(B, 1, g1, &slot, &entry1, &t1, &wake), TK_BROKER_QUEUED);
    B->entries[entry1].enq_ns -= TK_BROKER_LOCAL_BIAS_NS + 1000000ull;
    assert_int_equal(tk_broker_release(B, 0, s2, &e, &wake), TK_BROKER_TO_LOCAL);
    assert_int_equal(e, entry0);
    assert_consistent();
}

/* A slot whose connection is being closed (release said CLOSE_MOVE or
 * CLOSE_IDLE) is available to nobody else until tk_broker_free_slot(): a
 * backend outlives PQfinish(), and pg_stat_activity must never show more than
 * max_open. */
static void test_closing_slot_stays_held(void **state)
{
    int s0, s1, slot, e, entry1, entry2, wake, ge, gs;
    uint64_t t1, t2, gt;
    (void)state;
    assert_int_equal(tk_broker_sh_init(B, 2), 0);
    B->local_bias_ns = 0; /* strict FIFO: a release with a remote head moves */
    tk_broker_set_max_idle(B, 1);
    uint32_t g0 = tk_broker_worker_attach(B, 0, getpid());
    uint32_t g1 = tk_broker_worker_attach(B, 1, getpid());
    uint32_t g2 = tk_broker_worker_attach(B, 2, getpid());
    assert_int_equal(tk_broker_acquire(B, 0, g0, &s0, &e, &t1, &wake), TK_BROKER_GOT);
    assert_int_equal(tk_broker_acquire(B, 0, g0, &s1, &e, &t1, &wake), TK_BROKER_GOT);

    /* A move: worker 1 waits, worker 0 releases. */
    assert_int_equal(tk_broker_acquire(B, 1, g1, &slot, &entry1, &t1, &wake), TK_BROKER_QUEUED);
    assert_int_equal(tk_broker_release(B, 0, s0, &e, &wake), TK_BROKER_CLOSE_MOVE);
    assert_int_equal(B->slots[s0].state, TK_BROKER_SLOT_HELD);
    assert_int_equal(B->slots[s0].worker, 0);
    assert_int_equal(B->workers[0].nheld, 2);
    assert_int_equal(B->nfree, 0);
    assert_consistent();
    /* While it closes: not granted, not free, not idle. */
    assert_int_equal(tk_broker_next_grant(B, 1, &ge, &gt, &gs), 0);
    assert_int_equal(tk_broker_try_acquire(B, 2, &slot), -1);
    /* (worker 1's entry is promised the slot, out of the queue: another
     * release meanwhile does not move a second slot for it) */
    assert_int_equal(tk_broker_qlen(B), 0);
    assert_int_equal(B->entries[entry1].state, TK_BROKER_ENTRY_PROMISED);
    assert_true(B->workers[0].nout == 1 && B->workers[1].nin == 1);
    assert_int_equal(tk_broker_acquire(B, 2, g2, &slot, &entry2, &t2, &wake), TK_BROKER_QUEUED);
    assert_int_equal(tk_broker_qlen(B), 1);
    assert_consistent();
    /* Closed: the head (worker 1) gets it, then worker 2 after the next. */
    assert_int_equal(tk_broker_free_slot(B, 0, s0, &e, &wake), TK_BROKER_TO_REMOTE);
    assert_int_equal(wake, 1);
    assert_int_equal(tk_broker_next_grant(B, 1, &ge, &gt, &gs), 1);
    assert_true(ge == entry1 && gt == t1 && gs == s0);
    assert_int_equal(tk_broker_release(B, 0, s1, &e, &wake), TK_BROKER_CLOSE_MOVE);
    assert_int_equal(tk_broker_next_grant(B, 2, &ge, &gt, &gs), 0);
    assert_int_equal(tk_broker_free_slot(B, 0, s1, &e, &wake), TK_BROKER_TO_REMOTE);
    assert_int_equal(wake, 2);
    assert_int_equal(tk_broker_next_grant(B, 2, &ge, &gt, &gs), 1);
    assert_true(ge == entry2 && gs == s1);
    assert_consistent();

    /* db.max_idle reached, queue empty: CLOSE_IDLE leaves the slot held. */
    assert_int_equal(tk_broker_release(B, 1, s0, &e, &wake), TK_BROKER_KEEP_IDLE);
    assert_int_equal(tk_broker_release(B, 2, s1, &e, &wake), TK_BROKER_CLOSE_IDLE);
    assert_int_equal(B->nfree, 0);
    assert_int_equal(B->workers[2].nheld, 1);
    assert_int_equal(tk_broker_try_acquire(B, 0, &slot), -1);
    assert_int_equal(tk_broker_acquire(B, 0, g0, &slot, &e, &t1, &wake), TK_BROKER_QUEUED);
    assert_int_equal(wake, 1); /* worker 1 sits on the idle one */
    assert_consistent();
    /* Closed: it goes to the waiter, never through the free list. */
    assert_int_equal(tk_broker_free_slot(B, 2, s1, &e, &wake), TK_BROKER_TO_REMOTE);
    assert_int_equal(wake, 0);
    assert_int_equal(tk_broker_next_grant(B, 0, &ge, &gt, &gs), 1);
    assert_int_equal(gs, s1);
    assert_int_equal(B->nfree, 0);
    assert_consistent();

    /* A promised waiter that gives up: the slot goes to the head (none: free). */
    assert_int_equal(tk_broker_acquire(B, 2, g2, &slot, &entry2, &t2, &wake), TK_BROKER_QUEUED);
    assert_int_equal(tk_broker_release(B, 0, s1, &e, &wake), TK_BROKER_CLOSE_MOVE);
    assert_int_equal(tk_broker_cancel(B, 2, entry2, t2, &slot), 0);
    assert_consistent();
    assert_int_equal(tk_broker_free_slot(B, 0, s1, &e, &wake), TK_BROKER_FREED);
    assert_int_equal(B->nfree, 1);
    assert_consistent();
    /* A holder that dies while closing for a move: the reclaim grants the
     * slot to the promised waiter. */
    assert_int_equal(tk_broker_acquire(B, 0, g0, &s1, &e, &t1, &wake), TK_BROKER_GOT);
    assert_int_equal(tk_broker_acquire(B, 2, g2, &slot, &entry2, &t2, &wake), TK_BROKER_QUEUED);
    assert_int_equal(tk_broker_release(B, 0, s1, &e, &wake), TK_BROKER_CLOSE_MOVE);
    B->workers[0].pid = B->slots[s1].pid = 999999; /* as if held by another, dead, process */
    assert_int_equal(tk_broker_reclaim_pid(B, 999999), 1);
    assert_int_equal(tk_broker_next_grant(B, 2, &ge, &gt, &gs), 1);
    assert_true(ge == entry2 && gs == s1);
    assert_consistent();
}

/* The master reclaims with indices it reads from a table any worker can
 * write: out-of-range slot, entry and worker numbers must be skipped (and
 * the table repaired), never followed. Far-away values make a followed index
 * fault even without a sanitizer. */
static void test_reclaim_hostile_table(void **state)
{
    int s0, s1, e, wake;
    uint64_t t;
    const pid_t dead = 999998;
    (void)state;
    assert_int_equal(tk_broker_sh_init(B, 4), 0);
    uint32_t g0 = tk_broker_worker_attach(B, 0, getpid());
    uint32_t g1 = tk_broker_worker_attach(B, 1, getpid());
    assert_int_equal(tk_broker_acquire(B, 0, g0, &s0, &e, &t, &wake), TK_BROKER_GOT);
    assert_int_equal(tk_broker_acquire(B, 0, g0, &s1, &e, &t, &wake), TK_BROKER_GOT);
    int e1;
    assert_int_equal(tk_broker_acquire(B, 1, g1, &s0, &e, &t, &wake), TK_BROKER_GOT);
    assert_int_equal(tk_broker_acquire(B, 1, g1, &s0, &e, &t, &wake), TK_BROKER_GOT);
    assert_int_equal(tk_broker_acquire(B, 1, g1, &s0, &e1, &t, &wake), TK_BROKER_QUEUED);
    assert_consistent();

    /* The "dead worker" 0 scribbled over everything it could reach. */
    B->workers[0].pid = dead;
    B->slots[s1].pid = dead;
    B->slots[s1].worker = 0x7fffff00;
    B->slots[s1].entry = 0x7ffff000;
    B->slots[s1].state = TK_BROKER_SLOT_HELD;
    B->slots[0].pid = dead;
    B->slots[0].worker = -0x7fffff00;
    tk_broker_entry_sh_t *x = &B->entries[e1];
    x->pid = dead;
    x->prev = 0x7fffff00;
    x->next = -0x7ffff000 + 5;
    x->wprev = 0x6fffff00;
    x->wnext = 0x6ffff000;
    x->worker = 0x7ffffff0;
    x->slot = -0x7ffffff0;
    /* a second entry of the dead process, PROMISED a slot that does not exist */
    tk_broker_entry_sh_t *y = &B->entries[(e1 + 1) % TK_BROKER_MAX_WAITERS];
    y->state = TK_BROKER_ENTRY_PROMISED;
    y->pid = dead;
    y->worker = -0x7fffff00;
    y->slot = 0x7fffff00;
    B->qhead = 0x7ffffff0;
    B->qtail = -0x7ffffff0;
    B->sfree = 0x7ffffff0;
    B->max_open = 0xffffffffu;

    assert_true(tk_broker_reclaim_pid(B, dead) >= 0);
    /* The repair left a table that passes every check and still works. */
    assert_int_equal(B->max_open, TK_BROKER_MAX_SLOTS);
    assert_consistent();
    assert_int_equal(tk_broker_lock(B), 0);
    tk_broker_unlock(B);

    /* The checker itself follows nothing it has not range-checked either. */
    B->workers[3].whead = 0x7ffffff0;
    B->workers[4].ghead = -0x7ffffff0 + 1;
    B->efree = 0x7ffffff0;
    char err[256];
    assert_int_equal(tk_broker_lock(B), 0);
    assert_int_equal(tk_broker_check_locked(B, err, sizeof(err)), -1);
    assert_int_equal(tk_broker_repair_locked(B), 1);
    assert_int_equal(tk_broker_check_locked(B, err, sizeof(err)), 0);
    tk_broker_unlock(B);
}

/* A worker stopped inside a locked section (SIGSTOP) must not stall the
 * master: the reclaim gives up after TK_BROKER_MASTER_LOCK_MS with
 * ETIMEDOUT, changes nothing, and works once the holder lets go. */
static void test_reclaim_times_out_on_held_lock(void **state)
{
    int pfd[2];
    (void)state;
    assert_int_equal(tk_broker_sh_init(B, 2), 0);
    assert_int_equal(pipe(pfd), 0);
    pid_t p = fork();
    assert_true(p >= 0);
    if (p == 0) {
        if (tk_broker_lock(B) != 0 || write(pfd[1], "x", 1) != 1)
            _exit(1);
        raise(SIGSTOP);
        tk_broker_unlock(B);
        _exit(0);
    }
    char ch;
    assert_int_equal(read(pfd[0], &ch, 1), 1);
    int st;
    assert_int_equal(waitpid(p, &st, WUNTRACED), p);
    assert_true(WIFSTOPPED(st));

    uint64_t t0 = mono_ms();
    errno = 0;
    assert_int_equal(tk_broker_reclaim_pid(B, 999997), -1);
    assert_int_equal(errno, ETIMEDOUT);
    uint64_t took = mono_ms() - t0;
    assert_true(took >= TK_BROKER_MASTER_LOCK_MS - 5 && took < 2000);
    assert_int_equal(tk_broker_set_max_idle(B, 1), -1);

    assert_int_equal(kill(p, SIGCONT), 0);
    assert_int_equal(waitpid(p, &st, 0), p);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_int_equal(tk_broker_reclaim_pid(B, 999997), 0);
    assert_int_equal(tk_broker_set_max_idle(B, 1), 0);
    close(pfd[0]);
    close(pfd[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_try_acquire_and_wake_holder),
        cmocka_unit_test(test_release_policy),
        cmocka_unit_test(test_release_towards_poorer_worker),
        cmocka_unit_test(test_closing_slot_stays_held),
        cmocka_unit_test(test_cap_across_processes),
        cmocka_unit_test(test_fifo_across_processes),
        cmocka_unit_test(test_reclaim_killed_holder),
        cmocka_unit_test(test_robust_lock_recovery),
        cmocka_unit_test(test_wake_and_stats),
        cmocka_unit_test(test_reclaim_hostile_table),
        cmocka_unit_test(test_reclaim_times_out_on_held_lock),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
