/* tenkctl.c: inspect and control a running tenkd through its shared-memory segment.
 *
 * Everything is read from /dev/shm/tenk-NAME (read-only mapping, lock-free
 * snapshots), so it works on a server too busy to answer HTTP. This file holds
 * main (options, the command table) and the segment attach with its ownership
 * and master checks; the commands and their --json fields are in ctl_cmds.c,
 * `top` in ctl_top.c, the formatters in ctl_fmt.c. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctl/ctl.h"
#include "shm/abi.h"
#include "shm/segment.h"
#include "shm/view.h"

tk_ctl_opt_t tk_ctl_opt = {CTL_DEFAULT_NAME, 0, -1, 0, 0, -1};

/* --- small helpers ------------------------------------------------------------------ */

void tk_ctl_die_oom(void)
{
    fprintf(stderr, "tenkctl: out of memory\n");
    exit(CTL_FAIL);
}

void *tk_ctl_xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n, sz);
    if (!p)
        tk_ctl_die_oom();
    return p;
}

uint64_t tk_ctl_clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* --- reading the segment --------------------------------------------------------------- */

/* Attach read-only and require a live master the segment can be trusted for
 * (tk_shm_trust: start time, owner). On failure print why, return NULL. */
static tk_shm_t *ctl_attach(void)
{
    char err[512];
    tk_shm_t *shm = tk_view_attach(tk_ctl_opt.name, 1, err, sizeof(err));
    if (shm && tk_shm_trust(shm, NULL, err, sizeof(err)) != 0) {
        tk_shm_detach(shm);
        shm = NULL;
    }
    if (!shm)
        fprintf(stderr, "tenkctl: %s\n", err);
    return shm;
}

void tk_ctl_view_load(tk_view_t *v, tk_shm_t *shm)
{
    if (tk_view_load(v, shm) != 0)
        tk_ctl_die_oom();
}

/* --- main --------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: tenkctl [-n NAME] [--color|--no-color] COMMAND [--json]\n"
            "\n"
            "Reads the shared memory of the tenkd instance NAME (default '%s'; also $TENK_NAME);\n"
            "needs no HTTP port.\n"
            "\n"
            "commands:\n"
            "  status              master pid, uptime, generation, config, workers\n"
            "  stats               requests/s (1/10/60 s), latency percentiles, errors, bytes,\n"
            "                      connections, per worker and per route\n"
            "  threads             green threads by scheduler state, per worker and in total\n"
            "  db                  database connection pool (broker) statistics\n"
            "  top [--once]        live view refreshing every second; q quits\n"
            "  reload [--timeout S]          SIGHUP; waits for the new generation or the error\n"
            "  stop [--graceful] [--timeout S]  SIGTERM (SIGQUIT with --graceful); waits for exit\n"
            "\n"
            "--json prints one JSON object. Exit status: 0 ok, 1 failure (no such server,\n"
            "permission denied, layout version mismatch, reload refused, timeout), 2 usage.\n",
            CTL_DEFAULT_NAME);
}

int main(int argc, char **argv)
{
    const char *cmd = NULL;
    const char *env = getenv("TENK_NAME");
    if (env && *env)
        tk_ctl_opt.name = env;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-n") || !strcmp(a, "--name")) {
            if (++i >= argc) {
                fprintf(stderr, "tenkctl: %s needs a name\n", a);
                return CTL_USAGE;
            }
            tk_ctl_opt.name = argv[i];
        } else if (!strncmp(a, "--name=", 7))
            tk_ctl_opt.name = a + 7;
        else if (!strcmp(a, "--json"))
            tk_ctl_opt.json = 1;
        else if (!strcmp(a, "--color"))
            tk_ctl_opt.color = 1;
        else if (!strcmp(a, "--no-color"))
            tk_ctl_opt.color = 0;
        else if (!strcmp(a, "--graceful"))
            tk_ctl_opt.graceful = 1;
        else if (!strcmp(a, "--once"))
            tk_ctl_opt.once = 1;
        else if (!strcmp(a, "--timeout") || !strncmp(a, "--timeout=", 10)) {
            const char *s = a[9] == '=' ? a + 10 : (++i < argc ? argv[i] : NULL);
            char *end;
            if (!s || (tk_ctl_opt.timeout_s = strtod(s, &end), *end || tk_ctl_opt.timeout_s < 0)) {
                fprintf(stderr, "tenkctl: --timeout needs a number of seconds\n");
                return CTL_USAGE;
            }
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help") || !strcmp(a, "help")) {
            usage(stdout);
            return CTL_OK;
        } else if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
            printf("tenkctl %s (shared-memory layout %u)\n", PACKAGE_VERSION,
                   TK_SHM_LAYOUT_VERSION);
            return CTL_OK;
        } else if (a[0] == '-') {
            fprintf(stderr, "tenkctl: unknown option %s\n", a);
            usage(stderr);
            return CTL_USAGE;
        } else if (!cmd)
            cmd = a;
        else {
            fprintf(stderr, "tenkctl: unexpected argument '%s'\n", a);
            return CTL_USAGE;
        }
    }
    if (!cmd) {
        usage(stderr);
        return CTL_USAGE;
    }
    static const char *const cmds[] = {"status", "stats", "threads", "db", "top", "reload", "stop"};
    int known = 0;
    for (unsigned i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
        known |= !strcmp(cmd, cmds[i]);
    if (!known) {
        fprintf(stderr, "tenkctl: unknown command '%s'\n", cmd);
        usage(stderr);
        return CTL_USAGE;
    }
    if (tk_ctl_opt.color < 0)
        tk_ctl_opt.color = isatty(STDOUT_FILENO) && !getenv("NO_COLOR") && !tk_ctl_opt.json;

    tk_shm_t *shm = ctl_attach();
    if (!shm)
        return CTL_FAIL;
    int rc;
    if (!strcmp(cmd, "top"))
        rc = tk_ctl_cmd_top(shm);
    else if (!strcmp(cmd, "reload"))
        rc = tk_ctl_cmd_reload(shm);
    else if (!strcmp(cmd, "stop"))
        rc = tk_ctl_cmd_stop(shm);
    else {
        tk_view_t v = {0};
        tk_ctl_view_load(&v, shm);
        if (!strcmp(cmd, "status"))
            rc = tk_ctl_cmd_status(&v);
        else if (!strcmp(cmd, "stats"))
            rc = tk_ctl_cmd_stats(&v);
        else if (!strcmp(cmd, "threads"))
            rc = tk_ctl_cmd_threads(&v);
        else
            rc = tk_ctl_cmd_db(&v);
        tk_view_free(&v);
    }
    tk_shm_detach(shm);
    return rc;
}
