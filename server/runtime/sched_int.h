/* sched_int.h: private to runtime/: the scheduler's and a green thread's
 * structs, and what scheduler.c shares with waitq.c (parking, waking, the
 * wait-queue links) and sched_guard.c (the overflow report). */
#ifndef TK_SCHED_INT_H
#define TK_SCHED_INT_H

#include "runtime/scheduler.h"

#include "runtime/coro.h"

#include <assert.h>
#include <errno.h>

#include <event2/event.h>
#include <event2/event_struct.h>

struct tk_waitq;

/* What a parked thread waits for; decides how a timeout is reported and
 * what tk_gt_unpark() may wake. */
enum {
    WK_NONE = 0,
    WK_FD,    /* tk_gt_wait_fd */
    WK_SLEEP, /* tk_gt_sleep_ms: the timer firing is success */
    WK_PARK,  /* tk_gt_park */
    WK_WAITQ, /* mutex, semaphore, condition, channel */
    WK_JOIN,  /* tk_gt_join */
};

typedef struct {
    void (*fn)(void *);
    void *arg;
} gt_defer_t;

#define GT_INLINE_DEFERS 4

struct tk_gt {
    tk_sched_t *s;
    tk_coro_t *coro;
    uint64_t id;
    tk_gt_state_t state;
    tk_gt_fn fn;
    void *arg;
    void *data;
    uint64_t req_words[2];        /* request-scoped, zeroed by tk_gt_set_data() */
    tk_gt_t *rq_next;             /* run queue or yield queue */
    tk_gt_t *all_next, *all_prev; /* live list, or zombie list once ended */
    tk_gt_t *wq_next, *wq_prev;   /* position in a wait queue */
    struct tk_waitq *wq;          /* the wait queue it is on, if any (waitq.h) */
    tk_gt_t *joiner;              /* parked in tk_gt_join() on us */
    tk_gt_t *join_target;         /* whom we are joining */
    void *xfer;                   /* channel value handed over */
    struct event ev;              /* fd readiness and deadlines */
    int64_t deadline_ms;          /* of the current wait, -1 none */
    uint64_t started_ns;
    int wake_result;         /* 0 or the errno the park returns */
    unsigned char wait_kind; /* WK_* */
    unsigned char ev_armed;  /* ev is added */
    unsigned char cancelled;
    unsigned char joinable;
    unsigned char done; /* fn returned or tk_gt_exit(); about to be reaped */
    unsigned ndefer, defer_cap;
    gt_defer_t *defers; /* defer_inline, or malloc'd when more are needed */
    gt_defer_t defer_inline[GT_INLINE_DEFERS];
    char name[32];
    char note[TK_GT_NOTE_MAX]; /* for the overflow report: always NUL-terminated */
};

struct tk_sched {
    struct event_base *base;
    tk_sched_opts_t opts;
    tk_coro_pool_t *pool;
    tk_coro_t *main;            /* the thread's own stack */
    tk_gt_t *cur;               /* running green thread, NULL on main */
    tk_gt_t *rq_head, *rq_tail; /* runnable now */
    tk_gt_t *yq_head, *yq_tail; /* yielded: runnable after the next poll */
    tk_gt_t *all;               /* live threads */
    tk_gt_t *zombies;           /* ended joinable threads awaiting tk_gt_join */
    struct event drain_ev;      /* activated: drain the run queue this iteration */
    struct event yield_ev;      /* zero timeout: drain after one poll */
    unsigned char drain_armed, yield_armed, draining, in_run, stopping;
    unsigned live;
    uint64_t next_id;
    tk_sched_stats_t st;
    void *altstack; /* our sigaltstack, if we installed one */
    size_t altstack_size;
};

static inline void set_state(tk_gt_t *g, tk_gt_state_t st)
{
    tk_sched_t *s = g->s;
    assert(s->st.by_state[g->state] > 0);
    s->st.by_state[g->state]--;
    s->st.by_state[st]++;
    g->state = st;
}

static inline int is_waiting(const tk_gt_t *g)
{
    return g->state != TK_GT_RUNNING && g->state != TK_GT_RUNNABLE;
}

static inline int park_result(int r)
{
    if (r != 0) {
        errno = r;
        return -1;
    }
    return 0;
}

/* scheduler.c */
/* The calling green thread, ready to park; NULL with errno set if it can't. */
tk_gt_t *tk_sched_park_self(void);
/* Arm g's embedded event for fd (or -1: a pure timer) and the deadline. */
int tk_sched_arm(tk_gt_t *g, int fd, short events, int64_t deadline_ms);
/* Park the caller in state why; returns 0 or the errno it was woken with. */
int tk_sched_park(tk_gt_t *g, tk_gt_state_t why, int kind);
/* Make a parked thread runnable; its parking call will return result. */
void tk_sched_wake(tk_gt_t *g, int result);

/* waitq.c */
void tk_waitq_push(struct tk_waitq *q, tk_gt_t *g);
void tk_waitq_remove(tk_gt_t *g);

/* sched_guard.c */
/* Installed by every tk_sched_new(), unless already in place. */
void tk_sched_guard_install(void);
void tk_sched_guard_altstack_setup(tk_sched_t *s);
void tk_sched_guard_altstack_teardown(tk_sched_t *s);

#endif
