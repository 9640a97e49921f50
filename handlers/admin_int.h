/* admin_int.h: what the parts of the admin endpoints (admin*.c, dashboard.c) share; private
 * to handlers/. */
#ifndef TK_ADMIN_INT_H
#define TK_ADMIN_INT_H

#include "http/http_response.h"

/* The endpoints the route table in admin.c serves from the other files. */
void tk_admin_config(tk_http_ctx_t *ctx);    /* GET /debug/config (admin_config.c) */
void tk_admin_dashboard(tk_http_ctx_t *ctx); /* GET /dashboard (dashboard.c) */

#endif
