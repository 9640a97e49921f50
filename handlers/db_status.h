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

#endif
