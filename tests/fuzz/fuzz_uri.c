/* fuzz_uri.c: libFuzzer target for percent-decoding and query-string lookup.
 *
 * Input: a key length byte, the key, then the query string / path. Checks
 * that decoding never grows, that in-place and out-of-place decoding agree,
 * that validation agrees with decoding, and that a lookup finds what an
 * iteration over the pairs finds. Any disagreement aborts. Runs on a green
 * thread, as in a worker (gt_run.h). */
// fuzz-sources: server/http/uri.c @runtime
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/uri.h"
#include "gt_run.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_uri: check failed at line %d: %s\n", __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void check_decode(tk_str_t in, int query)
{
    size_t cap = in.len + 1;
    char *out = malloc(cap), *inplace = malloc(cap);
    CHECK(out && inplace);
    size_t n1 = 0, n2 = 0;
    int rc1 =
        query ? tk_uri_decode_query(in, out, cap, &n1) : tk_uri_decode_path(in, out, cap, &n1);
    memcpy(inplace, in.p, in.len);
    tk_str_t ip = {inplace, in.len};
    int rc2 = query ? tk_uri_decode_query(ip, inplace, cap, &n2)
                    : tk_uri_decode_path(ip, inplace, cap, &n2);
    CHECK(rc1 == rc2);
    CHECK(rc1 == TK_URI_OK || rc1 == TK_URI_EINVAL);
    CHECK(rc1 == tk_uri_validate(in));
    if (rc1 == TK_URI_OK) {
        CHECK(n1 == n2 && n1 <= in.len);
        CHECK(out[n1] == '\0' && memcmp(out, inplace, n1) == 0);
        CHECK(memchr(out, '\0', n1) == NULL);
        /* one byte less room must be too little */
        if (n1 > 0) {
            int rc3 = query ? tk_uri_decode_query(in, out, n1, NULL)
                            : tk_uri_decode_path(in, out, n1, NULL);
            CHECK(rc3 == TK_URI_ETOOLONG);
        }
    }
    free(out);
    free(inplace);
}

static int one_input(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t klen = data[0] % 16;
    if (klen > size - 1)
        klen = size - 1;
    char key[17];
    memcpy(key, data + 1, klen);
    key[klen] = '\0';
    size_t keylen = strlen(key); /* a NUL in the key shortens it */

    /* a private copy of exactly the input size, so ASan sees over-reads */
    size_t qlen = size - 1 - klen;
    char *q = malloc(qlen ? qlen : 1);
    CHECK(q != NULL);
    memcpy(q, data + 1 + klen, qlen);
    tk_str_t query = {q, qlen};

    check_decode(query, 0);
    check_decode(query, 1);

    char out[64];
    size_t outn = 0;
    int got = tk_uri_query_get(query, key, out, sizeof(out), &outn);
    CHECK(got >= -2 && got <= 1);
    if (got == 1)
        CHECK(outn < sizeof(out) && out[outn] == '\0');

    /* the same answer by iterating the pairs */
    tk_str_t rest = query, k, v;
    int want = 0;
    size_t pairs_bytes = 0;
    while (tk_uri_query_next(&rest, &k, &v)) {
        CHECK(k.p >= q && k.p + k.len <= q + qlen);
        CHECK(v.p >= q && v.p + v.len <= q + qlen);
        pairs_bytes += k.len + v.len;
        char kb[64];
        size_t kn;
        int krc = tk_uri_decode_query(k, kb, sizeof(kb), &kn);
        if (krc == TK_URI_EINVAL) {
            want = -1;
            break;
        }
        if (krc == TK_URI_ETOOLONG)
            continue; /* longer than any key we look for */
        if (kn != keylen || memcmp(kb, key, kn) != 0)
            continue;
        char vb[64];
        int vrc = tk_uri_decode_query(v, vb, sizeof(vb), NULL);
        want = vrc == TK_URI_OK ? 1 : vrc == TK_URI_EINVAL ? -1 : -2;
        if (want == 1)
            CHECK(strcmp(vb, out) == 0);
        break;
    }
    CHECK(pairs_bytes <= qlen);
    CHECK(got == want);
    free(q);
    return 0;
}

/* On a green thread with the configured stack size, as in a worker (gt_run.h). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_gt_run_input(one_input, data, size);
    return 0;
}
