/* http_parser.h: strict, zero-copy, incremental HTTP/1.1 request parser (RFC 9112).
 *
 * How it is used, per request on a connection buffer:
 *
 *   tk_http_scan_t scan = {0};           // once per request
 *   for (;;) {                           // each time more bytes arrived
 *       int n = tk_http_parse_head(&lim, buf, len, &scan, &req, &err);
 *       if (n > 0) break;                // head is buf[0..n), body/next request follows
 *       if (n < 0) answer err.status with {"error": err.msg} and close;
 *       read more (buf may be moved or grown: scan holds offsets, not pointers)
 *   }
 *
 * buf must always start at the first byte of this request. The scan finds the
 * end of the head incrementally (no rescanning), then the whole head is parsed
 * in one pass, so the result never depends on how the bytes were split. The
 * size limits (414, 431) also fire while the head is still incomplete.
 *
 * The request is a set of slices (tk_str_t) into buf: valid while buf is.
 *
 * Strictness (RFC 9112 / 9110): it rejects rather than guesses. 400 for: a
 * bare LF line ending (tenk requires CRLF everywhere: a lone LF is how
 * request smuggling between lenient and strict parsers starts), a bare CR,
 * NUL or other CTL in a field value or the request line, obs-fold, a field
 * line without a colon, whitespace before the colon, a non-token character in
 * a field name or the method, extra/missing spaces in the request line, a
 * missing version, a malformed version, a '#' or non-ASCII byte in the target,
 * a target that is neither origin-form, absolute-form (http/https) nor "*" with
 * OPTIONS; both Content-Length and Transfer-Encoding; more than one
 * Content-Length (even if equal) or a non-digit / overflowing one; a
 * Transfer-Encoding whose last coding is not "chunked", "chunked" twice, an
 * empty list element, or Transfer-Encoding on HTTP/1.0; a missing Host on 1.1
 * or more than one Host, or a Host with characters no host can contain.
 * 501 for a transfer coding other than chunked (tenk implements none).
 * 505 for a major version other than 1; HTTP/1.x with x > 1 is handled as 1.1.
 * 417 for an Expect other than 100-continue. 413 for a Content-Length above
 * max_body_size. Up to 16 empty lines before the request line are skipped
 * (RFC 9112 2.2). */
#ifndef TK_HTTP_PARSER_H
#define TK_HTTP_PARSER_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "http/str.h"

/* Whether s equals the string literal lit (case-sensitive). */
#define tk_str_eq_lit(s, lit)                                                                      \
    ((s).len == sizeof(lit) - 1 && (s).p != NULL && memcmp((s).p, (lit), sizeof(lit) - 1) == 0)

/* ASCII case-insensitive comparison of s with the NUL-terminated c. */
static inline int tk_str_caseeq(tk_str_t s, const char *c)
{
    size_t i;
    if (s.p == NULL)
        return 0;
    for (i = 0; c[i] != '\0'; i++) {
        if (i >= s.len)
            return 0;
        unsigned char a = (unsigned char)s.p[i], b = (unsigned char)c[i];
        if (a >= 'A' && a <= 'Z')
            a = (unsigned char)(a + 32);
        if (b >= 'A' && b <= 'Z')
            b = (unsigned char)(b + 32);
        if (a != b)
            return 0;
    }
    return i == s.len;
}

static inline tk_str_t tk_str_from_cstr(const char *c)
{
    tk_str_t s = {c, c ? strlen(c) : 0};
    return s;
}

/* Hard cap on header fields kept per request (the configurable max_headers
 * is clamped to it). */
#define TK_HTTP_MAX_HEADERS 128
/* Bytes allowed in the request line beyond max_request_line (method, spaces,
 * version): a request line longer than max_request_line + this is a 414. */
#define TK_HTTP_REQLINE_SLACK 64

/* Limits, each with its own status. Zero fields take the defaults below. */
typedef struct {
    size_t max_request_line; /* request target bytes; 8192 -> 414 */
    size_t max_header_size;  /* header section after the request line, incl.
                                the blank line; 8192 -> 431 */
    int max_headers;         /* field lines; 100 -> 431 */
    size_t max_body_size;    /* Content-Length / de-chunked body; 1 MiB -> 413 */
} tk_http_limits_t;

#define TK_HTTP_DEFAULT_MAX_REQUEST_LINE 8192
#define TK_HTTP_DEFAULT_MAX_HEADER_SIZE  8192
#define TK_HTTP_DEFAULT_MAX_HEADERS      100
#define TK_HTTP_DEFAULT_MAX_BODY_SIZE    (1024 * 1024)

/* Fill lim with the defaults. */
void tk_http_limits_default(tk_http_limits_t *lim);

typedef enum {
    TK_HTTP_OTHER = 0, /* a valid token tenk has no name for: router says 405/501 */
    TK_HTTP_GET,
    TK_HTTP_HEAD,
    TK_HTTP_POST,
    TK_HTTP_PUT,
    TK_HTTP_DELETE,
    TK_HTTP_PATCH,
    TK_HTTP_OPTIONS,
    TK_HTTP_CONNECT,
    TK_HTTP_TRACE,
} tk_http_method_t;

typedef struct {
    tk_str_t name;  /* as sent (case preserved) */
    tk_str_t value; /* leading and trailing whitespace removed; may be empty */
} tk_http_header_t;

/* Why a request was rejected. msg is a static string, short, safe to put in a
 * JSON body without escaping. */
typedef struct {
    int status; /* 400, 413, 414, 417, 431, 501, 505 */
    const char *msg;
} tk_http_error_t;

typedef struct {
    tk_str_t method;
    tk_http_method_t method_id;
    tk_str_t target;   /* the request target as sent */
    tk_str_t path;     /* raw (percent-encoded) path; "/" for an absolute-form
                          target without one; "*" for OPTIONS * */
    tk_str_t query;    /* after '?', without it; p == NULL if there was no '?' */
    int version_minor; /* 0 or 1 (1.2+ is handled as 1.1) */

    int nheaders;
    tk_http_header_t headers[TK_HTTP_MAX_HEADERS];

    int64_t content_length;       /* -1 if no Content-Length */
    unsigned chunked : 1;         /* Transfer-Encoding: chunked */
    unsigned keep_alive : 1;      /* from the version and Connection */
    unsigned conn_close : 1;      /* Connection: close was sent */
    unsigned expect_continue : 1; /* 100-continue on 1.1: send 100 before reading the body */

    tk_str_t host;            /* Host value, or the authority of an absolute-form target */
    tk_str_t accept_encoding; /* first Accept-Encoding field; p == NULL if none */
    tk_str_t content_type;    /* first Content-Type field; p == NULL if none */
    tk_str_t body;            /* not set by the parser: the connection layer fills it */
} tk_http_request_t;

/* Where the search for the end of the head stopped; zero it before each new
 * request, then pass the same one to every call for that request. */
typedef struct {
    size_t pos;         /* bytes of buf already scanned */
    size_t line_start;  /* start of the line being scanned */
    size_t reqline_end; /* end of the request line (after its CRLF); 0 = not seen */
    int nempty;         /* empty lines skipped before the request line */
} tk_http_scan_t;

/* Parse the request head at the start of buf[0..len).
 * Returns the head length (> 0: buf[0..n) is the head, including the blank
 * line) when complete and valid, with req filled; 0 when more bytes are needed;
 * -1 on a bad request, with err->status and err->msg set (then close the
 * connection after answering). lim may be NULL for the defaults. */
int tk_http_parse_head(const tk_http_limits_t *lim, const char *buf, size_t len,
                       tk_http_scan_t *scan, tk_http_request_t *req, tk_http_error_t *err);

/* The first header field named name (case-insensitive); p == NULL if absent. */
tk_str_t tk_http_header_get(const tk_http_request_t *req, const char *name);

/* Incremental, in-place chunked body decoder.
 *
 *   tk_http_chunked_t d; tk_http_chunked_init(&d);
 *   rc = tk_http_chunked_decode(&d, p, n, &consumed, &produced, max_body);
 *
 * Reads the raw bytes p[0..n) and writes the payload they carry to
 * p[0..produced) (compacted to the front: produced <= consumed). Returns 1
 * when the last chunk and the trailers (read and dropped) are complete:
 * p[consumed..n) then belongs to the next request; 0 when every byte was
 * consumed (consumed == n) and more are needed: call again with the next raw
 * bytes placed right after the payload produced so far; -1 on error with
 * d->err set (400 bad framing, 413 body above max_body (0 = no limit), 431
 * trailers above 8 KiB).
 * Chunk sizes are hex digits only (no sign, "0x", or whitespace before them;
 * a value of 2^63 or more is an overflow); chunk extensions are checked for control
 * characters and skipped; every line must end with CRLF. */
typedef struct {
    int state;
    uint64_t size;  /* current chunk: size being read, then bytes left */
    uint64_t total; /* payload bytes so far */
    size_t line;    /* bytes in the current size/trailer line (limit) */
    size_t trailer; /* bytes of trailers so far (limit) */
    int ndigits;
    tk_http_error_t err;
} tk_http_chunked_t;

void tk_http_chunked_init(tk_http_chunked_t *d);
int tk_http_chunked_decode(tk_http_chunked_t *d, char *buf, size_t len, size_t *consumed,
                           size_t *produced, size_t max_body);

/* Whether an Accept-Encoding value lets us answer with gzip: gzip (or x-gzip)
 * listed with q > 0, or not listed and "*" with q > 0; and, when identity is
 * listed explicitly, gzip's q is not lower than identity's. A missing header
 * (p == NULL) or an empty one means no. */
int tk_http_accepts_gzip(tk_str_t accept_encoding);

#endif
