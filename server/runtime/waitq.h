/* waitq.h: waiting between the green threads of one scheduler: mutex,
 * semaphore, condition variable and bounded channel, each on a FIFO wait
 * queue. Same scheduler thread only. */
#ifndef TK_WAITQ_H
#define TK_WAITQ_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/scheduler.h" /* tk_gt_t */

typedef struct tk_waitq {
    void *head, *tail; /* FIFO of parked waiters; private */
} tk_waitq_t;

typedef struct {
    tk_gt_t *owner;
    tk_waitq_t q;
} tk_mutex_t;
void tk_mutex_init(tk_mutex_t *m);
int tk_mutex_lock(tk_mutex_t *m); /* may yield; -1 ECANCELED */
int tk_mutex_trylock(tk_mutex_t *m);
void tk_mutex_unlock(tk_mutex_t *m); /* hands over to the first waiter (FIFO) */

typedef struct {
    long count;
    tk_waitq_t q;
} tk_sem_t;
void tk_sem_init(tk_sem_t *s, long count);
int tk_sem_wait(tk_sem_t *s, int64_t deadline_ms); /* may yield */
void tk_sem_post(tk_sem_t *s);

typedef struct {
    tk_waitq_t q;
} tk_cond_t;
void tk_cond_init(tk_cond_t *c);
int tk_cond_wait(tk_cond_t *c, tk_mutex_t *m, int64_t deadline_ms); /* may yield */
void tk_cond_signal(tk_cond_t *c);
void tk_cond_broadcast(tk_cond_t *c);

typedef struct tk_chan tk_chan_t;
/* Bounded channel of pointers; capacity >= 1. */
tk_chan_t *tk_chan_new(size_t capacity);
void tk_chan_free(tk_chan_t *c);
int tk_chan_send(tk_chan_t *c, void *v, int64_t deadline_ms); /* may yield; -1 EPIPE if closed */
int tk_chan_recv(tk_chan_t *c, void **v,
                 int64_t deadline_ms); /* may yield; -1 EPIPE if closed and empty */
void tk_chan_close(tk_chan_t *c);

#endif
