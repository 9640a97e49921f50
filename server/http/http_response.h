/* http_response.h: the handler-facing API: read the request, build the response.
 *
 * A handler gets a tk_http_ctx_t for one request. The request (method, path,
 * headers, query, path parameters, body) is fully read before the handler runs:
 * the body is complete and already de-chunked. Views (tk_str_t) point into the
 * connection's buffers and stay valid until the handler returns.
 *
 * A handler answers exactly once, with one of the tk_http_respond*() calls (or
 * the stream calls). A handler that returns without answering gets a 500. The
 * engine adds the status line, Date, Server, Content-Length (or chunked),
 * Connection when needed, and gzip (Content-Encoding + Vary) when the client
 * accepts it, the type is compressible and the body is at least gzip_min_size.
 * HEAD is served by the GET handler: the engine drops the body, keeps the
 * length.
 *
 * Handlers run on a green thread and may park (database, cache): every call
 * below that may park says "may yield"; the others never do. */
#ifndef TK_HTTP_RESPONSE_H
#define TK_HTTP_RESPONSE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "http/http_parser.h"
#include "http/str.h"
#include "proc/conf.h"

struct cJSON;

/* A growable byte buffer (the output buffer, a handler's body buffer). */
typedef struct {
    char *data;
    size_t len; /* bytes used */
    size_t cap; /* bytes allocated */
} tk_http_buf_t;

void tk_http_buf_init(tk_http_buf_t *b);
void tk_http_buf_free(tk_http_buf_t *b);
/* Make room for n more bytes; returns a pointer to the free space or NULL
 * (ENOMEM). Write there, then tk_http_buf_commit(b, n). */
char *tk_http_buf_reserve(tk_http_buf_t *b, size_t n);
static inline void tk_http_buf_commit(tk_http_buf_t *b, size_t n)
{
    b->len += n;
}
int tk_http_buf_append(tk_http_buf_t *b, const void *p, size_t n);
int tk_http_buf_append_str(tk_http_buf_t *b, const char *s);
int tk_http_buf_printf(tk_http_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int tk_http_buf_vprintf(tk_http_buf_t *b, const char *fmt, va_list ap);
/* Drop the contents but keep at most keep bytes of capacity. */
void tk_http_buf_reset(tk_http_buf_t *b, size_t keep);

typedef struct tk_http_ctx tk_http_ctx_t;

/* --- the request ---------------------------------------------------------------- */

/* Method as sent ("GET", "POST", ...). For HEAD requests this is "HEAD" even
 * though the GET handler runs; see tk_http_is_head(). */
tk_str_t tk_http_method(const tk_http_ctx_t *ctx);
int tk_http_is_head(const tk_http_ctx_t *ctx);
/* The request target's path, raw (still percent-encoded), without the query. */
tk_str_t tk_http_path(const tk_http_ctx_t *ctx);
/* The raw query string after '?', without the '?'; p == NULL if none. */
tk_str_t tk_http_query_string(const tk_http_ctx_t *ctx);
/* The first header field with this name (case-insensitive); p == NULL if absent. */
tk_str_t tk_http_header(const tk_http_ctx_t *ctx, const char *name);
/* Visit every header field in order; stops early when cb returns non-zero. */
typedef int (*tk_http_header_cb)(tk_str_t name, tk_str_t value, void *arg);
void tk_http_headers_foreach(const tk_http_ctx_t *ctx, tk_http_header_cb cb, void *arg);

/* A path parameter from the route pattern ("/users/{id}" -> "id"), raw as in
 * the path (not percent-decoded: route segments are usually numbers or slugs).
 * p == NULL if the route has no such parameter. */
tk_str_t tk_http_param(const tk_http_ctx_t *ctx, const char *name);
/* The same, percent-decoded and NUL-terminated into buf. Returns the length,
 * -1 if absent, -2 if it does not fit or has an invalid escape. */
int tk_http_param_copy(const tk_http_ctx_t *ctx, const char *name, char *buf, size_t buflen);
/* The parameter as a decimal int64 (digits only, optional leading '-'); 0 on
 * success, -1 if absent, not a number or out of range. */
int tk_http_param_int64(const tk_http_ctx_t *ctx, const char *name, int64_t *out);

/* A query parameter, percent-decoded ('+' is a space) and NUL-terminated into
 * buf. Returns its length; -1 if absent; -2 if it does not fit; -3 if the query
 * has an invalid percent escape (answer 400). The first occurrence wins. */
int tk_http_query(const tk_http_ctx_t *ctx, const char *name, char *buf, size_t buflen);

/* The request body (complete, de-chunked); len 0 and p != NULL if empty. */
tk_str_t tk_http_body(const tk_http_ctx_t *ctx);

/* Route bookkeeping: the route_id given to tk_router_add() (-1 for the
 * engine's own 404/405 answers), the connection id (for TK_LOG_CONN), the
 * worker slot. */
int tk_http_route_id(const tk_http_ctx_t *ctx);
uint64_t tk_http_conn_id(const tk_http_ctx_t *ctx);
/* Whether the request arrived on the admin listener. */
int tk_http_is_admin(const tk_http_ctx_t *ctx);
/* The peer address as text ("127.0.0.1"); never NULL. */
const char *tk_http_peer(const tk_http_ctx_t *ctx);
/* The parsed request (NULL for an answer the engine gave a request it could
 * not parse), the configuration the worker serves with (NULL in tests). */
const tk_http_request_t *tk_http_request(const tk_http_ctx_t *ctx);
const tk_conf_t *tk_http_conf(const tk_http_ctx_t *ctx);
/* The status sent (0 until answered) and the bytes of the response queued so far. */
int tk_http_status(const tk_http_ctx_t *ctx);
size_t tk_http_bytes_out(const tk_http_ctx_t *ctx);

/* --- the response -------------------------------------------------------------- */

/* Add a response header (copied). Call before tk_http_respond*(). Do not add
 * Date, Server, Content-Length, Transfer-Encoding or Connection: the engine
 * owns those. Returns 0 or -1 (ENOMEM). */
int tk_http_add_header(tk_http_ctx_t *ctx, const char *name, const char *value);
int tk_http_add_headerf(tk_http_ctx_t *ctx, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Ask the engine to close the connection after this response. */
void tk_http_set_close(tk_http_ctx_t *ctx);

/* Answer with status, a content type (NULL = none) and a body (copied; NULL/0 =
 * empty). 0 on success, -1 if already answered or out of memory. Does not
 * yield: the bytes are queued and leave when the engine flushes (after every
 * complete pipelined request in the buffer has been served). */
int tk_http_respond(tk_http_ctx_t *ctx, int status, const char *content_type, const void *body,
                    size_t len);
/* Serialise json unformatted as application/json. */
int tk_http_respond_json(tk_http_ctx_t *ctx, int status, const struct cJSON *json);
/* {"error":"message"} as application/json (message is JSON-escaped). */
int tk_http_respond_error(tk_http_ctx_t *ctx, int status, const char *message);

/* Hot path: a per-request scratch buffer to write the body into directly,
 * then tk_http_respond_buf(). The buffer is empty when the handler starts. */
tk_http_buf_t *tk_http_body_buf(tk_http_ctx_t *ctx);
int tk_http_respond_buf(tk_http_ctx_t *ctx, int status, const char *content_type);

/* Streaming (chunked on HTTP/1.1; on 1.0 the connection closes at the end):
 * begin sends the head, each write queues a chunk and flushes (may yield:
 * waits for the socket, bounded by the write timeout), end sends the last
 * chunk. Never gzipped. Return 0, or -1 when the client is gone (stop then). */
int tk_http_stream_begin(tk_http_ctx_t *ctx, int status, const char *content_type);
int tk_http_stream_write(tk_http_ctx_t *ctx, const void *p, size_t len); /* may yield */
int tk_http_stream_end(tk_http_ctx_t *ctx);                              /* may yield */

/* Whether the handler has answered. */
int tk_http_responded(const tk_http_ctx_t *ctx);

/* The reason phrase for a status ("Not Found"); "Unknown" if none. */
const char *tk_http_reason(int status);

/* --- the engine's side (used by http_conn.c and by tests) ----------------------------- */

/* "Sun, 06 Nov 1994 08:49:37 GMT" (29 chars + NUL), recomputed at most once a
 * second from the wall clock. */
const char *tk_http_date_now(void);
/* Format t into out[30]. */
void tk_http_date_format(int64_t unix_s, char out[30]);

/* Whether a content type is worth compressing (text/..., JSON, JS, XML, SVG). */
int tk_http_compressible(const char *content_type);

/* Everything the serialiser needs to know about one response. */
typedef struct {
    int status;
    const char *content_type;  /* NULL: no Content-Type */
    const char *extra_headers; /* "Name: value\r\n"... already formatted, or NULL */
    size_t extra_len;
    const void *body;
    size_t body_len;
    int head;         /* HEAD: send the length, not the body */
    int keep_alive;   /* 0: add Connection: close */
    int http10;       /* the client spoke 1.0: add Connection: keep-alive if kept */
    int gzip_enabled; /* the server compresses at all ([http] gzip) */
    int gzip;         /* the client accepts gzip (the caller checked q-values) */
    size_t gzip_min_size;
    int gzip_level;
} tk_http_resp_t;

/* Append the whole response (head + body, gzipped when r->gzip and worth it)
 * to out. Vary: Accept-Encoding goes on every response that would have been
 * compressed for a client asking for it, so caches keep the two apart. Returns 0, or -1 (ENOMEM or
 * a zlib failure: then nothing is appended). */
int tk_http_response_write(tk_http_buf_t *out, const tk_http_resp_t *r);

/* gzip src into out (appending). 0 or -1. */
int tk_http_gzip(tk_http_buf_t *out, const void *src, size_t len, int level);

#endif
