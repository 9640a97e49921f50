/* handlers.h: one registration function per handler file, called by the worker. */
#ifndef TK_HANDLERS_H
#define TK_HANDLERS_H

#include "router.h"

/* Route ids (per-route metrics) are the router's: see tk_router_add(). */

/* Public listener. */
void tk_handlers_register_health(tk_router_t *r); /* /health, /json, /plaintext */
void tk_handlers_register_tfb(tk_router_t *r);    /* TechEmpower /db, /queries, ... */
void tk_handlers_register_users(tk_router_t *r);  /* /users */
void tk_handlers_register_heavy(tk_router_t *r);  /* /heavy */
/* Admin listener (/metrics, /debug/..., /dashboard). */
void tk_handlers_register_admin(tk_router_t *r);
/* Admin listener: POST /debug/echo, GET /debug/stream (handlers/health.c), for tests. */
void tk_handlers_register_debug(tk_router_t *r);

#endif
