/* test_http_response.c: unit tests for response building: buffers, Date, heads, gzip, the handler
 * API. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <cjson/cJSON.h>
#include <zlib.h>

#include "http/http_conn.h"
#include "http/http_ctx.h"
#include "http/http_json.h"
#include "http/http_response.h"

/* The response head as a NUL-terminated copy, and where the body starts. */
static char *head_of(const tk_http_buf_t *b, size_t *body_off)
{
    const char *end = memmem(b->data, b->len, "\r\n\r\n", 4);
    assert_non_null(end);
    size_t n = (size_t)(end - b->data) + 4;
    char *h = malloc(n + 1);
    memcpy(h, b->data, n);
    h[n] = '\0';
    *body_off = n;
    return h;
}

static void test_buf(void **state)
{
    (void)state;
    tk_http_buf_t b;
    tk_http_buf_init(&b);
    assert_int_equal(tk_http_buf_append(&b, "abc", 3), 0);
    assert_int_equal(tk_http_buf_printf(&b, "-%d-%s", 42, "x"), 0);
    assert_int_equal(b.len, 8);
    assert_memory_equal(b.data, "abc-42-x", 8);
    /* printf that needs to grow the buffer */
    char big[3000];
    memset(big, 'q', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(tk_http_buf_printf(&b, "%s!", big), 0);
    assert_int_equal(b.len, 8 + 2999 + 1);
    assert_int_equal(b.data[b.len - 1], '!');
    char *w = tk_http_buf_reserve(&b, 10);
    assert_non_null(w);
    memcpy(w, "0123456789", 10);
    tk_http_buf_commit(&b, 10);
    assert_memory_equal(b.data + b.len - 10, "0123456789", 10);
    tk_http_buf_reset(&b, 1 << 20); /* keeps its memory */
    assert_int_equal(b.len, 0);
    assert_non_null(b.data);
    tk_http_buf_reset(&b, 16); /* too big to keep */
    assert_null(b.data);
    assert_int_equal(b.cap, 0);
    tk_http_buf_free(&b);
}

static void test_date(void **state)
{
    (void)state;
    char out[30];
    tk_http_date_format(784111777, out); /* RFC 9110's example */
    assert_string_equal(out, "Sun, 06 Nov 1994 08:49:37 GMT");
    tk_http_date_format(0, out);
    assert_string_equal(out, "Thu, 01 Jan 1970 00:00:00 GMT");
    tk_http_date_format(951782400, out); /* leap day */
    assert_string_equal(out, "Tue, 29 Feb 2000 00:00:00 GMT");
    const char *now = tk_http_date_now();
    assert_int_equal(strlen(now), 29);
    char expect[30];
    tk_http_date_format((int64_t)time(NULL), expect);
    /* equal unless the second turned between the two calls */
    if (strcmp(now, expect) != 0) {
        tk_http_date_format((int64_t)time(NULL) - 1, expect);
        assert_string_equal(now, expect);
    }
}

static void test_reason_and_types(void **state)
{
    (void)state;
    assert_string_equal(tk_http_reason(200), "OK");
    assert_string_equal(tk_http_reason(404), "Not Found");
    assert_string_equal(tk_http_reason(431), "Request Header Fields Too Large");
    assert_string_equal(tk_http_reason(599), "Unknown");
    assert_true(tk_http_compressible("text/plain"));
    assert_true(tk_http_compressible("Text/HTML; charset=utf-8"));
    assert_true(tk_http_compressible("application/json"));
    assert_true(tk_http_compressible("application/vnd.api+json"));
    assert_true(tk_http_compressible("application/atom+xml; charset=utf-8"));
    assert_true(tk_http_compressible("image/svg+xml"));
    assert_false(tk_http_compressible("image/png"));
    assert_false(tk_http_compressible("application/octet-stream"));
    assert_false(tk_http_compressible("application/gzip"));
    assert_false(tk_http_compressible(NULL));
}

static tk_http_resp_t base_resp(void)
{
    tk_http_resp_t r;
    memset(&r, 0, sizeof(r));
    r.status = 200;
    r.content_type = "text/plain";
    r.body = "Hello, World!";
    r.body_len = 13;
    r.keep_alive = 1;
    r.gzip_min_size = 1024;
    r.gzip_level = 1;
    return r;
}

static void test_write_basic(void **state)
{
    (void)state;
    tk_http_buf_t b;
    tk_http_buf_init(&b);
    tk_http_resp_t r = base_resp();
    assert_int_equal(tk_http_response_write(&b, &r), 0);
    size_t off;
    char *h = head_of(&b, &off);
    assert_true(strncmp(h, "HTTP/1.1 200 OK\r\n", 17) == 0);
    assert_non_null(strstr(h, "\r\nServer: tenk\r\n"));
    assert_non_null(strstr(h, "\r\nDate: "));
    assert_non_null(strstr(h, "\r\nContent-Type: text/plain\r\n"));
    assert_non_null(strstr(h, "\r\nContent-Length: 13\r\n"));
    assert_null(strstr(h, "Connection"));
    assert_null(strstr(h, "Vary"));
    assert_int_equal(b.len - off, 13);
    assert_memory_equal(b.data + off, "Hello, World!", 13);
    free(h);

    /* a second response appends (pipelining) and says close */
    size_t first = b.len;
    r.keep_alive = 0;
    r.status = 404;
    r.extra_headers = "X-A: 1\r\nX-B: 2\r\n";
    r.extra_len = strlen(r.extra_headers);
    assert_int_equal(tk_http_response_write(&b, &r), 0);
    tk_http_buf_t second = {b.data + first, b.len - first, b.len - first};
    h = head_of(&second, &off);
    assert_true(strncmp(h, "HTTP/1.1 404 Not Found\r\n", 24) == 0);
    assert_non_null(strstr(h, "\r\nConnection: close\r\n"));
    assert_non_null(strstr(h, "\r\nX-A: 1\r\nX-B: 2\r\n"));
    free(h);
    tk_http_buf_free(&b);
}

static void test_write_head_204_http10(void **state)
{
    (void)state;
    tk_http_buf_t b;
    tk_http_buf_init(&b);
    size_t off;
    tk_http_resp_t r = base_resp();
    r.head = 1;
    assert_int_equal(tk_http_response_write(&b, &r), 0);
    char *h = head_of(&b, &off);
    assert_non_null(strstr(h, "Content-Length: 13\r\n"));
    assert_int_equal(off, b.len); /* no body */
    free(h);

    b.len = 0;
    r = base_resp();
    r.status = 204;
    assert_int_equal(tk_http_response_write(&b, &r), 0);
    h = head_of(&b, &off);
    assert_null(strstr(h, "Content-Length"));
    assert_int_equal(off, b.len);
    free(h);

    b.len = 0;
    r = base_resp();
    r.http10 = 1;
    assert_int_equal(tk_http_response_write(&b, &r), 0);
    h = head_of(&b, &off);
    assert_non_null(strstr(h, "\r\nConnection: keep-alive\r\n"));
    free(h);
    tk_http_buf_free(&b);
}

static void inflate_check(const char *z, size_t zlen, const char *expect, size_t elen)
{
    char *out = malloc(elen + 16);
    z_stream s;
    memset(&s, 0, sizeof(s));
    assert_int_equal(inflateInit2(&s, 16 + MAX_WBITS), Z_OK);
    s.next_in = (Bytef *)(uintptr_t)z;
    s.avail_in = (uInt)zlen;
    s.next_out = (Bytef *)out;
    s.avail_out = (uInt)(elen + 16);
    assert_int_equal(inflate(&s, Z_FINISH), Z_STREAM_END);
    assert_int_equal(s.total_out, elen);
    assert_memory_equal(out, expect, elen);
    inflateEnd(&s);
    free(out);
}

static void test_write_gzip(void **state)
{
    (void)state;
    size_t n = 5000;
    char *text = malloc(n);
    for (size_t i = 0; i < n; i++)
        text[i] = "tenk gzip "[i % 10];
    tk_http_buf_t b;
    tk_http_buf_init(&b);
    size_t off;
    tk_http_resp_t r = base_resp();
    r.body = text;
    r.body_len = n;
    r.gzip_enabled = 1;
    r.gzip = 1;
    assert_int_equal(tk_http_response_write(&b, &r), 0);
    char *h = head_of(&b, &off);
    assert_non_null(strstr(h, "\r\nContent-Encoding: gzip\r\n"));
    assert_non_null(strstr(h, "\r\nVary: Accept-Encoding\r\n"));
    size_t zlen = b.len - off;
    char cl[64];
    snprintf(cl, sizeof(cl), "\r\nContent-Length: %zu\r\n", zlen);
    assert_non_null(strstr(h, cl));
    assert_true(zlen < n / 10);
    inflate_check(b.data + off, zlen, text, n);
    free(h);

    /* the client did not ask: identity, but Vary all the same */
    b.len = 0;
    r.gzip = 0;
    assert_int_equal(tk_http_response_write(&b, &r), 0);
    h = head_of(&b, &off);
    assert_null(strstr(h, "Content-Encoding"));
    assert_non_null(strstr(h, "Vary: Accept-Encoding"));
    assert_int_equal(b.len - off, n);
    free(h);

    /* too small, or not compressible, or gzip off: untouched, no Vary */
    const struct {
        size_t len;
        const char *ct;
        int enabled;
    } cases[] = {{100, "text/plain", 1}, {n, "image/png", 1}, {n, "text/plain", 0}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        b.len = 0;
        r.gzip = 1;
        r.body_len = cases[i].len;
        r.content_type = cases[i].ct;
        r.gzip_enabled = cases[i].enabled;
        assert_int_equal(tk_http_response_write(&b, &r), 0);
        h = head_of(&b, &off);
        assert_null(strstr(h, "Content-Encoding"));
        assert_null(strstr(h, "Vary"));
        assert_int_equal(b.len - off, cases[i].len);
        free(h);
    }
    /* HEAD of a gzipped response: the compressed length, no body */
    b.len = 0;
    r = base_resp();
    r.body = text;
    r.body_len = n;
    r.gzip_enabled = r.gzip = 1;
    r.head = 1;
    assert_int_equal(tk_http_response_write(&b, &r), 0);
    h = head_of(&b, &off);
    assert_non_null(strstr(h, "Content-Encoding: gzip"));
    assert_int_equal(off, b.len);
    free(h);
    tk_http_buf_free(&b);
    free(text);
}

/* A context as the engine builds it, without a connection. */
typedef struct {
    tk_http_ctx_t ctx;
    tk_http_request_t req;
    tk_router_match_t m;
    tk_http_buf_t out;
} fake_t;

static void fake_init(fake_t *f, const char *query)
{
    memset(f, 0, sizeof(*f));
    tk_http_buf_init(&f->out);
    f->req.method = tk_str_from_cstr("GET");
    f->req.path = tk_str_from_cstr("/users/42");
    f->req.query = tk_str_from_cstr(query);
    f->req.version_minor = 1;
    f->req.nheaders = 1;
    f->req.headers[0].name = tk_str_from_cstr("X-Thing");
    f->req.headers[0].value = tk_str_from_cstr("yes");
    f->m.nparams = 3;
    f->m.params[0].name = tk_str_from_cstr("id");
    f->m.params[0].value = tk_str_from_cstr("42");
    f->m.params[1].name = tk_str_from_cstr("neg");
    f->m.params[1].value = tk_str_from_cstr("-9223372036854775808");
    f->m.params[2].name = tk_str_from_cstr("enc");
    f->m.params[2].value = tk_str_from_cstr("a%20b");
    f->ctx.req = &f->req;
    f->ctx.match = &f->m;
    f->ctx.out = &f->out;
    f->ctx.keep_alive = 1;
    f->ctx.route_id = 3;
}

static void fake_fini(fake_t *f)
{
    tk_http_buf_free(&f->out);
    tk_http_buf_free(&f->ctx.hdrs);
    tk_http_buf_free(&f->ctx.body);
}

static void test_ctx_request(void **state)
{
    (void)state;
    fake_t f;
    fake_init(&f, "limit=10&name=J%C3%B6rg+X&bad=%zz");
    tk_http_ctx_t *ctx = &f.ctx;
    assert_true(tk_str_eq_lit(tk_http_method(ctx), "GET"));
    assert_true(tk_str_eq_lit(tk_http_path(ctx), "/users/42"));
    assert_true(tk_str_eq_lit(tk_http_header(ctx, "x-thing"), "yes"));
    assert_null(tk_http_header(ctx, "x-other").p);
    assert_true(tk_str_eq_lit(tk_http_param(ctx, "id"), "42"));
    assert_null(tk_http_param(ctx, "nope").p);
    int64_t v = 0;
    assert_int_equal(tk_http_param_int64(ctx, "id", &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(tk_http_param_int64(ctx, "neg", &v), 0);
    assert_true(v == INT64_MIN);
    assert_int_equal(tk_http_param_int64(ctx, "enc", &v), -1);
    assert_int_equal(tk_http_param_int64(ctx, "nope", &v), -1);
    char buf[32];
    assert_int_equal(tk_http_param_copy(ctx, "enc", buf, sizeof(buf)), 3);
    assert_string_equal(buf, "a b");
    assert_int_equal(tk_http_param_copy(ctx, "nope", buf, sizeof(buf)), -1);
    assert_int_equal(tk_http_param_copy(ctx, "enc", buf, 2), -2);
    assert_int_equal(tk_http_query(ctx, "limit", buf, sizeof(buf)), 2);
    assert_string_equal(buf, "10");
    assert_int_equal(tk_http_query(ctx, "name", buf, sizeof(buf)), 7);
    assert_string_equal(buf, "J\xc3\xb6rg X");
    assert_int_equal(tk_http_query(ctx, "missing", buf, sizeof(buf)), -1);
    assert_int_equal(tk_http_query(ctx, "bad", buf, sizeof(buf)), -3);
    assert_int_equal(tk_http_query(ctx, "name", buf, 4), -2);
    assert_int_equal(tk_http_body(ctx).len, 0);
    assert_non_null(tk_http_body(ctx).p);
    assert_int_equal(tk_http_route_id(ctx), 3);
    fake_fini(&f);
}

static void test_ctx_respond(void **state)
{
    (void)state;
    fake_t f;
    fake_init(&f, NULL);
    tk_http_ctx_t *ctx = &f.ctx;
    /* header injection is refused */
    assert_int_equal(tk_http_add_header(ctx, "X-Bad", "a\r\nSet-Cookie: x"), -1);
    assert_int_equal(tk_http_add_header(ctx, "X Bad", "a"), -1);
    assert_int_equal(tk_http_add_header(ctx, "Location", "/users/7"), 0);
    assert_int_equal(tk_http_add_headerf(ctx, "X-Count", "%d", 12), 0);
    assert_int_equal(tk_http_respond_error(ctx, 409, "dup \"email\"\n\\"), 0);
    assert_true(tk_http_responded(ctx));
    assert_int_equal(ctx->status, 409);
    assert_int_equal(ctx->bytes_out, f.out.len);
    /* only one answer per request */
    assert_int_equal(tk_http_respond(ctx, 200, NULL, NULL, 0), -1);
    size_t off;
    char *h = head_of(&f.out, &off);
    assert_true(strncmp(h, "HTTP/1.1 409 Conflict\r\n", 23) == 0);
    assert_non_null(strstr(h, "\r\nLocation: /users/7\r\nX-Count: 12\r\n"));
    assert_non_null(strstr(h, "Content-Type: application/json"));
    free(h);
    cJSON *j = cJSON_ParseWithLength(f.out.data + off, f.out.len - off);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "error")->valuestring, "dup \"email\"\n\\");
    cJSON_Delete(j);
    fake_fini(&f);

    /* JSON and the body buffer */
    fake_init(&f, NULL);
    ctx = &f.ctx;
    tk_http_buf_t *b = tk_http_body_buf(ctx);
    assert_int_equal(b->len, 0);
    tk_http_buf_append_str(b, "[1,2,3]");
    assert_int_equal(tk_http_respond_buf(ctx, 200, "application/json"), 0);
    h = head_of(&f.out, &off);
    assert_non_null(strstr(h, "Content-Length: 7\r\n"));
    assert_memory_equal(f.out.data + off, "[1,2,3]", 7);
    free(h);
    fake_fini(&f);

    fake_init(&f, NULL);
    ctx = &f.ctx;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "message", "Hello, World!");
    assert_int_equal(tk_http_respond_json(ctx, 201, o), 0);
    cJSON_Delete(o);
    h = head_of(&f.out, &off);
    assert_true(strncmp(h, "HTTP/1.1 201 Created\r\n", 22) == 0);
    assert_memory_equal(f.out.data + off, "{\"message\":\"Hello, World!\"}", 27);
    free(h);
    fake_fini(&f);

    /* a long error message (heap path of respond_error) */
    fake_init(&f, NULL);
    ctx = &f.ctx;
    char msg[400];
    memset(msg, '"', sizeof(msg) - 1);
    msg[sizeof(msg) - 1] = '\0';
    assert_int_equal(tk_http_respond_error(ctx, 400, msg), 0);
    h = head_of(&f.out, &off);
    j = cJSON_ParseWithLength(f.out.data + off, f.out.len - off);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "error")->valuestring, msg);
    cJSON_Delete(j);
    free(h);
    fake_fini(&f);
}

/* The JSON depth pre-scan: brackets in strings and escapes do not count, it
 * stops at limit + 1, and it is linear (a megabyte of '[' is one pass). */
static void test_json_depth(void **state)
{
    (void)state;
#define D(s, lim) tk_http_json_depth(s, sizeof(s) - 1, lim)
    assert_int_equal(D("", 32), 0);
    assert_int_equal(D("1", 32), 0);
    assert_int_equal(D("{}", 32), 1);
    assert_int_equal(D("[[]]", 32), 2);
    assert_int_equal(D("[{\"a\":[1]}]", 32), 3);
    assert_int_equal(D("[\"[[[[\"]", 32), 1);       /* in a string */
    assert_int_equal(D("[\"\\\"[[\"]", 32), 1);     /* escaped quote stays in the string */
    assert_int_equal(D("[\"\\\\\",[[1]]]", 32), 3); /* escaped backslash ends before the quote */
    assert_int_equal(D("]]]][[", 32), 2);           /* unbalanced: left to the parser */
    assert_int_equal(D("[[[[[", 3), 4);             /* stops at limit + 1 */
    assert_int_equal(D("[[[]]]", 3), 3);
#undef D
    size_t n = 1024 * 1024;
    char *deep = malloc(n);
    assert_non_null(deep);
    memset(deep, '[', n);
    assert_int_equal(tk_http_json_depth(deep, n, TK_HTTP_JSON_MAX_DEPTH),
                     TK_HTTP_JSON_MAX_DEPTH + 1);
    memset(deep, ' ', n);
    deep[0] = '"'; /* one long string of brackets: depth 0 */
    memset(deep + 1, '{', n - 2);
    deep[n - 1] = '"';
    assert_int_equal(tk_http_json_depth(deep, n, TK_HTTP_JSON_MAX_DEPTH), 0);
    free(deep);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf),
        cmocka_unit_test(test_date),
        cmocka_unit_test(test_reason_and_types),
        cmocka_unit_test(test_write_basic),
        cmocka_unit_test(test_write_head_204_http10),
        cmocka_unit_test(test_write_gzip),
        cmocka_unit_test(test_ctx_request),
        cmocka_unit_test(test_ctx_respond),
        cmocka_unit_test(test_json_depth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
