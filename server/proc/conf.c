/* conf.c: the configuration: a table of every setting (default, range, unit)
 * and a small INI parser.
 *
 * Why our own parser rather than libinih: every error must carry the file and
 * line *and* the setting's accepted range, unknown or repeated settings must be
 * refused (inih hands us key/value pairs with no way to tell a repeat from a
 * reopened section without our own bookkeeping anyway), it adds no runtime
 * dependency, and a ~300-line parser over a memory buffer is easy to fuzz
 * (tests/fuzz/fuzz_conf.c). */
#include "config.h"

#include "proc/conf.h"
#include "proc/conf_int.h"
#include "shm/broker.h"
#include "http/http_parser.h"
#include "http/proxy.h"
#include "proc/log.h"
#include "runtime/scheduler.h"

#include <arpa/inet.h>
#include <libpq-fe.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef TK_RUNSTATEDIR
#define TK_RUNSTATEDIR "/run"
#endif

/* How a setting's text is read and where it is stored. */
typedef enum {
    T_INT,    /* int, plain integer */
    T_UINT,   /* unsigned */
    T_MS,     /* int milliseconds; text needs a unit: 500ms, 10s, 5m, 1h */
    T_ULL_MS, /* unsigned long long milliseconds */
    T_SEC,    /* int seconds; text needs a unit, whole seconds */
    T_SIZE,   /* size_t bytes; 8192, 8k, 1m, 1g */
    T_BOOL,   /* int 0/1: on/off, yes/no, true/false, 1/0 */
    T_STR,    /* char[] of any content */
    T_NAME,   /* char[] of [A-Za-z0-9._-], non-empty */
    T_ADDR,   /* char[] holding a listen address, "" allowed (= off) */
    T_LISTEN, /* the server.listen list */
    T_LEVEL,  /* char[] log level name */
    T_FORMAT, /* char[] access log format name */
    T_REPL,   /* db.replica: repeatable, each one appended to db_replica[] */
    T_CHOICE, /* char[] one of the words in the note, ", "-separated */
    T_SENTNL, /* one redis.sentinel HOST:PORT, appended (repeatable) */
    T_CIDRS,  /* char[] holding a list of ADDR[/BITS] */
} kind_t;

typedef struct {
    const char *section;
    const char *key;
    kind_t kind;
    size_t off;
    size_t size; /* sizeof the field (strings: the buffer) */
    long long min, max;
    const char *note; /* appended to the range, e.g. "0 = online cores" */
} setting_t;

#define F(field) offsetof(tk_conf_t, field), sizeof(((tk_conf_t *)0)->field)
#define KIB      1024LL
#define MIB      (1024LL * 1024LL)
#define GIB      (1024LL * 1024LL * 1024LL)
#define HOUR_MS  3600000LL
#define DAY_S    86400LL

static const setting_t settings[] = {
    {"server", "name", T_NAME, F(name), 1, 63, "letters, digits, '.', '_', '-'"},
    {"server", "listen", T_LISTEN, F(listen), 1, TK_CONF_MAX_LISTEN, "addresses"},
    {"server", "workers", T_INT, F(workers), 0, TK_BROKER_MAX_WORKERS, "0 = one per online core"},
    {"server", "backlog", T_INT, F(backlog), 1, 65535, NULL},
    {"server", "user", T_STR, F(user), 0, 0, NULL},
    {"server", "pid_file", T_STR, F(pid_file), 0, 0, NULL},
    {"server", "max_connections", T_INT, F(max_connections), 1, 1000000, NULL},
    {"server", "shutdown_timeout", T_MS, F(shutdown_timeout_ms), 0, HOUR_MS, NULL},
    {"server", "drain_delay", T_MS, F(drain_delay_ms), 0, HOUR_MS, "0 = none"},
    {"server", "trusted_proxies", T_CIDRS, F(trusted_proxies), 0, 0, NULL},

    {"runtime", "stack_size", T_SIZE, F(stack_size), TK_SCHED_STACK_MIN, TK_SCHED_STACK_MAX, NULL},
    {"runtime", "max_threads", T_UINT, F(max_threads), 0, TK_SCHED_THREADS_MAX, "0 = unlimited"},
    {"runtime", "long_run", T_ULL_MS, F(long_run_ms), TK_SCHED_LONG_RUN_MIN_NS / 1000000,
     TK_SCHED_LONG_RUN_MAX_NS / 1000000, NULL},
    {"runtime", "stack_paint", T_BOOL, F(stack_paint), 0, 1, NULL},

    {"limits", "max_request_line", T_SIZE, F(max_request_line), 256, MIB, NULL},
    {"limits", "max_header_size", T_SIZE, F(max_header_size), KIB, MIB, NULL},
    /* the parser keeps at most TK_HTTP_MAX_HEADERS fields per request */
    {"limits", "max_headers", T_INT, F(max_headers), 1, TK_HTTP_MAX_HEADERS, NULL},
    /* 0 would read as "the default" (1m) in the HTTP engine: not accepted */
    {"limits", "max_body_size", T_SIZE, F(max_body_size), 1, GIB, NULL},
    {"limits", "max_requests_per_conn", T_INT, F(max_requests_per_conn), 0, 100000000,
     "0 = unlimited"},

    {"timeouts", "header", T_MS, F(header_timeout_ms), 10, HOUR_MS, NULL},
    {"timeouts", "body", T_MS, F(body_timeout_ms), 10, HOUR_MS, NULL},
    {"timeouts", "write", T_MS, F(write_timeout_ms), 10, HOUR_MS, NULL},
    {"timeouts", "keepalive", T_MS, F(keepalive_timeout_ms), 0, HOUR_MS, "0 = no keep-alive"},

    {"http", "gzip", T_BOOL, F(gzip), 0, 1, NULL},
    {"http", "gzip_min_size", T_SIZE, F(gzip_min_size), 0, GIB, NULL},
    {"http", "gzip_level", T_INT, F(gzip_level), 1, 9, NULL},

    /* db.conninfo is the older name of db.primary: the same field (see setting_index). */
    {"db", "primary", T_STR, F(db_conninfo), 0, 0, NULL},
    {"db", "conninfo", T_STR, F(db_conninfo), 0, 0, NULL},
    {"db", "max_open", T_INT, F(db_max_open), 1, TK_BROKER_MAX_SLOTS, NULL},
    {"db", "max_idle", T_INT, F(db_max_idle), 0, TK_BROKER_MAX_SLOTS, "at most db.max_open"},
    {"db", "max_lifetime", T_MS, F(db_max_lifetime_ms), 0, 24 * HOUR_MS, "0 = unlimited"},
    {"db", "max_idle_time", T_MS, F(db_max_idle_time_ms), 0, 24 * HOUR_MS, "0 = unlimited"},
    {"db", "acquire_timeout", T_MS, F(db_acquire_timeout_ms), 1, 600000, NULL},
    {"db", "query_timeout", T_MS, F(db_query_timeout_ms), 1, 600000, NULL},
    {"db", "replica", T_REPL, F(db_replica), 0, TK_CONF_MAX_REPLICAS, "repeatable"},
    {"db", "replica_max_lag", T_MS, F(db_replica_max_lag_ms), 1, 600000, NULL},
    {"db", "replica_max_open", T_INT, F(db_replica_max_open), 0, TK_BROKER_MAX_SLOTS,
     "0 = db.max_open"},
    {"db", "read_from", T_CHOICE, F(db_read_from), 0, 0, "replicas, primary"},
    {"db", "statements", T_CHOICE, F(db_statements), 0, 0, "prepared, unnamed"},

    {"redis", "addr", T_STR, F(redis_addr), 0, 0, NULL},
    {"redis", "password", T_STR, F(redis_password), 0, 0, NULL},
    {"redis", "db", T_INT, F(redis_db), 0, 255, NULL},
    {"redis", "timeout", T_MS, F(redis_timeout_ms), 1, 60000, NULL},
    {"redis", "sentinel", T_SENTNL, F(redis_sentinels), 1, TK_CONF_MAX_SENTINELS, NULL},
    {"redis", "master_name", T_NAME, F(redis_master_name), 1, 63, "letters, digits, '.', '_', '-'"},
    {"redis", "read_from", T_CHOICE, F(redis_read_from), 0, 0, "master, replicas"},
    {"redis", "sentinel_password", T_STR, F(redis_sentinel_password), 0, 0, NULL},

    {"cache", "ttl", T_SEC, F(cache_ttl_s), 1, 30 * DAY_S, NULL},
    {"cache", "negative_ttl", T_SEC, F(cache_negative_ttl_s), 0, DAY_S, "0 = off"},

    {"admin", "listen", T_ADDR, F(admin_listen), 0, 0, "\"\" = off"},
    {"admin", "token", T_STR, F(admin_token), 0, 0, NULL},
    {"admin", "debug_endpoints", T_BOOL, F(admin_debug_endpoints), 0, 1, NULL},

    {"log", "level", T_LEVEL, F(log_level), 0, 0, NULL},
    {"log", "error_log", T_STR, F(error_log), 0, 0, NULL},
    {"log", "access_log", T_STR, F(access_log), 0, 0, NULL},
    {"log", "access_log_format", T_FORMAT, F(access_log_format), 0, 0, NULL},
};
#define NSETTINGS (sizeof(settings) / sizeof(settings[0]))
_Static_assert(NSETTINGS <= TK_CONF_MAX_SETTINGS, "raise TK_CONF_MAX_SETTINGS");

static const char *const sections[] = {"server", "runtime", "limits", "timeouts", "http",
                                       "db",     "redis",   "cache",  "admin",    "log"};
#define NSECTIONS (sizeof(sections) / sizeof(sections[0]))

void tk_conf_defaults(tk_conf_t *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->name, sizeof(c->name), "tenk");
    snprintf(c->listen[0], sizeof(c->listen[0]), "0.0.0.0:8080");
    c->nlisten = 1;
    c->workers = 0;
    c->backlog = 4096;
    c->max_connections = 10000;
    c->shutdown_timeout_ms = 30000;

    c->stack_size = 64 * 1024;
    c->max_threads = 0;
    c->long_run_ms = 50;

    c->max_request_line = 8192;
    c->max_header_size = 8192;
    c->max_headers = 100;
    c->max_body_size = 1024 * 1024;
    c->max_requests_per_conn = 10000;

    c->header_timeout_ms = 10000;
    c->body_timeout_ms = 10000;
    c->write_timeout_ms = 10000;
    c->keepalive_timeout_ms = 60000;

    c->gzip = 1;
    c->gzip_min_size = 1024;
    c->gzip_level = 1;

    c->db_max_open = 25;
    c->db_replica_max_lag_ms = 1000;
    snprintf(c->db_read_from, sizeof(c->db_read_from), "replicas");
    c->db_max_idle = 25;
    c->db_max_lifetime_ms = 300000;
    c->db_max_idle_time_ms = 60000;
    c->db_acquire_timeout_ms = 1000;
    c->db_query_timeout_ms = 5000;
    snprintf(c->db_statements, sizeof(c->db_statements), "prepared");

    c->redis_db = 0;
    c->redis_timeout_ms = 50;
    snprintf(c->redis_master_name, sizeof(c->redis_master_name), "tenk");
    snprintf(c->redis_read_from, sizeof(c->redis_read_from), "master");

    c->cache_ttl_s = 300;
    c->cache_negative_ttl_s = 10;

    snprintf(c->admin_listen, sizeof(c->admin_listen), "127.0.0.1:6060");
    snprintf(c->log_level, sizeof(c->log_level), "notice");
    snprintf(c->access_log_format, sizeof(c->access_log_format), "combined");
}

/* Write "(accepted range ...)" for a setting into buf. */
static void describe_range(const setting_t *st, char *buf, size_t len)
{
    const char *note = st->note;
    switch (st->kind) {
    case T_INT:
    case T_UINT:
        snprintf(buf, len, "accepted range %lld..%lld%s%s", st->min, st->max, note ? ", " : "",
                 note ? note : "");
        break;
    case T_MS:
    case T_ULL_MS: {
        char a[32], b[32];
        long long v[2] = {st->min, st->max};
        char *o[2] = {a, b};
        for (int i = 0; i < 2; i++) {
            if (v[i] != 0 && v[i] % 3600000 == 0)
                snprintf(o[i], 32, "%lldh", v[i] / 3600000);
            else if (v[i] != 0 && v[i] % 1000 == 0)
                snprintf(o[i], 32, "%llds", v[i] / 1000);
            else
                snprintf(o[i], 32, "%lldms", v[i]);
        }
        snprintf(buf, len, "accepted range %s..%s%s%s", a, b, note ? ", " : "", note ? note : "");
        break;
    }
    case T_SEC:
        snprintf(buf, len, "accepted range %llds..%llds%s%s", st->min, st->max, note ? ", " : "",
                 note ? note : "");
        break;
    case T_SIZE: {
        char a[32], b[32];
        long long v[2] = {st->min, st->max};
        char *o[2] = {a, b};
        for (int i = 0; i < 2; i++) {
            if (v[i] != 0 && v[i] % GIB == 0)
                snprintf(o[i], 32, "%lldg", v[i] / GIB);
            else if (v[i] != 0 && v[i] % MIB == 0)
                snprintf(o[i], 32, "%lldm", v[i] / MIB);
            else if (v[i] != 0 && v[i] % KIB == 0)
                snprintf(o[i], 32, "%lldk", v[i] / KIB);
            else
                snprintf(o[i], 32, "%lld", v[i]);
        }
        snprintf(buf, len, "accepted range %s..%s bytes", a, b);
        break;
    }
    case T_BOOL:
        snprintf(buf, len, "accepted: on, off, yes, no, true, false, 1, 0");
        break;
    case T_NAME:
        snprintf(buf, len, "1..%lld characters: %s", st->max, note);
        break;
    case T_LISTEN:
        snprintf(buf, len, "1..%d of ADDR:PORT or [IPV6]:PORT", TK_CONF_MAX_LISTEN);
        break;
    case T_ADDR:
        snprintf(buf, len, "ADDR:PORT or [IPV6]:PORT, \"\" = off");
        break;
    case T_LEVEL:
        snprintf(buf, len, "accepted: error, warn, notice, info, debug");
        break;
    case T_FORMAT:
        snprintf(buf, len, "accepted: combined, json");
        break;
    case T_CHOICE:
        snprintf(buf, len, "accepted: %s", note);
        break;
    case T_SENTNL:
        snprintf(buf, len, "HOST:PORT, one per line, at most %d", TK_CONF_MAX_SENTINELS);
        break;
    case T_STR:
        snprintf(buf, len, "at most %zu bytes", st->size - 1);
        break;
    case T_REPL:
        snprintf(buf, len, "a libpq connection string, at most %d lines", TK_CONF_MAX_REPLICAS);
        break;
    case T_CIDRS:
        snprintf(buf, len, "ADDR[/BITS], comma-separated, at most %d", TK_PROXY_MAX_CIDRS);
        break;
    }
}

/* Whether value is one of the ", "-separated words of choices. */
static int choice_ok(const char *choices, const char *value)
{
    size_t n = strlen(value);
    for (const char *p = choices; n > 0 && *p;) {
        size_t w = strcspn(p, ",");
        if (w == n && strncmp(p, value, n) == 0)
            return 1;
        p += w;
        p += strspn(p, ", ");
    }
    return 0;
}

/* Parse value into c for setting st. On error writes "section.key: reason
 * (range)" to err. */
static int apply(tk_conf_t *c, const setting_t *st, const char *value, char *err, size_t errlen)
{
    char *field = (char *)c + st->off;
    const char *why = NULL;
    char detail[160] = "";
    long long v = 0;

    switch (st->kind) {
    case T_INT:
    case T_UINT:
        if (*value == '\0')
            why = "empty value";
        else if (tk_conf_parse_int(value, &v, &why) == 0 && (v < st->min || v > st->max))
            why = "out of range";
        if (why == NULL) {
            if (st->kind == T_INT)
                *(int *)field = (int)v;
            else
                *(unsigned *)field = (unsigned)v;
        }
        break;
    case T_MS:
    case T_ULL_MS:
    case T_SEC:
        if (*value == '\0')
            why = "empty value";
        else if (tk_conf_parse_duration(value, st->kind == T_SEC ? 1000 : 1, &v, &why) == 0 &&
                 (v < st->min || v > st->max))
            why = "out of range";
        if (why == NULL) {
            if (st->kind == T_ULL_MS)
                *(unsigned long long *)field = (unsigned long long)v;
            else
                *(int *)field = (int)v;
        }
        break;
    case T_SIZE:
        if (*value == '\0')
            why = "empty value";
        else if (tk_conf_parse_size(value, &v, &why) == 0 && (v < st->min || v > st->max))
            why = "out of range";
        if (why == NULL)
            *(size_t *)field = (size_t)v;
        break;
    case T_BOOL: {
        int b;
        if (tk_conf_parse_bool(value, &b) != 0)
            why = "not a boolean";
        else
            *(int *)field = b;
        break;
    }
    case T_NAME: {
        size_t n = strlen(value);
        if (n < (size_t)st->min || n > (size_t)st->max)
            why = n == 0 ? "empty value" : "too long";
        for (size_t i = 0; why == NULL && i < n; i++) {
            unsigned char ch = (unsigned char)value[i];
            if (!isalnum(ch) && ch != '.' && ch != '_' && ch != '-')
                why = "invalid character";
        }
        if (why == NULL && value[0] == '.')
            why = "must not start with '.'";
        if (why == NULL)
            memcpy(field, value, n + 1);
        break;
    }
    case T_LISTEN: {
        /* A comma/space separated list that replaces the current one. */
        char tmp[TK_CONF_MAX_LISTEN][128];
        int n = 0;
        memset(tmp, 0, sizeof(tmp)); /* the whole array is copied: no stack bytes */
        const char *p = value;
        while (why == NULL) {
            while (*p == ',' || *p == ' ' || *p == '\t')
                p++;
            if (*p == '\0')
                break;
            size_t len = strcspn(p, ", \t");
            if (n == TK_CONF_MAX_LISTEN) {
                why = "too many addresses";
                break;
            }
            if (len >= sizeof(tmp[0])) {
                why = "address too long";
                break;
            }
            memcpy(tmp[n], p, len);
            tmp[n][len] = '\0';
            struct sockaddr_storage ss;
            socklen_t sl;
            if (tk_conf_parse_addr(tmp[n], &ss, &sl, detail, sizeof(detail)) != 0) {
                why = detail;
                break;
            }
            for (int i = 0; i < n && why == NULL; i++)
                if (strcmp(tmp[i], tmp[n]) == 0)
                    why = "address listed twice";
            n++;
            p += len;
        }
        if (why == NULL && n == 0)
            why = "empty value";
        if (why == NULL) {
            memcpy(c->listen, tmp, sizeof(tmp));
            c->nlisten = n;
        }
        break;
    }
    case T_REPL: {
        size_t n = strlen(value);
        if (c->db_nreplicas >= TK_CONF_MAX_REPLICAS)
            why = "too many replicas";
        else if (n == 0)
            why = "empty value";
        else if (n >= sizeof(c->db_replica[0]))
            why = "too long";
        else {
            memcpy(c->db_replica[c->db_nreplicas], value, n + 1);
            c->db_replica_line[c->db_nreplicas++] = -1; /* the file reader sets the line */
        }
        break;
    }
    case T_SENTNL: {
        const char *colon = strrchr(value, ':');
        char *end;
        long port = colon ? strtol(colon + 1, &end, 10) : 0;
        if (*value == '\0')
            why = "empty value";
        else if (colon == NULL || colon == value || colon[1] == '\0' || *end || port < 1 ||
                 port > 65535)
            why = "expected HOST:PORT";
        else if (strlen(value) >= sizeof(c->redis_sentinels[0]))
            why = "too long";
        else if (c->redis_nsentinels >= TK_CONF_MAX_SENTINELS)
            why = "too many Sentinels";
        for (int i = 0; why == NULL && i < c->redis_nsentinels; i++)
            if (strcmp(c->redis_sentinels[i], value) == 0)
                why = "Sentinel listed twice";
        if (why == NULL)
            snprintf(c->redis_sentinels[c->redis_nsentinels++], sizeof(c->redis_sentinels[0]), "%s",
                     value);
        break;
    }
    case T_ADDR:
    case T_STR:
    case T_LEVEL:
    case T_FORMAT:
    case T_CHOICE:
    case T_CIDRS: {
        size_t n = strlen(value);
        if (n >= st->size) {
            why = "too long";
        } else if (st->kind == T_ADDR && n > 0) {
            struct sockaddr_storage ss;
            socklen_t sl;
            if (tk_conf_parse_addr(value, &ss, &sl, detail, sizeof(detail)) != 0)
                why = detail;
        } else if (st->kind == T_LEVEL) {
            tk_log_level_t lv;
            if (tk_log_level_parse(value, &lv) != 0 || strcasecmp(value, "emerg") == 0 ||
                strcasecmp(value, "alert") == 0 || strcasecmp(value, "crit") == 0)
                why = "unknown log level";
        } else if (st->kind == T_CIDRS) {
            tk_proxy_cidrs_t t;
            if (tk_proxy_cidrs_parse(value, &t, detail, sizeof(detail)) != 0)
                why = detail;
        } else if (st->kind == T_FORMAT) {
            if (strcmp(value, "combined") != 0 && strcmp(value, "json") != 0)
                why = "unknown format";
        } else if (st->kind == T_CHOICE) {
            if (!choice_ok(st->note, value))
                why = "not one of the choices";
        }
        if (why == NULL)
            memcpy(field, value, n + 1);
        break;
    }
    }
    if (why == NULL)
        return 0;
    char range[160];
    describe_range(st, range, sizeof(range));
    snprintf(err, errlen, "%s.%s: %s (%s)", st->section, st->key, why, range);
    return -1;
}

static const setting_t *find_setting(const char *section, const char *key)
{
    for (size_t i = 0; i < NSETTINGS; i++)
        if (strcmp(settings[i].section, section) == 0 && strcmp(settings[i].key, key) == 0)
            return &settings[i];
    return NULL;
}

/* Index of st's first entry for the same field: an alias (db.conninfo) shares
 * its setting's src_line and "set twice" bookkeeping. */
static size_t setting_index(const setting_t *st)
{
    for (size_t i = 0; i < NSETTINGS; i++)
        if (settings[i].off == st->off)
            return i;
    return (size_t)(st - settings);
}

int tk_conf_set(tk_conf_t *c, const char *section, const char *key, const char *value, char *err,
                size_t errlen)
{
    const setting_t *st = find_setting(section, key);
    if (st == NULL) {
        snprintf(err, errlen, "%s.%s: unknown setting", section, key);
        return -1;
    }
    /* The first --redis-sentinel replaces the file's list, the next ones add to it. */
    if (st->kind == T_SENTNL && c->src_line[setting_index(st)] != -1)
        c->redis_nsentinels = 0;
    if (apply(c, st, value, err, errlen) != 0)
        return -1;
    c->src_line[setting_index(st)] = -1;
    return 0;
}

/* --- the INI reader --------------------------------------------------------------- */

typedef struct {
    const char *name;
    unsigned line;
    char *err;
    size_t errlen;
} reader_t;

static int fail(const reader_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(const reader_t *r, const char *fmt, ...)
{
    int n = snprintf(r->err, r->errlen, "%s:%u: ", r->name, r->line);
    if (n >= 0 && (size_t)n < r->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->err + n, r->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int is_space(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* Copy the value part of a line [p, end) into out (size outlen), handling a
 * double-quoted value ("..." with \" and \\ escapes) or a bare value ending at
 * an inline comment (whitespace then '#' or ';'). */
static int read_value(const reader_t *r, const char *p, const char *end, char *out, size_t outlen,
                      const char *what)
{
    size_t n = 0;
    while (p < end && is_space(*p))
        p++;
    if (p < end && *p == '"') {
        p++;
        for (;;) {
            if (p >= end)
                return fail(r, "%s: unterminated quoted value", what);
            char ch = *p++;
            if (ch == '"')
                break;
            if (ch == '\\') {
                if (p >= end || (*p != '"' && *p != '\\'))
                    return fail(r, "%s: bad escape in quoted value (only \\\" and \\\\)", what);
                ch = *p++;
            }
            if (n + 1 >= outlen)
                return fail(r, "%s: value too long", what);
            out[n++] = ch;
        }
        while (p < end && is_space(*p))
            p++;
        if (p < end && *p != '#' && *p != ';')
            return fail(r, "%s: text after the closing quote", what);
    } else {
        const char *q = p;
        while (q < end && !((*q == '#' || *q == ';') && (q == p || is_space(q[-1]))))
            q++;
        while (q > p && is_space(q[-1]))
            q--;
        if ((size_t)(q - p) + 1 > outlen)
            return fail(r, "%s: value too long", what);
        memcpy(out, p, (size_t)(q - p));
        n = (size_t)(q - p);
    }
    out[n] = '\0';
    return 0;
}

int tk_conf_load_buffer(tk_conf_t *c, const char *name, const char *buf, size_t len, char *err,
                        size_t errlen)
{
    reader_t r = {name, 0, err, errlen};
    int seen[NSETTINGS] = {0};             /* line of each setting's first use in this file */
    const char *seen_key[NSETTINGS] = {0}; /* the name it was given there (an alias?) */
    const char *section = NULL;
    const char *p = buf, *bufend = buf + len;
    char value[1024];

    /* A UTF-8 byte-order mark, as some editors write one. */
    if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0)
        p += 3;

    while (p < bufend) {
        const char *eol = memchr(p, '\n', (size_t)(bufend - p));
        const char *end = eol ? eol : bufend;
        const char *next = eol ? eol + 1 : bufend;
        r.line++;
        if (memchr(p, '\0', (size_t)(end - p)) != NULL)
            return fail(&r, "NUL byte in line");
        if (end > p && end[-1] == '\r')
            end--;
        while (p < end && is_space(*p))
            p++;
        if (p == end || *p == '#' || *p == ';') {
            p = next;
            continue;
        }
        if (*p == '[') {
            const char *rb = memchr(p, ']', (size_t)(end - p));
            if (rb == NULL)
                return fail(&r, "unterminated section header (missing ']')");
            const char *a = p + 1, *b = rb;
            while (a < b && is_space(*a))
                a++;
            while (b > a && is_space(b[-1]))
                b--;
            const char *q = rb + 1;
            while (q < end && is_space(*q))
                q++;
            if (q < end && *q != '#' && *q != ';')
                return fail(&r, "text after section header");
            section = NULL;
            for (size_t i = 0; i < NSECTIONS; i++)
                if (strlen(sections[i]) == (size_t)(b - a) &&
                    memcmp(sections[i], a, (size_t)(b - a)) == 0)
                    section = sections[i];
            if (section == NULL)
                return fail(&r,
                            "unknown section [%.*s] (known: server, runtime, limits, timeouts, "
                            "http, db, redis, cache, admin, log)",
                            (int)(b - a > 64 ? 64 : b - a), a);
            p = next;
            continue;
        }
        const char *eq = memchr(p, '=', (size_t)(end - p));
        if (eq == NULL)
            return fail(&r, "expected 'key = value' or '[section]'");
        const char *kend = eq;
        while (kend > p && is_space(kend[-1]))
            kend--;
        if (kend == p)
            return fail(&r, "missing key before '='");
        if (section == NULL)
            return fail(&r, "%.*s: setting outside a section (add e.g. [server] above it)",
                        (int)(kend - p > 64 ? 64 : kend - p), p);
        char key[64];
        if ((size_t)(kend - p) >= sizeof(key))
            return fail(&r, "%s: unknown setting (key too long)", section);
        memcpy(key, p, (size_t)(kend - p));
        key[kend - p] = '\0';
        const setting_t *st = find_setting(section, key);
        if (st == NULL)
            return fail(&r, "%s.%s: unknown setting", section, key);
        char what[80];
        snprintf(what, sizeof(what), "%s.%s", section, key);
        if (read_value(&r, eq + 1, end, value, sizeof(value), what) != 0)
            return -1;
        size_t idx = setting_index(st);
        if (seen[idx] && strcmp(seen_key[idx], st->key) != 0)
            return fail(&r,
                        "%s: %s.%s is already set on line %d (the same setting under another name)",
                        what, section, seen_key[idx], seen[idx]);
        if (seen[idx] && st->kind != T_REPL &&
            st->kind != T_SENTNL) /* one line per replica, Sentinel */
            return fail(&r, "%s: set twice (first on line %d)", what, seen[idx]);
        if (!seen[idx])
            seen[idx] = (int)r.line;
        seen_key[idx] = st->key;
        char why[400];
        if (apply(c, st, value, why, sizeof(why)) != 0)
            return fail(&r, "%s", why);
        c->src_line[idx] = (int)r.line;
        if (st->kind == T_REPL)
            c->db_replica_line[c->db_nreplicas - 1] = (int)r.line;
        p = next;
    }
    snprintf(c->conf_file, sizeof(c->conf_file), "%s", name);
    return 0;
}

int tk_conf_load_file(tk_conf_t *c, const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    if (sb.st_size > 1024 * 1024) {
        snprintf(err, errlen, "%s: larger than 1 MiB", path);
        close(fd);
        return -1;
    }
    size_t size = (size_t)sb.st_size, got = 0;
    char *buf = malloc(size + 1);
    if (buf == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
        close(fd);
        return -1;
    }
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(err, errlen, "%s: read failed: %s", path, n < 0 ? strerror(errno) : "EOF");
            free(buf);
            close(fd);
            return -1;
        }
        got += (size_t)n;
    }
    close(fd);
    int rc = tk_conf_load_buffer(c, path, buf, size, err, errlen);
    free(buf);
    return rc;
}

/* --- cross-field checks -------------------------------------------------------- */

/* "FILE:LINE: " or "command line: " or "" for where setting section.key came from. */
static void where(const tk_conf_t *c, const char *section, const char *key, char *buf, size_t len)
{
    const setting_t *st = find_setting(section, key);
    int line = st ? c->src_line[setting_index(st)] : 0;
    if (line > 0)
        snprintf(buf, len, "%s:%d: ", c->conf_file, line);
    else if (line < 0)
        snprintf(buf, len, "command line: ");
    else if (c->conf_file[0])
        snprintf(buf, len, "%s: ", c->conf_file);
    else
        buf[0] = '\0';
}

static int same_addr(const char *a, const char *b)
{
    struct sockaddr_storage sa, sb;
    socklen_t la, lb;
    char e[128];
    if (tk_conf_parse_addr(a, &sa, &la, e, sizeof(e)) != 0 ||
        tk_conf_parse_addr(b, &sb, &lb, e, sizeof(e)) != 0)
        return 0;
    return la == lb && memcmp(&sa, &sb, la) == 0;
}

void tk_conf_derive(tk_conf_t *c)
{
    const setting_t *st = find_setting("db", "max_idle");
    if (c->src_line[setting_index(st)] == 0 && c->db_max_idle > c->db_max_open)
        c->db_max_idle = c->db_max_open;
}

int tk_conf_validate(const tk_conf_t *c, char *err, size_t errlen)
{
    char at[300];

    if (c->nlisten < 1) {
        where(c, "server", "listen", at, sizeof(at));
        snprintf(err, errlen, "%sserver.listen: no listen address", at);
        return -1;
    }
    for (int i = 0; i < c->nlisten; i++) {
        for (int j = 0; j < i; j++) {
            if (same_addr(c->listen[i], c->listen[j])) {
                where(c, "server", "listen", at, sizeof(at));
                snprintf(err, errlen, "%sserver.listen: '%s' and '%s' are the same address", at,
                         c->listen[j], c->listen[i]);
                return -1;
            }
        }
        if (c->admin_listen[0] && same_addr(c->admin_listen, c->listen[i])) {
            where(c, "admin", "listen", at, sizeof(at));
            snprintf(err, errlen, "%sadmin.listen: '%s' is also a server.listen address", at,
                     c->admin_listen);
            return -1;
        }
    }
    if (c->db_max_idle > c->db_max_open) {
        where(c, "db", "max_idle", at, sizeof(at));
        snprintf(err, errlen, "%sdb.max_idle: %d exceeds db.max_open (%d) (accepted range 0..%d)",
                 at, c->db_max_idle, c->db_max_open, c->db_max_open);
        return -1;
    }
    if (strcmp(c->db_read_from, "replicas") != 0 && strcmp(c->db_read_from, "primary") != 0) {
        where(c, "db", "read_from", at, sizeof(at));
        snprintf(err, errlen, "%sdb.read_from: '%s' is neither replicas nor primary", at,
                 c->db_read_from);
        return -1;
    }
    for (int i = 0; i < c->db_nreplicas; i++) {
        /* libpq's own parser (it connects to nothing): what it refuses, a worker could never
         * connect with. */
        char *perr = NULL;
        PQconninfoOption *o = PQconninfoParse(c->db_replica[i], &perr);
        if (o == NULL) {
            int line = c->db_replica_line[i];
            if (line > 0)
                snprintf(at, sizeof(at), "%s:%d: ", c->conf_file, line);
            else
                snprintf(at, sizeof(at), "command line: ");
            snprintf(err, errlen, "%sdb.replica: %s", at, perr ? perr : "out of memory");
            /* libpq's message ends in a newline */
            size_t n = strlen(err);
            while (n > 0 && (err[n - 1] == '\n' || err[n - 1] == ' '))
                err[--n] = '\0';
            PQfreemem(perr);
            return -1;
        }
        PQconninfoFree(o);
    }
    if (c->db_nreplicas > 0 && c->db_conninfo[0] == '\0') {
        where(c, "db", "replica", at, sizeof(at));
        snprintf(err, errlen, "%sdb.replica: replicas need db.primary", at);
        return -1;
    }
    if (c->user[0] && getpwnam(c->user) == NULL) {
        where(c, "server", "user", at, sizeof(at));
        snprintf(err, errlen, "%sserver.user: no such user '%s'", at, c->user);
        return -1;
    }

    /* The scheduler is the authority on its own options. */
    tk_sched_opts_t so;
    tk_sched_opts_default(&so);
    so.stack_size = c->stack_size;
    so.max_threads = c->max_threads;
    so.long_run_ns = c->long_run_ms * 1000000ULL;
    char why[256];
    if (tk_sched_opts_check(&so, why, sizeof(why)) != 0) {
        where(c, "runtime", "stack_size", at, sizeof(at));
        snprintf(err, errlen, "%s[runtime] %s", c->conf_file[0] ? at : "", why);
        return -1;
    }
    return 0;
}

int tk_conf_workers(const tk_conf_t *c)
{
    if (c->workers > 0)
        return c->workers;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    if (n > TK_BROKER_MAX_WORKERS)
        n = TK_BROKER_MAX_WORKERS;
    return (int)n;
}

void tk_conf_pid_path(const tk_conf_t *c, char *buf, size_t len)
{
    const char *rt = getenv("RUNTIME_DIRECTORY");
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    if (c->pid_file[0])
        snprintf(buf, len, "%s", c->pid_file);
    else if (rt && rt[0] == '/')
        /* systemd may pass several ':'-separated directories; take the first. */
        snprintf(buf, len, "%.*s/%s.pid", (int)strcspn(rt, ":"), rt, c->name);
    else if (geteuid() == 0)
        snprintf(buf, len, "%s/tenk/%s.pid", TK_RUNSTATEDIR, c->name);
    else
        snprintf(buf, len, "%s/tenk-%s.pid", xdg && xdg[0] == '/' ? xdg : "/tmp", c->name);
}
