/* ctl_fmt.c: tenkctl's formatters: colours, durations, sizes, rates, exit
 * statuses, sums over a metrics snapshot, and the JSON output helpers. */
#include "config.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "ctl/ctl.h"
#include "shm/abi.h"
#include "shm/metrics.h"
#include "shm/segment.h"
#include "shm/stats_json.h"
#include "shm/view.h"

const char *tk_ctl_color(const char *code)
{
    return tk_ctl_opt.color ? code : "";
}

const char *tk_ctl_state_color(uint32_t s)
{
    switch (s) {
    case TK_SHM_W_RUNNING:
        return GREEN;
    case TK_SHM_W_STARTING:
    case TK_SHM_W_DRAINING:
        return YELL;
    case TK_SHM_W_DEAD:
        return RED;
    default:
        return "";
    }
}

/* 950us, 12.3ms, 1.25s */
const char *tk_ctl_fmt_us(double us, char *buf, size_t len)
{
    if (us <= 0)
        snprintf(buf, len, "-");
    else if (us < 1000)
        snprintf(buf, len, "%.0fus", us);
    else if (us < 1e6)
        snprintf(buf, len, "%.1fms", us / 1e3);
    else
        snprintf(buf, len, "%.2fs", us / 1e6);
    return buf;
}

/* 5s, 3m07s, 2h05m, 4d03h */
const char *tk_ctl_fmt_dur(double s, char *buf, size_t len)
{
    unsigned long long t = s > 0 ? (unsigned long long)s : 0;
    if (t < 60)
        snprintf(buf, len, "%llus", t);
    else if (t < 3600)
        snprintf(buf, len, "%llum%02llus", t / 60, t % 60);
    else if (t < 86400)
        snprintf(buf, len, "%lluh%02llum", t / 3600, t % 3600 / 60);
    else
        snprintf(buf, len, "%llud%02lluh", t / 86400, t % 86400 / 3600);
    return buf;
}

const char *tk_ctl_fmt_bytes(double b, char *buf, size_t len)
{
    static const char *const u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (b >= 1024 && i < 4) {
        b /= 1024;
        i++;
    }
    snprintf(buf, len, i ? "%.1f%s" : "%.0f%s", b, u[i]);
    return buf;
}

const char *tk_ctl_fmt_rate(double r, char *buf, size_t len)
{
    snprintf(buf, len, r >= 100 || r == 0 ? "%.0f" : "%.1f", r);
    return buf;
}

/* "exit 0", "signal 9", "-" */
const char *tk_ctl_fmt_status(int st, char *buf, size_t len)
{
    if (st < 0)
        snprintf(buf, len, "-");
    else if ((st & 0x7f) == 0)
        snprintf(buf, len, "exit %d", (st >> 8) & 0xff);
    else
        snprintf(buf, len, "signal %d", st & 0x7f);
    return buf;
}

double tk_ctl_pct(double part, double whole)
{
    return whole > 0 ? 100.0 * part / whole : 0.0;
}

uint64_t tk_ctl_errors_total(const tk_metrics_sh_t *m)
{
    uint64_t t = 0;
    for (unsigned i = 0; i < TK_METRICS_ERR_N; i++)
        t += m->errors[i];
    return t;
}

uint64_t tk_ctl_gt_total(const tk_metrics_sh_t *m)
{
    uint64_t t = 0;
    for (unsigned i = 0; i < TK_GT_NSTATES; i++)
        t += m->gt_by_state[i];
    return t;
}

/* --- JSON helpers ---------------------------------------------------------------------- */

void tk_ctl_json_print(cJSON *o)
{
    char *s = cJSON_Print(o);
    if (!s)
        tk_ctl_die_oom();
    puts(s);
    free(s);
    cJSON_Delete(o);
}

void tk_ctl_json_head(cJSON *o, const tk_view_t *v)
{
    tk_stats_json_head(o, &v->h, v->now_real_ns);
}

void tk_ctl_json_worker_head(cJSON *o, const tk_view_worker_t *w)
{
    tk_stats_json_worker_head(o, w->slot, &w->w);
}
