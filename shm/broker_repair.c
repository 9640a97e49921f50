/* broker_repair.c: the master's repair of the broker table after a crash, and its checker. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>

#include "shm/broker_int.h"

/* Waiting entries sorted by ticket. The tickets are copied out first: a
 * comparator reading the shared table could see them change mid-sort. */
typedef struct {
    uint64_t ticket;
    int32_t e;
} tk_broker_order_t;

static int cmp_ticket(const void *a, const void *c)
{
    uint64_t x = ((const tk_broker_order_t *)a)->ticket, y = ((const tk_broker_order_t *)c)->ticket;
    return x < y ? -1 : x > y;
}

int tk_broker_repair_locked(tk_broker_sh_t *b)
{
    static tk_broker_order_t order[TK_BROKER_MAX_WAITERS]; /* under the lock: one user at a time */
    uint32_t old_qlen = b->qlen, old_nfree = b->nfree, old_nidle = b->nidle;
    int32_t old_qhead = b->qhead;
    int changed = 0, n = 0;
    char err[128];

    changed = tk_broker_check_locked(b, err, sizeof(err)) != 0;
    if (b->max_open < 1 || b->max_open > TK_BROKER_MAX_SLOTS) {
        b->max_open = b->max_open < 1 ? 1 : TK_BROKER_MAX_SLOTS;
        changed = 1;
    }
    int ns = nslots(b);

    /* Slots and entries are the truth; a state that disagrees with its peer
     * (the dead holder stopped between the two writes of a grant) falls back
     * to the safe side: a GRANTED slot whose entry does not point back is
     * freed, a GRANTED entry whose slot does not point back is dropped. Each
     * index is read once and written back checked (see LD). */
    for (int s = 0; s < ns; s++) {
        tk_broker_slot_sh_t *x = &b->slots[s];
        uint32_t st = LD(x->state);
        int32_t e = LD(x->entry), w = LD(x->worker);
        if (st == TK_BROKER_SLOT_GRANTED &&
            (!e_ok(e) || b->entries[e].state != TK_BROKER_ENTRY_GRANTED || b->entries[e].slot != s))
            st = TK_BROKER_SLOT_FREE;
        if (st != TK_BROKER_SLOT_FREE && st != TK_BROKER_SLOT_GRANTED && st != TK_BROKER_SLOT_HELD)
            st = TK_BROKER_SLOT_FREE;
        if (st != TK_BROKER_SLOT_FREE && !w_ok(w))
            st = TK_BROKER_SLOT_FREE;
        if (st == TK_BROKER_SLOT_HELD && e >= 0 &&
            (!e_ok(e) || b->entries[e].state != TK_BROKER_ENTRY_PROMISED ||
             b->entries[e].slot != s))
            e = -1; /* a broken promise: the slot goes to the head when freed */
        if (st == TK_BROKER_SLOT_FREE)
            e = -1, w = -1;
        x->state = st;
        x->entry = e;
        x->worker = w;
    }
    for (int e = 0; e < TK_BROKER_MAX_WAITERS; e++) {
        tk_broker_entry_sh_t *x = &b->entries[e];
        uint32_t st = LD(x->state);
        int32_t w = LD(x->worker), s = LD(x->slot);
        if (st > TK_BROKER_ENTRY_PROMISED || (st != TK_BROKER_ENTRY_FREE && !w_ok(w)))
            st = TK_BROKER_ENTRY_FREE;
        if (st == TK_BROKER_ENTRY_GRANTED &&
            (s < 0 || s >= ns || b->slots[s].state != TK_BROKER_SLOT_GRANTED ||
             b->slots[s].entry != e))
            st = TK_BROKER_ENTRY_FREE;
        if (st == TK_BROKER_ENTRY_PROMISED &&
            (s < 0 || s >= ns || b->slots[s].state != TK_BROKER_SLOT_HELD ||
             b->slots[s].entry != e))
            st = TK_BROKER_ENTRY_WAITING; /* queued again, in ticket order below */
        x->state = st;
        x->worker = st == TK_BROKER_ENTRY_FREE ? -1 : w;
    }

    /* Rebuild every list and count. */
    b->qhead = b->qtail = -1;
    b->qlen = 0;
    b->efree = -1;
    b->sfree = -1;
    b->nfree = 0;
    b->nidle = 0;
    for (int w = 0; w < TK_BROKER_MAX_WORKERS; w++) {
        tk_broker_worker_sh_t *wk = &b->workers[w];
        wk->whead = wk->wtail = -1;
        wk->ghead = -1;
        wk->nwaiting = wk->nheld = wk->nidle = wk->nout = wk->nin = 0;
    }
    for (int e = TK_BROKER_MAX_WAITERS - 1; e >= 0; e--) {
        tk_broker_entry_sh_t *x = &b->entries[e];
        uint32_t st = LD(x->state);
        int32_t w = LD(x->worker);
        if (st == TK_BROKER_ENTRY_FREE || !w_ok(w))
            e_free(b, e);
        else if (st == TK_BROKER_ENTRY_WAITING)
            order[n].ticket = LD(x->ticket), order[n++].e = e;
        else if (st == TK_BROKER_ENTRY_GRANTED)
            g_push(b, &b->workers[w], e);
        /* PROMISED: on no list */
    }
    qsort(order, (size_t)n, sizeof(order[0]), cmp_ticket);
    for (int i = 0; i < n; i++) {
        int32_t e = order[i].e, w = LD(b->entries[e].worker);
        if (!w_ok(w)) {
            e_free(b, e);
            continue;
        }
        q_push(b, e);
        w_push(b, &b->workers[w], e);
        b->qlen++;
    }
    for (int s = ns - 1; s >= 0; s--) {
        tk_broker_slot_sh_t *x = &b->slots[s];
        uint32_t st = LD(x->state);
        int32_t w = LD(x->worker), e = LD(x->entry);
        if (st == TK_BROKER_SLOT_FREE || !w_ok(w)) {
            s_free(b, s);
            continue;
        }
        b->workers[w].nheld++;
        if (st != TK_BROKER_SLOT_HELD)
            x->moving = 0;
        if (x->moving)
            b->workers[w].nout++;
        if (st == TK_BROKER_SLOT_HELD && e_ok(e)) {
            int32_t ew = LD(b->entries[e].worker);
            if (w_ok(ew))
                b->workers[ew].nin++;
        }
        if (st == TK_BROKER_SLOT_HELD && x->idle) {
            b->workers[w].nidle++;
            b->nidle++;
        } else {
            x->idle = 0;
        }
    }
    if (b->qlen > b->qhwm)
        b->qhwm = b->qlen;
    serve_free(b, NULL);
    if (old_qlen != b->qlen || old_nfree != b->nfree || old_nidle != b->nidle ||
        old_qhead != b->qhead)
        changed = 1;
    return changed;
}

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            snprintf(err, errlen, __VA_ARGS__);                                                    \
            return -1;                                                                             \
        }                                                                                          \
    } while (0)

int tk_broker_check_locked(const tk_broker_sh_t *b, char *err, size_t errlen)
{
    uint32_t nheld[TK_BROKER_MAX_WORKERS] = {0}, nidle[TK_BROKER_MAX_WORKERS] = {0};
    uint32_t nout[TK_BROKER_MAX_WORKERS] = {0}, nin[TK_BROKER_MAX_WORKERS] = {0};
    uint32_t nfree = 0, totidle = 0, n = 0;
    uint64_t last = 0;
    int prev = -1;

    CHECK(b->magic == TK_BROKER_MAGIC && b->version == TK_BROKER_VERSION, "bad magic/version");
    CHECK(b->max_open >= 1 && b->max_open <= TK_BROKER_MAX_SLOTS, "bad max_open %u", b->max_open);
    /* (read once and range-checked before use: see LD) */
    for (int s = 0; s < nslots(b); s++) {
        const tk_broker_slot_sh_t *x = &b->slots[s];
        uint32_t st = LD(x->state);
        int32_t w = LD(x->worker), e = LD(x->entry);
        if (st == TK_BROKER_SLOT_FREE) {
            nfree++;
            continue;
        }
        CHECK(w_ok(w), "slot %d: worker %d", s, w);
        nheld[w]++;
        if (st == TK_BROKER_SLOT_GRANTED) {
            CHECK(e_ok(e) && b->entries[e].state == TK_BROKER_ENTRY_GRANTED &&
                      b->entries[e].slot == s,
                  "slot %d granted to entry %d that does not point back", s, e);
        } else {
            CHECK(e < 0 || (e_ok(e) && b->entries[e].state == TK_BROKER_ENTRY_PROMISED &&
                            b->entries[e].slot == s),
                  "slot %d promised to entry %d that does not point back", s, e);
            nout[w] += x->moving != 0;
            if (e >= 0) {
                int32_t ew = LD(b->entries[e].worker);
                CHECK(w_ok(ew), "entry %d: worker %d", e, ew);
                nin[ew]++;
            }
            if (x->idle) {
                nidle[w]++;
                totidle++;
            }
        }
    }
    CHECK(nfree == b->nfree, "nfree %u, counted %u", b->nfree, nfree);
    CHECK(totidle == b->nidle, "nidle %u, counted %u", b->nidle, totidle);
    n = 0;
    for (int s = LD(b->sfree); s >= 0; s = LD(b->slots[s].next_free)) {
        CHECK(s < nslots(b) && b->slots[s].state == TK_BROKER_SLOT_FREE, "slot %d on the free list",
              s);
        CHECK(++n <= nfree, "slot free list longer than nfree");
    }
    CHECK(n == nfree, "slot free list has %u, nfree %u", n, nfree);
    CHECK(b->qlen == 0 || nfree == 0, "%u free slots while %u wait", nfree, b->qlen);

    n = 0;
    for (int e = LD(b->qhead); e >= 0; e = LD(b->entries[e].next)) {
        CHECK(e_ok(e) && b->entries[e].state == TK_BROKER_ENTRY_WAITING,
              "entry %d in queue not waiting", e);
        const tk_broker_entry_sh_t *x = &b->entries[e];
        CHECK(x->prev == prev, "entry %d: prev %d, expected %d", e, x->prev, prev);
        CHECK(n == 0 || x->ticket > last, "queue not in ticket order at entry %d", e);
        CHECK(++n <= b->qlen && n <= TK_BROKER_MAX_WAITERS, "queue longer than qlen %u", b->qlen);
        last = x->ticket;
        prev = e;
    }
    CHECK(n == b->qlen, "queue has %u, qlen %u", n, b->qlen);
    CHECK(prev == b->qtail, "qtail %d, last %d", b->qtail, prev);

    for (int w = 0; w < TK_BROKER_MAX_WORKERS; w++) {
        const tk_broker_worker_sh_t *wk = &b->workers[w];
        CHECK(wk->nheld == nheld[w], "worker %d: nheld %u, counted %u", w, wk->nheld, nheld[w]);
        CHECK(wk->nidle == nidle[w], "worker %d: nidle %u, counted %u", w, wk->nidle, nidle[w]);
        CHECK(wk->nout == nout[w] && wk->nin == nin[w], "worker %d: nout %u/%u, nin %u/%u", w,
              wk->nout, nout[w], wk->nin, nin[w]);
        n = 0;
        prev = -1;
        for (int e = LD(wk->whead); e >= 0; e = LD(b->entries[e].wnext)) {
            CHECK(e_ok(e) && b->entries[e].state == TK_BROKER_ENTRY_WAITING &&
                      b->entries[e].worker == w,
                  "worker %d: entry %d on its waiting list", w, e);
            CHECK(b->entries[e].wprev == prev, "worker %d: entry %d wprev", w, e);
            CHECK(++n <= wk->nwaiting && n <= TK_BROKER_MAX_WAITERS,
                  "worker %d: waiting list too long", w);
            prev = e;
        }
        CHECK(n == wk->nwaiting && prev == wk->wtail, "worker %d: waiting list %u/%u", w, n,
              wk->nwaiting);
        n = 0;
        for (int e = LD(wk->ghead); e >= 0; e = LD(b->entries[e].next)) {
            CHECK(e_ok(e) && b->entries[e].state == TK_BROKER_ENTRY_GRANTED &&
                      b->entries[e].worker == w,
                  "worker %d: entry %d on its granted list", w, e);
            CHECK(++n <= TK_BROKER_MAX_SLOTS, "worker %d: granted list loops", w);
        }
    }
    n = 0;
    for (int e = LD(b->efree); e >= 0; e = LD(b->entries[e].next)) {
        CHECK(e_ok(e) && b->entries[e].state == TK_BROKER_ENTRY_FREE,
              "entry %d free-listed, not free", e);
        CHECK(++n <= TK_BROKER_MAX_WAITERS, "entry free list loops");
    }
    {
        uint32_t nused = 0;
        for (int e = 0; e < TK_BROKER_MAX_WAITERS; e++)
            nused += b->entries[e].state != TK_BROKER_ENTRY_FREE;
        CHECK(n + nused == TK_BROKER_MAX_WAITERS, "entries: %u free-listed + %u used", n, nused);
    }
    return 0;
}
