/* scheduler.c: the per-worker green-thread scheduler on a libevent loop.
 *
 * Shape: the thread's own stack is the scheduler context ("main"). Green
 * threads switch to main whenever they park, yield or end; main pops the next
 * runnable thread. The run queue is drained
 *   - inline, from the callback of a green thread's own event (fd ready,
 *     deadline), so a woken thread runs before libevent polls again;
 *   - from drain_ev, an internal event that tk_gt_spawn()/wake activate with
 *     event_active(): libevent runs activated events in the same loop
 *     iteration, so a thread spawned from a read callback runs right after
 *     that callback, not after another epoll_wait round trip;
 *   - from tk_sched_run_ready(), called by a read callback right after it
 *     spawned a thread, so one warm stack serves a burst of connections;
 *   - from yield_ev, a zero timeout: a thread that yields runs again only
 *     after the loop has polled for I/O once, so a CPU-bound thread that
 *     yields cannot starve the network.
 * Because everything goes through events, the scheduler works both under
 * tk_sched_run() and under a caller's own event_base_dispatch().
 *
 * A green thread's struct lives in the top page of its stack mapping (coro
 * udata) and embeds the struct event it parks on, so neither spawning nor
 * waiting allocates.
 *
 * Mutexes, semaphores, conditions and channels on top of park/wake are in
 * waitq.c, the guard-page overflow report in sched_guard.c; the structs they
 * share are in sched_int.h. */
#include "config.h"

#include "runtime/scheduler.h"

#include "runtime/coro.h"
#include "runtime/sched_int.h"
#include "proc/log.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/event_struct.h>

static __thread tk_sched_t *t_sched;

/* --- options ------------------------------------------------------------------ */

void tk_sched_opts_default(tk_sched_opts_t *o)
{
    o->stack_size = 64u * 1024u;
    o->max_threads = 0;
    o->pool_max = 1024;
    o->long_run_ns = 50000000ull;
    o->stack_paint = 0;
}

int tk_sched_opts_check(const tk_sched_opts_t *o, char *err, size_t errlen)
{
    if (o->stack_size < TK_SCHED_STACK_MIN || o->stack_size > TK_SCHED_STACK_MAX) {
        snprintf(err, errlen, "runtime.stack_size: %zu is out of range %u..%u", o->stack_size,
                 TK_SCHED_STACK_MIN, TK_SCHED_STACK_MAX);
        return -1;
    }
    if (o->max_threads > TK_SCHED_THREADS_MAX) {
        snprintf(err, errlen, "runtime.max_threads: %u is out of range 0..%u (0 = unlimited)",
                 o->max_threads, TK_SCHED_THREADS_MAX);
        return -1;
    }
    if (o->long_run_ns < TK_SCHED_LONG_RUN_MIN_NS || o->long_run_ns > TK_SCHED_LONG_RUN_MAX_NS) {
        snprintf(err, errlen, "runtime.long_run_ms: %llu is out of range %llu..%llu",
                 o->long_run_ns / 1000000ull, TK_SCHED_LONG_RUN_MIN_NS / 1000000ull,
                 TK_SCHED_LONG_RUN_MAX_NS / 1000000ull);
        return -1;
    }
    if (o->pool_max > TK_SCHED_THREADS_MAX) {
        snprintf(err, errlen, "runtime.pool_max: %u is out of range 0..%u", o->pool_max,
                 TK_SCHED_THREADS_MAX);
        return -1;
    }
    return 0;
}

uint64_t tk_now_last_ns;

uint64_t tk_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    tk_now_last_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    return tk_now_last_ns;
}

/* --- states and queues ------------------------------------------------------------ */

static void all_insert(tk_gt_t **head, tk_gt_t *g)
{
    g->all_prev = NULL;
    g->all_next = *head;
    if (*head)
        (*head)->all_prev = g;
    *head = g;
}

static void all_remove(tk_gt_t **head, tk_gt_t *g)
{
    if (g->all_prev)
        g->all_prev->all_next = g->all_next;
    else
        *head = g->all_next;
    if (g->all_next)
        g->all_next->all_prev = g->all_prev;
    g->all_next = g->all_prev = NULL;
}

/* Ask libevent to drain the run queue in this loop iteration. */
static inline void kick(tk_sched_t *s)
{
    if (!s->draining && !s->drain_armed) {
        s->drain_armed = 1;
        event_active(&s->drain_ev, EV_TIMEOUT, 1);
    }
}

static inline void rq_append(tk_sched_t *s, tk_gt_t *g)
{
    g->rq_next = NULL;
    if (s->rq_tail)
        s->rq_tail->rq_next = g;
    else
        s->rq_head = g;
    s->rq_tail = g;
}

/* Detach a parked thread from whatever it waits on. */
static void unwait(tk_gt_t *g)
{
    if (g->wq)
        tk_waitq_remove(g);
    if (g->ev_armed) {
        event_del(&g->ev);
        g->ev_armed = 0;
    }
    if (g->wait_kind == WK_JOIN && g->join_target) {
        g->join_target->joiner = NULL;
        g->join_target = NULL;
    }
    g->wait_kind = WK_NONE;
}

/* Make a parked thread runnable; its parking call will return result. */
void tk_sched_wake(tk_gt_t *g, int result)
{
    assert(is_waiting(g));
    unwait(g);
    g->wake_result = result;
    set_state(g, TK_GT_RUNNABLE);
    rq_append(g->s, g);
    kick(g->s);
}

static void gt_release(tk_sched_t *s, tk_gt_t *g)
{
    if (s->opts.stack_paint) {
        uint64_t used = tk_coro_stack_used(g->coro);
        if (used > s->st.stack_max_used)
            s->st.stack_max_used = used;
    }
    if (g->defers != g->defer_inline)
        free(g->defers);
    tk_coro_free(g->coro);
}

/* Back on main after g ended: account for it and give its stack back, unless
 * someone will join it. */
static void reap(tk_sched_t *s, tk_gt_t *g)
{
    assert(g->state == TK_GT_RUNNING);
    s->st.by_state[TK_GT_RUNNING]--;
    s->st.exited++;
    s->live--;
    all_remove(&s->all, g);
    if (g->joinable)
        all_insert(&s->zombies, g);
    else
        gt_release(s, g);
}

static void long_run(tk_sched_t *s, tk_gt_t *g, uint64_t ns)
{
    s->st.long_runs++;
    TK_LOG(TK_LOG_WARN,
           "green thread %llu (%s) ran %llu.%03llu ms without yielding (runtime.long_run_ms is "
           "%llu)",
           (unsigned long long)g->id, g->name, (unsigned long long)(ns / 1000000u),
           (unsigned long long)(ns / 1000u % 1000u),
           (unsigned long long)(s->opts.long_run_ns / 1000000u));
}

/* Run every runnable thread once; with_yielders: the threads that yielded
 * on earlier turns too. Only the yield event passes it, so a CPU-bound thread
 * that yields runs once per loop iteration, however many I/O callbacks drain
 * the queue in that iteration. */
static void run_queue(tk_sched_t *s, int with_yielders)
{
    if (s->draining)
        return;
    s->draining = 1;
    if (with_yielders && s->yq_head) {
        if (s->rq_tail)
            s->rq_tail->rq_next = s->yq_head;
        else
            s->rq_head = s->yq_head;
        s->rq_tail = s->yq_tail;
        s->yq_head = s->yq_tail = NULL;
    }
    uint64_t t0 = s->rq_head ? tk_now_ns() : 0;
    tk_gt_t *g;
    while ((g = s->rq_head) != NULL) {
        s->rq_head = g->rq_next;
        if (s->rq_head == NULL)
            s->rq_tail = NULL;
        g->rq_next = NULL;
        set_state(g, TK_GT_RUNNING);
        if (g->started_ns == 0)
            g->started_ns = t0; /* first slice; saves a clock read per spawn */
        s->cur = g;
        s->st.switches++;
        tk_coro_switch(s->main, g->coro);
        s->cur = NULL;
        uint64_t t1 = tk_now_ns();
        if (t1 - t0 > s->opts.long_run_ns)
            long_run(s, g, t1 - t0);
        t0 = t1;
        if (g->done)
            reap(s, g);
        else
            assert(g->state != TK_GT_RUNNING);
    }
    s->draining = 0;
    if (s->yq_head && !s->yield_armed) {
        static const struct timeval zero = {0, 0};
        s->yield_armed = 1;
        event_add(&s->yield_ev, &zero);
    }
    if (s->in_run && (s->live == 0 || s->stopping))
        event_base_loopbreak(s->base);
}

void tk_sched_run_ready(tk_sched_t *s)
{
    assert(s->cur == NULL);
    run_queue(s, 0);
}

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
    tk_sched_t *s = arg;
    s->drain_armed = 0;
    run_queue(s, 0);
}

static void yield_cb(evutil_socket_t fd, short what, void *arg)
{
    tk_sched_t *s = arg;
    s->yield_armed = 0;
    run_queue(s, 1);
}

/* --- scheduler lifecycle -------------------------------------------------------------- */

tk_sched_t *tk_sched_new(struct event_base *base, const tk_sched_opts_t *opts)
{
    tk_sched_opts_t def;
    char err[160];

    if (t_sched != NULL) {
        errno = EBUSY;
        return NULL;
    }
    if (opts == NULL) {
        tk_sched_opts_default(&def);
        opts = &def;
    }
    if (base == NULL || tk_sched_opts_check(opts, err, sizeof(err)) != 0) {
        errno = EINVAL;
        return NULL;
    }
    tk_sched_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->base = base;
    s->opts = *opts;
    s->pool = tk_coro_pool_new(opts->stack_size, sizeof(tk_gt_t), opts->pool_max);
    if (s->pool)
        tk_coro_pool_set_paint(s->pool, opts->stack_paint);
    s->main = tk_coro_main_new();
    if (s->pool == NULL || s->main == NULL ||
        event_assign(&s->drain_ev, base, -1, 0, drain_cb, s) != 0 ||
        event_assign(&s->yield_ev, base, -1, 0, yield_cb, s) != 0) {
        tk_coro_pool_free(s->pool);
        tk_coro_main_free(s->main);
        free(s);
        errno = ENOMEM;
        return NULL;
    }
    tk_sched_guard_install();
    tk_sched_guard_altstack_setup(s);
    t_sched = s;
    return s;
}

static void run_defers(tk_gt_t *g)
{
    while (g->ndefer > 0) {
        gt_defer_t d = g->defers[--g->ndefer];
        d.fn(d.arg);
    }
}

void tk_sched_free(tk_sched_t *s)
{
    if (s == NULL)
        return;
    assert(s->cur == NULL); /* not from inside a green thread */
    /* Cancelled threads unwind on their own: every parking call now fails.
     * The cancel pass is repeated each round: a thread spawned while the
     * others unwind must not park for real and then be released from under
     * whoever holds its handle (a pending Redis reply, a connecting PGconn). */
    for (int round = 0; s->live > 0 && round < 1000; round++) {
        for (tk_gt_t *g = s->all; g; g = g->all_next)
            tk_gt_cancel(g);
        if (!s->rq_head && !s->yq_head)
            break;
        run_queue(s, 1);
    }
    /* Whatever is left ignores cancellation; its stack cannot be unwound, but
     * its cleanups still run (on this stack). */
    while (s->all) {
        tk_gt_t *g = s->all;
        if (is_waiting(g))
            unwait(g);
        run_defers(g);
        s->st.by_state[g->state]--;
        s->st.exited++;
        s->live--;
        all_remove(&s->all, g);
        gt_release(s, g);
    }
    s->rq_head = s->rq_tail = s->yq_head = s->yq_tail = NULL;
    while (s->zombies) {
        tk_gt_t *g = s->zombies;
        all_remove(&s->zombies, g);
        gt_release(s, g);
    }
    event_del(&s->drain_ev);
    event_del(&s->yield_ev);
    tk_coro_pool_free(s->pool);
    tk_coro_main_free(s->main);
    tk_sched_guard_altstack_teardown(s);
    if (t_sched == s)
        t_sched = NULL;
    free(s);
}

tk_sched_t *tk_sched_current(void)
{
    return t_sched;
}
struct event_base *tk_sched_base(tk_sched_t *s)
{
    return s->base;
}
unsigned tk_sched_live(tk_sched_t *s)
{
    return s->live;
}

int tk_sched_run(tk_sched_t *s)
{
    int rc = 0;
    if (s->cur != NULL) {
        errno = EPERM;
        return -1;
    }
    s->in_run = 1;
    s->stopping = 0;
    run_queue(s, 1); /* whatever was spawned before the loop started */
    while (s->live > 0 && !s->stopping) {
        int r = event_base_loop(s->base, EVLOOP_ONCE);
        if (r < 0) {
            rc = -1;
            break;
        }
        if (r == 1 && s->live > 0 && !s->rq_head && !s->yq_head) {
            /* nothing pending: the live threads wait for each other forever */
            errno = EDEADLK;
            rc = -1;
            break;
        }
    }
    s->in_run = 0;
    return rc;
}

void tk_sched_stop(tk_sched_t *s)
{
    s->stopping = 1;
    if (s->in_run)
        event_base_loopbreak(s->base);
}

/* Stacks re-measured per tk_sched_stats() call: bounds its cost to about a
 * millisecond while a worker with 10,000 threads still sees every stack
 * re-measured within some tens of calls. */
#define STATS_RESIDENT_BUDGET 512

static void stats_fill(tk_sched_t *s, tk_sched_stats_t *out, unsigned long budget)
{
    *out = s->st;
    out->stack_reserved = (uint64_t)tk_coro_pool_mapped(s->pool) * tk_coro_pool_map_size(s->pool);
    out->stack_resident = tk_coro_pool_resident_refresh(s->pool, budget);
    out->pooled_stacks = tk_coro_pool_idle(s->pool);
}

void tk_sched_stats(tk_sched_t *s, tk_sched_stats_t *out)
{
    stats_fill(s, out, STATS_RESIDENT_BUDGET);
}

void tk_sched_stats_exact(tk_sched_t *s, tk_sched_stats_t *out)
{
    stats_fill(s, out, 0);
}

void tk_sched_foreach(tk_sched_t *s, tk_gt_visit_fn cb, void *arg)
{
    tk_gt_t *next;
    for (tk_gt_t *g = s->all; g; g = next) {
        next = g->all_next;
        cb(g, arg);
    }
}

/* --- green threads ------------------------------------------------------------ */

static void gt_finish(tk_gt_t *g) __attribute__((noreturn));

/* First code on a new green thread's stack. */
static void gt_main(void *unused)
{
    tk_gt_t *g = t_sched->cur;
    g->fn(g->arg);
    gt_finish(g);
}

static void gt_finish(tk_gt_t *g)
{
    tk_sched_t *s = g->s;
    run_defers(g);
    if (g->defers != g->defer_inline) {
        free(g->defers);
        g->defers = g->defer_inline;
    }
    g->done = 1;
    if (g->joiner) {
        tk_gt_t *j = g->joiner;
        g->joiner = NULL;
        j->join_target = NULL;
        tk_sched_wake(j, 0);
    }
    tk_coro_switch_final(g->coro, s->main);
}

tk_gt_t *tk_gt_spawn(tk_sched_t *s, const char *name, tk_gt_fn fn, void *arg)
{
    if (s->opts.max_threads && s->live >= s->opts.max_threads) {
        errno = EAGAIN;
        return NULL;
    }
    tk_coro_t *c = tk_coro_new(s->pool, gt_main, NULL);
    if (c == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    tk_gt_t *g = tk_coro_udata(c);
    /* everything but the embedded event, which event_assign() initialises */
    memset(g, 0, offsetof(tk_gt_t, ev));
    memset(&g->deadline_ms, 0, offsetof(tk_gt_t, note) - offsetof(tk_gt_t, deadline_ms));
    g->note[0] = '\0'; /* the rest is never read past the NUL */
    g->s = s;
    g->coro = c;
    g->id = ++s->next_id;
    g->fn = fn;
    g->arg = arg;
    g->deadline_ms = -1;
    g->defers = g->defer_inline;
    g->defer_cap = GT_INLINE_DEFERS;
    tk_gt_set_name(g, name);
    g->state = TK_GT_RUNNABLE;
    s->st.by_state[TK_GT_RUNNABLE]++;
    s->st.created++;
    s->live++;
    all_insert(&s->all, g);
    rq_append(s, g);
    kick(s);
    return g;
}

void tk_gt_set_note(tk_gt_t *gt, const char *who, size_t wholen, const char *what, size_t whatlen)
{
    size_t room = sizeof(gt->note) - 1;
    size_t o = wholen < room ? wholen : room;
    memcpy(gt->note, who, o);
    if (whatlen > 0 && o + 1 < room) {
        gt->note[o++] = ' ';
        size_t k = whatlen < room - o ? whatlen : room - o;
        memcpy(gt->note + o, what, k);
        o += k;
    }
    gt->note[o] = '\0';
}

tk_gt_t *tk_gt_self(void)
{
    return t_sched ? t_sched->cur : NULL;
}

void tk_gt_yield(void)
{
    tk_gt_t *g = tk_gt_self();
    if (g == NULL)
        return;
    tk_sched_t *s = g->s;
    set_state(g, TK_GT_RUNNABLE);
    g->rq_next = NULL;
    if (s->yq_tail)
        s->yq_tail->rq_next = g;
    else
        s->yq_head = g;
    s->yq_tail = g;
    tk_coro_switch(g->coro, s->main);
}

uint64_t tk_gt_id(const tk_gt_t *gt)
{
    return gt->id;
}
const char *tk_gt_name(const tk_gt_t *gt)
{
    return gt->name;
}

void tk_gt_set_name(tk_gt_t *gt, const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n >= sizeof(gt->name))
        n = sizeof(gt->name) - 1;
    if (n)
        memcpy(gt->name, name, n);
    gt->name[n] = '\0';
}

tk_gt_state_t tk_gt_state(const tk_gt_t *gt)
{
    return gt->state;
}
uint64_t tk_gt_started_ns(const tk_gt_t *gt)
{
    return gt->started_ns;
}
void tk_gt_set_data(tk_gt_t *gt, void *data)
{
    gt->data = data;
    gt->req_words[0] = gt->req_words[1] = 0;
}
uint64_t *tk_gt_req_words(tk_gt_t *gt)
{
    return gt ? gt->req_words : NULL;
}
void *tk_gt_data(const tk_gt_t *gt)
{
    return gt->data;
}

void tk_gt_exit(void)
{
    tk_gt_t *g = tk_gt_self();
    if (g == NULL)
        abort(); /* not in a green thread: nothing to end */
    gt_finish(g);
}

void tk_gt_joinable(tk_gt_t *gt)
{
    gt->joinable = 1;
}

int tk_gt_join(tk_gt_t *gt)
{
    tk_gt_t *self = tk_gt_self();
    if (!gt->joinable || gt->joiner || gt == self) {
        errno = EINVAL;
        return -1;
    }
    if (!gt->done) {
        if (self == NULL) {
            errno = EPERM; /* main cannot park */
            return -1;
        }
        if (self->cancelled) {
            errno = ECANCELED;
            return -1;
        }
        gt->joiner = self;
        self->join_target = gt;
        self->wait_kind = WK_JOIN;
        set_state(self, TK_GT_WAIT_GT);
        tk_coro_switch(self->coro, self->s->main);
        if (self->wake_result) {
            errno = self->wake_result;
            return -1;
        }
    }
    assert(gt->done);
    all_remove(&gt->s->zombies, gt);
    gt_release(gt->s, gt);
    return 0;
}

int tk_gt_defer(void (*fn)(void *), void *arg)
{
    tk_gt_t *g = tk_gt_self();
    if (g == NULL) {
        errno = EPERM;
        return -1;
    }
    if (g->ndefer == g->defer_cap) {
        unsigned cap = g->defer_cap * 2;
        gt_defer_t *d = malloc(cap * sizeof(*d));
        if (d == NULL) {
            errno = ENOMEM;
            return -1;
        }
        memcpy(d, g->defers, g->ndefer * sizeof(*d));
        if (g->defers != g->defer_inline)
            free(g->defers);
        g->defers = d;
        g->defer_cap = cap;
    }
    g->defers[g->ndefer].fn = fn;
    g->defers[g->ndefer].arg = arg;
    g->ndefer++;
    return 0;
}

void tk_gt_cancel(tk_gt_t *gt)
{
    if (gt->done || gt->cancelled)
        return;
    gt->cancelled = 1;
    if (is_waiting(gt))
        tk_sched_wake(gt, ECANCELED);
}

int tk_gt_cancelled(const tk_gt_t *gt)
{
    return gt->cancelled;
}

/* --- parking ---------------------------------------------------------------------------- */

/* The calling green thread, ready to park; NULL with errno set if it can't. */
tk_gt_t *tk_sched_park_self(void)
{
    tk_gt_t *g = tk_gt_self();
    if (g == NULL) {
        errno = EPERM;
        return NULL;
    }
    if (g->cancelled) {
        errno = ECANCELED;
        return NULL;
    }
    return g;
}

static void deadline_tv(int64_t deadline_ms, struct timeval *tv)
{
    int64_t rel = deadline_ms - tk_now_ms();
    if (rel < 0)
        rel = 0;
    tv->tv_sec = (time_t)(rel / 1000);
    tv->tv_usec = (suseconds_t)(rel % 1000) * 1000;
}

static void gt_ev_cb(evutil_socket_t fd, short what, void *arg);

/* Arm g's embedded event for fd (or -1: a pure timer) and the deadline. */
int tk_sched_arm(tk_gt_t *g, int fd, short events, int64_t deadline_ms)
{
    struct timeval tv;
    g->deadline_ms = deadline_ms;
    if (fd < 0 && deadline_ms < 0)
        return 0; /* woken only explicitly */
    event_assign(&g->ev, g->s->base, fd, events, gt_ev_cb, g);
    if (deadline_ms >= 0) {
        /* libevent caches the time per loop turn; refresh it so a long
         * running turn does not make the timer fire early */
        event_base_update_cache_time(g->s->base);
        deadline_tv(deadline_ms, &tv);
    }
    if (event_add(&g->ev, deadline_ms >= 0 ? &tv : NULL) != 0) {
        errno = fd >= 0 ? EBADF : ENOMEM;
        return -1;
    }
    g->ev_armed = 1;
    return 0;
}

/* Park the caller in state why; returns 0 or the errno it was woken with. */
int tk_sched_park(tk_gt_t *g, tk_gt_state_t why, int kind)
{
    g->wait_kind = (unsigned char)kind;
    set_state(g, why);
    tk_coro_switch(g->coro, g->s->main);
    return g->wake_result;
}

static void gt_ev_cb(evutil_socket_t fd, short what, void *arg)
{
    tk_gt_t *g = arg;
    tk_sched_t *s = g->s;
    int result = 0;

    g->ev_armed = 0;
    if (what & EV_TIMEOUT) {
        int64_t now = tk_now_ms();
        if (now < g->deadline_ms) {
            /* libevent's coarse monotonic clock lags ours: not due yet */
            struct timeval tv;
            deadline_tv(g->deadline_ms, &tv);
            if (tv.tv_sec == 0 && tv.tv_usec == 0)
                tv.tv_usec = 1000;
            if (event_add(&g->ev, &tv) == 0) {
                g->ev_armed = 1;
                return;
            }
        }
        result = g->wait_kind == WK_SLEEP ? 0 : ETIMEDOUT;
    }
    tk_sched_wake(g, result);
    run_queue(s, 0); /* run it now, before libevent polls again */
}

int tk_gt_wait_fd(int fd, short events, tk_gt_state_t why, int64_t deadline_ms)
{
    tk_gt_t *g = tk_sched_park_self();
    if (g == NULL)
        return -1;
    if (why < TK_GT_WAIT_NET || why >= TK_GT_NSTATES || fd < 0 ||
        !(events & (EV_READ | EV_WRITE))) {
        errno = EINVAL;
        return -1;
    }
    if (deadline_ms >= 0 && tk_now_ms() >= deadline_ms) {
        errno = ETIMEDOUT;
        return -1;
    }
    if (tk_sched_arm(g, fd, events & (EV_READ | EV_WRITE | EV_ET), deadline_ms) != 0)
        return -1;
    return park_result(tk_sched_park(g, why, WK_FD));
}

int tk_gt_sleep_ms(int64_t ms)
{
    tk_gt_t *g = tk_sched_park_self();
    if (g == NULL)
        return -1;
    if (ms <= 0) {
        tk_gt_yield();
        return park_result(g->cancelled ? ECANCELED : 0);
    }
    if (tk_sched_arm(g, -1, 0, tk_now_ms() + ms) != 0)
        return -1;
    return park_result(tk_sched_park(g, TK_GT_SLEEPING, WK_SLEEP));
}

int tk_gt_park(tk_gt_state_t why, int64_t deadline_ms)
{
    tk_gt_t *g = tk_sched_park_self();
    if (g == NULL)
        return -1;
    if (why < TK_GT_WAIT_NET || why >= TK_GT_NSTATES) {
        errno = EINVAL;
        return -1;
    }
    if (deadline_ms >= 0 && tk_now_ms() >= deadline_ms) {
        errno = ETIMEDOUT;
        return -1;
    }
    if (tk_sched_arm(g, -1, 0, deadline_ms) != 0)
        return -1;
    return park_result(tk_sched_park(g, why, WK_PARK));
}

int tk_gt_unpark(tk_gt_t *gt)
{
    if (gt == NULL || gt->done || !is_waiting(gt) || gt->wait_kind != WK_PARK)
        return -1;
    tk_sched_wake(gt, 0);
    return 0;
}
