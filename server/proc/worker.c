/* worker.c: one worker process: event loop, scheduler, accept, drain, heartbeat. */
#include "config.h"

#include "proc/worker.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "proc/access_log.h"
#include "proc/gt_dump.h"
#include "handlers/admin.h"
#include "cache/cache.h"
#include "db/db.h"
#include "handlers/handlers.h"
#include "http/http_conn.h"
#include "proc/log.h"
#include "shm/metrics.h"
#include "http/router.h"
#include "runtime/scheduler.h"
#include "shm/segment.h"

#define TICK_MS 100
/* Connections taken per listener per wake-up: enough that a burst of new
 * connections does not wait in the kernel's queue behind whole loop turns
 * of requests (each turn may serve thousands), few enough that the load
 * check between batches still spreads the burst over the workers. */
#define ACCEPT_BATCH 64
/* Back-off after EMFILE/ENFILE/ENOMEM: stop accepting instead of spinning on a
 * listen socket that stays readable. */
#define ACCEPT_BACKOFF_MS 100
/* Load spreading: hold back from accepting while this worker has more than
 * avg + avg/8 + slack open connections (avg = the other live workers').
 * Checked every 8 accepts: a client that opens its connections in one burst
 * (wrk, a pool) keeps the spread it got at first. */
#define BALANCE_SLACK 4
/* A hold-back is looked at again at every close and this often, and ends as
 * soon as this worker is no longer above the others. Not all workers can be
 * above the others' average at once, so when every worker holds back, one
 * resumes within this time: the longest a queued connection waits for the
 * spreading (it was a blind 10 ms). */
#define BALANCE_POLL_MS 1
/* Fast stop: what in-flight requests get. */
#define FAST_STOP_MS 1000

typedef struct {
    const tk_worker_args_t *a;
    const tk_conf_t *conf;
    struct event_base *base;
    tk_sched_t *sched;
    tk_http_server_t http;
    tk_router_t *router, *admin_router;

    int epfd; /* private epoll holding the listen sockets with EPOLLEXCLUSIVE */
    struct event *accept_ev, *admin_ev, *tick_ev;
    struct event *resume_ev; /* one-shot: a pause is over */
    struct event *sig_ev[4];
    int registered;         /* listen sockets are in epfd */
    int full;               /* at max_connections */
    int64_t pause_until_ms; /* EMFILE back-off */
    int held_back;          /* load hold-back: out of the waiters while overloaded() */
    int64_t last_emfile_log_ms;
    int stopping;             /* 0 serving, 1 draining, 2 fast stop */
    int64_t stop_deadline_ms; /* exit by then whatever is left */
    unsigned ticks;
    int db_started;
    tk_cache_t *cache;         /* NULL: no redis.addr */
    tk_cache_flight_t *flight; /* single flight for cache-aside loads */
    tk_handlers_env_t henv;    /* what the handlers get of the above */
} worker_t;

static void accept_set(worker_t *w, int on)
{
    if (on == w->registered)
        return;
    for (int i = 0; i < w->a->nlisten; i++) {
        int lfd = w->a->listen_fds[i];
        if (on) {
            /* EPOLLEXCLUSIVE is meant to wake one waiting worker per
             * connection, but this epoll is nested in the loop's, and the
             * kernel counts a nested epoll as no waiter, so it wakes every
             * accepting worker (strace -f: both return from epoll_wait for one
             * connection, one gets EAGAIN). It can only be set with
             * EPOLL_CTL_ADD, hence the DEL/ADD pair rather than MOD. */
            struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.fd = lfd};
            if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, lfd, &ev) != 0)
                TK_LOG_ERRNO(TK_LOG_ERR, errno, "epoll_ctl(ADD, %d) failed", lfd);
        } else {
            /* out of epfd entirely, so this worker is no longer among the
             * exclusive waiters and the kernel wakes another one */
            epoll_ctl(w->epfd, EPOLL_CTL_DEL, lfd, NULL);
        }
    }
    w->registered = on;
    tk_metrics_set_accepting(on);
}

/* Whether this worker should accept right now. */
static int accept_wanted(worker_t *w)
{
    return w->stopping == 0 && !w->full && !w->held_back && tk_now_ms() >= w->pause_until_ms;
}

/* The cross-process cousin of work stealing: a worker far above the others'
 * average number of open connections lets them take the next ones. */
static int overloaded(worker_t *w)
{
    tk_shm_t *shm = w->a->shm;
    if (!shm)
        return 0;
    uint64_t sum = 0, n = 0, now = tk_now_ns();
    unsigned nslots = tk_shm_nslots(shm);
    for (unsigned i = 0; i < nslots; i++) {
        if ((int)i == w->a->slot)
            continue;
        tk_shm_worker_sh_t *ws = tk_shm_worker(shm, i);
        tk_metrics_sh_t *m = tk_shm_metrics(shm, i);
        /* every live, running worker counts, accepting at this instant or
         * not: one holding back for a moment is still where connections
         * should go next */
        if (!ws || !m || ws->pid == 0 ||
            (ws->state != TK_SHM_W_RUNNING && ws->state != TK_SHM_W_STARTING))
            continue; /* a STARTING one counts once its heartbeat says it runs */
        uint64_t hb = __atomic_load_n(&m->live.heartbeat_ns, __ATOMIC_RELAXED);
        if (hb + 1000000000ull < now)
            continue;
        sum += __atomic_load_n(&m->conns_active, __ATOMIC_RELAXED) +
               __atomic_load_n(&m->conns_idle, __ATOMIC_RELAXED);
        n++;
    }
    if (n == 0)
        return 0;
    uint64_t avg = sum / n;
    return w->http.nconns > avg + avg / 8 + BALANCE_SLACK;
}

static void accept_update(worker_t *w)
{
    accept_set(w, accept_wanted(w));
}

static const struct timeval balance_poll = {0, BALANCE_POLL_MS * 1000};

/* End a hold-back once it has no reason left; 1 if it ended. */
static int hold_back_end(worker_t *w)
{
    if (w->stopping == 0 && overloaded(w))
        return 0;
    w->held_back = 0;
    accept_update(w);
    return 1;
}

/* Leave the waiters while overloaded() says so. */
static void hold_back(worker_t *w)
{
    w->held_back = 1;
    accept_set(w, 0);
    event_add(w->resume_ev, &balance_poll);
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    worker_t *w = arg;
    (void)fd;
    (void)what;
    if (w->held_back && !hold_back_end(w)) {
        event_add(w->resume_ev, &balance_poll);
        return;
    }
    accept_update(w);
}

/* Stop accepting for ms (a back-off), then resume. */
static void pause_accept(worker_t *w, int ms)
{
    w->pause_until_ms = tk_now_ms() + ms;
    accept_set(w, 0);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(w->resume_ev, &tv);
}

/* Accept up to max connections from lfd. Returns 1 when accepting must stop
 * (EMFILE back-off, max_connections), else 0. */
static int accept_some(worker_t *w, int lfd, int max)
{
    for (int k = 0; k < max; k++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int cfd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            if (errno == EAGAIN)
                return 0;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                int64_t now = tk_now_ms();
                if (now - w->last_emfile_log_ms >= 1000) {
                    TK_LOG_ERRNO(TK_LOG_WARN, errno, "accept4() failed; not accepting for %d ms",
                                 ACCEPT_BACKOFF_MS);
                    w->last_emfile_log_ms = now;
                }
                pause_accept(w, ACCEPT_BACKOFF_MS);
                return 1;
            }
            TK_LOG_ERRNO(TK_LOG_ERR, errno, "accept4() failed");
            return 0;
        }
        tk_http_conn_start(&w->http, cfd, (struct sockaddr *)&ss, sl, 0);
        if (w->conf->max_connections > 0 && w->http.nconns >= (unsigned)w->conf->max_connections) {
            w->full = 1;
            accept_set(w, 0);
            return 1;
        }
        /* Mid-batch, now and then: a burst should not all land here just
         * because this worker was the one woken (the caller then holds back). */
        if ((k & 7) == 7 && overloaded(w))
            return 0;
    }
    return 0;
}

static void accept_cb(evutil_socket_t fd, short what, void *arg)
{
    worker_t *w = arg;
    (void)fd;
    (void)what;
    struct epoll_event evs[TK_CONF_MAX_LISTEN];
    int n = epoll_wait(w->epfd, evs, TK_CONF_MAX_LISTEN, 0);
    for (int i = 0; i < n && w->registered; i++)
        if (accept_some(w, evs[i].data.fd, ACCEPT_BATCH))
            return;
    if (w->registered && overloaded(w)) {
        /* Hold back: leave the waiters, so the next connections go to a
         * worker that still accepts, until we are no longer above it. */
        TK_LOG(TK_LOG_DEBUG, "holding back from accepting: %u connections open", w->http.nconns);
        hold_back(w);
    }
}

/* The admin listener is never held back: it must answer while the public
 * side is saturated. */
static void admin_cb(evutil_socket_t fd, short what, void *arg)
{
    worker_t *w = arg;
    (void)what;
    for (int k = 0; k < ACCEPT_BATCH; k++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int cfd = accept4(fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN) {
                int64_t now = tk_now_ms();
                if (now - w->last_emfile_log_ms >= 1000) {
                    TK_LOG_ERRNO(TK_LOG_WARN, errno, "accept4() failed on the admin listener");
                    w->last_emfile_log_ms = now;
                }
            }
            return;
        }
        tk_http_conn_start(&w->http, cfd, (struct sockaddr *)&ss, sl, 1);
    }
}

static void on_conn_closed(tk_http_server_t *srv)
{
    worker_t *w = srv->user;
    /* with a connection per request the hold-back's reason is gone within
     * microseconds, not at the next poll */
    if (w->held_back)
        hold_back_end(w); /* its poll then finds nothing to do */
    if (w->full &&
        (w->conf->max_connections <= 0 || srv->nconns < (unsigned)w->conf->max_connections)) {
        w->full = 0;
        accept_update(w);
    }
    if (w->stopping && srv->nconns == 0)
        event_base_loopbreak(w->base);
}

static void publish(worker_t *w, int full)
{
    tk_metrics_heartbeat();
    tk_metrics_conns_set(w->http.nactive, w->http.nconns - w->http.nactive);
    if (full) {
        tk_sched_stats_t st;
        tk_sched_stats(w->sched, &st);
        tk_metrics_sched_publish(&st);
        tk_metrics_proc_publish();
        if (w->cache) {
            tk_cache_stats_t cs;
            tk_cache_stats(w->cache, &cs);
            tk_metrics_cache_stats_publish(&cs);
            tk_cache_topo_t topo;
            tk_cache_topo(w->cache, &topo);
            tk_metrics_cache_topo_publish(&topo);
        }
    }
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    worker_t *w = arg;
    (void)fd;
    (void)what;
    w->ticks++;
    publish(w, w->ticks % 10 == 0);
    if (w->stopping) {
        if (w->http.nconns == 0 || tk_now_ms() >= w->stop_deadline_ms)
            event_base_loopbreak(w->base);
        return;
    }
    accept_update(w);
}

static void begin_stop(worker_t *w, int fast)
{
    if (w->stopping >= (fast ? 2 : 1))
        return;
    int first = w->stopping == 0;
    w->stopping = fast ? 2 : 1;
    accept_set(w, 0);
    if (w->admin_ev)
        event_del(w->admin_ev);
    int64_t now = tk_now_ms();
    if (fast) {
        w->stop_deadline_ms = now + FAST_STOP_MS;
    } else if (first) {
        int t = w->conf->shutdown_timeout_ms > 0 ? w->conf->shutdown_timeout_ms : 30000;
        w->stop_deadline_ms = now + t;
    }
    TK_LOG(TK_LOG_INFO, "%s: %u connections open", fast ? "stopping" : "draining", w->http.nconns);
    tk_http_server_drain(&w->http, fast, TK_WORKER_DRAIN_LINGER_MS);
    publish(w, 0);
    if (w->http.nconns == 0)
        event_base_loopbreak(w->base);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    worker_t *w = arg;
    (void)what;
    switch (sig) {
    case SIGQUIT:
        begin_stop(w, 0);
        break;
    case SIGTERM:
    case SIGINT:
        begin_stop(w, 1);
        break;
    case SIGUSR1:
        if (tk_log_open(w->conf->error_log) != 0)
            TK_LOG_ERRNO(TK_LOG_ERR, errno, "reopening the error log \"%s\" failed",
                         w->conf->error_log);
        if (tk_access_log_enabled() && tk_access_log_reopen() != 0)
            TK_LOG_ERRNO(TK_LOG_ERR, errno, "reopening the access log \"%s\" failed",
                         w->conf->access_log);
        break;
    default:
        break;
    }
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == rl.rlim_max)
        return;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        TK_LOG_ERRNO(TK_LOG_WARN, errno, "setrlimit(RLIMIT_NOFILE) failed");
}

static void name_route(const char *method, const char *pattern, int route_id, void *arg)
{
    (void)arg;
    char name[TK_METRICS_ROUTE_NAME];
    snprintf(name, sizeof(name), "%s %s", method, pattern);
    tk_metrics_route_register((unsigned)route_id, name);
}

/* Every handler file registers its routes (handlers.c's table), with the
 * services it may use (w->henv); the router numbers them. A route that could
 * not be registered (too many, a duplicate) stops the worker at start-up.
 * Returns 0 or -1 (logged). */
static int register_routes(worker_t *w)
{
    w->henv = (tk_handlers_env_t){.conf = w->conf,
                                  .cache = w->cache,
                                  .flight = w->flight,
                                  .shm = w->a->shm,
                                  .slot = w->a->slot,
                                  .gt_dump = tk_gt_dump_collect};
    tk_handlers_register(w->router, w->admin_router, &w->henv);
    const char *err = tk_router_error(w->router);
    if (!err[0])
        err = tk_router_error(w->admin_router);
    if (err[0]) {
        TK_LOG(TK_LOG_ERR, "route registration failed: %s", err);
        return -1;
    }
    tk_router_foreach(w->router, name_route, NULL);
    tk_router_foreach(w->admin_router, name_route, NULL);
    return 0;
}

/* The Redis client, when redis.addr is set. Redis being down is no error here
 * (the client reconnects, requests use the database meanwhile); a malformed
 * address is. */
static int cache_setup(worker_t *w)
{
    const tk_conf_t *conf = w->conf;
    if (!conf->redis_addr[0] && conf->redis_nsentinels == 0)
        return 0;
    tk_cache_opts_t o;
    tk_cache_opts_default(&o);
    const char *sentinels[TK_CONF_MAX_SENTINELS];
    for (int i = 0; i < conf->redis_nsentinels; i++)
        sentinels[i] = conf->redis_sentinels[i];
    o.sentinels = sentinels;
    o.nsentinels = conf->redis_nsentinels;
    o.master_name = conf->redis_master_name;
    o.sentinel_password = conf->redis_sentinel_password;
    o.read_replicas = strcmp(conf->redis_read_from, "replicas") == 0;
    o.spread = (unsigned)w->a->slot; /* workers spread over replicas and Sentinels */
    /* a host name there was resolved by the master (tk_resolve_conf) */
    o.addr = conf->redis_resolved[0] ? conf->redis_resolved : conf->redis_addr;
    o.password = conf->redis_password;
    o.db = conf->redis_db;
    if (conf->redis_timeout_ms > 0)
        o.timeout_ms = conf->redis_timeout_ms;
    o.ttl_s = conf->cache_ttl_s;
    o.negative_ttl_s = conf->cache_negative_ttl_s;
    char err[256];
    w->cache = tk_cache_new(w->base, &o, err, sizeof(err));
    if (!w->cache) {
        TK_LOG(TK_LOG_ERR, "redis: %s", err);
        return -1;
    }
    w->flight = tk_cache_flight_new(w->cache);
    return w->flight ? 0 : -1;
}

static int worker_setup(worker_t *w)
{
    const tk_conf_t *conf = w->conf;
    /* the master's signal mask and handlers are inherited across fork */
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN); /* reload is the master's business */
    raise_nofile();

    if (w->a->shm) {
        if (tk_shm_worker_bind(w->a->shm, (unsigned)w->a->slot) != 0) {
            TK_LOG(TK_LOG_ERR, "binding shared-memory slot %d failed", w->a->slot);
            return -1;
        }
    } else {
        tk_metrics_bind(NULL);
    }

    w->base = event_base_new();
    if (!w->base) {
        TK_LOG(TK_LOG_ERR, "event_base_new() failed");
        return -1;
    }
    tk_sched_opts_t so;
    tk_sched_opts_default(&so);
    if (conf->stack_size)
        so.stack_size = conf->stack_size;
    so.max_threads = conf->max_threads;
    if (conf->long_run_ms)
        so.long_run_ns = conf->long_run_ms * 1000000ull;
    so.stack_paint = conf->stack_paint;
    w->sched = tk_sched_new(w->base, &so);
    if (!w->sched) {
        TK_LOG_ERRNO(TK_LOG_ERR, errno, "tk_sched_new() failed");
        return -1;
    }
    /* the database client parks green threads: after the scheduler, before
     * any handler runs */
    if (w->a->shm) {
        tk_broker_sh_t *brokers[TK_DBVIEW_MAX];
        for (unsigned i = 0; i < TK_DBVIEW_MAX; i++)
            brokers[i] = tk_shm_broker_be(w->a->shm, i);
        tk_db_set_backends(brokers, TK_DBVIEW_MAX, tk_shm_dbview(w->a->shm));
    }
    if (tk_db_worker_init(w->base, w->a->shm ? tk_shm_broker(w->a->shm) : NULL, w->a->slot, conf) !=
        0)
        return -1;
    w->db_started = 1;
    /* answers the other workers' /debug/threads (a failure is logged: the
     * others then report this worker with an error) */
    tk_gt_dump_start(w->sched);
    char err[256];
    if (tk_access_log_open(w->base, conf, w->a->slot, err, sizeof(err)) != 0) {
        TK_LOG(TK_LOG_ERR, "access log: %s", err);
        return -1;
    }
    if (cache_setup(w) != 0) /* before the routes: tfb's start-up load uses it */
        return -1;
    w->router = tk_router_new();
    w->admin_router = tk_router_new_shared(w->router);
    if (!w->router || !w->admin_router)
        return -1;
    if (register_routes(w) != 0)
        return -1;

    tk_http_server_init(&w->http, conf, w->sched, w->base);
    w->http.router = w->router;
    w->http.admin_router = w->admin_router;
    w->http.on_close = on_conn_closed;
    w->http.user = w;

    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (w->epfd < 0) {
        TK_LOG_ERRNO(TK_LOG_ERR, errno, "epoll_create1() failed");
        return -1;
    }
    w->accept_ev = event_new(w->base, w->epfd, EV_READ | EV_PERSIST, accept_cb, w);
    if (!w->accept_ev || event_add(w->accept_ev, NULL) != 0)
        return -1;
    if (w->a->admin_fd >= 0) {
        w->admin_ev = event_new(w->base, w->a->admin_fd, EV_READ | EV_PERSIST, admin_cb, w);
        if (!w->admin_ev || event_add(w->admin_ev, NULL) != 0)
            return -1;
    }
    static const int sigs[4] = {SIGQUIT, SIGTERM, SIGINT, SIGUSR1};
    for (int i = 0; i < 4; i++) {
        w->sig_ev[i] = evsignal_new(w->base, sigs[i], signal_cb, w);
        if (!w->sig_ev[i] || event_add(w->sig_ev[i], NULL) != 0)
            return -1;
    }
    w->resume_ev = evtimer_new(w->base, resume_cb, w);
    if (!w->resume_ev)
        return -1;
    struct timeval tv = {0, TICK_MS * 1000};
    w->tick_ev = event_new(w->base, -1, EV_PERSIST, tick_cb, w);
    if (!w->tick_ev || event_add(w->tick_ev, &tv) != 0)
        return -1;
    return 0;
}

static void worker_teardown(worker_t *w)
{
    if (w->sched) {
        /* cancels what is still running: their connections close as they unwind */
        tk_sched_free(w->sched);
        w->sched = NULL;
    }
    if (w->db_started)
        tk_db_worker_fini(); /* gives this worker's broker slots back */
    tk_access_log_close();
    tk_gt_dump_stop(); /* the /debug/threads listener */
    tk_admin_fini();   /* the admin endpoints' read-only segment map */
    tk_cache_flight_free(w->flight);
    tk_cache_free(w->cache);
    w->flight = NULL;
    w->cache = NULL;
    w->henv.flight = NULL;
    w->henv.cache = NULL;
    if (w->base) {
        tk_http_server_fini(&w->http);
        tk_metrics_conns_set(0, 0);
        tk_metrics_set_accepting(0);
    }
    struct event **evs[] = {&w->accept_ev, &w->admin_ev,  &w->tick_ev,   &w->resume_ev,
                            &w->sig_ev[0], &w->sig_ev[1], &w->sig_ev[2], &w->sig_ev[3]};
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
        if (*evs[i]) {
            event_free(*evs[i]);
            *evs[i] = NULL;
        }
    if (w->epfd >= 0)
        close(w->epfd);
    tk_router_free(w->router);
    tk_router_free(w->admin_router);
    if (w->base)
        event_base_free(w->base);
}

int tk_worker_main(const tk_worker_args_t *a)
{
    worker_t w;
    memset(&w, 0, sizeof(w));
    w.a = a;
    w.conf = a->conf;
    w.epfd = -1;
    tk_log_set_worker(a->slot);
    int rc = 1;
    if (worker_setup(&w) == 0) {
        accept_update(&w);
        publish(&w, 1);
        TK_LOG(TK_LOG_INFO, "worker %d (generation %u) accepting on %d listener(s)", a->slot,
               a->generation, a->nlisten);
        if (event_base_dispatch(w.base) < 0)
            TK_LOG(TK_LOG_ERR, "event_base_dispatch() failed");
        else
            rc = 0;
        if (w.http.nconns)
            TK_LOG(TK_LOG_WARN, "exiting with %u connections still open", w.http.nconns);
    }
    worker_teardown(&w);
    return rc;
}
