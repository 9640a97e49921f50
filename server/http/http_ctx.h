/* http_ctx.h: the request context's fields, private to the HTTP engine (server/http/).
 *
 * Handlers and the access log see tk_http_ctx_t as opaque and use the accessors
 * of http_response.h; http_conn.c fills a context per request and http_response.c
 * answers through it. Only files in server/http/ (and unit tests) include this. */
#ifndef TK_HTTP_CTX_H
#define TK_HTTP_CTX_H

#include <stddef.h>
#include <stdint.h>

#include "http/http_parser.h"
#include "http/http_response.h"
#include "http/router.h"
#include "proc/conf.h"

struct tk_http_conn;
struct tk_http_server;

/* The request context given to handlers (opaque to them: see the accessors
 * in http_response.h); it lives on the serving green thread's stack. */
struct tk_http_ctx {
    struct tk_http_conn *conn;
    struct tk_http_server *srv;
    const tk_conf_t *conf; /* srv->conf, or NULL */
    const tk_http_request_t *req;
    const tk_router_match_t *match;
    tk_http_buf_t *out; /* the connection's output buffer */
    tk_http_buf_t hdrs; /* extra response headers, formatted */
    tk_http_buf_t body; /* scratch body (tk_http_body_buf) */
    int route_id;
    int status; /* status sent, 0 until answered */
    unsigned head : 1, keep_alive : 1, http10 : 1, gzip_ok : 1, responded : 1, streaming : 1,
        stream_chunked : 1, admin : 1, stream_ended : 1, client_gone : 1;
    uint64_t conn_id;
    const char *peer;
    size_t bytes_out; /* bytes of this response queued so far */
};

/* Write everything queued in ctx's connection output buffer, waiting for the
 * socket (write timeout). 0, or -1 when the client is gone. May yield. */
int tk_http_conn_flush_ctx(tk_http_ctx_t *ctx);

#endif
