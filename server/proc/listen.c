/* listen.c: the master's listen sockets: opened once (non-blocking,
 * TCP_NODELAY for the accepted sockets to inherit, TCP_DEFER_ACCEPT, backlog
 * capped by somaxconn), kept across reloads while a generation uses them, closed in a
 * worker that does not. */
#include "config.h"

#include "proc/listen.h"

#include "proc/log.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int somaxconn(void)
{
    int fd = open("/proc/sys/net/core/somaxconn", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[32];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    return atoi(buf);
}

tk_listen_t *tk_listen_find(tk_listen_set_t *s, const char *addr)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    char err[160];
    if (tk_conf_parse_addr(addr, &ss, &sl, err, sizeof(err)) != 0)
        return NULL;
    for (int i = 0; i < s->n; i++)
        if (s->lst[i].sl == sl && memcmp(&s->lst[i].ss, &ss, sl) == 0)
            return &s->lst[i];
    return NULL;
}

/* Open addr unless already open. Non-blocking: every worker accepts from it.
 * The backlog is capped by net.core.somaxconn (the kernel would silently). */
static int open_listener(tk_listen_set_t *s, const char *addr, int backlog)
{
    if (tk_listen_find(s, addr) != NULL)
        return 0;
    if (s->n == TK_LISTEN_MAX) {
        TK_LOG(TK_LOG_ERR, "too many listen sockets");
        return -1;
    }
    tk_listen_t *l = &s->lst[s->n];
    char err[160];
    if (tk_conf_parse_addr(addr, &l->ss, &l->sl, err, sizeof(err)) != 0) {
        TK_LOG(TK_LOG_ERR, "listen %s: %s", addr, err);
        return -1;
    }
    snprintf(l->addr, sizeof(l->addr), "%s", addr);
    int fd = socket(l->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        TK_LOG_ERRNO(TK_LOG_ERR, errno, "socket() for %s failed", addr);
        return -1;
    }
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0)
        TK_LOG_ERRNO(TK_LOG_WARN, errno, "setsockopt(SO_REUSEADDR) on %s failed", addr);
    /* Accepted sockets inherit TCP_NODELAY from their listener (Linux copies
     * the listener's options to each child): one setsockopt per connection
     * fewer in the workers, which count on it. */
    if ((l->ss.ss_family == AF_INET || l->ss.ss_family == AF_INET6) &&
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
        TK_LOG_ERRNO(TK_LOG_WARN, errno, "setsockopt(TCP_NODELAY) on %s failed", addr);
    /* An HTTP client speaks first: the kernel queues a connection for accept
     * once its first bytes are there, so the worker's read at the accept
     * finds the request and a connection per request never enters epoll (no
     * add, wake-up or delete). One that stays silent is queued all the same
     * after about this many seconds (the SYN-ACK retransmission it answers),
     * and its header timeout runs from then. */
    int defer_s = TK_LISTEN_DEFER_ACCEPT_S;
    if ((l->ss.ss_family == AF_INET || l->ss.ss_family == AF_INET6) &&
        setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer_s, sizeof(defer_s)) != 0)
        TK_LOG_ERRNO(TK_LOG_WARN, errno, "setsockopt(TCP_DEFER_ACCEPT) on %s failed", addr);
    /* [::]:P should not also take 0.0.0.0:P: both may be listed. */
    if (l->ss.ss_family == AF_INET6 &&
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0)
        TK_LOG_ERRNO(TK_LOG_WARN, errno, "setsockopt(IPV6_V6ONLY) on %s failed", addr);
    if (bind(fd, (struct sockaddr *)&l->ss, l->sl) != 0) {
        TK_LOG_ERRNO(TK_LOG_ERR, errno, "bind() to %s failed", addr);
        close(fd);
        return -1;
    }
    int max = somaxconn();
    if (max > 0 && backlog > max) {
        TK_LOG(TK_LOG_WARN,
               "server.backlog %d exceeds net.core.somaxconn (%d) for %s; using %d (raise it "
               "with sysctl -w net.core.somaxconn=%d)",
               backlog, max, addr, max, backlog);
        backlog = max;
    }
    if (listen(fd, backlog) != 0) {
        TK_LOG_ERRNO(TK_LOG_ERR, errno, "listen() on %s failed", addr);
        close(fd);
        return -1;
    }
    l->fd = fd;
    s->n++;
    TK_LOG(TK_LOG_INFO, "listening on %s", addr);
    return 0;
}

static int conf_uses(tk_listen_set_t *s, const tk_conf_t *c, const tk_listen_t *l)
{
    if (c == NULL)
        return 0;
    for (int i = 0; i < c->nlisten; i++)
        if (tk_listen_find(s, c->listen[i]) == l)
            return 1;
    return c->admin_listen[0] && tk_listen_find(s, c->admin_listen) == l;
}

int tk_listen_open(tk_listen_set_t *s, const tk_conf_t *c)
{
    for (int i = 0; i < c->nlisten; i++)
        if (open_listener(s, c->listen[i], c->backlog) != 0)
            return -1;
    if (c->admin_listen[0] && open_listener(s, c->admin_listen, 128) != 0)
        return -1;
    return 0;
}

void tk_listen_close_unused(tk_listen_set_t *s, const tk_conf_t *a, const tk_conf_t *b)
{
    for (int i = 0; i < s->n;) {
        if (conf_uses(s, a, &s->lst[i]) || conf_uses(s, b, &s->lst[i])) {
            i++;
            continue;
        }
        TK_LOG(TK_LOG_NOTICE, "closing listen socket %s", s->lst[i].addr);
        close(s->lst[i].fd);
        s->lst[i] = s->lst[--s->n];
    }
}

void tk_listen_close_all(tk_listen_set_t *s)
{
    for (int i = 0; i < s->n; i++)
        close(s->lst[i].fd);
    s->n = 0;
}

void tk_listen_close_others(tk_listen_set_t *s, const int *fds, int nfds, int admin_fd)
{
    for (int i = 0; i < s->n; i++) {
        int used = s->lst[i].fd == admin_fd;
        for (int j = 0; j < nfds; j++)
            used |= s->lst[i].fd == fds[j];
        if (!used)
            close(s->lst[i].fd);
    }
}
