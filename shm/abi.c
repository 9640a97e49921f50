/* abi.c: the names of the green-thread states and cache node roles (shared by tenkd, tenkctl and
 * /debug/stats). */
#include "config.h"

#include "shm/abi.h"

static const char *const state_names[TK_GT_NSTATES] = {
    "running",     "runnable",   "wait_net", "wait_db",
    "wait_broker", "wait_cache", "sleeping", "wait_gt",
};

const char *tk_gt_state_name(tk_gt_state_t s)
{
    return (unsigned)s < TK_GT_NSTATES ? state_names[s] : "invalid";
}

const char *tk_cache_role_name(uint32_t role)
{
    switch (role) {
    case TK_CACHE_ROLE_MASTER:
        return "master";
    case TK_CACHE_ROLE_REPLICA:
        return "replica";
    default:
        return "none";
    }
}
