/* handlers.h: the services a handler gets from its worker, and one registration
 * function per handler file, all called from one table (handlers.c). */
#ifndef TK_HANDLERS_H
#define TK_HANDLERS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cache/cache.h"
#include "http/http_response.h"
#include "http/router.h"
#include "proc/conf.h"

struct tk_shm;

/* Appends the green threads of the worker pid (in shared-memory slot `slot`)
 * to b as comma-separated JSON objects: the worker's thread-dump service,
 * tk_gt_dump_collect() of proc/gt_dump.h (see there). May yield. */
typedef int (*tk_handlers_gt_dump_fn)(pid_t pid, int slot, tk_http_buf_t *b, int *first,
                                      int64_t deadline, char *err, size_t errlen);

/* What a handler may use of its worker, handed to every registration function
 * so that handlers never call back up into the worker. The worker owns it and
 * keeps it valid (fields included) for its whole life. The db client needs no
 * entry: tk_db_* calls reach the worker's connections by themselves. */
typedef struct {
    const tk_conf_t *conf;
    tk_cache_t *cache;         /* the Redis client; NULL when redis.addr is empty */
    tk_cache_flight_t *flight; /* its single-flight group; NULL without a client */
    struct tk_shm *shm;        /* NULL without shared memory (tests) */
    int slot;                  /* this worker's shared-memory slot */
    /* the thread-dump service, for /debug/threads; NULL: none */
    tk_handlers_gt_dump_fn gt_dump;
} tk_handlers_env_t;

/* Register every handler's routes: the public ones on pub, the admin ones
 * (and /health) on admin, in the table's order. Route ids (per-route metrics)
 * are the router's: see tk_router_add(). */
void tk_handlers_register(tk_router_t *pub, tk_router_t *admin, const tk_handlers_env_t *env);

/* 1 in the worker with index 0 of its generation (or without shared memory):
 * the one that loads start-up data such as cachedworld into Redis. */
int tk_handlers_first(const tk_handlers_env_t *env);

/* Public listener: /health, /json, /plaintext (health.c); TechEmpower /db,
 * /queries, ... (tfb.c); /users (users.c); /heavy (heavy.c). */
void tk_handlers_register_health(tk_router_t *r, const tk_handlers_env_t *env);
void tk_handlers_register_tfb(tk_router_t *r, const tk_handlers_env_t *env);
void tk_handlers_register_users(tk_router_t *r, const tk_handlers_env_t *env);
void tk_handlers_register_heavy(tk_router_t *r, const tk_handlers_env_t *env);
/* Admin listener (/metrics, /debug/..., /dashboard, and the test endpoints
 * below): every admin-only route is in admin.c's table, behind the token. */
void tk_handlers_register_admin(tk_router_t *r, const tk_handlers_env_t *env);
/* POST /debug/echo, GET /debug/stream (handlers/health.c), for tests; admin.c
 * registers them, served only with admin.debug_endpoints on. */
void tk_handlers_debug_echo(tk_http_ctx_t *ctx);
void tk_handlers_debug_stream(tk_http_ctx_t *ctx);

#endif
