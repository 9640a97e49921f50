/* admin_int.h: what the parts of the admin endpoints (admin*.c, dashboard.c) share; private
 * to handlers/. */
#ifndef TK_ADMIN_INT_H
#define TK_ADMIN_INT_H

#include <stdint.h>
#include <sys/types.h>

#include "http/http_response.h"
#include "shm/view.h"

/* A fresh copy of the segment in v (tk_view_free() it), or answers 503/500
 * itself and returns -1. Never sleeps. */
int tk_admin_view(tk_http_ctx_t *ctx, tk_view_t *v);

/* RSS and CPU of another process (the master) from /proc. 0 or -1. */
int tk_admin_proc_usage(pid_t pid, uint64_t *rss, double *user_s, double *sys_s);

/* The endpoints the route table in admin.c serves from the other files. */
void tk_admin_metrics(tk_http_ctx_t *ctx);   /* GET /metrics (admin_metrics.c) */
void tk_admin_config(tk_http_ctx_t *ctx);    /* GET /debug/config (admin_config.c) */
void tk_admin_dashboard(tk_http_ctx_t *ctx); /* GET /dashboard (dashboard.c) */

#endif
