"""Trust boundaries: a shared-memory segment owned by another user or with a forged master pid
(tenkd refuses to start, tenkctl refuses to read or signal), the admin token on every admin-only
route (read from admin.c's route table), the test endpoints off by default, and a stand-in for
a worker's thread-dump socket."""
import json
import os
import pwd
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading

from tenkharness import (SRCDIR, TENK_DB, TENK_REDIS, TENKD, TENKCTL, Tenkd, need_db, need_redis,
                         skip, wait_until)

# tk_shm_header_sh_t's stable prefix: magic u64, layout_version u32, master_pid i32,
# master_start_ticks u64
PID_OFF, TICKS_OFF = 12, 16
TOKEN = "tok-trust-5b1e"


def shm_path(name):
    return "/dev/shm/tenk-%s" % name


def start_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])  # field 22


def other_user():
    """A uid other than ours to own planted files: nobody (tests run as root), or skip."""
    if os.geteuid() != 0:
        skip("needs root to create a file owned by another user")
    for name in ("nobody", "tenkdev"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    skip("no 'nobody' user")


def plant(src_name, dst_name, owner=None, pid=None, ticks=None):
    """Copy a live instance's segment to another name, optionally chowned and with the
    master pid / start time rewritten: a forged segment that passes every layout check."""
    dst = shm_path(dst_name)
    shutil.copyfile(shm_path(src_name), dst)
    os.chmod(dst, 0o600)
    with open(dst, "r+b") as f:
        if pid is not None:
            f.seek(PID_OFF)
            f.write(struct.pack("<i", pid))
        if ticks is not None:
            f.seek(TICKS_OFF)
            f.write(struct.pack("<Q", ticks))
    if owner is not None:
        os.chown(dst, owner.pw_uid, owner.pw_gid)
    return dst


def ctl(name, *args):
    return subprocess.run([TENKCTL, "-n", name] + list(args), capture_output=True, text=True,
                          timeout=30)


def test_segment_of_another_user_is_refused():
    nobody = other_user()
    with Tenkd(workers=1, db="", redis="") as real:
        name = real.name + "-foreign"
        path = plant(real.name, name, owner=nobody)
        try:
            # tenkctl: the copy names a live tenkd master, but the file is nobody's and that
            # master does not map it
            for cmd in (["status"], ["stats"], ["stop"], ["reload"]):
                r = ctl(name, *cmd)
                assert r.returncode != 0, (cmd, r.stdout)
                assert "owned by nobody" in r.stderr and path in r.stderr, (cmd, r.stderr)
            assert real.proc.poll() is None
            # tenkd: refuses to start, names the file and its owner, and leaves it alone
            t = Tenkd(workers=1, db="", redis="", name=name, wait=False)
            t.start()
            try:
                t.proc.wait(15)
                assert t.proc.returncode != 0
                log = t.log()
                assert path in log and "owned by nobody" in log, log[-2000:]
            finally:
                t.proc.kill() if t.proc.poll() is None else None
                t._log.close()
            st = os.stat(path)
            assert st.st_uid == nobody.pw_uid
            # the same file owned by us is ours to replace: its master is not alive for it
        finally:
            os.unlink(path)
        assert real.request("GET", "/health")[0] == 200


def test_forged_master_pid_is_never_signalled():
    with Tenkd(workers=1, db="", redis="") as real:
        sleeper = subprocess.Popen(["sleep", "300"])
        name = real.name + "-forged"
        try:
            cases = [
                ("no start time", sleeper.pid, 0, "stale"),  # refused as not alive
                ("a sleep, right start time", sleeper.pid, start_ticks(sleeper.pid), "not a tenkd"),
                ("another tenkd", real.proc.pid, start_ticks(real.proc.pid), "does not map it"),
                ("wrong start time", real.proc.pid, start_ticks(real.proc.pid) + 1, "stale"),
            ]
            for what, pid, ticks, why in cases:
                plant(real.name, name, pid=pid, ticks=ticks)
                for cmd in (["stop"], ["reload"]):
                    r = ctl(name, *cmd)
                    assert r.returncode != 0, (what, cmd, r.stdout)
                    assert why in r.stderr, (what, cmd, r.stderr)
                assert sleeper.poll() is None, what
                assert real.proc.poll() is None, what
                # the real instance's own segment is still trusted
                assert real.ctl("status").returncode == 0
        finally:
            sleeper.kill()
            sleeper.wait()
            try:
                os.unlink(shm_path(name))
            except OSError:
                pass
        # and the real master is still stoppable through tenkctl
        r = real.ctl("stop")
        assert r.returncode == 0, r.stderr


def admin_routes():
    """(method, path, open, test) for every row of admin.c's admin_routes table."""
    with open(os.path.join(SRCDIR, "handlers", "admin.c")) as f:
        src = f.read()
    table = src[src.index("admin_routes[] = {"):]
    table = table[:table.index("};")]
    rows = re.findall(r'\{"(GET|POST)", "(/[^"]*)", \w+, (\w+)\}', table)
    assert len(rows) >= 7, rows
    return [(m, p, "OPEN" in fl, "TEST" in fl) for m, p, fl in rows]


def test_admin_token_on_every_admin_route():
    routes = admin_routes()
    with Tenkd(workers=2, admin=True, db="", redis="", conf="[admin]\ntoken = %s\n" % TOKEN) as t:
        for method, path, is_open, _ in routes:
            body = b"hi" if method == "POST" else None
            st, h, _ = t.request(method, path, body=body, port=t.admin_port)
            if is_open:
                assert st == 200, (path, st)
                continue
            assert st == 401, (method, path, st)
            assert h.get("www-authenticate", "").startswith("Bearer"), (path, h)
            st, _, _ = t.request(method, path, body=body, port=t.admin_port,
                                 headers={"Authorization": "Bearer " + TOKEN + "x"})
            assert st == 401, (method, path, st)
            st, _, got = t.request(method, path, body=body, port=t.admin_port,
                                   headers={"Authorization": "Bearer " + TOKEN})
            assert st == 200, (method, path, st, got[:200])


def test_debug_endpoints_off_by_default():
    tests = [(m, p) for m, p, _, is_test in admin_routes() if is_test]
    assert ("POST", "/debug/echo") in tests and ("GET", "/debug/stream") in tests
    with Tenkd(workers=1, admin=True, db="", redis="", debug_endpoints=False) as t:
        for method, path in tests:
            st, _, body = t.request(method, path, body=b"x" if method == "POST" else None,
                                    port=t.admin_port)
            assert st == 404, (path, st, body)
        assert t.request("GET", "/metrics", port=t.admin_port)[0] == 200
    # tenkd -t checks the setting
    conf = os.path.join(tempfile.mkdtemp(prefix="tenk-it-"), "check.conf")
    for value, ok in (("on", True), ("off", True), ("maybe", False)):
        with open(conf, "w") as f:
            f.write("[admin]\ndebug_endpoints = %s\n" % value)
        r = subprocess.run([TENKD, "-t", "-c", conf], capture_output=True, text=True, timeout=30)
        assert (r.returncode == 0) == ok, (value, r.returncode, r.stdout, r.stderr)
        if not ok:
            assert "debug_endpoints" in r.stdout + r.stderr


class StandIn:
    """Listens on abstract names @tenk-gt-PID for a range of pids not yet used, and answers
    every connection with garbage followed by a huge reply."""

    def __init__(self, pids):
        self.socks = {}
        self.sel = selectors.DefaultSelector()
        for pid in pids:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.bind(b"\0tenk-gt-%d" % pid)
            except OSError:
                s.close()
                continue
            s.listen(8)
            s.setblocking(False)
            self.socks[s.fileno()] = (pid, s)
            self.sel.register(s, selectors.EVENT_READ)
        self.accepted = []
        self.stop = False
        self.th = threading.Thread(target=self.run, daemon=True)
        self.th.start()

    def run(self):
        junk = b"garbage {\"id\":1}]}\0" + b"x" * (48 << 20)
        while not self.stop:
            for key, _ in self.sel.select(0.1):
                pid, s = self.socks[key.fd]
                try:
                    c, _ = s.accept()
                except OSError:
                    continue
                self.accepted.append(pid)
                c.settimeout(5)
                try:
                    c.sendall(junk)
                except OSError:
                    pass
                c.close()

    def close(self):
        self.stop = True
        self.th.join(5)
        for _, s in self.socks.values():
            s.close()
        self.sel.close()


def test_thread_dump_socket_stand_in():
    with Tenkd(workers=2, admin=True, db="", redis="") as t:
        wait_until(lambda: len(t.worker_pids()) == 2, 10, "two workers")
        pids = t.worker_pids()
        # after: a local process (same uid, not a worker) asking a worker's socket gets nothing
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(5)

        def connected():
            try:
                c.connect(b"\0tenk-gt-%d" % pids[0])
                return True
            except ConnectionRefusedError:  # that worker is still starting
                return False
        wait_until(connected, 10, "worker %d's thread-dump socket" % pids[0])
        try:
            c.sendall(b"threads 0\n")
            got = c.recv(65536)
        except (BrokenPipeError, ConnectionResetError):  # closed on us, line unread
            got = b""
        assert got == b"", got[:200]
        c.close()

        # before: the next pids' names are taken, then a worker is killed; its successor
        # finds its name held by the stand-in
        with open("/proc/sys/kernel/ns_last_pid") as f:
            last = int(f.read())
        stand_in = StandIn(range(last + 1, last + 1500))
        try:
            victim = pids[1]
            os.kill(victim, signal.SIGKILL)
            got = {}

            def respawned():
                now = t.worker_pids()
                fresh = [p for p in now if p not in pids]
                if len(now) == 2 and fresh:
                    got["pid"] = fresh[0]
                    return True
                return False
            wait_until(respawned, 10, "a respawned worker")
            new = got["pid"]
            if not any(p == new for p, _ in stand_in.socks.values()):
                skip("the respawned worker's pid %d was outside the names taken" % new)
            wait_until(lambda: t.request("GET", "/health")[0] == 200, 10, "service")
            wait_until(lambda: ("@tenk-gt-%d failed" % new) in t.log(), 10, "the bind() failure logged")

            seen = {}

            def asked_impostor():
                st, _, body = t.request("GET", "/debug/threads", port=t.admin_port, timeout=15)
                assert st == 200, st
                assert len(body) < (1 << 20), len(body)
                d = json.loads(body)
                for w in d["workers"]:
                    if w["pid"] == new and "error" in w:
                        seen["d"] = d
                        return True
                return False
            wait_until(asked_impostor, 20, "a /debug/threads answered by the other worker")
            d = seen["d"]
            bad = [w for w in d["workers"] if w["pid"] == new][0]
            assert "not by that worker" in bad["error"], bad
            assert bad["threads"] == 0
            good = [w for w in d["workers"] if w["pid"] == pids[0]][0]
            assert "error" not in good and good["threads"] >= 1, d["workers"]
            assert all(th["pid"] == pids[0] for th in d["threads"]), d["threads"]
            assert "not by that worker" in t.log()
            wait_until(lambda: new in stand_in.accepted, 10, "the stand-in to be asked")
            # nothing crashed
            assert sorted(t.worker_pids()) == sorted([pids[0], new])
            assert t.request("GET", "/health")[0] == 200
        finally:
            stand_in.close()


def test_host_names_resolved_by_the_master_only():
    """Names in db.conninfo / redis.addr are resolved once by the master (tenkd -t and start-up
    refuse one that does not resolve, naming the setting); the workers get addresses."""
    conf = os.path.join(tempfile.mkdtemp(prefix="tenk-it-"), "check.conf")
    for text, want in (("[db]\nconninfo = host=no-such-host.invalid dbname=tenk\n", "hostaddr"),
                       ("[redis]\naddr = no-such-host.invalid:6379\n", "IP address")):
        with open(conf, "w") as f:
            f.write(text)
        r = subprocess.run([TENKD, "-t", "-c", conf], capture_output=True, text=True, timeout=30)
        out = r.stdout + r.stderr
        assert r.returncode != 0 and "no-such-host.invalid" in out and want in out, (text, out)
    need_db()
    need_redis()
    port = re.search(r"port=(\d+)", TENK_DB)
    if not port:
        skip("TENK_DB has no port")
    db = "host=localhost " + re.sub(r"host=\S+", "", TENK_DB)
    redis = "localhost:%s" % TENK_REDIS.rsplit(":", 1)[1]
    with Tenkd(workers=1, admin=True, db=db, redis=redis) as t:
        st, _, body = t.request("GET", "/db")
        assert st == 200, (st, body)
        for _ in range(2):  # a miss, then a hit: both through the resolved Redis address
            assert t.request("GET", "/users/1")[0] in (200, 404)
        wait_until(lambda: t.get_json("/debug/stats", port=t.admin_port)[1]["cache"]["connected"] >= 1,
                   10, "the cache client connected")
