/* db_status.h: the HTTP answer to a failed database call, for every handler. */
#ifndef TK_HANDLERS_DB_STATUS_H
#define TK_HANDLERS_DB_STATUS_H

#include "db/db.h"
#include "http/http_response.h"

/* The HTTP status for a tk_db_* outcome: 200 ok, 503 no connection (acquire
 * timeout, database down or not configured), 504 query timeout, 500 refused
 * statement, 499 the client went away. */
int tk_handlers_db_status(tk_db_status_t st);

/* Answer a failed database call: the status above with {"error":...}, plus
 * Retry-After on a 503. Answers nothing for TK_DB_CANCELLED: the client is
 * gone and the engine drops the connection. */
void tk_handlers_db_error(tk_http_ctx_t *ctx, tk_db_status_t st);

/* Read-your-writes (README: the consistency model). A request's Tenk-LSN header ("X/Y", as
 * PostgreSQL writes an LSN): its reads go to a backend that has replayed it. 0 (none or
 * valid, 1 if valid), or -1 after answering 400 for a malformed one. */
int tk_handlers_db_lsn_in(tk_http_ctx_t *ctx);
/* After a write committed: Tenk-LSN with the primary's WAL position (no header if the
 * position could not be read: the write itself succeeded). */
void tk_handlers_db_lsn_out(tk_http_ctx_t *ctx);
/* Tenk-Backend: which backend served this request's last read (primary, replica-N). */
void tk_handlers_db_backend_out(tk_http_ctx_t *ctx);

#endif
