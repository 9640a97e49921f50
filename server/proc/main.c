/* main.c: tenkd's entry point: command line, configuration, -t, daemonizing,
 * then the master. */
#include "config.h"

#include "proc/conf.h"
#include "proc/log.h"
#include "proc/master.h"
#include "proc/proctitle.h"
#include "proc/resolve.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A command-line setting, applied over the file on every (re)load. */
typedef struct {
    const char *section, *key;
    char *value;
} override_t;

typedef struct {
    const char *conf_path; /* -c, NULL = built-in defaults only */
    override_t ov[64];
    int nov;
    char listen[TK_CONF_MAX_LISTEN * 130]; /* --listen values joined by ',' */
    int verbose;
    int foreground;
} cmdline_t;

static void usage(FILE *f)
{
    fprintf(f, "usage: tenkd [-c FILE] [-t] [--foreground] [--name NAME] [--listen ADDR:PORT]...\n"
               "             [--workers N] [--admin ADDR:PORT] [--db CONNINFO] [--redis ADDR]\n"
               "             [--db-replica CONNINFO]... [--user USER] [-v] [--help] [--version]\n"
               "\n"
               "  -c, --config FILE     read FILE (default: built-in settings only)\n"
               "  -t, --test            check the configuration, print \"configuration OK\", exit\n"
               "  -f, --foreground      do not daemonize (use under systemd and in tests)\n"
               "  -n, --name NAME       instance name: pid file, shared memory, log prefix\n"
               "  -l, --listen ADDR:PORT  listen address (repeatable; replaces server.listen)\n"
               "  -w, --workers N       worker processes (0 = one per core)\n"
               "      --admin ADDR:PORT admin listener (\"\" = off)\n"
               "      --db CONNINFO     PostgreSQL connection string (db.primary)\n"
               "      --db-replica CONNINFO  a read replica (db.replica; repeatable)\n"
               "      --redis ADDR      Redis host:port\n"
               "      --redis-sentinel HOST:PORT\n"
               "                        a Redis Sentinel (repeatable; then --redis is not used)\n"
               "  -u, --user USER       run workers as USER (when started as root)\n"
               "  -v, --verbose         log at info level (twice: debug)\n"
               "  -h, --help            this text\n"
               "  -V, --version         print the version\n"
               "\n"
               "Signals to the master: HUP reload, TERM/INT fast stop, QUIT graceful stop,\n"
               "USR1 reopen logs. See tenkd(8) and tenk.conf(5).\n");
}

static int add_override(cmdline_t *cl, const char *section, const char *key, const char *value)
{
    if (cl->nov == (int)(sizeof(cl->ov) / sizeof(cl->ov[0]))) {
        fprintf(stderr, "tenkd: too many options\n");
        return -1;
    }
    cl->ov[cl->nov].section = section;
    cl->ov[cl->nov].key = key;
    cl->ov[cl->nov].value = strdup(value);
    if (cl->ov[cl->nov].value == NULL)
        return -1;
    cl->nov++;
    return 0;
}

/* tk_master_load_fn: defaults, then the file, then the flags, then checks. */
static int load_conf(tk_conf_t *c, char *err, size_t errlen, void *arg)
{
    const cmdline_t *cl = arg;
    tk_conf_defaults(c);
    if (cl->conf_path != NULL && tk_conf_load_file(c, cl->conf_path, err, errlen) != 0)
        return -1;
    for (int i = 0; i < cl->nov; i++) {
        char why[512];
        if (tk_conf_set(c, cl->ov[i].section, cl->ov[i].key, cl->ov[i].value, why, sizeof(why)) !=
            0) {
            snprintf(err, errlen, "command line: %s", why);
            return -1;
        }
    }
    if (cl->verbose > 0)
        snprintf(c->log_level, sizeof(c->log_level), "%s", cl->verbose > 1 ? "debug" : "info");
    c->foreground = cl->foreground;
    tk_conf_derive(c);
    if (tk_conf_validate(c, err, errlen) != 0)
        return -1;
    /* here, in the master (or tenkd -t): the workers get addresses only */
    return tk_resolve_conf(c, err, errlen);
}

/* Fork into the background; the parent exits once the master reports ready
 * (one byte on the pipe) or fails (EOF), so `tenkd` returns a true status. */
static int daemonize(int *ready_fd)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        perror("tenkd: pipe2");
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("tenkd: fork");
        return -1;
    }
    if (pid > 0) {
        close(p[1]);
        char b;
        ssize_t n;
        do
            n = read(p[0], &b, 1);
        while (n < 0 && errno == EINTR);
        _exit(n == 1 ? 0 : 1);
    }
    close(p[0]);
    if (setsid() < 0)
        perror("tenkd: setsid");
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        close(null);
    }
    if (chdir("/") != 0)
        perror("tenkd: chdir");
    *ready_fd = p[1];
    return 0;
}

int main(int argc, char **argv)
{
    static cmdline_t cl;
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"test", no_argument, NULL, 't'},
        {"foreground", no_argument, NULL, 'f'},
        {"name", required_argument, NULL, 'n'},
        {"listen", required_argument, NULL, 'l'},
        {"workers", required_argument, NULL, 'w'},
        {"admin", required_argument, NULL, 'A'},
        {"db", required_argument, NULL, 'D'},
        {"redis", required_argument, NULL, 'R'},
        {"user", required_argument, NULL, 'u'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {"db-replica", required_argument, NULL, 'P'},
        {"redis-sentinel", required_argument, NULL, 'S'},
        {NULL, 0, NULL, 0},
    };
    int test = 0, opt;

    tk_proctitle_init(argc, argv);
    while ((opt = getopt_long(argc, argv, "c:tfn:l:w:u:vhV", opts, NULL)) != -1) {
        int r = 0;
        switch (opt) {
        case 'c':
            cl.conf_path = optarg;
            break;
        case 't':
            test = 1;
            break;
        case 'f':
            cl.foreground = 1;
            break;
        case 'n':
            r = add_override(&cl, "server", "name", optarg);
            break;
        case 'l': {
            size_t n = strlen(cl.listen);
            if (n + strlen(optarg) + 2 > sizeof(cl.listen)) {
                fprintf(stderr, "tenkd: too many --listen addresses\n");
                return 1;
            }
            snprintf(cl.listen + n, sizeof(cl.listen) - n, "%s%s", n ? "," : "", optarg);
            break;
        }
        case 'w':
            r = add_override(&cl, "server", "workers", optarg);
            break;
        case 'A':
            r = add_override(&cl, "admin", "listen", optarg);
            break;
        case 'D':
            r = add_override(&cl, "db", "primary", optarg);
            break;
        case 'P':
            r = add_override(&cl, "db", "replica", optarg);
            break;
        case 'R':
            r = add_override(&cl, "redis", "addr", optarg);
            break;
        case 'S': /* repeatable: one per Sentinel */
            r = add_override(&cl, "redis", "sentinel", optarg);
            break;
        case 'u':
            r = add_override(&cl, "server", "user", optarg);
            break;
        case 'v':
            cl.verbose++;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("tenkd %s\n", PACKAGE_VERSION);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
        if (r != 0)
            return 1;
    }
    if (optind < argc) {
        fprintf(stderr, "tenkd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 1;
    }
    /* The master re-reads the file on SIGHUP, after chdir("/") when daemonized. */
    static char abs_path[4096];
    if (cl.conf_path != NULL && realpath(cl.conf_path, abs_path) != NULL)
        cl.conf_path = abs_path;
    if (cl.listen[0] && add_override(&cl, "server", "listen", cl.listen) != 0)
        return 1;

    static tk_conf_t conf;
    char err[768];
    if (load_conf(&conf, err, sizeof(err), &cl) != 0) {
        fprintf(stderr, "tenkd: %s\n", err);
        return 1;
    }
    if (conf.redis_addr[0] && conf.redis_nsentinels > 0)
        printf("note: redis.addr (%s) is not used: with redis.sentinel set, the Sentinels name the "
               "master\n",
               conf.redis_addr);
    if (test) {
        printf("configuration OK\n");
        return 0;
    }

    tk_log_level_t level = TK_LOG_NOTICE;
    tk_log_level_parse(conf.log_level, &level);
    tk_log_init(conf.name, level);
    if (tk_log_open(conf.error_log) != 0) {
        fprintf(stderr, "tenkd: cannot open error log %s: %s\n", conf.error_log, strerror(errno));
        return 1;
    }

    int ready_fd = -1;
    if (!cl.foreground && daemonize(&ready_fd) != 0)
        return 1;
    int rc = tk_master_run(&conf, load_conf, &cl, ready_fd);
    for (int i = 0; i < cl.nov; i++)
        free(cl.ov[i].value);
    return rc;
}
