/* broker_int.h: the slot table's index checks, lists and grants (broker.c, broker_repair.c). */
#ifndef TK_BROKER_INT_H
#define TK_BROKER_INT_H

#include <stdint.h>
#include <time.h>

#include "shm/broker.h"

/* Untrusted indices. Every worker can write the segment, and the master, which
 * runs as root, runs the reclaim, the repair and the checker on it. So on
 * those paths every index and count read from the table is loaded once (LD)
 * and range-checked where it is used, and every walk is bounded: a corrupted
 * or hostile table costs wrong books, never a write outside the table or a
 * hang in the master. */
#define LD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

static inline int e_ok(int32_t e)
{
    return e >= 0 && e < TK_BROKER_MAX_WAITERS;
}
static inline int s_ok(int32_t s)
{
    return s >= 0 && s < TK_BROKER_MAX_SLOTS;
}
static inline int w_ok(int32_t w)
{
    return w >= 0 && w < TK_BROKER_MAX_WORKERS;
}
/* db.max_open as read from the table, clamped to the arrays. */
static inline int nslots(const tk_broker_sh_t *b)
{
    uint32_t m = LD(b->max_open);
    return m > TK_BROKER_MAX_SLOTS ? TK_BROKER_MAX_SLOTS : (int)m;
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Raise a high-water mark other processes may raise at the same time. */
static inline void hwm_raise(uint32_t *hwm, uint32_t v)
{
    uint32_t cur = __atomic_load_n(hwm, __ATOMIC_RELAXED);
    while (v > cur &&
           !__atomic_compare_exchange_n(hwm, &cur, v, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
}

/* --- lists (indices into b->entries, -1 = none) ------------------------------------ */

static inline void q_push(tk_broker_sh_t *b, int e)
{
    tk_broker_entry_sh_t *x = &b->entries[e];
    int32_t t = LD(b->qtail);
    x->next = -1;
    x->prev = t;
    if (e_ok(t))
        b->entries[t].next = e;
    else
        b->qhead = e;
    b->qtail = e;
}

static inline void q_remove(tk_broker_sh_t *b, int e)
{
    tk_broker_entry_sh_t *x = &b->entries[e];
    int32_t p = LD(x->prev), n = LD(x->next);
    if (e_ok(p))
        b->entries[p].next = n;
    else
        b->qhead = n;
    if (e_ok(n))
        b->entries[n].prev = p;
    else
        b->qtail = p;
    x->prev = x->next = -1;
}

static inline void w_push(tk_broker_sh_t *b, tk_broker_worker_sh_t *w, int e)
{
    tk_broker_entry_sh_t *x = &b->entries[e];
    int32_t t = LD(w->wtail);
    x->wnext = -1;
    x->wprev = t;
    if (e_ok(t))
        b->entries[t].wnext = e;
    else
        w->whead = e;
    w->wtail = e;
    w->nwaiting++;
}

static inline void w_remove(tk_broker_sh_t *b, tk_broker_worker_sh_t *w, int e)
{
    tk_broker_entry_sh_t *x = &b->entries[e];
    int32_t p = LD(x->wprev), n = LD(x->wnext);
    if (e_ok(p))
        b->entries[p].wnext = n;
    else
        w->whead = n;
    if (e_ok(n))
        b->entries[n].wprev = p;
    else
        w->wtail = p;
    x->wprev = x->wnext = -1;
    w->nwaiting--;
}

/* Granted list of a worker: doubly linked through prev/next, pushed at head. */
static inline void g_push(tk_broker_sh_t *b, tk_broker_worker_sh_t *w, int e)
{
    tk_broker_entry_sh_t *x = &b->entries[e];
    int32_t h = LD(w->ghead);
    x->prev = -1;
    x->next = h;
    if (e_ok(h))
        b->entries[h].prev = e;
    w->ghead = e;
}

static inline void g_remove(tk_broker_sh_t *b, tk_broker_worker_sh_t *w, int e)
{
    tk_broker_entry_sh_t *x = &b->entries[e];
    int32_t p = LD(x->prev), n = LD(x->next);
    if (e_ok(p))
        b->entries[p].next = n;
    else
        w->ghead = n;
    if (e_ok(n))
        b->entries[n].prev = p;
    x->prev = x->next = -1;
}

static inline void e_free(tk_broker_sh_t *b, int e)
{
    tk_broker_entry_sh_t *x = &b->entries[e];
    x->state = TK_BROKER_ENTRY_FREE;
    x->slot = -1;
    x->pid = 0;
    x->worker = -1;
    x->prev = -1;
    x->wprev = x->wnext = -1;
    x->next = b->efree;
    b->efree = e;
}

static inline void s_free(tk_broker_sh_t *b, int s)
{
    tk_broker_slot_sh_t *x = &b->slots[s];
    x->state = TK_BROKER_SLOT_FREE;
    x->worker = -1;
    x->pid = 0;
    x->gen = 0;
    x->entry = -1;
    x->idle = 0;
    x->moving = 0;
    x->since_ns = now_ns();
    x->next_free = b->sfree;
    b->sfree = s;
    b->nfree++;
}

static inline int s_pop(tk_broker_sh_t *b)
{
    int32_t s = LD(b->sfree);
    if (!s_ok(s)) {
        b->sfree = -1; /* (a broken list: the slots wait for the next repair) */
        return -1;
    }
    b->sfree = LD(b->slots[s].next_free);
    b->slots[s].next_free = -1;
    b->nfree--;
    return s;
}

static inline void s_hold(tk_broker_sh_t *b, int s, int w)
{
    tk_broker_slot_sh_t *x = &b->slots[s];
    x->state = TK_BROKER_SLOT_HELD;
    x->worker = w;
    x->pid = b->workers[w].pid;
    x->gen = b->workers[w].gen;
    x->entry = -1;
    x->idle = 0;
    x->moving = 0;
    x->since_ns = now_ns();
}

/* Take waiting entry e out of the queue. */
static inline void unqueue(tk_broker_sh_t *b, int e)
{
    int32_t w = LD(b->entries[e].worker);
    q_remove(b, e);
    if (w_ok(w))
        w_remove(b, &b->workers[w], e);
    b->qlen--;
}

/* Promise slot s (owned by nobody or being passed on) to waiting entry e.
 * Returns the worker to wake, or -1 if the entry names no valid worker (it
 * is dropped; the caller still owns s). */
static inline int grant(tk_broker_sh_t *b, int s, int e)
{
    tk_broker_entry_sh_t *x = &b->entries[e];
    tk_broker_slot_sh_t *sl = &b->slots[s];
    int32_t w = LD(x->worker);
    if (x->state == TK_BROKER_ENTRY_WAITING)
        unqueue(b, e); /* (a PROMISED one is out of the queue already) */
    if (!w_ok(w)) {
        e_free(b, e);
        return -1;
    }
    sl->state = TK_BROKER_SLOT_GRANTED;
    sl->worker = w;
    sl->pid = x->pid;
    sl->gen = x->gen;
    sl->entry = e;
    sl->idle = 0;
    sl->moving = 0;
    sl->since_ns = now_ns();
    x->slot = s;
    x->state = TK_BROKER_ENTRY_GRANTED;
    g_push(b, &b->workers[w], e);
    b->workers[w].nheld++;
    return w;
}

/* Serve queued entries with free slots (after a reclaim or a repair). Marks
 * the workers to wake in wake[] (by index). At most one pass per queue entry
 * and slot: a looping list can't hold the caller. */
static inline void serve_free(tk_broker_sh_t *b, unsigned char *wake)
{
    for (int n = 0; n < TK_BROKER_MAX_WAITERS + TK_BROKER_MAX_SLOTS; n++) {
        int32_t h = LD(b->qhead);
        if (!e_ok(h) || LD(b->entries[h].state) != TK_BROKER_ENTRY_WAITING || LD(b->sfree) < 0)
            break;
        int s = s_pop(b);
        if (s < 0)
            break;
        int w = grant(b, s, h);
        if (w < 0)
            s_free(b, s);
        else if (wake)
            wake[w] = 1;
    }
}

#endif
