/* view.c: a read-only copy of an instance's segment for the tools that show it (tenkctl, admin). */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "shm/broker.h"
#include "shm/metrics.h"
#include "shm/segment.h"
#include "shm/view.h"

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

tk_shm_t *tk_view_attach(const char *name, int require_live, char *err, size_t errlen)
{
    tk_shm_t *shm = tk_shm_attach(name, 0, err, errlen);
    if (!shm || !require_live || tk_shm_master_alive(shm))
        return shm;
    snprintf(err, errlen,
             "no tenk server named '%s' is running (the segment left by master pid %d is stale; "
             "the next start replaces it)",
             name, (int)tk_shm_header(shm)->master_pid);
    tk_shm_detach(shm);
    return NULL;
}

void tk_view_free(tk_view_t *v)
{
    for (unsigned i = 0; i < v->nw; i++)
        free(v->w[i].snap);
    free(v->w);
    free(v->total);
    memset(v, 0, sizeof(*v));
}

static int view_load(tk_view_t *v, tk_shm_t *shm, int nowait)
{
    tk_view_free(v);
    unsigned n = tk_shm_nslots(shm);
    v->shm = shm;
    memcpy(&v->h, tk_shm_header(shm), sizeof(v->h));
    /* the workers can write the header too: its strings end inside it */
    v->h.name[sizeof(v->h.name) - 1] = '\0';
    v->h.conf_path[sizeof(v->h.conf_path) - 1] = '\0';
    v->h.reload_error[sizeof(v->h.reload_error) - 1] = '\0';
    v->w = calloc(n ? n : 1, sizeof(*v->w));
    v->total = calloc(1, sizeof(*v->total));
    if (!v->w || !v->total)
        goto oom;
    v->now_sec = tk_metrics_now_sec();
    v->now_real_ns = clock_ns(CLOCK_REALTIME);
    v->now_mono_ns = clock_ns(CLOCK_MONOTONIC);
    for (unsigned i = 0; i < n; i++) {
        tk_shm_worker_sh_t w;
        memcpy(&w, tk_shm_worker(shm, i), sizeof(w));
        if (w.state == TK_SHM_W_EMPTY)
            continue;
        tk_view_worker_t *vw = &v->w[v->nw];
        vw->snap = calloc(1, sizeof(*vw->snap));
        if (!vw->snap)
            goto oom;
        vw->slot = i;
        vw->w = w;
        v->nw++;
        if (nowait)
            tk_metrics_snapshot_nowait(tk_shm_metrics(shm, i), vw->snap);
        else
            tk_metrics_snapshot(tk_shm_metrics(shm, i), vw->snap);
        /* a dead slot's counters stay in the totals: they only ever grow (its
         * gauges were zeroed when the master reaped it) */
        tk_metrics_merge(v->total, vw->snap);
    }
    return 0;
oom:
    tk_view_free(v);
    errno = ENOMEM;
    return -1;
}

int tk_view_load(tk_view_t *v, tk_shm_t *shm)
{
    return view_load(v, shm, 0);
}

int tk_view_load_nowait(tk_view_t *v, tk_shm_t *shm)
{
    return view_load(v, shm, 1);
}

int tk_view_live_state(uint32_t s)
{
    return s == TK_SHM_W_STARTING || s == TK_SHM_W_RUNNING || s == TK_SHM_W_DRAINING;
}

unsigned tk_view_count_state(const tk_view_t *v, uint32_t state, int gen_only)
{
    unsigned n = 0;
    for (unsigned i = 0; i < v->nw; i++)
        if (v->w[i].w.state == state && (!gen_only || v->w[i].w.generation == v->h.generation))
            n++;
    return n;
}

double tk_view_uptime_s(const tk_view_t *v, uint64_t since_real_ns)
{
    return since_real_ns && v->now_real_ns > since_real_ns
               ? (double)(v->now_real_ns - since_real_ns) / 1e9
               : 0.0;
}

const tk_broker_sh_t *tk_view_broker(tk_shm_t *shm)
{
    const tk_broker_sh_t *b = tk_shm_broker(shm);
    return b && b->magic == TK_BROKER_MAGIC && b->size == sizeof(tk_broker_sh_t) ? b : NULL;
}
