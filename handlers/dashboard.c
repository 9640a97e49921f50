/* dashboard.c: GET /dashboard, the page that polls /debug/stats (handlers/dashboard.html). */
#include "config.h"

#include <stddef.h>

#include "handlers/admin_int.h"
#include "http/http_response.h"

/* The page, generated at build time from handlers/dashboard.html by
 * scripts/lib/embed.sh (handlers/dashboard_html.c). */
extern const unsigned char tk_admin_dashboard_html[];
extern const size_t tk_admin_dashboard_html_len;

/* The page itself holds no data, so it is served without the token (a browser
 * can't send a bearer header on navigation); it reads the token from the URL
 * fragment (#token=..., never sent to the server) and sends it with each poll
 * of /debug/stats, which does require it. */
void tk_admin_dashboard(tk_http_ctx_t *ctx)
{
    tk_http_add_header(ctx, "Cache-Control", "no-store");
    /* nothing from elsewhere: scripts and styles are inline, fetches same-origin */
    tk_http_add_header(ctx, "Content-Security-Policy",
                       "default-src 'none'; script-src 'unsafe-inline'; style-src "
                       "'unsafe-inline'; connect-src 'self'; img-src data:");
    tk_http_add_header(ctx, "X-Content-Type-Options", "nosniff");
    tk_http_respond(ctx, 200, "text/html; charset=utf-8", tk_admin_dashboard_html,
                    tk_admin_dashboard_html_len);
}
