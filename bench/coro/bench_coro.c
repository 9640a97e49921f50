/* bench_coro.c: context switch, spawn+exit and parked-thread memory, against glibc swapcontext. */
#include "config.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>

#include <event2/event.h>

#include "runtime/coro.h"
#include "runtime/scheduler.h"

#define REPS 5

/* Targets from the issue. */
#define TARGET_SWITCH_NS    20.0
#define TARGET_SPEEDUP      50.0
#define TARGET_SPAWN_NS     200.0
#define TARGET_PARKED_BYTES 8192.0
#define HANDLER_LOCALS      5120 /* a typical handler's stack depth: 5 KiB of locals */
#define PARKED_THREADS      10000

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* --- switch: tk_coro (assembly) ----------------------------------------------------- */

static tk_coro_t *c_main, *c_co;

static void bounce_fn(void *arg)
{
    for (;;)
        tk_coro_switch(c_co, c_main);
}

/* Timings are taken over many short chunks and the median chunk is kept: on a
 * shared machine a chunk that the kernel preempted is an outlier, not a cost
 * of the code under test. */
#define CHUNKS 301

static double bench_switch_asm(long per_chunk)
{
    double v[CHUNKS];
    tk_coro_pool_t *p = tk_coro_pool_new(0, 0, 1);
    c_main = tk_coro_main_new();
    c_co = tk_coro_new(p, bounce_fn, NULL);
    tk_coro_switch(c_main, c_co); /* warm up */
    for (int c = 0; c < CHUNKS; c++) {
        uint64_t t0 = tk_now_ns();
        for (long i = 0; i < per_chunk; i++)
            tk_coro_switch(c_main, c_co);
        v[c] = (double)(tk_now_ns() - t0) / (double)(2 * per_chunk); /* 2 switches a trip */
    }
    tk_coro_free(c_co);
    tk_coro_main_free(c_main);
    tk_coro_pool_free(p);
    return median(v, CHUNKS);
}

/* --- switch: glibc swapcontext --------------------------------------------------------- */

static ucontext_t u_main, u_co;

static void u_bounce(void)
{
    for (;;)
        swapcontext(&u_co, &u_main);
}

static double bench_switch_ucontext(long per_chunk)
{
    size_t size = 64 * 1024;
    char *stack = malloc(size);
    getcontext(&u_co);
    u_co.uc_stack.ss_sp = stack;
    u_co.uc_stack.ss_size = size;
    u_co.uc_link = NULL;
    makecontext(&u_co, u_bounce, 0);
    swapcontext(&u_main, &u_co);
    double v[CHUNKS];
    for (int c = 0; c < CHUNKS; c++) {
        uint64_t t0 = tk_now_ns();
        for (long i = 0; i < per_chunk; i++)
            swapcontext(&u_main, &u_co);
        v[c] = (double)(tk_now_ns() - t0) / (double)(2 * per_chunk);
    }
    free(stack);
    return median(v, CHUNKS);
}

/* --- spawn + exit with a pooled stack ----------------------------------------------------- */

static void empty_fn(void *arg) {}

static double bench_spawn(struct event_base *base, int batches, int batch)
{
    tk_sched_t *s = tk_sched_new(base, NULL);
    /* warm the pool: one batch's worth of stacks gets mapped once */
    for (int i = 0; i < batch; i++)
        tk_gt_spawn(s, "warm", empty_fn, NULL);
    tk_sched_run(s);
    double v[CHUNKS];
    if (batches > CHUNKS)
        batches = CHUNKS;
    for (int b = 0; b < batches; b++) {
        uint64_t t0 = tk_now_ns();
        for (int i = 0; i < batch; i++)
            tk_gt_spawn(s, "empty", empty_fn, NULL);
        tk_sched_run(s);
        v[b] = (double)(tk_now_ns() - t0) / (double)batch;
    }
    tk_sched_free(s);
    return median(v, batches);
}

/* --- resident bytes per parked green thread ------------------------------------------------ */

__attribute__((noinline)) static void handler_work(void)
{
    volatile char locals[HANDLER_LOCALS];
    for (size_t i = 0; i < sizeof(locals); i += 64)
        locals[i] = (char)i;
    locals[sizeof(locals) - 1] = 1;
}

static void parked_fn(void *arg)
{
    handler_work();                 /* touch a handler's depth of stack... */
    tk_gt_park(TK_GT_WAIT_NET, -1); /* ...then park, as on a keep-alive read */
}

static long statm_resident_pages(void)
{
    long size, res;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL)
        return -1;
    int n = fscanf(f, "%ld %ld", &size, &res);
    fclose(f);
    return n == 2 ? res : -1;
}

static void bench_parked(struct event_base *base, double *mincore_b, double *statm_b)
{
    tk_sched_t *s = tk_sched_new(base, NULL);
    tk_sched_stats_t st;
    long page = sysconf(_SC_PAGESIZE);
    long r0 = statm_resident_pages();
    for (int i = 0; i < PARKED_THREADS; i++)
        tk_gt_spawn(s, "parked", parked_fn, NULL);
    event_base_loop(base, EVLOOP_ONCE); /* they all run and park */
    long r1 = statm_resident_pages();
    tk_sched_stats_exact(s, &st);
    if (st.by_state[TK_GT_WAIT_NET] != PARKED_THREADS)
        fprintf(stderr, "bench: only %llu threads parked\n",
                (unsigned long long)st.by_state[TK_GT_WAIT_NET]);
    *mincore_b = (double)st.stack_resident / PARKED_THREADS;
    *statm_b = (double)(r1 - r0) * (double)page / PARKED_THREADS;
    tk_sched_free(s); /* cancels them */
}

static const char *verdict(int ok)
{
    return ok ? "met" : "**missed**";
}

int main(int argc, char **argv)
{
    long sw_iters = 2000, uc_iters = 100;
    double sw[REPS], uc[REPS], sp[REPS], pm[REPS], ps[REPS];
    struct event_base *base = event_base_new();
    if (base == NULL) {
        fprintf(stderr, "bench_coro: event_base_new() failed\n");
        return 1;
    }

    for (int r = 0; r < REPS; r++) {
        sw[r] = bench_switch_asm(sw_iters);
        uc[r] = bench_switch_ucontext(uc_iters);
        sp[r] = bench_spawn(base, 201, 500);
        bench_parked(base, &pm[r], &ps[r]);
    }
    double msw = median(sw, REPS), muc = median(uc, REPS), msp = median(sp, REPS);
    double mpm = median(pm, REPS), mps = median(ps, REPS);
    double speedup = muc / msw;

#if defined(TK_CORO_X86_64)
    const char *impl = "x86-64 assembly";
#elif defined(TK_CORO_AARCH64)
    const char *impl = "aarch64 assembly";
#else
    const char *impl = "ucontext fallback";
#endif
    printf("Green-thread runtime (%s), median of %d runs (each the median of %d timed chunks), "
           "%ld cores online\n\n",
           impl, REPS, CHUNKS, sysconf(_SC_NPROCESSORS_ONLN));
    printf("| measure | result | target | |\n");
    printf("|---|---:|---:|---|\n");
    printf("| context switch, tk_coro | %.1f ns | <= %.0f ns | %s |\n", msw, TARGET_SWITCH_NS,
           verdict(msw <= TARGET_SWITCH_NS));
    printf("| context switch, glibc swapcontext | %.1f ns | | |\n", muc);
    printf("| speed-up over swapcontext | %.0fx | >= %.0fx | %s |\n", speedup, TARGET_SPEEDUP,
           verdict(speedup >= TARGET_SPEEDUP));
    printf("| spawn + exit, pooled stack | %.1f ns | <= %.0f ns | %s |\n", msp, TARGET_SPAWN_NS,
           verdict(msp <= TARGET_SPAWN_NS));
    printf("| resident per parked green thread (mincore, %d KiB touched) | %.0f B | <= %.0f B | "
           "%s |\n",
           HANDLER_LOCALS / 1024, mpm, TARGET_PARKED_BYTES, verdict(mpm <= TARGET_PARKED_BYTES));
    printf("| same, process RSS delta (/proc/self/statm, %d threads) | %.0f B | | |\n",
           PARKED_THREADS, mps);
    event_base_free(base);
    return 0;
}
