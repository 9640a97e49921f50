/* dbview.c: the backends' shared view (shm/dbview.h): initialisation, the probe lease. */
#include "config.h"

#include "shm/dbview.h"

#include <stdio.h>
#include <string.h>

void tk_dbview_init(tk_dbview_sh_t *v, unsigned nbackends, const char *const *names,
                    uint64_t max_lag_ms, int read_from_primary)
{
    memset(v, 0, sizeof(*v));
    v->magic = TK_DBVIEW_MAGIC;
    v->version = TK_DBVIEW_VERSION;
    v->size = sizeof(*v);
    if (nbackends < 1)
        nbackends = 1;
    if (nbackends > TK_DBVIEW_MAX)
        nbackends = TK_DBVIEW_MAX;
    v->nbackends = nbackends;
    v->max_lag_ms = max_lag_ms;
    v->read_from_primary = read_from_primary ? 1u : 0u;
    for (unsigned i = 0; i < nbackends; i++) {
        v->be[i].role = i == 0 ? 0u : 1u;
        if (names && names[i])
            snprintf(v->be[i].name, sizeof(v->be[i].name), "%s", names[i]);
    }
}

void tk_dbview_set_policy(tk_dbview_sh_t *v, uint64_t max_lag_ms, int read_from_primary)
{
    __atomic_store_n(&v->max_lag_ms, max_lag_ms, __ATOMIC_RELAXED);
    __atomic_store_n(&v->read_from_primary, read_from_primary ? 1u : 0u, __ATOMIC_RELAXED);
}

int tk_dbview_lease(tk_dbview_sh_t *v, pid_t pid, uint64_t now_ns, uint64_t ttl_ns)
{
    int32_t cur = __atomic_load_n(&v->lease_pid, __ATOMIC_ACQUIRE);
    uint64_t until = __atomic_load_n(&v->lease_until_ns, __ATOMIC_ACQUIRE);
    if (cur == (int32_t)pid) {
        __atomic_store_n(&v->lease_until_ns, now_ns + ttl_ns, __ATOMIC_RELEASE);
        return 1;
    }
    if (cur != 0 && until > now_ns)
        return 0; /* someone else's, still valid */
    /* Free or expired (its holder died or stalled): one taker wins. The loser
     * sees the new pid next time. */
    if (!__atomic_compare_exchange_n(&v->lease_pid, &cur, (int32_t)pid, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return 0;
    __atomic_store_n(&v->lease_until_ns, now_ns + ttl_ns, __ATOMIC_RELEASE);
    __atomic_fetch_add(&v->lease_takeovers, 1, __ATOMIC_RELAXED);
    return 1;
}

void tk_dbview_unlease(tk_dbview_sh_t *v, pid_t pid)
{
    int32_t cur = (int32_t)pid;
    __atomic_compare_exchange_n(&v->lease_pid, &cur, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

int tk_dbview_valid(const tk_dbview_sh_t *v)
{
    return v && v->magic == TK_DBVIEW_MAGIC && v->version == TK_DBVIEW_VERSION &&
           v->size == sizeof(*v);
}

unsigned tk_dbview_count(const tk_dbview_sh_t *v)
{
    if (!tk_dbview_valid(v))
        return 0;
    unsigned n = __atomic_load_n(&v->nbackends, __ATOMIC_RELAXED);
    return n > TK_DBVIEW_MAX ? TK_DBVIEW_MAX : n;
}

const char *tk_dbview_health_name(uint32_t h)
{
    static const char *names[] = {"unknown", "ok", "lagging", "down", "wrong-role"};
    return h < sizeof(names) / sizeof(names[0]) ? names[h] : "?";
}
