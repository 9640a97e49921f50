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

int tk_handlers_db_lsn_in(tk_http_ctx_t *ctx)
{
    tk_str_t h = tk_http_header(ctx, "Tenk-LSN");
    uint64_t lsn;
    if (h.p == NULL)
        return 0;
    if (tk_db_lsn_parse(h.p, h.len, &lsn) != 0) {
        tk_http_respond_error(ctx, 400, "invalid Tenk-LSN (expected an LSN like 0/16B3748)");
        return -1;
    }
    tk_db_want_lsn(lsn);
    return 1;
}

void tk_handlers_db_lsn_out(tk_http_ctx_t *ctx)
{
    uint64_t lsn;
    char buf[24];
    if (tk_db_write_lsn(&lsn) == TK_DB_OK && tk_db_lsn_format(lsn, buf, sizeof(buf)) > 0)
        tk_http_add_header(ctx, "Tenk-LSN", buf);
}

void tk_handlers_db_backend_out(tk_http_ctx_t *ctx)
{
    int be = tk_db_last_backend();
    if (be == 0)
        tk_http_add_header(ctx, "Tenk-Backend", "primary");
    else if (be > 0)
        tk_http_add_headerf(ctx, "Tenk-Backend", "replica-%d", be);
}
