/* router.h: method + path patterns with {name} parameters -> handler.
 *
 * Patterns are literal segments and whole-segment parameters: "/users",
 * "/users/{id}", "/a/{x}/b/{y}". Literal segments win over parameters at the
 * same position ("/users/me" before "/users/{id}"). A trailing slash is
 * significant. Matching is on the raw (still percent-encoded) path, without
 * the query string. The router is built once per worker at start-up and then
 * only read, so matching takes no lock and allocates nothing. */
#ifndef TK_ROUTER_H
#define TK_ROUTER_H

#include <stddef.h>

#include "http/str.h"
#include "shm/metrics.h"

/* The request context (http_response.h); the router only stores handlers. */
typedef struct tk_http_ctx tk_http_ctx_t;

/* A handler answers with tk_http_respond*() (see http_response.h). */
typedef void (*tk_http_handler_fn)(tk_http_ctx_t *ctx);

typedef struct tk_router tk_router_t;

#define TK_ROUTER_MAX_PARAMS 8
/* The one limit on routes: every (method, pattern) has its own id, and each
 * id its own per-route metrics slot in shared memory. */
#define TK_ROUTER_MAX_ROUTES TK_METRICS_MAX_ROUTES

tk_router_t *tk_router_new(void);
/* A router whose route ids are shared with ids_from's (the admin listener's
 * router shares the public one's: "GET /health" on both is one route id). */
tk_router_t *tk_router_new_shared(tk_router_t *ids_from);
void tk_router_free(tk_router_t *r);

/* Register fn for method ("GET", "POST", ...) on pattern. The router numbers
 * the routes: each "METHOD pattern" label gets its own id, 0.. in
 * registration order (for per-route metrics). GET also answers HEAD (under
 * the GET id) unless a HEAD route exists. Returns the route id (>= 0), or -1
 * on a bad pattern, a duplicate (method, pattern), more than
 * TK_ROUTER_MAX_ROUTES labels, or out of memory; err (may be NULL) says
 * which, and the router keeps the first such error (tk_router_error()). */
int tk_router_add(tk_router_t *r, const char *method, const char *pattern, tk_http_handler_fn fn);
int tk_router_add_err(tk_router_t *r, const char *method, const char *pattern,
                      tk_http_handler_fn fn, char *err, size_t errlen);
/* The first registration that failed on r, "" if none (start-up checks it). */
const char *tk_router_error(const tk_router_t *r);
/* "METHOD pattern" of route_id, NULL if no such id. */
const char *tk_router_label(const tk_router_t *r, int route_id);

typedef enum {
    TK_ROUTE_FOUND = 0,
    TK_ROUTE_NOT_FOUND,          /* 404 */
    TK_ROUTE_METHOD_NOT_ALLOWED, /* 405 with Allow: m->allow */
} tk_router_result_t;

typedef struct {
    tk_str_t name;  /* without the braces; points into the router */
    tk_str_t value; /* points into the matched path */
} tk_router_param_t;

typedef struct {
    tk_http_handler_fn fn;
    int route_id;
    const char *pattern; /* the registered pattern, for logs and metrics labels */
    int nparams;
    tk_router_param_t params[TK_ROUTER_MAX_PARAMS];
    char allow[96]; /* for 405: "GET, HEAD, POST" */
} tk_router_match_t;

/* Find the handler for method + path. */
tk_router_result_t tk_router_match(const tk_router_t *r, const char *method, size_t method_len,
                                   const char *path, size_t path_len, tk_router_match_t *m);

/* Visit every route (for /debug and metrics labels). */
typedef void (*tk_router_visit_fn)(const char *method, const char *pattern, int route_id,
                                   void *arg);
void tk_router_foreach(const tk_router_t *r, tk_router_visit_fn cb, void *arg);

#endif
