/* route.c: where a declared read goes (the least loaded healthy replica that has replayed the
 * request's LSN, else the primary), and the request's read-your-writes state. */
#include "config.h"

#include "db/db_int.h"

#include <stdio.h>
#include <string.h>

#include "runtime/scheduler.h"

#define TK_DB_SKIP_MS 1000 /* a replica whose query failed is left alone this long */

/* The request's two words (tk_gt_req_words(), zeroed when a request starts):
 * [0] the LSN it must see (Tenk-LSN), [1] bit 0: it wrote; bits 8-15: the
 * backend of its last read + 1. NULL outside a green thread. */
#define RW_WROTE    1u
#define RW_PRIMARY  2u /* reads prefer the primary (tk_db_read_primary()) */
#define RW_BE_SHIFT 8
#define RW_BE_MASK  0xffu
static uint64_t *req_words(void)
{
    return tk_gt_req_words(tk_gt_self());
}

void tk_db_want_lsn(uint64_t lsn)
{
    uint64_t *w = req_words();
    if (w && lsn > w[0])
        w[0] = lsn;
}

void tk_db_route_wrote(void)
{
    uint64_t *w = req_words();
    if (w)
        w[1] |= RW_WROTE;
}

void tk_db_read_primary(void)
{
    uint64_t *w = req_words();
    if (w)
        w[1] |= RW_PRIMARY;
}

int tk_db_last_backend(void)
{
    uint64_t *w = req_words();
    return w ? (int)((w[1] >> RW_BE_SHIFT) & RW_BE_MASK) - 1 : -1;
}

static tk_db_state_t *chosen(uint64_t *w, tk_db_state_t *s)
{
    if (w)
        w[1] = (w[1] & ~((uint64_t)RW_BE_MASK << RW_BE_SHIFT)) |
               ((uint64_t)(s->idx + 1) << RW_BE_SHIFT);
    return s;
}

/* The least loaded usable replica for w's request, NULL if none. No lock: the
 * health and LSN words are read on their own (relaxed), the loads are hints.
 * O(replicas). */
static tk_db_state_t *pick_replica(const uint64_t *w)
{
    tk_dbview_sh_t *v = tk_db_view;
    uint64_t need = w ? w[0] : 0;
    int64_t now = tk_now_ms();
    static unsigned rr; /* ties go round the replicas */
    tk_db_state_t *best = NULL;
    int64_t best_load = 0;
    rr++;
    for (int k = 0; k < tk_db_nbe - 1; k++) {
        int i = 1 + (int)((rr + (unsigned)k) % (unsigned)(tk_db_nbe - 1));
        tk_db_state_t *s = &tk_db_be[i];
        const tk_dbview_be_sh_t *b = &v->be[i];
        if (!s->enabled || now < s->down_until_ms || now < s->skip_until_ms)
            continue;
        if (__atomic_load_n(&b->health, __ATOMIC_RELAXED) != TK_DBVIEW_OK)
            continue;
        if (need && __atomic_load_n(&b->lsn, __ATOMIC_RELAXED) < need)
            continue; /* has not replayed the client's write yet */
        int64_t load = __atomic_load_n(&b->inflight, __ATOMIC_RELAXED);
        if (best == NULL || load < best_load) {
            best = s;
            best_load = load;
        }
    }
    return best;
}

tk_db_state_t *tk_db_route_read(void)
{
    uint64_t *w = req_words();
    tk_dbview_sh_t *v = tk_db_view;
    if (tk_db_nbe <= 1 || v == NULL || __atomic_load_n(&v->read_from_primary, __ATOMIC_RELAXED) ||
        (w && (w[1] & (RW_WROTE | RW_PRIMARY))))
        return chosen(w, &tk_db_be[0]); /* read after write in one request: the primary */
    tk_db_state_t *r = pick_replica(w);
    return chosen(w, r ? r : &tk_db_be[0]);
}

tk_db_state_t *tk_db_route_read_fallback(void)
{
    uint64_t *w = req_words();
    if (tk_db_nbe <= 1 || tk_db_view == NULL || (w && (w[1] & RW_WROTE)))
        return NULL;
    tk_db_state_t *r = pick_replica(w);
    return r ? chosen(w, r) : NULL;
}

void tk_db_route_failed(tk_db_state_t *s)
{
    s->skip_until_ms = tk_now_ms() + TK_DB_SKIP_MS;
    if (tk_db_view && s->idx < TK_DBVIEW_MAX)
        __atomic_fetch_add(&tk_db_view->be[s->idx].fallbacks, 1, __ATOMIC_RELAXED);
}

void tk_db_route_inflight(const tk_db_state_t *s, int delta)
{
    /* only with replicas to choose from: a primary-only instance pays no shared atomics */
    if (tk_db_view == NULL || tk_db_nbe <= 1 || s->idx >= TK_DBVIEW_MAX)
        return;
    tk_dbview_be_sh_t *b = &tk_db_view->be[s->idx];
    __atomic_fetch_add(&b->inflight, delta, __ATOMIC_RELAXED);
    if (delta > 0)
        __atomic_fetch_add(&b->routed, 1, __ATOMIC_RELAXED);
}

int tk_db_lsn_parse(const char *s, size_t n, uint64_t *out)
{
    /* "X/Y", each 1-8 hex digits (PostgreSQL's pg_lsn text form) */
    uint64_t hi = 0, lo = 0;
    size_t i = 0, d = 0;
    for (; i < n && s[i] != '/'; i++, d++) {
        int c = s[i], v = c >= '0' && c <= '9'   ? c - '0'
                          : c >= 'a' && c <= 'f' ? c - 'a' + 10
                          : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                                 : -1;
        if (v < 0 || d >= 8)
            return -1;
        hi = hi << 4 | (uint64_t)v;
    }
    if (d == 0 || i >= n)
        return -1;
    d = 0;
    for (i++; i < n; i++, d++) {
        int c = s[i], v = c >= '0' && c <= '9'   ? c - '0'
                          : c >= 'a' && c <= 'f' ? c - 'a' + 10
                          : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                                 : -1;
        if (v < 0 || d >= 8)
            return -1;
        lo = lo << 4 | (uint64_t)v;
    }
    if (d == 0)
        return -1;
    *out = hi << 32 | lo;
    return 0;
}

int tk_db_lsn_format(uint64_t lsn, char *buf, size_t len)
{
    int n = snprintf(buf, len, "%X/%X", (unsigned)(lsn >> 32), (unsigned)(lsn & 0xffffffffu));
    return n > 0 && (size_t)n < len ? n : -1;
}
