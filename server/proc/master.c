/* master.c: the prefork master. It binds the listen sockets (listen.c), creates shared
 * memory, forks one worker per core and then only supervises: respawns crashed
 * workers (with back-off), reloads on SIGHUP by starting a new generation
 * before draining the old one, stops fast or gracefully, and speaks sd_notify.
 * It never does request work and holds no lock a worker needs.
 *
 * Signals: handlers only set sig_atomic_t flags; every signal is blocked except
 * inside ppoll(), which atomically unblocks them while it waits (the
 * sigsuspend() pattern with a timeout for respawn, back-off, kill deadlines
 * and the watchdog). */
#include "config.h"

#include "proc/master.h"

#include "shm/broker.h"
#include "proc/resolve.h"
#include "proc/listen.h"
#include "proc/log.h"
#include "shm/metrics.h"
#include "proc/notify.h"
#include "proc/pidfile.h"
#include "proc/proctitle.h"
#include "shm/segment.h"
#include "proc/worker.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* --- state ---------------------------------------------------------------------- */

typedef enum {
    WK_FREE = 0, /* no process; slot available */
    WK_STARTING, /* forked, not yet accepting */
    WK_RUNNING,  /* accepting */
    WK_DRAINING, /* told to stop (SIGQUIT/SIGTERM); not respawned */
    WK_BACKOFF,  /* crashed; a replacement is due at respawn_at */
} wk_state_t;

typedef struct {
    pid_t pid;
    wk_state_t state;
    uint64_t gen;
    unsigned index;
    int64_t started_ms;
    int64_t respawn_at_ms; /* WK_BACKOFF */
    int64_t kill_at_ms;    /* WK_DRAINING: SIGKILL after this */
    unsigned crashes;      /* consecutive fast deaths in this slot */
} wk_t;

typedef enum { RUNNING = 0, STOP_GRACEFUL, STOP_FAST } stop_t;

static struct {
    tk_conf_t *conf; /* the current generation's configuration */
    tk_conf_t *next; /* a reload in progress: the new configuration */
    int next_forked; /* 0 while the reload waits for free slots */
    uint64_t gen, next_gen;
    uint64_t last_gen; /* generation numbers are never reused, even by a failed reload */
    int hup_pending;   /* a SIGHUP that came during start-up or a reload */
    int64_t next_deadline_ms;
    tk_master_load_fn load;
    void *load_arg;

    tk_shm_t *shm;
    unsigned nslots;
    wk_t w[TK_SHM_MAX_SLOTS];
    tk_listen_set_t lst;

    int drop; /* drop privileges in workers */
    uid_t uid;
    gid_t gid;
    char pid_path[300];
    pid_t pid;
    int ready_fd;
    int ready_sent;
    int daemon; /* detached: stderr must not keep the caller's pipe open */

    stop_t stop;
    /* server.drain_delay: the lame duck before a stop (lame_stop, the stop
     * that follows) or before a reload retires the old generation; /health
     * answers 503 meanwhile (tk_shm_lame_duck) */
    stop_t lame_stop;
    int64_t lame_until_ms;
    int64_t stop_deadline_ms;
    int killed_all;

    uint64_t wd_usec;
    int64_t wd_next_ms;
    int wd_warned;
    int64_t status_next_ms;
    unsigned long long crashes_total;
    /* dead workers whose broker entries are still to be reclaimed: the lock
     * was busy (tk_broker_reclaim_pid() gives up after
     * TK_BROKER_MASTER_LOCK_MS); retried on every tick */
    pid_t reclaim[TK_SHM_MAX_SLOTS];
    int64_t reclaim_after_ms; /* after a timeout, no new attempt before this */
} M;

static volatile sig_atomic_t sig_hup, sig_term, sig_quit, sig_usr1, sig_chld;

static void on_signal(int sig)
{
    switch (sig) {
    case SIGHUP:
        sig_hup = 1;
        break;
    case SIGTERM:
    case SIGINT:
        sig_term = 1;
        break;
    case SIGQUIT:
        sig_quit = 1;
        break;
    case SIGUSR1:
        sig_usr1 = 1;
        break;
    case SIGCHLD:
        sig_chld = 1;
        break;
    }
}

static const int handled_signals[] = {SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGCHLD};
#define NHANDLED (sizeof(handled_signals) / sizeof(handled_signals[0]))

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* "exited with status 3" / "killed by signal 9 (Killed)" */
static void describe_status(int st, char *buf, size_t len)
{
    if (WIFEXITED(st))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(buf, len, "killed by signal %d (%s)%s", WTERMSIG(st), strsignal(WTERMSIG(st)),
                 WCOREDUMP(st) ? ", core dumped" : "");
    else
        snprintf(buf, len, "wait status 0x%x", (unsigned)st);
}

/* Point fd 2 at /dev/null (a daemon with no error log file). */
static void detach_stderr(void)
{
    int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        dup2(fd, 2);
        close(fd);
    }
}

static void signal_worker(wk_t *w, int sig)
{
    if (w->pid > 0 && kill(w->pid, sig) != 0 && errno != ESRCH)
        TK_LOG_ERRNO(TK_LOG_ERR, errno, "kill(%d, %d) failed", (int)w->pid, sig);
}

static void set_state(unsigned slot, wk_state_t st)
{
    M.w[slot].state = st;
    if (M.shm == NULL)
        return;
    switch (st) {
    case WK_STARTING:
        tk_shm_worker_set_state(M.shm, slot, TK_SHM_W_STARTING);
        break;
    case WK_RUNNING:
        tk_shm_worker_set_state(M.shm, slot, TK_SHM_W_RUNNING);
        break;
    case WK_DRAINING:
        tk_shm_worker_set_state(M.shm, slot, TK_SHM_W_DRAINING);
        break;
    case WK_FREE:
    case WK_BACKOFF:
        break; /* tk_shm_worker_reap() already marked it DEAD */
    }
}

/* In the child: become worker `slot` and never return. */
static void __attribute__((noreturn))
child_main(unsigned slot, uint64_t gen, const tk_conf_t *c, const int *fds, int nfds, int admin_fd)
{
    tk_log_set_worker((int)slot);
    tk_proctitle_set("tenkd: worker %u (%s)", slot, c->name);

    /* Sockets of other generations' addresses are not ours to hold open. */
    tk_listen_close_others(&M.lst, fds, nfds, admin_fd);
    if (M.ready_fd >= 0)
        close(M.ready_fd);
    if (M.daemon && c->error_log[0] == '\0')
        detach_stderr(); /* else the caller of `tenkd` would wait for our EOF */

    if (M.drop) {
        if (setgroups(0, NULL) != 0 && errno != EPERM) {
            TK_LOG_ERRNO(TK_LOG_ERR, errno, "setgroups() failed");
            _exit(2);
        }
        if (initgroups(c->user, M.gid) != 0 || setgid(M.gid) != 0 || setuid(M.uid) != 0) {
            TK_LOG_ERRNO(TK_LOG_ERR, errno, "dropping privileges to user %s failed", c->user);
            _exit(2);
        }
        if (M.uid != 0 && setuid(0) == 0) {
            TK_LOG(TK_LOG_ERR, "could regain root after dropping privileges; refusing to run");
            _exit(2);
        }
    }
    /* After setuid: a credential change clears the parent-death signal. If the
     * master dies without stopping us (kill -9), stop fast rather than linger. */
    prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
    if (getppid() != M.pid)
        _exit(1);

    /* Defaults for the worker to override; HUP and USR1 stay ignored until it
     * installs its own handlers, so a log reopen racing a fork kills nothing. */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < NHANDLED; i++) {
        int sig = handled_signals[i];
        sa.sa_handler = (sig == SIGHUP || sig == SIGUSR1) ? SIG_IGN : SIG_DFL;
        sigaction(sig, &sa, NULL);
    }
    sa.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &sa, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    tk_worker_args_t a = {
        .slot = (int)slot,
        .generation = (uint32_t)gen,
        .conf = c,
        .listen_fds = fds,
        .nlisten = nfds,
        .admin_fd = admin_fd,
        .shm = M.shm,
    };
    exit(tk_worker_main(&a));
}

/* Fork worker `index` of generation gen into slot. 0, or -1 if fork failed. */
static int spawn(unsigned slot, uint64_t gen, unsigned index, const tk_conf_t *c)
{
    int fds[TK_CONF_MAX_LISTEN];
    int nfds = 0, admin_fd = -1;
    for (int i = 0; i < c->nlisten; i++) {
        tk_listen_t *l = tk_listen_find(&M.lst, c->listen[i]);
        assert(l != NULL);
        fds[nfds++] = l->fd;
    }
    if (c->admin_listen[0]) {
        tk_listen_t *l = tk_listen_find(&M.lst, c->admin_listen);
        assert(l != NULL);
        admin_fd = l->fd;
    }
    pid_t pid = fork();
    if (pid < 0) {
        TK_LOG_ERRNO(TK_LOG_ERR, errno, "fork() failed");
        return -1;
    }
    if (pid == 0)
        child_main(slot, gen, c, fds, nfds, admin_fd);
    wk_t *w = &M.w[slot];
    w->pid = pid;
    w->gen = gen;
    w->index = index;
    w->started_ms = now_ms();
    w->kill_at_ms = 0;
    tk_shm_worker_started(M.shm, slot, pid, gen, index);
    set_state(slot, WK_STARTING);
    TK_LOG(TK_LOG_INFO, "started worker %u (pid %d, generation %llu)", slot, (int)pid,
           (unsigned long long)gen);
    return 0;
}

static int find_free_slot(void)
{
    for (unsigned i = 0; i < M.nslots; i++)
        if (M.w[i].state == WK_FREE)
            return (int)i;
    return -1;
}

static unsigned count_free_slots(void)
{
    unsigned n = 0;
    for (unsigned i = 0; i < M.nslots; i++)
        n += M.w[i].state == WK_FREE;
    return n;
}

static unsigned count_live(void)
{
    unsigned n = 0;
    for (unsigned i = 0; i < M.nslots; i++)
        n += M.w[i].pid > 0;
    return n;
}

/* The worker in slot has bound its metrics and set accepting. */
static int is_accepting(unsigned slot)
{
    tk_metrics_sh_t *m = tk_shm_metrics(M.shm, slot);
    if (m == NULL)
        return 0;
    return __atomic_load_n(&m->live.accepting, __ATOMIC_ACQUIRE) == 1 &&
           (pid_t)__atomic_load_n(&m->live.pid, __ATOMIC_ACQUIRE) == M.w[slot].pid;
}

/* --- notifications ------------------------------------------------------------------- */

static void announce_ready(void)
{
    int n = 0;
    for (unsigned i = 0; i < M.nslots; i++)
        n += M.w[i].state == WK_RUNNING && M.w[i].gen == M.gen;
    tk_notify_sendf("READY=1\nSTATUS=%d workers accepting (generation %llu)", n,
                    (unsigned long long)M.gen);
    if (M.ready_fd >= 0) {
        char one = 1;
        ssize_t r = write(M.ready_fd, &one, 1);
        (void)r;
        close(M.ready_fd);
        M.ready_fd = -1;
        /* Start-up is over: a daemon lets go of the terminal's stderr. */
        if (M.conf->error_log[0] == '\0') {
            TK_LOG(TK_LOG_NOTICE, "daemonized without log.error_log: further log lines are "
                                  "discarded");
            detach_stderr();
        }
    }
}

/* STATUS=: workers of the current generation and requests/s over 5 s. */
static void update_status(void)
{
    static tk_metrics_snap_t snap; /* large: keep it off the stack */
    double rps = 0;
    int running = 0, want = tk_conf_workers(M.conf);
    uint64_t now_sec = tk_metrics_now_sec();
    for (unsigned i = 0; i < M.nslots; i++) {
        if (M.w[i].pid <= 0)
            continue;
        if (M.w[i].state == WK_RUNNING && M.w[i].gen == M.gen)
            running++;
        tk_metrics_sh_t *m = tk_shm_metrics(M.shm, i);
        if (m == NULL)
            continue;
        /* a worker stopped mid-update must not stall supervision: no sleep */
        tk_metrics_snapshot_nowait(m, &snap);
        tk_metrics_rate_t r;
        tk_metrics_rate(&snap, now_sec, 5, &r);
        rps += r.requests;
    }
    tk_notify_status("%d/%d workers (generation %llu), %.0f requests/s", running, want,
                     (unsigned long long)M.gen, rps);
}

/* WATCHDOG=1 only while every accepting worker's heartbeat is fresh: a wedged
 * worker loop then gets the whole service restarted by systemd. */
static void watchdog_tick(void)
{
    uint64_t now = mono_ns(), limit = M.wd_usec * 1000ull;
    for (unsigned i = 0; i < M.nslots; i++) {
        if (M.w[i].state != WK_RUNNING)
            continue;
        tk_metrics_sh_t *m = tk_shm_metrics(M.shm, i);
        uint64_t hb = m ? __atomic_load_n(&m->live.heartbeat_ns, __ATOMIC_ACQUIRE) : 0;
        if (hb == 0 || now > hb + limit) {
            if (!M.wd_warned)
                TK_LOG(TK_LOG_ERR,
                       "worker %u (pid %d) heartbeat is %.1f s old; withholding WATCHDOG=1", i,
                       (int)M.w[i].pid, hb ? (double)(now - hb) / 1e9 : -1.0);
            M.wd_warned = 1;
            return;
        }
    }
    M.wd_warned = 0;
    tk_notify_watchdog();
}

/* --- lame duck ----------------------------------------------------------------------- */

/* /health answers 503 for ms (every worker reads the flag) while everything
 * else is served: a load balancer's health check takes the host out before
 * its listeners close. */
static void lame_begin(int ms, const char *why)
{
    M.lame_until_ms = ms > 0 ? now_ms() + ms : 0;
    if (ms <= 0)
        return;
    tk_shm_set_lame_duck(M.shm, 1);
    TK_LOG(TK_LOG_NOTICE, "lame duck before the %s: /health answers 503 for %d ms", why, ms);
}

static void lame_end(void)
{
    if (M.lame_until_ms == 0)
        return;
    M.lame_until_ms = 0;
    tk_shm_set_lame_duck(M.shm, 0);
}

/* --- reload ------------------------------------------------------------------------- */

static void reload_refused(const char *why)
{
    TK_LOG(TK_LOG_ERR, "reload refused, keeping the running configuration: %s", why);
    tk_shm_reload_done(M.shm, 0, why);
    tk_notify_sendf("READY=1\nSTATUS=reload failed: %s", why);
}

/* Check what a reload cannot change while running. */
static int reload_compatible(const tk_conf_t *nc, char *why, size_t len)
{
    const tk_conf_t *oc = M.conf;
    if (strcmp(nc->name, oc->name) != 0)
        snprintf(why, len, "server.name cannot change on reload (restart tenkd)");
    else if (strcmp(nc->user, oc->user) != 0)
        snprintf(why, len, "server.user cannot change on reload (restart tenkd)");
    else if (strcmp(nc->pid_file, oc->pid_file) != 0)
        snprintf(why, len, "server.pid_file cannot change on reload (restart tenkd)");
    else if ((unsigned)tk_conf_workers(nc) > M.nslots / 2)
        snprintf(why, len,
                 "server.workers %d exceeds the %u this instance was started with room for "
                 "(restart tenkd)",
                 tk_conf_workers(nc), M.nslots / 2);
    else
        return 0;
    return -1;
}

/* Fork the new generation once enough slots are free (draining workers of an
 * earlier reload may still hold them). */
static void reload_fork(void)
{
    unsigned need = (unsigned)tk_conf_workers(M.next);
    if (count_free_slots() < need)
        return; /* retried on the next tick */
    M.next_forked = 1;
    M.next_deadline_ms = now_ms() + TK_MASTER_START_TIMEOUT_MS;
    for (unsigned i = 0; i < need; i++) {
        int slot = find_free_slot();
        if (slot < 0 || spawn((unsigned)slot, M.next_gen, i, M.next) != 0) {
            M.next_deadline_ms = 0; /* fails the reload on this tick */
            return;
        }
    }
}

static void reload_start(void)
{
    char err[768];
    tk_notify_reloading();
    TK_LOG(TK_LOG_NOTICE, "SIGHUP: reloading the configuration%s%s",
           M.conf->conf_file[0] ? " from " : "", M.conf->conf_file);
    tk_conf_t *nc = malloc(sizeof(*nc));
    if (nc == NULL) {
        reload_refused("out of memory");
        return;
    }
    if (M.load(nc, err, sizeof(err), M.load_arg) != 0 ||
        reload_compatible(nc, err, sizeof(err)) != 0) {
        free(nc);
        reload_refused(err);
        return;
    }
    if (tk_listen_open(&M.lst, nc) != 0) {
        tk_listen_close_unused(&M.lst, M.conf, NULL);
        free(nc);
        reload_refused("cannot open a new listen address (see the error above)");
        return;
    }
    if (nc->db_max_open != M.conf->db_max_open)
        TK_LOG(TK_LOG_WARN,
               "db.max_open %d -> %d takes effect at the next restart (the shared "
               "slot table keeps %d)",
               M.conf->db_max_open, nc->db_max_open, M.conf->db_max_open);
    M.next = nc;
    M.next_gen = ++M.last_gen;
    M.next_forked = 0;
    /* the new drain_delay, so that a reload can change it */
    lame_begin(nc->drain_delay_ms, "reload");
    reload_fork();
}

/* The new generation accepts on every socket: retire the old one. */
static void reload_finish(void)
{
    tk_conf_t *nc = M.next;
    int64_t now = now_ms();
    unsigned draining = 0;
    for (unsigned i = 0; i < M.nslots; i++) {
        wk_t *w = &M.w[i];
        if (w->gen == M.next_gen)
            continue;
        if (w->state == WK_BACKOFF) {
            w->state = WK_FREE;
        } else if (w->state == WK_STARTING || w->state == WK_RUNNING) {
            signal_worker(w, SIGQUIT);
            set_state(i, WK_DRAINING);
            w->kill_at_ms = now + nc->shutdown_timeout_ms;
            draining++;
        }
    }
    tk_listen_close_unused(&M.lst, nc, NULL);
    lame_end();
    free(M.conf);
    M.conf = nc;
    M.next = NULL;
    M.gen = M.next_gen;
    tk_shm_set_conf(M.shm, nc->conf_file, (unsigned)tk_conf_workers(nc));
    tk_shm_set_generation(M.shm, M.gen);
    tk_shm_reload_done(M.shm, 1, NULL);
    tk_dbview_set_policy(tk_shm_dbview(M.shm), (uint64_t)nc->db_replica_max_lag_ms,
                         strcmp(nc->db_read_from, "primary") == 0);
    if (tk_broker_set_max_idle(tk_shm_broker(M.shm), (unsigned)nc->db_max_idle) != 0)
        TK_LOG(TK_LOG_WARN,
               "database broker lock held for over %u ms: db.max_idle %d not applied (a worker "
               "stopped or stuck inside it?)",
               TK_BROKER_MASTER_LOCK_MS, nc->db_max_idle);

    tk_log_level_t lv;
    if (tk_log_level_parse(nc->log_level, &lv) == 0)
        tk_log_set_level(lv);
    if (tk_log_open(nc->error_log) != 0)
        TK_LOG_ERRNO(TK_LOG_ERR, errno, "open(\"%s\") failed", nc->error_log);
    TK_LOG(TK_LOG_NOTICE, "reloaded: generation %llu with %d workers accepting, %u old draining",
           (unsigned long long)M.gen, tk_conf_workers(nc), draining);
    announce_ready();
}

/* The new generation failed: stop it, keep the old one. */
static void reload_abort(const char *why)
{
    int64_t now = now_ms();
    for (unsigned i = 0; i < M.nslots; i++) {
        wk_t *w = &M.w[i];
        if (w->gen != M.next_gen)
            continue;
        if (w->pid > 0) {
            signal_worker(w, SIGTERM);
            set_state(i, WK_DRAINING);
            w->kill_at_ms = now + TK_MASTER_FAST_STOP_MS;
        } else if (w->state == WK_BACKOFF) {
            w->state = WK_FREE;
        }
    }
    free(M.next);
    M.next = NULL;
    tk_listen_close_unused(&M.lst, M.conf, NULL);
    lame_end();
    reload_refused(why);
}

/* --- reaping ------------------------------------------------------------------------ */

/* The read replicas get their own brokers (cap db.replica_max_open, else db.max_open) and
 * every backend a row in the dbview; db.replica changes need a restart. */
static void init_backends(const tk_conf_t *conf)
{
    char labels[TK_DBVIEW_MAX][TK_DBVIEW_NAME];
    const char *names[TK_DBVIEW_MAX];
    int n = 1 + conf->db_nreplicas;
    if (n > TK_DBVIEW_MAX)
        n = TK_DBVIEW_MAX;
    for (int i = 0; i < n; i++) {
        tk_resolve_label(i == 0 ? conf->db_conninfo : conf->db_replica[i - 1], labels[i],
                         sizeof(labels[i]));
        names[i] = labels[i];
        if (i > 0) {
            int cap = conf->db_replica_max_open > 0 ? conf->db_replica_max_open : conf->db_max_open;
            tk_broker_sh_init(tk_shm_broker_be(M.shm, (unsigned)i), (unsigned)cap);
            tk_broker_set_max_idle(tk_shm_broker_be(M.shm, (unsigned)i), (unsigned)cap);
        }
    }
    tk_dbview_init(tk_shm_dbview(M.shm), (unsigned)n, names, (uint64_t)conf->db_replica_max_lag_ms,
                   strcmp(conf->db_read_from, "primary") == 0);
    if (conf->db_nreplicas > 0)
        TK_LOG(TK_LOG_NOTICE, "database: primary %s and %d replica(s), reads from %s", labels[0],
               n - 1, conf->db_read_from);
}

/* Reclaim the broker entries of the dead worker recorded for slot. The broker
 * lock is one any worker can hold (or a stopped one keep), so the master only
 * waits TK_BROKER_MASTER_LOCK_MS for it and otherwise logs and tries again on
 * the next tick; the slot's next worker also reclaims it when it attaches. */
static void reclaim_retry(unsigned slot)
{
    pid_t pid = M.reclaim[slot];
    if (pid <= 0 || now_ms() < M.reclaim_after_ms)
        return; /* (one 100 ms wait per half second at most, however many died) */
    /* every backend's broker; reclaiming twice is harmless, so a retry redoes them all */
    int ok = 1;
    for (unsigned i = 0; i < TK_DBVIEW_MAX && ok; i++)
        if (tk_broker_reclaim_pid(tk_shm_broker_be(M.shm, i), pid) < 0)
            ok = 0;
    tk_dbview_unlease(tk_shm_dbview(M.shm), pid);
    if (ok) {
        M.reclaim[slot] = 0;
        return;
    }
    if (errno == ETIMEDOUT) {
        M.reclaim_after_ms = now_ms() + 500;
        TK_LOG(TK_LOG_WARN,
               "database broker lock held for over %u ms (a worker stopped or stuck inside "
               "it?): reclaiming pid %d's connection slots later",
               TK_BROKER_MASTER_LOCK_MS, (int)pid);
    } else {
        TK_LOG_ERRNO(TK_LOG_ERR, errno, "tk_broker_reclaim_pid(%d) failed", (int)pid);
        M.reclaim[slot] = 0;
    }
}

static void reap(void)
{
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);
        if (pid <= 0)
            break;
        int slot = -1;
        for (unsigned i = 0; i < M.nslots; i++)
            if (M.w[i].pid == pid)
                slot = (int)i;
        if (slot < 0)
            continue;
        wk_t *w = &M.w[slot];
        char how[96];
        describe_status(st, how, sizeof(how));
        /* Free what the dead process held in shared memory: its gauges and any
         * database slot or queue entry, which other workers may be waiting for. */
        tk_shm_worker_reap(M.shm, (unsigned)slot, st);
        M.reclaim[slot] = pid;
        reclaim_retry((unsigned)slot);
        w->pid = 0;

        int64_t now = now_ms();
        if (w->state == WK_DRAINING || M.stop != RUNNING) {
            TK_LOG(TK_LOG_INFO, "worker %d (pid %d, generation %llu) %s", slot, (int)pid,
                   (unsigned long long)w->gen, how);
            w->state = WK_FREE;
            w->crashes = 0;
            continue;
        }
        M.crashes_total++;
        if (M.next != NULL && w->gen == M.next_gen && w->state == WK_STARTING) {
            char why[200];
            snprintf(why, sizeof(why), "worker %d of the new generation %s before accepting", slot,
                     how);
            TK_LOG(TK_LOG_ERR, "%s", why);
            w->state = WK_FREE;
            reload_abort(why);
            continue;
        }
        if (w->gen != M.gen && w->gen != M.next_gen) {
            w->state = WK_FREE; /* an old generation is never respawned */
            continue;
        }
        /* Back off when a slot keeps dying young: 0, 100 ms, 200 ms, ... */
        if (now - w->started_ms < TK_MASTER_FAST_DEATH_MS)
            w->crashes++;
        else
            w->crashes = 1;
        int64_t delay = 0;
        if (w->crashes > 1) {
            unsigned shift = w->crashes - 2 > 10 ? 10 : w->crashes - 2;
            delay = 100LL << shift;
            if (delay > TK_MASTER_BACKOFF_MAX_MS)
                delay = TK_MASTER_BACKOFF_MAX_MS;
        }
        TK_LOG(TK_LOG_ERR, "worker %d (pid %d) %s; respawning%s (%u in a row, %llu in all)", slot,
               (int)pid, how, delay ? " after a back-off" : "", w->crashes, M.crashes_total);
        if (delay)
            TK_LOG(TK_LOG_WARN, "worker %d keeps crashing: next start in %lld ms", slot,
                   (long long)delay);
        w->state = WK_BACKOFF;
        w->respawn_at_ms = now + delay;
    }
}

/* --- stop ------------------------------------------------------------------------- */

static void stop_begin(stop_t how)
{
    if (M.stop == how || M.stop == STOP_FAST)
        return;
    int64_t now = now_ms();
    int first = M.stop == RUNNING;
    M.stop = how;
    if (first) {
        tk_notify_stopping();
        tk_shm_set_stopping(M.shm);
        if (M.next != NULL) {
            free(M.next);
            M.next = NULL;
        }
    }
    TK_LOG(TK_LOG_NOTICE, "%s stop: %u workers", how == STOP_FAST ? "fast" : "graceful",
           count_live());
    M.stop_deadline_ms =
        now + (how == STOP_FAST ? TK_MASTER_FAST_STOP_MS : M.conf->shutdown_timeout_ms);
    for (unsigned i = 0; i < M.nslots; i++) {
        wk_t *w = &M.w[i];
        if (w->pid > 0) {
            signal_worker(w, how == STOP_FAST ? SIGTERM : SIGQUIT);
            set_state(i, WK_DRAINING);
        } else if (w->state == WK_BACKOFF) {
            w->state = WK_FREE;
        }
    }
    /* Workers hold their own copies; no new worker needs ours. */
    tk_listen_close_all(&M.lst);
}

/* SIGTERM (fast) or SIGQUIT (graceful): with server.drain_delay, the lame
 * duck first, unless one is already running for a stop: a second stop
 * signal then ends it at once (an operator in a hurry, systemd's timeout). */
static void stop_request(stop_t how)
{
    if (M.stop != RUNNING) {
        stop_begin(how);
        return;
    }
    if (M.lame_stop != RUNNING) {
        stop_begin(how > M.lame_stop ? how : M.lame_stop);
        return;
    }
    if (M.conf->drain_delay_ms <= 0) {
        stop_begin(how);
        return;
    }
    M.lame_stop = how;
    /* a reload waiting in its own lame duck is dropped: the stop's replaces it */
    lame_begin(M.conf->drain_delay_ms, how == STOP_FAST ? "fast stop" : "graceful stop");
}

static void cleanup(void)
{
    tk_listen_close_all(&M.lst);
    tk_broker_wake_close();
    tk_pidfile_remove(M.pid_path, M.pid);
    if (M.shm != NULL) {
        tk_shm_unlink(M.conf->name);
        tk_shm_detach(M.shm);
        M.shm = NULL;
    }
    free(M.next);
    M.next = NULL;
    free(M.conf);
    M.conf = NULL;
}

/* One pass over timers and worker states; returns the ms until the next due
 * event (-1 = none). */
static int64_t tick(void)
{
    int64_t now = now_ms(), next = now + 1000;
#define DUE(t)                                                                                     \
    do {                                                                                           \
        if ((t) < next)                                                                            \
            next = (t);                                                                            \
    } while (0)

    int starting = 0;
    for (unsigned i = 0; i < M.nslots; i++) {
        wk_t *w = &M.w[i];
        if (M.reclaim[i] > 0)
            reclaim_retry(i);
        if (w->state == WK_STARTING) {
            if (is_accepting(i))
                set_state(i, WK_RUNNING);
            else
                starting = 1;
        }
        if (w->state == WK_BACKOFF && M.stop == RUNNING) {
            if (now >= w->respawn_at_ms) {
                const tk_conf_t *c = w->gen == M.gen ? M.conf : M.next;
                if (c == NULL || spawn(i, w->gen, w->index, c) != 0) {
                    w->respawn_at_ms = now + 1000;
                    DUE(w->respawn_at_ms);
                } else {
                    starting = 1;
                }
            } else {
                DUE(w->respawn_at_ms);
            }
        }
        if (w->state == WK_DRAINING && w->pid > 0 && w->kill_at_ms > 0 && M.stop == RUNNING) {
            if (now >= w->kill_at_ms) {
                TK_LOG(TK_LOG_WARN, "worker %u (pid %d) still draining after the timeout: SIGKILL",
                       i, (int)w->pid);
                signal_worker(w, SIGKILL);
                w->kill_at_ms = 0;
            } else {
                DUE(w->kill_at_ms);
            }
        }
    }

    if (M.stop == RUNNING && M.lame_stop != RUNNING) {
        if (now >= M.lame_until_ms)
            stop_begin(M.lame_stop);
        else
            DUE(M.lame_until_ms);
    }
    if (M.stop == RUNNING) {
        /* First generation up: READY=1. */
        if (!M.ready_sent) {
            int all = 1;
            for (unsigned i = 0; i < M.nslots; i++)
                if (M.w[i].gen == M.gen && M.w[i].state != WK_FREE && M.w[i].state != WK_RUNNING)
                    all = 0;
            if (all) {
                M.ready_sent = 1;
                TK_LOG(TK_LOG_NOTICE, "ready: %d workers accepting", tk_conf_workers(M.conf));
                announce_ready();
            }
        }
        if (M.next != NULL && !M.next_forked) {
            reload_fork();
            starting = 1;
        }
        if (M.next != NULL && M.next_forked) {
            int all = 1;
            for (unsigned i = 0; i < M.nslots; i++)
                if (M.w[i].gen == M.next_gen && M.w[i].state != WK_RUNNING &&
                    M.w[i].state != WK_FREE)
                    all = 0;
            if (all && M.lame_until_ms > now)
                DUE(M.lame_until_ms); /* accepting: retire the old one after the lame duck */
            else if (all)
                reload_finish();
            else if (now >= M.next_deadline_ms)
                reload_abort(M.next_deadline_ms == 0
                                 ? "could not fork the new generation"
                                 : "the new generation did not start accepting in time");
        }
    } else {
        if (now >= M.stop_deadline_ms && !M.killed_all) {
            TK_LOG(TK_LOG_WARN, "stop timeout: SIGKILL to %u remaining workers", count_live());
            for (unsigned i = 0; i < M.nslots; i++)
                signal_worker(&M.w[i], SIGKILL);
            M.killed_all = 1;
        } else if (!M.killed_all) {
            DUE(M.stop_deadline_ms);
        }
    }

    if (M.wd_usec > 0 && M.stop == RUNNING) {
        if (now >= M.wd_next_ms) {
            watchdog_tick();
            M.wd_next_ms = now + (int64_t)(M.wd_usec / 2000);
        }
        DUE(M.wd_next_ms);
    }
    if (M.ready_sent && M.stop == RUNNING && getenv("NOTIFY_SOCKET") != NULL) {
        if (now >= M.status_next_ms) {
            update_status();
            M.status_next_ms = now + 5000;
        }
        DUE(M.status_next_ms);
    }
    /* Poll the accepting flags of starting workers often: they gate READY and
     * the switch-over of a reload. */
    if (starting || (M.next != NULL))
        DUE(now + 5);
#undef DUE
    return next > now ? next - now : 0;
}

static void reopen_logs(void)
{
    if (tk_log_open(M.conf->error_log) != 0)
        TK_LOG_ERRNO(TK_LOG_ERR, errno, "reopening the error log \"%s\" failed", M.conf->error_log);
    else
        TK_LOG(TK_LOG_NOTICE, "SIGUSR1: logs reopened");
    for (unsigned i = 0; i < M.nslots; i++)
        signal_worker(&M.w[i], SIGUSR1);
}

int tk_master_run(const tk_conf_t *conf, tk_master_load_fn load, void *load_arg, int ready_fd)
{
    char err[512];
    memset(&M, 0, sizeof(M));
    M.pid = getpid();
    M.ready_fd = ready_fd;
    M.daemon = ready_fd >= 0;
    M.load = load;
    M.load_arg = load_arg;
    M.conf = malloc(sizeof(*M.conf));
    if (M.conf == NULL)
        return 1;
    *M.conf = *conf;

    tk_proctitle_set("tenkd: master (%s)", conf->name);

    /* Privileges: workers run as server.user; the master keeps root to bind
     * and to manage the pid file and shared memory. */
    uid_t shm_uid = (uid_t)-1;
    gid_t shm_gid = (gid_t)-1;
    if (conf->user[0]) {
        struct passwd *pw = getpwnam(conf->user);
        if (pw == NULL) {
            TK_LOG(TK_LOG_ERR, "server.user: no such user '%s'", conf->user);
            free(M.conf);
            return 1;
        }
        if (geteuid() == 0) {
            M.drop = 1;
            M.uid = pw->pw_uid;
            M.gid = pw->pw_gid;
            shm_uid = pw->pw_uid;
            shm_gid = pw->pw_gid;
        } else if (geteuid() != pw->pw_uid) {
            TK_LOG(TK_LOG_ERR, "server.user %s needs tenkd to start as root", conf->user);
            free(M.conf);
            return 1;
        }
    } else if (geteuid() == 0) {
        TK_LOG(TK_LOG_WARN, "running as root without server.user (--user): workers keep root "
                            "privileges");
    }

    int workers = tk_conf_workers(conf);
    int room = workers < 8 ? 8 : workers;
    M.nslots = TK_SHM_SLOTS(room);
    if (M.nslots > TK_SHM_MAX_SLOTS)
        M.nslots = TK_SHM_MAX_SLOTS;
    if (M.nslots > TK_BROKER_MAX_WORKERS)
        M.nslots = TK_BROKER_MAX_WORKERS;
    M.shm = tk_shm_create_ex(conf->name, M.nslots, (unsigned)conf->db_max_open, shm_uid, shm_gid,
                             err, sizeof(err));
    if (M.shm == NULL) {
        TK_LOG(TK_LOG_ERR, "shared memory: %s", err);
        free(M.conf);
        return 1;
    }
    tk_shm_set_conf(M.shm, conf->conf_file, (unsigned)workers);
    tk_broker_set_max_idle(tk_shm_broker(M.shm), (unsigned)conf->db_max_idle);
    init_backends(conf);
    M.gen = M.last_gen = 1;
    tk_shm_set_generation(M.shm, M.gen);
    if (tk_broker_wake_create((int)M.nslots) != 0) {
        TK_LOG_ERRNO(TK_LOG_ERR, errno, "tk_broker_wake_create() failed");
        cleanup();
        return 1;
    }
    if (tk_listen_open(&M.lst, conf) != 0) {
        cleanup();
        return 1;
    }
    tk_conf_pid_path(M.conf, M.pid_path, sizeof(M.pid_path));
    tk_pidfile_write(M.pid_path, M.pid);

    /* Block our signals; ppoll() unblocks them only while waiting. */
    sigset_t block, waitmask;
    sigemptyset(&block);
    for (size_t i = 0; i < NHANDLED; i++)
        sigaddset(&block, handled_signals[i]);
    sigprocmask(SIG_BLOCK, &block, &waitmask);
    for (size_t i = 0; i < NHANDLED; i++)
        sigdelset(&waitmask, handled_signals[i]);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigfillset(&sa.sa_mask);
    for (size_t i = 0; i < NHANDLED; i++)
        sigaction(handled_signals[i], &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);

    M.wd_usec = tk_notify_watchdog_usec();
    if (M.wd_usec > 0)
        TK_LOG(TK_LOG_INFO, "systemd watchdog: %llu ms", (unsigned long long)M.wd_usec / 1000);

    TK_LOG(TK_LOG_NOTICE, "starting %d workers (pid %d, %s)", workers, (int)M.pid,
           conf->conf_file[0] ? conf->conf_file : "built-in configuration");
    for (int i = 0; i < workers; i++) {
        if (spawn((unsigned)i, M.gen, (unsigned)i, M.conf) != 0) {
            M.w[i].state = WK_BACKOFF;
            M.w[i].gen = M.gen;
            M.w[i].index = (unsigned)i;
            M.w[i].respawn_at_ms = now_ms() + 1000;
        }
    }

    for (;;) {
        if (sig_chld) {
            sig_chld = 0;
            reap();
        }
        if (sig_term) {
            sig_term = 0;
            stop_request(STOP_FAST);
        }
        if (sig_quit) {
            sig_quit = 0;
            stop_request(STOP_GRACEFUL);
        }
        if (sig_usr1) {
            sig_usr1 = 0;
            reopen_logs();
        }
        if (sig_hup) {
            sig_hup = 0;
            if (M.stop != RUNNING || M.lame_stop != RUNNING)
                TK_LOG(TK_LOG_NOTICE, "SIGHUP ignored: stopping");
            else if (M.next != NULL || !M.ready_sent)
                TK_LOG(TK_LOG_NOTICE, "SIGHUP queued until the workers that are starting accept");
            M.hup_pending = M.stop == RUNNING && M.lame_stop == RUNNING;
        }
        /* One reload at a time; a SIGHUP during one runs right after it. */
        if (M.hup_pending && M.stop == RUNNING && M.ready_sent && M.next == NULL) {
            M.hup_pending = 0;
            reload_start();
        }
        if (M.stop != RUNNING && count_live() == 0)
            break;
        int64_t wait = tick();
        if (M.stop != RUNNING && count_live() == 0)
            break;
        if (sig_chld || sig_term || sig_quit || sig_usr1 || sig_hup)
            continue;
        struct timespec ts = {(time_t)(wait / 1000), (long)(wait % 1000) * 1000000L};
        if (ppoll(NULL, 0, &ts, &waitmask) < 0 && errno != EINTR)
            TK_LOG_ERRNO(TK_LOG_ERR, errno, "ppoll() failed");
    }
    TK_LOG(TK_LOG_NOTICE, "all workers exited; master exiting");
    cleanup();
    return 0;
}
