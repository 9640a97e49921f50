/* segment.c: create, attach and lay out the instance's shared-memory segment. */
#include "config.h"

#include "shm/segment.h"
#include "shm/procstat.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <limits.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

struct tk_shm {
    void *base;   /* mapping of the whole segment */
    size_t size;  /* its length */
    int writable; /* mapped PROT_WRITE */
    unsigned nslots;
    /* offsets of the parts, computed here from nslots: the header's copies
     * are writable by every worker, so the master never follows them */
    size_t worker_off, metrics_off, broker_off, dbview_off;
    uid_t owner; /* the file's owner, device and inode when it was mapped */
    dev_t dev;
    ino_t ino;
    char name[TK_SHM_NAME_MAX];
};

/* Byte layout of a segment with nslots slots. */
typedef struct {
    size_t worker_off, metrics_off, broker_off, dbview_off, total;
} tk_shm_layout_t;

#define TK_SHM_ALIGN(x, a) (((x) + (a)-1) & ~((size_t)(a)-1))

static void tk_shm_layout(unsigned nslots, tk_shm_layout_t *l)
{
    l->worker_off = TK_SHM_ALIGN(sizeof(tk_shm_header_sh_t), 4096);
    l->metrics_off = TK_SHM_ALIGN(l->worker_off + nslots * sizeof(tk_shm_worker_sh_t), 4096);
    l->broker_off = TK_SHM_ALIGN(l->metrics_off + nslots * sizeof(tk_metrics_sh_t), 4096);
    l->dbview_off = TK_SHM_ALIGN(l->broker_off + TK_DBVIEW_MAX * sizeof(tk_broker_sh_t), 4096);
    l->total = TK_SHM_ALIGN(l->dbview_off + sizeof(tk_dbview_sh_t), 4096);
}

static void tk_shm_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void tk_shm_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t tk_shm_realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

const char *tk_shm_wstate_name(tk_shm_wstate_t s)
{
    switch (s) {
    case TK_SHM_W_EMPTY:
        return "empty";
    case TK_SHM_W_STARTING:
        return "starting";
    case TK_SHM_W_RUNNING:
        return "running";
    case TK_SHM_W_DRAINING:
        return "draining";
    case TK_SHM_W_DEAD:
        return "dead";
    }
    return "?";
}

int tk_shm_path(const char *name, char *buf, size_t len)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n >= TK_SHM_NAME_MAX)
        return -1;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return -1;
    }
    if (name[0] == '.')
        return -1;
    int r = snprintf(buf, len, "/dev/shm/tenk-%s", name);
    return (r < 0 || (size_t)r >= len) ? -1 : 0;
}

/* Process state and start time (clock ticks since boot). 0, or -1 if the
 * process does not exist or can't be read. */
static int tk_shm_proc_stat(pid_t pid, char *state, uint64_t *start_ticks)
{
    tk_procstat_t ps;
    if (tk_procstat_read(pid, &ps) < 0)
        return -1;
    *state = ps.state;
    *start_ticks = ps.start_ticks;
    return 0;
}

/* Is the master recorded in a header prefix alive? A zombie, a vanished pid, a
 * pid reused by another process (different start time) and a header without a
 * start time (never written by a master: tk_shm_init() always records it) all
 * count as gone. */
static int tk_shm_pid_alive(pid_t pid, uint64_t start_ticks)
{
    if (pid <= 0 || start_ticks == 0)
        return 0;
    if (kill(pid, 0) < 0 && errno == ESRCH)
        return 0;
    char state;
    uint64_t st;
    if (tk_shm_proc_stat(pid, &state, &st) < 0)
        return 1; /* exists (kill said so) but /proc hides it: assume alive */
    if (state == 'Z' || state == 'X')
        return 0;
    if (st != start_ticks)
        return 0;
    return 1;
}

/* The file name of the program pid runs (/proc/PID/exe; pid 0: this one)
 * into buf. 0, or -1 with errno if the link can't be read (ENOENT: no such
 * process; EACCES: another user's, seen without privileges). */
static int tk_shm_pid_exe(pid_t pid, char *buf, size_t len)
{
    char path[64], exe[PATH_MAX];
    if (pid)
        snprintf(path, sizeof(path), "/proc/%d/exe", (int)pid);
    else
        snprintf(path, sizeof(path), "/proc/self/exe");
    ssize_t n = readlink(path, exe, sizeof(exe) - 1);
    if (n < 0)
        return -1;
    exe[n] = '\0';
    /* an upgraded binary shows as "/usr/sbin/tenkd (deleted)" */
    static const char del[] = " (deleted)";
    size_t l = (size_t)n;
    if (l > sizeof(del) - 1 && strcmp(exe + l - (sizeof(del) - 1), del) == 0)
        exe[l - (sizeof(del) - 1)] = '\0';
    const char *base = strrchr(exe, '/');
    snprintf(buf, len, "%s", base ? base + 1 : exe);
    return 0;
}

/* Does pid run a program named want (NULL: the same name as this process's,
 * for tenkd looking at another master)? 1 yes, 0 no, -1 if it can't be told. */
static int tk_shm_pid_runs(pid_t pid, const char *want)
{
    char exe[PATH_MAX], self[PATH_MAX];
    if (tk_shm_pid_exe(pid, exe, sizeof(exe)) < 0)
        return errno == ENOENT ? 0 : -1;
    if (!want) {
        if (tk_shm_pid_exe(0, self, sizeof(self)) < 0)
            return -1;
        want = self;
    }
    return strcmp(exe, want) == 0;
}

/* Does pid have the file dev:ino mapped (/proc/PID/maps)? 1, 0, or -1 if the
 * maps can't be read. A tenkd master maps only a segment it created itself. */
static int tk_shm_pid_maps(pid_t pid, dev_t dev, ino_t ino)
{
    char path[64], line[1024];
    snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    int found = 0;
    while (!found && fgets(line, sizeof(line), f)) {
        unsigned maj, min;
        unsigned long long inode;
        if (sscanf(line, "%*s %*s %*s %x:%x %llu", &maj, &min, &inode) == 3 &&
            makedev(maj, min) == dev && (ino_t)inode == ino)
            found = 1;
        /* a line longer than the buffer: skip its rest */
        while (!strchr(line, '\n') && fgets(line, sizeof(line), f))
            ;
    }
    fclose(f);
    return found;
}

/* "name" of uid, or "uid N" if it has none. */
static const char *tk_shm_user_name(uid_t uid, char *buf, size_t len)
{
    struct passwd pw, *res = NULL;
    char tmp[1024];
    if (getpwuid_r(uid, &pw, tmp, sizeof(tmp), &res) == 0 && res)
        snprintf(buf, len, "%s", res->pw_name);
    else
        snprintf(buf, len, "uid %u", (unsigned)uid);
    return buf;
}

/* Checks of tk_shm_trust(), see segment.h. */
static int tk_shm_verify(tk_shm_t *shm, int to_signal, pid_t *out, char *err, size_t errlen)
{
    tk_shm_header_sh_t *h = tk_shm_header(shm);
    pid_t pid = __atomic_load_n(&h->master_pid, __ATOMIC_ACQUIRE);
    uint64_t start = __atomic_load_n(&h->master_start_ticks, __ATOMIC_RELAXED);
    char path[128], who[64];
    tk_shm_path(shm->name, path, sizeof(path));
    tk_shm_user_name(shm->owner, who, sizeof(who));
    *out = pid;
    if (start == 0 || pid <= 1) {
        tk_shm_err(err, errlen,
                   "%s (owner %s) records master pid %d with no start time: no tenkd master "
                   "wrote that; refusing to trust it",
                   path, who, (int)pid);
        return -1;
    }
    tk_procstat_t ps;
    if (tk_procstat_read(pid, &ps) < 0 || ps.state == 'Z' || ps.state == 'X') {
        tk_shm_err(err, errlen,
                   "no tenk server named '%s' is running (master pid %d of %s is gone)", shm->name,
                   (int)pid, path);
        return -1;
    }
    if (ps.start_ticks != start) {
        tk_shm_err(err, errlen,
                   "pid %d started at tick %llu, not at %llu as %s (owner %s) records: it is not "
                   "that segment's master (a reused pid, or a forged file); refusing",
                   (int)pid, (unsigned long long)ps.start_ticks, (unsigned long long)start, path,
                   who);
        return -1;
    }
    int maps = tk_shm_pid_maps(pid, shm->dev, shm->ino);
    uid_t me = getuid();
    if (shm->owner != 0 && shm->owner != me && shm->owner != geteuid() && maps != 1) {
        tk_shm_err(err, errlen,
                   "%s is owned by %s, neither root nor you, and its recorded master pid %d does "
                   "not map it: refusing to trust it",
                   path, who, (int)pid);
        return -1;
    }
    if (!to_signal)
        return 0;
    int exe = tk_shm_pid_runs(pid, "tenkd");
    if (exe != 1 || maps != 1) {
        if (exe < 0 || maps < 0)
            tk_shm_err(err, errlen,
                       "can't verify that pid %d is the tenkd master of %s (/proc/%d is not "
                       "readable): run as its user or root",
                       (int)pid, path, (int)pid);
        else
            tk_shm_err(err, errlen,
                       "pid %d, recorded as the master in %s (owner %s), is %s: refusing to "
                       "signal it",
                       (int)pid, path, who,
                       exe != 1 ? "not a tenkd (/proc/PID/exe)" : "a tenkd that does not map it");
        return -1;
    }
    return 0;
}

int tk_shm_trust(tk_shm_t *shm, pid_t *master, char *err, size_t errlen)
{
    pid_t pid;
    int r = tk_shm_verify(shm, 0, &pid, err, errlen);
    if (master)
        *master = pid;
    return r;
}

int tk_shm_signal_master(tk_shm_t *shm, int sig, pid_t *master, char *err, size_t errlen)
{
    pid_t pid = __atomic_load_n(&tk_shm_header(shm)->master_pid, __ATOMIC_ACQUIRE);
    /* A pidfd names one process for good: verified after it is opened, the
     * signal can't reach a process that took the pid over in between. */
    int pfd = pid > 1 ? (int)syscall(SYS_pidfd_open, pid, 0) : -1;
    if (pfd < 0 && pid > 1 && errno != ENOSYS) {
        int e = errno;
        tk_shm_err(err, errlen, "no tenk server named '%s' is running (master pid %d: %s)",
                   shm->name, (int)pid, strerror(e));
        errno = ESRCH;
        return -1;
    }
    pid_t checked;
    if (tk_shm_verify(shm, 1, &checked, err, errlen) < 0 || checked != pid) {
        if (checked != pid)
            tk_shm_err(err, errlen, "the master pid of '%s' changed while being verified",
                       shm->name);
        if (pfd >= 0)
            close(pfd);
        errno = EPERM;
        return -2;
    }
    if (master)
        *master = pid;
    int r = pfd >= 0 ? (int)syscall(SYS_pidfd_send_signal, pfd, sig, NULL, 0) : kill(pid, sig);
    int e = errno;
    if (pfd >= 0)
        close(pfd);
    if (r < 0) {
        tk_shm_err(err, errlen, "signalling master pid %d failed: %s", (int)pid, strerror(e));
        errno = e;
        return -1;
    }
    return 0;
}

int tk_shm_master_alive(tk_shm_t *shm)
{
    tk_shm_header_sh_t *h = tk_shm_header(shm);
    return tk_shm_pid_alive(__atomic_load_n(&h->master_pid, __ATOMIC_ACQUIRE),
                            h->master_start_ticks);
}

/* Initialise a freshly created, zero-filled segment. */
static int tk_shm_init(void *base, unsigned nslots, unsigned db_max_open, const char *name,
                       char *err, size_t errlen)
{
    tk_shm_layout_t l;
    tk_shm_layout(nslots, &l);
    tk_shm_header_sh_t *h = base;
    h->nslots = nslots;
    h->header_size = sizeof(tk_shm_header_sh_t);
    h->worker_size = sizeof(tk_shm_worker_sh_t);
    h->metrics_size = sizeof(tk_metrics_sh_t);
    h->broker_size = sizeof(tk_broker_sh_t);
    h->worker_off = l.worker_off;
    h->metrics_off = l.metrics_off;
    h->broker_off = l.broker_off;
    h->dbview_size = sizeof(tk_dbview_sh_t);
    h->dbview_off = l.dbview_off;
    h->total_size = l.total;
    h->created_ns = tk_shm_realtime_ns();
    h->generation = 0;
    h->reload_ok = 1;
    snprintf(h->name, sizeof(h->name), "%s", name);
    for (unsigned i = 0; i < nslots; i++)
        ((tk_shm_worker_sh_t *)((char *)base + l.worker_off))[i].last_status = -1;
    for (unsigned i = 0; i < TK_DBVIEW_MAX; i++)
        if (tk_broker_sh_init((tk_broker_sh_t *)((char *)base + l.broker_off) + i, db_max_open) <
            0) {
            tk_shm_err(err, errlen, "initialising the database broker failed: %s", strerror(errno));
            return -1;
        }
    tk_dbview_init((tk_dbview_sh_t *)((char *)base + l.dbview_off), 1, NULL, 1000, 0);
    pid_t me = getpid();
    char state;
    uint64_t st = 0;
    if (tk_shm_proc_stat(me, &state, &st) < 0)
        st = 0;
    h->master_start_ticks = st;
    __atomic_store_n(&h->master_pid, (int32_t)me, __ATOMIC_RELAXED);
    h->layout_version = TK_SHM_LAYOUT_VERSION;
    /* magic last: a reader that sees it sees a complete header */
    __atomic_store_n(&h->magic, TK_SHM_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

tk_shm_t *tk_shm_create_ex(const char *name, unsigned nslots, unsigned db_max_open, uid_t uid,
                           gid_t gid, char *err, size_t errlen)
{
    char path[128];
    if (tk_shm_path(name, path, sizeof(path)) < 0) {
        tk_shm_err(err, errlen,
                   "invalid instance name '%s': 1..%d characters of [A-Za-z0-9._-], not "
                   "starting with '.'",
                   name ? name : "", TK_SHM_NAME_MAX - 1);
        return NULL;
    }
    if (nslots == 0 || nslots > TK_SHM_MAX_SLOTS)
        nslots = TK_SHM_MAX_SLOTS;
    tk_shm_layout_t l;
    tk_shm_layout(nslots, &l);

    /* Every step that decides about an existing file holds its flock: two
     * masters starting at once serialise here, and the inode check after
     * locking notices a file that was replaced while we waited. */
    for (int attempt = 0; attempt < 8; attempt++) {
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd >= 0) {
            if (flock(fd, LOCK_EX) < 0 || fchmod(fd, 0600) < 0 ||
                ((uid != (uid_t)-1 || gid != (gid_t)-1) && fchown(fd, uid, gid) < 0) ||
                ftruncate(fd, (off_t)l.total) < 0) {
                int e = errno;
                unlink(path);
                close(fd);
                tk_shm_err(err, errlen, "preparing %s failed: %s", path, strerror(e));
                return NULL;
            }
            void *base = mmap(NULL, l.total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (base == MAP_FAILED) {
                int e = errno;
                unlink(path);
                close(fd);
                tk_shm_err(err, errlen, "mmap() of %s (%zu bytes) failed: %s", path, l.total,
                           strerror(e));
                return NULL;
            }
            if (tk_shm_init(base, nslots, db_max_open ? db_max_open : 25, name, err, errlen) < 0) {
                munmap(base, l.total);
                unlink(path);
                close(fd);
                return NULL;
            }
            struct stat cst;
            if (fstat(fd, &cst) < 0)
                memset(&cst, 0, sizeof(cst));
            /* unlock explicitly: the mapping keeps the open file description
             * (and so its flock) alive after close() */
            flock(fd, LOCK_UN);
            close(fd);
            tk_shm_t *shm = calloc(1, sizeof(*shm));
            if (!shm) {
                munmap(base, l.total);
                unlink(path);
                tk_shm_err(err, errlen, "out of memory");
                return NULL;
            }
            shm->base = base;
            shm->size = l.total;
            shm->writable = 1;
            shm->nslots = nslots;
            shm->worker_off = l.worker_off;
            shm->metrics_off = l.metrics_off;
            shm->broker_off = l.broker_off;
            shm->dbview_off = l.dbview_off;
            shm->owner = cst.st_uid;
            shm->dev = cst.st_dev;
            shm->ino = cst.st_ino;
            snprintf(shm->name, sizeof(shm->name), "%s", name);
            return shm;
        }
        if (errno != EEXIST) {
            tk_shm_err(err, errlen, "creating %s failed: %s", path, strerror(errno));
            return NULL;
        }

        /* It exists: whose is it? (O_NONBLOCK: a FIFO planted there must not
         * hold the start-up) */
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        if (fd < 0) {
            if (errno == ENOENT)
                continue; /* vanished meanwhile: try again */
            tk_shm_err(err, errlen, "%s exists and can't be opened: %s", path, strerror(errno));
            return NULL;
        }
        struct stat fst, pst;
        if (fstat(fd, &fst) < 0) {
            tk_shm_err(err, errlen, "fstat() of %s failed: %s", path, strerror(errno));
            close(fd);
            return NULL;
        }
        /* Only a segment of ours (this process's user or the one it hands
         * the segment to) is ever read, replaced or removed: anyone else's
         * may be bait, and deciding on its contents would let its owner
         * steer us. */
        uid_t me = geteuid();
        if (!S_ISREG(fst.st_mode) ||
            (fst.st_uid != me && (uid == (uid_t)-1 || fst.st_uid != uid))) {
            char who[64], us[64];
            tk_shm_user_name(fst.st_uid, who, sizeof(who));
            tk_shm_user_name(uid != (uid_t)-1 ? uid : me, us, sizeof(us));
            if (!S_ISREG(fst.st_mode))
                tk_shm_err(err, errlen,
                           "%s exists and is not a regular file (owner %s): remove it, or choose "
                           "another name",
                           path, who);
            else
                tk_shm_err(err, errlen,
                           "%s exists and is owned by %s, not by %s: tenkd never reuses or "
                           "removes a segment it does not own; remove it if it is not another "
                           "instance's, or choose another name",
                           path, who, us);
            close(fd);
            errno = EPERM;
            return NULL;
        }
        /* Its owner could hold the lock forever: wait a bounded time. */
        int locked = -1;
        for (int i = 0;
             i < 500 && (locked = flock(fd, LOCK_EX | LOCK_NB)) < 0 && errno == EWOULDBLOCK; i++) {
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
        }
        if (locked < 0) {
            tk_shm_err(err, errlen, "locking %s failed: %s", path,
                       errno == EWOULDBLOCK ? "held by another process for 5 s" : strerror(errno));
            close(fd);
            return NULL;
        }
        if (stat(path, &pst) < 0 || pst.st_ino != fst.st_ino || pst.st_dev != fst.st_dev) {
            close(fd); /* replaced while we waited for the lock */
            continue;
        }
        struct {
            uint64_t magic;
            uint32_t version;
            int32_t pid;
            uint64_t start_ticks;
        } pre;
        memset(&pre, 0, sizeof(pre));
        ssize_t n = pread(fd, &pre, sizeof(pre), 0);
        /* alive: the recorded pid runs, started when recorded, and is a
         * program of our name (or can't be told: another user's process) */
        if (n == (ssize_t)sizeof(pre) && pre.magic == TK_SHM_MAGIC &&
            tk_shm_pid_alive(pre.pid, pre.start_ticks) && tk_shm_pid_runs(pre.pid, NULL) != 0) {
            close(fd);
            tk_shm_err(err, errlen,
                       "another tenkd (master pid %d) is running with the name '%s' (%s); stop "
                       "it first or choose another name",
                       (int)pre.pid, name, path);
            errno = EEXIST;
            return NULL;
        }
        /* stale (its master is gone) or never initialised (its creator died
         * while holding the lock): replace it */
        if (unlink(path) < 0 && errno != ENOENT) {
            tk_shm_err(err, errlen, "removing the stale segment %s failed: %s", path,
                       strerror(errno));
            close(fd);
            return NULL;
        }
        close(fd);
    }
    tk_shm_err(err, errlen, "could not create %s: it kept reappearing", path);
    return NULL;
}

tk_shm_t *tk_shm_create(const char *name, unsigned nslots, uid_t uid, gid_t gid, char *err,
                        size_t errlen)
{
    return tk_shm_create_ex(name, nslots, 25, uid, gid, err, errlen);
}

tk_shm_t *tk_shm_attach(const char *name, int writable, char *err, size_t errlen)
{
    char path[128];
    if (tk_shm_path(name, path, sizeof(path)) < 0) {
        tk_shm_err(err, errlen, "invalid instance name '%s'", name ? name : "");
        return NULL;
    }
    int fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT)
            tk_shm_err(err, errlen, "no tenk server named '%s' is running (%s does not exist)",
                       name, path);
        else if (e == EACCES || e == EPERM) {
            struct stat st;
            if (stat(path, &st) == 0)
                tk_shm_err(err, errlen,
                           "permission denied reading %s (owned by uid %u, mode %03o): run as "
                           "that user or root",
                           path, (unsigned)st.st_uid, (unsigned)(st.st_mode & 0777));
            else
                tk_shm_err(err, errlen, "permission denied reading %s", path);
        } else
            tk_shm_err(err, errlen, "opening %s failed: %s", path, strerror(e));
        errno = e;
        return NULL;
    }
    struct stat st;
    tk_shm_header_sh_t h;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (size_t)st.st_size < sizeof(h) ||
        pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) || h.magic != TK_SHM_MAGIC) {
        close(fd);
        tk_shm_err(err, errlen, "%s is not a tenk segment (or is still being created)", path);
        errno = EINVAL;
        return NULL;
    }
    if (h.layout_version != TK_SHM_LAYOUT_VERSION) {
        close(fd);
        tk_shm_err(err, errlen,
                   "%s has shared-memory layout version %u but this program understands %u: use "
                   "the tenkctl/tenkd from the same build",
                   path, h.layout_version, TK_SHM_LAYOUT_VERSION);
        errno = EPROTO;
        return NULL;
    }
    tk_shm_layout_t l;
    tk_shm_layout(h.nslots, &l);
    if (h.nslots == 0 || h.nslots > TK_SHM_MAX_SLOTS ||
        h.header_size != sizeof(tk_shm_header_sh_t) ||
        h.worker_size != sizeof(tk_shm_worker_sh_t) || h.metrics_size != sizeof(tk_metrics_sh_t) ||
        h.broker_size != sizeof(tk_broker_sh_t) || h.worker_off != l.worker_off ||
        h.metrics_off != l.metrics_off || h.broker_off != l.broker_off || h.total_size != l.total ||
        h.dbview_size != sizeof(tk_dbview_sh_t) || h.dbview_off != l.dbview_off ||
        (uint64_t)st.st_size < l.total) {
        close(fd);
        tk_shm_err(err, errlen,
                   "%s has layout version %u but its part sizes differ from this build's "
                   "(header %u/%zu, worker %u/%zu, metrics %u/%zu, broker %u/%zu): use the "
                   "tenkctl/tenkd from the same build",
                   path, h.layout_version, h.header_size, sizeof(tk_shm_header_sh_t), h.worker_size,
                   sizeof(tk_shm_worker_sh_t), h.metrics_size, sizeof(tk_metrics_sh_t),
                   h.broker_size, sizeof(tk_broker_sh_t));
        errno = EPROTO;
        return NULL;
    }
    void *base =
        mmap(NULL, l.total, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (base == MAP_FAILED) {
        tk_shm_err(err, errlen, "mmap() of %s failed: %s", path, strerror(e));
        errno = e;
        return NULL;
    }
    tk_shm_t *shm = calloc(1, sizeof(*shm));
    if (!shm) {
        munmap(base, l.total);
        tk_shm_err(err, errlen, "out of memory");
        return NULL;
    }
    shm->base = base;
    shm->size = l.total;
    shm->writable = writable;
    shm->nslots = h.nslots;
    shm->worker_off = l.worker_off;
    shm->metrics_off = l.metrics_off;
    shm->broker_off = l.broker_off;
    shm->dbview_off = l.dbview_off;
    shm->owner = st.st_uid;
    shm->dev = st.st_dev;
    shm->ino = st.st_ino;
    snprintf(shm->name, sizeof(shm->name), "%s", name);
    return shm;
}

void tk_shm_detach(tk_shm_t *shm)
{
    if (!shm)
        return;
    munmap(shm->base, shm->size);
    free(shm);
}

int tk_shm_unlink(const char *name)
{
    char path[128];
    if (tk_shm_path(name, path, sizeof(path)) < 0) {
        errno = EINVAL;
        return -1;
    }
    return unlink(path);
}

tk_shm_header_sh_t *tk_shm_header(tk_shm_t *shm)
{
    return shm->base;
}
unsigned tk_shm_nslots(const tk_shm_t *shm)
{
    return shm->nslots;
}
void *tk_shm_base(tk_shm_t *shm)
{
    return shm->base;
}
int tk_shm_writable(const tk_shm_t *shm)
{
    return shm->writable;
}

tk_shm_worker_sh_t *tk_shm_worker(tk_shm_t *shm, unsigned slot)
{
    if (slot >= shm->nslots)
        return NULL;
    return (tk_shm_worker_sh_t *)((char *)shm->base + shm->worker_off) + slot;
}

tk_metrics_sh_t *tk_shm_metrics(tk_shm_t *shm, unsigned slot)
{
    if (slot >= shm->nslots)
        return NULL;
    return (tk_metrics_sh_t *)((char *)shm->base + shm->metrics_off) + slot;
}

tk_broker_sh_t *tk_shm_broker(tk_shm_t *shm)
{
    return (tk_broker_sh_t *)((char *)shm->base + shm->broker_off);
}

tk_broker_sh_t *tk_shm_broker_be(tk_shm_t *shm, unsigned i)
{
    if (i >= TK_DBVIEW_MAX)
        return NULL;
    return (tk_broker_sh_t *)((char *)shm->base + shm->broker_off) + i;
}

tk_dbview_sh_t *tk_shm_dbview(tk_shm_t *shm)
{
    return (tk_dbview_sh_t *)((char *)shm->base + shm->dbview_off);
}

/* --- master side -------------------------------------------------------------------- */

void tk_shm_set_conf(tk_shm_t *shm, const char *conf_path, unsigned workers)
{
    tk_shm_header_sh_t *h = tk_shm_header(shm);
    snprintf(h->conf_path, sizeof(h->conf_path), "%s", conf_path ? conf_path : "");
    __atomic_store_n(&h->workers, workers, __ATOMIC_RELEASE);
}

void tk_shm_set_generation(tk_shm_t *shm, uint64_t generation)
{
    __atomic_store_n(&tk_shm_header(shm)->generation, generation, __ATOMIC_RELEASE);
}

void tk_shm_reload_done(tk_shm_t *shm, int ok, const char *error)
{
    tk_shm_header_sh_t *h = tk_shm_header(shm);
    snprintf(h->reload_error, sizeof(h->reload_error), "%s", (!ok && error) ? error : "");
    __atomic_store_n(&h->reload_ok, ok ? 1u : 0u, __ATOMIC_RELAXED);
    /* bumped last: tenkctl waits for it, then reads ok and the message */
    __atomic_add_fetch(&h->reload_seq, 1, __ATOMIC_RELEASE);
}

void tk_shm_set_stopping(tk_shm_t *shm)
{
    __atomic_store_n(&tk_shm_header(shm)->stopping, 1u, __ATOMIC_RELEASE);
}

void tk_shm_set_lame_duck(tk_shm_t *shm, int on)
{
    __atomic_store_n(&tk_shm_header(shm)->lame_duck, on ? 1u : 0u, __ATOMIC_RELEASE);
}

int tk_shm_lame_duck(tk_shm_t *shm)
{
    return __atomic_load_n(&tk_shm_header(shm)->lame_duck, __ATOMIC_ACQUIRE) != 0;
}

int tk_shm_worker_find_free(tk_shm_t *shm)
{
    int dead = -1;
    for (unsigned i = 0; i < shm->nslots; i++) {
        tk_shm_worker_sh_t *w = tk_shm_worker(shm, i);
        uint32_t s = __atomic_load_n(&w->state, __ATOMIC_ACQUIRE);
        if (s == TK_SHM_W_EMPTY)
            return (int)i;
        if (s == TK_SHM_W_DEAD &&
            (dead < 0 || w->respawns < tk_shm_worker(shm, (unsigned)dead)->respawns))
            dead = (int)i;
    }
    return dead;
}

void tk_shm_worker_started(tk_shm_t *shm, unsigned slot, pid_t pid, uint64_t generation,
                           unsigned index)
{
    tk_shm_worker_sh_t *w = tk_shm_worker(shm, slot);
    if (!w)
        return;
    if (w->state == TK_SHM_W_DEAD)
        w->respawns++;
    __atomic_store_n(&w->pid, (int32_t)pid, __ATOMIC_RELAXED);
    w->generation = generation;
    w->start_ns = tk_shm_realtime_ns();
    w->index = index;
    __atomic_store_n(&w->state, (uint32_t)TK_SHM_W_STARTING, __ATOMIC_RELEASE);
}

void tk_shm_worker_set_state(tk_shm_t *shm, unsigned slot, tk_shm_wstate_t state)
{
    tk_shm_worker_sh_t *w = tk_shm_worker(shm, slot);
    if (w)
        __atomic_store_n(&w->state, (uint32_t)state, __ATOMIC_RELEASE);
}

int tk_shm_worker_by_pid(tk_shm_t *shm, pid_t pid)
{
    for (unsigned i = 0; i < shm->nslots; i++) {
        tk_shm_worker_sh_t *w = tk_shm_worker(shm, i);
        uint32_t s = __atomic_load_n(&w->state, __ATOMIC_ACQUIRE);
        if (s != TK_SHM_W_EMPTY && s != TK_SHM_W_DEAD && w->pid == (int32_t)pid)
            return (int)i;
    }
    return -1;
}

void tk_shm_worker_reap(tk_shm_t *shm, unsigned slot, int status)
{
    tk_shm_worker_sh_t *w = tk_shm_worker(shm, slot);
    if (!w)
        return;
    tk_metrics_reap(tk_shm_metrics(shm, slot));
    w->last_status = status;
    __atomic_store_n(&w->state, (uint32_t)TK_SHM_W_DEAD, __ATOMIC_RELEASE);
}

/* --- worker side -------------------------------------------------------------------- */

int tk_shm_worker_bind(tk_shm_t *shm, unsigned slot)
{
    tk_metrics_sh_t *m = tk_shm_metrics(shm, slot);
    if (!m)
        return -1;
    tk_metrics_bind(m);
    return 0;
}
