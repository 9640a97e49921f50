/* metrics.c: per-worker counters in shared memory: seqlock writer, snapshot/merge/percentile
 * readers. */
#include "config.h"

#include "shm/metrics.h"
#include "shm/procstat.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The slot this process writes, and a private fallback so shm-less runs and
 * unit tests work without a segment. */
static tk_metrics_sh_t tk_metrics_private;
static tk_metrics_sh_t *M = &tk_metrics_private;

/* Last values of per-process counters (scheduler, CPU) already added to the
 * slot: each process publishes only deltas, so a respawn never resets totals. */
static struct {
    uint64_t gt_created, gt_exited, gt_switches, gt_long_runs;
    uint64_t cpu_user_ns, cpu_sys_ns;
    uint64_t cache_hits, cache_misses, cache_errors;
    uint64_t cache_bypasses, cache_timeouts, cache_lat_sum_us, cache_lat_count;
    uint64_t cache_lat[TK_CACHE_LAT_NBUCKETS];
} tk_metrics_last;

static const char *const tk_metrics_err_names[TK_METRICS_ERR_N] = {
    [TK_METRICS_ERR_PARSE] = "parse",
    [TK_METRICS_ERR_LIMIT] = "limit",
    [TK_METRICS_ERR_TIMEOUT] = "timeout",
    [TK_METRICS_ERR_5XX] = "5xx",
};

const char *tk_metrics_err_name(tk_metrics_err_t kind)
{
    return (unsigned)kind < TK_METRICS_ERR_N ? tk_metrics_err_names[kind] : "?";
}

/* --- seqlock, writer side (only the bound process writes its slot) ---------------- */

static inline void tk_metrics_wbegin(tk_metrics_sh_t *m)
{
    uint64_t s = __atomic_load_n(&m->seq, __ATOMIC_RELAXED);
    __atomic_store_n(&m->seq, s + 1, __ATOMIC_RELAXED);
    /* data stores below must not become visible before the odd sequence */
    __atomic_thread_fence(__ATOMIC_RELEASE);
}

static inline void tk_metrics_wend(tk_metrics_sh_t *m)
{
    uint64_t s = __atomic_load_n(&m->seq, __ATOMIC_RELAXED);
    __atomic_store_n(&m->seq, s + 1, __ATOMIC_RELEASE);
}

/* A predecessor killed between wbegin and wend leaves the sequence odd; readers
 * would never see a stable copy again, so the next owner (or the master on
 * reap) makes it even. The half-done update is at worst one request off. */
static void tk_metrics_repair(tk_metrics_sh_t *m)
{
    uint64_t s = __atomic_load_n(&m->seq, __ATOMIC_ACQUIRE);
    if (s & 1)
        __atomic_store_n(&m->seq, s + 1, __ATOMIC_RELEASE);
}

static void tk_metrics_zero_gauges(tk_metrics_sh_t *m)
{
    m->conns_active = m->conns_idle = 0;
    memset(m->gt_by_state, 0, sizeof(m->gt_by_state));
    m->stack_reserved = m->stack_resident = m->pooled_stacks = 0;
    m->rss_bytes = 0;
    m->cache_connected = 0;
    /* the topology is the dead process's own view: it goes with it */
    memset(&m->cache_topo, 0, sizeof(m->cache_topo));
}

static uint64_t tk_metrics_clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t tk_metrics_now_sec(void)
{
    /* the coarse clock is a vDSO read of the last tick: no syscall, a few ns */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec;
}

void tk_metrics_bind(tk_metrics_sh_t *slot)
{
    M = slot ? slot : &tk_metrics_private;
    memset(&tk_metrics_last, 0, sizeof(tk_metrics_last));
    tk_metrics_repair(M);
    tk_metrics_wbegin(M);
    tk_metrics_zero_gauges(M);
    M->proc_start_ns = tk_metrics_clock_ns(CLOCK_REALTIME);
    M->binds++;
    tk_metrics_wend(M);
    __atomic_store_n(&M->live.pid, (uint32_t)getpid(), __ATOMIC_RELAXED);
    __atomic_store_n(&M->live.accepting, 0, __ATOMIC_RELAXED);
    tk_metrics_heartbeat();
}

tk_metrics_sh_t *tk_metrics_slot(void)
{
    return M;
}

void tk_metrics_route_register(unsigned id, const char *name)
{
    if (id >= TK_METRICS_MAX_ROUTES || !name)
        return;
    tk_metrics_wbegin(M);
    tk_metrics_route_sh_t *r = &M->routes[id];
    size_t n = strlen(name);
    if (n >= sizeof(r->name))
        n = sizeof(r->name) - 1;
    /* a different route in this id (routes changed by a reload) starts afresh */
    if (strncmp(r->name, name, sizeof(r->name)) != 0 || strlen(r->name) != n) {
        memset(r, 0, sizeof(*r));
        memcpy(r->name, name, n);
    }
    if (id + 1 > M->nroutes)
        M->nroutes = id + 1;
    tk_metrics_wend(M);
}

/* --- histogram ------------------------------------------------------------------------- */

unsigned tk_metrics_bucket(uint64_t us)
{
    if (us >= TK_METRICS_MAX_US)
        return TK_METRICS_NBUCKETS - 1;
    if (us < TK_METRICS_SUB)
        return (unsigned)us;
    unsigned e = 63u - (unsigned)__builtin_clzll(us); /* >= SUB_BITS */
    unsigned sub = (unsigned)(us >> (e - TK_METRICS_SUB_BITS)) & (TK_METRICS_SUB - 1);
    return TK_METRICS_SUB + (e - TK_METRICS_SUB_BITS) * TK_METRICS_SUB + sub;
}

void tk_metrics_bucket_bounds(unsigned b, uint64_t *lo, uint64_t *hi)
{
    if (b >= TK_METRICS_NBUCKETS - 1) {
        *lo = TK_METRICS_MAX_US;
        *hi = UINT64_MAX;
        return;
    }
    if (b < TK_METRICS_SUB) {
        *lo = b;
        *hi = b + 1;
        return;
    }
    unsigned g = (b - TK_METRICS_SUB) / TK_METRICS_SUB;
    unsigned sub = (b - TK_METRICS_SUB) % TK_METRICS_SUB;
    *lo = (uint64_t)(TK_METRICS_SUB + sub) << g;
    *hi = (uint64_t)(TK_METRICS_SUB + sub + 1) << g;
    if (*hi > TK_METRICS_MAX_US)
        *hi = TK_METRICS_MAX_US;
}

/* --- worker-side updates ------------------------------------------------------------ */

static inline tk_metrics_sec_sh_t *tk_metrics_sec(tk_metrics_sh_t *m)
{
    uint64_t now = tk_metrics_now_sec();
    tk_metrics_sec_sh_t *e = &m->ring[now % TK_METRICS_RING];
    if (e->sec != now) {
        e->sec = now;
        e->requests = e->errors = e->bytes_in = e->bytes_out = 0;
    }
    return e;
}

void tk_metrics_request(unsigned route_id, int status, uint64_t latency_ns, uint64_t bytes_in,
                        uint64_t bytes_out)
{
    tk_metrics_sh_t *m = M;
    unsigned cls = (status >= 100 && status <= 599) ? (unsigned)status / 100u : 0u;
    uint64_t us = latency_ns / 1000u;

    tk_metrics_wbegin(m);
    m->requests++;
    m->status[cls]++;
    m->bytes_in += bytes_in;
    m->bytes_out += bytes_out;
    m->latency_us_sum += us;
    m->hist[tk_metrics_bucket(us)]++;
    tk_metrics_sec_sh_t *e = tk_metrics_sec(m);
    e->requests++;
    e->bytes_in += bytes_in;
    e->bytes_out += bytes_out;
    if (cls == 5) {
        m->errors[TK_METRICS_ERR_5XX]++;
        e->errors++;
    }
    if (route_id < TK_METRICS_MAX_ROUTES) {
        tk_metrics_route_sh_t *r = &m->routes[route_id];
        r->requests++;
        r->status[cls]++;
        r->latency_us_sum += us;
    }
    tk_metrics_wend(m);
}

void tk_metrics_conn_accepted(void)
{
    tk_metrics_wbegin(M);
    M->conns_accepted++;
    tk_metrics_wend(M);
}

void tk_metrics_conn_closed(void)
{
    tk_metrics_wbegin(M);
    M->conns_closed++;
    tk_metrics_wend(M);
}

void tk_metrics_conns_set(uint64_t active, uint64_t idle)
{
    tk_metrics_wbegin(M);
    M->conns_active = active;
    M->conns_idle = idle;
    tk_metrics_wend(M);
}

void tk_metrics_error(tk_metrics_err_t kind)
{
    if ((unsigned)kind >= TK_METRICS_ERR_N)
        return;
    tk_metrics_wbegin(M);
    M->errors[kind]++;
    tk_metrics_sec(M)->errors++;
    tk_metrics_wend(M);
}

/* cur - *last, remembering cur; a counter that went backwards (a new scheduler
 * in the same process) counts from zero. */
static inline uint64_t tk_metrics_delta(uint64_t cur, uint64_t *last)
{
    uint64_t d = cur >= *last ? cur - *last : cur;
    *last = cur;
    return d;
}

void tk_metrics_sched_publish(const tk_sched_stats_t *st)
{
    tk_metrics_wbegin(M);
    for (unsigned i = 0; i < TK_GT_NSTATES; i++)
        M->gt_by_state[i] = st->by_state[i];
    M->gt_created += tk_metrics_delta(st->created, &tk_metrics_last.gt_created);
    M->gt_exited += tk_metrics_delta(st->exited, &tk_metrics_last.gt_exited);
    M->gt_switches += tk_metrics_delta(st->switches, &tk_metrics_last.gt_switches);
    M->gt_long_runs += tk_metrics_delta(st->long_runs, &tk_metrics_last.gt_long_runs);
    M->stack_reserved = st->stack_reserved;
    M->stack_resident = st->stack_resident;
    M->pooled_stacks = st->pooled_stacks;
    if (st->stack_max_used > M->stack_max_used) /* kept across respawns */
        M->stack_max_used = st->stack_max_used;
    tk_metrics_wend(M);
}

void tk_metrics_cache_publish(uint64_t hits, uint64_t misses, uint64_t errors, int connected)
{
    tk_metrics_wbegin(M);
    M->cache_hits += tk_metrics_delta(hits, &tk_metrics_last.cache_hits);
    M->cache_misses += tk_metrics_delta(misses, &tk_metrics_last.cache_misses);
    M->cache_errors += tk_metrics_delta(errors, &tk_metrics_last.cache_errors);
    M->cache_connected = connected ? 1 : 0;
    tk_metrics_wend(M);
}

void tk_metrics_cache_stats_publish(const tk_cache_stats_t *st)
{
    tk_metrics_wbegin(M);
    M->cache_hits += tk_metrics_delta(st->hits, &tk_metrics_last.cache_hits);
    M->cache_misses += tk_metrics_delta(st->misses, &tk_metrics_last.cache_misses);
    M->cache_errors += tk_metrics_delta(st->errors + st->timeouts, &tk_metrics_last.cache_errors);
    M->cache_bypasses += tk_metrics_delta(st->bypasses, &tk_metrics_last.cache_bypasses);
    M->cache_timeouts += tk_metrics_delta(st->timeouts, &tk_metrics_last.cache_timeouts);
    M->cache_lat_sum_us += tk_metrics_delta(st->lat_sum_us, &tk_metrics_last.cache_lat_sum_us);
    M->cache_lat_count += tk_metrics_delta(st->lat_count, &tk_metrics_last.cache_lat_count);
    for (unsigned i = 0; i < TK_CACHE_LAT_NBUCKETS; i++)
        M->cache_lat[i] += tk_metrics_delta(st->lat_buckets[i], &tk_metrics_last.cache_lat[i]);
    M->cache_connected = st->connected ? 1 : 0;
    tk_metrics_wend(M);
}

void tk_metrics_cache_topo_publish(const tk_cache_topo_t *t)
{
    tk_metrics_wbegin(M);
    M->cache_topo = *t;
    tk_metrics_wend(M);
}

/* A slot's strings come from shared memory: never trust their terminator. */
static int topo_addr_eq(const char *a, const char *b)
{
    return strncmp(a, b, TK_CACHE_NODE_ADDR) == 0;
}

void tk_metrics_cache_topo_merge(tk_cache_topo_t *d, const tk_cache_topo_t *s)
{
    if (s->master[0] && (d->master[0] == '\0' || s->failovers > d->failovers))
        memcpy(d->master, s->master, sizeof(d->master));
    d->master[TK_CACHE_NODE_ADDR - 1] = '\0';
    if (s->failovers > d->failovers)
        d->failovers = s->failovers;
    if (s->sentinels > d->sentinels)
        d->sentinels = s->sentinels;
    if (s->read_replicas > d->read_replicas)
        d->read_replicas = s->read_replicas;
    d->switch_messages += s->switch_messages;
    d->sentinel_queries += s->sentinel_queries;
    d->sentinel_errors += s->sentinel_errors;
    d->unknown_master += s->unknown_master;
    d->role_mismatches += s->role_mismatches;
    d->replica_reads += s->replica_reads;
    d->inval_waits += s->inval_waits;
    d->inval_wait_short += s->inval_wait_short;
    d->inval_wait_us_sum += s->inval_wait_us_sum;
    if (s->inval_wait_us_max > d->inval_wait_us_max)
        d->inval_wait_us_max = s->inval_wait_us_max;
    for (unsigned i = 0; i < TK_CACHE_MAX_NODES; i++) {
        const tk_cache_node_stats_t *sn = &s->nodes[i];
        tk_cache_node_stats_t *dn = NULL;
        if (sn->addr[0] == '\0')
            continue;
        for (unsigned j = 0; j < TK_CACHE_MAX_NODES && dn == NULL; j++)
            if (topo_addr_eq(d->nodes[j].addr, sn->addr))
                dn = &d->nodes[j];
        for (unsigned j = 0; j < TK_CACHE_MAX_NODES && dn == NULL; j++)
            if (d->nodes[j].addr[0] == '\0') {
                dn = &d->nodes[j];
                memcpy(dn->addr, sn->addr, sizeof(dn->addr));
                dn->addr[TK_CACHE_NODE_ADDR - 1] = '\0';
            }
        if (dn == NULL)
            continue; /* more distinct nodes than entries: the rest are left out */
        if (sn->role != TK_CACHE_ROLE_NONE && sn->role <= TK_CACHE_ROLE_REPLICA)
            dn->role = sn->role;
        dn->reading += sn->reading ? 1 : 0; /* workers reading from it */
        dn->commands += sn->commands;
        dn->errors += sn->errors;
        dn->lat_sum_us += sn->lat_sum_us;
        dn->lat_count += sn->lat_count;
    }
}

int tk_metrics_proc_publish(void)
{
    tk_procstat_t ps;
    if (tk_procstat_read(0, &ps) < 0)
        return -1;
    uint64_t utime = ps.utime_ticks, stime = ps.stime_ticks;
    long hz = sysconf(_SC_CLK_TCK);
    long page = sysconf(_SC_PAGESIZE);
    if (hz <= 0)
        hz = 100;
    uint64_t u_ns = (uint64_t)utime * (1000000000ull / (uint64_t)hz);
    uint64_t s_ns = (uint64_t)stime * (1000000000ull / (uint64_t)hz);

    tk_metrics_wbegin(M);
    M->cpu_user_ns += tk_metrics_delta(u_ns, &tk_metrics_last.cpu_user_ns);
    M->cpu_sys_ns += tk_metrics_delta(s_ns, &tk_metrics_last.cpu_sys_ns);
    M->rss_bytes = ps.rss_pages * (uint64_t)page;
    tk_metrics_wend(M);
    return 0;
}

void tk_metrics_heartbeat(void)
{
    __atomic_store_n(&M->live.heartbeat_ns, tk_metrics_clock_ns(CLOCK_MONOTONIC), __ATOMIC_RELAXED);
}

void tk_metrics_set_accepting(int on)
{
    __atomic_store_n(&M->live.accepting, on ? 1u : 0u, __ATOMIC_RELAXED);
}

void tk_metrics_reap(tk_metrics_sh_t *slot)
{
    tk_metrics_repair(slot);
    tk_metrics_wbegin(slot);
    tk_metrics_zero_gauges(slot);
    tk_metrics_wend(slot);
    __atomic_store_n(&slot->live.accepting, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&slot->live.pid, 0, __ATOMIC_RELAXED);
}

/* --- reader side -------------------------------------------------------------------- */

/* Copy the used part of a slot: everything before the routes, and the routes
 * registered so far (a smaller copy is more likely to fit between two updates). */
static void tk_metrics_copy(tk_metrics_sh_t *dst, const tk_metrics_sh_t *src)
{
    size_t head = offsetof(tk_metrics_sh_t, routes);
    memcpy(dst, src, head);
    uint64_t n = dst->nroutes;
    if (n > TK_METRICS_MAX_ROUTES)
        n = TK_METRICS_MAX_ROUTES;
    memcpy(dst->routes, src->routes, n * sizeof(dst->routes[0]));
    /* a worker wrote the names: the copy's are always terminated */
    for (uint64_t i = 0; i < n; i++)
        dst->routes[i].name[sizeof(dst->routes[i].name) - 1] = '\0';
    memset(dst->routes + n, 0, (TK_METRICS_MAX_ROUTES - n) * sizeof(dst->routes[0]));
}

int tk_metrics_snapshot(const tk_metrics_sh_t *slot, tk_metrics_snap_t *out)
{
    /* Bounded by time, not tries. A writer preempted mid-update needs a
     * scheduler tick to finish; one whose sequence stays on the same odd value
     * for 50 ms is dead (or stopped), and a slightly torn copy beats hanging
     * tenkctl. A live writer that keeps moving gets up to 1 s. */
    uint64_t start = 0, stuck_since = 0, last = 0;
    for (unsigned tries = 0;; tries++) {
        uint64_t s1 = __atomic_load_n(&slot->seq, __ATOMIC_ACQUIRE);
        if (!(s1 & 1)) {
            tk_metrics_copy(&out->m, slot);
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            uint64_t s2 = __atomic_load_n(&slot->seq, __ATOMIC_RELAXED);
            if (s1 == s2) {
                out->torn = 0;
                return 0;
            }
        }
        if (tries % 64 == 63) {
            uint64_t now = tk_metrics_clock_ns(CLOCK_MONOTONIC);
            if (!start)
                start = stuck_since = now;
            if (s1 != last)
                stuck_since = now;
            last = s1;
            if (now - stuck_since >= 50000000ull || now - start >= 1000000000ull)
                break;
            /* let a preempted writer run */
            struct timespec ts = {0, 20000};
            nanosleep(&ts, NULL);
        }
    }
    tk_metrics_copy(&out->m, slot);
    out->torn = 1;
    return 1;
}

int tk_metrics_snapshot_nowait(const tk_metrics_sh_t *slot, tk_metrics_snap_t *out)
{
    for (unsigned tries = 0; tries < TK_METRICS_SNAP_TRIES; tries++) {
        uint64_t s1 = __atomic_load_n(&slot->seq, __ATOMIC_ACQUIRE);
        if (s1 & 1)
            continue;
        tk_metrics_copy(&out->m, slot);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&slot->seq, __ATOMIC_RELAXED) == s1) {
            out->torn = 0;
            return 0;
        }
    }
    tk_metrics_copy(&out->m, slot);
    out->torn = 1;
    return 1;
}

void tk_metrics_merge(tk_metrics_snap_t *dst, const tk_metrics_snap_t *src)
{
    tk_metrics_sh_t *d = &dst->m;
    const tk_metrics_sh_t *s = &src->m;

    dst->torn |= src->torn;
    if (s->live.heartbeat_ns > d->live.heartbeat_ns)
        d->live.heartbeat_ns = s->live.heartbeat_ns;
    d->live.accepting += s->live.accepting;
    d->requests += s->requests;
    for (unsigned i = 0; i < 6; i++)
        d->status[i] += s->status[i];
    d->bytes_in += s->bytes_in;
    d->bytes_out += s->bytes_out;
    d->conns_accepted += s->conns_accepted;
    d->conns_closed += s->conns_closed;
    d->conns_active += s->conns_active;
    d->conns_idle += s->conns_idle;
    for (unsigned i = 0; i < TK_METRICS_ERR_N; i++)
        d->errors[i] += s->errors[i];
    d->latency_us_sum += s->latency_us_sum;
    for (unsigned i = 0; i < TK_GT_NSTATES; i++)
        d->gt_by_state[i] += s->gt_by_state[i];
    d->gt_created += s->gt_created;
    d->gt_exited += s->gt_exited;
    d->gt_switches += s->gt_switches;
    d->gt_long_runs += s->gt_long_runs;
    d->stack_reserved += s->stack_reserved;
    d->stack_resident += s->stack_resident;
    d->pooled_stacks += s->pooled_stacks;
    if (s->stack_max_used > d->stack_max_used)
        d->stack_max_used = s->stack_max_used;
    d->rss_bytes += s->rss_bytes;
    d->cpu_user_ns += s->cpu_user_ns;
    d->cpu_sys_ns += s->cpu_sys_ns;
    d->binds += s->binds;
    d->cache_hits += s->cache_hits;
    d->cache_misses += s->cache_misses;
    d->cache_errors += s->cache_errors;
    d->cache_connected += s->cache_connected;
    d->cache_bypasses += s->cache_bypasses;
    d->cache_timeouts += s->cache_timeouts;
    d->cache_lat_sum_us += s->cache_lat_sum_us;
    d->cache_lat_count += s->cache_lat_count;
    for (unsigned i = 0; i < TK_CACHE_LAT_NBUCKETS; i++)
        d->cache_lat[i] += s->cache_lat[i];
    tk_metrics_cache_topo_merge(&d->cache_topo, &s->cache_topo);
    for (unsigned i = 0; i < TK_METRICS_NBUCKETS; i++)
        d->hist[i] += s->hist[i];

    /* ring: entries of the same second add up; a newer second replaces an older */
    for (unsigned i = 0; i < TK_METRICS_RING; i++) {
        const tk_metrics_sec_sh_t *se = &s->ring[i];
        tk_metrics_sec_sh_t *de = &d->ring[i];
        if (se->sec == 0 || se->sec < de->sec)
            continue;
        if (se->sec > de->sec) {
            *de = *se;
            continue;
        }
        de->requests += se->requests;
        de->errors += se->errors;
        de->bytes_in += se->bytes_in;
        de->bytes_out += se->bytes_out;
    }

    /* routes by name: workers of different generations may number them differently */
    for (unsigned i = 0; i < TK_METRICS_MAX_ROUTES; i++) {
        const tk_metrics_route_sh_t *sr = &s->routes[i];
        if (!sr->name[0])
            continue;
        tk_metrics_route_sh_t *dr = NULL;
        for (unsigned j = 0; j < TK_METRICS_MAX_ROUTES; j++) {
            if (!d->routes[j].name[0]) {
                if (!dr)
                    dr = &d->routes[j];
                continue;
            }
            if (strncmp(d->routes[j].name, sr->name, TK_METRICS_ROUTE_NAME) == 0) {
                dr = &d->routes[j];
                break;
            }
        }
        if (!dr)
            continue; /* more distinct names than slots: drop the surplus */
        if (!dr->name[0])
            memcpy(dr->name, sr->name, sizeof(dr->name));
        dr->requests += sr->requests;
        for (unsigned k = 0; k < 6; k++)
            dr->status[k] += sr->status[k];
        dr->latency_us_sum += sr->latency_us_sum;
        unsigned idx = (unsigned)(dr - d->routes);
        if (idx + 1 > d->nroutes)
            d->nroutes = idx + 1;
    }
}

double tk_metrics_percentile(const tk_metrics_snap_t *s, double p)
{
    uint64_t total = 0;
    for (unsigned i = 0; i < TK_METRICS_NBUCKETS; i++)
        total += s->m.hist[i];
    if (total == 0)
        return 0.0;
    if (p < 0)
        p = 0;
    if (p > 100)
        p = 100;
    /* the smallest bucket whose cumulative count reaches rank = ceil(p% of total) */
    double r = p / 100.0 * (double)total;
    uint64_t rank = (uint64_t)r;
    if ((double)rank < r)
        rank++;
    if (rank == 0)
        rank = 1;
    uint64_t cum = 0;
    for (unsigned b = 0; b < TK_METRICS_NBUCKETS; b++) {
        cum += s->m.hist[b];
        if (cum >= rank) {
            uint64_t lo, hi;
            tk_metrics_bucket_bounds(b, &lo, &hi);
            if (b == TK_METRICS_NBUCKETS - 1)
                return (double)lo;
            /* the middle of the bucket: at most half a bucket (3.1%) off */
            return ((double)lo + (double)hi) / 2.0;
        }
    }
    return (double)TK_METRICS_MAX_US;
}

double tk_metrics_mean_us(const tk_metrics_snap_t *s)
{
    return s->m.requests ? (double)s->m.latency_us_sum / (double)s->m.requests : 0.0;
}

void tk_metrics_rate(const tk_metrics_snap_t *s, uint64_t now_sec, unsigned seconds,
                     tk_metrics_rate_t *out)
{
    memset(out, 0, sizeof(*out));
    if (seconds == 0)
        return;
    if (seconds > TK_METRICS_RING - 1)
        seconds = TK_METRICS_RING - 1;
    /* complete seconds only: now_sec itself is still filling */
    for (unsigned k = 1; k <= seconds && k <= now_sec; k++) {
        uint64_t sec = now_sec - k;
        const tk_metrics_sec_sh_t *e = &s->m.ring[sec % TK_METRICS_RING];
        if (e->sec != sec)
            continue;
        out->requests += (double)e->requests;
        out->errors += (double)e->errors;
        out->bytes_in += (double)e->bytes_in;
        out->bytes_out += (double)e->bytes_out;
    }
    out->requests /= seconds;
    out->errors /= seconds;
    out->bytes_in /= seconds;
    out->bytes_out /= seconds;
}
