"""test_tenkctl.py: tenkctl against a real tenkd: counters equal the load sent,
injected latencies show in the percentiles, --json agrees with the server, two
instances never mix, counters survive a killed worker, reload/stop outcomes,
clear failures (no server, stale, permission, layout version), and `top` in a
real terminal (tmux)."""
import json
import os
import shutil
import signal
import struct
import subprocess
import threading
import time

from tenkharness import (TENKCTL, Tenkd, build_request, need_db, recv_response, skip,
                         wait_until)


def _ctl_json(t, *args):
    r = t.ctl(*(args + ("--json",)))
    assert r.returncode == 0, "tenkctl %s: rc %d\n%s%s" % (args, r.returncode, r.stdout, r.stderr)
    return json.loads(r.stdout)


def _stats(t):
    return _ctl_json(t, "stats")


def _plain(**kw):
    """A tenkd without PostgreSQL/Redis: these tests are about tenkctl."""
    kw.setdefault("db", "")
    kw.setdefault("redis", "")
    if not kw.get("admin"):
        # no admin listener: its default port would collide between instances
        kw["args"] = tuple(kw.get("args", ())) + ("--admin", "")
    return Tenkd(**kw)


def _load(t, n_ok, n_404, threads=4):
    """n_ok GET /health and n_404 GET /nope, half on fresh connections, half
    on keep-alive connections, from several threads. Returns (bytes sent,
    connections opened)."""
    errors = []
    sent = [0, 0]
    lock = threading.Lock()

    def run(paths):
        try:
            s = t.connect()
            for i, p in enumerate(paths):
                raw = build_request("GET", p)
                if i % 2:
                    c = t.connect()
                    c.sendall(raw)
                    st, _, _ = recv_response(c)
                    c.close()
                else:
                    s.sendall(raw)
                    st, _, _ = recv_response(s)
                assert st == (200 if p == "/health" else 404), (p, st)
                with lock:
                    sent[0] += len(raw)
                    sent[1] += 1 if i % 2 else 0
            s.close()
            with lock:
                sent[1] += 1
        except Exception as e:  # reported by the caller
            errors.append(e)

    paths = ["/health"] * n_ok + ["/nope"] * n_404
    parts = [paths[i::threads] for i in range(threads)]
    ths = [threading.Thread(target=run, args=(p,)) for p in parts]
    for th in ths:
        th.start()
    for th in ths:
        th.join(30)
    assert not errors, errors
    return sent[0], sent[1]


def test_counters_match_bounded_load():
    with _plain(workers=2) as t:
        # the harness's readiness probe is a connection too: start from a
        # state where it is counted as both accepted and closed
        wait_until(lambda: _stats(t)["connections"]["accepted"] >= 1 and
                   _stats(t)["connections"]["open"] == 0 and
                   _stats(t)["connections"]["accepted"] == _stats(t)["connections"]["closed"],
                   5, "the readiness probe's connection counted closed")
        before = _stats(t)
        sent, conns = _load(t, 300, 40)
        # a response is counted right after it is written: allow the last few to land
        want = before["requests_total"] + 340
        wait_until(lambda: _stats(t)["requests_total"] == want, 5,
                   "requests_total == %d" % want)
        s = _stats(t)
        assert s["requests_total"] == want, (s["requests_total"], want)
        assert s["status"]["2xx"] - before["status"]["2xx"] == 300
        assert s["status"]["4xx"] - before["status"]["4xx"] == 40
        assert s["errors_total"] == before["errors_total"]
        assert s["bytes_in_total"] - before["bytes_in_total"] == sent
        # the per-worker blocks add up to the totals
        assert sum(w["requests_total"] for w in s["workers"]) == s["requests_total"]
        assert sum(w["status"]["4xx"] for w in s["workers"]) == s["status"]["4xx"]
        assert len([w for w in s["workers"] if w["state"] == "running"]) == 2
        health = [r for r in s["routes"] if r["route"] == "GET /health"]
        assert health and health[0]["requests"] >= 300, s["routes"]
        lat = s["latency_us"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"], lat
        acc = s["connections"]["accepted"] - before["connections"]["accepted"]
        assert acc == conns, (acc, conns)
        wait_until(lambda: _stats(t)["connections"]["closed"] -
                   before["connections"]["closed"] == conns, 5, "every connection closed")
        # every request falls in a complete second within a minute: the 60 s
        # rate times 60 is exactly the total once the current second is over
        wait_until(lambda: round(_stats(t)["requests_per_second"]["60s"] * 60) ==
                   _stats(t)["requests_total"], 3, "60 s rate x 60 == requests_total")
        for k in ("1s", "10s", "60s"):
            assert k in s["requests_per_second"] and k in s["bytes_out_per_second"]

        # the human view agrees
        r = t.ctl("stats")
        assert r.returncode == 0, r.stderr
        line = [l for l in r.stdout.splitlines() if l.startswith("requests ")][0]
        assert line.split()[1] == str(s["requests_total"]), line
        assert "\033[" not in r.stdout  # no colour when not on a terminal


def _slow_post(t, delay):
    """POST /debug/echo on the admin port, holding the body back for `delay` s:
    the server's clock for the request runs from the parsed head to the reply."""
    s = t.connect(port=t.admin_port)
    s.sendall(b"POST /debug/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
              b"Connection: close\r\n\r\n")
    time.sleep(delay)  # the injected latency itself, not a wait for a condition
    s.sendall(b"hello")
    st, _, body = recv_response(s)
    s.close()
    assert st == 200 and body == b"hello", (st, body)


def test_percentiles_match_injected_latency():
    with _plain(workers=1, admin=True) as t:
        base = _stats(t)["requests_total"]
        for _ in range(10):
            _slow_post(t, 0.080)
        for _ in range(90):
            st, _, _ = t.request("GET", "/health", port=t.admin_port)
            assert st == 200
        wait_until(lambda: _stats(t)["requests_total"] == base + 100, 5, "100 more requests")
        lat = _stats(t)["latency_us"]
        # 10% of requests took >= 80 ms, the rest well under 10 ms
        assert lat["p50"] < 10000, lat
        assert lat["p90"] < 10000 or lat["p90"] >= 77000, lat
        assert 77000 <= lat["p99"] < 160000, lat
        assert 77000 <= lat["p999"] < 160000, lat


def test_stats_json_carries_threads_by_state():
    """stats --json has the green threads by state, per worker and in total (what
    scripts/bench plots over time), and they agree with threads --json."""
    with _plain(workers=2, admin=True) as t:
        def counts():
            s = _stats(t)
            by = s["threads"]["by_state"]
            assert s["threads"]["threads"] == sum(by.values()), s["threads"]
            for k in by:  # the workers add up to the totals
                assert sum(w["threads"]["by_state"][k] for w in s["workers"]) == by[k], (k, s)
            return by

        base = wait_until(lambda: (lambda b: b if b["wait_net"] == 0 else None)(counts()), 5,
                          "no thread waiting on the network")
        assert set(base) >= {"running", "runnable", "wait_net", "wait_db", "wait_broker",
                             "wait_cache", "sleeping"}, base
        # a request whose body is held back parks its thread on the socket
        s = t.connect(port=t.admin_port)
        s.sendall(b"POST /debug/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                  b"Connection: close\r\n\r\n")
        try:
            wait_until(lambda: counts()["wait_net"] == 1, 5, "one thread in wait_net")
            th = _ctl_json(t, "threads")
            assert th["total"]["wait_net"] == 1, th
            assert th["threads"] == _stats(t)["threads"]["threads"], th
            # the human view names the state too
            r = t.ctl("stats")
            line = [l for l in r.stdout.splitlines() if l.startswith("green threads")]
            assert line and "wait_net 1" in line[0], r.stdout
            s.sendall(b"hello")
            st, _, body = recv_response(s)
            assert st == 200 and body == b"hello", (st, body)
        finally:
            s.close()
        wait_until(lambda: counts()["wait_net"] == 0, 5, "the thread done")


def test_status_json_agrees_with_server():
    with _plain(workers=3) as t:
        wait_until(lambda: len([w for w in _ctl_json(t, "status")["workers"]
                                if w["state"] == "running"]) == 3, 5, "3 workers running")
        s = _ctl_json(t, "status")
        assert s["name"] == t.name
        assert s["master_pid"] == t.proc.pid
        assert s["generation"] == 1
        assert s["conf_path"].endswith("tenk.conf")
        assert s["workers_configured"] == 3
        running = sorted(w["pid"] for w in s["workers"] if w["state"] == "running")
        assert running == sorted(t.worker_pids()), (running, t.worker_pids())
        assert all(w["restarts"] == 0 and w["heartbeat_age_s"] < 5 for w in s["workers"])
        st = os.stat("/dev/shm/tenk-%s" % t.name)
        assert st.st_mode & 0o777 == 0o600
        r = t.ctl("status")
        assert r.returncode == 0 and str(t.proc.pid) in r.stdout, r
        for pid in t.worker_pids():
            assert str(pid) in r.stdout

        th = _ctl_json(t, "threads")
        assert len(th["workers"]) == 3
        assert th["threads"] == sum(th["total"].values())
        assert th["created"] >= 0 and "wait_net" in th["total"]
        assert abs(sum(th["percent"].values()) - (100 if th["threads"] else 0)) < 0.01
        assert t.ctl("threads").returncode == 0

        # started without [db]: said plainly
        assert _ctl_json(t, "db")["configured"] is False
        r = t.ctl("db")
        assert r.returncode == 0 and "database: not configured" in r.stdout, r


def test_db_pool_view():
    need_db()
    with _plain(workers=2, db=None, conf="[db]\nmax_open = 7\nmax_idle = 7") as t:
        for _ in range(20):
            st, _, _ = t.request("GET", "/db")
            assert st == 200, st
        # start-up work (the cachedworld load) may still hold a connection a moment
        db = wait_until(lambda: (lambda d: d if d["in_use"] == 0 else None)(_ctl_json(t, "db")),
                        5, "no database connection in use")
        assert db["configured"] is True
        assert db["max_open"] == 7
        assert 1 <= db["open"] <= 7 and db["in_use"] == 0, db
        assert db["idle"] == db["open"], db
        assert db["acquires"] >= 1 and db["waiting"] == 0, db
        assert sum(w["open"] for w in db["workers"]) == db["open"], db
        r = t.ctl("db")
        assert r.returncode == 0 and "db.max_open 7" in r.stdout, r


def test_two_instances_never_mix():
    with _plain(workers=1) as a, _plain(workers=1) as b:
        assert a.name != b.name
        sb = _stats(b)["requests_total"]
        base = _stats(a)["requests_total"]
        for _ in range(40):
            assert a.request("GET", "/health")[0] == 200
        wait_until(lambda: _stats(a)["requests_total"] == base + 40, 5, "a counted 40")
        assert _stats(b)["requests_total"] == sb
        sa_, sb_ = _ctl_json(a, "status"), _ctl_json(b, "status")
        assert sa_["master_pid"] == a.proc.pid and sb_["master_pid"] == b.proc.pid
        assert {w["pid"] for w in sa_["workers"]}.isdisjoint({w["pid"] for w in sb_["workers"]})


def test_counters_survive_a_killed_worker():
    with _plain(workers=2) as t:
        for _ in range(50):
            assert t.request("GET", "/health")[0] == 200
        s0 = _stats(t)
        victim = s0["workers"][0]

        # keep requests flowing while the worker dies (bounded: 5000 or until told)
        stop = threading.Event()
        done = [0]

        def load():
            n = 0
            while not stop.is_set() and n < 5000:
                try:
                    if t.request("GET", "/health", timeout=2.0)[0] == 200:
                        done[0] += 1
                except OSError:
                    pass  # a request in flight on the killed worker
                n += 1
        th = threading.Thread(target=load)
        th.start()
        try:
            wait_until(lambda: done[0] >= 20, 5, "load running")
            os.kill(victim["pid"], signal.SIGKILL)

            def respawned():
                st = _ctl_json(t, "status")
                w = [x for x in st["workers"] if x["slot"] == victim["slot"]][0]
                return w["state"] == "running" and w["pid"] != victim["pid"] and w
            wait_until(respawned, 5, "slot %d respawned" % victim["slot"])
            w = respawned()
            assert w["restarts"] == 1 and w["last_exit"] == "signal 9", w
            # the segment reads cleanly after a worker died at an arbitrary point
            s1 = _stats(t)
            assert s1["consistent"] is True
            assert s1["requests_total"] >= s0["requests_total"] + 20
            w1 = [x for x in s1["workers"] if x["slot"] == victim["slot"]][0]
            assert w1["requests_total"] >= victim["requests_total"]  # the slot kept its counts
        finally:
            stop.set()
            th.join(30)
        # totals never went down and include everything answered
        wait_until(lambda: _stats(t)["requests_total"] >= s0["requests_total"] + done[0], 5,
                   "every answered request counted")


def test_reload_and_stop_report_outcomes():
    with _plain(workers=2) as t:
        r = t.ctl("reload")
        assert r.returncode == 0, r.stderr
        assert "generation 2" in r.stdout, r.stdout
        s = _ctl_json(t, "status")
        assert s["generation"] == 2
        assert len([w for w in s["workers"] if w["generation"] == 2 and
                    w["state"] == "running"]) == 2

        # an invalid file: refused, the reason shown, still generation 2
        with open(t.conf_path, "a") as f:
            f.write("\n[server]\nno_such_key = 1\n")
        r = t.ctl("reload")
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        assert "failed" in r.stderr and "generation 2" in r.stderr, r.stderr
        assert _ctl_json(t, "status")["generation"] == 2

        r = t.ctl("stop", "--graceful")
        assert r.returncode == 0, r.stderr
        assert "stopped" in r.stdout
        t.proc.wait(5)
        r = t.ctl("status")
        assert r.returncode == 1 and "no tenk server named" in r.stderr, r


def test_clear_failures():
    r = subprocess.run([TENKCTL, "-n", "no-such-instance-%d" % os.getpid(), "status"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "no tenk server named" in r.stderr, r
    r = subprocess.run([TENKCTL, "frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2

    with _plain(workers=1) as t:
        path = "/dev/shm/tenk-%s" % t.name
        if os.geteuid() == 0:
            r = subprocess.run([TENKCTL, "-n", t.name, "status"], capture_output=True, text=True,
                               user=65534, group=65534)
            assert r.returncode == 1 and "permission denied" in r.stderr, r

        # a master killed without cleaning up leaves a stale segment
        os.kill(t.proc.pid, signal.SIGKILL)
        t.proc.wait(5)
        r = t.ctl("status")
        assert r.returncode == 1 and "stale" in r.stderr, r

    # a segment from another layout version is refused by name
    name = "laytest-%d" % os.getpid()
    path = "/dev/shm/tenk-%s" % name
    try:
        with open(path, "wb") as f:
            # stable prefix: magic "TENKSHM1", layout version, master pid, start ticks
            f.write(struct.pack("<QIiQ", 0x314d48534b4e4554, 999, os.getpid(), 0))
            f.write(b"\0" * 4096)
        r = subprocess.run([TENKCTL, "-n", name, "stats"], capture_output=True, text=True)
        assert r.returncode == 1 and "layout version 999" in r.stderr, r
    finally:
        os.unlink(path)


def _tmux(*args):
    return subprocess.run(["tmux"] + list(args), capture_output=True, text=True)


def test_top_in_a_real_terminal():
    if not shutil.which("tmux"):
        skip("tmux not installed")
    with _plain(workers=2) as t:
        sess = "tk-top-%d" % os.getpid()
        sock = "tk-top-sock-%d" % os.getpid()  # a private tmux server
        try:
            r = _tmux("-L", sock, "new-session", "-d", "-s", sess, "-x", "120", "-y", "40",
                      "bash --norc --noprofile")
            assert r.returncode == 0, r.stderr
            _tmux("-L", sock, "send-keys", "-t", sess,
                  "%s -n %s top; echo EXIT=$?; stty -a | grep -o -- '-*icanon'" %
                  (TENKCTL, t.name), "Enter")

            def screen():
                return _tmux("-L", sock, "capture-pane", "-p", "-t", sess).stdout
            pids = [str(p) for p in t.worker_pids()]
            wait_until(lambda: "requests/s" in screen() and all(p in screen() for p in pids),
                       5, "top to draw both workers")
            s = screen()
            assert "tenk '%s'" % t.name in s, s
            assert "latency" in s and "threads" in s and "q: quit" in s, s
            # requests show up on a later refresh
            for _ in range(30):
                t.request("GET", "/health")
            wait_until(lambda: "total %d" % _stats(t)["requests_total"] in screen(), 5,
                       "top to show the new total")
            # it follows the terminal's size
            _tmux("-L", sock, "resize-window", "-t", sess, "-x", "60", "-y", "20")
            wait_until(lambda: max(len(l) for l in screen().splitlines()) <= 60 and
                       "q: quit" in screen().splitlines()[19], 5,
                       "top redrawn at 60x20:\n" + screen())
            _tmux("-L", sock, "send-keys", "-t", sess, "q")
            wait_until(lambda: "EXIT=0" in screen(), 5, "top to quit on q")
            # the terminal was restored: canonical mode is back on, the alternate screen left
            s = screen()
            assert "-icanon" not in s and "icanon" in s, s
            assert "requests/s" not in s, s
        finally:
            _tmux("-L", sock, "kill-server")
