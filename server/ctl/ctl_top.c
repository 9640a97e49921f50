/* ctl_top.c: `tenkctl top`, the live view: one frame a second on the
 * alternate screen (or once, plain, with --once or without a terminal). */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "ctl/ctl.h"
#include "shm/abi.h"
#include "shm/broker.h"
#include "shm/metrics.h"
#include "shm/segment.h"
#include "shm/stats_json.h"
#include "shm/view.h"

/* --- top ---------------------------------------------------------------------------- */

static volatile sig_atomic_t top_quit, top_resized;
static struct termios top_saved;
static int top_raw;

static void top_on_signal(int sig)
{
    if (sig == SIGWINCH)
        top_resized = 1;
    else
        top_quit = 1;
}

static void top_restore(void)
{
    if (!top_raw)
        return;
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &top_saved);
    /* show the cursor, leave the alternate screen */
    fputs("\033[?25h\033[?1049l", stdout);
    fflush(stdout);
    top_raw = 0;
}

/* One frame, assembled as plain lines first so clipping to the width is exact;
 * a line's first `bold` characters are drawn bold. */
typedef struct {
    char text[512];
    int bold; /* leading characters to draw bold; -1 = the whole line inverse */
    int warn; /* draw the rest in red */
} top_line_t;

typedef struct {
    top_line_t l[128];
    int n;
} top_frame_t;

static void top_add(top_frame_t *f, int bold, int warn, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void top_add(top_frame_t *f, int bold, int warn, const char *fmt, ...)
{
    if (f->n >= (int)(sizeof(f->l) / sizeof(f->l[0])))
        return;
    top_line_t *l = &f->l[f->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->text, sizeof(l->text), fmt, ap);
    va_end(ap);
    l->bold = bold;
    l->warn = warn;
}

/* Per-slot values of the previous frame, for CPU% and recent latency. */
typedef struct {
    uint64_t cpu_ns[TK_SHM_MAX_SLOTS];
    uint64_t mono_ns;
    tk_metrics_snap_t *prev_total;
    int have;
} top_prev_t;

static void top_build(top_frame_t *f, tk_view_t *v, top_prev_t *p)
{
    char b[10][32];
    const tk_metrics_snap_t *t = v->total;
    const tk_metrics_sh_t *m = &t->m;
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    f->n = 0;

    top_add(f, -1, 0,
            "tenk '%s'  master %d  generation %llu  up %s  %u/%u workers running  %02d:%02d:%02d",
            v->h.name, (int)v->h.master_pid, (unsigned long long)v->h.generation,
            tk_ctl_fmt_dur(tk_view_uptime_s(v, v->h.created_ns), b[0], 32),
            tk_view_count_state(v, TK_SHM_W_RUNNING, 1), v->h.workers, tm.tm_hour, tm.tm_min,
            tm.tm_sec);
    top_add(f, 0, 0, "%s", "");

    tk_metrics_rate_t r1, r10, r60;
    tk_metrics_rate(t, v->now_sec, 1, &r1);
    tk_metrics_rate(t, v->now_sec, 10, &r10);
    tk_metrics_rate(t, v->now_sec, 60, &r60);
    top_add(f, 12, 0, "%-12s 1s %-10s 10s %-10s 60s %-10s total %llu", "requests/s",
            tk_ctl_fmt_rate(r1.requests, b[0], 32), tk_ctl_fmt_rate(r10.requests, b[1], 32),
            tk_ctl_fmt_rate(r60.requests, b[2], 32), (unsigned long long)m->requests);

    /* latency over the last refresh interval when there is one, else since start */
    tk_metrics_snap_t *d = tk_ctl_xcalloc(1, sizeof(*d));
    const char *window = "since start";
    uint64_t dn = 0;
    if (p->have) {
        for (unsigned i = 0; i < TK_METRICS_NBUCKETS; i++) {
            uint64_t a = m->hist[i], z = p->prev_total->m.hist[i];
            d->m.hist[i] = a > z ? a - z : 0;
            dn += d->m.hist[i];
        }
    }
    const tk_metrics_snap_t *ls = t;
    if (dn) {
        ls = d;
        window = "last interval";
    }
    top_add(f, 12, 0, "%-12s p50 %-9s p90 %-9s p99 %-9s p99.9 %-9s (%s)", "latency",
            tk_ctl_fmt_us(tk_metrics_percentile(ls, 50), b[0], 32),
            tk_ctl_fmt_us(tk_metrics_percentile(ls, 90), b[1], 32),
            tk_ctl_fmt_us(tk_metrics_percentile(ls, 99), b[2], 32),
            tk_ctl_fmt_us(tk_metrics_percentile(ls, 99.9), b[3], 32), window);
    free(d);

    uint64_t et = tk_ctl_errors_total(m);
    top_add(f, 12, r10.errors > 0,
            "%-12s %s/s (%.2f%% of requests, 10s)  parse %llu  limit %llu  timeout %llu  5xx %llu",
            "errors", tk_ctl_fmt_rate(r10.errors, b[0], 32), tk_ctl_pct(r10.errors, r10.requests),
            (unsigned long long)m->errors[TK_METRICS_ERR_PARSE],
            (unsigned long long)m->errors[TK_METRICS_ERR_LIMIT],
            (unsigned long long)m->errors[TK_METRICS_ERR_TIMEOUT],
            (unsigned long long)m->errors[TK_METRICS_ERR_5XX]);
    (void)et;
    top_add(f, 12, 0, "%-12s open %llu  active %llu  idle %llu  accepted %llu  in %s/s  out %s/s",
            "connections", (unsigned long long)(m->conns_active + m->conns_idle),
            (unsigned long long)m->conns_active, (unsigned long long)m->conns_idle,
            (unsigned long long)m->conns_accepted, tk_ctl_fmt_bytes(r10.bytes_in, b[0], 32),
            tk_ctl_fmt_bytes(r10.bytes_out, b[1], 32));

    /* green threads of live workers */
    uint64_t by[TK_GT_NSTATES] = {0}, gtt = 0;
    for (unsigned i = 0; i < v->nw; i++)
        if (tk_view_live_state(v->w[i].w.state))
            for (unsigned s = 0; s < TK_GT_NSTATES; s++)
                by[s] += v->w[i].snap->m.gt_by_state[s];
    char line[512];
    int off = snprintf(line, sizeof(line), "%-12s", "threads");
    for (unsigned s = 0; s < TK_GT_NSTATES; s++) {
        gtt += by[s];
        off += snprintf(line + off, sizeof(line) - (size_t)off, " %s %llu ",
                        tk_gt_state_name((tk_gt_state_t)s), (unsigned long long)by[s]);
    }
    top_add(f, 12, 0, "%s", line);

    const tk_broker_sh_t *br = tk_shm_broker(v->shm);
    if (tk_ctl_db_configured(br)) {
        tk_broker_stats_t st;
        tk_broker_stats(br, -1, &st);
        top_add(f, 12, br->qlen > 0,
                "%-12s in use %llu  idle %llu  waiting %u  open %llu/%u  timeouts %llu", "database",
                (unsigned long long)st.in_use, (unsigned long long)st.idle, br->qlen,
                (unsigned long long)st.open, br->max_open, (unsigned long long)st.acquire_timeouts);
    } else
        top_add(f, 12, 0, "%-12s not configured", "database");
    uint64_t lookups = m->cache_hits + m->cache_misses;
    if (lookups || m->cache_errors)
        top_add(f, 12, 0, "%-12s hit rate %.1f%%  hits %llu  misses %llu  errors %llu", "cache",
                tk_ctl_pct((double)m->cache_hits, (double)lookups),
                (unsigned long long)m->cache_hits, (unsigned long long)m->cache_misses,
                (unsigned long long)m->cache_errors);
    else
        top_add(f, 12, 0, "%-12s no lookups", "cache");
    top_add(f, 0, 0, "%s", "");

    top_add(f, -2, 0, "%-5s %-8s %-9s %10s %9s %8s %8s %6s %7s %6s %10s", "SLOT", "PID", "STATE",
            "REQ/S", "P99", "ERRORS", "CONNS", "GT", "CPU%", "RSS", "UPTIME");
    double dt = p->have && v->now_mono_ns > p->mono_ns ? (double)(v->now_mono_ns - p->mono_ns) : 0;
    for (unsigned i = 0; i < v->nw; i++) {
        tk_view_worker_t *w = &v->w[i];
        const tk_metrics_sh_t *wm = &w->snap->m;
        if (!tk_view_live_state(w->w.state))
            continue;
        tk_metrics_rate_t wr;
        tk_metrics_rate(w->snap, v->now_sec, 1, &wr);
        uint64_t cpu = wm->cpu_user_ns + wm->cpu_sys_ns;
        char cpus[16] = "-";
        if (dt > 0 && w->slot < TK_SHM_MAX_SLOTS && cpu >= p->cpu_ns[w->slot])
            snprintf(cpus, sizeof(cpus), "%.1f", 100.0 * (double)(cpu - p->cpu_ns[w->slot]) / dt);
        top_add(f, 0, 0, "%-5u %-8d %-9s %10s %9s %8llu %8llu %6llu %7s %6s %10s", w->slot,
                (int)w->w.pid, tk_shm_wstate_name((tk_shm_wstate_t)w->w.state),
                tk_ctl_fmt_rate(wr.requests, b[0], 32),
                tk_ctl_fmt_us(tk_metrics_percentile(w->snap, 99), b[1], 32),
                (unsigned long long)tk_ctl_errors_total(wm),
                (unsigned long long)(wm->conns_active + wm->conns_idle),
                (unsigned long long)tk_ctl_gt_total(wm), cpus,
                tk_ctl_fmt_bytes((double)wm->rss_bytes, b[2], 32),
                tk_ctl_fmt_dur(tk_view_uptime_s(v, w->w.start_ns), b[3], 32));
    }

    /* remember this frame */
    for (unsigned i = 0; i < v->nw; i++)
        if (v->w[i].slot < TK_SHM_MAX_SLOTS)
            p->cpu_ns[v->w[i].slot] = v->w[i].snap->m.cpu_user_ns + v->w[i].snap->m.cpu_sys_ns;
    p->mono_ns = v->now_mono_ns;
    memcpy(p->prev_total, t, sizeof(*t));
    p->have = 1;
}

/* Draw the frame at the top-left, each line clipped to cols, rest cleared. */
static void top_draw(const top_frame_t *f, int rows, int cols, int plain)
{
    size_t cap = (size_t)(rows + 2) * ((size_t)cols + 32) + 64;
    char *out = tk_ctl_xcalloc(1, cap);
    size_t o = 0;
#define PUT(...) o += (size_t)snprintf(out + o, cap - o, __VA_ARGS__)
    if (!plain)
        PUT("\033[H");
    int maxl = plain ? f->n : rows - 1; /* keep the last row for the key hint */
    for (int i = 0; i < f->n && i < maxl; i++) {
        const top_line_t *l = &f->l[i];
        int len = (int)strlen(l->text);
        if (len > cols)
            len = cols;
        if (plain) {
            PUT("%.*s\n", len, l->text);
            continue;
        }
        if (l->bold == -1) /* title: the full width in inverse video */
            PUT("\033[7m%.*s%*s\033[0m", len, l->text, cols - len, "");
        else if (l->bold == -2)
            PUT("\033[1m%.*s\033[0m", len, l->text);
        else {
            int bl = l->bold < len ? l->bold : len;
            PUT("\033[1m%.*s\033[0m%s%.*s\033[0m", bl, l->text, l->warn ? "\033[31m" : "", len - bl,
                l->text + bl);
        }
        PUT("\033[K\r\n");
    }
    if (!plain) {
        PUT("\033[J\033[%d;1H\033[2mq: quit%s\033[0m\033[K", rows,
            cols >= 40 ? "   refresh: 1 s" : "");
    }
#undef PUT
    fwrite(out, 1, o, stdout);
    fflush(stdout);
    free(out);
}

int tk_ctl_cmd_top(tk_shm_t *shm)
{
    tk_view_t v = {0};
    top_prev_t *p = tk_ctl_xcalloc(1, sizeof(*p));
    p->prev_total = tk_ctl_xcalloc(1, sizeof(*p->prev_total));
    top_frame_t *f = tk_ctl_xcalloc(1, sizeof(*f));
    int rc = CTL_OK;

    if (tk_ctl_opt.once || !isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
        if (!tk_ctl_opt.once) {
            fprintf(stderr, "tenkctl: top needs a terminal (use 'top --once' for one frame)\n");
            rc = CTL_USAGE;
        } else {
            tk_ctl_view_load(&v, shm);
            top_build(f, &v, p);
            top_draw(f, 0, 511, 1);
        }
        goto out;
    }

    if (tcgetattr(STDIN_FILENO, &top_saved) < 0) {
        fprintf(stderr, "tenkctl: tcgetattr() failed: %s\n", strerror(errno));
        rc = CTL_FAIL;
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = top_on_signal; /* no SA_RESTART: poll() wakes up with EINTR */
    sigaction(SIGWINCH, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    struct termios raw = top_saved;
    raw.c_lflag &= (tcflag_t) ~(ICANON | ECHO);
    raw.c_cc[VMIN] = 0;
    raw.c_cc[VTIME] = 0;
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw);
    top_raw = 1;
    atexit(top_restore);
    fputs("\033[?1049h\033[?25l\033[2J", stdout); /* alternate screen, hide the cursor */

    uint64_t next = 0;
    while (!top_quit) {
        uint64_t now = tk_ctl_clock_ns(CLOCK_MONOTONIC);
        if (now >= next || top_resized) {
            struct winsize ws;
            int rows = 24, cols = 80;
            if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0) {
                rows = ws.ws_row;
                cols = ws.ws_col;
            }
            if (top_resized)
                fputs("\033[2J", stdout);
            if (now >= next) {
                if (!tk_shm_master_alive(shm)) {
                    top_restore();
                    fprintf(stderr, "tenkctl: tenk '%s' stopped\n", tk_ctl_opt.name);
                    rc = CTL_FAIL;
                    goto out;
                }
                tk_ctl_view_load(&v, shm);
                top_build(f, &v, p);
                next = now + 1000000000ull;
            }
            top_resized = 0;
            top_draw(f, rows, cols, 0);
        }
        uint64_t wait_ms = next > now ? (next - now) / 1000000u + 1 : 0;
        struct pollfd pfd = {.fd = STDIN_FILENO, .events = POLLIN};
        int n = poll(&pfd, 1, (int)wait_ms);
        if (n > 0) {
            char buf[64];
            ssize_t k = read(STDIN_FILENO, buf, sizeof(buf));
            if (k == 0)
                top_quit = 1; /* the terminal went away */
            for (ssize_t i = 0; i < k; i++)
                if (buf[i] == 'q' || buf[i] == 'Q' || buf[i] == 3 /* ^C */)
                    top_quit = 1;
        }
    }
    top_restore();
out:
    tk_view_free(&v);
    free(p->prev_total);
    free(p);
    free(f);
    return rc;
}
