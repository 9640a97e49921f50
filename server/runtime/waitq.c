/* waitq.c: FIFO wait queues between the green threads of one scheduler and
 * what is built on them: mutex, semaphore, condition variable, channel. A
 * waiter parks on the scheduler (tk_sched_park) and is handed what it waited
 * for by whoever wakes it. */
#include "config.h"

#include "runtime/waitq.h"

#include "runtime/sched_int.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

void tk_waitq_push(tk_waitq_t *q, tk_gt_t *g)
{
    tk_gt_t *tail = q->tail;
    g->wq = q;
    g->wq_next = NULL;
    g->wq_prev = tail;
    if (tail)
        tail->wq_next = g;
    else
        q->head = g;
    q->tail = g;
}

void tk_waitq_remove(tk_gt_t *g)
{
    tk_waitq_t *q = g->wq;
    if (g->wq_prev)
        g->wq_prev->wq_next = g->wq_next;
    else
        q->head = g->wq_next;
    if (g->wq_next)
        g->wq_next->wq_prev = g->wq_prev;
    else
        q->tail = g->wq_prev;
    g->wq = NULL;
    g->wq_next = g->wq_prev = NULL;
}

/* Queue the caller on q (FIFO) and park; 0 when handed what it waited for. */
static int waitq_park(tk_gt_t *g, tk_waitq_t *q, int64_t deadline_ms)
{
    if (deadline_ms >= 0 && tk_now_ms() >= deadline_ms)
        return ETIMEDOUT;
    if (tk_sched_arm(g, -1, 0, deadline_ms) != 0)
        return errno;
    tk_waitq_push(q, g);
    return tk_sched_park(g, TK_GT_WAIT_GT, WK_WAITQ);
}

void tk_mutex_init(tk_mutex_t *m)
{
    memset(m, 0, sizeof(*m));
}

int tk_mutex_lock(tk_mutex_t *m)
{
    tk_gt_t *g = tk_sched_park_self();
    if (g == NULL)
        return -1;
    if (m->owner == NULL) {
        m->owner = g;
        return 0;
    }
    if (m->owner == g) {
        errno = EDEADLK;
        return -1;
    }
    int r = waitq_park(g, &m->q, -1);
    if (r != 0)
        return park_result(r);
    assert(m->owner == g); /* handed over by unlock */
    return 0;
}

int tk_mutex_trylock(tk_mutex_t *m)
{
    tk_gt_t *g = tk_gt_self();
    if (g == NULL) {
        errno = EPERM;
        return -1;
    }
    if (m->owner != NULL) {
        errno = EBUSY;
        return -1;
    }
    m->owner = g;
    return 0;
}

void tk_mutex_unlock(tk_mutex_t *m)
{
    assert(m->owner != NULL && m->owner == tk_gt_self());
    tk_gt_t *next = m->q.head;
    m->owner = next;
    if (next)
        tk_sched_wake(next, 0);
}

/* Re-take m after a condition wait, even when cancelled: the caller expects to
 * hold m whatever the wait returned. */
static void mutex_relock(tk_mutex_t *m, tk_gt_t *g)
{
    while (m->owner != g) {
        if (m->owner == NULL) {
            m->owner = g;
            break;
        }
        tk_waitq_push(&m->q, g);
        g->deadline_ms = -1;
        tk_sched_park(g, TK_GT_WAIT_GT, WK_WAITQ);
    }
}

void tk_sem_init(tk_sem_t *s, long count)
{
    memset(s, 0, sizeof(*s));
    s->count = count;
}

int tk_sem_wait(tk_sem_t *s, int64_t deadline_ms)
{
    if (s->count > 0) {
        s->count--;
        return 0;
    }
    tk_gt_t *g = tk_sched_park_self();
    if (g == NULL)
        return -1;
    return park_result(waitq_park(g, &s->q, deadline_ms));
}

void tk_sem_post(tk_sem_t *s)
{
    tk_gt_t *next = s->q.head;
    if (next)
        tk_sched_wake(next, 0); /* the unit goes straight to the first waiter */
    else
        s->count++;
}

void tk_cond_init(tk_cond_t *c)
{
    memset(c, 0, sizeof(*c));
}

int tk_cond_wait(tk_cond_t *c, tk_mutex_t *m, int64_t deadline_ms)
{
    tk_gt_t *g = tk_sched_park_self();
    if (g == NULL)
        return -1;
    assert(m->owner == g);
    int r = ETIMEDOUT;
    if (deadline_ms < 0 || tk_now_ms() < deadline_ms) {
        if (tk_sched_arm(g, -1, 0, deadline_ms) != 0)
            return -1;
        tk_waitq_push(&c->q, g);
        tk_mutex_unlock(m);
        r = tk_sched_park(g, TK_GT_WAIT_GT, WK_WAITQ);
        mutex_relock(m, g);
    }
    return park_result(r);
}

void tk_cond_signal(tk_cond_t *c)
{
    tk_gt_t *next = c->q.head;
    if (next)
        tk_sched_wake(next, 0);
}

void tk_cond_broadcast(tk_cond_t *c)
{
    while (c->q.head)
        tk_sched_wake(c->q.head, 0);
}

struct tk_chan {
    size_t cap, n, head; /* ring of cap slots, n used from head */
    int closed;
    tk_waitq_t sendq, recvq;
    void *buf[];
};

tk_chan_t *tk_chan_new(size_t capacity)
{
    if (capacity < 1) {
        errno = EINVAL;
        return NULL;
    }
    tk_chan_t *c = calloc(1, sizeof(*c) + capacity * sizeof(void *));
    if (c)
        c->cap = capacity;
    return c;
}

void tk_chan_free(tk_chan_t *c)
{
    if (c == NULL)
        return;
    assert(c->sendq.head == NULL && c->recvq.head == NULL);
    free(c);
}

int tk_chan_send(tk_chan_t *c, void *v, int64_t deadline_ms)
{
    if (c->closed) {
        errno = EPIPE;
        return -1;
    }
    tk_gt_t *r = c->recvq.head;
    if (r != NULL) { /* a receiver waits, so the ring is empty: hand over */
        r->xfer = v;
        tk_sched_wake(r, 0);
        return 0;
    }
    if (c->n < c->cap) {
        c->buf[(c->head + c->n) % c->cap] = v;
        c->n++;
        return 0;
    }
    tk_gt_t *g = tk_sched_park_self();
    if (g == NULL)
        return -1;
    g->xfer = v;
    return park_result(waitq_park(g, &c->sendq, deadline_ms));
}

int tk_chan_recv(tk_chan_t *c, void **v, int64_t deadline_ms)
{
    if (c->n > 0) {
        *v = c->buf[c->head];
        c->head = (c->head + 1) % c->cap;
        c->n--;
        tk_gt_t *snd = c->sendq.head;
        if (snd != NULL) { /* the first blocked sender's value takes the free slot */
            c->buf[(c->head + c->n) % c->cap] = snd->xfer;
            c->n++;
            tk_sched_wake(snd, 0);
        }
        return 0;
    }
    if (c->closed) {
        errno = EPIPE;
        return -1;
    }
    tk_gt_t *g = tk_sched_park_self();
    if (g == NULL)
        return -1;
    int r = waitq_park(g, &c->recvq, deadline_ms);
    if (r != 0)
        return park_result(r);
    *v = g->xfer;
    return 0;
}

void tk_chan_close(tk_chan_t *c)
{
    c->closed = 1;
    while (c->recvq.head)
        tk_sched_wake(c->recvq.head, EPIPE);
    while (c->sendq.head)
        tk_sched_wake(c->sendq.head, EPIPE);
}
