/* fuzz_http_parser.c: libFuzzer target for the request head parser and the chunked decoder.
 *
 * Besides memory safety (ASan/UBSan), it checks the parser's central promise:
 * feeding the same bytes in pieces (resuming with the scan state, each piece
 * in a fresh buffer) gives exactly the result of parsing them in one piece,
 * and the same for the chunked decoder. Any disagreement aborts.
 *
 * The first input byte picks the mode: bit 0 = raw chunked body instead of a
 * request, bit 1 = tiny limits (so the 413/414/431 paths are reached); the
 * rest of that byte seeds the split sizes. It runs on a green thread, as in a
 * worker (gt_run.h). */
// fuzz-sources: server/http/http_parser.c @runtime
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http_parser.h"
#include "gt_run.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_http_parser: check failed at line %d: %s\n", __LINE__, #cond);   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Split sizes from a tiny xorshift seeded by the mode byte and the length. */
static uint32_t next_step(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x % 23 == 0 ? 0 : (x % 7 == 0 ? 1 + x % 64 : 1 + x % 3);
}

static size_t g_size; /* bytes in both buffers being compared */

static void same_str(tk_str_t a, const char *abase, tk_str_t b, const char *bbase)
{
    CHECK((a.p == NULL) == (b.p == NULL));
    CHECK(a.len == b.len);
    if (a.p == NULL)
        return;
    /* slices point into their own buffer, or at a static "/" for the path */
    int a_in = a.p >= abase && a.p <= abase + g_size;
    int b_in = b.p >= bbase && b.p <= bbase + g_size;
    CHECK(a_in == b_in);
    if (a_in)
        CHECK(a.p - abase == b.p - bbase);
    CHECK(memcmp(a.p, b.p, a.len) == 0);
}

static void same_request(const tk_http_request_t *a, const char *abase, const tk_http_request_t *b,
                         const char *bbase)
{
    same_str(a->method, abase, b->method, bbase);
    CHECK(a->method_id == b->method_id);
    same_str(a->target, abase, b->target, bbase);
    same_str(a->path, abase, b->path, bbase);
    same_str(a->query, abase, b->query, bbase);
    CHECK(a->version_minor == b->version_minor);
    CHECK(a->nheaders == b->nheaders);
    for (int i = 0; i < a->nheaders; i++) {
        same_str(a->headers[i].name, abase, b->headers[i].name, bbase);
        same_str(a->headers[i].value, abase, b->headers[i].value, bbase);
    }
    CHECK(a->content_length == b->content_length);
    CHECK(a->chunked == b->chunked && a->keep_alive == b->keep_alive);
    CHECK(a->conn_close == b->conn_close && a->expect_continue == b->expect_continue);
    same_str(a->host, abase, b->host, bbase);
    same_str(a->accept_encoding, abase, b->accept_encoding, bbase);
    same_str(a->content_type, abase, b->content_type, bbase);
}

/* Invariants of a successfully parsed head. */
static void check_request(const tk_http_request_t *r, const char *buf, int n,
                          const tk_http_limits_t *lim)
{
    CHECK(n >= 16); /* "X / HTTP/1.0\r\n\r\n" is the shortest head */
    CHECK(buf[n - 1] == '\n' && buf[n - 2] == '\r' && buf[n - 3] == '\n' && buf[n - 4] == '\r');
    CHECK(r->method.len > 0 && r->target.len > 0 && r->path.len > 0);
    CHECK(r->version_minor == 0 || r->version_minor == 1);
    CHECK(!(r->chunked && r->content_length >= 0));
    CHECK(r->nheaders >= 0 && r->nheaders <= TK_HTTP_MAX_HEADERS);
    if (lim->max_headers)
        CHECK(r->nheaders <= lim->max_headers);
    if (r->version_minor == 1)
        CHECK(r->host.p != NULL);
    if (r->keep_alive)
        CHECK(!r->conn_close);
    for (int i = 0; i < r->nheaders; i++) {
        CHECK(r->headers[i].name.len > 0);
        for (size_t k = 0; k < r->headers[i].value.len; k++) {
            unsigned char c = (unsigned char)r->headers[i].value.p[k];
            CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
        }
    }
    if (r->accept_encoding.p)
        (void)tk_http_accepts_gzip(r->accept_encoding);
}

static int parse_pieces(const tk_http_limits_t *lim, const uint8_t *data, size_t len, uint32_t seed,
                        tk_http_request_t *req, tk_http_error_t *err, char **keep)
{
    tk_http_scan_t sc = {0};
    size_t n = 0;
    int rc = 0;
    *keep = NULL;
    while (n < len) {
        n += next_step(&seed);
        if (n > len)
            n = len;
        char *b = malloc(n ? n : 1);
        CHECK(b != NULL);
        memcpy(b, data, n);
        rc = tk_http_parse_head(lim, b, n, &sc, req, err);
        if (rc != 0) {
            *keep = b;
            return rc;
        }
        free(b);
    }
    return 0;
}

/* Decode body in pieces the way the connection layer does: payload kept at
 * the front, each new raw piece appended right after it. */
static int chunked_pieces(const uint8_t *body, size_t len, uint32_t seed, size_t max_body,
                          char *out, size_t *outlen, size_t *consumed_total, tk_http_error_t *err)
{
    tk_http_chunked_t d;
    size_t have = 0, fed = 0;
    int rc = 0;
    tk_http_chunked_init(&d);
    while (fed < len && rc == 0) {
        size_t step = next_step(&seed);
        if (step == 0)
            step = 1;
        if (step > len - fed)
            step = len - fed;
        char *piece = malloc(have + step);
        CHECK(piece != NULL);
        memcpy(piece, out, have);
        memcpy(piece + have, body + fed, step);
        size_t consumed, produced;
        rc = tk_http_chunked_decode(&d, piece + have, step, &consumed, &produced, max_body);
        CHECK(produced <= consumed && consumed <= step);
        if (rc == 0)
            CHECK(consumed == step);
        memcpy(out + have, piece + have, produced);
        have += produced;
        fed += consumed;
        free(piece);
    }
    *outlen = have;
    *consumed_total = fed;
    *err = d.err;
    return rc;
}

static void fuzz_chunked(const uint8_t *body, size_t len, uint32_t seed, size_t max_body)
{
    char *one = malloc(len ? len : 1), *two = malloc(len ? len : 1);
    CHECK(one && two);
    memcpy(one, body, len);
    tk_http_chunked_t d;
    tk_http_chunked_init(&d);
    size_t c1, p1, c2, p2;
    int rc1 = tk_http_chunked_decode(&d, one, len, &c1, &p1, max_body);
    CHECK(p1 <= c1 && c1 <= len);
    if (rc1 == 1)
        CHECK(max_body == 0 || p1 <= max_body);
    tk_http_error_t e2;
    int rc2 = chunked_pieces(body, len, seed, max_body, two, &p2, &c2, &e2);
    CHECK(rc1 == rc2);
    CHECK(p1 == p2 && memcmp(one, two, p1) == 0);
    if (rc1 != 0)
        CHECK(c1 == c2);
    if (rc1 < 0)
        CHECK(d.err.status == e2.status);
    free(one);
    free(two);
}

static int one_input(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    uint32_t seed = 0x9e3779b9u ^ ((uint32_t)mode << 8) ^ (uint32_t)size;

    tk_http_limits_t lim = {0};
    if (mode & 2) {
        lim.max_request_line = 16;
        lim.max_header_size = 64;
        lim.max_headers = 3;
        lim.max_body_size = 32;
    }

    if (mode & 1) {
        fuzz_chunked(data, size, seed, lim.max_body_size);
        (void)tk_http_accepts_gzip((tk_str_t){(const char *)data, size});
        return 0;
    }

    char *one = malloc(size ? size : 1);
    CHECK(one != NULL);
    memcpy(one, data, size);
    tk_http_request_t r1, r2;
    tk_http_error_t e1 = {0, NULL}, e2 = {0, NULL};
    tk_http_scan_t sc = {0};
    int rc1 = tk_http_parse_head(&lim, one, size, &sc, &r1, &e1);
    char *keep;
    int rc2 = parse_pieces(&lim, data, size, seed, &r2, &e2, &keep);
    CHECK(rc1 == rc2);
    if (rc1 < 0) {
        CHECK(e1.status == e2.status && e1.msg != NULL && e2.msg != NULL);
        CHECK(strcmp(e1.msg, e2.msg) == 0);
    }
    if (rc1 > 0) {
        CHECK((size_t)rc1 <= size);
        g_size = (size_t)rc1;
        same_request(&r1, one, &r2, keep);
        check_request(&r1, one, rc1, &lim);
        if (r1.chunked)
            fuzz_chunked(data + rc1, size - (size_t)rc1, seed, lim.max_body_size);
    }
    free(keep);
    free(one);
    return 0;
}

/* On a green thread with the configured stack size, as in a worker (gt_run.h). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_gt_run_input(one_input, data, size);
    return 0;
}
