/* db_status.c: database outcomes to HTTP statuses (503 + Retry-After, 504, 500). */
#include "config.h"

#include "handlers/db_status.h"

int tk_handlers_db_status(tk_db_status_t st)
{
    switch (st) {
    case TK_DB_OK:
        return 200;
    case TK_DB_TIMEOUT:
        return 504;
    case TK_DB_ERROR:
        return 500;
    case TK_DB_CANCELLED:
        return 499;
    case TK_DB_UNAVAILABLE:
    case TK_DB_DISABLED:
    default:
        return 503;
    }
}

void tk_handlers_db_error(tk_http_ctx_t *ctx, tk_db_status_t st)
{
    int status = tk_handlers_db_status(st);
    if (st == TK_DB_CANCELLED)
        return;
    if (status == 503)
        tk_http_add_header(ctx, "Retry-After", "1");
    tk_http_respond_error(ctx, status, tk_db_status_name(st));
}
