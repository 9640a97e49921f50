/* proxy.c: trusted-proxy CIDRs and the PROXY protocol v2 header (see proxy.h). */
#include "config.h"

#include "http/proxy.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t v2_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                   0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

static int parse_one(const char *s, tk_proxy_cidr_t *c, char *err, size_t errlen)
{
    char buf[64];
    size_t n = strlen(s);
    if (n >= sizeof(buf)) {
        snprintf(err, errlen, "'%.40s...' is too long for a CIDR", s);
        return -1;
    }
    memcpy(buf, s, n + 1);
    char *slash = strchr(buf, '/');
    long bits = -1;
    if (slash) {
        *slash = '\0';
        char *end;
        if (slash[1] < '0' || slash[1] > '9' || (bits = strtol(slash + 1, &end, 10), *end) ||
            bits > 128) {
            snprintf(err, errlen, "'%s': bad prefix length", s);
            return -1;
        }
    }
    memset(c, 0, sizeof(*c));
    if (inet_pton(AF_INET, buf, c->addr) == 1) {
        c->family = AF_INET;
        if (bits < 0)
            bits = 32;
        if (bits > 32) {
            snprintf(err, errlen, "'%s': an IPv4 prefix is at most /32", s);
            return -1;
        }
    } else if (inet_pton(AF_INET6, buf, c->addr) == 1) {
        c->family = AF_INET6;
        if (bits < 0)
            bits = 128;
    } else {
        snprintf(err, errlen, "'%s' is not ADDR or ADDR/BITS (numeric IPv4 or IPv6)", s);
        return -1;
    }
    c->bits = (uint8_t)bits;
    return 0;
}

int tk_proxy_cidrs_parse(const char *s, tk_proxy_cidrs_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    const char *p = s;
    for (;;) {
        while (*p == ',' || *p == ' ' || *p == '\t')
            p++;
        if (*p == '\0')
            return 0;
        size_t len = strcspn(p, ", \t");
        if (out->n == TK_PROXY_MAX_CIDRS) {
            snprintf(err, errlen, "more than %d CIDRs", TK_PROXY_MAX_CIDRS);
            return -1;
        }
        char one[64];
        if (len >= sizeof(one)) {
            snprintf(err, errlen, "'%.40s...' is too long for a CIDR", p);
            return -1;
        }
        memcpy(one, p, len);
        one[len] = '\0';
        if (parse_one(one, &out->c[out->n], err, errlen) != 0)
            return -1;
        out->n++;
        p += len;
    }
}

static int prefix_match(const uint8_t *a, const uint8_t *net, unsigned bits)
{
    unsigned full = bits / 8, rest = bits % 8;
    if (memcmp(a, net, full) != 0)
        return 0;
    if (rest == 0)
        return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[full] & mask) == (net[full] & mask);
}

int tk_proxy_trusted(const tk_proxy_cidrs_t *t, const struct sockaddr *peer, socklen_t len)
{
    uint8_t a[16];
    int fam;
    if (t == NULL || t->n == 0 || peer == NULL)
        return 0;
    if (peer->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        fam = AF_INET;
        memcpy(a, &((const struct sockaddr_in *)peer)->sin_addr, 4);
    } else if (peer->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct in6_addr *v6 = &((const struct sockaddr_in6 *)peer)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(v6)) {
            fam = AF_INET;
            memcpy(a, v6->s6_addr + 12, 4);
        } else {
            fam = AF_INET6;
            memcpy(a, v6->s6_addr, 16);
        }
    } else {
        return 0;
    }
    for (int i = 0; i < t->n; i++)
        if (t->c[i].family == fam && prefix_match(a, t->c[i].addr, t->c[i].bits))
            return 1;
    return 0;
}

int tk_proxy_xff_client(const tk_proxy_cidrs_t *t, const char *xff, size_t len, char *out,
                        size_t outlen)
{
    size_t end = len;
    while (end > 0) {
        size_t start = end;
        while (start > 0 && xff[start - 1] != ',')
            start--;
        size_t a = start, b = end;
        while (a < b && (xff[a] == ' ' || xff[a] == '\t'))
            a++;
        while (b > a && (xff[b - 1] == ' ' || xff[b - 1] == '\t'))
            b--;
        char one[INET6_ADDRSTRLEN];
        if (b - a == 0 || b - a >= sizeof(one))
            return 0;
        memcpy(one, xff + a, b - a);
        one[b - a] = '\0';
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof(ss));
        socklen_t sl;
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        if (inet_pton(AF_INET, one, &s4->sin_addr) == 1) {
            s4->sin_family = AF_INET;
            sl = sizeof(*s4);
        } else if (inet_pton(AF_INET6, one, &s6->sin6_addr) == 1) {
            s6->sin6_family = AF_INET6;
            sl = sizeof(*s6);
        } else {
            return 0;
        }
        if (!tk_proxy_trusted(t, (struct sockaddr *)&ss, sl) || start == 0) {
            const void *src = ss.ss_family == AF_INET ? (const void *)&s4->sin_addr
                                                      : (const void *)&s6->sin6_addr;
            return inet_ntop(ss.ss_family, src, out, (socklen_t)outlen) != NULL;
        }
        end = start - 1; /* a trusted proxy: the hop before it */
    }
    return 0;
}

tk_proxy_rc_t tk_proxy_v2_parse(const uint8_t *p, size_t n, tk_proxy_hdr_t *out, size_t *used)
{
    memset(out, 0, sizeof(*out));
    *used = 0;
    /* a prefix of the signature may still become one */
    size_t cmp = n < sizeof(v2_sig) ? n : sizeof(v2_sig);
    if (memcmp(p, v2_sig, cmp) != 0)
        return TK_PROXY_NONE;
    if (n < TK_PROXY_V2_HEAD)
        return TK_PROXY_MORE;
    uint8_t ver_cmd = p[12], fam = p[13];
    size_t len = ((size_t)p[14] << 8) | p[15];
    if ((ver_cmd >> 4) != 2 || (ver_cmd & 0x0f) > 1 || len > TK_PROXY_V2_MAX_LEN)
        return TK_PROXY_BAD;
    if (n < TK_PROXY_V2_HEAD + len)
        return TK_PROXY_MORE;
    const uint8_t *a = p + TK_PROXY_V2_HEAD;
    if ((ver_cmd & 0x0f) == 0) {
        *used = TK_PROXY_V2_HEAD + len;
        return TK_PROXY_OK; /* LOCAL: the proxy's own connection (health check) */
    }
    unsigned af = fam >> 4, proto = fam & 0x0f;
    if (af > 3 || proto > 2)
        return TK_PROXY_BAD;
    if (af == 1) { /* INET: src 4, dst 4, src port 2, dst port 2 */
        if (len < 12)
            return TK_PROXY_BAD;
        struct sockaddr_in *s = (struct sockaddr_in *)&out->src;
        s->sin_family = AF_INET;
        memcpy(&s->sin_addr, a, 4);
        memcpy(&s->sin_port, a + 8, 2);
        out->have_addr = 1;
    } else if (af == 2) { /* INET6: src 16, dst 16, ports 2 + 2 */
        if (len < 36)
            return TK_PROXY_BAD;
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&out->src;
        s->sin6_family = AF_INET6;
        memcpy(&s->sin6_addr, a, 16);
        memcpy(&s->sin6_port, a + 32, 2);
        out->have_addr = 1;
    } else if (af == 3 && len < 216) { /* UNIX: two 108-byte paths */
        return TK_PROXY_BAD;
    }
    /* UNSPEC and UNIX: the proxy's own address stays the peer */
    *used = TK_PROXY_V2_HEAD + len;
    return TK_PROXY_OK;
}
