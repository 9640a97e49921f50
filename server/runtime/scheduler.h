/* scheduler.h: the per-worker green-thread scheduler on a libevent loop.
 *
 * Names mirror pthreads where they can, so handler code reads like ordinary
 * blocking code. Every function marked "may yield" can park the calling green
 * thread; code between two yields owns the worker, so per-worker state needs no
 * locks. Only one scheduler runs per thread (the current one is thread-local). */

#ifndef TK_SCHEDULER_H
#define TK_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>

#include "shm/abi.h" /* tk_gt_state_t, tk_gt_state_name(), tk_sched_stats_t */

struct event_base;

typedef struct tk_sched tk_sched_t;
typedef struct tk_gt tk_gt_t;
typedef void (*tk_gt_fn)(void *arg);

typedef struct {
    size_t stack_size;    /* bytes per stack incl. nothing for the guard; default 64 KiB */
    unsigned max_threads; /* live green threads at most; 0 = unlimited */
    unsigned pool_max;    /* freed stacks kept for reuse; default 1024 */
    unsigned long long long_run_ns; /* "ran too long without yielding"; default 50 ms */
    int stack_paint;                /* measure stack use (tk_coro_pool_set_paint); default off */
} tk_sched_opts_t;

/* Accepted ranges, checked by tk_sched_opts_check() and the configuration. */
#define TK_SCHED_STACK_MIN       (16u * 1024u)
#define TK_SCHED_STACK_MAX       (8u * 1024u * 1024u)
#define TK_SCHED_LONG_RUN_MIN_NS 1000000ull     /* 1 ms */
#define TK_SCHED_LONG_RUN_MAX_NS 60000000000ull /* 60 s */
#define TK_SCHED_THREADS_MAX     1000000u

void tk_sched_opts_default(tk_sched_opts_t *o);
/* 0 if valid; else -1 and a message naming the setting and its range. */
int tk_sched_opts_check(const tk_sched_opts_t *o, char *err, size_t errlen);

/* Create the scheduler for this thread on base; installs the guard-page
 * SIGSEGV handler (on an alternate signal stack) once per process. The
 * handler reports the thread's id, name, stack size and note (see
 * tk_gt_set_note()) before the process dies. */
tk_sched_t *tk_sched_new(struct event_base *base, const tk_sched_opts_t *opts);
/* Cancels every live green thread, runs their defers, frees all stacks. */
void tk_sched_free(tk_sched_t *s);
tk_sched_t *tk_sched_current(void);
struct event_base *tk_sched_base(tk_sched_t *s);

/* Run until no green thread is live or tk_sched_stop() is called; drives the
 * event loop. Returns 0, -1 on a loop error, or -1 with errno EDEADLK when
 * threads are live but nothing (no event, no timer) can ever wake them.
 *
 * tk_sched_run() is optional: the scheduler only uses libevent events (an
 * activated event for newly runnable threads, each thread's own event for fd
 * readiness and deadlines, a zero timeout after tk_gt_yield()), so a worker
 * that runs event_base_dispatch()/event_base_loop() itself needs no other
 * call. Threads spawned or woken from a libevent callback run in the same loop
 * iteration (after that callback returns), before the next epoll_wait. */
int tk_sched_run(tk_sched_t *s);
void tk_sched_stop(tk_sched_t *s);
/* Copy the counters. stack_resident is the sum of each stack's last mincore()
 * measurement; each call re-measures up to 512 stacks round-robin, so it stays
 * cheap (a full scan of 10,000 stacks can take tens of ms) and is exact while
 * there are at most 512 stacks. tk_sched_stats_exact() re-measures them all. */
void tk_sched_stats(tk_sched_t *s, tk_sched_stats_t *out);
void tk_sched_stats_exact(tk_sched_t *s, tk_sched_stats_t *out);
unsigned tk_sched_live(tk_sched_t *s);

/* Iterate live green threads (for /debug/threads); cb may not yield. */
typedef void (*tk_gt_visit_fn)(tk_gt_t *gt, void *arg);
void tk_sched_foreach(tk_sched_t *s, tk_gt_visit_fn cb, void *arg);

/* Monotonic clock: tk_now_ns() always reads it. tk_now_recent_ns() returns
 * the last reading without a clock read: the scheduler reads the clock before
 * and after every green-thread slice, so inside a thread it is at most that
 * slice old (outside one, in a libevent callback, it may be much older). */
extern uint64_t tk_now_last_ns;
uint64_t tk_now_ns(void);
static inline int64_t tk_now_ms(void)
{
    return (int64_t)(tk_now_ns() / 1000000u);
}
static inline uint64_t tk_now_recent_ns(void)
{
    return tk_now_last_ns;
}

/* --- green threads ------------------------------------------------------------ */

/* Create a runnable green thread; it first runs on a later scheduler turn.
 * The handle stays valid until the thread ends (detached) or is joined; use a
 * tk_gt_defer() to forget it. The tk_gt_t lives in its stack's top page, so a
 * spawn with a pooled stack allocates nothing.
 * Returns NULL (errno EAGAIN) at max_threads, or ENOMEM. Callable from inside
 * or outside a green thread. name is copied (truncated to 31 bytes). */
tk_gt_t *tk_gt_spawn(tk_sched_t *s, const char *name, tk_gt_fn fn, void *arg);
/* Run every runnable thread now, from a libevent callback of the loop that
 * owns s (never from a green thread). A read callback that spawns a thread
 * and runs it at once lets it reuse the stack the previous one just gave
 * back, still in cache, instead of a burst of callbacks each taking a cold
 * stack before any of them runs. */
void tk_sched_run_ready(tk_sched_t *s);
/* Let the others run; the caller is requeued at the tail. May yield. */
void tk_gt_yield(void);
/* The calling green thread, NULL outside one. */
tk_gt_t *tk_gt_self(void);
uint64_t tk_gt_id(const tk_gt_t *gt);
const char *tk_gt_name(const tk_gt_t *gt);
void tk_gt_set_name(tk_gt_t *gt, const char *name);
tk_gt_state_t tk_gt_state(const tk_gt_t *gt);
/* tk_now_ns() when it was first scheduled; 0 before its first run. */
uint64_t tk_gt_started_ns(const tk_gt_t *gt);
/* What the thread is doing, for the stack-overflow report: who and what
 * (text, not NUL-terminated) are joined with a space and copied, truncated to
 * TK_GT_NOTE_MAX - 1 bytes, into a buffer in the thread's own struct, because
 * a signal handler can follow no pointer it cannot trust. Two empty parts clear
 * it. Called per request: two copies, no loop, no strlen. */
#define TK_GT_NOTE_MAX 160
void tk_gt_set_note(tk_gt_t *gt, const char *who, size_t wholen, const char *what, size_t whatlen);
/* Opaque per-thread user pointer (e.g. the request being served). */
void tk_gt_set_data(tk_gt_t *gt, void *data);
void *tk_gt_data(const tk_gt_t *gt);
/* Two words a client library keeps per request (the database's routing state):
 * zeroed by every tk_gt_set_data(), i.e. when a request starts and ends.
 * NULL for gt NULL. */
uint64_t *tk_gt_req_words(tk_gt_t *gt);

/* End the calling green thread now (defers run). Does not return. */
void tk_gt_exit(void) __attribute__((noreturn));
/* Wait for gt to end. A joined thread must not be detached. May yield.
 * A thread that nobody joins is freed when it ends (detached by default);
 * call tk_gt_joinable() right after spawn to keep it for tk_gt_join(). */
void tk_gt_joinable(tk_gt_t *gt);
int tk_gt_join(tk_gt_t *gt);

/* Cleanup that runs (LIFO) when the green thread ends, normally or cancelled. */
int tk_gt_defer(void (*fn)(void *), void *arg);

/* Ask gt to stop: if parked it wakes at once with ECANCELED; every later
 * parking call returns ECANCELED immediately. The thread unwinds itself. */
void tk_gt_cancel(tk_gt_t *gt);
int tk_gt_cancelled(const tk_gt_t *gt);

/* --- parking ---------------------------------------------------------------------- */

/* Park until fd is ready for events (EV_READ and/or EV_WRITE from libevent)
 * or the absolute deadline (tk_now_ms() based; <0 = none) passes. why is the
 * state to account the wait under (TK_GT_WAIT_NET/DB/CACHE). May yield.
 * EV_ET in events waits edge-triggered (needed when the fd has other
 * edge-triggered events: libevent cannot mix the two on one fd).
 * Returns 0 when ready, -1 with errno ETIMEDOUT or ECANCELED. */
int tk_gt_wait_fd(int fd, short events, tk_gt_state_t why, int64_t deadline_ms);
/* Sleep; returns 0, or -1 with ECANCELED. May yield. */
int tk_gt_sleep_ms(int64_t ms);

/* Generic park/unpark for building new waits (the broker, the Redis client):
 * tk_gt_park() parks the caller in state why until tk_gt_unpark() or the
 * deadline. Returns 0 when unparked, -1 with ETIMEDOUT or ECANCELED. May yield.
 * tk_gt_unpark() on a thread that is not parked is a no-op returning -1; it
 * only wakes threads parked in tk_gt_park() (not fd waits, sleeps or wait
 * queues, which have their own wake-ups). Same scheduler thread only: from
 * another OS thread, signal an fd the parked thread's scheduler watches. */
int tk_gt_park(tk_gt_state_t why, int64_t deadline_ms);
int tk_gt_unpark(tk_gt_t *gt);

/* Mutexes, semaphores, conditions and channels between green threads: waitq.h. */

#endif
