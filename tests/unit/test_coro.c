/* test_coro.c: unit tests for coroutine stacks and the context switch (server/runtime/coro.c). */
#include "config.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "runtime/coro.h"

static tk_coro_t *g_main, *g_co;
static int g_steps[16], g_nsteps;

static void pingpong_fn(void *arg)
{
    intptr_t base = (intptr_t)arg;
    for (int i = 0; i < 3; i++) {
        g_steps[g_nsteps++] = (int)(base + i);
        tk_coro_switch(g_co, g_main);
    }
    tk_coro_switch_final(g_co, g_main);
}

static void test_switch_pingpong(void **state)
{
    tk_coro_pool_t *p = tk_coro_pool_new(0, 64, 4);
    assert_non_null(p);
    g_main = tk_coro_main_new();
    g_nsteps = 0;
    g_co = tk_coro_new(p, pingpong_fn, (void *)100);
    assert_non_null(g_co);
    for (int i = 0; i < 4; i++) {
        g_steps[g_nsteps++] = i;
        tk_coro_switch(g_main, g_co);
    }
    int want[] = {0, 100, 1, 101, 2, 102, 3};
    assert_int_equal(g_nsteps, 7);
    assert_memory_equal(g_steps, want, sizeof(want));
    tk_coro_free(g_co);
    assert_int_equal(tk_coro_pool_idle(p), 1);
    tk_coro_main_free(g_main);
    tk_coro_pool_free(p);
}

/* Callee-saved registers survive a round trip: locals that live across the
 * switch in registers keep their values (compiled with optimisation, the
 * accumulators below sit in rbx/r12-r15 or x19-x28). */
static void clobber_fn(void *arg)
{
    volatile uint64_t sink = 0;
    for (;;) {
        uint64_t a = 0xdeadbeef, b = 0x12345678, c = 0x9abcdef0, d = 0x0f0f0f0f, e = 77;
        for (int i = 0; i < 100; i++) {
            a = a * 31 + i;
            b ^= a;
            c += b;
            d -= c;
            e *= 3;
        }
        sink = a + b + c + d + e;
        tk_coro_switch(g_co, g_main);
    }
    (void)sink;
}

static void test_callee_saved(void **state)
{
    tk_coro_pool_t *p = tk_coro_pool_new(0, 0, 4);
    g_main = tk_coro_main_new();
    g_co = tk_coro_new(p, clobber_fn, NULL);
    uint64_t x = 1, y = 2, z = 3, w = 4, v = 5;
    for (int i = 0; i < 50; i++) {
        x = x * 7 + (uint64_t)i;
        y += x;
        z ^= y;
        w = w * 3 + z;
        v += w;
        tk_coro_switch(g_main, g_co);
    }
    /* recompute without switching */
    uint64_t x2 = 1, y2 = 2, z2 = 3, w2 = 4, v2 = 5;
    for (int i = 0; i < 50; i++) {
        x2 = x2 * 7 + (uint64_t)i;
        y2 += x2;
        z2 ^= y2;
        w2 = w2 * 3 + z2;
        v2 += w2;
    }
    assert_true(x == x2 && y == y2 && z == z2 && w == w2 && v == v2);
    tk_coro_free(g_co); /* a suspended coroutine may be dropped */
    tk_coro_main_free(g_main);
    tk_coro_pool_free(p);
}

/* Each context keeps its own SSE control/status word (rounding mode bits in
 * MXCSR) and x87 control word. x86-64 only: aarch64 does not switch FPCR. */
#ifdef TK_CORO_X86_64
#define MXCSR_RC_UP   0x4000u /* round toward +inf */
#define MXCSR_RC_DOWN 0x2000u /* round toward -inf */
#define MXCSR_RC_MASK 0x6000u
static unsigned g_co_mxcsr;

static void set_rc(unsigned rc)
{
    __builtin_ia32_ldmxcsr((__builtin_ia32_stmxcsr() & ~MXCSR_RC_MASK) | rc);
}
static unsigned get_rc(void)
{
    return __builtin_ia32_stmxcsr() & MXCSR_RC_MASK;
}

static void fpu_fn(void *arg)
{
    set_rc(MXCSR_RC_UP);
    tk_coro_switch(g_co, g_main);
    g_co_mxcsr = get_rc();
    tk_coro_switch_final(g_co, g_main);
}
#endif

static void test_fpu_control(void **state)
{
#ifdef TK_CORO_X86_64
    tk_coro_pool_t *p = tk_coro_pool_new(0, 0, 4);
    g_main = tk_coro_main_new();
    g_co = tk_coro_new(p, fpu_fn, NULL);
    set_rc(0);
    tk_coro_switch(g_main, g_co);
    assert_int_equal(get_rc(), 0); /* the coroutine's mode did not leak out */
    set_rc(MXCSR_RC_DOWN);
    tk_coro_switch(g_main, g_co);
    assert_int_equal(g_co_mxcsr, MXCSR_RC_UP); /* nor ours in */
    assert_int_equal(get_rc(), MXCSR_RC_DOWN);
    set_rc(0);
    tk_coro_free(g_co);
    tk_coro_main_free(g_main);
    tk_coro_pool_free(p);
#else
    skip();
#endif
}

/* Freed stacks are reused: no mmap after the first, until the pool is full. */
static void final_fn(void *arg)
{
    tk_coro_switch_final(g_co, g_main);
}

static void test_pool_reuse(void **state)
{
    tk_coro_pool_t *p = tk_coro_pool_new(32 * 1024, 128, 2);
    g_main = tk_coro_main_new();
    for (int i = 0; i < 1000; i++) {
        g_co = tk_coro_new(p, final_fn, NULL);
        tk_coro_switch(g_main, g_co);
        tk_coro_free(g_co);
    }
    assert_int_equal(tk_coro_pool_mmaps(p), 1);
    assert_int_equal(tk_coro_pool_idle(p), 1);
    /* beyond pool_max, freed stacks are unmapped */
    tk_coro_t *c[4];
    for (int i = 0; i < 4; i++)
        c[i] = tk_coro_new(p, final_fn, NULL);
    assert_int_equal(tk_coro_pool_mapped(p), 4);
    for (int i = 0; i < 4; i++)
        tk_coro_free(c[i]);
    assert_int_equal(tk_coro_pool_idle(p), 2);
    assert_int_equal(tk_coro_pool_mapped(p), 2);
    assert_int_equal(tk_coro_pool_munmaps(p), 2);
    tk_coro_main_free(g_main);
    tk_coro_pool_free(p);
}

/* Layout: udata is in the stack's top page, the guard zone sits below the
 * stack, untouched stack pages are not resident. */
static void touch_fn(void *arg)
{
    volatile char buf[5000];
    for (size_t i = 0; i < sizeof(buf); i += 64) /* volatile: every store happens */
        buf[i] = 1;
    tk_coro_switch(g_co, g_main);
    tk_coro_switch_final(g_co, g_main);
}

static void test_layout_and_resident(void **state)
{
    long ps = sysconf(_SC_PAGESIZE);
    tk_coro_pool_t *p = tk_coro_pool_new(256 * 1024, 200, 4);
    assert_int_equal(tk_coro_pool_stack_size(p), 256 * 1024);
    assert_int_equal(tk_coro_pool_map_size(p), 256 * 1024 + TK_CORO_GUARD);
    g_main = tk_coro_main_new();
    g_co = tk_coro_new(p, touch_fn, NULL);
    char *u = tk_coro_udata(g_co);
    assert_ptr_equal(tk_coro_from_udata(u), g_co);
    assert_int_equal((uintptr_t)u % 16, 0);
    memset(u, 0xab, 200); /* the whole udata area is writable */
    /* only the header page is resident before the first run */
    assert_int_equal(tk_coro_resident(g_co), (size_t)ps);
    tk_coro_switch(g_main, g_co);
    size_t res = tk_coro_resident(g_co);
    assert_true(res >= 2 * (size_t)ps && res <= 4 * (size_t)ps);
    /* the guard zone is right below the lowest stack byte */
    char *lowest = u - (256 * 1024 - 4096); /* somewhere inside the stack */
    assert_false(tk_coro_guard_hit(g_co, lowest));
    assert_false(tk_coro_guard_hit(g_co, u));
    assert_false(tk_coro_guard_hit(NULL, u));
    tk_coro_switch(g_main, g_co);
    tk_coro_free(g_co);
    assert_int_equal(tk_coro_pool_resident(p), res); /* pooled stacks stay warm */
    tk_coro_main_free(g_main);
    tk_coro_pool_free(p);
}

/* Painted stacks: the high-water mark covers the deepest frame (a 20,000-byte
 * buffer and the call below it), and a stack that goes back to the pool is
 * repainted, so the next user's measure starts from zero. */
static void deep_fn(void *arg)
{
    volatile char buf[20000];
    for (size_t i = 0; i < sizeof(buf); i += 64)
        buf[i] = 1;
    tk_coro_switch_final(g_co, g_main);
}

static void shallow_fn(void *arg)
{
    volatile char buf[1000];
    for (size_t i = 0; i < sizeof(buf); i += 64)
        buf[i] = 1;
    tk_coro_switch_final(g_co, g_main);
}

static void test_stack_paint(void **state)
{
    tk_coro_pool_t *p = tk_coro_pool_new(64 * 1024, 64, 4);
    g_main = tk_coro_main_new();
    g_co = tk_coro_new(p, deep_fn, NULL);
    assert_int_equal(tk_coro_stack_used(g_co), 0); /* not painting */
    tk_coro_free(g_co);
    tk_coro_pool_free(p);

    p = tk_coro_pool_new(64 * 1024, 64, 4);
    tk_coro_pool_set_paint(p, 1);
    g_co = tk_coro_new(p, deep_fn, NULL);
    assert_true(tk_coro_stack_used(g_co) < 256); /* the prepared first frame */
    tk_coro_switch(g_main, g_co);
    size_t deep = tk_coro_stack_used(g_co);
    assert_true(deep >= 20000 && deep < 20000 + 4096);
    tk_coro_free(g_co);
    g_co = tk_coro_new(p, shallow_fn, NULL); /* the same stack, from the pool */
    assert_int_equal(tk_coro_pool_mmaps(p), 1);
    tk_coro_switch(g_main, g_co);
    size_t shallow = tk_coro_stack_used(g_co);
    assert_true(shallow >= 1000 && shallow < 1000 + 4096);
    tk_coro_free(g_co);
    tk_coro_main_free(g_main);
    tk_coro_pool_free(p);
}

/* The budgeted residency refresh converges on the full scan. */
static void test_resident_refresh(void **state)
{
    size_t ps = (size_t)sysconf(_SC_PAGESIZE);
    tk_coro_pool_t *p = tk_coro_pool_new(64 * 1024, 0, 8);
    g_main = tk_coro_main_new();
    tk_coro_t *c[3];
    for (int i = 0; i < 3; i++)
        c[i] = tk_coro_new(p, touch_fn, NULL);
    /* before any scan each stack counts its header page */
    assert_int_equal(tk_coro_pool_resident_refresh(p, 1), 3 * ps);
    for (int i = 0; i < 3; i++) {
        g_co = c[i];
        tk_coro_switch(g_main, c[i]); /* touches ~5 KiB more */
    }
    size_t exact = 0;
    for (int i = 0; i < 3; i++)
        exact += tk_coro_resident(c[i]);
    assert_true(exact >= 3 * 2 * ps);
    size_t r = 0;
    for (int i = 0; i < 3; i++) /* one stack per call: three calls see all */
        r = tk_coro_pool_resident_refresh(p, 1);
    assert_int_equal(r, exact);
    assert_int_equal(tk_coro_pool_resident_refresh(p, 0), exact);
    for (int i = 0; i < 3; i++) {
        g_co = c[i];
        tk_coro_switch(g_main, c[i]);
        tk_coro_free(c[i]);
    }
    tk_coro_main_free(g_main);
    tk_coro_pool_free(p);
}

static void test_pool_args(void **state)
{
    errno = 0;
    assert_null(tk_coro_pool_new(4096, 8192, 4)); /* udata larger than the stack */
    assert_int_equal(errno, EINVAL);
    tk_coro_pool_t *p = tk_coro_pool_new(20000, 0, 0); /* rounded up to pages */
    assert_int_equal(tk_coro_pool_stack_size(p) % (size_t)sysconf(_SC_PAGESIZE), 0);
    assert_true(tk_coro_pool_stack_size(p) >= 20000);
    tk_coro_pool_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_switch_pingpong),     cmocka_unit_test(test_callee_saved),
        cmocka_unit_test(test_fpu_control),         cmocka_unit_test(test_pool_reuse),
        cmocka_unit_test(test_layout_and_resident), cmocka_unit_test(test_pool_args),
        cmocka_unit_test(test_resident_refresh),    cmocka_unit_test(test_stack_paint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
