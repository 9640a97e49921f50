/* fuzz_proxy.c: libFuzzer target for the PROXY protocol v2 header, the
 * trusted-proxy CIDR list and X-Forwarded-For (server/http/proxy.c).
 *
 * The input is parsed as the first bytes of a connection; every prefix of it
 * too, which must never say more than the whole does (a header found in n
 * bytes is found the same way in more). A header that parses uses no more
 * bytes than it was given, and its address family is one it can hold. The
 * input is also read as a CIDR list, a parsed list is matched against the
 * header's address, and the input is read as an X-Forwarded-For value with
 * that list trusted (an answer is a terminated numeric address). Any breach
 * aborts. */
// fuzz-sources: server/http/proxy.c
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>

#include "http/proxy.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_proxy: check failed at line %d: %s\n", __LINE__, #cond);         \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exact-size copy, so ASan sees any read past the end */
    uint8_t *p = malloc(size ? size : 1);
    CHECK(p != NULL);
    memcpy(p, data, size);
    tk_proxy_hdr_t h;
    size_t used;
    tk_proxy_rc_t rc = tk_proxy_v2_parse(p, size, &h, &used);
    CHECK(rc == TK_PROXY_NONE || rc == TK_PROXY_MORE || rc == TK_PROXY_OK || rc == TK_PROXY_BAD);
    if (rc == TK_PROXY_OK) {
        CHECK(used >= TK_PROXY_V2_HEAD && used <= size);
        CHECK(used <= TK_PROXY_V2_HEAD + TK_PROXY_V2_MAX_LEN);
        CHECK(!h.have_addr || h.src.ss_family == AF_INET || h.src.ss_family == AF_INET6);
        /* the same header with bytes after it parses the same */
        tk_proxy_hdr_t h2;
        size_t used2;
        CHECK(tk_proxy_v2_parse(p, used, &h2, &used2) == TK_PROXY_OK && used2 == used);
    } else {
        CHECK(used == 0);
    }
    /* a shorter prefix is never a complete header if the whole one was not */
    if (size > 0 && rc != TK_PROXY_OK) {
        tk_proxy_hdr_t h3;
        size_t used3;
        tk_proxy_rc_t r3 = tk_proxy_v2_parse(p, size / 2, &h3, &used3);
        CHECK(r3 != TK_PROXY_OK || rc == TK_PROXY_BAD);
    }

    /* the input as a CIDR list (a C string of it) */
    char *s = malloc(size + 1);
    CHECK(s != NULL);
    memcpy(s, data, size);
    s[size] = '\0';
    tk_proxy_cidrs_t t;
    char err[160];
    err[0] = '\0';
    if (tk_proxy_cidrs_parse(s, &t, err, sizeof(err)) == 0) {
        CHECK(t.n >= 0 && t.n <= TK_PROXY_MAX_CIDRS);
        for (int i = 0; i < t.n; i++) {
            CHECK(t.c[i].family == AF_INET || t.c[i].family == AF_INET6);
            CHECK(t.c[i].bits <= (t.c[i].family == AF_INET ? 32 : 128));
        }
        if (rc == TK_PROXY_OK && h.have_addr) {
            int r = tk_proxy_trusted(&t, (const struct sockaddr *)&h.src, sizeof(h.src));
            CHECK(r == 0 || r == 1);
        }
        /* the input as an X-Forwarded-For value, with that list trusted */
        char addr[INET6_ADDRSTRLEN + 8];
        memset(addr, 'x', sizeof(addr));
        if (tk_proxy_xff_client(&t, (const char *)p, size, addr, INET6_ADDRSTRLEN)) {
            CHECK(memchr(addr, '\0', INET6_ADDRSTRLEN) != NULL);
            uint8_t bin[16];
            CHECK(inet_pton(AF_INET, addr, bin) == 1 || inet_pton(AF_INET6, addr, bin) == 1);
        }
    } else {
        CHECK(err[0] != '\0' && memchr(err, '\0', sizeof(err)) != NULL);
    }
    free(s);
    free(p);
    return 0;
}
