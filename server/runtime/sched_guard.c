/* sched_guard.c: the report of a green thread that ran into its stack's guard
 * page (SIGSEGV handler on an alternate signal stack): which thread, its stack
 * size and what it was serving, written async-signal-safely to stderr. */
#include "config.h"

#include "runtime/sched_int.h"

#include "runtime/coro.h"

#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static struct sigaction g_old_segv;

static size_t fmt_u64(char *p, uint64_t v)
{
    char tmp[24];
    size_t n = 0, i;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (i = 0; i < n; i++)
        p[i] = tmp[n - 1 - i];
    return n;
}

static size_t fmt_str(char *p, const char *s, size_t max)
{
    size_t n = 0;
    while (s[n] && n < max) {
        p[n] = s[n];
        n++;
    }
    return n;
}

/* Async-signal-safe: only write(2) and sigaction(2). The green thread's
 * struct lives in its stack's top page, far from the overflowing end. */
static void segv_handler(int sig, siginfo_t *si, void *uctx)
{
    tk_sched_t *s = tk_sched_current();
    tk_gt_t *g = s ? s->cur : NULL;

    if (g != NULL && tk_coro_guard_hit(g->coro, si->si_addr)) {
        char buf[96 + sizeof(g->name) + sizeof(g->note)];
        size_t n = 0;
        n += fmt_str(buf + n, "green thread ", 32);
        n += fmt_u64(buf + n, g->id);
        n += fmt_str(buf + n, " (", 4);
        n += fmt_str(buf + n, g->name, sizeof(g->name));
        n += fmt_str(buf + n, ") overflowed its ", 32);
        n += fmt_u64(buf + n, tk_coro_stack_size(g->coro));
        n += fmt_str(buf + n, "-byte stack", 16);
        if (g->note[0]) {
            n += fmt_str(buf + n, " serving ", 16);
            n += fmt_str(buf + n, g->note, sizeof(g->note) - 1);
        }
        buf[n++] = '\n';
        ssize_t w = write(2, buf, n);
        (void)w;
        /* The access faults again, now fatally: the worker dies with SIGSEGV
         * (or ASan, when it handled SIGSEGV before us, reports it: a fuzzer
         * then saves the input). */
        sigaction(SIGSEGV, &g_old_segv, NULL);
        return;
    }
    /* Not a stack overflow: give the fault to whoever handled it before us
     * (the default action, or ASan's reporter). */
    sigaction(SIGSEGV, &g_old_segv, NULL);
}

/* Installed by every tk_sched_new(), unless already in place: a test harness
 * or library may have replaced it since. */
void tk_sched_guard_install(void)
{
    struct sigaction cur;
    if (sigaction(SIGSEGV, NULL, &cur) == 0 && (cur.sa_flags & SA_SIGINFO) &&
        cur.sa_sigaction == segv_handler)
        return;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = segv_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
}

/* The handler needs a stack of its own: the faulting one has none left. */
void tk_sched_guard_altstack_setup(tk_sched_t *s)
{
    stack_t cur;
    if (sigaltstack(NULL, &cur) == 0 && !(cur.ss_flags & SS_DISABLE))
        return; /* someone (ASan, the application) already set one */
    size_t size = 64 * 1024;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return;
    stack_t ss = {.ss_sp = p, .ss_size = size, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0) {
        munmap(p, size);
        return;
    }
    s->altstack = p;
    s->altstack_size = size;
}

void tk_sched_guard_altstack_teardown(tk_sched_t *s)
{
    if (s->altstack == NULL)
        return;
    stack_t ss = {.ss_sp = NULL, .ss_size = 0, .ss_flags = SS_DISABLE};
    sigaltstack(&ss, NULL);
    munmap(s->altstack, s->altstack_size);
    s->altstack = NULL;
}
