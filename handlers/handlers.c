/* handlers.c: the one table of handler registrations, and the services' helpers. */
#include "config.h"

#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

#include "handlers/handlers.h"
#include "shm/segment.h"

/* Which listener each handler file serves; the order is the route ids' order. */
static const struct {
    int admin; /* 0: the public listener, 1: the admin listener */
    void (*reg)(tk_router_t *r, const tk_handlers_env_t *env);
} registrations[] = {
    {0, tk_handlers_register_health}, {0, tk_handlers_register_tfb},
    {0, tk_handlers_register_users},  {0, tk_handlers_register_heavy},
    {1, tk_handlers_register_health}, {1, tk_handlers_register_admin},
};

void tk_handlers_register(tk_router_t *pub, tk_router_t *admin, const tk_handlers_env_t *env)
{
    for (size_t i = 0; i < sizeof(registrations) / sizeof(registrations[0]); i++)
        registrations[i].reg(registrations[i].admin ? admin : pub, env);
}

int tk_handlers_first(const tk_handlers_env_t *env)
{
    if (!env)
        return 0;
    if (!env->shm)
        return 1;
    tk_shm_worker_sh_t *ws = tk_shm_worker(env->shm, (unsigned)env->slot);
    if (!ws)
        return 0;
    /* the master fills the entry just after fork: trust the index once the
     * entry names this process (the state is stored last, with release) */
    uint32_t st = __atomic_load_n(&ws->state, __ATOMIC_ACQUIRE);
    return (st == TK_SHM_W_STARTING || st == TK_SHM_W_RUNNING) &&
           __atomic_load_n(&ws->pid, __ATOMIC_RELAXED) == (int32_t)getpid() && ws->index == 0;
}
