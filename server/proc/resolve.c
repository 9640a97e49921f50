/* resolve.c: the master turns the host names in db.conninfo and redis.addr into addresses. */
#include "config.h"

#include "proc/resolve.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <libpq-fe.h>

int tk_resolve_host(const char *host, char *out, size_t outlen, char *err, size_t errlen)
{
    unsigned char buf[sizeof(struct in6_addr)];
    out[0] = '\0';
    if (inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1)
        return 0;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    int g = getaddrinfo(host, NULL, &hints, &res);
    if (g != 0 || res == NULL) {
        snprintf(err, errlen, "host \"%s\" does not resolve: %s", host,
                 g ? gai_strerror(g) : "no address");
        return -1;
    }
    g = getnameinfo(res->ai_addr, res->ai_addrlen, out, (socklen_t)outlen, NULL, 0, NI_NUMERICHOST);
    freeaddrinfo(res);
    if (g != 0) {
        snprintf(err, errlen, "host \"%s\": getnameinfo(): %s", host, gai_strerror(g));
        return -1;
    }
    return 1;
}

/* db.conninfo: a hostaddr entry for every host entry that is a name. */
static int resolve_db(tk_conf_t *c, char *err, size_t errlen)
{
    c->db_hostaddr[0] = '\0';
    if (!c->db_conninfo[0])
        return 0;
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(c->db_conninfo, &perr);
    if (!opts) {
        snprintf(err, errlen, "db.conninfo: %s", perr ? perr : "out of memory");
        PQfreemem(perr);
        return -1;
    }
    const char *host = NULL, *hostaddr = NULL;
    for (const PQconninfoOption *o = opts; o->keyword; o++) {
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
    }
    int rc = 0, names = 0;
    size_t len = 0;
    /* nothing to do without a host, or with the caller's own hostaddr */
    for (const char *p = host; p && *p && !(hostaddr && *hostaddr);) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        char h[256], ip[INET6_ADDRSTRLEN] = "", why[320];
        if (n >= sizeof(h)) {
            snprintf(err, errlen, "db.conninfo: a host name over %zu bytes", sizeof(h) - 1);
            rc = -1;
            break;
        }
        memcpy(h, p, n);
        h[n] = '\0';
        /* a socket directory (/path or @abstract) or empty: no name to resolve */
        if (h[0] && h[0] != '/' && h[0] != '@') {
            int r = tk_resolve_host(h, ip, sizeof(ip), why, sizeof(why));
            if (r < 0) {
                snprintf(err, errlen,
                         "db.conninfo: %s (tenkd resolves it once, in the master; give an "
                         "address, or hostaddr=ADDRESS)",
                         why);
                rc = -1;
                break;
            }
            names += r;
        }
        int w = snprintf(c->db_hostaddr + len, sizeof(c->db_hostaddr) - len, "%s%s",
                         len || p != host ? "," : "", ip);
        if (w < 0 || (size_t)w >= sizeof(c->db_hostaddr) - len) {
            snprintf(err, errlen, "db.conninfo: too many hosts");
            rc = -1;
            break;
        }
        len += (size_t)w;
        p = e ? e + 1 : NULL;
    }
    if (rc != 0 || names == 0)
        c->db_hostaddr[0] = '\0'; /* only addresses and sockets: libpq resolves nothing */
    PQconninfoFree(opts);
    return rc;
}

/* redis.addr: "NAME:PORT" becomes "ADDRESS:PORT" ("[v6]:PORT"). */
static int resolve_redis(tk_conf_t *c, char *err, size_t errlen)
{
    const char *a = c->redis_addr;
    c->redis_resolved[0] = '\0';
    if (!a[0] || a[0] == '/' || a[0] == '[')
        return 0; /* off, a socket, or an IPv6 address */
    const char *colon = strrchr(a, ':');
    if (!colon || colon == a)
        return 0; /* malformed: the cache client says so */
    char h[256], ip[INET6_ADDRSTRLEN], why[320];
    if ((size_t)(colon - a) >= sizeof(h))
        return 0;
    memcpy(h, a, (size_t)(colon - a));
    h[colon - a] = '\0';
    int r = tk_resolve_host(h, ip, sizeof(ip), why, sizeof(why));
    if (r < 0) {
        snprintf(err, errlen,
                 "redis.addr: %s (tenkd resolves it once, in the master; give an IP address)", why);
        return -1;
    }
    if (r > 0)
        snprintf(c->redis_resolved, sizeof(c->redis_resolved), strchr(ip, ':') ? "[%s]%s" : "%s%s",
                 ip, colon);
    return 0;
}

int tk_resolve_conf(tk_conf_t *c, char *err, size_t errlen)
{
    if (resolve_db(c, err, errlen) != 0 || resolve_redis(c, err, errlen) != 0)
        return -1;
    return 0;
}

void tk_resolve_label(const char *conninfo, char *out, size_t outlen)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    PQfreemem(perr);
    if (opts == NULL) {
        snprintf(out, outlen, "?");
        return;
    }
    const char *host = NULL, *port = NULL;
    for (const PQconninfoOption *o = opts; o->keyword; o++) {
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "port") == 0)
            port = o->val;
    }
    if (host == NULL || host[0] == '\0')
        host = "local";
    snprintf(out, outlen, "%s:%s", host[0] == '/' ? "unix" : host, port && *port ? port : "5432");
    PQconninfoFree(opts);
}
