/* test_segment.c: unit tests for the shared-memory segment (create, attach, stale, table). */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shm/segment.h"

static char name[64];
static char path[128];

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A fresh, unique instance name per test, removed afterwards. */
static int setup(void **state)
{
    static int n;
    (void)state;
    snprintf(name, sizeof(name), "utest-%d-%d", (int)getpid(), n++);
    assert_int_equal(tk_shm_path(name, path, sizeof(path)), 0);
    unlink(path);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(path);
    return 0;
}

static void test_names(void **state)
{
    (void)state;
    char buf[128], err[256];
    assert_int_equal(tk_shm_path("tenk", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "/dev/shm/tenk-tenk");
    assert_int_equal(tk_shm_path("a-b_c.1", buf, sizeof(buf)), 0);
    assert_int_equal(tk_shm_path("", buf, sizeof(buf)), -1);
    assert_int_equal(tk_shm_path("../etc", buf, sizeof(buf)), -1);
    assert_int_equal(tk_shm_path("a/b", buf, sizeof(buf)), -1);
    assert_int_equal(tk_shm_path(".hidden", buf, sizeof(buf)), -1);
    char longname[TK_SHM_NAME_MAX + 1];
    memset(longname, 'x', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(tk_shm_path(longname, buf, sizeof(buf)), -1);
    assert_null(tk_shm_create("a/b", 4, (uid_t)-1, (gid_t)-1, err, sizeof(err)));
    assert_non_null(strstr(err, "invalid instance name"));
}

/* Create, then attach read-only: same header, same table, writes visible. */
static void test_create_attach(void **state)
{
    (void)state;
    char err[256] = "";
    tk_shm_t *m = tk_shm_create(name, 8, (uid_t)-1, (gid_t)-1, err, sizeof(err));
    assert_non_null(m);
    tk_shm_header_sh_t *h = tk_shm_header(m);
    assert_true(h->magic == TK_SHM_MAGIC);
    assert_int_equal(h->layout_version, TK_SHM_LAYOUT_VERSION);
    assert_int_equal(h->master_pid, getpid());
    assert_int_equal(h->nslots, 8);
    assert_int_equal(tk_shm_nslots(m), 8);
    assert_string_equal(h->name, name);
    assert_true(h->created_ns > 0);
    assert_true(h->metrics_size == sizeof(tk_metrics_sh_t));
    assert_true(tk_shm_master_alive(m));
    tk_shm_set_conf(m, "/etc/tenk/x.conf", 4);
    tk_shm_set_generation(m, 3);

    /* every part inside the mapping, slots cache-line aligned and disjoint */
    char *base = tk_shm_base(m);
    for (unsigned i = 0; i < 8; i++) {
        char *w = (char *)tk_shm_worker(m, i), *mt = (char *)tk_shm_metrics(m, i);
        assert_true(w >= base + sizeof(*h) && w + sizeof(tk_shm_worker_sh_t) <= mt);
        assert_int_equal((uintptr_t)w % 64, 0);
        assert_int_equal((uintptr_t)mt % 64, 0);
        assert_true(mt + sizeof(tk_metrics_sh_t) <= (char *)tk_shm_broker(m));
        assert_int_equal(tk_shm_worker(m, i)->state, TK_SHM_W_EMPTY);
        assert_int_equal(tk_shm_worker(m, i)->last_status, -1);
    }
    assert_null(tk_shm_worker(m, 8));
    assert_null(tk_shm_metrics(m, 8));
    assert_true((char *)tk_shm_broker(m) + sizeof(tk_broker_sh_t) <= base + h->total_size);
    assert_int_equal(tk_shm_broker(m)->magic, TK_BROKER_MAGIC);
    assert_int_equal(tk_shm_broker(m)->max_open, 25);

    tk_shm_t *r = tk_shm_attach(name, 0, err, sizeof(err));
    assert_non_null(r);
    assert_int_equal(tk_shm_writable(r), 0);
    assert_true(tk_shm_base(r) != tk_shm_base(m));
    assert_int_equal(tk_shm_nslots(r), 8);
    assert_string_equal(tk_shm_header(r)->conf_path, "/etc/tenk/x.conf");
    assert_int_equal(tk_shm_header(r)->workers, 4);
    assert_int_equal(tk_shm_header(r)->generation, 3);

    /* a worker binds slot 5 and counts; the reader sees it */
    assert_int_equal(tk_shm_worker_bind(m, 5), 0);
    tk_metrics_request(0, 200, 1000, 1, 2);
    tk_metrics_snap_t s;
    assert_int_equal(tk_metrics_snapshot(tk_shm_metrics(r, 5), &s), 0);
    assert_int_equal(s.m.requests, 1);
    assert_int_equal(tk_shm_worker_bind(m, 99), -1);
    tk_metrics_bind(NULL);

    /* reload outcome handshake */
    uint64_t seq = tk_shm_header(r)->reload_seq;
    tk_shm_reload_done(m, 0, "line 3: unknown key 'wrokers'");
    assert_int_equal(tk_shm_header(r)->reload_seq, seq + 1);
    assert_int_equal(tk_shm_header(r)->reload_ok, 0);
    assert_string_equal(tk_shm_header(r)->reload_error, "line 3: unknown key 'wrokers'");
    tk_shm_reload_done(m, 1, NULL);
    assert_int_equal(tk_shm_header(r)->reload_ok, 1);
    assert_string_equal(tk_shm_header(r)->reload_error, "");
    tk_shm_set_stopping(m);
    assert_int_equal(tk_shm_header(r)->stopping, 1);

    tk_shm_detach(r);
    tk_shm_detach(m);
    /* the segment outlives the handles; unlink removes it */
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(tk_shm_unlink(name), 0);
    assert_int_equal(stat(path, &st), -1);
    assert_null(tk_shm_attach(name, 0, err, sizeof(err)));
    assert_non_null(strstr(err, "no tenk server named"));
}

/* Mode 0600, and owned by the workers' user when one is given. */
static void test_permissions(void **state)
{
    (void)state;
    char err[256];
    tk_shm_t *m = tk_shm_create(name, 2, (uid_t)-1, (gid_t)-1, err, sizeof(err));
    assert_non_null(m);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(st.st_uid, geteuid());
    tk_shm_detach(m);
    unlink(path);
    if (geteuid() != 0)
        return;

    /* as root: chowned to the workers' user; another user is refused clearly */
    m = tk_shm_create(name, 2, 65534, 65534, err, sizeof(err));
    assert_non_null(m);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_uid, 65534);
    assert_int_equal(st.st_gid, 65534);
    assert_int_equal(st.st_mode & 07777, 0600);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int rc = 0;
        if (setgid(65533) < 0 || setuid(65533) < 0)
            _exit(10);
        char e[256] = "";
        tk_shm_t *x = tk_shm_attach(name, 0, e, sizeof(e));
        if (x || !strstr(e, "permission denied"))
            rc = 11;
        /* the owner itself may read */
        _exit(rc);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (setgid(65534) < 0 || setuid(65534) < 0)
            _exit(10);
        char e[256] = "";
        tk_shm_t *x = tk_shm_attach(name, 0, e, sizeof(e));
        _exit(x ? 0 : 12);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    tk_shm_detach(m);
}

/* A second master with the same name is refused while the first lives. */
static void test_refuse_live(void **state)
{
    (void)state;
    char err[256] = "";
    tk_shm_t *m = tk_shm_create(name, 4, (uid_t)-1, (gid_t)-1, err, sizeof(err));
    assert_non_null(m);
    tk_shm_worker_started(m, 0, 4242, 1, 0);

    /* from a child, so the live master is another process */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char e[256] = "";
        char want[64];
        tk_shm_t *x = tk_shm_create(name, 4, (uid_t)-1, (gid_t)-1, e, sizeof(e));
        snprintf(want, sizeof(want), "master pid %d", (int)getppid());
        _exit(!x && strstr(e, "another tenkd") && strstr(e, want) ? 0 : 1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    /* and nothing was clobbered */
    assert_int_equal(tk_shm_worker(m, 0)->pid, 4242);
    assert_null(tk_shm_create(name, 4, (uid_t)-1, (gid_t)-1, err, sizeof(err)));
    assert_non_null(strstr(err, "another tenkd"));
    tk_shm_detach(m);
}

/* Fork a child that creates the segment and waits to be killed. Returns its pid
 * once the segment exists. */
static pid_t spawn_master(void)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        char e[256];
        tk_shm_t *m = tk_shm_create(name, 4, (uid_t)-1, (gid_t)-1, e, sizeof(e));
        if (!m)
            _exit(1);
        tk_shm_worker_started(m, 1, 777, 1, 1);
        if (write(p[1], "x", 1) != 1)
            _exit(2);
        for (;;)
            pause();
    }
    close(p[1]);
    char c;
    assert_int_equal(read(p[0], &c, 1), 1);
    close(p[0]);
    return pid;
}

static int proc_state(pid_t pid)
{
    char f[64], buf[512];
    snprintf(f, sizeof(f), "/proc/%d/stat", (int)pid);
    int fd = open(f, O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    return p ? p[2] : 0;
}

/* A segment left by a killed master is replaced, both once the master is gone
 * and while it is still an unreaped zombie. */
static void test_replace_stale(void **state)
{
    (void)state;
    char err[256] = "";
    for (int zombie = 0; zombie < 2; zombie++) {
        pid_t pid = spawn_master();
        tk_shm_t *r = tk_shm_attach(name, 0, err, sizeof(err));
        assert_non_null(r);
        assert_true(tk_shm_master_alive(r));
        assert_int_equal(tk_shm_header(r)->master_pid, pid);
        tk_shm_detach(r);
        assert_null(tk_shm_create(name, 4, (uid_t)-1, (gid_t)-1, err, sizeof(err)));

        kill(pid, SIGKILL);
        if (zombie) {
            uint64_t deadline = now_ns() + 2000000000ull;
            while (proc_state(pid) != 'Z')
                assert_true(now_ns() < deadline);
        } else
            assert_int_equal(waitpid(pid, NULL, 0), pid);

        r = tk_shm_attach(name, 0, err, sizeof(err));
        assert_non_null(r);
        assert_false(tk_shm_master_alive(r));
        tk_shm_detach(r);

        tk_shm_t *m = tk_shm_create(name, 4, (uid_t)-1, (gid_t)-1, err, sizeof(err));
        if (!m)
            print_error("%s\n", err);
        assert_non_null(m);
        assert_int_equal(tk_shm_header(m)->master_pid, getpid());
        assert_int_equal(tk_shm_worker(m, 1)->state, TK_SHM_W_EMPTY); /* a fresh table */
        tk_shm_detach(m);
        unlink(path);
        if (zombie)
            assert_int_equal(waitpid(pid, NULL, 0), pid);
    }

    /* a pid that is alive but belongs to another process (reused) is stale too */
    tk_shm_t *m = tk_shm_create(name, 4, (uid_t)-1, (gid_t)-1, err, sizeof(err));
    assert_non_null(m);
    tk_shm_header(m)->master_pid = 1; /* alive, but started long before us */
    assert_false(tk_shm_master_alive(m));
    tk_shm_detach(m);
    m = tk_shm_create(name, 4, (uid_t)-1, (gid_t)-1, err, sizeof(err));
    assert_non_null(m);
    tk_shm_detach(m);

    /* garbage (a creator that died before writing the header) is replaced */
    unlink(path);
    int fd = open(path, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "junk", 4), 4);
    close(fd);
    assert_null(tk_shm_attach(name, 0, err, sizeof(err)));
    assert_non_null(strstr(err, "not a tenk segment"));
    m = tk_shm_create(name, 4, (uid_t)-1, (gid_t)-1, err, sizeof(err));
    assert_non_null(m);
    tk_shm_detach(m);
}

/* A segment of another layout version (or different part sizes) is refused. */
static void test_version_mismatch(void **state)
{
    (void)state;
    char err[256] = "";
    tk_shm_t *m = tk_shm_create(name, 4, (uid_t)-1, (gid_t)-1, err, sizeof(err));
    assert_non_null(m);
    tk_shm_header(m)->layout_version = TK_SHM_LAYOUT_VERSION + 1;
    assert_null(tk_shm_attach(name, 0, err, sizeof(err)));
    assert_non_null(strstr(err, "layout version"));
    assert_int_equal(errno, EPROTO);
    /* ... and a live master of another version is still never clobbered */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char e[256];
        _exit(tk_shm_create(name, 4, (uid_t)-1, (gid_t)-1, e, sizeof(e)) ? 1 : 0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_int_equal(WEXITSTATUS(status), 0);

    tk_shm_header(m)->layout_version = TK_SHM_LAYOUT_VERSION;
    tk_shm_header(m)->metrics_size += 64;
    assert_null(tk_shm_attach(name, 0, err, sizeof(err)));
    assert_non_null(strstr(err, "sizes differ"));
    tk_shm_header(m)->metrics_size -= 64;
    tk_shm_t *r = tk_shm_attach(name, 1, err, sizeof(err));
    assert_non_null(r);
    tk_shm_detach(r);
    tk_shm_detach(m);
}

/* The master's worker table: start, run, reap, respawn into the same slot. */
static void test_worker_table(void **state)
{
    (void)state;
    char err[256];
    tk_shm_t *m = tk_shm_create(name, TK_SHM_SLOTS(2), (uid_t)-1, (gid_t)-1, err, sizeof(err));
    assert_non_null(m);
    assert_int_equal(tk_shm_nslots(m), 4);
    assert_string_equal(tk_shm_wstate_name(TK_SHM_W_DRAINING), "draining");

    for (unsigned i = 0; i < 4; i++) {
        int s = tk_shm_worker_find_free(m);
        assert_int_equal(s, (int)i);
        tk_shm_worker_started(m, (unsigned)s, 1000 + (pid_t)i, 1, i);
    }
    assert_int_equal(tk_shm_worker_find_free(m), -1);
    tk_shm_worker_sh_t *w = tk_shm_worker(m, 2);
    assert_int_equal(w->state, TK_SHM_W_STARTING);
    assert_int_equal(w->pid, 1002);
    assert_int_equal(w->generation, 1);
    assert_int_equal(w->index, 2);
    assert_int_equal(w->respawns, 0);
    assert_true(w->start_ns > 0);
    tk_shm_worker_set_state(m, 2, TK_SHM_W_RUNNING);
    assert_int_equal(w->state, TK_SHM_W_RUNNING);
    assert_int_equal(tk_shm_worker_by_pid(m, 1002), 2);
    assert_int_equal(tk_shm_worker_by_pid(m, 999), -1);

    /* its worker counted and held gauges */
    tk_shm_worker_bind(m, 2);
    tk_metrics_request(0, 200, 1000, 1, 1);
    tk_metrics_conns_set(3, 4);
    tk_metrics_set_accepting(1);
    tk_metrics_bind(NULL);

    /* it dies: reaped, gauges zeroed, counters kept, pid no longer matches */
    tk_shm_worker_reap(m, 2, 9); /* killed by SIGKILL */
    assert_int_equal(w->state, TK_SHM_W_DEAD);
    assert_int_equal(w->last_status, 9);
    assert_int_equal(tk_shm_worker_by_pid(m, 1002), -1);
    tk_metrics_snap_t s;
    assert_int_equal(tk_metrics_snapshot(tk_shm_metrics(m, 2), &s), 0);
    assert_int_equal(s.m.requests, 1);
    assert_int_equal(s.m.conns_active, 0);
    assert_int_equal(s.m.live.accepting, 0);

    /* the respawn reuses the slot; counts go on from where they were */
    assert_int_equal(tk_shm_worker_find_free(m), 2);
    tk_shm_worker_started(m, 2, 2002, 1, 2);
    assert_int_equal(w->respawns, 1);
    assert_int_equal(w->state, TK_SHM_W_STARTING);
    assert_int_equal(w->last_status, 9);
    tk_shm_worker_bind(m, 2);
    tk_metrics_request(0, 200, 1000, 1, 1);
    tk_metrics_bind(NULL);
    assert_int_equal(tk_metrics_snapshot(tk_shm_metrics(m, 2), &s), 0);
    assert_int_equal(s.m.requests, 2);
    assert_int_equal(s.m.binds, 2);

    /* the least-respawned dead slot is preferred */
    tk_shm_worker_reap(m, 2, 0);
    tk_shm_worker_reap(m, 3, 0);
    assert_int_equal(tk_shm_worker_find_free(m), 3);
    tk_shm_detach(m);
}

/* Two instances never share a segment. */
static void test_two_names(void **state)
{
    (void)state;
    char err[256], other[80], opath[128];
    snprintf(other, sizeof(other), "%s-b", name);
    tk_shm_path(other, opath, sizeof(opath));
    tk_shm_t *a = tk_shm_create(name, 2, (uid_t)-1, (gid_t)-1, err, sizeof(err));
    tk_shm_t *b = tk_shm_create(other, 2, (uid_t)-1, (gid_t)-1, err, sizeof(err));
    assert_non_null(a);
    assert_non_null(b);
    tk_shm_worker_bind(a, 0);
    tk_metrics_request(0, 200, 1, 0, 0);
    tk_metrics_bind(NULL);
    tk_shm_t *rb = tk_shm_attach(other, 0, err, sizeof(err));
    assert_non_null(rb);
    assert_int_equal(tk_shm_metrics(rb, 0)->requests, 0);
    assert_string_equal(tk_shm_header(rb)->name, other);
    tk_shm_detach(rb);
    tk_shm_detach(a);
    tk_shm_detach(b);
    unlink(opath);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_attach, setup, teardown),
        cmocka_unit_test_setup_teardown(test_permissions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuse_live, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replace_stale, setup, teardown),
        cmocka_unit_test_setup_teardown(test_version_mismatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_worker_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_names, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
