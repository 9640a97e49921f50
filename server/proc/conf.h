/* conf.h: tenkd's configuration: defaults, the INI file, command-line
 * overrides and validation. The parser fills an error buffer and never logs. */
#ifndef TK_CONF_H
#define TK_CONF_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define TK_CONF_MAX_LISTEN    8
#define TK_CONF_MAX_SENTINELS 8
/* Upper bound on the number of settings (sizes the per-setting line table). */
#define TK_CONF_MAX_SETTINGS 64
#define TK_CONF_MAX_REPLICAS 4 /* db.replica lines (backends: the primary and these) */

typedef struct {
    /* [server] */
    char name[64]; /* instance name: pid file, shm name, log prefix; "tenk" */
    char listen[TK_CONF_MAX_LISTEN][128]; /* "ADDR:PORT" or "[v6]:PORT"; default "0.0.0.0:8080" */
    int nlisten;
    int workers;               /* 0 = online cores; 1..256 */
    int backlog;               /* 4096 */
    char user[64];             /* drop privileges to this user in workers; "" = none */
    char pid_file[256];        /* "" = default, see tk_conf_pid_path() */
    int max_connections;       /* per worker; 10000 */
    int shutdown_timeout_ms;   /* 30000 */
    int drain_delay_ms;        /* lame duck before a stop/reload: /health 503, all else served; 0 */
    char trusted_proxies[512]; /* CIDRs whose connections may carry a PROXY v2 header; "" */

    /* [runtime] green threads */
    size_t stack_size;              /* 65536 */
    unsigned max_threads;           /* per worker; 0 = unlimited */
    unsigned long long long_run_ms; /* 50 */
    int stack_paint;                /* measure stack use (high-water mark); 0 */

    /* [limits] */
    size_t max_request_line;   /* request target; 8192 -> 414 */
    size_t max_header_size;    /* whole header section; 8192 -> 431 */
    int max_headers;           /* 100 -> 431 */
    size_t max_body_size;      /* 1 MiB -> 413 */
    int max_requests_per_conn; /* 0 = unlimited; default 10000 */

    /* [timeouts] milliseconds */
    int header_timeout_ms;    /* 10000: whole header section */
    int body_timeout_ms;      /* 10000: whole body */
    int write_timeout_ms;     /* 10000 */
    int keepalive_timeout_ms; /* 60000 */

    /* [http] */
    int gzip;             /* 1 */
    size_t gzip_min_size; /* 1024 */
    int gzip_level;       /* 1..9, default 1 */

    /* [db] */
    char db_conninfo[512];     /* libpq connection string; "" = no database */
    int db_max_open;           /* 25 */
    int db_max_idle;           /* 25 */
    int db_max_lifetime_ms;    /* 300000 */
    int db_max_idle_time_ms;   /* 60000 */
    int db_acquire_timeout_ms; /* 1000 */
    int db_query_timeout_ms;   /* 5000 */
    /* read replicas: db.replica repeats, one line (or --db-replica) each */
    char db_replica[TK_CONF_MAX_REPLICAS][512];
    int db_replica_line[TK_CONF_MAX_REPLICAS]; /* line it came from, -1 = command line */
    int db_nreplicas;
    int db_replica_max_lag_ms; /* 1000: a replica further behind is not used */
    int db_replica_max_open;   /* 0 = db.max_open: the cap of each replica */
    char db_read_from[16];     /* "replicas" (default) or "primary" */
    char db_statements[16];    /* "prepared"; "unnamed": no named statements (PgBouncer) */

    /* [redis] */
    char redis_addr[256]; /* "host:port" or a unix socket path; "" = no cache */
    char redis_password[128];
    int redis_db;         /* 0 */
    int redis_timeout_ms; /* 50 */
    /* redis.sentinel (repeatable): with any, the master comes from the Sentinels */
    char redis_sentinels[TK_CONF_MAX_SENTINELS][128];
    int redis_nsentinels;
    char redis_master_name[64];        /* "tenk" */
    char redis_read_from[16];          /* "master" or "replicas" */
    char redis_sentinel_password[128]; /* "" = no AUTH to the Sentinels */

    /* [cache] */
    int cache_ttl_s;          /* 300 */
    int cache_negative_ttl_s; /* 10 */

    /* [admin] */
    char admin_listen[128];    /* "127.0.0.1:6060"; "" = off */
    char admin_token[128];     /* bearer token; "" = none */
    int admin_debug_endpoints; /* 0: /debug/echo, /debug/stream (for tests) answer 404 */

    /* [log] */
    char log_level[16];         /* "notice" */
    char error_log[256];        /* "" = stderr */
    char access_log[256];       /* "" = off */
    char access_log_format[16]; /* "combined" or "json" */

    /* not from the file */
    char conf_file[256]; /* the file this came from, "" if none */
    /* Set by tk_resolve_conf() in the master (server/resolve.h), so that the
     * workers never resolve a name on their loop; "" = nothing to resolve. */
    char db_hostaddr[512];    /* libpq hostaddr list for db.conninfo's host list */
    char redis_resolved[128]; /* redis.addr with its host name as an address */
    int foreground;
    /* Where each setting was last set, by table index: 0 = default, -1 = the
     * command line, else the line in conf_file. Lets tk_conf_validate() name
     * the line of a cross-field error. */
    int src_line[TK_CONF_MAX_SETTINGS];
} tk_conf_t;

/* Fill with every default. */
void tk_conf_defaults(tk_conf_t *c);
/* Read an INI file over c. On error: -1 and err = "FILE:LINE: section.key: reason". */
int tk_conf_load_file(tk_conf_t *c, const char *path, char *err, size_t errlen);
/* Same, from a memory buffer (for tests and the fuzzer); name is used in messages. */
int tk_conf_load_buffer(tk_conf_t *c, const char *name, const char *buf, size_t len, char *err,
                        size_t errlen);
/* Set one setting by section and key, from its text form (command-line flags).
 * server.listen takes a comma- or space-separated list and replaces the list. */
int tk_conf_set(tk_conf_t *c, const char *section, const char *key, const char *value, char *err,
                size_t errlen);
/* Defaults that follow other settings, once everything is loaded: db.max_idle,
 * when not set, follows db.max_open (as Go's SetMaxOpenConns lowers MaxIdleConns). */
void tk_conf_derive(tk_conf_t *c);
/* Cross-field checks once everything is loaded (also tk_sched_opts_check). */
int tk_conf_validate(const tk_conf_t *c, char *err, size_t errlen);

/* Parse "ADDR:PORT", "[V6]:PORT", "*:PORT" or "localhost:PORT" (numeric
 * addresses only: no DNS at start-up). 0, or -1 with err. */
int tk_conf_parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len, char *err,
                       size_t errlen);
/* Effective worker count: workers, or the number of online cores when 0. */
int tk_conf_workers(const tk_conf_t *c);
/* The pid file: pid_file if set; else $RUNTIME_DIRECTORY/NAME.pid (systemd's
 * RuntimeDirectory=); else TK_RUNSTATEDIR/tenk/NAME.pid as root; else
 * ${XDG_RUNTIME_DIR:-/tmp}/tenk-NAME.pid. tenkctl uses the same rule. */
void tk_conf_pid_path(const tk_conf_t *c, char *buf, size_t len);

#endif
