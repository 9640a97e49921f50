/* sched_fixture.h: shared fixture for the scheduler tests (test_sched, test_waitq): a scheduler
 * on a fresh event base per test, and a check that nothing is left live. */
#ifndef TK_TEST_SCHED_FIXTURE_H
#define TK_TEST_SCHED_FIXTURE_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>
#include <event2/event.h>

#include "runtime/scheduler.h"

typedef struct {
    struct event_base *base;
    tk_sched_t *s;
} fixture_t;

static int setup_opts(void **state, const tk_sched_opts_t *o)
{
    fixture_t *f = calloc(1, sizeof(*f));
    f->base = event_base_new();
    f->s = tk_sched_new(f->base, o);
    if (f->base == NULL || f->s == NULL)
        return -1;
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_opts(state, NULL);
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    tk_sched_free(f->s);
    event_base_free(f->base);
    free(f);
    return 0;
}

/* Every count by state must be zero once nothing is live. */
static void assert_idle(tk_sched_t *s)
{
    tk_sched_stats_t st;
    tk_sched_stats(s, &st);
    for (int i = 0; i < TK_GT_NSTATES; i++)
        assert_int_equal(st.by_state[i], 0);
    assert_int_equal(st.created, st.exited);
    assert_int_equal(tk_sched_live(s), 0);
}
#endif
