/* gt_run.h: run a fuzz target's code on a tk green thread, as a worker runs it.
 *
 * libFuzzer calls a target on its own 8 MiB stack, where unbounded recursion
 * on input goes unnoticed: 2,000 nested '[' in a request body passed the
 * JSON target for months and killed real workers, whose green threads have
 * runtime.stack_size bytes. fuzz_gt_run() runs the code with the real
 * scheduler and coroutines (server/runtime/scheduler.c, server/runtime/coro.c) on a stack of the
 * configured default size (TENK_FUZZ_STACK=BYTES overrides it), so an overflow
 * hits the guard zone and is a crash the fuzzer reports and saves.
 *
 * A target that includes this lists "@runtime" in its fuzz-sources line:
 * scripts/fuzz links the runtime (and libevent) for this architecture. */
#ifndef TK_FUZZ_GT_RUN_H
#define TK_FUZZ_GT_RUN_H

#include <stdint.h>
#include <stdlib.h>

#include <event2/event.h>

#include "runtime/scheduler.h"

typedef struct {
    void (*fn)(void *);
    void *arg;
} fuzz_gt_call_t;

static void fuzz_gt_main(void *arg)
{
    fuzz_gt_call_t *c = arg;
    c->fn(c->arg);
}

/* Run fn(arg) to completion on a fresh green thread (a pooled stack). */
static void fuzz_gt_run(void (*fn)(void *), void *arg)
{
    static tk_sched_t *s;
    if (s == NULL) {
        tk_sched_opts_t o;
        tk_sched_opts_default(&o);
        const char *env = getenv("TENK_FUZZ_STACK");
        if (env != NULL && *env != '\0')
            o.stack_size = (size_t)strtoul(env, NULL, 0);
        struct event_base *base = event_base_new();
        if (base == NULL || (s = tk_sched_new(base, &o)) == NULL)
            abort();
    }
    fuzz_gt_call_t c = {fn, arg};
    if (tk_gt_spawn(s, "fuzz", fuzz_gt_main, &c) == NULL || tk_sched_run(s) != 0)
        abort();
}

typedef struct {
    int (*fn)(const uint8_t *, size_t);
    const uint8_t *data;
    size_t size;
} fuzz_gt_input_t;

static void fuzz_gt_input_main(void *arg)
{
    fuzz_gt_input_t *in = arg;
    (void)in->fn(in->data, in->size);
}

/* Run a target's fn(data, size) on a green thread: the body of most targets'
 * LLVMFuzzerTestOneInput(). */
static void fuzz_gt_run_input(int (*fn)(const uint8_t *, size_t), const uint8_t *data, size_t size)
{
    fuzz_gt_input_t in = {fn, data, size};
    fuzz_gt_run(fuzz_gt_input_main, &in);
}

#endif
