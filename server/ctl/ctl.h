/* ctl.h: private to tenkctl (server/ctl/): its options, exit codes, small
 * helpers, formatters (ctl_fmt.c) and commands (ctl_cmds.c, ctl_top.c). */
#ifndef TK_CTL_H
#define TK_CTL_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "shm/broker.h"
#include "shm/metrics.h"
#include "shm/segment.h"
#include "shm/view.h"

#define CTL_DEFAULT_NAME "tenk"

/* Exit codes: 0 success, 1 failure (no server, refused, timed out), 2 usage. */
enum { CTL_OK = 0, CTL_FAIL = 1, CTL_USAGE = 2 };

/* The command line (tenkctl.c). */
typedef struct {
    const char *name;
    int json;
    int color;
    int graceful;
    int once;
    double timeout_s; /* reload/stop; <0 = default */
} tk_ctl_opt_t;
extern tk_ctl_opt_t tk_ctl_opt;

/* --- tenkctl.c: small helpers --- */

/* Print "out of memory" and exit with CTL_FAIL. */
void tk_ctl_die_oom(void) __attribute__((noreturn));
void *tk_ctl_xcalloc(size_t n, size_t sz);
uint64_t tk_ctl_clock_ns(clockid_t id);
/* tk_view_load(), or exit on out of memory. */
void tk_ctl_view_load(tk_view_t *v, tk_shm_t *shm);

/* --- ctl_fmt.c: formatters --- */

/* code when colours are on, "" when off. */
const char *tk_ctl_color(const char *code);
#define BOLD  tk_ctl_color("\033[1m")
#define DIM   tk_ctl_color("\033[2m")
#define RED   tk_ctl_color("\033[31m")
#define GREEN tk_ctl_color("\033[32m")
#define YELL  tk_ctl_color("\033[33m")
#define RST   tk_ctl_color("\033[0m")
/* The colour of a worker state (TK_SHM_W_*). */
const char *tk_ctl_state_color(uint32_t s);
/* Each writes into buf (len bytes) and returns it. */
const char *tk_ctl_fmt_us(double us, char *buf, size_t len);
const char *tk_ctl_fmt_dur(double s, char *buf, size_t len);
const char *tk_ctl_fmt_bytes(double b, char *buf, size_t len);
const char *tk_ctl_fmt_rate(double r, char *buf, size_t len);
const char *tk_ctl_fmt_status(int st, char *buf, size_t len);
double tk_ctl_pct(double part, double whole);
uint64_t tk_ctl_errors_total(const tk_metrics_sh_t *m);
uint64_t tk_ctl_gt_total(const tk_metrics_sh_t *m);
/* Print o to stdout and free it. */
void tk_ctl_json_print(cJSON *o);
void tk_ctl_json_head(cJSON *o, const tk_view_t *v);
void tk_ctl_json_worker_head(cJSON *o, const tk_view_worker_t *w);

/* --- ctl_cmds.c, ctl_top.c: the commands; each returns an exit code --- */

int tk_ctl_db_configured(const tk_broker_sh_t *b);
int tk_ctl_cmd_status(tk_view_t *v);
int tk_ctl_cmd_stats(tk_view_t *v);
int tk_ctl_cmd_threads(tk_view_t *v);
int tk_ctl_cmd_db(tk_view_t *v);
int tk_ctl_cmd_top(tk_shm_t *shm);
int tk_ctl_cmd_reload(tk_shm_t *shm);
int tk_ctl_cmd_stop(tk_shm_t *shm);

#endif
