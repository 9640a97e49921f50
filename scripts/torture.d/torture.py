#!/usr/bin/env python3
"""torture.py: tenk's reliability and security cases (driven by scripts/torture).

Every case starts its own tenkd (tests/integration/tenkharness.Tenkd) on a free
127.0.0.1 port, runs a bounded load with scripts/torture.d/load.py while it
does something hostile, counts every failure, and ends by checking that the
server is healthy: /health answers, `tenkctl status` shows every worker
running, `tenkctl stats` is consistent, the broker holds no slot or queue
entry, and (where it applies) fds, green threads and RSS are back to their
baseline. A case raises AssertionError on a violated bar and returns a dict
of numbers otherwise.

Destructive cases (pg, redis) run against PostgreSQL and Redis instances of
their own (scripts/torture.d/services.py), never the devenv's.
"""
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))
sys.path.insert(0, HERE)

import tenkharness as th  # noqa: E402
from tenkharness import Tenkd, wait_until  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- helpers

def say(msg):
    sys.stderr.write("torture: %s\n" % msg)
    sys.stderr.flush()


def raise_nofile(n=65536):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, n), max(hard, n)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def load(port, duration, conns=8, mode="keepalive", paths=("/json",), allow=(), interval=0,
         events=False, timeout=10, seed=1):
    """Start load.py in the background -> Popen (collect with finish())."""
    cmd = [sys.executable, os.path.join(HERE, "load.py"), "--port", str(port), "--duration",
           str(duration), "--conns", str(conns), "--mode", mode, "--timeout", str(timeout),
           "--seed", str(seed)]
    for p in paths:
        cmd += ["--path", p]
    for a in allow:
        cmd += ["--allow", str(a)]
    if interval:
        cmd += ["--interval", str(interval)]
    if events:
        cmd.append("--events")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def finish(p, timeout=120):
    out, _ = p.communicate(timeout=timeout)
    if p.returncode != 0 or not out.strip():
        raise AssertionError("load client exited %s" % p.returncode)
    return json.loads(out)


def ctl_json(t, *args):
    r = t.ctl(*(list(args) + ["--json"]))
    if r.returncode != 0:
        raise AssertionError("tenkctl %s failed (%d): %s%s" % (" ".join(args), r.returncode, r.stdout, r.stderr))
    return json.loads(r.stdout)


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def nfds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


def port_inodes(port):
    """Socket inodes of established/closing TCP connections whose local port is port."""
    inodes = set()
    for tab in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(tab) as f:
                next(f)
                for ln in f:
                    x = ln.split()
                    if int(x[1].rsplit(":", 1)[1], 16) == port and x[3] != "0A":  # 0A: LISTEN
                        inodes.add(x[9])
        except OSError:
            pass
    return inodes


def conn_fds(pid, port):
    """How many of pid's fds are client connections accepted on port."""
    ino = port_inodes(port)
    n = 0
    try:
        for f in os.listdir("/proc/%d/fd" % pid):
            try:
                link = os.readlink("/proc/%d/fd/%s" % (pid, f))
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in ino:
                n += 1
    except OSError:
        return -1
    return n


def snapshot(t):
    """What must return to baseline: per-worker fds (client connections apart) and RSS,
    green threads, broker use."""
    pids = sorted(t.worker_pids())
    snap = {"pids": pids, "fds": {p: nfds(p) for p in pids}, "conn_fds": {p: conn_fds(p, t.port) for p in pids},
            "rss_kb": {p: th.rss_kb(p) for p in pids}}
    thr = ctl_json(t, "threads")
    snap["threads"] = thr.get("threads", 0)
    if t.db:
        db = ctl_json(t, "db")
        snap["db_in_use"], snap["db_waiting"] = db["in_use"], db["waiting"]
        snap["db_open"] = {w["pid"]: w["open"] for w in db.get("workers", []) if w["pid"] in pids}
    return snap


def healthy(t, workers=None, db=True):
    """The end-of-case bar: serving, every worker running, stats consistent, broker empty."""
    workers = workers or t.workers
    st, _, body = t.request("GET", "/health")
    assert st == 200 and body == b'{"status":"ok"}', (st, body)

    def status_clean():
        s = ctl_json(t, "status")
        cur = [w for w in s["workers"] if w["generation"] == s["generation"]]
        # older generations' slots stay listed as "dead" (history); none may be draining still
        old_live = [w for w in s["workers"] if w["generation"] != s["generation"] and w["state"] != "dead"]
        return (s["workers_running"] == workers and not s["stopping"] and len(cur) == workers
                and not old_live and all(w["state"] == "running" and w["accepting"] for w in cur)) and s
    s = wait_until(status_clean, 10, "tenkctl status to show %d running workers" % workers)
    stats = wait_until(lambda: (lambda j: j if j.get("consistent") else None)(ctl_json(t, "stats")),
                       5, "tenkctl stats to be consistent")
    out = {"workers": [w["pid"] for w in s["workers"] if w["state"] == "running"], "requests_total": stats["requests_total"]}
    if db and t.db:
        def broker_empty():
            d = ctl_json(t, "db")
            return d["in_use"] == 0 and d["waiting"] == 0 and d
        d = wait_until(broker_empty, 5, "the broker to hold no slot in use and no waiter")
        assert d["open"] <= d["max_open"], d
        out["db"] = {k: d[k] for k in ("open", "in_use", "waiting", "waiting_high_water", "acquire_timeouts",
                                       "connect_errors")}
    return out


_SANITIZED = {}


def sanitized():
    """Whether tenkd is an ASan build (its quarantine keeps freed memory resident: RSS says nothing)."""
    if th.TENKD not in _SANITIZED:
        try:
            with open(th.TENKD, "rb") as f:
                _SANITIZED[th.TENKD] = b"__asan_init" in f.read()
        except OSError:
            _SANITIZED[th.TENKD] = False
    return _SANITIZED[th.TENKD]


def back_to_baseline(t, base, rss_slack=0.25, rss_abs_kb=4096):
    """fds, green threads and broker use back to base (polled); RSS within slack."""
    def same():
        now = snapshot(t)
        if now["pids"] != base["pids"]:
            raise AssertionError("worker pids changed: %s -> %s" % (base["pids"], now["pids"]))
        # client connections all gone; other fds may differ only by a lazily opened
        # PostgreSQL or Redis connection
        def extra_db(p):  # pooled PostgreSQL connections opened since the baseline
            return max(0, now.get("db_open", {}).get(p, 0) - base.get("db_open", {}).get(p, 0))
        ok = all(now["conn_fds"][p] <= base["conn_fds"][p] and now["fds"][p] <= base["fds"][p] + 1 + extra_db(p)
                 for p in base["pids"])
        ok = ok and now["threads"] <= base["threads"]
        ok = ok and now.get("db_in_use", 0) == 0 and now.get("db_waiting", 0) == 0
        return now if ok else None
    try:
        now = wait_until(same, 15, "fds/threads/broker back to baseline", interval=0.2)
    except AssertionError:
        raise AssertionError("not back to baseline: base %s now %s" % (base, snapshot(t)))
    for p in base["pids"] if not sanitized() else []:
        b, n = base["rss_kb"][p], now["rss_kb"][p]
        assert n <= b * (1 + rss_slack) + rss_abs_kb, "worker %d RSS %d kB -> %d kB" % (p, b, n)
    return now


def short_timeouts(quick):
    if quick:
        return "[timeouts]\nheader = 2s\nbody = 2s\nwrite = 2s\nkeepalive = 5s\n"
    return "[timeouts]\nheader = 5s\nbody = 5s\nwrite = 5s\nkeepalive = 15s\n"


def pct(vals, p):
    vals = sorted(vals)
    if not vals:
        return 0
    return vals[min(len(vals) - 1, int(round(p / 100.0 * (len(vals) - 1))))]


class Ctx:
    """Run-wide settings: quick or full, the devenv services, our own services."""

    def __init__(self, quick=True, keep_services=False, short=False, shared=False):
        self.quick = quick or short
        self.short = short  # the integration suite's form: shorter still
        # Every case runs against private PostgreSQL/Redis instances: the devenv's are
        # shared, and other test runs lock tables and terminate backends there (a
        # test_broker run's "lock table world; pg_sleep(30)" turned into 503s here).
        self.shared = shared
        self._services = None
        self.keep_services = keep_services

    @property
    def db(self):
        return th.TENK_DB if self.shared else self.services().conninfo

    @property
    def redis(self):
        return th.TENK_REDIS if self.shared else self.services().redis_addr

    def pick(self, full, quick, short):
        return short if self.short else quick if self.quick else full

    def services(self):
        """Our own PostgreSQL + Redis (for cases that stop them)."""
        if self._services is None:
            import services
            self._services = services.Services()
            self._services.up()
        return self._services

    def close(self):
        if self._services is not None and not self.keep_services:
            self._services.down()


# --------------------------------------------------------------------------- cases

def case_kill9(ctx):
    """kill -9 of a random worker every 2 s under load; only in-flight requests may fail."""
    dur = ctx.pick(30, 10, 6)
    conns = 8
    paths = ["/json", "/health", "/db", "/users/{id}"] if ctx.db else ["/json", "/health"]
    with Tenkd(workers=2, db=ctx.db, redis=ctx.redis) as t:
        base = healthy(t)
        lp = load(t.port, dur + 1, conns=conns, mode="mixed", paths=paths)
        kills, killed = 0, []
        t0 = time.monotonic()
        rnd = random.Random(7)
        while time.monotonic() - t0 < dur:
            time.sleep(2)  # the cadence itself is what is under test
            pids = t.worker_pids()
            if not pids:
                continue
            victim = rnd.choice(pids)
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            kills += 1
            wait_until(lambda: len(t.worker_pids()) == 2 and victim not in t.worker_pids(), 2,
                       "a new worker after killing %d" % victim)
        r = finish(lp)
        end = healthy(t)
        assert not set(end["workers"]) & set(killed)
        # Only requests in flight on a killed worker may fail: at most one per client per kill,
        # and only as a reset/close (never a wrong status or body, never a connect error).
        bad = {k: v for k, v in r["fail"].items() if k not in ("reset", "closed")}
        assert not bad, "failures other than in-flight resets: %s %s" % (bad, r["samples"])
        assert r["failures"] <= kills * conns, "%d failures for %d kills x %d clients" % (
            r["failures"], kills, conns)
        restarts = sum(w["restarts"] for w in ctl_json(t, "status")["workers"])
        return {"duration_s": dur, "kills": kills, "requests": r["requests"], "failures": r["failures"],
                "fail": r["fail"], "p99_ms": r["p99_ms"], "restarts": restarts, "db": end.get("db"),
                "before_requests_total": base["requests_total"]}


def case_reload(ctx):
    """20 SIGHUP reloads under load (changed, unchanged and invalid files): zero failures."""
    n = 20
    with Tenkd(workers=2, db=ctx.db, redis=ctx.redis) as t:
        healthy(t)
        good = t.extra_conf
        gap = ctx.pick(2.5, 1.0, 0.5)  # one reload every gap seconds, all under load
        dur = n * gap + 4
        lps = [load(t.port, dur, conns=4, mode="keepalive", paths=["/json", "/health"], seed=1),
               load(t.port, dur, conns=4, mode="close", paths=["/json", "/plaintext"], seed=2)]
        time.sleep(1.5)  # the load is running before the first reload
        t_start = time.monotonic()
        done = {"ok": 0, "refused": 0}
        import re
        reloaded = lambda: len(re.findall(r"reloaded: generation \d+", t.log()))  # noqa: E731
        for i in range(n):
            kind = ("changed", "same", "invalid")[i % 3]
            if kind == "changed":
                t.write_conf(good + "\n[limits]\nmax_headers = %d\n" % (90 + i))
            elif kind == "same":
                t.write_conf(good)
            else:
                t.write_conf(good + "\n[limits]\nno_such_setting = 1\n")
            oks, refs = reloaded(), t.log().count("reload refused")
            t_sig = time.monotonic()
            t.signal(signal.SIGHUP)
            if kind == "invalid":
                wait_until(lambda: t.log().count("reload refused") > refs, 10, "reload %d refused" % i)
                done["refused"] += 1
            else:
                wait_until(lambda: reloaded() > oks, 15, "reload %d to complete" % i)
                done["ok"] += 1
            time.sleep(max(0.0, gap - (time.monotonic() - t_sig)))  # the schedule, not a wait
        reload_s = time.monotonic() - t_start
        rs = [finish(p, timeout=dur + 60) for p in lps]
        t.write_conf(good)
        end = healthy(t)
        fails = sum(r["failures"] for r in rs)
        assert fails == 0, "failed requests across reloads: %s" % [(r["fail"], r["samples"]) for r in rs]
        gen = ctl_json(t, "status")["generation"]
        return {"reloads": n, "completed": done["ok"], "refused": done["refused"],
                "reload_phase_s": round(reload_s, 1), "requests": sum(r["requests"] for r in rs),
                "failures": fails, "p99_ms": max(r["p99_ms"] for r in rs), "generation": gen,
                "db": end.get("db")}


def case_pg(ctx):
    """PostgreSQL stopped and started under load: 503s only while down, back within 2 s."""
    sv = ctx.services()
    down_s = 3
    with Tenkd(workers=2, db=sv.conninfo, redis="") as t:
        healthy(t)
        pre = 3
        dur = pre + down_s + 6
        lp = load(t.port, dur, conns=6, mode="keepalive", paths=["/db", "/queries?queries=3", "/json"],
                  allow=[503], events=True, timeout=5)
        time.sleep(pre)  # load against a healthy database first (a fixed schedule, not a wait)
        t_stop0 = time.time()
        sv.pg_stop()
        t_down = time.time()
        time.sleep(down_s)
        sv.pg_start()
        t_up = time.time()
        r = finish(lp, timeout=dur + 60)
        end = healthy(t)
        ev = r.pop("events")
        bad = [e for e in ev if e[1] != "503"]
        e503 = [e[0] for e in ev if e[1] == "503"]
        early = [x for x in e503 if x < t_stop0 - 0.05]
        # a 503 after PostgreSQL accepts again must end within 2 s
        late = [x for x in e503 if x > t_up + 2.0]
        assert not bad, "failures other than 503: %s %s" % (r["fail"], r["samples"])
        assert not early, "503 before the database stopped: %d" % len(early)
        last = max(e503) if e503 else t_up
        assert not late, "503s %.2f s after PostgreSQL was back" % (last - t_up)
        # after the window, requests succeed (and did: r counts ok)
        return {"down_s": round(t_up - t_down, 2), "requests": r["requests"], "ok": r["ok"],
                "503": len(e503), "failures": len(bad), "recovery_s": round(max(0.0, last - t_up), 3),
                "first_503_after_stop_s": round(min(e503) - t_stop0, 3) if e503 else None,
                "p99_ms": r["p99_ms"], "max_ms": r["max_ms"], "db": end.get("db")}


def case_redis(ctx):
    """Redis killed (-9) and restarted under load: zero 5xx on cached endpoints."""
    sv = ctx.services()
    with Tenkd(workers=2, db=sv.conninfo, redis=sv.redis_addr) as t:
        healthy(t)
        wait_until(lambda: t.request("GET", "/users/1")[1].get("x-cache") in ("hit", "miss"), 5,
                   "the cache to answer")
        dur = 12
        lp = load(t.port, dur, conns=6, mode="keepalive", paths=["/users/{id}", "/cached-queries?count=5"],
                  events=True)
        time.sleep(3)
        sv.redis_kill()
        time.sleep(3)
        sv.redis_start()
        r = finish(lp, timeout=dur + 60)
        r.pop("events")
        end = healthy(t)
        assert r["failures"] == 0, "failures on cached endpoints with Redis down: %s %s" % (r["fail"], r["samples"])
        # hits resume once Redis is back
        wait_until(lambda: any(t.request("GET", "/users/%d" % i)[1].get("x-cache") == "hit" for i in (1, 2, 3)),
                   10, "cache hits again after Redis restarted")
        cache = ctl_json(t, "stats")["cache"]
        return {"requests": r["requests"], "failures": r["failures"], "status": r["status"],
                "p99_ms": r["p99_ms"], "max_ms": r["max_ms"], "cache": cache, "db": end.get("db")}


def slowhttptest(mode, port, conns, secs, path, out):
    args = ["slowhttptest", "-c", str(conns), "-r", str(conns), "-l", str(secs), "-g",
            "-o", out, "-p", "2", "-u", "http://127.0.0.1:%d%s" % (port, path)]
    if mode == "H":
        args += ["-H", "-i", "1", "-x", "24"]
    elif mode == "B":
        args += ["-B", "-i", "1", "-x", "24", "-s", "8192", "-t", "POST"]
    else:
        # pipelined requests whose answers exceed the socket buffers, read a few bytes at a time
        args += ["-X", "-w", "16", "-y", "32", "-n", "2", "-z", "16", "-k", "10"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: raise_nofile(65536))


def read_slow_csv(path):
    """slowhttptest -g CSV -> list of (seconds, closed, pending, connected, available)."""
    rows = []
    try:
        with open(path) as f:
            for ln in f:
                parts = ln.strip().split(",")
                if len(parts) >= 5 and parts[0].isdigit():
                    rows.append(tuple(int(x) for x in parts[:5]))
    except OSError:
        pass
    return rows


def case_slow(ctx, modes=("H", "B", "X")):
    """slowloris, slow body, slow read with 1,000 connections each; /health p99 < 50 ms."""
    if not shutil.which("slowhttptest"):
        raise AssertionError("slowhttptest is not installed (apt-get install slowhttptest)")
    conns = 1000
    secs = ctx.pick(30, 15, 12)
    res = {}
    # timeouts long enough for the attack to hold all its connections at once (it opens
    # them at up to 1,000/s), short enough to see them cut well before it ends
    conf = ("[timeouts]\nheader = 5s\nbody = 5s\nwrite = 5s\nkeepalive = 5s\n" if ctx.quick
            else short_timeouts(False))
    with Tenkd(workers=2, db=ctx.db, redis=ctx.redis, conf=conf) as t:
        healthy(t)
        base = snapshot(t)
        tmp = tempfile.mkdtemp(prefix="tenk-torture-slow-")
        try:
            _slow_modes(ctx, t, modes, conns, secs, tmp, res)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        healthy(t)
        back_to_baseline(t, base, rss_slack=1.0, rss_abs_kb=16384)
    return res


def _slow_modes(ctx, t, modes, conns, secs, tmp, res):
    for m in modes:
        path = {"H": "/health", "B": "/users", "X": "/users?limit=100"}[m]
        out = os.path.join(tmp, "slow-%s" % m)
        probe = load(t.port, secs, conns=1, mode="keepalive", paths=["/health"], interval=0.01, seed=3)
        atk = slowhttptest(m, t.port, conns, secs, path, out)
        peak = {"open": 0}
        series = []
        t_atk = time.monotonic()

        def watch():
            s = ctl_json(t, "stats")["connections"]["open"]
            peak["open"] = max(peak["open"], s)
            series.append((time.monotonic() - t_atk, s))
            return atk.poll() is not None
        wait_until(watch, secs + 30, "slowhttptest -%s to finish" % m, interval=0.5)
        # slowhttptest opens its connections once and never reopens them: if the timeouts
        # cut them, the server holds few of them in the attack's last seconds
        # (slowhttptest ends early once every connection is closed): the open count must
        # fall from its peak to a tenth while the attack still runs
        t_peak = max(series, key=lambda xo: xo[1])[0] if series else 0
        cut = [x for (x, o) in series if t_peak < x < secs - 0.5 and o <= conns // 10]
        cut_s = round(cut[0] - t_peak, 1) if cut else None
        pr = finish(probe, timeout=60)
        rows = read_slow_csv(out + ".csv")
        closed = rows[-1][1] if rows else -1
        max_connected = max((r[3] for r in rows), default=-1)
        # the server cut what the attack held: no connection left open once it is over
        wait_until(lambda: ctl_json(t, "stats")["connections"]["open"] <= 1, 15,
                   "attack connections gone after -%s" % m)
        res[m] = {"path": path, "probe_requests": pr["requests"], "probe_failures": pr["failures"],
                  "health_p99_ms": pr["p99_ms"], "health_max_ms": pr["max_ms"],
                  "server_peak_open": peak["open"], "cut_after_peak_s": cut_s, "attack_closed": closed,
                  "attack_max_connected": max_connected}
        say("slow -%s: %s" % (m, json.dumps(res[m])))
        assert pr["failures"] == 0, "probe failures during -%s: %s" % (m, pr["samples"])
        # the bar is 50 ms; an ASan build runs two to three times slower
        bar = 150 if sanitized() else 50
        assert pr["p99_ms"] < bar, "/health p99 %.1f ms during -%s" % (pr["p99_ms"], m)
        # (on a busy 2-core box the attack may need longer than a timeout to open them all)
        held = ctx.pick(0.8, 0.8, 0.6) * conns
        assert peak["open"] >= held or max_connected >= held, \
            "the -%s attack never held many connections (%s)" % (m, res[m])
        assert cut_s is not None, "the -%s attack's connections were not cut (%s)" % (m, res[m])


FLOOD_CLIENT = r"""
import socket, sys, time, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
port, n, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
socks, errs = [], 0
for i in range(n):
    try:
        s = socket.socket(); s.setblocking(False)
        s.connect_ex(("127.0.0.1", port)); socks.append(s)
    except OSError:
        errs += 1
time.sleep(0.5)
sent = 0
for s in socks:
    try:
        s.send(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"); sent += 1
    except OSError:
        pass
print("ready %d %d %d" % (len(socks), sent, errs), flush=True)
time.sleep(hold)
answered = 0
for s in socks:
    try:
        if s.recv(4096).startswith(b"HTTP/1.1 200"):
            answered += 1
    except OSError:
        pass
    s.close()
print("done %d" % answered, flush=True)
"""


def case_flood(ctx):
    """3,000 clients against workers limited to 1,024 fds: no crash, no busy loop, service resumes."""
    n, hold = 3000, (4 if ctx.quick else 10)  # shorter than the keep-alive timeout
    # tenkd raises its soft fd limit to the hard one: start it under a hard limit of 1,024
    wrapper = os.path.join(tempfile.mkdtemp(prefix="tenk-torture-flood-"), "tenkd")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nulimit -n 1024 && exec %s \"$@\"\n" % th.TENKD)
    os.chmod(wrapper, 0o755)
    real, th.TENKD = th.TENKD, wrapper
    try:
        t = Tenkd(workers=2, db=ctx.db, redis=ctx.redis, conf=short_timeouts(ctx.quick)).start()
    finally:
        th.TENKD = real
    try:
        healthy(t)
        pids = sorted(t.worker_pids())
        for p in pids:
            with open("/proc/%d/limits" % p) as f:
                lim = [ln for ln in f if ln.startswith("Max open files")][0].split()[3]
            assert int(lim) <= 1024, "worker %d fd limit %s" % (p, lim)
        base = snapshot(t)
        cpu0 = {p: cpu_ticks(p) for p in pids}
        fl = subprocess.Popen([sys.executable, "-c", FLOOD_CLIENT, str(t.port), str(n), str(hold)],
                              stdout=subprocess.PIPE, text=True)
        ready = fl.stdout.readline().split()
        t_hold = time.monotonic()
        fds_peak = {p: 0 for p in pids}
        while fl.poll() is None and time.monotonic() - t_hold < hold:
            for p in pids:
                fds_peak[p] = max(fds_peak[p], nfds(p))
            time.sleep(0.2)
        cpu1 = {p: cpu_ticks(p) for p in pids}
        held = time.monotonic() - t_hold
        done = fl.stdout.readline().split()
        fl.wait(30)
        assert sorted(t.worker_pids()) == pids, "a worker died in the flood"
        cpu_pct = {p: round(100.0 * (cpu1[p] - cpu0[p]) / CLK / held, 1) for p in pids}
        # resumes: /health within a few seconds of the clients leaving
        t_res = time.monotonic()
        wait_until(lambda: t.request("GET", "/health", timeout=1)[0] == 200, 10, "service to resume")
        resume_s = time.monotonic() - t_res
        end = healthy(t)
        back_to_baseline(t, base, rss_slack=1.0, rss_abs_kb=16384)
        emfile = t.log().count("EMFILE") + t.log().count("Too many open files")
        assert max(cpu_pct.values()) < 60, "workers' CPU during the held flood: %s%%" % cpu_pct
        return {"clients": n, "connected": int(ready[1]), "requests_sent": int(ready[2]),
                "answered": int(done[1]) if len(done) > 1 else None, "worker_fd_peak": list(fds_peak.values()),
                "worker_cpu_pct_during_hold": list(cpu_pct.values()), "hold_s": round(held, 1),
                "resume_s": round(resume_s, 3), "emfile_log_lines": emfile, "db": end.get("db")}
    finally:
        t.stop()
        shutil.rmtree(os.path.dirname(wrapper), ignore_errors=True)


def case_malformed(ctx):
    """A malformed-request barrage from several processes: workers stay up, nothing leaks."""
    procs = 4
    dur = ctx.pick(60, 10, 6)
    with Tenkd(workers=2, db=ctx.db, redis=ctx.redis, conf=short_timeouts(True)) as t:
        healthy(t)
        # warm up so that the baseline includes pooled stacks and buffers
        finish(load(t.port, 2, conns=8, paths=["/json", "/health"]))
        base = snapshot(t)
        ps = [subprocess.Popen([sys.executable, os.path.join(HERE, "barrage.py"), "--port", str(t.port),
                                "--duration", str(dur), "--seed", str(100 + i), "--wait", "6"],
                               stdout=subprocess.PIPE, text=True) for i in range(procs)]
        probe = load(t.port, dur, conns=2, paths=["/json", "/health"], interval=0.005)
        outs = []
        for p in ps:
            o, _ = p.communicate(timeout=dur + 120)
            outs.append(json.loads(o))
        pr = finish(probe)
        assert sorted(t.worker_pids()) == base["pids"], "a worker died: %s -> %s" % (base["pids"], t.worker_pids())
        end = healthy(t)
        now = back_to_baseline(t, base)
        attacks = sum(o["attacks"] for o in outs)
        fails = {}
        samples = []
        for o in outs:
            for k, v in o["fail"].items():
                fails[k] = fails.get(k, 0) + v
            samples += o["samples"]
        kinds = {}
        for o in outs:
            for k, v in o["kinds"].items():
                kinds[k] = kinds.get(k, 0) + v
        assert not fails, "bad answers: %s %s" % (fails, samples[:10])
        assert pr["failures"] == 0, "normal clients failed during the barrage: %s" % pr["samples"]
        return {"processes": procs, "attacks": attacks, "kinds": kinds, "table_cases": outs[0]["table_cases"],
                "failures": 0, "probe_requests": pr["requests"], "probe_p99_ms": pr["p99_ms"],
                "fds": [base["fds"], now["fds"]], "threads": [base["threads"], now["threads"]],
                "rss_kb": [base["rss_kb"], now["rss_kb"]], "db": end.get("db")}


def case_hostile(ctx):
    """Deeply nested JSON and inputs at and one past every size limit (scripts/torture.d/hostile.py):
    each gets its answer (a 4xx with a JSON body past a limit), and no worker dies."""
    import hostile
    depths = ctx.pick([10**2, 10**3, 2000, 10**4, 10**5, 10**6], [10**2, 10**3, 2000, 10**4, 10**5, 10**6],
                      [10**2, 2000, 10**5, 10**6])
    with Tenkd(workers=2, db=ctx.db, redis=ctx.redis, admin=True, conf=short_timeouts(True)) as t:
        healthy(t)
        before = ctl_json(t, "status")
        restarts = {w["index"]: w["restarts"] for w in before["workers"] if w["state"] == "running"}
        pids = sorted(t.worker_pids())
        chk = hostile.run(t, depths)
        after = ctl_json(t, "status")
        now = {w["index"]: w["restarts"] for w in after["workers"] if w["state"] == "running"}
        overflows = [line for line in t.log().splitlines() if "overflowed" in line]
        assert not overflows, "stack overflow(s): %s" % overflows[:5]
        assert now == restarts and sorted(t.worker_pids()) == pids, \
            "a worker died: restarts %s -> %s, pids %s -> %s" % (restarts, now, pids, t.worker_pids())
        assert not chk.bad, "%d of %d answers wrong: %s" % (len(chk.bad), chk.checked, chk.bad[:10])
        end = healthy(t)
        return {"requests": chk.checked, "depths": depths, "statuses": chk.statuses, "restarts": now,
                "db": end.get("db")}


def case_memory(ctx):
    """10 minutes of mixed load: RSS ends within 10% of its post-warm-up value (full mode only)."""
    if sanitized():
        return {"skipped": "an ASan build's quarantine keeps freed memory resident: RSS is not comparable"}
    total = 600 if not ctx.quick else 60
    warm = 60 if not ctx.quick else 15
    paths = ["/json", "/plaintext", "/health", "/db", "/queries?queries=5", "/fortunes", "/users/{id}",
             "/cached-queries?count=5", "/users?limit=20"] if ctx.db else ["/json", "/plaintext", "/health"]
    with Tenkd(workers=2, db=ctx.db, redis=ctx.redis) as t:
        healthy(t)
        lps = [load(t.port, total, conns=8, mode="mixed", paths=paths, seed=5),
               subprocess.Popen([sys.executable, os.path.join(HERE, "barrage.py"), "--port", str(t.port),
                                 "--duration", str(total), "--wait", "12"], stdout=subprocess.PIPE, text=True)]
        t0 = time.monotonic()
        time.sleep(warm)  # warm-up is a fixed part of the schedule
        rss = lambda: sum(th.rss_kb(p) for p in t.worker_pids()) + th.rss_kb(t.proc.pid)  # noqa: E731
        pids = sorted(t.worker_pids())
        warm_kb = rss()
        series = [(round(time.monotonic() - t0), warm_kb)]
        while time.monotonic() - t0 < total:
            time.sleep(min(30, max(0.1, total - (time.monotonic() - t0))))
            series.append((round(time.monotonic() - t0), rss()))
        r = finish(lps[0], timeout=120)
        lps[1].communicate(timeout=120)
        end_kb = series[-1][1]
        assert sorted(t.worker_pids()) == pids, "a worker died under the mixed load"
        healthy(t)
        assert r["failures"] == 0, "failures under the mixed load: %s %s" % (r["fail"], r["samples"])
        assert end_kb <= warm_kb * 1.10, "RSS grew from %d kB to %d kB" % (warm_kb, end_kb)
        return {"duration_s": total, "requests": r["requests"], "failures": r["failures"],
                "p99_ms": r["p99_ms"], "rss_kb_after_warmup": warm_kb, "rss_kb_end": end_kb,
                "growth_pct": round(100.0 * (end_kb - warm_kb) / warm_kb, 2), "series": series}


CASES = {
    "kill9": case_kill9,
    "reload": case_reload,
    "pg": case_pg,
    "redis": case_redis,
    "slow": case_slow,
    "flood": case_flood,
    "malformed": case_malformed,
    "hostile": case_hostile,
    "memory": case_memory,
}
QUICK_DEFAULT = ["kill9", "reload", "pg", "redis", "slow", "flood", "malformed", "hostile"]
FULL_DEFAULT = QUICK_DEFAULT + ["memory"]


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="scripts/torture")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--keep-services", action="store_true")
    ap.add_argument("--shared-services", action="store_true",
                    help="use the devenv's PostgreSQL/Redis (TENK_DB/TENK_REDIS) for the non-destructive cases")
    ap.add_argument("cases", nargs="*")
    a = ap.parse_args(argv)
    cases = a.cases or (QUICK_DEFAULT if a.quick else FULL_DEFAULT)
    for c in cases:
        if c not in CASES:
            ap.error("unknown case %s (have: %s)" % (c, " ".join(CASES)))
    raise_nofile()
    ctx = Ctx(quick=a.quick, keep_services=a.keep_services, shared=a.shared_services)
    results, failed = {}, []
    try:
        for c in cases:
            say("case %s (%s)" % (c, "quick" if a.quick else "full"))
            t0 = time.monotonic()
            try:
                res = CASES[c](ctx)
                results[c] = {"ok": True, "seconds": round(time.monotonic() - t0, 1), "numbers": res}
                print("ok   %-10s %5.1fs %s" % (c, time.monotonic() - t0, json.dumps(res)), flush=True)
            except Exception as e:  # report and go on with the next case
                results[c] = {"ok": False, "seconds": round(time.monotonic() - t0, 1), "error": str(e)[:4000]}
                failed.append(c)
                print("FAIL %-10s %5.1fs %s" % (c, time.monotonic() - t0, str(e)[:4000]), flush=True)
    finally:
        ctx.close()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    print("%d passed, %d failed" % (len(cases) - len(failed), len(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
