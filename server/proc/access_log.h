/* access_log.h: the optional access log: one line per response, buffered per worker.
 *
 * Each worker keeps its own buffer and appends it to the file (O_APPEND, so
 * the workers' writes never interleave inside a line) when it fills up and at
 * least once a second from a libevent timer. Two formats: "combined" (the
 * Apache/nginx combined format plus the response time in seconds) and "json"
 * (one JSON object per line). The file is reopened on SIGUSR1 (logrotate's
 * postrotate). Nothing here parks a green thread: a flush is one write(2) of
 * at most TK_ACCESS_LOG_BUF bytes to a regular file. */
#ifndef TK_ACCESS_LOG_H
#define TK_ACCESS_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "proc/conf.h"
#include "http/http_response.h"

struct event_base;

/* Buffer size per worker; a flush happens when it is more than half full. */
#define TK_ACCESS_LOG_BUF (64u * 1024u)
/* Longest time a line stays in the buffer. */
#define TK_ACCESS_LOG_FLUSH_MS 1000

typedef enum {
    TK_ACCESS_LOG_COMBINED = 0,
    TK_ACCESS_LOG_JSON,
} tk_access_log_format_t;

/* Parse "combined" / "json"; 0, or -1 if unknown. */
int tk_access_log_format_parse(const char *s, tk_access_log_format_t *out);

/* In the worker, after the event base exists: open conf->access_log (nothing
 * to do when it is ""), with conf->access_log_format, start the flush timer on
 * base and install tk_access_log_hook() as the HTTP engine's per-response hook
 * (tk_http_set_done_hook). worker is the worker's slot (written into JSON
 * lines). Returns 0, or -1 with a message in err. */
int tk_access_log_open(struct event_base *base, const tk_conf_t *conf, int worker, char *err,
                       size_t errlen);
/* Flush, then reopen the same path (SIGUSR1). 0, or -1 with errno (the old
 * file stays in use). 0 when the log is off. */
int tk_access_log_reopen(void);
/* Append the buffer to the file now. 0, or -1 with errno (the lines are
 * dropped and counted). */
int tk_access_log_flush(void);
/* Flush, stop the timer, close the file (worker exit). */
void tk_access_log_close(void);
/* Whether a log is open. */
int tk_access_log_enabled(void);
/* Lines dropped because a write failed. */
uint64_t tk_access_log_dropped(void);

/* bytes_in when the caller doesn't know it (the JSON line leaves it out). */
#define TK_ACCESS_LOG_UNKNOWN UINT64_MAX

/* One finished response: ctx after the handler (or the engine) answered,
 * bytes_in the request's bytes on the wire (or TK_ACCESS_LOG_UNKNOWN),
 * duration_ns the time to answer. tk_http_request(ctx) may be NULL (a
 * request the parser refused): the request line is then logged as "-". */
void tk_access_log_request(const tk_http_ctx_t *ctx, uint64_t bytes_in, uint64_t duration_ns);
/* The same with the HTTP engine's tk_http_done_fn signature. */
void tk_access_log_hook(const tk_http_ctx_t *ctx, uint64_t latency_ns);

/* Format one line into out (exposed for tests): the same text
 * tk_access_log_request() buffers, ending in '\n'. unix_ms is the wall-clock
 * time of the response. Returns 0 or -1 (ENOMEM). */
int tk_access_log_format_line(tk_http_buf_t *out, tk_access_log_format_t fmt,
                              const tk_http_ctx_t *ctx, uint64_t bytes_in, uint64_t duration_ns,
                              int64_t unix_ms, int worker);

#endif
