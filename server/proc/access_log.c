/* access_log.c: per-worker buffered access log (combined or JSON lines), reopened on SIGUSR1. */
#include "config.h"

#include "proc/access_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "http/http_conn.h"

/* One per worker process: the worker is single-threaded, so no locks. */
static struct {
    int fd; /* -1 when off */
    tk_access_log_format_t fmt;
    int worker;
    char path[256];
    tk_http_buf_t buf;
    struct event *timer;
    uint64_t dropped;
    /* the formatted timestamp, recomputed once a second */
    int64_t ts_sec;
    char ts[40];
} L = {.fd = -1};

int tk_access_log_format_parse(const char *s, tk_access_log_format_t *out)
{
    if (!s || !*s || strcmp(s, "combined") == 0)
        *out = TK_ACCESS_LOG_COMBINED;
    else if (strcmp(s, "json") == 0)
        *out = TK_ACCESS_LOG_JSON;
    else
        return -1;
    return 0;
}

static int open_path(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (L.buf.len)
        tk_access_log_flush();
}

int tk_access_log_open(struct event_base *base, const tk_conf_t *conf, int worker, char *err,
                       size_t errlen)
{
    if (!conf->access_log[0])
        return 0;
    if (L.fd >= 0)
        tk_access_log_close();
    if (tk_access_log_format_parse(conf->access_log_format, &L.fmt) != 0) {
        snprintf(err, errlen, "log.access_log_format: unknown format \"%s\" (combined or json)",
                 conf->access_log_format);
        return -1;
    }
    if (strlen(conf->access_log) >= sizeof(L.path)) {
        snprintf(err, errlen, "log.access_log: path too long");
        return -1;
    }
    int fd = open_path(conf->access_log);
    if (fd < 0) {
        snprintf(err, errlen, "open(\"%s\") failed: %s", conf->access_log, strerror(errno));
        return -1;
    }
    tk_http_buf_init(&L.buf);
    if (!tk_http_buf_reserve(&L.buf, TK_ACCESS_LOG_BUF)) {
        close(fd);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (base) {
        L.timer = event_new(base, -1, EV_PERSIST, timer_cb, NULL);
        struct timeval tv = {TK_ACCESS_LOG_FLUSH_MS / 1000, (TK_ACCESS_LOG_FLUSH_MS % 1000) * 1000};
        if (!L.timer || event_add(L.timer, &tv) != 0) {
            if (L.timer)
                event_free(L.timer);
            L.timer = NULL;
            tk_http_buf_free(&L.buf);
            close(fd);
            snprintf(err, errlen, "cannot start the access log's flush timer");
            return -1;
        }
    }
    memcpy(L.path, conf->access_log, strlen(conf->access_log) + 1);
    L.fd = fd;
    L.worker = worker;
    L.ts_sec = -1;
    tk_http_set_done_hook(tk_access_log_hook);
    return 0;
}

int tk_access_log_enabled(void)
{
    return L.fd >= 0;
}

uint64_t tk_access_log_dropped(void)
{
    return L.dropped;
}

int tk_access_log_flush(void)
{
    if (L.fd < 0 || L.buf.len == 0)
        return 0;
    size_t off = 0;
    int rc = 0;
    while (off < L.buf.len) {
        ssize_t n = write(L.fd, L.buf.data + off, L.buf.len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = -1;
            break;
        }
        off += (size_t)n;
    }
    if (rc != 0) {
        /* count the whole lines that never made it */
        int e = errno;
        for (size_t i = off; i < L.buf.len; i++)
            L.dropped += L.buf.data[i] == '\n';
        errno = e;
    }
    L.buf.len = 0;
    return rc;
}

int tk_access_log_reopen(void)
{
    if (L.fd < 0)
        return 0;
    tk_access_log_flush();
    int fd = open_path(L.path);
    if (fd < 0)
        return -1;
    close(L.fd);
    L.fd = fd;
    return 0;
}

void tk_access_log_close(void)
{
    if (L.fd < 0)
        return;
    tk_http_set_done_hook(NULL);
    tk_access_log_flush();
    if (L.timer) {
        event_free(L.timer);
        L.timer = NULL;
    }
    close(L.fd);
    L.fd = -1;
    tk_http_buf_free(&L.buf);
}

/* --- formatting -------------------------------------------------------------------- */

/* Append s escaped for a quoted field of the combined format: '"', '\' and
 * bytes outside printable ASCII become \xHH (as nginx does), so a client can't
 * forge a line or a field. */
static int put_quoted(tk_http_buf_t *b, tk_str_t s)
{
    if (!s.p)
        return tk_http_buf_append(b, "-", 1);
    char *w = tk_http_buf_reserve(b, s.len * 4);
    if (!w)
        return -1;
    size_t n = 0;
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.p[i];
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
            static const char hex[] = "0123456789ABCDEF";
            w[n++] = '\\';
            w[n++] = 'x';
            w[n++] = hex[c >> 4];
            w[n++] = hex[c & 15];
        } else {
            w[n++] = (char)c;
        }
    }
    tk_http_buf_commit(b, n);
    return 0;
}

/* Append s as a JSON string (with the quotes); NULL as null. Bytes >= 0x80
 * are escaped as \u00XX so the line stays valid JSON whatever the client sent. */
static int put_json(tk_http_buf_t *b, tk_str_t s)
{
    if (!s.p)
        return tk_http_buf_append(b, "null", 4);
    char *w = tk_http_buf_reserve(b, s.len * 6 + 2);
    if (!w)
        return -1;
    size_t n = 0;
    w[n++] = '"';
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.p[i];
        if (c == '"' || c == '\\') {
            w[n++] = '\\';
            w[n++] = (char)c;
        } else if (c < 0x20 || c >= 0x7f) {
            static const char hex[] = "0123456789abcdef";
            memcpy(w + n, "\\u00", 4);
            n += 4;
            w[n++] = hex[c >> 4];
            w[n++] = hex[c & 15];
        } else {
            w[n++] = (char)c;
        }
    }
    w[n++] = '"';
    tk_http_buf_commit(b, n);
    return 0;
}

static tk_str_t cstr(const char *s)
{
    tk_str_t r = {s, s ? strlen(s) : 0};
    return r;
}

static tk_str_t header(const tk_http_ctx_t *ctx, const char *name)
{
    tk_str_t none = {NULL, 0};
    return tk_http_request(ctx) ? tk_http_header(ctx, name) : none;
}

int tk_access_log_format_line(tk_http_buf_t *b, tk_access_log_format_t fmt,
                              const tk_http_ctx_t *ctx, uint64_t bytes_in, uint64_t duration_ns,
                              int64_t unix_ms, int worker)
{
    const tk_http_request_t *req = tk_http_request(ctx);
    const char *peer = tk_http_peer(ctx);
    time_t t = (time_t)(unix_ms / 1000);
    struct tm tm;
    int rc = 0;
    if (fmt == TK_ACCESS_LOG_COMBINED) {
        /* the timestamp only changes once a second: format it once */
        if (b == &L.buf && L.ts_sec == (int64_t)t) {
            rc |= tk_http_buf_printf(b, "%s - - [%s] \"", peer, L.ts);
        } else {
            char ts[40];
            localtime_r(&t, &tm);
            strftime(ts, sizeof(ts), "%d/%b/%Y:%H:%M:%S %z", &tm);
            if (b == &L.buf) {
                memcpy(L.ts, ts, sizeof(ts));
                L.ts_sec = (int64_t)t;
            }
            rc |= tk_http_buf_printf(b, "%s - - [%s] \"", peer, ts);
        }
        if (req) {
            rc |= put_quoted(b, req->method);
            rc |= tk_http_buf_append(b, " ", 1);
            rc |= put_quoted(b, req->target);
            rc |= tk_http_buf_printf(b, " HTTP/1.%d", req->version_minor);
        } else {
            rc |= tk_http_buf_append(b, "-", 1);
        }
        rc |= tk_http_buf_printf(b, "\" %d %zu \"", tk_http_status(ctx), tk_http_bytes_out(ctx));
        rc |= put_quoted(b, header(ctx, "Referer"));
        rc |= tk_http_buf_append(b, "\" \"", 3);
        rc |= put_quoted(b, header(ctx, "User-Agent"));
        rc |= tk_http_buf_printf(b, "\" %.6f\n", (double)duration_ns / 1e9);
        return rc ? -1 : 0;
    }
    char ts[40];
    gmtime_r(&t, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    rc |= tk_http_buf_printf(b, "{\"time\":\"%s.%03dZ\",\"remote\":", ts, (int)(unix_ms % 1000));
    rc |= put_json(b, cstr(peer));
    rc |= tk_http_buf_append_str(b, ",\"method\":");
    rc |= put_json(b, req ? req->method : cstr(NULL));
    rc |= tk_http_buf_append_str(b, ",\"path\":");
    rc |= put_json(b, req ? req->path : cstr(NULL));
    rc |= tk_http_buf_append_str(b, ",\"query\":");
    rc |= put_json(b, req ? req->query : cstr(NULL));
    if (req)
        rc |= tk_http_buf_printf(b, ",\"protocol\":\"HTTP/1.%d\"", req->version_minor);
    else
        rc |= tk_http_buf_append_str(b, ",\"protocol\":null");
    rc |= tk_http_buf_printf(b, ",\"status\":%d", tk_http_status(ctx));
    if (bytes_in != TK_ACCESS_LOG_UNKNOWN)
        rc |= tk_http_buf_printf(b, ",\"bytes_in\":%llu", (unsigned long long)bytes_in);
    rc |= tk_http_buf_printf(b, ",\"bytes_out\":%zu,\"duration_s\":%.6f,\"referer\":",
                             tk_http_bytes_out(ctx), (double)duration_ns / 1e9);
    rc |= put_json(b, header(ctx, "Referer"));
    rc |= tk_http_buf_append_str(b, ",\"user_agent\":");
    rc |= put_json(b, header(ctx, "User-Agent"));
    rc |= tk_http_buf_printf(b, ",\"worker\":%d,\"conn\":%llu,\"admin\":%s}\n", worker,
                             (unsigned long long)tk_http_conn_id(ctx),
                             tk_http_is_admin(ctx) ? "true" : "false");
    return rc ? -1 : 0;
}

void tk_access_log_request(const tk_http_ctx_t *ctx, uint64_t bytes_in, uint64_t duration_ns)
{
    if (L.fd < 0)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    int64_t ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    size_t before = L.buf.len;
    if (tk_access_log_format_line(&L.buf, L.fmt, ctx, bytes_in, duration_ns, ms, L.worker) != 0) {
        L.buf.len = before; /* no half line */
        L.dropped++;
        return;
    }
    if (L.buf.len >= TK_ACCESS_LOG_BUF / 2)
        tk_access_log_flush();
}

void tk_access_log_hook(const tk_http_ctx_t *ctx, uint64_t latency_ns)
{
    tk_access_log_request(ctx, TK_ACCESS_LOG_UNKNOWN, latency_ns);
}
