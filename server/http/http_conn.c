/* http_conn.c: one HTTP/1.1 connection: read, parse, route, serve, write; idle without a stack. */
#include "config.h"

#include "http/http_conn.h"
#include "http/http_ctx.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/event_struct.h>

#include "proc/log.h"
#include "shm/metrics.h"
#include "http/uri.h"

/* Read and write buffers start at this size (a typical request head or
 * response fits) and come from a small per-process pool, so keep-alive
 * traffic does not malloc per request while an idle connection holds no
 * buffer at all. */
#define CONN_BUF_SIZE 4096
#define CONN_BUF_POOL 256
/* Closed connections' structs kept for the next accepts: calloc() takes
 * glibc's slow path (no thread cache), a per-connection cost under churn.
 * None under ASan, which then still sees a use after close. */
#if defined(__SANITIZE_ADDRESS__)
#define CONN_STRUCT_POOL 0
#else
#define CONN_STRUCT_POOL 256
#endif
/* Output buffers bigger than this are freed after a flush, not kept. */
#define CONN_OUT_KEEP (64 * 1024)
/* Lingering close: after our FIN, read and drop what the client still sends
 * for at most this long, so unread input does not turn into a reset that
 * destroys the response before the client reads it. */
#define CONN_LINGER_MS    2000
#define CONN_LINGER_BYTES (1024 * 1024)
/* The keep-alive sweep runs every keepalive_timeout / CONN_KA_SLICES, within
 * these bounds: an idle connection closes between keepalive_timeout and one
 * sweep interval later. */
#define CONN_KA_SLICES       10
#define CONN_KA_SWEEP_MIN_MS 10
#define CONN_KA_SWEEP_MAX_MS 1000

struct tk_http_conn {
    tk_http_conn_t *prev, *next; /* srv->conns */
    tk_http_server_t *srv;
    struct event ev; /* idle: readable or timed out; also the lingering close */
    int fd;
    unsigned nreq;
    uint64_t id;
    tk_http_buf_t in; /* unconsumed input is in.data[in_off .. in.len) */
    size_t in_off;
    tk_http_buf_t out; /* queued output is out.data[out_off .. out.len) */
    size_t out_off;
    tk_gt_t *gt;          /* the serving green thread, NULL while idle */
    int64_t req_start_ms; /* when the current request's first bytes were awaited */
    int64_t idle_ms;      /* when it last went idle between requests */
    /* ev_timed: ev has a libevent timeout (the first request's head, the drain
     * window, the lingering close); an idle connection whose ev has none is
     * the keep-alive sweep's. rd_pending: bytes may be waiting that no edge
     * will announce again */
    unsigned admin : 1, ev_armed : 1, lingering : 1, ev_timed : 1, rd_pending : 1;
    unsigned first_read : 1; /* served at the accept, before its first read */
    unsigned proxy_hdr : 1;  /* a trusted proxy's peer: a PROXY v2 header may lead */
    unsigned xff_ok : 1;     /* a trusted proxy's peer, no PROXY header: X-Forwarded-For counts */
    size_t linger_bytes;
    size_t peer_len; /* strlen(peer), for the per-request note */
    char peer[INET6_ADDRSTRLEN];
};

static tk_http_done_fn done_hook;

void tk_http_set_done_hook(tk_http_done_fn fn)
{
    done_hook = fn;
}

static char *buf_pool[CONN_BUF_POOL];
static int buf_npool;
static tk_http_conn_t *conn_pool[CONN_STRUCT_POOL + 1];
static int conn_npool;

static tk_http_conn_t *conn_alloc(void)
{
    if (conn_npool == 0)
        return calloc(1, sizeof(tk_http_conn_t));
    tk_http_conn_t *c = conn_pool[--conn_npool];
    memset(c, 0, sizeof(*c));
    return c;
}

static void conn_free(tk_http_conn_t *c)
{
#if CONN_STRUCT_POOL > 0
    if (conn_npool < CONN_STRUCT_POOL) {
        conn_pool[conn_npool++] = c;
        return;
    }
#endif
    free(c);
}

static void buf_get(tk_http_buf_t *b)
{
    if (b->data)
        return;
    if (buf_npool > 0)
        b->data = buf_pool[--buf_npool];
    else
        b->data = aligned_alloc(64, CONN_BUF_SIZE); /* a steady start for memchr's vector loads */
    b->cap = b->data ? CONN_BUF_SIZE : 0;
    b->len = 0;
}

static void buf_put(tk_http_buf_t *b)
{
    if (b->data && b->cap == CONN_BUF_SIZE && buf_npool < CONN_BUF_POOL)
        buf_pool[buf_npool++] = b->data;
    else
        free(b->data);
    tk_http_buf_init(b);
}

static void idle_cb(evutil_socket_t fd, short what, void *arg);
static void conn_close(tk_http_conn_t *c);

/* Read-first at the accept (see tk_http_conn_start) pays when the request is
 * already there: a hit adds a point, a miss (a read that says EAGAIN, then an
 * epoll add all the same) takes two, up to READ_FIRST_MAX. At 0 connections
 * wait for epoll, and one in READ_FIRST_PROBE tries again. */
#define READ_FIRST_MAX   8
#define READ_FIRST_PROBE 16

/* Open connections, for the workers' load spreading: published when the
 * count changes; the active/idle split is refreshed by the worker's tick, not
 * per request. */
static void publish_conns(tk_http_server_t *srv)
{
    tk_metrics_conns_set(srv->nactive, srv->nconns - srv->nactive);
}

/* Close the connections idle for keepalive_timeout. One walk of the list per
 * interval instead of a timer per connection: a timer would be moved in
 * libevent's queue at every request (and again by libevent itself at every
 * read, for a persistent event), while the walk costs nothing per request and
 * about a cache miss per connection per interval. */
static void ka_sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    tk_http_server_t *srv = arg;
    (void)fd;
    (void)what;
    if (srv->stopping)
        return; /* the drain has its own deadline */
    int64_t cut = tk_now_ms() - srv->conf->keepalive_timeout_ms;
    tk_http_conn_t *next;
    for (tk_http_conn_t *c = srv->conns; c; c = next) {
        next = c->next;
        /* nothing arrived, so nothing is lost by closing (the FIN tells the client) */
        if (!c->gt && c->ev_armed && !c->ev_timed && c->idle_ms <= cut)
            conn_close(c);
    }
}

void tk_http_server_init(tk_http_server_t *srv, const tk_conf_t *conf, tk_sched_t *sched,
                         struct event_base *base)
{
    memset(srv, 0, sizeof(*srv));
    srv->conf = conf;
    srv->sched = sched;
    srv->base = base;
    srv->read_first = READ_FIRST_MAX;
    char perr[160];
    if (tk_proxy_cidrs_parse(conf->trusted_proxies, &srv->trusted, perr, sizeof(perr)) != 0)
        TK_LOG(TK_LOG_ERR, "server.trusted_proxies: %s (no proxy trusted)", perr);
    tk_http_limits_default(&srv->limits);
    if (conf->max_request_line)
        srv->limits.max_request_line = conf->max_request_line;
    if (conf->max_header_size)
        srv->limits.max_header_size = conf->max_header_size;
    if (conf->max_headers)
        srv->limits.max_headers = conf->max_headers;
    if (conf->max_body_size)
        srv->limits.max_body_size = conf->max_body_size;
    if (conf->keepalive_timeout_ms > 0) {
        int ms = conf->keepalive_timeout_ms / CONN_KA_SLICES;
        ms = ms < CONN_KA_SWEEP_MIN_MS   ? CONN_KA_SWEEP_MIN_MS
             : ms > CONN_KA_SWEEP_MAX_MS ? CONN_KA_SWEEP_MAX_MS
                                         : ms;
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        srv->ka_sweep = event_new(base, -1, EV_PERSIST, ka_sweep_cb, srv);
        if (srv->ka_sweep)
            event_add(srv->ka_sweep, &tv);
    }
}

static void conn_close(tk_http_conn_t *c)
{
    tk_http_server_t *srv = c->srv;
    if (c->ev_armed)
        event_del(&c->ev);
    close(c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->gt)
        srv->nactive--;
    srv->nconns--;
    buf_put(&c->in);
    buf_put(&c->out);
    conn_free(c);
    tk_metrics_conn_closed();
    publish_conns(srv);
    if (srv->on_close)
        srv->on_close(srv);
}

void tk_http_server_fini(tk_http_server_t *srv)
{
    while (srv->conns)
        conn_close(srv->conns);
    if (srv->ka_sweep) {
        event_free(srv->ka_sweep);
        srv->ka_sweep = NULL;
    }
    while (buf_npool > 0)
        free(buf_pool[--buf_npool]);
    while (conn_npool > 0)
        free(conn_pool[--conn_npool]);
}

static void ms_to_tv(int64_t ms, struct timeval *tv)
{
    if (ms < 0)
        ms = 0;
    tv->tv_sec = (time_t)(ms / 1000);
    tv->tv_usec = (suseconds_t)(ms % 1000) * 1000;
}

/* Wait in libevent, without a green thread, for the next request. */
static void conn_idle(tk_http_conn_t *c)
{
    tk_http_server_t *srv = c->srv;
    struct timeval tv;
    const struct timeval *tvp = NULL;
    if (c->nreq == 0 || srv->conf->keepalive_timeout_ms <= 0) {
        ms_to_tv(srv->conf->header_timeout_ms, &tv);
        tvp = &tv;
    }
    if (srv->stopping == 1) {
        ms_to_tv(srv->drain_idle_deadline_ms - tk_now_ms(), &tv);
        tvp = &tv;
    }
    if (c->in_off == c->in.len)
        buf_put(&c->in); /* an idle connection keeps no buffer */
    buf_put(&c->out);
    c->out_off = 0;
    if (tvp == NULL) {
        /* the keep-alive sweep times it out; conn_serve read the clock as
         * the last request ended */
        c->idle_ms = (int64_t)(tk_now_recent_ns() / 1000000u);
        if (c->ev_armed && !c->ev_timed)
            return; /* the event stayed registered: nothing to do per request */
        if (c->ev_armed) {
            event_remove_timer(&c->ev);
            c->ev_timed = 0;
            return;
        }
    }
    event_add(&c->ev, tvp);
    c->ev_armed = 1;
    c->ev_timed = tvp != NULL;
}

/* Close after our last response: FIN, then drop input until the client's
 * FIN or a bound, in the event loop (no green thread needed). */
static void conn_linger(tk_http_conn_t *c)
{
    if (shutdown(c->fd, SHUT_WR) != 0) {
        conn_close(c);
        return;
    }
    if (c->ev_armed)
        event_del(&c->ev);
    c->lingering = 1;
    c->linger_bytes = 0;
    buf_put(&c->in);
    c->in_off = 0;
    buf_put(&c->out);
    struct timeval tv;
    ms_to_tv(CONN_LINGER_MS, &tv);
    event_assign(&c->ev, c->srv->base, c->fd, EV_READ | EV_PERSIST, idle_cb, c);
    event_add(&c->ev, &tv);
    c->ev_armed = 1;
    c->ev_timed = 1;
}

static void conn_serve(void *arg);

/* No green thread to spare (max_threads): say so and close. Out of line, so
 * that conn_wake() stays small enough to inline on the per-request path. */
static __attribute__((noinline, cold)) void conn_overloaded(tk_http_conn_t *c)
{
    static const char body[] = "{\"error\":\"server overloaded\"}";
    tk_http_resp_t r;
    memset(&r, 0, sizeof(r));
    r.status = 503;
    r.content_type = "application/json";
    r.extra_headers = "Retry-After: 1\r\n";
    r.extra_len = strlen(r.extra_headers);
    r.body = body;
    r.body_len = sizeof(body) - 1;
    tk_http_buf_t b;
    tk_http_buf_init(&b);
    if (tk_http_response_write(&b, &r) == 0) {
        ssize_t w = send(c->fd, b.data, b.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
    }
    tk_http_buf_free(&b);
    tk_metrics_error(TK_METRICS_ERR_LIMIT);
    conn_close(c);
}

static inline void conn_wake(tk_http_conn_t *c)
{
    tk_http_server_t *srv = c->srv;
    c->gt = tk_gt_spawn(srv->sched, "http", conn_serve, c);
    if (__builtin_expect(!c->gt, 0)) {
        conn_overloaded(c);
        return;
    }
    srv->nactive++;
}

static void idle_cb(evutil_socket_t fd, short what, void *arg)
{
    tk_http_conn_t *c = arg;
    (void)fd;
    if (c->lingering) {
        char scratch[4096];
        if (what & EV_READ) {
            ssize_t r = recv(c->fd, scratch, sizeof(scratch), MSG_DONTWAIT);
            if (r > 0) {
                c->linger_bytes += (size_t)r;
                if (c->linger_bytes < CONN_LINGER_BYTES)
                    return;
            } else if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
                return;
            }
        }
        conn_close(c); /* EOF, error, too much, or the bound passed */
        return;
    }
    if (c->gt) {
        /* busy: the green thread reads for itself, but this edge is the
         * only news of those bytes (see conn_wait) */
        if (what & EV_READ)
            c->rd_pending = 1;
        return;
    }
    if (what & EV_TIMEOUT) {
        /* idle too long, or the drain window ended: nothing arrived, so
         * nothing is lost by closing (the FIN tells the client first) */
        if (c->srv->stopping)
            conn_linger(c);
        else
            conn_close(c);
        return;
    }
    tk_sched_t *sched = c->srv->sched; /* conn_wake() may free c */
    conn_wake(c);
    /* serve it now: a burst of ready connections then reuses one warm stack
     * (each thread's stack is back in the pool before the next callback)
     * instead of taking one cold stack per connection before any runs */
    tk_sched_run_ready(sched);
}

int tk_http_conn_start(tk_http_server_t *srv, int fd, const struct sockaddr *peer,
                       socklen_t peerlen, int admin)
{
    tk_http_conn_t *c = conn_alloc();
    if (!c) {
        close(fd);
        return -1;
    }
    /* TCP_NODELAY: inherited from the listener (master.c) */
    c->srv = srv;
    c->fd = fd;
    c->id = ++srv->next_id;
    c->admin = admin ? 1 : 0;
    strcpy(c->peer, "-");
    if (peer && peer->sa_family == AF_INET && peerlen >= sizeof(struct sockaddr_in))
        tk_str_ipv4(&((const struct sockaddr_in *)peer)->sin_addr, c->peer);
    else if (peer && peer->sa_family == AF_INET6 && peerlen >= sizeof(struct sockaddr_in6))
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)peer)->sin6_addr, c->peer,
                  sizeof(c->peer));
    else if (peer && peer->sa_family == AF_UNIX)
        strcpy(c->peer, "unix");
    c->proxy_hdr = !admin && tk_proxy_trusted(&srv->trusted, peer, peerlen);
    c->xff_ok = c->proxy_hdr;
    c->peer_len = strlen(c->peer);
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    tk_metrics_conn_accepted();
    /* edge-triggered: epoll then reports a ready socket once, instead of
     * re-checking it at the next epoll_wait as it does for a level-triggered
     * one (a second socket poll per request) */
    event_assign(&c->ev, srv->base, c->fd, EV_READ | EV_PERSIST | EV_ET, idle_cb, c);
    c->req_start_ms = tk_now_ms();
    publish_conns(srv);
    /* Read first: a client's request usually comes right after the
     * handshake, so under load it is often here by the accept. Serving it now
     * spares a wake-up, and a connection answered and closed at once never
     * enters epoll (an add and a delete); if nothing is here, the
     * read says EAGAIN and the connection waits idle, which costs a read more
     * than waiting at once: hence the score. */
    if (srv->read_first > 0 || c->id % READ_FIRST_PROBE == 0) {
        c->first_read = 1;
        conn_wake(c);
        tk_sched_run_ready(srv->sched);
    } else {
        conn_idle(c);
    }
    return 0;
}

void tk_http_server_drain(tk_http_server_t *srv, int fast, int linger_ms)
{
    if (srv->stopping >= (fast ? 2 : 1))
        return;
    srv->stopping = fast ? 2 : 1;
    srv->drain_idle_deadline_ms = tk_now_ms() + (fast ? 0 : linger_ms);
    tk_http_conn_t *next;
    for (tk_http_conn_t *c = srv->conns; c; c = next) {
        next = c->next;
        if (c->gt)
            continue; /* busy: closes after its current response */
        if (fast) {
            conn_close(c);
            continue;
        }
        if (c->lingering)
            continue; /* ends by itself, bounded */
        /* idle: keep listening for a last request until the window ends */
        conn_idle(c);
    }
}

/* --- the green-thread side ------------------------------------------------------------ */

/* Park the connection's thread until its socket is ready or deadline.
 * libevent cannot mix edge- and level-triggered events on one fd, so waits
 * are edge-triggered like the connection's event; each one follows a read or
 * write that said EAGAIN, so no edge can be missed. When libevent removes a
 * write wait from an fd that still has a reader, it re-registers the reader
 * without the edge flag, so the connection's event steps aside during a
 * write wait and conn_idle() puts it back (its epoll ADD reports bytes that
 * arrived meanwhile). */
static int conn_wait(tk_http_conn_t *c, short what, int64_t deadline)
{
    if (what == EV_WRITE && c->ev_armed) {
        event_del(&c->ev);
        c->ev_armed = 0;
        c->ev_timed = 0;
    }
    return tk_gt_wait_fd(c->fd, (short)(what | EV_ET), TK_GT_WAIT_NET, deadline);
}

static int conn_flush(tk_http_conn_t *c)
{
    int64_t deadline = 0; /* read the clock only if the socket is full */
    while (c->out_off < c->out.len) {
        ssize_t w = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
        if (w > 0) {
            c->out_off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            if (deadline == 0)
                deadline = tk_now_ms() + c->srv->conf->write_timeout_ms;
            if (conn_wait(c, EV_WRITE, deadline) != 0) {
                if (errno == ETIMEDOUT) {
                    tk_metrics_error(TK_METRICS_ERR_TIMEOUT);
                    TK_LOG_CONN(TK_LOG_INFO, c->id, "write timed out");
                }
                return -1;
            }
            continue;
        }
        return -1;
    }
    c->out_off = 0;
    c->out.len = 0;
    if (c->out.cap > CONN_OUT_KEEP)
        tk_http_buf_free(&c->out);
    return 0;
}

int tk_http_conn_flush_ctx(tk_http_ctx_t *ctx)
{
    if (ctx->client_gone)
        return -1;
    if (conn_flush(ctx->conn) != 0) {
        ctx->client_gone = 1;
        return -1;
    }
    return 0;
}

/* Read what is available into the input buffer, making room for at least
 * want more bytes. Returns bytes read, 0 at EOF, -1 with errno (EAGAIN). */
static ssize_t conn_read(tk_http_conn_t *c, size_t want)
{
    tk_http_buf_t *b = &c->in;
    buf_get(b);
    if (!b->data) {
        errno = ENOMEM;
        return -1;
    }
    if (c->in_off > 0 && (c->in_off == b->len || b->cap - b->len < want)) {
        memmove(b->data, b->data + c->in_off, b->len - c->in_off);
        b->len -= c->in_off;
        c->in_off = 0;
    }
    if (want < 1024)
        want = 1024;
    if (!tk_http_buf_reserve(b, want))
        return -1;
    for (;;) {
        size_t room = b->cap - b->len;
        ssize_t r = recv(c->fd, b->data + b->len, room, 0);
        if (r > 0) {
            b->len += (size_t)r;
            /* a short read emptied the socket; a full one may have left bytes */
            c->rd_pending = (size_t)r == room;
            return r;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            c->rd_pending = 0;
        return r;
    }
}

/* Read until in holds at least need bytes past in_off, by deadline. 0, or -1
 * with errno ETIMEDOUT, ECANCELED, ECONNRESET (EOF). */
static int conn_read_until(tk_http_conn_t *c, size_t need, int64_t deadline)
{
    while (c->in.len - c->in_off < need) {
        ssize_t r = conn_read(c, need - (c->in.len - c->in_off));
        if (r > 0)
            continue;
        if (r == 0) {
            errno = ECONNRESET;
            return -1;
        }
        if (errno != EAGAIN)
            return -1;
        if (conn_wait(c, EV_READ, deadline) != 0)
            return -1;
    }
    return 0;
}

static tk_metrics_err_t err_kind(int status)
{
    switch (status) {
    case 408:
        return TK_METRICS_ERR_TIMEOUT;
    case 413:
    case 414:
    case 431:
        return TK_METRICS_ERR_LIMIT;
    default:
        return TK_METRICS_ERR_PARSE;
    }
}

/* Answer an error the engine found itself and close afterwards. */
static void conn_error(tk_http_conn_t *c, int status, const char *msg, uint64_t bytes_in)
{
    tk_http_ctx_t ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.conn = c;
    ctx.srv = c->srv;
    ctx.conf = c->srv ? c->srv->conf : NULL;
    ctx.out = &c->out;
    ctx.route_id = -1;
    ctx.conn_id = c->id;
    ctx.keep_alive = 0;
    uint64_t t0 = tk_now_ns();
    tk_http_respond_error(&ctx, status, msg);
    if (status < 500) /* tk_metrics_request() below counts every 5xx already */
        tk_metrics_error(err_kind(status));
    tk_metrics_request((unsigned)-1, status, tk_now_ns() - t0, bytes_in, ctx.bytes_out);
}

/* Reading the body may have moved the input buffer (compacted or grown):
 * move the parser's slices of the head along with it. */
static void rebase_str(tk_str_t *s, uintptr_t from, size_t len, uintptr_t to)
{
    uintptr_t p = (uintptr_t)s->p;
    if (s->p && p >= from && p <= from + len)
        s->p = (const char *)(to + (p - from));
}

static void request_rebase(tk_http_request_t *req, uintptr_t from, size_t len, uintptr_t to)
{
    rebase_str(&req->method, from, len, to);
    rebase_str(&req->target, from, len, to);
    rebase_str(&req->path, from, len, to);
    rebase_str(&req->query, from, len, to);
    rebase_str(&req->host, from, len, to);
    rebase_str(&req->accept_encoding, from, len, to);
    rebase_str(&req->content_type, from, len, to);
    for (int i = 0; i < req->nheaders; i++) {
        rebase_str(&req->headers[i].name, from, len, to);
        rebase_str(&req->headers[i].value, from, len, to);
    }
}

/* SERVE_FIN: answered the client's last request, all of which was read:
 * flush and close, without lingering. */
typedef enum { SERVE_NEXT, SERVE_IDLE, SERVE_CLOSE, SERVE_LINGER, SERVE_FIN } serve_rc_t;

/* Read the body of req (head_len bytes of head at in_off) into the input
 * buffer; on success req->body is set and *consumed is head + raw body bytes.
 * Returns 0, or an HTTP status to answer (then close). */
static int conn_read_body(tk_http_conn_t *c, tk_http_request_t *req, size_t head_len,
                          size_t *consumed)
{
    tk_http_server_t *srv = c->srv;
    int64_t deadline = tk_now_ms() + srv->conf->body_timeout_ms;
    *consumed = head_len;
    req->body.p = NULL;
    req->body.len = 0;
    if (!req->chunked && req->content_length <= 0) {
        req->body.p = c->in.data + c->in_off + head_len;
        return 0;
    }
    size_t have = c->in.len - c->in_off - head_len;
    if (req->expect_continue && have == 0) {
        /* the client waits for this before sending the body (RFC 9110 10.1.1) */
        if (tk_http_buf_append(&c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25) != 0 ||
            conn_flush(c) != 0)
            return -1;
    }
    if (!req->chunked) {
        size_t cl = (size_t)req->content_length;
        if (conn_read_until(c, head_len + cl, deadline) != 0)
            return errno == ETIMEDOUT ? 408 : -1;
        req->body.p = c->in.data + c->in_off + head_len;
        req->body.len = cl;
        *consumed = head_len + cl;
        return 0;
    }
    /* chunked: decode in place; the payload collects right after the head */
    tk_http_chunked_t d;
    tk_http_chunked_init(&d);
    size_t payload = 0; /* decoded bytes at in_off + head_len */
    for (;;) {
        size_t start = c->in_off + head_len + payload;
        size_t n = c->in.len - start;
        size_t used = 0, produced = 0;
        int rc = 0;
        if (n > 0)
            rc = tk_http_chunked_decode(&d, c->in.data + start, n, &used, &produced,
                                        srv->limits.max_body_size);
        if (rc < 0)
            return d.err.status ? d.err.status : 400;
        if (rc == 1) {
            /* move what follows (the next pipelined request) after the payload */
            size_t rest = n - used;
            memmove(c->in.data + start + produced, c->in.data + start + used, rest);
            c->in.len = start + produced + rest;
            payload += produced;
            break;
        }
        payload += produced;
        c->in.len = start + produced;
        /* conn_read may compact the buffer: keep offsets relative to in_off */
        ssize_t r = conn_read(c, 4096);
        if (r > 0)
            continue;
        if (r == 0)
            return -1;
        if (errno != EAGAIN)
            return -1;
        if (conn_wait(c, EV_READ, deadline) != 0)
            return errno == ETIMEDOUT ? 408 : -1;
    }
    req->body.p = c->in.data + c->in_off + head_len;
    req->body.len = payload;
    *consumed = head_len + payload;
    return 0;
}

/* Serve one complete request head of head_len bytes at in_off. */
static serve_rc_t conn_request(tk_http_conn_t *c, tk_http_request_t *req, size_t head_len)
{
    tk_http_server_t *srv = c->srv;
    /* the last clock reading: this slice's start or the previous request's end */
    uint64_t t0 = tk_now_recent_ns();
    c->nreq++;
    buf_get(&c->out); /* a pooled buffer, unless pipelined answers are queued in one */
    tk_router_t *router = c->admin && srv->admin_router ? srv->admin_router : srv->router;
    tk_router_match_t m;
    tk_router_result_t rr =
        tk_router_match(router, req->method.p, req->method.len, req->path.p, req->path.len, &m);
    int has_body = req->chunked || req->content_length > 0;
    size_t consumed = head_len;
    /* Connection: close, or HTTP/1.0 without keep-alive: the client sends no
     * further request on this connection (RFC 9112 9.6) */
    int last = !req->keep_alive, unread = 0;
    if (rr != TK_ROUTE_FOUND && has_body &&
        (req->expect_continue || req->chunked ||
         c->in.len - c->in_off < head_len + (size_t)req->content_length)) {
        /* no handler wants this body: answer now and close rather than read it */
        consumed = c->in.len - c->in_off;
        req->keep_alive = 0;
        unread = 1;
    } else {
        uintptr_t base0 = (uintptr_t)(c->in.data + c->in_off);
        int st = conn_read_body(c, req, head_len, &consumed);
        uintptr_t base1 = (uintptr_t)(c->in.data + c->in_off);
        if (base1 != base0) {
            request_rebase(req, base0, head_len, base1);
            /* the path parameters point into the head too: without this a
             * large body left /users/{id} reading freed memory */
            for (int i = 0; rr == TK_ROUTE_FOUND && i < m.nparams; i++)
                rebase_str(&m.params[i].value, base0, head_len, base1);
        }
        if (st != 0) {
            if (st > 0)
                conn_error(c, st,
                           st == 408   ? "body timeout"
                           : st == 413 ? "body too large"
                                       : "bad chunked body",
                           head_len);
            return st > 0 ? SERVE_LINGER : SERVE_CLOSE;
        }
    }
    /* the request is fully read: the parser's slices point into in.data,
     * which does not move until the next read */
    tk_http_ctx_t ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.conn = c;
    ctx.srv = srv;
    ctx.conf = srv->conf;
    ctx.req = req;
    ctx.match = &m;
    ctx.out = &c->out;
    ctx.route_id = m.route_id;
    ctx.head = req->method_id == TK_HTTP_HEAD;
    ctx.http10 = req->version_minor == 0;
    ctx.admin = c->admin;
    ctx.conn_id = c->id;
    ctx.peer = c->peer;
    char xff_peer[INET6_ADDRSTRLEN];
    if (c->xff_ok) {
        /* the last X-Forwarded-For field: the one the nearest proxy wrote */
        const tk_http_header_t *xf = NULL;
        for (int i = 0; i < req->nheaders; i++)
            if (req->headers[i].name.len == 15 &&
                strncasecmp(req->headers[i].name.p, "X-Forwarded-For", 15) == 0)
                xf = &req->headers[i];
        if (xf && tk_proxy_xff_client(&c->srv->trusted, xf->value.p, xf->value.len, xff_peer,
                                      sizeof(xff_peer)))
            ctx.peer = xff_peer;
    }
    ctx.gzip_ok = srv->conf->gzip && tk_http_accepts_gzip(req->accept_encoding);
    int more = c->in.len - c->in_off > consumed; /* pipelined bytes already here */
    ctx.keep_alive = req->keep_alive && !req->conn_close && srv->stopping == 0 &&
                     srv->conf->keepalive_timeout_ms > 0 &&
                     (srv->conf->max_requests_per_conn <= 0 ||
                      c->nreq < (unsigned)srv->conf->max_requests_per_conn);
    /* draining: finish what already arrived, then close */
    if (srv->stopping == 1 && more && req->keep_alive && !req->conn_close)
        ctx.keep_alive = 1;

    if (tk_uri_validate(req->path) != TK_URI_OK || tk_uri_validate(req->query) != TK_URI_OK) {
        tk_http_respond_error(&ctx, 400, "invalid percent-encoding");
        tk_metrics_error(TK_METRICS_ERR_PARSE);
    } else if (rr == TK_ROUTE_FOUND) {
        tk_gt_set_data(tk_gt_self(), &ctx);
        m.fn(&ctx);
        tk_gt_set_data(tk_gt_self(), NULL);
        if (!ctx.responded) {
            TK_LOG_CONN(TK_LOG_ERR, c->id, "handler for %s returned without answering", m.pattern);
            tk_http_respond_error(&ctx, 500, "internal error");
        } else if (ctx.streaming && !ctx.stream_ended) {
            ctx.keep_alive = 0; /* the body's end is unknown to the client */
        }
    } else if (rr == TK_ROUTE_METHOD_NOT_ALLOWED) {
        tk_http_add_header(&ctx, "Allow", m.allow);
        tk_http_respond_error(&ctx, 405, "method not allowed");
    } else {
        tk_http_respond_error(&ctx, 404, "not found");
    }
    uint64_t latency = tk_now_ns() - t0;
    tk_metrics_request(ctx.route_id >= 0 ? (unsigned)ctx.route_id : (unsigned)-1, ctx.status,
                       latency, consumed, ctx.bytes_out);
    if (done_hook)
        done_hook(&ctx, latency);
    tk_http_buf_free(&ctx.hdrs);
    tk_http_buf_free(&ctx.body);
    c->in_off += consumed;
    if (c->in_off == c->in.len)
        c->in_off = c->in.len = 0;
    if (ctx.client_gone)
        return SERVE_CLOSE;
    if (!ctx.keep_alive) {
        /* The client's last request, read to its end, nothing after it: no
         * byte can arrive for a close to answer with a reset, so the
         * lingering close (a shutdown, two epoll changes, a wake-up and a
         * read per connection) has nothing to protect. */
        if (last && !unread && c->in.len == 0)
            return SERVE_FIN;
        return SERVE_LINGER;
    }
    return SERVE_NEXT;
}

/* A connection from a trusted proxy: take the PROXY v2 header off the
 * input, if it starts with one, and make its source the peer. 1 done (the
 * header was taken, or there is none), 0 more bytes needed, -1 malformed
 * (the connection is closed: nothing after a bad header can be trusted). */
static int proxy_take(tk_http_conn_t *c)
{
    tk_proxy_hdr_t h;
    size_t used;
    switch (tk_proxy_v2_parse((const uint8_t *)c->in.data + c->in_off, c->in.len - c->in_off, &h,
                              &used)) {
    case TK_PROXY_MORE:
        return 0;
    case TK_PROXY_BAD:
        TK_LOG_CONN(TK_LOG_INFO, c->id, "malformed PROXY v2 header from %s", c->peer);
        tk_metrics_error(TK_METRICS_ERR_PARSE);
        return -1;
    case TK_PROXY_OK:
        c->in_off += used;
        /* the header named the client: what it sends is not a proxy's word */
        c->xff_ok = !h.have_addr;
        if (h.have_addr && h.src.ss_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)&h.src)->sin_addr, c->peer,
                      sizeof(c->peer));
        else if (h.have_addr && h.src.ss_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&h.src)->sin6_addr, c->peer,
                      sizeof(c->peer));
        c->peer_len = strlen(c->peer);
        break;
    case TK_PROXY_NONE:
        break;
    }
    c->proxy_hdr = 0;
    return 1;
}

static void conn_serve(void *arg)
{
    tk_http_conn_t *c = arg;
    tk_http_server_t *srv = c->srv;
    serve_rc_t rc = SERVE_CLOSE;
    /* the first request's head is due header_timeout after the accept, later
     * ones after their first bytes arrived: just now, when this slice began */
    if (c->nreq > 0)
        c->req_start_ms = (int64_t)(tk_now_recent_ns() / 1000000u);
    int64_t deadline = c->req_start_ms + srv->conf->header_timeout_ms;
    tk_http_request_t req;
    unsigned served = 0;
    for (;;) {
        tk_http_scan_t scan;
        memset(&scan, 0, sizeof(scan));
        tk_http_error_t err = {0, NULL};
        int n = 0;
        for (;;) {
            size_t avail = c->in.len - c->in_off;
            if (avail > 0 && c->proxy_hdr) {
                int pr = proxy_take(c);
                if (pr < 0)
                    goto close;
                if (pr > 0)
                    continue; /* header gone (or none): parse what follows */
            } else if (avail > 0) {
                n = tk_http_parse_head(&srv->limits, c->in.data + c->in_off, avail, &scan, &req,
                                       &err);
                if (n != 0)
                    break;
            }
            /* need more bytes: first send what the requests so far produced */
            if (c->out.len > c->out_off && conn_flush(c) != 0)
                goto close;
            if (srv->stopping == 2 && avail == 0)
                goto close;
            if (avail == 0 && served > 0 && !c->rd_pending) {
                /* a next request is rarely here already: let the loop say
                 * when it is, instead of a read that would say EAGAIN */
                rc = SERVE_IDLE;
                goto out;
            }
            ssize_t r = conn_read(c, 0);
            if (c->first_read) {
                c->first_read = 0;
                if (r > 0)
                    srv->read_first += srv->read_first < READ_FIRST_MAX;
                else
                    srv->read_first = srv->read_first > 2 ? srv->read_first - 2 : 0;
            }
            if (r > 0)
                continue;
            if (r == 0 || errno != EAGAIN)
                goto close;
            if (avail == 0) {
                rc = SERVE_IDLE; /* nothing pending: give the stack back */
                goto out;
            }
            if (conn_wait(c, EV_READ, deadline) != 0) {
                if (errno != ETIMEDOUT)
                    goto close;
                TK_LOG_CONN(TK_LOG_INFO, c->id, "request head timed out");
                conn_error(c, 408, "request header timeout", avail);
                rc = SERVE_LINGER;
                goto out;
            }
        }
        if (n < 0) {
            conn_error(c, err.status ? err.status : 400, err.msg ? err.msg : "bad request",
                       c->in.len - c->in_off);
            rc = SERVE_LINGER;
            goto out;
        }
        {
            /* for the stack-overflow report: peer, method and target */
            tk_gt_set_note(c->gt, c->peer, c->peer_len, req.method.p,
                           (size_t)(req.target.p + req.target.len - req.method.p));
        }
        rc = conn_request(c, &req, (size_t)n);
        if (rc != SERVE_NEXT)
            goto out;
        served++;
        /* a pipelined request may be partly here: its head has its own
         * deadline (conn_request read the clock as it ended) */
        deadline = (int64_t)(tk_now_recent_ns() / 1000000u) + srv->conf->header_timeout_ms;
    }
close:
    rc = SERVE_CLOSE;
out:
    if (rc == SERVE_LINGER || rc == SERVE_IDLE || rc == SERVE_FIN) {
        if (c->out.len > c->out_off && conn_flush(c) != 0)
            rc = SERVE_CLOSE;
    }
    srv->nactive--;
    c->gt = NULL;
    if (tk_gt_cancelled(tk_gt_self()) && rc == SERVE_IDLE)
        rc = SERVE_CLOSE;
    switch (rc) {
    case SERVE_IDLE:
        conn_idle(c);
        break;
    case SERVE_LINGER:
        conn_linger(c);
        break;
    default:
        conn_close(c);
        break;
    }
}
