/* gt_dump.c: the workers' thread-dump service behind /debug/threads: each worker answers the
 * others for its own green threads, and collects theirs for the worker serving the request. */
#include "config.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "http/http_response.h"
#include "proc/gt_dump.h"
#include "proc/log.h"
#include "runtime/scheduler.h"
#include "shm/procstat.h"

/* How long a worker's answer may take to be asked for and sent. */
#define THREADS_TIMEOUT_MS 2000
/* Threads listed per worker at most. */
#define THREADS_LIMIT 100000
/* Bytes of another worker's answer kept at most (THREADS_LIMIT threads of
 * ~250 bytes); a longer one is dropped whole and reported. */
#define THREADS_REPLY_MAX (32u << 20)

/* Each worker answers for its own green threads: it listens on an abstract
 * Unix socket named after its pid; the worker serving /debug/threads asks the
 * others there (their pids are in the worker table) while its own request
 * thread is parked, so no worker stops for another. A worker's reply is its
 * threads as comma-separated JSON objects, spliced into the response as is. */
static struct {
    int fd;
    struct event *ev;
    tk_sched_t *sched;
} R = {.fd = -1};

static socklen_t gt_addr(pid_t pid, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    int n = snprintf(sa->sun_path + 1, sizeof(sa->sun_path) - 1, "tenk-gt-%d", (int)pid);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

static const char *wait_reason(tk_gt_state_t s)
{
    switch (s) {
    case TK_GT_RUNNING:
        return "running";
    case TK_GT_RUNNABLE:
        return "ready to run";
    case TK_GT_WAIT_NET:
        return "client socket";
    case TK_GT_WAIT_DB:
        return "PostgreSQL reply";
    case TK_GT_WAIT_BROKER:
        return "database connection slot";
    case TK_GT_WAIT_CACHE:
        return "Redis reply";
    case TK_GT_SLEEPING:
        return "sleep";
    case TK_GT_WAIT_GT:
        return "another green thread";
    default:
        return "unknown";
    }
}

/* JSON string of s (len bytes); bytes outside printable ASCII as \u00XX. */
static void put_json_str(tk_http_buf_t *b, const char *s, size_t len)
{
    tk_http_buf_append(b, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            tk_http_buf_printf(b, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            tk_http_buf_printf(b, "\\u%04x", c);
        else
            tk_http_buf_append(b, s + i, 1);
    }
    tk_http_buf_append(b, "\"", 1);
}

typedef struct {
    tk_http_buf_t *b;
    unsigned n, limit;
    int slot;
    uint64_t now;
} dump_t;

static void dump_one(tk_gt_t *gt, void *arg)
{
    dump_t *d = arg;
    if (d->n >= d->limit)
        return;
    tk_gt_state_t st = tk_gt_state(gt);
    uint64_t started = tk_gt_started_ns(gt);
    tk_http_buf_t *b = d->b;
    const char *name = tk_gt_name(gt);
    tk_http_buf_printf(b, "%s{\"id\":%llu,\"worker\":%d,\"pid\":%d,\"name\":", d->n ? "," : "",
                       (unsigned long long)tk_gt_id(gt), d->slot, (int)getpid());
    put_json_str(b, name ? name : "", name ? strlen(name) : 0);
    tk_http_buf_printf(b, ",\"state\":\"%s\",\"wait\":\"%s\",\"age_s\":%.6f", tk_gt_state_name(st),
                       wait_reason(st),
                       started && d->now > started ? (double)(d->now - started) / 1e9 : 0.0);
    /* the HTTP engine points a thread's data at its request context while
     * the handler runs (the context lives on that thread's stack, which stays
     * put while it is parked) */
    const tk_http_ctx_t *ctx = tk_gt_data(gt);
    const tk_http_request_t *req = ctx ? tk_http_request(ctx) : NULL;
    if (req) {
        tk_http_buf_printf(b,
                           ",\"conn\":%llu,\"method\":", (unsigned long long)tk_http_conn_id(ctx));
        put_json_str(b, req->method.p, req->method.len);
        tk_http_buf_append_str(b, ",\"path\":");
        put_json_str(b, req->path.p, req->path.len);
        /* a parsed request always has its connection's peer */
        const char *peer = tk_http_peer(ctx);
        tk_http_buf_append_str(b, ",\"peer\":");
        put_json_str(b, peer, strlen(peer));
    } else {
        tk_http_buf_append_str(b, ",\"method\":null,\"path\":null");
    }
    tk_http_buf_append(b, "}", 1);
    d->n++;
}

static unsigned dump_threads(tk_http_buf_t *b, int slot, unsigned limit)
{
    dump_t d = {b, 0, limit, slot, tk_now_ns()};
    if (R.sched)
        tk_sched_foreach(R.sched, dump_one, &d);
    return d.n;
}

static void reply_done(struct bufferevent *bev, void *arg)
{
    (void)arg;
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        bufferevent_free(bev);
}

static void reply_event(struct bufferevent *bev, short what, void *arg)
{
    (void)what;
    (void)arg;
    bufferevent_free(bev);
}

/* The request line "threads SLOT\n" (the asker knows our slot from the
 * worker table) has arrived: answer with the table, then close. */
static void request_read(struct bufferevent *bev, void *arg)
{
    (void)arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    char *line = evbuffer_readln(in, NULL, EVBUFFER_EOL_LF);
    if (!line) {
        if (evbuffer_get_length(in) > 64) /* not ours */
            bufferevent_free(bev);
        return;
    }
    int slot = -1;
    int ok = sscanf(line, "threads %d", &slot) == 1;
    free(line);
    if (!ok) {
        bufferevent_free(bev);
        return;
    }
    bufferevent_disable(bev, EV_READ);
    tk_http_buf_t b;
    tk_http_buf_init(&b);
    dump_threads(&b, slot, THREADS_LIMIT);
    bufferevent_setcb(bev, NULL, reply_done, reply_event, NULL);
    if (b.len == 0 || bufferevent_write(bev, b.data, b.len) != 0 ||
        bufferevent_enable(bev, EV_WRITE) != 0)
        bufferevent_free(bev); /* nothing to say: EOF is the empty answer */
    tk_http_buf_free(&b);
}

/* Another worker connects to ask for this worker's threads. */
static void responder_cb(evutil_socket_t lfd, short what, void *arg)
{
    (void)what;
    (void)arg;
    for (int k = 0; k < 16; k++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        /* abstract sockets have no file permissions: answer our own user
         * only, and only a sibling (another worker of our master) */
        struct ucred cr;
        socklen_t cl = sizeof(cr);
        tk_procstat_t ps;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) != 0 ||
            (cr.uid != geteuid() && cr.uid != 0) || tk_procstat_read(cr.pid, &ps) != 0 ||
            ps.ppid != getppid()) {
            close(fd);
            continue;
        }
        struct bufferevent *bev =
            bufferevent_socket_new(tk_sched_base(R.sched), fd, BEV_OPT_CLOSE_ON_FREE);
        if (!bev) {
            close(fd);
            continue;
        }
        struct timeval tv = {THREADS_TIMEOUT_MS / 1000, (THREADS_TIMEOUT_MS % 1000) * 1000};
        bufferevent_set_timeouts(bev, &tv, &tv);
        bufferevent_setcb(bev, request_read, NULL, reply_event, NULL);
        if (bufferevent_enable(bev, EV_READ) != 0)
            bufferevent_free(bev);
    }
}

int tk_gt_dump_start(tk_sched_t *s)
{
    if (!s || R.fd >= 0)
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_un sa;
    socklen_t len = gt_addr(getpid(), &sa);
    if (bind(fd, (struct sockaddr *)&sa, len) != 0 || listen(fd, 64) != 0) {
        /* EADDRINUSE: another process took our name first; the others'
         * /debug/threads then see it is not us (SO_PEERCRED) and say so */
        TK_LOG_ERRNO(TK_LOG_WARN, errno,
                     "bind() of the thread-dump socket @tenk-gt-%d failed: /debug/threads will "
                     "miss this worker",
                     (int)getpid());
        close(fd);
        return -1;
    }
    R.ev = event_new(tk_sched_base(s), fd, EV_READ | EV_PERSIST, responder_cb, NULL);
    if (!R.ev || event_add(R.ev, NULL) != 0) {
        if (R.ev)
            event_free(R.ev);
        R.ev = NULL;
        close(fd);
        return -1;
    }
    R.fd = fd;
    R.sched = s;
    return 0;
}

/* Ask worker pid (in slot) for its table; append it to b (with a leading comma when
 * *first is 0). Returns 0, or -1 with a reason in err. May yield. */
static int ask_worker(pid_t pid, int slot, tk_http_buf_t *b, int *first, int64_t deadline,
                      char *err, size_t errlen)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket(): %s", strerror(errno));
        return -1;
    }
    struct sockaddr_un sa;
    socklen_t len = gt_addr(pid, &sa);
    char req[32];
    int rl = snprintf(req, sizeof(req), "threads %d\n", slot);
    /* a Unix stream connect completes at once (EAGAIN: its backlog is full) and
     * the line fits in the socket buffer */
    if (connect(fd, (struct sockaddr *)&sa, len) != 0) {
        snprintf(err, errlen, "asking it failed: %s", strerror(errno));
        close(fd);
        return -1;
    }
    /* Any local process can bind the name first: talk only to the worker
     * itself (the pid we asked for, our user, a child of our master). */
    struct ucred cr;
    socklen_t cl = sizeof(cr);
    tk_procstat_t ps;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) != 0 || cr.pid != pid ||
        (cr.uid != geteuid() && cr.uid != 0) || tk_procstat_read(pid, &ps) != 0 ||
        ps.ppid != getppid()) {
        snprintf(err, errlen, "@tenk-gt-%d is held by pid %d (uid %u), not by that worker: ignored",
                 (int)pid, (int)cr.pid, (unsigned)cr.uid);
        TK_LOG(TK_LOG_WARN, "/debug/threads: %s", err);
        close(fd);
        return -1;
    }
    if (write(fd, req, (size_t)rl) != rl) {
        snprintf(err, errlen, "asking it failed: %s", strerror(errno));
        close(fd);
        return -1;
    }
    size_t start = b->len;
    if (!*first)
        tk_http_buf_append(b, ",", 1);
    size_t body = b->len;
    int rc = 0;
    for (;;) {
        if (b->len - body > THREADS_REPLY_MAX) {
            snprintf(err, errlen, "answer over %u MiB: dropped", THREADS_REPLY_MAX >> 20);
            TK_LOG(TK_LOG_WARN, "/debug/threads: worker pid %d: %s", (int)pid, err);
            rc = -1;
            break;
        }
        char *w = tk_http_buf_reserve(b, 65536);
        if (!w) {
            snprintf(err, errlen, "out of memory");
            rc = -1;
            break;
        }
        ssize_t n = read(fd, w, 65536);
        if (n > 0) {
            tk_http_buf_commit(b, (size_t)n);
            continue;
        }
        if (n == 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN) {
            snprintf(err, errlen, "read(): %s", strerror(errno));
            rc = -1;
            break;
        }
        if (tk_gt_wait_fd(fd, EV_READ, TK_GT_WAIT_NET, deadline) != 0) {
            snprintf(err, errlen, "%s", errno == ETIMEDOUT ? "no answer in time" : "cancelled");
            rc = -1;
            break;
        }
    }
    close(fd);
    if (rc != 0 || b->len == body) /* failed, or no threads at all: keep nothing */
        b->len = start;
    else
        *first = 0;
    return rc;
}

int tk_gt_dump_collect(pid_t pid, int slot, tk_http_buf_t *b, int *first, int64_t deadline,
                       char *err, size_t errlen)
{
    if (pid != getpid())
        return ask_worker(pid, slot, b, first, deadline, err, errlen);
    size_t before = b->len;
    if (!*first)
        tk_http_buf_append(b, ",", 1);
    if (dump_threads(b, slot, THREADS_LIMIT) == 0)
        b->len = before;
    else
        *first = 0;
    return 0;
}

void tk_gt_dump_stop(void)
{
    if (R.ev) {
        event_free(R.ev);
        R.ev = NULL;
    }
    if (R.fd >= 0) {
        close(R.fd);
        R.fd = -1;
    }
    R.sched = NULL;
}
