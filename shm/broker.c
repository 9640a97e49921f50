/* broker.c: the global connection-slot table and FIFO wait queue in shared memory. */
#include "config.h"

#include "shm/broker_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* Release policy (tk_broker_release()): connections cannot move between
 * processes, so handing a slot to another worker's waiter costs closing our
 * connection and that worker opening a new one: a PostgreSQL backend start,
 * ~10 ms of database CPU (measured on a 2-core machine). Strict FIFO would do that on
 * (N-1)/N of all releases under even load; measured, it cut /db throughput
 * from ~12k to under 1k requests/s. So a release with waiters queued serves:
 *   1. the global head, directly, when it belongs to this worker;
 *   2. else the global head, at once, if its worker holds two or more slots
 *      fewer than this one and it has waited local_bias_ns (towards an even
 *      share: rich to poor only, so no ping-pong; see poorer_head_due());
 *   3. else, if this worker has no waiter of its own, nobody: the connection
 *      stays idle here (warm); db.c gives idle connections up once they have
 *      been idle TK_DB_STEAL_GRACE_MS while others queue (it is woken when
 *      they do), so a lightly loaded worker doesn't pay two backend starts
 *      per request;
 *   4. else this worker's own oldest waiter, unless the global head has waited
 *      more than twice as long as it, plus local_bias_ns, and a move is due:
 *      at most one per move_interval_ns across all workers (connections drift
 *      towards the workers whose queues are longer, without ping-pong), or
 *      at once when the head has waited starve_ns: nobody starves;
 *   5. else the global head: the slot moves (close here, connect there).
 * A slot freed without a connection (tk_broker_free_slot()) has nothing to
 * keep and always goes to the head. local_bias_ns = 0 makes it strict FIFO
 * (tests).
 *
 * The cap is kept at the server, not only in these books: a backend outlives
 * PQfinish() by a moment (until the process has exited: pg_stat_activity
 * still shows it), so a slot whose connection is to be closed is never freed
 * or granted by tk_broker_release(). It answers CLOSE_IDLE (db.max_idle
 * reached) or CLOSE_MOVE (rule 2 or 5: the head is another worker's), the
 * slot stays HELD by the releasing worker (a move's waiter is PROMISED it:
 * out of the queue, so that releases meanwhile don't move more slots for it,
 * and counted for its worker in rule 2), and db.c calls
 * tk_broker_free_slot() once it has seen the end of the backend's socket
 * (PostgreSQL keeps it open until the process dies, for such "synchronous
 * closes"); only then does the slot go to the head or the free list.
 *
 * What this guarantees: (a) nobody starves: a head that has waited starve_ns
 * (db.c: 3/4 of db.acquire_timeout) takes the next release anywhere, and a
 * waiter reaches the head in ticket order; (b) between workers, the head is
 * passed over by a worker holding two more slots than its own only for
 * local_bias_ns; otherwise for a local waiter only while it has waited at
 * most twice as long as that waiter + local_bias_ns, or within
 * move_interval_ns of the last move, and for an idle connection only during
 * TK_DB_STEAL_GRACE_MS plus one db.c tick. tests/integration/test_broker_fairness.py checks the
 * fairness bound, per-worker p99 wait <= 2 x the global p99,
 * under even and uneven loads. A stricter rule (the 2x bound with no rate
 * limit, idle connections given up after 10 ms) was measured: as fair, but
 * under contention each move's backend start made the next waits longer and
 * moves fed on themselves (/updates at db.max_open 4 over 4 workers: ~1,400
 * instead of ~7,000 requests in 4 s, every wait ~145 ms), and, before
 * slots waited for the old backend's exit (above), a closed backend that
 * lingered in pg_stat_activity after PQfinish() showed max_open + 1 there
 * when moves were frequent. Waiting for the exit costs each move or close
 * the backend's exit time before the slot is reused: median 4.8 ms on this
 * box (idle database), 20-40 ms with the box saturated. */

static int g_wake_fds[TK_BROKER_MAX_WORKERS];
static int g_nwake;

/* --- init and the lock -------------------------------------------------------------- */

int tk_broker_sh_init(tk_broker_sh_t *b, unsigned max_open)
{
    pthread_mutexattr_t ma;
    int r;

    memset(b, 0, sizeof(*b));
    if (max_open < 1)
        max_open = 1;
    if (max_open > TK_BROKER_MAX_SLOTS)
        max_open = TK_BROKER_MAX_SLOTS;
    b->magic = TK_BROKER_MAGIC;
    b->version = TK_BROKER_VERSION;
    b->size = (uint32_t)sizeof(*b);
    b->max_open = max_open;
    b->max_idle = max_open;
    b->local_bias_ns = TK_BROKER_LOCAL_BIAS_NS;
    b->move_interval_ns = TK_BROKER_MOVE_INTERVAL_NS;
    b->starve_ns = TK_BROKER_STARVE_NS;
    b->qhead = b->qtail = -1;
    b->efree = -1;
    b->sfree = -1;
    for (int e = TK_BROKER_MAX_WAITERS - 1; e >= 0; e--)
        e_free(b, e);
    for (int s = TK_BROKER_MAX_SLOTS - 1; s >= 0; s--) {
        b->slots[s].state = TK_BROKER_SLOT_FREE;
        b->slots[s].worker = -1;
        b->slots[s].entry = -1;
        b->slots[s].next_free = -1;
    }
    for (int s = (int)max_open - 1; s >= 0; s--)
        s_free(b, s);
    for (int w = 0; w < TK_BROKER_MAX_WORKERS; w++) {
        b->workers[w].whead = b->workers[w].wtail = -1;
        b->workers[w].ghead = -1;
    }

    /* Robust: a worker killed while holding the lock must not wedge the others.
     * (PTHREAD_MUTEX_ROBUST is an enum in glibc: no #ifdef.) */
    if ((r = pthread_mutexattr_init(&ma)) != 0)
        goto fail;
    if ((r = pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED)) != 0 ||
        (r = pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST)) != 0 ||
        (r = pthread_mutex_init(&b->lock, &ma)) != 0) {
        pthread_mutexattr_destroy(&ma);
        goto fail;
    }
    pthread_mutexattr_destroy(&ma);
    return 0;
fail:
    errno = r;
    return -1;
}

int tk_broker_set_max_idle(tk_broker_sh_t *b, unsigned max_idle)
{
    if (tk_broker_lock_timed(b, TK_BROKER_MASTER_LOCK_MS) != 0)
        return -1;
    unsigned mo = (unsigned)nslots(b);
    b->max_idle = (max_idle == 0 || max_idle > mo) ? mo : max_idle;
    tk_broker_unlock(b);
    return 0;
}

void tk_broker_set_starve(tk_broker_sh_t *b, uint64_t starve_ns)
{
    if (tk_broker_lock(b) != 0)
        return;
    b->starve_ns = starve_ns;
    tk_broker_unlock(b);
}

/* After pthread_mutex_*lock() returned r. */
static int locked(tk_broker_sh_t *b, int r)
{
    if (r == 0)
        return 0;
    if (r == EOWNERDEAD) {
        /* The holder died inside a section: validate and rebuild the data,
         * then mark the mutex usable again. Everyone is woken afterwards
         * because a grant may have been lost or made by the repair. */
        tk_broker_repair_locked(b);
        b->repairs++;
        pthread_mutex_consistent(&b->lock);
        for (int w = 0; w < g_nwake; w++)
            tk_broker_wake(w);
        return 0;
    }
    errno = r;
    return -1;
}

int tk_broker_lock(tk_broker_sh_t *b)
{
    return locked(b, pthread_mutex_lock(&b->lock));
}

int tk_broker_lock_timed(tk_broker_sh_t *b, unsigned timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return locked(b, pthread_mutex_clocklock(&b->lock, CLOCK_MONOTONIC, &ts));
}

void tk_broker_unlock(tk_broker_sh_t *b)
{
    pthread_mutex_unlock(&b->lock);
}

/* --- worker side ---------------------------------------------------------------------- */

/* Drop everything recorded for worker slot w (match_pid 0) or process pid.
 * Returns the number of slots freed; freed slots then serve the queue. */
static int reclaim_locked(tk_broker_sh_t *b, int w, pid_t pid, unsigned char *wake, int *nent)
{
    int freed = 0, bad = 0;
    *nent = 0;
    /* Every index below comes from the table (see LD): out of range, the
     * books it would have adjusted are left alone and a repair is run. */
    for (int e = 0; e < TK_BROKER_MAX_WAITERS; e++) {
        tk_broker_entry_sh_t *x = &b->entries[e];
        uint32_t st = LD(x->state);
        int32_t xw = LD(x->worker);
        if (st == TK_BROKER_ENTRY_FREE)
            continue;
        if (pid ? LD(x->pid) != pid : xw != w)
            continue;
        if (st == TK_BROKER_ENTRY_WAITING) {
            unqueue(b, e);
        } else if (st == TK_BROKER_ENTRY_PROMISED) {
            int32_t xs = LD(x->slot);
            if (s_ok(xs))
                b->slots[xs].entry = -1; /* its slot's holder frees it to the head */
            if (w_ok(xw))
                b->workers[xw].nin--;
            bad |= !s_ok(xs) || !w_ok(xw);
        } else if (w_ok(xw)) {
            g_remove(b, &b->workers[xw], e); /* its slot is freed below */
        } else {
            bad = 1;
        }
        e_free(b, e);
        (*nent)++;
    }
    for (int s = 0; s < nslots(b); s++) {
        tk_broker_slot_sh_t *x = &b->slots[s];
        uint32_t st = LD(x->state);
        int32_t xw = LD(x->worker), xe = LD(x->entry);
        if (st == TK_BROKER_SLOT_FREE)
            continue;
        if (pid ? LD(x->pid) != pid : xw != w)
            continue;
        if (w_ok(xw)) {
            tk_broker_worker_sh_t *wk = &b->workers[xw];
            if (st == TK_BROKER_SLOT_HELD && x->idle) {
                b->nidle--;
                wk->nidle--;
            }
            wk->nheld--;
            if (st == TK_BROKER_SLOT_HELD && x->moving)
                wk->nout--;
        } else {
            bad = 1;
        }
        x->moving = 0;
        int to = -1;
        if (st == TK_BROKER_SLOT_HELD && xe >= 0) {
            if (e_ok(xe) && LD(b->entries[xe].state) == TK_BROKER_ENTRY_PROMISED &&
                LD(b->entries[xe].slot) == s) {
                int32_t ew = LD(b->entries[xe].worker);
                if (w_ok(ew))
                    b->workers[ew].nin--;
                to = grant(b, s, xe); /* it was promised to a waiter */
            } else {
                bad = 1;
            }
        }
        if (to >= 0) {
            if (wake)
                wake[to] = 1;
        } else {
            s_free(b, s);
        }
        freed++;
    }
    if (bad)
        tk_broker_repair_locked(b);
    serve_free(b, wake);
    return freed;
}

static void zero_gauges(tk_broker_sh_t *b, tk_broker_worker_sh_t *wk)
{
    /* a dead worker's local waiters are gone with it */
    uint64_t lw = __atomic_exchange_n(&wk->st.local_waiting, 0, __ATOMIC_RELAXED);
    __atomic_fetch_sub(&b->lwaiting, (uint32_t)lw, __ATOMIC_RELAXED);
    __atomic_store_n(&wk->st.open, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&wk->st.in_use, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&wk->st.idle, 0, __ATOMIC_RELAXED);
}

static void wake_marked(const unsigned char *wake)
{
    for (int w = 0; w < TK_BROKER_MAX_WORKERS; w++)
        if (wake[w])
            tk_broker_wake(w);
}

uint32_t tk_broker_worker_attach(tk_broker_sh_t *b, int w, pid_t pid)
{
    unsigned char wake[TK_BROKER_MAX_WORKERS] = {0};
    uint32_t gen;

    if (w < 0 || w >= TK_BROKER_MAX_WORKERS || tk_broker_lock(b) != 0)
        return 0;
    int nent;
    reclaim_locked(b, w, 0, wake, &nent);
    b->workers[w].pid = (int32_t)pid;
    gen = ++b->workers[w].gen;
    if ((uint32_t)w + 1 > b->nworkers)
        b->nworkers = (uint32_t)w + 1;
    zero_gauges(b, &b->workers[w]);
    tk_broker_unlock(b);
    wake_marked(wake);
    return gen;
}

tk_broker_acq_t tk_broker_acquire(tk_broker_sh_t *b, int w, uint32_t gen, int *slot, int *entry,
                                  uint64_t *ticket, int *wake)
{
    tk_broker_worker_sh_t *wk = &b->workers[w];
    int e;

    *wake = -1;
    if (tk_broker_lock(b) != 0)
        return TK_BROKER_ERROR;
    if (b->qlen == 0 && b->sfree >= 0) {
        int s = s_pop(b);
        s_hold(b, s, w);
        wk->nheld++;
        tk_broker_unlock(b);
        *slot = s;
        return TK_BROKER_GOT;
    }
    e = b->efree;
    if (e < 0) {
        tk_broker_unlock(b);
        return TK_BROKER_FULL;
    }
    tk_broker_entry_sh_t *x = &b->entries[e];
    b->efree = x->next;
    x->state = TK_BROKER_ENTRY_WAITING;
    x->worker = w;
    x->pid = wk->pid;
    x->gen = gen;
    x->ticket = ++b->next_ticket;
    x->enq_ns = now_ns();
    x->slot = -1;
    q_push(b, e);
    w_push(b, wk, e);
    if (++b->qlen > b->qhwm)
        b->qhwm = b->qlen;
    hwm_raise(&b->twhwm, b->qlen + __atomic_load_n(&b->lwaiting, __ATOMIC_RELAXED));
    /* Ask another worker to give a connection up: one that sits on an idle
     * one, else one that holds any (its shared pipelined connections don't
     * count as idle, but it gives one up when it learns that others queue). */
    for (int i = 0; i < (int)b->nworkers; i++)
        if (i != w && b->workers[i].nidle > 0) {
            *wake = i;
            break;
        }
    if (*wake < 0 && b->nidle == 0)
        for (int i = 0; i < (int)b->nworkers; i++)
            if (i != w && b->workers[i].nheld > 0) {
                *wake = i;
                break;
            }
    *entry = e;
    *ticket = x->ticket;
    tk_broker_unlock(b);
    return TK_BROKER_QUEUED;
}

int tk_broker_try_acquire(tk_broker_sh_t *b, int w, int *slot)
{
    int s = -1;

    /* Unlocked hint first: under load the answer is usually "none", and the
     * lock is shared by every worker. */
    if (__atomic_load_n(&b->nfree, __ATOMIC_RELAXED) == 0 || tk_broker_lock(b) != 0)
        return -1;
    if (b->qlen == 0 && b->sfree >= 0) {
        s = s_pop(b);
        s_hold(b, s, w);
        b->workers[w].nheld++;
    }
    tk_broker_unlock(b);
    *slot = s;
    return s >= 0 ? 0 : -1;
}

static void keep_idle(tk_broker_sh_t *b, int w, int s)
{
    b->slots[s].idle = 1;
    b->slots[s].since_ns = now_ns();
    b->nidle++;
    b->workers[w].nidle++;
}

/* Rule 2: the head's worker holds at least two slots fewer than this one
 * (typically none while this one has two or more) and its head has waited
 * local_bias_ns: it gets this slot at once, whatever this worker's own queue.
 * Such moves go from a richer worker to a poorer one only, so they can't
 * ping-pong; they keep a lightly loaded worker, whose few waiters would
 * otherwise have to out-age the busy workers' whole queues, from waiting
 * far longer than everyone else (test_broker_fairness's uneven load). */
static int poorer_head_due(const tk_broker_sh_t *b, const tk_broker_worker_sh_t *wk, int h)
{
    const tk_broker_entry_sh_t *x = &b->entries[h];
    uint64_t now = now_ns();
    /* slots on their way count for the receiver, not the giver: while a
     * move waits for its backend to exit, no second one is made for it */
    return b->workers[x->worker].nheld + b->workers[x->worker].nin + 1 < wk->nheld - wk->nout &&
           now > x->enq_ns && now - x->enq_ns > b->local_bias_ns;
}

/* Hand slot s (held by w, connection kept or not) on. keep: the connection
 * is healthy and may stay in this worker. */
static tk_broker_rel_t pass_on(tk_broker_sh_t *b, int w, int s, int keep, int *entry, int *wake)
{
    tk_broker_worker_sh_t *wk = &b->workers[w];
    int h = b->qhead;
    int pick = -1;

    if (h < 0)
        return TK_BROKER_FREED;
    if (b->entries[h].worker == w) {
        pick = h;
    } else if (keep && b->local_bias_ns > 0 && poorer_head_due(b, wk, h)) {
        b->last_move_ns = now_ns(); /* towards balance: pick stays -1, it moves */
    } else if (keep && b->local_bias_ns > 0) {
        if (wk->whead < 0) {
            /* Nobody here waits: keep it warm for this worker's next
             * request; if others still queue once it has been idle for a
             * grace period, db.c gives it up (tk_broker_free_slot()). */
            keep_idle(b, w, s);
            return TK_BROKER_KEEP_IDLE;
        }
        /* Our oldest waiter, unless the global head has waited more than
         * twice as long (+ local_bias_ns) and a move is due: at most one
         * per migrate_interval_ns, or at once for a head about to starve. */
        uint64_t now = now_ns();
        uint64_t lenq = b->entries[wk->whead].enq_ns, henq = b->entries[h].enq_ns;
        uint64_t age_l = now > lenq ? now - lenq : 0, age_h = now > henq ? now - henq : 0;
        uint64_t bound = age_l > b->local_bias_ns ? age_l : b->local_bias_ns;
        int due = age_h > age_l + bound &&
                  (now - b->last_move_ns >= b->move_interval_ns || age_h >= b->starve_ns);
        if (!due)
            pick = wk->whead;
        else
            b->last_move_ns = now;
    }
    if (pick >= 0) {
        /* Served inside this worker: the entry is done with at once; the
         * caller finds its waiter by the index (its own table, no yield
         * in between). */
        unqueue(b, pick);
        e_free(b, pick);
        *entry = pick;
        s_hold(b, s, w);
        return TK_BROKER_TO_LOCAL;
    }
    if (keep) {
        /* The slot moves, but its connection is still open here: it stays
         * held by w (counted against max_open) until db.c has seen the
         * backend go and calls tk_broker_free_slot(), which grants it. The
         * head is promised it now, out of the queue, so that the releases
         * meanwhile don't move more slots for the same waiter. */
        tk_broker_entry_sh_t *x = &b->entries[h];
        unqueue(b, h);
        x->state = TK_BROKER_ENTRY_PROMISED;
        x->slot = s;
        b->slots[s].entry = h;
        b->slots[s].moving = 1;
        b->workers[x->worker].nin++;
        wk->nout++;
        return TK_BROKER_CLOSE_MOVE;
    }
    wk->nheld--;
    *wake = grant(b, s, h);
    return TK_BROKER_TO_REMOTE;
}

tk_broker_rel_t tk_broker_release(tk_broker_sh_t *b, int w, int s, int *entry, int *wake)
{
    tk_broker_rel_t r;

    *entry = -1;
    *wake = -1;
    if (tk_broker_lock(b) != 0)
        return TK_BROKER_CLOSE_IDLE; /* can't happen; closing is the safe answer */
    if (b->qhead < 0) {
        if (b->nidle >= b->max_idle) {
            /* Still held by w until its backend is gone (free_slot). */
            r = TK_BROKER_CLOSE_IDLE;
        } else {
            keep_idle(b, w, s);
            r = TK_BROKER_KEEP_IDLE;
        }
    } else {
        r = pass_on(b, w, s, 1, entry, wake);
    }
    tk_broker_unlock(b);
    return r;
}

tk_broker_rel_t tk_broker_free_slot(tk_broker_sh_t *b, int w, int s, int *entry, int *wake)
{
    tk_broker_rel_t r;

    *entry = -1;
    *wake = -1;
    if (tk_broker_lock(b) != 0)
        return TK_BROKER_FREED;
    if (b->slots[s].idle) {
        b->slots[s].idle = 0;
        b->nidle--;
        b->workers[w].nidle--;
    }
    if (b->slots[s].moving) {
        b->slots[s].moving = 0;
        b->workers[w].nout--;
    }
    if (b->slots[s].entry >= 0) {
        /* closed for a move: the slot goes to the waiter promised it */
        int e = b->slots[s].entry;
        b->workers[w].nheld--;
        b->workers[b->entries[e].worker].nin--;
        *wake = grant(b, s, e);
        r = TK_BROKER_TO_REMOTE;
    } else if (b->qhead < 0) {
        b->workers[w].nheld--;
        s_free(b, s);
        r = TK_BROKER_FREED;
    } else {
        r = pass_on(b, w, s, 0, entry, wake);
    }
    tk_broker_unlock(b);
    return r;
}

void tk_broker_idle_take(tk_broker_sh_t *b, int w, int s)
{
    if (tk_broker_lock(b) != 0)
        return;
    if (b->slots[s].idle) {
        b->slots[s].idle = 0;
        b->slots[s].since_ns = now_ns();
        b->nidle--;
        b->workers[w].nidle--;
    }
    tk_broker_unlock(b);
}

int tk_broker_next_grant(tk_broker_sh_t *b, int w, int *entry, uint64_t *ticket, int *slot)
{
    tk_broker_worker_sh_t *wk = &b->workers[w];
    int e;

    if (tk_broker_lock(b) != 0)
        return 0;
    e = wk->ghead;
    if (e < 0) {
        tk_broker_unlock(b);
        return 0;
    }
    g_remove(b, wk, e);
    *entry = e;
    *ticket = b->entries[e].ticket;
    *slot = b->entries[e].slot;
    s_hold(b, *slot, w);
    e_free(b, e);
    tk_broker_unlock(b);
    return 1;
}

int tk_broker_cancel(tk_broker_sh_t *b, int w, int entry, uint64_t ticket, int *slot)
{
    tk_broker_entry_sh_t *x = &b->entries[entry];
    int r = 0;

    if (tk_broker_lock(b) != 0)
        return 0;
    if (x->ticket != ticket || x->worker != w) {
        r = 0; /* already gone (reclaimed or served) */
    } else if (x->state == TK_BROKER_ENTRY_WAITING) {
        unqueue(b, entry);
        e_free(b, entry);
    } else if (x->state == TK_BROKER_ENTRY_PROMISED) {
        /* its slot is still closing elsewhere: it goes to the head then */
        b->slots[x->slot].entry = -1;
        b->workers[w].nin--;
        e_free(b, entry);
    } else if (x->state == TK_BROKER_ENTRY_GRANTED) {
        g_remove(b, &b->workers[w], entry);
        *slot = x->slot;
        s_hold(b, x->slot, w);
        e_free(b, entry);
        r = 1;
    }
    tk_broker_unlock(b);
    return r;
}

uint64_t tk_broker_head_age_ns(tk_broker_sh_t *b)
{
    uint64_t age = 0, now = now_ns();
    if (tk_broker_lock(b) != 0)
        return 0;
    if (b->qhead >= 0 && now > b->entries[b->qhead].enq_ns)
        age = now - b->entries[b->qhead].enq_ns;
    tk_broker_unlock(b);
    return age;
}

int tk_broker_head_worker(tk_broker_sh_t *b)
{
    int w = -1;
    if (tk_broker_lock(b) != 0)
        return -1;
    if (b->qhead >= 0)
        w = b->entries[b->qhead].worker;
    tk_broker_unlock(b);
    return w;
}

unsigned tk_broker_qlen(const tk_broker_sh_t *b)
{
    return __atomic_load_n(&b->qlen, __ATOMIC_RELAXED);
}

/* --- master side ---------------------------------------------------------------------- */

int tk_broker_reclaim_pid(tk_broker_sh_t *b, pid_t pid)
{
    unsigned char wake[TK_BROKER_MAX_WORKERS] = {0};
    int n, nent;

    if (pid <= 0) {
        errno = EINVAL;
        return -1;
    }
    if (tk_broker_lock_timed(b, TK_BROKER_MASTER_LOCK_MS) != 0)
        return -1;
    n = reclaim_locked(b, -1, pid, wake, &nent);
    for (int w = 0; w < TK_BROKER_MAX_WORKERS; w++)
        if (LD(b->workers[w].pid) == pid) {
            b->workers[w].pid = 0;
            zero_gauges(b, &b->workers[w]);
        }
    if (n > 0 || nent > 0)
        b->reclaims++;
    tk_broker_unlock(b);
    wake_marked(wake);
    return n;
}

/* --- wake-up eventfds ----------------------------------------------------------------- */

int tk_broker_wake_create(int n)
{
    if (n < 0 || n > TK_BROKER_MAX_WORKERS) {
        errno = EINVAL;
        return -1;
    }
    for (int i = g_nwake; i < n; i++) {
        int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            tk_broker_wake_close();
            errno = e;
            return -1;
        }
        g_wake_fds[i] = fd;
        g_nwake = i + 1;
    }
    return 0;
}

void tk_broker_wake_close(void)
{
    for (int i = 0; i < g_nwake; i++)
        close(g_wake_fds[i]);
    g_nwake = 0;
}

int tk_broker_wake_fd(int w)
{
    return (w >= 0 && w < g_nwake) ? g_wake_fds[w] : -1;
}

void tk_broker_wake(int w)
{
    uint64_t one = 1;
    int fd = tk_broker_wake_fd(w);
    if (fd >= 0) {
        ssize_t r = write(fd, &one, sizeof(one));
        (void)r; /* EAGAIN: the counter is already non-zero, the wake is pending */
    }
}

uint64_t tk_broker_wake_drain(int w)
{
    uint64_t v = 0;
    int fd = tk_broker_wake_fd(w);
    if (fd < 0 || read(fd, &v, sizeof(v)) != (ssize_t)sizeof(v))
        return 0;
    return v;
}

/* --- statistics --------------------------------------------------------------------------- */

uint64_t tk_broker_hist_bound_us(int i)
{
    /* 1000 * 2^(k/4), k = 0..3 */
    static const uint64_t frac[4] = {1000, 1189, 1414, 1682};
    if (i < 0)
        return 0;
    if (i >= TK_BROKER_HIST_BUCKETS - 1)
        return UINT64_MAX;
    return ((100ull << (i >> 2)) * frac[i & 3] + 500) / 1000;
}

static void hist_add(tk_broker_stats_t *st, uint64_t ns)
{
    uint64_t us = ns / 1000u;
    int i = 0;
    /* skip whole octaves first: bound(4k) = 100 << k */
    while (i + 4 < TK_BROKER_HIST_BUCKETS - 1 && us > (100ull << ((i + 4) >> 2)))
        i += 4;
    while (i < TK_BROKER_HIST_BUCKETS - 1 && us > tk_broker_hist_bound_us(i))
        i++;
    __atomic_fetch_add(&st->wait_count, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&st->wait_ns, ns, __ATOMIC_RELAXED);
    __atomic_fetch_add(&st->wait_hist[i], 1, __ATOMIC_RELAXED);
}

void tk_broker_stats_wait(tk_broker_sh_t *b, int w, uint64_t ns)
{
    hist_add(&b->workers[w].st, ns);
}

void tk_broker_stats_wait_local(tk_broker_sh_t *b, int w, uint64_t ns)
{
    hist_add(&b->workers[w].st, ns);
    __atomic_fetch_add(&b->workers[w].st.wait_count_local, 1, __ATOMIC_RELAXED);
}

void tk_broker_local_waiting(tk_broker_sh_t *b, int w, int delta)
{
    __atomic_fetch_add(&b->workers[w].st.local_waiting, (uint64_t)(int64_t)delta, __ATOMIC_RELAXED);
    uint32_t n = __atomic_add_fetch(&b->lwaiting, (uint32_t)delta, __ATOMIC_RELAXED);
    if (delta > 0) {
        hwm_raise(&b->lwhwm, n);
        hwm_raise(&b->twhwm, n + __atomic_load_n(&b->qlen, __ATOMIC_RELAXED));
    }
}

uint64_t tk_broker_hist_quantile_us(const uint64_t *hist, double q)
{
    uint64_t n = 0, cum = 0;
    for (int i = 0; i < TK_BROKER_HIST_BUCKETS; i++)
        n += hist[i];
    if (n == 0)
        return 0;
    for (int i = 0; i < TK_BROKER_HIST_BUCKETS; i++) {
        cum += hist[i];
        if ((double)cum >= q * (double)n)
            return tk_broker_hist_bound_us(i);
    }
    return UINT64_MAX;
}

void tk_broker_stats_add(tk_broker_sh_t *b, int w, size_t off, int64_t delta)
{
    uint64_t *p = (uint64_t *)((char *)&b->workers[w].st + off);
    __atomic_fetch_add(p, (uint64_t)delta, __ATOMIC_RELAXED);
}

void tk_broker_stats(const tk_broker_sh_t *b, int w, tk_broker_stats_t *out)
{
    const size_t n = sizeof(tk_broker_stats_t) / sizeof(uint64_t);
    uint64_t *o = (uint64_t *)out;
    int lo = w < 0 ? 0 : w, hi = w < 0 ? TK_BROKER_MAX_WORKERS : w + 1;

    memset(out, 0, sizeof(*out));
    if (w >= TK_BROKER_MAX_WORKERS)
        return;
    for (int i = lo; i < hi; i++) {
        const uint64_t *p = (const uint64_t *)&b->workers[i].st;
        for (size_t k = 0; k < n; k++)
            o[k] += __atomic_load_n(&p[k], __ATOMIC_RELAXED);
    }
}
