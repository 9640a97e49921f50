/* resolve.h: the master turns the host names in db.conninfo and redis.addr into addresses. */
#ifndef TK_RESOLVE_H
#define TK_RESOLVE_H

#include <stddef.h>

#include "proc/conf.h"

/* getaddrinfo() blocks, and libpq and hiredis call it inside their
 * "non-blocking" connects, so a worker handed a host name would stall its
 * whole loop on DNS. The master resolves the names once per configuration
 * load (start, reload, tenkd -t; it may block) and the workers connect to the
 * addresses: c->db_hostaddr becomes libpq's hostaddr list for conninfo's host
 * list (host is kept for TLS and authentication; an explicit hostaddr, a
 * socket path or an address needs nothing), c->redis_resolved "ADDR:PORT"
 * for a redis.addr whose host is a name. The first address returned is used.
 * 0, or -1 with a message naming the setting and the host in err. */
int tk_resolve_conf(tk_conf_t *c, char *err, size_t errlen);

/* One host name to a numeric address (IPv6 without brackets) in out: 1 if
 * host was a name and was resolved, 0 if it is already an address (out
 * empty), -1 with err if it does not resolve. */
int tk_resolve_host(const char *host, char *out, size_t outlen, char *err, size_t errlen);

/* A short display name for a conninfo (tenkctl db, /metrics' backend label): "HOST:PORT",
 * "unix:PORT" for a socket directory, lists as given; never the password. "?" if it does not
 * parse. */
void tk_resolve_label(const char *conninfo, char *out, size_t outlen);

#endif
