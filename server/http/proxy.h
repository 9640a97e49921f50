/* proxy.h: the real client address behind a load balancer: server.trusted_proxies
 * (a list of CIDRs) and the PROXY protocol version 2 header (HAProxy's
 * send-proxy-v2), which only a connection from a trusted proxy may carry.
 *
 * The header is untrusted input even from a trusted peer (a proxy bug, a
 * misconfiguration): every length is checked against the bytes present and a
 * fixed cap before anything is read. */
#ifndef TK_PROXY_H
#define TK_PROXY_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define TK_PROXY_MAX_CIDRS 32
/* Signature (12) + version/command, family, length (4). */
#define TK_PROXY_V2_HEAD 16
/* Cap on the address block + TLVs: HAProxy sends well under this. */
#define TK_PROXY_V2_MAX_LEN 1024

typedef struct {
    uint8_t family; /* AF_INET or AF_INET6 */
    uint8_t bits;   /* prefix length */
    uint8_t addr[16];
} tk_proxy_cidr_t;

typedef struct {
    int n;
    tk_proxy_cidr_t c[TK_PROXY_MAX_CIDRS];
} tk_proxy_cidrs_t;

/* Parse a comma- or space-separated list of ADDR[/BITS] (IPv4 or IPv6; no
 * BITS = one host). "" is an empty list. 0, or -1 with err. */
int tk_proxy_cidrs_parse(const char *s, tk_proxy_cidrs_t *out, char *err, size_t errlen);
/* 1 if peer (AF_INET/AF_INET6; a v4-mapped v6 address counts as v4) is in
 * the list, else 0. */
int tk_proxy_trusted(const tk_proxy_cidrs_t *t, const struct sockaddr *peer, socklen_t len);

typedef enum {
    TK_PROXY_NONE = 0, /* not a PROXY v2 header: plain HTTP follows */
    TK_PROXY_MORE,     /* a header has begun: read more bytes */
    TK_PROXY_OK,       /* parsed: *used bytes to skip, addr set if have_addr */
    TK_PROXY_BAD,      /* a malformed header: close the connection */
} tk_proxy_rc_t;

typedef struct {
    int have_addr; /* 0 for LOCAL (health checks) and UNSPEC: keep the peer */
    struct sockaddr_storage src;
} tk_proxy_hdr_t;

/* Look at the first n bytes of a connection. */
tk_proxy_rc_t tk_proxy_v2_parse(const uint8_t *p, size_t n, tk_proxy_hdr_t *out, size_t *used);

/* The client in an X-Forwarded-For value (len bytes, not NUL-terminated)
 * that a trusted proxy sent: walking from the right (each proxy appends the
 * address it saw), the first address that is not itself a trusted proxy.
 * Every element must be a numeric IPv4 or IPv6 address: an element that is
 * not (a port, a name, garbage, "unknown") ends the walk with no answer,
 * since nothing left of it can be trusted. 1 with the address in out
 * (normalised text), or 0 (keep the peer). */
int tk_proxy_xff_client(const tk_proxy_cidrs_t *t, const char *xff, size_t len, char *out,
                        size_t outlen);

#endif
