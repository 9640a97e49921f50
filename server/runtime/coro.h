/* coro.h: coroutines: pooled mmap'd stacks with a guard zone, and the context switch.
 *
 * A coroutine is one stack mapping laid out, from low to high addresses, as
 *   [guard zone, PROT_NONE][stack grows down ......][tk_coro_t][udata]
 * so the coroutine's own header and the caller's per-coroutine struct (udata,
 * e.g. the scheduler's green thread) live in the stack's top page and spawning
 * costs no malloc. Freed stacks go back to a per-worker pool (no munmap/mmap
 * on the hot path). The switch saves only callee-saved registers (assembly on
 * x86-64 and aarch64, ucontext elsewhere) and never allocates.
 *
 * Not thread-safe: a pool and its coroutines belong to one thread. */
#ifndef TK_CORO_H
#define TK_CORO_H

#include <stddef.h>

typedef struct tk_coro tk_coro_t;
typedef struct tk_coro_pool tk_coro_pool_t;
typedef void (*tk_coro_fn)(void *arg);

#define TK_CORO_STACK_DEFAULT (64u * 1024u)
/* PROT_NONE bytes below every stack. Larger than one page because GCC does not
 * probe big frames by default (no -fstack-clash-protection): a frame with a
 * multi-KiB buffer could otherwise jump over a single guard page. Costs only
 * address space. */
#define TK_CORO_GUARD (64u * 1024u)

/* A pool of stacks of stack_size bytes (rounded up to pages; the guard zone
 * comes on top), each with udata_size bytes reserved for the caller at the
 * top. Up to pool_max freed stacks are kept mapped for reuse. NULL + errno. */
tk_coro_pool_t *tk_coro_pool_new(size_t stack_size, size_t udata_size, unsigned pool_max);
/* Unmaps every pooled stack. All coroutines must have been freed. */
void tk_coro_pool_free(tk_coro_pool_t *p);
size_t tk_coro_pool_stack_size(const tk_coro_pool_t *p);
/* Stacks idle in the pool. */
unsigned tk_coro_pool_idle(const tk_coro_pool_t *p);
/* Stacks mapped right now (in use + idle). */
unsigned long tk_coro_pool_mapped(const tk_coro_pool_t *p);
/* Bytes of address space of one stack mapping, guard included. */
size_t tk_coro_pool_map_size(const tk_coro_pool_t *p);
/* Resident bytes (mincore) of the idle stacks. */
size_t tk_coro_pool_resident(const tk_coro_pool_t *p);
/* Resident bytes of every mapped stack (in use or idle) as last measured,
 * after re-measuring up to budget stacks round-robin (0 = all: exact). A
 * stack costs one mincore() call. */
size_t tk_coro_pool_resident_refresh(tk_coro_pool_t *p, unsigned long budget);
/* Total stacks ever mmap'd / munmap'd (to verify that reuse happens). */
unsigned long tk_coro_pool_mmaps(const tk_coro_pool_t *p);
unsigned long tk_coro_pool_munmaps(const tk_coro_pool_t *p);

/* A coroutine that starts in fn(arg) at its first switch-in. fn must never
 * return: it ends by switching away with tk_coro_switch_final(). Takes a
 * pooled stack when there is one. NULL + errno (ENOMEM). */
tk_coro_t *tk_coro_new(tk_coro_pool_t *p, tk_coro_fn fn, void *arg);
/* Gives the stack back to its pool (or unmaps it when the pool is full).
 * The coroutine must not be running. */
void tk_coro_free(tk_coro_t *c);
/* The caller's udata_size bytes in the stack's top page (16-byte aligned). */
void *tk_coro_udata(tk_coro_t *c);
/* The coroutine whose udata is u. */
tk_coro_t *tk_coro_from_udata(void *u);

/* A context for the calling thread's own stack (what the scheduler switches
 * back to). NULL + errno. */
tk_coro_t *tk_coro_main_new(void);
void tk_coro_main_free(tk_coro_t *c);

/* Save the current context in from and resume to. Returns when someone
 * switches back to from. */
void tk_coro_switch(tk_coro_t *from, tk_coro_t *to);
/* Like tk_coro_switch, for a coroutine that will never be resumed (it is
 * ending): lets ASan release its fake stack. Does not return. */
void tk_coro_switch_final(tk_coro_t *from, tk_coro_t *to) __attribute__((noreturn));

/* Stack painting, to measure how deep coroutines go: with it on, every stack
 * is filled with a pattern when it is mapped and the part a coroutine used is
 * filled again when its stack goes back to the pool. Costs the whole stack
 * resident from its first use and a scan plus a repaint per coroutine, so it
 * is off by default (runtime.stack_paint). Set it before the first
 * tk_coro_new(). */
void tk_coro_pool_set_paint(tk_coro_pool_t *p, int on);
/* Deepest stack use of c since it took its stack, in bytes from the top of
 * the stack (its first frame included); 0 when the pool does not paint. A
 * frame that reserves more than it writes is seen only as deep as it wrote. */
size_t tk_coro_stack_used(const tk_coro_t *c);

/* Usable stack bytes (without the guard zone). */
size_t tk_coro_stack_size(const tk_coro_t *c);
/* Resident bytes of this coroutine's stack mapping (mincore). */
size_t tk_coro_resident(const tk_coro_t *c);
/* 1 if addr lies in the guard zone below c's stack (async-signal-safe). */
int tk_coro_guard_hit(const tk_coro_t *c, const void *addr);

#endif
