/* handlers.h: one registration function per handler file, called by the worker. */
#ifndef TK_HANDLERS_H
#define TK_HANDLERS_H

#include "http/router.h"

/* Route ids (per-route metrics) are the router's: see tk_router_add(). */

/* Public listener. */
void tk_handlers_register_health(tk_router_t *r); /* /health, /json, /plaintext */
void tk_handlers_register_tfb(tk_router_t *r);    /* TechEmpower /db, /queries, ... */
void tk_handlers_register_users(tk_router_t *r);  /* /users */
void tk_handlers_register_heavy(tk_router_t *r);  /* /heavy */
/* Admin listener (/metrics, /debug/..., /dashboard, and the test endpoints
 * below): every admin-only route is in admin.c's table, behind the token. */
void tk_handlers_register_admin(tk_router_t *r);
/* POST /debug/echo, GET /debug/stream (handlers/health.c), for tests; admin.c
 * registers them, served only with admin.debug_endpoints on. */
void tk_handlers_debug_echo(tk_http_ctx_t *ctx);
void tk_handlers_debug_stream(tk_http_ctx_t *ctx);

#endif
