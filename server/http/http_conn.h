/* http_conn.h: HTTP/1.1 connections: read, parse, route, serve, write, keep-alive.
 *
 * Engine-internal (handlers use http_response.h). A connection that sits idle
 * between requests holds no green thread: only its tk_http_conn_t and a
 * libevent event. When bytes arrive a green thread is spawned; it serves every
 * request it can (pipelined ones back to back, their answers leaving in one
 * write), then the connection goes idle again and the green thread ends. */
#ifndef TK_HTTP_CONN_H
#define TK_HTTP_CONN_H

#include <stdint.h>
#include <sys/socket.h>

#include "proc/conf.h"
#include "http/http_parser.h"
#include "http/http_response.h"
#include "http/proxy.h"
#include "http/router.h"
#include "runtime/scheduler.h"

struct event_base;
struct event;
typedef struct tk_http_conn tk_http_conn_t;

/* One worker's HTTP side: configuration, routers, the live connections. */
typedef struct tk_http_server {
    const tk_conf_t *conf;
    tk_sched_t *sched;
    struct event_base *base;
    tk_router_t *router;       /* public listeners */
    tk_router_t *admin_router; /* admin listener; may be NULL */
    tk_http_limits_t limits;
    tk_proxy_cidrs_t trusted; /* server.trusted_proxies: peers that may send PROXY v2 */
    struct event *ka_sweep;   /* closes connections idle for keepalive_timeout */

    /* 0 serving; 1 draining (graceful): requests already arrived are answered
     * with Connection: close, idle connections get a last window; 2 stopping
     * (fast): no new request is started. */
    int stopping;
    int64_t drain_idle_deadline_ms; /* idle connections close at this time */

    unsigned nconns;  /* open connections */
    unsigned nactive; /* connections with a green thread (a request in progress) */
    uint64_t next_id;
    tk_http_conn_t *conns; /* doubly linked list of every open connection */
    /* Whether a new connection's request is usually there at the accept: a
     * score of recent first reads (0: wait for epoll instead). */
    unsigned read_first;

    /* Called after a connection closed (the worker resumes accepting). */
    void (*on_close)(struct tk_http_server *srv);
    void *user;
} tk_http_server_t;

/* Set up srv (limits from conf). Routers and callbacks are set by the caller. */
void tk_http_server_init(tk_http_server_t *srv, const tk_conf_t *conf, tk_sched_t *sched,
                         struct event_base *base);
/* Close every connection now (at exit; green threads must be gone). */
void tk_http_server_fini(tk_http_server_t *srv);

/* Take over an accepted, non-blocking socket. 0, or -1 (the fd is closed). */
int tk_http_conn_start(tk_http_server_t *srv, int fd, const struct sockaddr *peer,
                       socklen_t peerlen, int admin);

/* Begin a graceful drain (fast == 0) or a fast stop (fast == 1): idle
 * connections get linger_ms to send one last request (answered with
 * Connection: close), then are closed; busy ones close after their current
 * response (fast: connections waiting for a request are closed at once). */
void tk_http_server_drain(tk_http_server_t *srv, int fast, int linger_ms);

/* Called after every response to a parsed request (the access log hangs
 * here): ctx is complete (req, status, bytes_out); latency from the end of
 * the head to the response queued. Not called for requests the parser
 * rejected. NULL removes it. */
typedef void (*tk_http_done_fn)(const tk_http_ctx_t *ctx, uint64_t latency_ns);
void tk_http_set_done_hook(tk_http_done_fn fn);

/* While a handler runs, tk_gt_data() of its green thread is its
 * tk_http_ctx_t (for /debug/threads: method, path, route). */

#endif
