/* view.h: a read-only copy of an instance's segment for the tools that show it (tenkctl, admin). */
#ifndef TK_VIEW_H
#define TK_VIEW_H

#include <stddef.h>
#include <stdint.h>

#include "shm/broker.h"
#include "shm/metrics.h"
#include "shm/segment.h"

/* tenkctl and the admin endpoints print the same segment: both map it
 * read-only by instance name and copy out, in one pass, the header, every used
 * worker slot with a lock-free snapshot of its metrics, and their merge. The
 * copies are on the heap: a snapshot is ~16 KiB and green-thread stacks are
 * small. Nothing here logs: failures fill an error buffer or return -1. */

/* One used worker slot, copied out of the segment. */
typedef struct {
    unsigned slot;
    tk_shm_worker_sh_t w;
    tk_metrics_snap_t *snap;
} tk_view_worker_t;

/* Everything a view shows, read in one pass. Zero it before the first
 * tk_view_load(); tk_view_free() leaves it zeroed again. */
typedef struct {
    tk_shm_t *shm;
    tk_shm_header_sh_t h;
    unsigned nw; /* used slots in w[] */
    tk_view_worker_t *w;
    tk_metrics_snap_t *total; /* merge of every used slot, dead ones included */
    uint64_t now_sec;         /* tk_metrics_now_sec() of the read */
    uint64_t now_real_ns;     /* CLOCK_REALTIME of the read */
    uint64_t now_mono_ns;     /* CLOCK_MONOTONIC of the read */
} tk_view_t;

/* Map /dev/shm/tenk-NAME read-only (tk_shm_attach checks magic, layout version
 * and part sizes). With require_live, a segment whose master is gone is refused
 * too (stale: the next start replaces it). NULL with the reason in err. */
tk_shm_t *tk_view_attach(const char *name, int require_live, char *err, size_t errlen);

/* Copy shm into v, freeing what v held before. 0, or -1 with errno ENOMEM
 * (v is then empty). */
int tk_view_load(tk_view_t *v, tk_shm_t *shm);
/* The same without ever sleeping, for a worker's loop (the admin endpoints):
 * each slot is read with tk_metrics_snapshot_nowait(). */
int tk_view_load_nowait(tk_view_t *v, tk_shm_t *shm);
/* Free the copies (not the mapping) and zero v. */
void tk_view_free(tk_view_t *v);

/* 1 for a slot whose worker exists (starting, running or draining). */
int tk_view_live_state(uint32_t state);
/* Slots in state (of the current generation only, with gen_only). */
unsigned tk_view_count_state(const tk_view_t *v, uint32_t state, int gen_only);
/* Seconds from since_real_ns (CLOCK_REALTIME) to the read; 0 if unset. */
double tk_view_uptime_s(const tk_view_t *v, uint64_t since_real_ns);
/* The broker's table, or NULL if its magic or size is not this build's. */
const tk_broker_sh_t *tk_view_broker(tk_shm_t *shm);

#endif
