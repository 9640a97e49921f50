/* http_response.c: response building: buffers, Date, status line, headers, gzip, handler API. */
#include "config.h"

#include "http/http_response.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <zlib.h>

#include "http/http_ctx.h"
#include "http/uri.h"

/* --- buffers ------------------------------------------------------------------------ */

void tk_http_buf_init(tk_http_buf_t *b)
{
    b->data = NULL;
    b->len = b->cap = 0;
}

void tk_http_buf_free(tk_http_buf_t *b)
{
    free(b->data);
    tk_http_buf_init(b);
}

char *tk_http_buf_reserve(tk_http_buf_t *b, size_t n)
{
    if (b->cap - b->len >= n)
        return b->data + b->len;
    size_t need = b->len + n;
    if (need < b->len) {
        errno = ENOMEM;
        return NULL;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap * 2 > cap ? cap * 2 : need;
    char *d = realloc(b->data, cap);
    if (!d)
        return NULL;
    b->data = d;
    b->cap = cap;
    return b->data + b->len;
}

int tk_http_buf_append(tk_http_buf_t *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    char *w = tk_http_buf_reserve(b, n);
    if (!w)
        return -1;
    memcpy(w, p, n);
    b->len += n;
    return 0;
}

int tk_http_buf_append_str(tk_http_buf_t *b, const char *s)
{
    return tk_http_buf_append(b, s, strlen(s));
}

int tk_http_buf_vprintf(tk_http_buf_t *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    size_t avail = b->cap - b->len;
    int n = vsnprintf(avail ? b->data + b->len : NULL, avail, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return -1;
    if ((size_t)n >= avail) {
        char *w = tk_http_buf_reserve(b, (size_t)n + 1);
        if (!w)
            return -1;
        vsnprintf(w, (size_t)n + 1, fmt, ap);
    }
    b->len += (size_t)n;
    return 0;
}

int tk_http_buf_printf(tk_http_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = tk_http_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

void tk_http_buf_reset(tk_http_buf_t *b, size_t keep)
{
    b->len = 0;
    if (b->cap > keep) {
        free(b->data);
        tk_http_buf_init(b);
    }
}

/* --- Date, reasons, types ------------------------------------------------------------- */

void tk_http_date_format(int64_t unix_s, char out[30])
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char mons[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t t = (time_t)unix_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    /* fixed width, so written by hand: "Sun, 06 Nov 1994 08:49:37 GMT" */
    unsigned year = (unsigned)(tm.tm_year + 1900) % 10000u;
    memcpy(out, days[(unsigned)tm.tm_wday % 7u], 3);
    memcpy(out + 3, ", ", 2);
    out[5] = (char)('0' + tm.tm_mday / 10);
    out[6] = (char)('0' + tm.tm_mday % 10);
    out[7] = ' ';
    memcpy(out + 8, mons[(unsigned)tm.tm_mon % 12u], 3);
    out[11] = ' ';
    out[12] = (char)('0' + year / 1000);
    out[13] = (char)('0' + year / 100 % 10);
    out[14] = (char)('0' + year / 10 % 10);
    out[15] = (char)('0' + year % 10);
    out[16] = ' ';
    out[17] = (char)('0' + tm.tm_hour / 10);
    out[18] = (char)('0' + tm.tm_hour % 10);
    out[19] = ':';
    out[20] = (char)('0' + tm.tm_min / 10);
    out[21] = (char)('0' + tm.tm_min % 10);
    out[22] = ':';
    out[23] = (char)('0' + tm.tm_sec / 10);
    out[24] = (char)('0' + tm.tm_sec % 10);
    memcpy(out + 25, " GMT", 5);
}

/* Per process (a worker is one thread): reformatted when the second changes,
 * which costs one vDSO clock read per response. */
static char date_buf[30];
static time_t date_sec = -1;

const char *tk_http_date_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    if (ts.tv_sec != date_sec) {
        tk_http_date_format((int64_t)ts.tv_sec, date_buf);
        date_sec = ts.tv_sec;
    }
    return date_buf;
}

const char *tk_http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 417:
        return "Expectation Failed";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

static int prefix_ci(const char *s, const char *prefix)
{
    for (; *prefix; s++, prefix++) {
        char a = *s, b = *prefix;
        if (a >= 'A' && a <= 'Z')
            a = (char)(a + 32);
        if (a != b)
            return 0;
    }
    return 1;
}

int tk_http_compressible(const char *ct)
{
    if (!ct)
        return 0;
    if (prefix_ci(ct, "text/"))
        return 1;
    static const char *const types[] = {
        "application/json",      "application/javascript", "application/xml",
        "application/xhtml+xml", "image/svg+xml",          "application/problem+json",
    };
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (prefix_ci(ct, types[i]))
            return 1;
    /* any +json / +xml suffix type before parameters */
    const char *semi = strchr(ct, ';');
    size_t n = semi ? (size_t)(semi - ct) : strlen(ct);
    while (n > 0 && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    return (n > 5 && prefix_ci(ct + n - 5, "+json")) || (n > 4 && prefix_ci(ct + n - 4, "+xml"));
}

/* --- serialising ---------------------------------------------------------------------- */

int tk_http_gzip(tk_http_buf_t *out, const void *src, size_t len, int level)
{
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    if (level < 1 || level > 9)
        level = 1;
    /* 15 + 16: a gzip wrapper; memLevel 8 is zlib's default */
    if (deflateInit2(&zs, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return -1;
    size_t bound = deflateBound(&zs, (uLong)len);
    char *w = tk_http_buf_reserve(out, bound);
    if (!w) {
        deflateEnd(&zs);
        return -1;
    }
    zs.next_in = (Bytef *)(uintptr_t)src;
    zs.avail_in = (uInt)len;
    zs.next_out = (Bytef *)w;
    zs.avail_out = (uInt)bound;
    int rc = deflate(&zs, Z_FINISH);
    size_t n = bound - zs.avail_out;
    deflateEnd(&zs);
    if (rc != Z_STREAM_END)
        return -1;
    out->len += n;
    return 0;
}

/* Append "Name: value\r\n" fast (no printf on the hot path). */
static char *put(char *w, const char *s, size_t n)
{
    memcpy(w, s, n);
    return w + n;
}
#define PUT_LIT(w, lit) put((w), (lit), sizeof(lit) - 1)

static char *put_u64(char *w, uint64_t v)
{
    char tmp[24];
    int i = 0;
    do {
        tmp[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i)
        *w++ = tmp[--i];
    return w;
}

int tk_http_response_write(tk_http_buf_t *out, const tk_http_resp_t *r)
{
    const void *body = r->body;
    size_t body_len = r->body_len;
    int gz = 0;
    tk_http_buf_t zbuf;
    tk_http_buf_init(&zbuf);
    int bodyless = r->status < 200 || r->status == 204 || r->status == 304;
    int worth = r->gzip_enabled && !bodyless && body_len > 0 && body_len >= r->gzip_min_size &&
                tk_http_compressible(r->content_type);
    if (worth && r->gzip) {
        if (tk_http_gzip(&zbuf, body, body_len, r->gzip_level) != 0) {
            tk_http_buf_free(&zbuf);
            return -1;
        }
        body = zbuf.data;
        body_len = zbuf.len;
        gz = 1;
    }
    const char *reason = tk_http_reason(r->status);
    size_t ctlen = r->content_type ? strlen(r->content_type) : 0;
    size_t need = 64 + strlen(reason) + 40 + 16 + ctlen + 20 + 32 + 48 + 30 + r->extra_len +
                  (r->head || bodyless ? 0 : body_len);
    size_t start = out->len;
    char *w = tk_http_buf_reserve(out, need);
    if (!w) {
        tk_http_buf_free(&zbuf);
        return -1;
    }
    int status = r->status;
    if (status < 100 || status > 999)
        status = 500;
    w = PUT_LIT(w, "HTTP/1.1 ");
    *w++ = (char)('0' + status / 100);
    *w++ = (char)('0' + status / 10 % 10);
    *w++ = (char)('0' + status % 10);
    *w++ = ' ';
    w = put(w, reason, strlen(reason));
    w = PUT_LIT(w, "\r\nServer: tenk\r\nDate: ");
    w = put(w, tk_http_date_now(), 29);
    w = PUT_LIT(w, "\r\n");
    if (r->content_type) {
        w = PUT_LIT(w, "Content-Type: ");
        w = put(w, r->content_type, ctlen);
        w = PUT_LIT(w, "\r\n");
    }
    if (!bodyless) {
        w = PUT_LIT(w, "Content-Length: ");
        w = put_u64(w, body_len);
        w = PUT_LIT(w, "\r\n");
    }
    if (gz)
        w = PUT_LIT(w, "Content-Encoding: gzip\r\n");
    /* Vary whenever the representation could have been compressed, even when
     * this client did not ask, so caches keep the two apart. */
    if (worth)
        w = PUT_LIT(w, "Vary: Accept-Encoding\r\n");
    if (!r->keep_alive)
        w = PUT_LIT(w, "Connection: close\r\n");
    else if (r->http10)
        w = PUT_LIT(w, "Connection: keep-alive\r\n");
    if (r->extra_len)
        w = put(w, r->extra_headers, r->extra_len);
    w = PUT_LIT(w, "\r\n");
    if (!r->head && !bodyless && body_len)
        w = put(w, body, body_len);
    out->len = (size_t)(w - out->data);
    assert(out->len - start <= need);
    (void)start;
    tk_http_buf_free(&zbuf);
    return 0;
}

/* --- the handler API ------------------------------------------------------------------- */

tk_str_t tk_http_method(const tk_http_ctx_t *ctx)
{
    return ctx->req->method;
}

int tk_http_is_head(const tk_http_ctx_t *ctx)
{
    return ctx->head;
}

tk_str_t tk_http_path(const tk_http_ctx_t *ctx)
{
    return ctx->req->path;
}

tk_str_t tk_http_query_string(const tk_http_ctx_t *ctx)
{
    return ctx->req->query;
}

tk_str_t tk_http_header(const tk_http_ctx_t *ctx, const char *name)
{
    return tk_http_header_get(ctx->req, name);
}

void tk_http_headers_foreach(const tk_http_ctx_t *ctx, tk_http_header_cb cb, void *arg)
{
    for (int i = 0; i < ctx->req->nheaders; i++)
        if (cb(ctx->req->headers[i].name, ctx->req->headers[i].value, arg))
            return;
}

tk_str_t tk_http_param(const tk_http_ctx_t *ctx, const char *name)
{
    tk_str_t none = {NULL, 0};
    if (!ctx->match)
        return none;
    size_t n = strlen(name);
    for (int i = 0; i < ctx->match->nparams; i++) {
        const tk_router_param_t *p = &ctx->match->params[i];
        if (p->name.len == n && memcmp(p->name.p, name, n) == 0)
            return p->value;
    }
    return none;
}

int tk_http_param_copy(const tk_http_ctx_t *ctx, const char *name, char *buf, size_t buflen)
{
    tk_str_t v = tk_http_param(ctx, name);
    if (!v.p)
        return -1;
    size_t n = 0;
    if (tk_uri_decode_path(v, buf, buflen, &n) != TK_URI_OK)
        return -2;
    return (int)n;
}

int tk_http_param_int64(const tk_http_ctx_t *ctx, const char *name, int64_t *out)
{
    tk_str_t v = tk_http_param(ctx, name);
    if (!v.p || v.len == 0 || v.len > 20)
        return -1;
    size_t i = 0;
    int neg = 0;
    if (v.p[0] == '-') {
        neg = 1;
        i = 1;
        if (v.len == 1)
            return -1;
    }
    uint64_t acc = 0;
    for (; i < v.len; i++) {
        unsigned d = (unsigned)(v.p[i] - '0');
        if (d > 9)
            return -1;
        if (acc > (UINT64_MAX - d) / 10)
            return -1;
        acc = acc * 10 + d;
    }
    if (neg) {
        if (acc > (uint64_t)INT64_MAX + 1)
            return -1;
        *out = acc == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)acc;
    } else {
        if (acc > (uint64_t)INT64_MAX)
            return -1;
        *out = (int64_t)acc;
    }
    return 0;
}

int tk_http_query(const tk_http_ctx_t *ctx, const char *name, char *buf, size_t buflen)
{
    size_t n = 0;
    int rc = tk_uri_query_get(ctx->req->query, name, buf, buflen, &n);
    if (rc == 1)
        return (int)n;
    if (rc == 0)
        return -1;
    return rc == -2 ? -2 : -3;
}

tk_str_t tk_http_body(const tk_http_ctx_t *ctx)
{
    tk_str_t b = ctx->req->body;
    if (!b.p) {
        b.p = "";
        b.len = 0;
    }
    return b;
}

int tk_http_route_id(const tk_http_ctx_t *ctx)
{
    return ctx->route_id;
}

uint64_t tk_http_conn_id(const tk_http_ctx_t *ctx)
{
    return ctx->conn_id;
}

int tk_http_is_admin(const tk_http_ctx_t *ctx)
{
    return ctx->admin;
}

const char *tk_http_peer(const tk_http_ctx_t *ctx)
{
    return ctx->peer ? ctx->peer : "-";
}

const tk_http_request_t *tk_http_request(const tk_http_ctx_t *ctx)
{
    return ctx->req;
}

const tk_conf_t *tk_http_conf(const tk_http_ctx_t *ctx)
{
    return ctx->conf;
}

int tk_http_status(const tk_http_ctx_t *ctx)
{
    return ctx->status;
}

size_t tk_http_bytes_out(const tk_http_ctx_t *ctx)
{
    return ctx->bytes_out;
}

/* A header name or value must not smuggle a line break into the response. */
static int header_safe(const char *s, int is_name)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\r' || c == '\n' || c == 0x7f || (c < 0x20 && c != '\t'))
            return 0;
        if (is_name && (c == ':' || c == ' ' || c == '\t'))
            return 0;
    }
    return 1;
}

int tk_http_add_header(tk_http_ctx_t *ctx, const char *name, const char *value)
{
    if (ctx->responded || !name[0] || !header_safe(name, 1) || !header_safe(value, 0)) {
        errno = EINVAL;
        return -1;
    }
    size_t nl = strlen(name), vl = strlen(value);
    char *w = tk_http_buf_reserve(&ctx->hdrs, nl + vl + 4);
    if (!w)
        return -1;
    w = put(w, name, nl);
    w = PUT_LIT(w, ": ");
    w = put(w, value, vl);
    w = PUT_LIT(w, "\r\n");
    ctx->hdrs.len = (size_t)(w - ctx->hdrs.data);
    return 0;
}

int tk_http_add_headerf(tk_http_ctx_t *ctx, const char *name, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        errno = EINVAL;
        return -1;
    }
    return tk_http_add_header(ctx, name, tmp);
}

void tk_http_set_close(tk_http_ctx_t *ctx)
{
    ctx->keep_alive = 0;
}

static void resp_fill(tk_http_ctx_t *ctx, tk_http_resp_t *r, int status, const char *ct)
{
    const tk_conf_t *conf = ctx->conf;
    memset(r, 0, sizeof(*r));
    r->status = status;
    r->content_type = ct;
    r->extra_headers = ctx->hdrs.data;
    r->extra_len = ctx->hdrs.len;
    r->head = ctx->head;
    r->keep_alive = ctx->keep_alive;
    r->http10 = ctx->http10;
    r->gzip_enabled = conf ? conf->gzip : 0;
    r->gzip = ctx->gzip_ok;
    r->gzip_min_size = conf ? conf->gzip_min_size : 1024;
    r->gzip_level = conf ? conf->gzip_level : 1;
}

int tk_http_respond(tk_http_ctx_t *ctx, int status, const char *content_type, const void *body,
                    size_t len)
{
    if (ctx->responded) {
        errno = EALREADY;
        return -1;
    }
    tk_http_resp_t r;
    resp_fill(ctx, &r, status, content_type);
    r.body = body;
    r.body_len = len;
    size_t before = ctx->out->len;
    if (tk_http_response_write(ctx->out, &r) != 0)
        return -1;
    ctx->bytes_out += ctx->out->len - before;
    ctx->responded = 1;
    ctx->status = status;
    return 0;
}

int tk_http_respond_json(tk_http_ctx_t *ctx, int status, const struct cJSON *json)
{
    char *s = cJSON_PrintUnformatted(json);
    if (!s)
        return tk_http_respond_error(ctx, 500, "out of memory");
    int rc = tk_http_respond(ctx, status, "application/json", s, strlen(s));
    cJSON_free(s);
    return rc;
}

/* JSON string escaping for error messages (RFC 8259 7). */
static int json_escape(tk_http_buf_t *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[7];
        size_t n = 0;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            n = 2;
        } else if (c < 0x20) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        } else {
            esc[0] = (char)c;
            n = 1;
        }
        if (tk_http_buf_append(b, esc, n) != 0)
            return -1;
    }
    return 0;
}

int tk_http_respond_error(tk_http_ctx_t *ctx, int status, const char *message)
{
    char stack[256];
    tk_http_buf_t b = {stack, 0, sizeof(stack)};
    int rc = -1;
    /* the stack buffer is used until it overflows; reserve() would realloc
     * it, so copy to the heap first in that (rare) case */
    size_t mlen = strlen(message);
    if (mlen * 6 + 16 > sizeof(stack))
        tk_http_buf_init(&b);
    if (tk_http_buf_append(&b, "{\"error\":\"", 10) == 0 && json_escape(&b, message) == 0 &&
        tk_http_buf_append(&b, "\"}", 2) == 0)
        rc = tk_http_respond(ctx, status, "application/json", b.data, b.len);
    if (b.data != stack)
        tk_http_buf_free(&b);
    return rc;
}

tk_http_buf_t *tk_http_body_buf(tk_http_ctx_t *ctx)
{
    return &ctx->body;
}

int tk_http_respond_buf(tk_http_ctx_t *ctx, int status, const char *content_type)
{
    return tk_http_respond(ctx, status, content_type, ctx->body.data, ctx->body.len);
}

int tk_http_responded(const tk_http_ctx_t *ctx)
{
    return ctx->responded;
}

int tk_http_stream_begin(tk_http_ctx_t *ctx, int status, const char *content_type)
{
    if (ctx->responded) {
        errno = EALREADY;
        return -1;
    }
    /* 1.0 has no chunked coding: the end of the body is the close */
    ctx->stream_chunked = !ctx->http10;
    if (!ctx->stream_chunked)
        ctx->keep_alive = 0;
    size_t before = ctx->out->len;
    int rc = tk_http_buf_printf(ctx->out, "HTTP/1.1 %d %s\r\nServer: tenk\r\nDate: %s\r\n", status,
                                tk_http_reason(status), tk_http_date_now());
    if (rc == 0 && content_type)
        rc = tk_http_buf_printf(ctx->out, "Content-Type: %s\r\n", content_type);
    if (rc == 0 && ctx->stream_chunked && !ctx->head)
        rc = tk_http_buf_append_str(ctx->out, "Transfer-Encoding: chunked\r\n");
    if (rc == 0 && !ctx->keep_alive)
        rc = tk_http_buf_append_str(ctx->out, "Connection: close\r\n");
    if (rc == 0 && ctx->hdrs.len)
        rc = tk_http_buf_append(ctx->out, ctx->hdrs.data, ctx->hdrs.len);
    if (rc == 0)
        rc = tk_http_buf_append(ctx->out, "\r\n", 2);
    if (rc != 0) {
        ctx->out->len = before;
        return -1;
    }
    ctx->bytes_out += ctx->out->len - before;
    ctx->responded = ctx->streaming = 1;
    ctx->status = status;
    return tk_http_conn_flush_ctx(ctx);
}

int tk_http_stream_write(tk_http_ctx_t *ctx, const void *p, size_t len)
{
    if (!ctx->streaming || ctx->stream_ended || ctx->client_gone) {
        errno = EPIPE;
        return -1;
    }
    if (ctx->head || len == 0)
        return 0;
    size_t before = ctx->out->len;
    int rc = 0;
    if (ctx->stream_chunked)
        rc = tk_http_buf_printf(ctx->out, "%zx\r\n", len);
    if (rc == 0)
        rc = tk_http_buf_append(ctx->out, p, len);
    if (rc == 0 && ctx->stream_chunked)
        rc = tk_http_buf_append(ctx->out, "\r\n", 2);
    if (rc != 0) {
        ctx->out->len = before;
        return -1;
    }
    ctx->bytes_out += ctx->out->len - before;
    return tk_http_conn_flush_ctx(ctx);
}

int tk_http_stream_end(tk_http_ctx_t *ctx)
{
    if (!ctx->streaming || ctx->stream_ended) {
        errno = EINVAL;
        return -1;
    }
    ctx->stream_ended = 1;
    if (ctx->client_gone)
        return -1;
    if (ctx->stream_chunked && !ctx->head) {
        if (tk_http_buf_append(ctx->out, "0\r\n\r\n", 5) != 0)
            return -1;
        ctx->bytes_out += 5;
    }
    return tk_http_conn_flush_ctx(ctx);
}
