/* coro.c: coroutine stacks (mmap + guard zone, pooled) and the context switch glue. */
#include "config.h"

#include "runtime/coro.h"

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifdef TK_CORO_UCONTEXT
#include <ucontext.h>
#endif
#ifdef TK_SANITIZERS
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(TK_CORO_X86_64) && !defined(TK_CORO_AARCH64) && !defined(TK_CORO_UCONTEXT)
#error "configure must define one of TK_CORO_X86_64, TK_CORO_AARCH64, TK_CORO_UCONTEXT"
#endif

struct tk_coro {
    void *sp;                 /* saved stack pointer while switched out (tk_coro_ctx_swap) */
    tk_coro_pool_t *pool;     /* NULL for a thread's main context */
    tk_coro_t *next;          /* free list link while pooled */
    tk_coro_t *mnext, *mprev; /* every mapped stack of the pool, for residency scans */
    size_t resident;          /* bytes resident at its last scan */
    char *map;                /* start of the mapping (the guard zone) */
    tk_coro_fn fn;
    void *arg;
#ifdef TK_CORO_UCONTEXT
    ucontext_t uc;
#endif
#ifdef TK_SANITIZERS
    void *asan_fake;         /* ASan's fake stack while switched out */
    const void *asan_bottom; /* stack bounds told to ASan at switch-in */
    size_t asan_size;
#endif
};

struct tk_coro_pool {
    size_t stack_size; /* usable bytes, page multiple */
    size_t map_size;   /* guard + stack */
    size_t udata_size; /* rounded to 16 */
    unsigned pool_max;
    unsigned idle;
    tk_coro_t *free;     /* LIFO: the most recently used stack is the warmest */
    tk_coro_t *all;      /* every mapped stack, in use or idle */
    tk_coro_t *cursor;   /* where the next residency refresh starts */
    size_t resident_sum; /* sum of the stacks' last measured residency */
    int paint;           /* fill stacks with PAINT to measure their use */
    unsigned long mapped, mmaps, munmaps;
};

#define ALIGN16(n) (((n) + 15u) & ~(size_t)15u)

/* What an untouched word of a painted stack holds ("tkSTACK!" little-endian). */
#define PAINT 0x214b434154536b74ull

#if defined(TK_CORO_X86_64) || defined(TK_CORO_AARCH64)
/* In coro_<arch>.S: save callee-saved registers on the current stack, store sp
 * in *save, load sp from load, restore and return into the other context. */
void tk_coro_ctx_swap(void **save, void *load);
/* In coro_<arch>.S: first code a new coroutine runs; calls tk_coro_start_(c). */
void tk_coro_trampoline(void);
#endif
void tk_coro_start_(tk_coro_t *c) __attribute__((noreturn));

static size_t page_size(void)
{
    static size_t ps;
    if (ps == 0)
        ps = (size_t)sysconf(_SC_PAGESIZE);
    return ps;
}

tk_coro_pool_t *tk_coro_pool_new(size_t stack_size, size_t udata_size, unsigned pool_max)
{
    size_t ps = page_size();
    tk_coro_pool_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    if (stack_size == 0)
        stack_size = TK_CORO_STACK_DEFAULT;
    p->stack_size = (stack_size + ps - 1) & ~(ps - 1);
    p->map_size = TK_CORO_GUARD + p->stack_size;
    p->udata_size = ALIGN16(udata_size);
    p->pool_max = pool_max;
    /* header + udata + a minimal first frame must fit well inside the stack */
    if (p->udata_size + ALIGN16(sizeof(tk_coro_t)) + 1024 > p->stack_size) {
        free(p);
        errno = EINVAL;
        return NULL;
    }
    return p;
}

static void stack_unmap(tk_coro_pool_t *p, tk_coro_t *c)
{
    if (p->cursor == c)
        p->cursor = c->mnext;
    p->resident_sum -= c->resident;
    if (c->mprev)
        c->mprev->mnext = c->mnext;
    else
        p->all = c->mnext;
    if (c->mnext)
        c->mnext->mprev = c->mprev;
    munmap(c->map, p->map_size);
    p->mapped--;
    p->munmaps++;
}

void tk_coro_pool_free(tk_coro_pool_t *p)
{
    if (p == NULL)
        return;
    while (p->free) {
        tk_coro_t *c = p->free;
        p->free = c->next;
        stack_unmap(p, c);
    }
    assert(p->mapped == 0);
    free(p);
}

size_t tk_coro_pool_stack_size(const tk_coro_pool_t *p)
{
    return p->stack_size;
}
unsigned tk_coro_pool_idle(const tk_coro_pool_t *p)
{
    return p->idle;
}
unsigned long tk_coro_pool_mapped(const tk_coro_pool_t *p)
{
    return p->mapped;
}
size_t tk_coro_pool_map_size(const tk_coro_pool_t *p)
{
    return p->map_size;
}
unsigned long tk_coro_pool_mmaps(const tk_coro_pool_t *p)
{
    return p->mmaps;
}
unsigned long tk_coro_pool_munmaps(const tk_coro_pool_t *p)
{
    return p->munmaps;
}

/* Resident bytes in [start, start + len), both page aligned, all mapped.
 * vec holds vlen entries (one per page) for each mincore() call. */
static size_t range_resident(char *start, size_t len, unsigned char *vec, size_t vlen)
{
    size_t ps = page_size();
    size_t res = 0;

    for (size_t off = 0; off < len;) {
        size_t chunk = len - off;
        if (chunk > vlen * ps)
            chunk = vlen * ps;
        if (mincore(start + off, chunk, vec) == 0) {
            for (size_t i = 0; i < chunk / ps; i++)
                res += (vec[i] & 1) ? ps : 0;
        }
        off += chunk;
    }
    return res;
}

/* Resident bytes of one mapping's stack part (the guard is never resident). */
static size_t map_resident(char *map, size_t map_size)
{
    unsigned char vec[64];
    return range_resident(map + TK_CORO_GUARD, map_size - TK_CORO_GUARD, vec, sizeof(vec));
}

/* mincore() walks the page tables of every page it is asked about; with
 * 10,000 stacks a full scan takes tens of milliseconds on a busy machine, too
 * long to stall a worker's loop. So each stack remembers its last measured
 * residency, the pool keeps their sum, and a refresh re-measures at most
 * budget stacks, round-robin, from where the previous one stopped. */
size_t tk_coro_pool_resident_refresh(tk_coro_pool_t *p, unsigned long budget)
{
    if (budget == 0 || budget > p->mapped)
        budget = p->mapped;
    for (unsigned long i = 0; i < budget; i++) {
        tk_coro_t *c = p->cursor ? p->cursor : p->all;
        size_t r = map_resident(c->map, p->map_size);
        p->resident_sum = p->resident_sum - c->resident + r;
        c->resident = r;
        p->cursor = c->mnext;
    }
    return p->resident_sum;
}

size_t tk_coro_pool_resident(const tk_coro_pool_t *p)
{
    size_t res = 0;
    for (const tk_coro_t *c = p->free; c; c = c->next)
        res += map_resident(c->map, p->map_size);
    return res;
}

/* The first frame starts just below the header, 16-byte aligned. */
static inline uintptr_t stack_top(const tk_coro_t *c)
{
    return (uintptr_t)c & ~(uintptr_t)15;
}

static void paint_range(uint64_t *lo, uint64_t *hi)
{
    while (lo < hi)
        *lo++ = PAINT;
}

/* The lowest word of c's stack that no longer holds the paint (the top if
 * none). Not instrumented: ASan may still hold dead frames' redzones
 * poisoned here. */
__attribute__((no_sanitize_address)) static uint64_t *lowest_used(const tk_coro_t *c)
{
    const volatile uint64_t *w = (const uint64_t *)(c->map + TK_CORO_GUARD);
    const uint64_t *top = (const uint64_t *)stack_top(c);
    while (w < top && *w == PAINT)
        w++;
    return (uint64_t *)(uintptr_t)w;
}

void tk_coro_pool_set_paint(tk_coro_pool_t *p, int on)
{
    p->paint = on != 0;
}

size_t tk_coro_stack_used(const tk_coro_t *c)
{
    if (c->pool == NULL || !c->pool->paint)
        return 0;
    return (size_t)(stack_top(c) - (uintptr_t)lowest_used(c));
}

/* Map a fresh stack: guard zone PROT_NONE, the rest read/write. MAP_NORESERVE
 * so an untouched page costs neither memory nor commit charge. */
static tk_coro_t *stack_map(tk_coro_pool_t *p)
{
    char *map = mmap(NULL, p->map_size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) {
        errno = ENOMEM;
        return NULL;
    }
    if (mprotect(map, TK_CORO_GUARD, PROT_NONE) != 0) {
        munmap(map, p->map_size);
        errno = ENOMEM;
        return NULL;
    }
    char *top = map + p->map_size;
    tk_coro_t *c = (tk_coro_t *)(top - p->udata_size - ALIGN16(sizeof(tk_coro_t)));
    c->map = map;
    c->pool = p;
    c->resident = page_size(); /* until scanned: the header page, written right away */
    p->resident_sum += c->resident;
    c->mprev = NULL;
    c->mnext = p->all;
    if (p->all)
        p->all->mprev = c;
    p->all = c;
    p->mapped++;
    p->mmaps++;
    if (p->paint)
        paint_range((uint64_t *)(map + TK_CORO_GUARD), (uint64_t *)stack_top(c));
    return c;
}

#ifdef TK_CORO_UCONTEXT
static __thread tk_coro_t *t_starting;
static void uc_entry(void)
{
    tk_coro_start_(t_starting);
}

/* Separate function: getcontext() returns twice, which would let the compiler
 * clobber the caller's locals. */
static __attribute__((noinline)) void uc_prepare(tk_coro_t *c, uintptr_t sp0)
{
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = c->map + TK_CORO_GUARD;
    c->uc.uc_stack.ss_size = (size_t)(sp0 - (uintptr_t)(c->map + TK_CORO_GUARD));
    c->uc.uc_link = NULL;
    makecontext(&c->uc, uc_entry, 0);
}
#endif

tk_coro_t *tk_coro_new(tk_coro_pool_t *p, tk_coro_fn fn, void *arg)
{
    tk_coro_t *c = p->free;
    if (c != NULL) {
        p->free = c->next;
        p->idle--;
    } else if ((c = stack_map(p)) == NULL) {
        return NULL;
    }
    c->next = NULL;
    c->fn = fn;
    c->arg = arg;
    uintptr_t sp0 = stack_top(c);

#if defined(TK_CORO_X86_64)
    /* Mirror of what tk_coro_ctx_swap pops, lowest address first. */
    uint64_t *sp = (uint64_t *)sp0;
    *--sp = 0;                                   /* fake return address: ends backtraces */
    *--sp = (uint64_t)tk_coro_trampoline;        /* ret target */
    *--sp = 0;                                   /* rbp */
    *--sp = 0;                                   /* rbx */
    *--sp = (uint64_t)(uintptr_t)c;              /* r12: argument for tk_coro_start_ */
    *--sp = (uint64_t)(uintptr_t)tk_coro_start_; /* r13: function the trampoline calls */
    *--sp = 0;                                   /* r14 */
    *--sp = 0;                                   /* r15 */
    *--sp = 0x1F80ull | (0x037Full << 32);       /* MXCSR default, x87 control word default */
    c->sp = sp;
#elif defined(TK_CORO_AARCH64)
    /* 160-byte frame: x19..x30 then d8..d15, as tk_coro_ctx_swap lays it out. */
    uint64_t *sp = (uint64_t *)(sp0 - 160);
    memset(sp, 0, 160);
    sp[0] = (uint64_t)(uintptr_t)c;                   /* x19: argument for tk_coro_start_ */
    sp[1] = (uint64_t)(uintptr_t)tk_coro_start_;      /* x20: function the trampoline calls */
    sp[10] = 0;                                       /* x29: frame pointer, ends backtraces */
    sp[11] = (uint64_t)(uintptr_t)tk_coro_trampoline; /* x30: ret target */
    c->sp = sp;
#else
    uc_prepare(c, sp0);
#endif
#ifdef TK_SANITIZERS
    c->asan_fake = NULL;
    c->asan_bottom = c->map + TK_CORO_GUARD;
    c->asan_size = (size_t)(sp0 - (uintptr_t)(c->map + TK_CORO_GUARD));
#endif
    return c;
}

void tk_coro_free(tk_coro_t *c)
{
    tk_coro_pool_t *p = c->pool;
    assert(p != NULL);
#ifdef TK_SANITIZERS
    /* The dead coroutine's frames left redzones poisoned; the next user of
     * this stack must start clean or ASan reports phantom overflows. */
    ASAN_UNPOISON_MEMORY_REGION(c->map + TK_CORO_GUARD,
                                (size_t)((char *)c - c->map) - TK_CORO_GUARD);
#endif
    if (p->paint)
        paint_range(lowest_used(c), (uint64_t *)stack_top(c));
    if (p->idle < p->pool_max) {
        c->next = p->free;
        p->free = c;
        p->idle++;
    } else {
        stack_unmap(p, c);
    }
}

void *tk_coro_udata(tk_coro_t *c)
{
    return (char *)c + ALIGN16(sizeof(tk_coro_t));
}
tk_coro_t *tk_coro_from_udata(void *u)
{
    return (tk_coro_t *)((char *)u - ALIGN16(sizeof(tk_coro_t)));
}

tk_coro_t *tk_coro_main_new(void)
{
    tk_coro_t *c = calloc(1, sizeof(*c));
    return c;
}

void tk_coro_main_free(tk_coro_t *c)
{
    free(c);
}

size_t tk_coro_stack_size(const tk_coro_t *c)
{
    return c->pool ? c->pool->stack_size : 0;
}

size_t tk_coro_resident(const tk_coro_t *c)
{
    return c->pool ? map_resident(c->map, c->pool->map_size) : 0;
}

int tk_coro_guard_hit(const tk_coro_t *c, const void *addr)
{
    if (c == NULL || c->pool == NULL)
        return 0;
    uintptr_t a = (uintptr_t)addr, lo = (uintptr_t)c->map;
    return a >= lo && a < lo + TK_CORO_GUARD;
}

/* --- switching ------------------------------------------------------------------ */

#ifdef TK_SANITIZERS
/* The context we are switching away from; its stack bounds are what ASan
 * reports at the next finish_switch_fiber (needed for main contexts, whose
 * bounds we don't know until then). */
static __thread tk_coro_t *t_from;

static void asan_arrived(void *fake)
{
    const void *bottom = NULL;
    size_t size = 0;
    __sanitizer_finish_switch_fiber(fake, &bottom, &size);
    if (t_from && t_from->pool == NULL) {
        t_from->asan_bottom = bottom;
        t_from->asan_size = size;
    }
}
#endif

static inline void ctx_swap(tk_coro_t *from, tk_coro_t *to)
{
#if defined(TK_CORO_X86_64) || defined(TK_CORO_AARCH64)
    tk_coro_ctx_swap(&from->sp, to->sp);
#else
    t_starting = to; /* read by uc_entry only at a coroutine's first run */
    swapcontext(&from->uc, &to->uc);
#endif
}

void tk_coro_switch(tk_coro_t *from, tk_coro_t *to)
{
    assert(from != to);
#ifdef TK_SANITIZERS
    t_from = from;
    __sanitizer_start_switch_fiber(&from->asan_fake, to->asan_bottom, to->asan_size);
#endif
    ctx_swap(from, to);
#ifdef TK_SANITIZERS
    asan_arrived(from->asan_fake);
#endif
}

void tk_coro_switch_final(tk_coro_t *from, tk_coro_t *to)
{
#ifdef TK_SANITIZERS
    t_from = from;
    /* NULL: this stack is done, ASan may drop its fake frames */
    __sanitizer_start_switch_fiber(NULL, to->asan_bottom, to->asan_size);
#endif
    ctx_swap(from, to);
    abort(); /* nobody resumes a finished coroutine */
}

/* Called (via the trampoline) on the coroutine's own stack at its first run. */
void tk_coro_start_(tk_coro_t *c)
{
#ifdef TK_SANITIZERS
    asan_arrived(NULL);
#endif
    c->fn(c->arg);
    abort(); /* fn must end with tk_coro_switch_final() */
}
