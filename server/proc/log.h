/* log.h: the error log: levels, one line per write(2), worker and connection ids. */
#ifndef TK_LOG_H
#define TK_LOG_H

#include <stdarg.h>
#include <stdint.h>

typedef enum {
    TK_LOG_ERR = 3, /* syslog priorities, so journald shows them as such */
    TK_LOG_WARN = 4,
    TK_LOG_NOTICE = 5,
    TK_LOG_INFO = 6,
    TK_LOG_DEBUG = 7,
} tk_log_level_t;

/* Process-wide log settings; set once at start-up and after fork. */
void tk_log_init(const char *instance, tk_log_level_t level);
/* -1 in the master, the worker's index in a worker. */
void tk_log_set_worker(int worker_id);
/* Open (or reopen, on SIGUSR1) the error log file; NULL or "" means stderr. */
int tk_log_open(const char *path);
void tk_log_set_level(tk_log_level_t level);
tk_log_level_t tk_log_level(void);
int tk_log_level_parse(const char *s, tk_log_level_t *out);

/* conn_id 0 means "no connection". err != 0 appends ": strerror(err) (err)". */
void tk_log_write(tk_log_level_t level, uint64_t conn_id, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define TK_LOG(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) <= tk_log_level())                                                             \
            tk_log_write((level), 0, 0, __VA_ARGS__);                                              \
    } while (0)
/* For a failed call: TK_LOG_ERRNO(TK_LOG_ERR, errno, "accept4() failed") */
#define TK_LOG_ERRNO(level, err, ...)                                                              \
    do {                                                                                           \
        if ((level) <= tk_log_level())                                                             \
            tk_log_write((level), 0, (err), __VA_ARGS__);                                          \
    } while (0)
#define TK_LOG_CONN(level, conn_id, ...)                                                           \
    do {                                                                                           \
        if ((level) <= tk_log_level())                                                             \
            tk_log_write((level), (conn_id), 0, __VA_ARGS__);                                      \
    } while (0)

#endif
