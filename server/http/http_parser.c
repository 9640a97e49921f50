/* http_parser.c: strict, zero-copy, incremental HTTP/1.1 request parser (RFC 9112). */
#include "config.h"

#include "http/http_parser.h"

#include <assert.h>
#include <stdint.h>
#include <string.h>

/* Most empty lines skipped before a request line (RFC 9112 2.2 asks for "at
 * least one"); more is a client that is not speaking HTTP. */
#define TK_HTTP_MAX_LEADING_EMPTY 16
/* Chunk size line (size + extensions) and total trailer bytes. */
#define TK_HTTP_MAX_CHUNK_LINE 4096
#define TK_HTTP_MAX_TRAILERS   8192
/* Upper bound for the configurable head limits. */
#define TK_HTTP_MAX_LINE_LIMIT (256u * 1024 * 1024)

/* tchar (RFC 9110 5.6.2): the characters of a token. */
static const unsigned char tk_tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,  ['~'] = 1, ['0'] = 1,
    ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,  ['7'] = 1, ['8'] = 1,
    ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1,  ['F'] = 1, ['G'] = 1,
    ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1,  ['N'] = 1, ['O'] = 1,
    ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,  ['V'] = 1, ['W'] = 1,
    ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1,  ['d'] = 1, ['e'] = 1,
    ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1,  ['l'] = 1, ['m'] = 1,
    ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1,  ['t'] = 1, ['u'] = 1,
    ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

static inline int is_tchar(unsigned char c)
{
    return tk_tchar[c];
}

/* field-vchar / SP / HTAB / obs-text: anything but CTLs (incl. CR, LF, NUL) and DEL. */
static inline int is_field_char(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/* First byte in [p, end) that is not a field character, or end. Eight bytes
 * at a time while none is below 0x20 or DEL (a tab drops to the byte loop):
 * header values are most of a head's bytes. */
static const char *find_bad_field_char(const char *p, const char *end)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    while (end - p >= 8) {
        uint64_t x, d;
        memcpy(&x, p, 8);
        d = x ^ (0x7f * ones);
        if ((((x - 0x20 * ones) & ~x) | ((d - ones) & ~d)) & highs)
            break;
        p += 8;
    }
    for (; p < end; p++)
        if (!is_field_char((unsigned char)*p))
            return p;
    return end;
}

static inline int is_ows(unsigned char c)
{
    return c == ' ' || c == '\t';
}

static int fail(tk_http_error_t *err, int status, const char *msg)
{
    err->status = status;
    err->msg = msg;
    return -1;
}

void tk_http_limits_default(tk_http_limits_t *lim)
{
    lim->max_request_line = TK_HTTP_DEFAULT_MAX_REQUEST_LINE;
    lim->max_header_size = TK_HTTP_DEFAULT_MAX_HEADER_SIZE;
    lim->max_headers = TK_HTTP_DEFAULT_MAX_HEADERS;
    lim->max_body_size = TK_HTTP_DEFAULT_MAX_BODY_SIZE;
}

/* Zero fields mean "default"; max_headers is clamped to the array size. */
static void effective_limits(const tk_http_limits_t *in, tk_http_limits_t *out)
{
    tk_http_limits_default(out);
    if (in == NULL)
        return;
    if (in->max_request_line)
        out->max_request_line = in->max_request_line;
    if (in->max_header_size)
        out->max_header_size = in->max_header_size;
    if (in->max_headers > 0)
        out->max_headers = in->max_headers;
    if (in->max_body_size)
        out->max_body_size = in->max_body_size;
    if (out->max_headers > TK_HTTP_MAX_HEADERS)
        out->max_headers = TK_HTTP_MAX_HEADERS;
    /* the head length is returned as an int */
    if (out->max_request_line > TK_HTTP_MAX_LINE_LIMIT)
        out->max_request_line = TK_HTTP_MAX_LINE_LIMIT;
    if (out->max_header_size > TK_HTTP_MAX_LINE_LIMIT)
        out->max_header_size = TK_HTTP_MAX_LINE_LIMIT;
}

/* Find the end of the head, resuming where the last call stopped. Every LF is
 * looked at once. The size limits are checked at each LF before anything else
 * and at the end of the bytes seen so far, in a way that gives the same answer
 * for any split of the same bytes: a limit fires iff the line (or header
 * section) is already too long at that point, whatever follows. */
static int scan_head(const tk_http_limits_t *lim, const char *buf, size_t len, tk_http_scan_t *sc,
                     tk_http_error_t *err)
{
    const size_t reqline_max = lim->max_request_line + TK_HTTP_REQLINE_SLACK;
    size_t pos = sc->pos;

    while (pos < len) {
        const char *lf = memchr(buf + pos, '\n', len - pos);
        if (lf == NULL) {
            pos = len;
            break;
        }
        size_t i = (size_t)(lf - buf);
        if (sc->reqline_end == 0) {
            if (i - sc->line_start > reqline_max)
                return fail(err, 414, "request line too long");
        } else if (i - sc->reqline_end > lim->max_header_size) {
            return fail(err, 431, "header section too large");
        }
        if (i == sc->line_start || buf[i - 1] != '\r')
            return fail(err, 400, "bare LF line ending");
        int empty = (i - 1 == sc->line_start);
        pos = i + 1;
        sc->line_start = pos;
        if (sc->reqline_end == 0) {
            if (!empty)
                sc->reqline_end = pos;
            else if (++sc->nempty > TK_HTTP_MAX_LEADING_EMPTY)
                return fail(err, 400, "too many empty lines before request");
            continue;
        }
        if (pos - sc->reqline_end > lim->max_header_size)
            return fail(err, 431, "header section too large");
        if (empty) {
            sc->pos = pos;
            return (int)pos;
        }
    }
    sc->pos = pos;
    if (sc->reqline_end == 0) {
        if (len - sc->line_start > reqline_max)
            return fail(err, 414, "request line too long");
    } else if (len - sc->reqline_end > lim->max_header_size) {
        return fail(err, 431, "header section too large");
    }
    return 0;
}

static tk_http_method_t method_id(tk_str_t m)
{
    switch (m.len) {
    case 3:
        if (tk_str_eq_lit(m, "GET"))
            return TK_HTTP_GET;
        if (tk_str_eq_lit(m, "PUT"))
            return TK_HTTP_PUT;
        break;
    case 4:
        if (tk_str_eq_lit(m, "HEAD"))
            return TK_HTTP_HEAD;
        if (tk_str_eq_lit(m, "POST"))
            return TK_HTTP_POST;
        break;
    case 5:
        if (tk_str_eq_lit(m, "PATCH"))
            return TK_HTTP_PATCH;
        if (tk_str_eq_lit(m, "TRACE"))
            return TK_HTTP_TRACE;
        break;
    case 6:
        if (tk_str_eq_lit(m, "DELETE"))
            return TK_HTTP_DELETE;
        break;
    case 7:
        if (tk_str_eq_lit(m, "OPTIONS"))
            return TK_HTTP_OPTIONS;
        if (tk_str_eq_lit(m, "CONNECT"))
            return TK_HTTP_CONNECT;
        break;
    }
    return TK_HTTP_OTHER;
}

static int ascii_lower(int c)
{
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

static int host_valid(tk_str_t v);

/* Split the target into path and query: origin-form, absolute-form (http or
 * https, no userinfo) or asterisk-form. */
static int parse_target(tk_http_request_t *req, tk_http_error_t *err)
{
    const char *t = req->target.p, *end = t + req->target.len;

    for (const char *q = t; q < end; q++) {
        unsigned char c = (unsigned char)*q;
        if (c <= 0x20 || c >= 0x7f)
            return fail(err, 400, "invalid character in request target");
        if (c == '#')
            return fail(err, 400, "fragment in request target");
    }
    if (*t == '*') {
        if (req->target.len != 1 || req->method_id != TK_HTTP_OPTIONS)
            return fail(err, 400, "asterisk target only with OPTIONS");
        req->path = req->target;
        return 0;
    }
    const char *p = t;
    if (*t != '/') {
        /* absolute-form: scheme "://" authority [path] ["?" query] */
        const char *s = t;
        while (s < end && *s != ':')
            s++;
        size_t slen = (size_t)(s - t);
        int http = slen == 4 && ascii_lower(t[0]) == 'h' && ascii_lower(t[1]) == 't' &&
                   ascii_lower(t[2]) == 't' && ascii_lower(t[3]) == 'p';
        int https = slen == 5 && ascii_lower(t[0]) == 'h' && ascii_lower(t[1]) == 't' &&
                    ascii_lower(t[2]) == 't' && ascii_lower(t[3]) == 'p' &&
                    ascii_lower(t[4]) == 's';
        if (!http && !https)
            return fail(err, 400, "invalid request target");
        if (end - s < 3 || s[1] != '/' || s[2] != '/')
            return fail(err, 400, "invalid request target");
        const char *a = s + 3, *ae = a;
        while (ae < end && *ae != '/' && *ae != '?')
            ae++;
        if (ae == a)
            return fail(err, 400, "missing authority in request target");
        if (memchr(a, '@', (size_t)(ae - a)) != NULL)
            return fail(err, 400, "userinfo in request target");
        req->host.p = a;
        req->host.len = (size_t)(ae - a);
        if (!host_valid(req->host))
            return fail(err, 400, "invalid authority in request target");
        p = ae;
    }
    const char *qm = memchr(p, '?', (size_t)(end - p));
    const char *pe = qm ? qm : end;
    if (pe == p) {
        req->path.p = "/";
        req->path.len = 1;
    } else {
        req->path.p = p;
        req->path.len = (size_t)(pe - p);
    }
    if (qm) {
        req->query.p = qm + 1;
        req->query.len = (size_t)(end - qm - 1);
    }
    return 0;
}

/* method SP request-target SP HTTP-version, exactly. */
static int parse_request_line(const tk_http_limits_t *lim, const char *l, size_t n,
                              tk_http_request_t *req, tk_http_error_t *err)
{
    const char *end = l + n, *p = l;

    while (p < end && is_tchar((unsigned char)*p))
        p++;
    if (p == l || p == end || *p != ' ')
        return fail(err, 400, "invalid method");
    req->method.p = l;
    req->method.len = (size_t)(p - l);
    req->method_id = method_id(req->method);

    const char *t = ++p;
    while (p < end && *p != ' ')
        p++;
    if (p == t)
        return fail(err, 400, "invalid request line");
    if ((size_t)(p - t) > lim->max_request_line)
        return fail(err, 414, "request target too long");
    req->target.p = t;
    req->target.len = (size_t)(p - t);
    if (p == end)
        return fail(err, 400, "missing HTTP version");

    const char *v = p + 1;
    if (end - v != 8 || memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' || v[6] != '.' ||
        v[7] < '0' || v[7] > '9')
        return fail(err, 400, "invalid HTTP version");
    if (v[5] != '1')
        return fail(err, 505, "HTTP version not supported");
    req->version_minor = v[7] == '0' ? 0 : 1;
    return parse_target(req, err);
}

/* Next element of a comma-separated list (RFC 9110 5.6.1), OWS trimmed.
 * Returns 1 with *e set, 0 at the end. Empty elements come back empty. */
static int list_next(const char **pp, const char *end, tk_str_t *e)
{
    const char *p = *pp;
    if (p == NULL)
        return 0;
    const char *c = memchr(p, ',', (size_t)(end - p));
    const char *ee = c ? c : end;
    while (p < ee && is_ows((unsigned char)*p))
        p++;
    const char *q = ee;
    while (q > p && is_ows((unsigned char)q[-1]))
        q--;
    e->p = p;
    e->len = (size_t)(q - p);
    *pp = c ? c + 1 : NULL;
    return 1;
}

typedef struct {
    int host_count;
    int te_seen;
    int te_last_chunked;
    int te_chunked_count;
    int te_unsupported;
    int ka_token;
} head_state_t;

static int parse_content_length(tk_str_t v, tk_http_request_t *req, tk_http_error_t *err)
{
    int64_t n = 0;
    if (req->content_length >= 0)
        return fail(err, 400, "duplicate Content-Length");
    if (v.len == 0)
        return fail(err, 400, "invalid Content-Length");
    for (size_t i = 0; i < v.len; i++) {
        unsigned char c = (unsigned char)v.p[i];
        if (c < '0' || c > '9')
            return fail(err, 400, "invalid Content-Length");
        if (n > (INT64_MAX - (c - '0')) / 10)
            return fail(err, 400, "Content-Length overflow");
        n = n * 10 + (c - '0');
    }
    req->content_length = n;
    return 0;
}

/* Transfer-Encoding may come in several fields; they form one list. Each
 * coding is a token, optionally with parameters. Only the last may be (and
 * must be) "chunked", without parameters. */
static int parse_transfer_encoding(tk_str_t v, head_state_t *st, tk_http_error_t *err)
{
    const char *p = v.p, *end = v.p + v.len;
    tk_str_t e;

    st->te_seen = 1;
    while (list_next(&p, end, &e)) {
        size_t i = 0;
        while (i < e.len && is_tchar((unsigned char)e.p[i]))
            i++;
        if (i == 0)
            return fail(err, 400, "invalid Transfer-Encoding");
        tk_str_t name = {e.p, i};
        while (i < e.len && is_ows((unsigned char)e.p[i]))
            i++;
        if (i < e.len && e.p[i] != ';')
            return fail(err, 400, "invalid Transfer-Encoding");
        if (tk_str_caseeq(name, "chunked")) {
            if (i < e.len)
                return fail(err, 400, "parameters on chunked");
            st->te_chunked_count++;
            st->te_last_chunked = 1;
        } else {
            st->te_unsupported = 1;
            st->te_last_chunked = 0;
        }
    }
    return 0;
}

static void parse_connection(tk_str_t v, tk_http_request_t *req, head_state_t *st)
{
    const char *p = v.p, *end = v.p + v.len;
    tk_str_t e;
    while (list_next(&p, end, &e)) {
        if (tk_str_caseeq(e, "close"))
            req->conn_close = 1;
        else if (tk_str_caseeq(e, "keep-alive"))
            st->ka_token = 1;
    }
}

/* uri-host [":" port]: reg-name, IPv4 or an IP literal in brackets. */
static int host_valid(tk_str_t v)
{
    static const unsigned char ok[256] = {
        ['a' ... 'z'] = 1, ['A' ... 'Z'] = 1, ['0' ... '9'] = 1, ['-'] = 1, ['.'] = 1,  ['_'] = 1,
        ['~'] = 1,         ['!'] = 1,         ['$'] = 1,         ['&'] = 1, ['\''] = 1, ['('] = 1,
        [')'] = 1,         ['*'] = 1,         ['+'] = 1,         [','] = 1, [';'] = 1,  ['='] = 1,
        [':'] = 1,         ['['] = 1,         [']'] = 1,         ['%'] = 1,
    };
    for (size_t i = 0; i < v.len; i++)
        if (!ok[(unsigned char)v.p[i]])
            return 0;
    return 1;
}

static int handle_header(tk_str_t name, tk_str_t value, tk_http_request_t *req, head_state_t *st,
                         tk_http_error_t *err)
{
    switch (name.len) {
    case 4:
        if (tk_str_caseeq(name, "host")) {
            if (++st->host_count > 1)
                return fail(err, 400, "duplicate Host");
            if (!host_valid(value))
                return fail(err, 400, "invalid Host");
            if (req->host.p == NULL) /* absolute-form authority wins */
                req->host = value;
        }
        break;
    case 6:
        if (tk_str_caseeq(name, "expect")) {
            if (!tk_str_caseeq(value, "100-continue"))
                return fail(err, 417, "unsupported expectation");
            /* RFC 9110 10.1.1: ignore 100-continue from an HTTP/1.0 client */
            if (req->version_minor >= 1)
                req->expect_continue = 1;
        }
        break;
    case 10:
        if (tk_str_caseeq(name, "connection"))
            parse_connection(value, req, st);
        break;
    case 12:
        if (req->content_type.p == NULL && tk_str_caseeq(name, "content-type"))
            req->content_type = value;
        break;
    case 14:
        if (tk_str_caseeq(name, "content-length"))
            return parse_content_length(value, req, err);
        break;
    case 15:
        if (req->accept_encoding.p == NULL && tk_str_caseeq(name, "accept-encoding"))
            req->accept_encoding = value;
        break;
    case 17:
        if (tk_str_caseeq(name, "transfer-encoding"))
            return parse_transfer_encoding(value, st, err);
        break;
    }
    return 0;
}

/* One field line l[0..n) (without its CRLF). */
static int parse_field_line(const tk_http_limits_t *lim, const char *l, size_t n,
                            tk_http_request_t *req, head_state_t *st, tk_http_error_t *err)
{
    const char *end = l + n, *p = l;

    if (is_ows((unsigned char)*l))
        return fail(err, 400, "obsolete line folding");
    while (p < end && is_tchar((unsigned char)*p))
        p++;
    if (p == end)
        return fail(err, 400, "header line without colon");
    if (*p != ':') {
        if (is_ows((unsigned char)*p))
            return fail(err, 400, "whitespace before colon");
        return fail(err, 400, "invalid header name");
    }
    if (p == l)
        return fail(err, 400, "empty header name");
    tk_str_t name = {l, (size_t)(p - l)};

    p++;
    while (p < end && is_ows((unsigned char)*p))
        p++;
    const char *vs = p;
    p = find_bad_field_char(p, end);
    if (p != end)
        return fail(err, 400, "invalid character in header value");
    while (p > vs && is_ows((unsigned char)p[-1]))
        p--;
    tk_str_t value = {vs, (size_t)(p - vs)};

    if (req->nheaders >= lim->max_headers)
        return fail(err, 431, "too many header fields");
    req->headers[req->nheaders].name = name;
    req->headers[req->nheaders].value = value;
    req->nheaders++;
    return handle_header(name, value, req, st, err);
}

static int parse_head(const tk_http_limits_t *lim, const char *buf, size_t head_len,
                      const tk_http_scan_t *sc, tk_http_request_t *req, tk_http_error_t *err)
{
    head_state_t st = {0};
    size_t rs = (size_t)sc->nempty * 2; /* skipped empty lines are exactly CRLF */

    if (parse_request_line(lim, buf + rs, sc->reqline_end - 2 - rs, req, err) < 0)
        return -1;

    const char *p = buf + sc->reqline_end, *end = buf + head_len - 2;
    while (p < end) {
        const char *lf = memchr(p, '\n', (size_t)(end - p));
        assert(lf != NULL && lf[-1] == '\r');
        if (parse_field_line(lim, p, (size_t)(lf - 1 - p), req, &st, err) < 0)
            return -1;
        p = lf + 1;
    }

    if (req->version_minor >= 1 && st.host_count == 0)
        return fail(err, 400, "missing Host");
    if (st.te_seen) {
        if (req->content_length >= 0)
            return fail(err, 400, "both Content-Length and Transfer-Encoding");
        if (req->version_minor == 0)
            return fail(err, 400, "Transfer-Encoding in HTTP/1.0");
        if (!st.te_last_chunked)
            return fail(err, 400, "last transfer coding is not chunked");
        if (st.te_chunked_count > 1)
            return fail(err, 400, "chunked applied twice");
        if (st.te_unsupported)
            return fail(err, 501, "transfer coding not implemented");
        req->chunked = 1;
    }
    if (req->content_length > 0 && (uint64_t)req->content_length > lim->max_body_size)
        return fail(err, 413, "request body too large");
    if (req->conn_close)
        req->keep_alive = 0;
    else
        req->keep_alive = req->version_minor >= 1 || st.ka_token;
    return 0;
}

int tk_http_parse_head(const tk_http_limits_t *lim_in, const char *buf, size_t len,
                       tk_http_scan_t *scan, tk_http_request_t *req, tk_http_error_t *err)
{
    tk_http_limits_t lim;
    effective_limits(lim_in, &lim);

    int n = scan_head(&lim, buf, len, scan, err);
    if (n <= 0)
        return n;

    /* Reset only what the head parse relies on (the header array is filled
     * up to nheaders, so it need not be cleared). */
    req->method = (tk_str_t){NULL, 0};
    req->method_id = TK_HTTP_OTHER;
    req->target = req->path = req->query = (tk_str_t){NULL, 0};
    req->version_minor = 1;
    req->nheaders = 0;
    req->content_length = -1;
    req->chunked = req->keep_alive = req->conn_close = req->expect_continue = 0;
    req->host = req->accept_encoding = req->content_type = req->body = (tk_str_t){NULL, 0};

    if (parse_head(&lim, buf, (size_t)n, scan, req, err) < 0)
        return -1;
    return n;
}

tk_str_t tk_http_header_get(const tk_http_request_t *req, const char *name)
{
    size_t nl = strlen(name);
    for (int i = 0; i < req->nheaders; i++)
        if (req->headers[i].name.len == nl && tk_str_caseeq(req->headers[i].name, name))
            return req->headers[i].value;
    return (tk_str_t){NULL, 0};
}

/* --- chunked bodies ------------------------------------------------------------------ */

enum {
    CH_SIZE0,   /* first hex digit of a chunk size */
    CH_SIZE,    /* more hex digits, or what ends them */
    CH_EXT_WS,  /* BWS after the size: only more BWS or ';' may follow */
    CH_EXT,     /* inside chunk extensions, skipped up to CR */
    CH_SIZE_LF, /* LF of the size line */
    CH_DATA,    /* d->size payload bytes left */
    CH_DATA_CR, /* CRLF after the payload */
    CH_DATA_LF,
    CH_TR_START, /* start of a trailer line, or the final CRLF */
    CH_TR_NAME,
    CH_TR_VALUE,
    CH_TR_LF,
    CH_END_LF,
    CH_DONE,
};

void tk_http_chunked_init(tk_http_chunked_t *d)
{
    memset(d, 0, sizeof(*d));
    d->state = CH_SIZE0;
}

static int ch_fail(tk_http_chunked_t *d, int status, const char *msg)
{
    d->err.status = status;
    d->err.msg = msg;
    return -1;
}

int tk_http_chunked_decode(tk_http_chunked_t *d, char *buf, size_t len, size_t *consumed,
                           size_t *produced, size_t max_body)
{
    size_t i = 0, out = 0;
    int rc = 0;

    while (i < len) {
        unsigned char c = (unsigned char)buf[i];
        if (d->state == CH_DATA) {
            size_t n = len - i;
            if (n > d->size)
                n = (size_t)d->size;
            if (out != i)
                memmove(buf + out, buf + i, n);
            out += n;
            i += n;
            d->size -= n;
            d->total += n;
            if (d->size == 0)
                d->state = CH_DATA_CR;
            continue;
        }
        i++;
        switch (d->state) {
        case CH_SIZE0:
        case CH_SIZE: {
            int h = tk_str_hexval(c);
            if (++d->line > TK_HTTP_MAX_CHUNK_LINE) {
                rc = ch_fail(d, 400, "chunk size line too long");
                goto out;
            }
            if (h >= 0) {
                /* 15 significant hex digits at most: stays below 2^63 */
                if (d->size > (UINT64_C(0x7fffffffffffffff) >> 4)) {
                    rc = ch_fail(d, 400, "chunk size overflow");
                    goto out;
                }
                d->size = (d->size << 4) | (uint64_t)h;
                d->ndigits++;
                d->state = CH_SIZE;
            } else if (d->state == CH_SIZE0) {
                rc = ch_fail(d, 400, "invalid chunk size");
                goto out;
            } else if (c == '\r') {
                d->state = CH_SIZE_LF;
            } else if (c == ';') {
                d->state = CH_EXT;
            } else if (c == ' ' || c == '\t') {
                d->state = CH_EXT_WS;
            } else {
                rc = ch_fail(d, 400, "invalid chunk size");
                goto out;
            }
            break;
        }
        case CH_EXT_WS:
            if (++d->line > TK_HTTP_MAX_CHUNK_LINE) {
                rc = ch_fail(d, 400, "chunk size line too long");
                goto out;
            }
            if (c == ';') {
                d->state = CH_EXT;
            } else if (c != ' ' && c != '\t') {
                rc = ch_fail(d, 400, "invalid chunk extension");
                goto out;
            }
            break;
        case CH_EXT:
            if (++d->line > TK_HTTP_MAX_CHUNK_LINE) {
                rc = ch_fail(d, 400, "chunk size line too long");
                goto out;
            }
            if (c == '\r') {
                d->state = CH_SIZE_LF;
            } else if (!is_field_char(c)) {
                rc = ch_fail(d, 400, "invalid chunk extension");
                goto out;
            }
            break;
        case CH_SIZE_LF:
            if (c != '\n') {
                rc = ch_fail(d, 400, "bare CR in chunk size line");
                goto out;
            }
            d->line = 0;
            if (d->size == 0) {
                d->state = CH_TR_START;
            } else {
                if (max_body && d->size > (uint64_t)max_body - d->total) {
                    rc = ch_fail(d, 413, "request body too large");
                    goto out;
                }
                d->state = CH_DATA;
            }
            break;
        case CH_DATA_CR:
            if (c != '\r') {
                rc = ch_fail(d, 400, "missing CRLF after chunk data");
                goto out;
            }
            d->state = CH_DATA_LF;
            break;
        case CH_DATA_LF:
            if (c != '\n') {
                rc = ch_fail(d, 400, "missing CRLF after chunk data");
                goto out;
            }
            d->state = CH_SIZE0;
            d->size = 0;
            d->ndigits = 0;
            d->line = 0;
            break;
        case CH_TR_START:
        case CH_TR_NAME:
        case CH_TR_VALUE:
        case CH_TR_LF:
            if (++d->trailer > TK_HTTP_MAX_TRAILERS) {
                rc = ch_fail(d, 431, "trailer section too large");
                goto out;
            }
            if (d->state == CH_TR_START) {
                if (c == '\r')
                    d->state = CH_END_LF;
                else if (is_tchar(c))
                    d->state = CH_TR_NAME;
                else {
                    rc = ch_fail(d, 400, "invalid trailer field");
                    goto out;
                }
            } else if (d->state == CH_TR_NAME) {
                if (c == ':')
                    d->state = CH_TR_VALUE;
                else if (!is_tchar(c)) {
                    rc = ch_fail(d, 400, "invalid trailer field");
                    goto out;
                }
            } else if (d->state == CH_TR_VALUE) {
                if (c == '\r')
                    d->state = CH_TR_LF;
                else if (!is_field_char(c)) {
                    rc = ch_fail(d, 400, "invalid trailer field");
                    goto out;
                }
            } else {
                if (c != '\n') {
                    rc = ch_fail(d, 400, "bare CR in trailer");
                    goto out;
                }
                d->state = CH_TR_START;
            }
            break;
        case CH_END_LF:
            if (c != '\n') {
                rc = ch_fail(d, 400, "bare CR after last chunk");
                goto out;
            }
            d->state = CH_DONE;
            rc = 1;
            goto out;
        case CH_DONE:
        default:
            rc = ch_fail(d, 400, "chunked body already complete");
            goto out;
        }
    }
out:
    *consumed = i;
    *produced = out;
    return rc;
}

/* --- Accept-Encoding ---------------------------------------------------------------- */

/* qvalue (RFC 9110 12.4.2) in thousandths; -1 if malformed. */
static int parse_qvalue(const char *p, size_t n)
{
    if (n == 0 || (p[0] != '0' && p[0] != '1'))
        return -1;
    int q = (p[0] - '0') * 1000;
    if (n == 1)
        return q;
    if (p[1] != '.' || n > 5)
        return -1;
    int scale = 100;
    for (size_t i = 2; i < n; i++, scale /= 10) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        q += (p[i] - '0') * scale;
    }
    return q > 1000 ? -1 : q;
}

int tk_http_accepts_gzip(tk_str_t ae)
{
    int q_gzip = -1, q_star = -1, q_identity = -1;
    tk_str_t e;

    if (ae.p == NULL)
        return 0;
    const char *p = ae.p, *end = ae.p + ae.len;
    while (list_next(&p, end, &e)) {
        size_t i = 0;
        while (i < e.len && is_tchar((unsigned char)e.p[i]))
            i++;
        if (i == 0)
            continue;
        tk_str_t name = {e.p, i};
        int q = 1000;
        /* parameters: *( OWS ";" OWS name "=" value ); only q matters */
        while (i < e.len) {
            while (i < e.len && is_ows((unsigned char)e.p[i]))
                i++;
            if (i >= e.len || e.p[i] != ';') {
                q = -1;
                break;
            }
            i++;
            while (i < e.len && is_ows((unsigned char)e.p[i]))
                i++;
            size_t ps = i;
            while (i < e.len && e.p[i] != ';' && !is_ows((unsigned char)e.p[i]))
                i++;
            if (i - ps >= 2 && (e.p[ps] == 'q' || e.p[ps] == 'Q') && e.p[ps + 1] == '=')
                q = parse_qvalue(e.p + ps + 2, i - ps - 2);
            if (q < 0)
                break;
        }
        if (q < 0)
            continue; /* a malformed element is ignored */
        if (tk_str_caseeq(name, "gzip") || tk_str_caseeq(name, "x-gzip")) {
            if (q_gzip < 0)
                q_gzip = q;
        } else if (tk_str_caseeq(name, "*")) {
            if (q_star < 0)
                q_star = q;
        } else if (tk_str_caseeq(name, "identity")) {
            if (q_identity < 0)
                q_identity = q;
        }
    }
    int q = q_gzip >= 0 ? q_gzip : q_star;
    if (q <= 0)
        return 0;
    if (q_identity >= 0 && q < q_identity)
        return 0;
    return 1;
}
