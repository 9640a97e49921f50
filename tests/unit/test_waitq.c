/* test_waitq.c: unit tests for the green-thread wait queues (server/runtime/waitq.c): mutex,
 * semaphore, condition and channel ordering, close and cancellation. */
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

/* --- wait queues: FIFO -------------------------------------------------------------- */

typedef struct {
    tk_mutex_t m;
    tk_sem_t sem;
    tk_cond_t cond;
    int ready;
    int seq[16], n;
} wq_t;

static wq_t wq;

static void mutex_waiter(void *arg)
{
    assert_int_equal(tk_mutex_lock(&wq.m), 0);
    wq.seq[wq.n++] = (int)(intptr_t)arg;
    tk_gt_yield(); /* hold it across a yield: the others stay queued */
    tk_mutex_unlock(&wq.m);
}

static void test_mutex_fifo(void **state)
{
    fixture_t *f = *state;
    memset(&wq, 0, sizeof(wq));
    tk_mutex_init(&wq.m);
    for (intptr_t i = 0; i < 6; i++)
        tk_gt_spawn(f->s, "m", mutex_waiter, (void *)i);
    assert_int_equal(tk_sched_run(f->s), 0);
    assert_int_equal(wq.n, 6);
    for (int i = 0; i < 6; i++)
        assert_int_equal(wq.seq[i], i);
    assert_null(wq.m.owner);
    assert_idle(f->s);
}

static void sem_waiter(void *arg)
{
    assert_int_equal(tk_sem_wait(&wq.sem, -1), 0);
    wq.seq[wq.n++] = (int)(intptr_t)arg;
}

static void sem_poster(void *arg)
{
    tk_gt_yield(); /* everyone queued */
    for (int i = 0; i < 5; i++)
        tk_sem_post(&wq.sem);
    /* a timed wait on the now-empty semaphore times out */
    int64_t dl = tk_now_ms() + 10;
    assert_int_equal(tk_sem_wait(&wq.sem, dl), -1);
    assert_int_equal(errno, ETIMEDOUT);
    assert_true(tk_now_ms() >= dl);
}

static void test_sem_fifo(void **state)
{
    fixture_t *f = *state;
    memset(&wq, 0, sizeof(wq));
    tk_sem_init(&wq.sem, 0);
    for (intptr_t i = 0; i < 5; i++)
        tk_gt_spawn(f->s, "s", sem_waiter, (void *)i);
    tk_gt_spawn(f->s, "poster", sem_poster, NULL);
    assert_int_equal(tk_sched_run(f->s), 0);
    assert_int_equal(wq.n, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(wq.seq[i], i);
    assert_int_equal(wq.sem.count, 0);
    assert_idle(f->s);
}

static void cond_waiter(void *arg)
{
    assert_int_equal(tk_mutex_lock(&wq.m), 0);
    while (wq.ready <= 0)
        assert_int_equal(tk_cond_wait(&wq.cond, &wq.m, -1), 0);
    wq.ready--;
    wq.seq[wq.n++] = (int)(intptr_t)arg;
    tk_mutex_unlock(&wq.m);
}

static void cond_signaller(void *arg)
{
    tk_gt_yield();
    for (int i = 0; i < 2; i++) { /* two by signal, one at a time */
        tk_mutex_lock(&wq.m);
        wq.ready++;
        tk_cond_signal(&wq.cond);
        tk_mutex_unlock(&wq.m);
        tk_gt_yield();
    }
    tk_mutex_lock(&wq.m); /* the rest by broadcast */
    wq.ready += 3;
    tk_cond_broadcast(&wq.cond);
    tk_mutex_unlock(&wq.m);
    /* a timed condition wait times out and still holds the mutex */
    tk_mutex_lock(&wq.m);
    assert_int_equal(tk_cond_wait(&wq.cond, &wq.m, tk_now_ms() + 5), -1);
    assert_int_equal(errno, ETIMEDOUT);
    assert_ptr_equal(wq.m.owner, tk_gt_self());
    tk_mutex_unlock(&wq.m);
}

static void test_cond_fifo(void **state)
{
    fixture_t *f = *state;
    memset(&wq, 0, sizeof(wq));
    tk_mutex_init(&wq.m);
    tk_cond_init(&wq.cond);
    for (intptr_t i = 0; i < 5; i++)
        tk_gt_spawn(f->s, "c", cond_waiter, (void *)i);
    tk_gt_spawn(f->s, "signaller", cond_signaller, NULL);
    assert_int_equal(tk_sched_run(f->s), 0);
    assert_int_equal(wq.n, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(wq.seq[i], i);
    assert_idle(f->s);
}

typedef struct {
    tk_chan_t *ch;
    int got[32], ngot;
    int send_err[4];
    int recv_rc, recv_err;
} chan_t;

static void chan_sender(void *arg)
{
    chan_t *c = arg;
    /* capacity 2: the third send blocks until the receiver makes room */
    for (intptr_t i = 0; i < 10; i++)
        assert_int_equal(tk_chan_send(c->ch, (void *)(i + 1), -1), 0);
}

static void chan_receiver(void *arg)
{
    chan_t *c = arg;
    void *v;
    tk_gt_yield();
    for (int i = 0; i < 10; i++) {
        assert_int_equal(tk_chan_recv(c->ch, &v, -1), 0);
        c->got[c->ngot++] = (int)(intptr_t)v;
        if (i % 3 == 0)
            tk_gt_yield();
    }
    int64_t dl = tk_now_ms() + 5;
    assert_int_equal(tk_chan_recv(c->ch, &v, dl), -1);
    assert_int_equal(errno, ETIMEDOUT);
}

static void test_chan_fifo(void **state)
{
    fixture_t *f = *state;
    chan_t c;
    memset(&c, 0, sizeof(c));
    c.ch = tk_chan_new(2);
    assert_non_null(c.ch);
    tk_gt_spawn(f->s, "sender", chan_sender, &c);
    tk_gt_spawn(f->s, "receiver", chan_receiver, &c);
    assert_int_equal(tk_sched_run(f->s), 0);
    assert_int_equal(c.ngot, 10);
    for (int i = 0; i < 10; i++)
        assert_int_equal(c.got[i], i + 1);
    tk_chan_free(c.ch);
    assert_idle(f->s);
}

/* Several blocked senders are served in arrival order. */
static void chan_blocked_sender(void *arg)
{
    chan_t *c = arg;
    intptr_t id = (intptr_t)tk_gt_data(tk_gt_self());
    if (tk_chan_send(c->ch, (void *)id, -1) != 0)
        c->send_err[id - 100] = errno;
}

static void chan_closer(void *arg)
{
    chan_t *c = arg;
    void *v;
    tk_gt_yield(); /* slot taken by 100, 101..103 blocked in order */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(tk_chan_recv(c->ch, &v, -1), 0);
        c->got[c->ngot++] = (int)(intptr_t)v;
    }
    tk_chan_close(c->ch); /* 102 sits in the ring; 103 is still blocked: EPIPE */
    assert_int_equal(tk_chan_send(c->ch, (void *)1, -1), -1);
    assert_int_equal(errno, EPIPE);
    tk_gt_yield();
    /* what was buffered before close is still delivered, then EPIPE */
    assert_int_equal(tk_chan_recv(c->ch, &v, -1), 0);
    c->got[c->ngot++] = (int)(intptr_t)v;
    c->recv_rc = tk_chan_recv(c->ch, &v, -1);
    c->recv_err = errno;
}

static void chan_parked_receiver(void *arg)
{
    chan_t *c = arg;
    void *v;
    c->recv_rc = tk_chan_recv(c->ch, &v, -1);
    c->recv_err = errno;
}

static void chan_close_closer(void *arg)
{
    chan_t *c = arg;
    tk_gt_yield();
    tk_chan_close(c->ch);
}

static void test_chan_close(void **state)
{
    fixture_t *f = *state;
    chan_t c;
    memset(&c, 0, sizeof(c));
    c.ch = tk_chan_new(1);
    for (intptr_t id = 100; id < 104; id++)
        tk_gt_set_data(tk_gt_spawn(f->s, "snd", chan_blocked_sender, &c), (void *)id);
    tk_gt_spawn(f->s, "closer", chan_closer, &c);
    assert_int_equal(tk_sched_run(f->s), 0);
    assert_int_equal(c.ngot, 3);
    assert_int_equal(c.got[0], 100);
    assert_int_equal(c.got[1], 101);
    assert_int_equal(c.got[2], 102);
    assert_int_equal(c.send_err[3], EPIPE);
    assert_int_equal(c.send_err[0] | c.send_err[1] | c.send_err[2], 0);
    assert_int_equal(c.recv_rc, -1);
    assert_int_equal(c.recv_err, EPIPE);
    tk_chan_free(c.ch);

    /* close wakes a parked receiver with EPIPE */
    memset(&c, 0, sizeof(c));
    c.ch = tk_chan_new(4);
    tk_gt_spawn(f->s, "rcv", chan_parked_receiver, &c);
    tk_gt_spawn(f->s, "closer", chan_close_closer, &c);
    assert_int_equal(tk_sched_run(f->s), 0);
    assert_int_equal(c.recv_rc, -1);
    assert_int_equal(c.recv_err, EPIPE);
    tk_chan_free(c.ch);
    assert_idle(f->s);
}

/* A thread cancelled while queued on a mutex leaves the queue; the order of
 * the others is kept. */
static tk_gt_t *mq[4];

static void mutex_cancel_canceller(void *arg)
{
    assert_int_equal(tk_mutex_lock(&wq.m), 0);
    tk_gt_yield(); /* the others queue up */
    tk_gt_cancel(mq[1]);
    tk_mutex_unlock(&wq.m);
}

static void mutex_cancel_waiter(void *arg)
{
    if (tk_mutex_lock(&wq.m) != 0) {
        wq.seq[wq.n++] = -(int)(intptr_t)arg;
        return;
    }
    wq.seq[wq.n++] = (int)(intptr_t)arg;
    tk_mutex_unlock(&wq.m);
}

static void test_mutex_cancel(void **state)
{
    fixture_t *f = *state;
    memset(&wq, 0, sizeof(wq));
    tk_mutex_init(&wq.m);
    tk_gt_spawn(f->s, "holder", mutex_cancel_canceller, NULL);
    for (intptr_t i = 1; i <= 3; i++)
        mq[i] = tk_gt_spawn(f->s, "w", mutex_cancel_waiter, (void *)i);
    assert_int_equal(tk_sched_run(f->s), 0);
    assert_int_equal(wq.n, 3);
    assert_int_equal(wq.seq[0], -1); /* cancelled: woken first with ECANCELED */
    assert_int_equal(wq.seq[1], 2);
    assert_int_equal(wq.seq[2], 3);
    assert_idle(f->s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_mutex_fifo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sem_fifo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cond_fifo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chan_fifo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chan_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mutex_cancel, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
