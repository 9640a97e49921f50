"""test_db_replicas.py: tenk against a real primary and two streaming replicas (scripts/devenv up
--replicas 2): reads on the replicas and writes on the primary as each server's own
pg_stat_statements counts them, a replica past db.replica_max_lag taken out and brought back
(pg_wal_replay_pause), read-your-writes with Tenk-LSN, a replica killed under a read load, the
per-backend caps in pg_stat_activity, and the bad inputs (an unreachable replica at start-up, a
malformed db.replica for tenkd -t).

The failover (stop the primary, promote a replica) is destructive and has its own devenv:
test_db_failover.py."""
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from tenkharness import TENKD, need_db, wait_until

SRCDIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USERS_LIST = "SELECT id, name, email FROM users WHERE id > $1 ORDER BY id LIMIT $2"


def _var_dir():
    return os.environ.get("TENK_VAR_DIR") or os.path.join(SRCDIR, "var")


def _env_file():
    out = {}
    with open(os.path.join(_var_dir(), "devenv.env")) as f:
        for line in f:
            m = re.match(r"^([A-Z0-9_]+)='(.*)'$", line.strip())
            if m:
                out[m.group(1)] = m.group(2)
    return out


def as_postgres(conninfo):
    """The same node as the superuser (pg_wal_replay_pause, pg_stat_statements of all users)."""
    return re.sub(r"\buser=\S+", "user=postgres", conninfo)


def sql(conninfo, q):
    r = subprocess.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", conninfo, "-c", q],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise AssertionError("psql %s: %s" % (conninfo, r.stderr))
    return r.stdout.strip()


@pytest.fixture(scope="module")
def nodes():
    need_db()
    r = subprocess.run([os.path.join(SRCDIR, "scripts", "devenv"), "up", "--replicas", "2"],
                       cwd=SRCDIR, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.fail("scripts/devenv up --replicas 2 failed:\n%s" % (r.stdout + r.stderr)[-3000:])
    env = _env_file()
    n = {"primary": env["TENK_DB"], "multi": env["TENK_DB_PRIMARY_MULTI"],
         "replicas": [env["TENK_DB_REPLICA_1"], env["TENK_DB_REPLICA_2"]]}
    for c in n["replicas"]:
        sql(as_postgres(c), "select pg_wal_replay_resume()")  # an earlier run's pause
    return n


def start(tenkd, nodes, conf="", workers=2, replicas=None, **kw):
    reps = nodes["replicas"] if replicas is None else replicas
    lines = "".join("replica = %s\n" % r for r in reps)
    # the harness writes [db] conninfo = TENK_DB; these lines add to the same section
    return tenkd(workers=workers, admin=True, redis="", db=nodes["multi"],
                 conf="[db]\n" + lines + conf, **kw)


def backends(t):
    r = t.ctl("--json", "db")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["backends"]


def wait_health(t, want, timeout=10.0):
    """want: {index: health}; polls tenkctl db --json."""
    def ok():
        b = backends(t)
        return all(b[i]["health"] == h for i, h in want.items())
    wait_until(ok, timeout=timeout, what="backends %r (now %r)" % (
        want, [(b["index"], b["health"]) for b in backends(t)]))


def calls(conninfo, prefix):
    return int(sql(as_postgres(conninfo), "select coalesce(sum(calls), 0) from pg_stat_statements "
                   "where starts_with(query, '%s')" % prefix.replace("'", "''")))


def post_user(t, tag):
    body = json.dumps({"name": "r", "email": "%s-%d-%d@replica.test" % (tag, os.getpid(),
                                                                           time.monotonic_ns())})
    st, h, b = t.request("POST", "/users", headers={"Content-Type": "application/json"},
                         body=body.encode())
    assert st == 201, b
    return json.loads(b)["id"], h.get("tenk-lsn")


def test_reads_on_replicas_writes_on_primary(tenkd, nodes):
    t = start(tenkd, nodes)
    wait_health(t, {0: "ok", 1: "ok", 2: "ok"})
    every = [nodes["primary"]] + nodes["replicas"]
    before = [calls(c, USERS_LIST) for c in every]
    ins = "INSERT INTO users (name, email) VALUES ($1, $2) RETURNING"
    ins_before = [calls(c, ins) for c in every]
    seen = {}
    for i in range(120):
        st, h, _ = t.request("GET", "/users?limit=3")
        assert st == 200
        seen[h.get("tenk-backend")] = seen.get(h.get("tenk-backend"), 0) + 1
    for i in range(5):
        post_user(t, "split")
    after = [calls(c, USERS_LIST) for c in every]
    ins_after = [calls(c, ins) for c in every]
    delta = [a - b for a, b in zip(after, before)]
    # each server's own count: every list query ran on a replica, both got a share
    assert delta[0] == 0, delta
    assert delta[1] + delta[2] == 120, delta
    assert delta[1] > 0 and delta[2] > 0, delta
    assert seen.get("primary", 0) == 0 and set(seen) <= {"replica-1", "replica-2"}, seen
    assert [a - b for a, b in zip(ins_after, ins_before)] == [5, 0, 0]
    # tenkctl, /metrics and /debug/stats show a row per backend
    b = backends(t)
    assert [x["role"] for x in b] == ["primary", "replica", "replica"]
    st, _, body = t.request("GET", "/metrics", port=t.admin_port)
    assert st == 200
    text = body.decode()
    for name in ("primary", "replica-1", "replica-2"):
        assert 'tenk_db_backend_up{backend="%s"} 1' % name in text
    st, stats = t.get_json("/debug/stats", port=t.admin_port)
    assert [x["health"] for x in stats["db"]["backends"]] == ["ok", "ok", "ok"]
    out = t.ctl("db").stdout
    assert re.search(r"replica\s+unix:\d+\s+ok", out), out
    st, cfg = t.get_json("/debug/config", port=t.admin_port)
    assert st == 200 and cfg["db"]["replica"] == nodes["replicas"] and \
        cfg["db"]["read_from"] == "replicas"
    st, _, body = t.request("GET", "/dashboard", port=t.admin_port)
    assert st == 200 and b"Database backends" in body and b"backendRows(s.db.backends)" in body


def test_lag_takes_a_replica_out_and_back(tenkd, nodes):
    t = start(tenkd, nodes, conf="replica_max_lag = 500ms\n")
    wait_health(t, {1: "ok", 2: "ok"})
    r1 = as_postgres(nodes["replicas"][0])
    sql(r1, "select pg_wal_replay_pause()")
    try:
        t0 = time.monotonic()
        post_user(t, "lag")  # a position replica 1 will not replay
        wait_health(t, {1: "lagging", 2: "ok"}, timeout=5)
        took = time.monotonic() - t0
        assert took >= 0.4, took  # not before the bound
        assert backends(t)[1]["lag_ms"] > 500
        for i in range(30):
            st, h, _ = t.request("GET", "/users?limit=2")
            assert st == 200 and h.get("tenk-backend") == "replica-2"
    finally:
        sql(r1, "select pg_wal_replay_resume()")
    wait_health(t, {1: "ok", 2: "ok"}, timeout=5)
    got = set()
    for i in range(40):
        got.add(t.request("GET", "/users?limit=2")[1].get("tenk-backend"))
    assert "replica-1" in got, got
    log = open(t.log_path).read()
    assert "replica 1 (unix:" in log and "is lagging" in log


def test_read_your_writes(tenkd, nodes):
    t = start(tenkd, nodes)  # db.replica_max_lag 1s (the default)
    wait_health(t, {1: "ok", 2: "ok"})
    paused = [as_postgres(c) for c in nodes["replicas"]]
    for c in paused:
        sql(c, "select pg_wal_replay_pause()")
    try:
        uid, lsn = post_user(t, "ryw")
        assert lsn and re.match(r"^[0-9A-F]+/[0-9A-F]+$", lsn), lsn
        # with the header: a backend that has replayed it, here only the primary
        st, h, body = t.request("GET", "/users/%d" % uid, headers={"Tenk-LSN": lsn})
        assert st == 200 and json.loads(body)["id"] == uid
        assert h.get("tenk-backend") == "primary"
        # without it: a replica within db.replica_max_lag serves, and it has not seen the row
        st, h, _ = t.request("GET", "/users/%d" % uid)
        assert (st, h.get("tenk-backend")) in ((404, "replica-1"), (404, "replica-2")), (st, h)
        # ... for at most the bound (plus a probe round): then the replicas are out
        t0 = time.monotonic()
        wait_until(lambda: t.request("GET", "/users/%d" % uid)[0] == 200, timeout=3,
                   what="the row visible without Tenk-LSN")
        assert time.monotonic() - t0 < 1.5
        assert t.request("GET", "/users/%d" % uid)[1].get("tenk-backend") == "primary"
        # a malformed header is the client's error
        st, _, body = t.request("GET", "/users/%d" % uid, headers={"Tenk-LSN": "nope"})
        assert st == 400 and b"Tenk-LSN" in body
    finally:
        for c in paused:
            sql(c, "select pg_wal_replay_resume()")
    wait_health(t, {1: "ok", 2: "ok"})
    # caught up: the same header now lets a replica serve, once the lag probe has published a
    # replayed LSN at or past it (health "ok" says only that the lag is within the bound: it may
    # come a probe round before the LSN that covers this write)
    def replica_serves():
        st, h, _ = t.request("GET", "/users/%d" % uid, headers={"Tenk-LSN": lsn})
        assert st == 200, st
        return h.get("tenk-backend", "").startswith("replica-")
    wait_until(replica_serves, timeout=3, what="a replica serving the Tenk-LSN read")


def _replica_postmaster(k):
    with open(os.path.join(_var_dir(), "pg-replica-%d" % k, "postmaster.pid")) as f:
        return int(f.readline())


def test_kill_a_replica_under_read_load(tenkd, nodes):
    t = start(tenkd, nodes)
    wait_health(t, {1: "ok", 2: "ok"})
    stop = threading.Event()
    counts = {"ok": 0, "5xx": 0, "other": 0}
    lock = threading.Lock()

    def load():
        while not stop.is_set():
            try:
                st = t.request("GET", "/users?limit=2", timeout=10)[0]
            except OSError:
                st = -1
            with lock:
                counts["ok" if st == 200 else "5xx" if 500 <= st < 600 else "other"] += 1

    threads = [threading.Thread(target=load) for _ in range(6)]
    for th in threads:
        th.start()
    try:
        wait_until(lambda: counts["ok"] > 50, timeout=10, what="load running")
        os.kill(_replica_postmaster(2), signal.SIGQUIT)  # immediate shutdown: connections die
        wait_health(t, {2: "down"}, timeout=5)
        n = counts["ok"]
        wait_until(lambda: counts["ok"] > n + 100, timeout=10, what="reads after the kill")
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=20)
        r = subprocess.run([os.path.join(SRCDIR, "scripts", "devenv"), "up", "--replicas", "2"],
                           cwd=SRCDIR, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    assert counts["5xx"] == 0 and counts["other"] == 0, counts
    # it comes back by itself, and takes reads again
    wait_health(t, {2: "ok"}, timeout=15)
    wait_until(lambda: t.request("GET", "/users?limit=2")[1].get("tenk-backend") == "replica-2",
               timeout=10, what="reads on replica 2 again")


def test_caps_per_backend(tenkd, nodes):
    # this instance's own connections, by application_name (other tests may share the nodes)
    app = "caps-%d" % os.getpid()
    own = {"primary": nodes["primary"], "replicas": nodes["replicas"],
           "multi": nodes["multi"] + " application_name=" + app}
    t = start(tenkd, own, conf="max_open = 3\nreplica_max_open = 2\n",
              replicas=[r + " application_name=" + app for r in nodes["replicas"]])
    wait_health(t, {0: "ok", 1: "ok", 2: "ok"})
    peak = [0, 0, 0]
    stop = threading.Event()
    every = [nodes["primary"]] + nodes["replicas"]

    def load():
        while not stop.is_set():
            t.request("GET", "/queries?queries=5", timeout=10)
            t.request("GET", "/users?limit=5", timeout=10)

    threads = [threading.Thread(target=load) for _ in range(16)]
    for th in threads:
        th.start()
    try:
        end = time.monotonic() + 4
        while time.monotonic() < end:
            for i, c in enumerate(every):
                n = int(sql(as_postgres(c), "select count(*) from pg_stat_activity where "
                            "application_name = '%s'" % app))
                peak[i] = max(peak[i], n)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=20)
    assert peak[1] >= 1 and peak[2] >= 1, peak
    assert peak[0] <= 3 and peak[1] <= 2 and peak[2] <= 2, peak
    b = backends(t)
    assert [x["max_open"] for x in b] == [3, 2, 2]


def test_replica_password_masked(tenkd, nodes):
    t = start(tenkd, nodes, replicas=[nodes["replicas"][0] + " password=hunter2"])
    st, _, body = t.request("GET", "/debug/config", port=t.admin_port)
    assert st == 200 and b"hunter2" not in body and b"password=" in body


def test_unreachable_replica_at_start(tenkd, nodes):
    dead = re.sub(r"\bport=\d+", "port=1", nodes["replicas"][0])
    t = start(tenkd, nodes, replicas=[dead])
    wait_health(t, {0: "ok", 1: "down"}, timeout=10)
    for i in range(10):
        st, h, _ = t.request("GET", "/users?limit=2")
        assert st == 200 and h.get("tenk-backend") == "primary"
    log = open(t.log_path).read()
    assert "replica 1 (unix:1) is down" in log
    assert "no healthy replica: reads go to the primary" in log
    assert log.count("no healthy replica") == 1  # once, not per worker or per query


def test_malformed_replica_conninfo(tmp_path):
    conf = tmp_path / "t.conf"
    conf.write_text("[server]\nlisten = 127.0.0.1:1\n[db]\nprimary = host=/tmp\n"
                    "replica = host=/tmp port=2\nreplica = host=/tmp port='3\n")
    r = subprocess.run([TENKD, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=10)
    assert r.returncode != 0
    assert "t.conf:6: db.replica:" in r.stderr, r.stderr
    r = subprocess.run([TENKD, "-t", "--listen", "127.0.0.1:1", "--db", "host=/tmp",
                        "--db-replica", "nokey"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode != 0 and "db.replica" in r.stderr, r.stderr
    conf.write_text("[server]\nlisten = 127.0.0.1:1\n[db]\nprimary = host=/tmp\n"
                    "read_from = nowhere\n")
    r = subprocess.run([TENKD, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=10)
    assert r.returncode != 0 and "t.conf:5: db.read_from" in r.stderr, r.stderr
    conf.write_text("[server]\nlisten = 127.0.0.1:1\n[db]\nprimary = host=/tmp\n"
                    "replica = host=/tmp port=2\nreplica = host=/tmp port=3\n"
                    "replica_max_lag = 250ms\nreplica_max_open = 4\nread_from = primary\n")
    r = subprocess.run([TENKD, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr


def test_read_from_primary_then_reload(tenkd, nodes):
    t = start(tenkd, nodes, conf="read_from = primary\n")
    wait_health(t, {1: "ok", 2: "ok"})
    for i in range(10):
        st, h, _ = t.request("GET", "/users?limit=2")
        assert st == 200 and h.get("tenk-backend") == "primary"
    # a reload applies db.read_from (and db.replica_max_lag) at once
    t.extra_conf = "[db]\n" + "".join("replica = %s\n" % r for r in nodes["replicas"])
    t.write_conf()
    r = t.ctl("reload")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: t.request("GET", "/users?limit=2")[1].get("tenk-backend", "")
               .startswith("replica-"), timeout=10, what="reads on a replica after the reload")


def test_probe_lease_taken_over_when_its_holder_dies(tenkd, nodes):
    t = start(tenkd, nodes, workers=2)
    wait_health(t, {0: "ok", 1: "ok", 2: "ok"})

    def lease():
        return json.loads(t.ctl("--json", "db").stdout)["probe_lease_pid"]

    holder = lease()
    assert holder in t.worker_pids()
    # the probe's own connections, on every node (application_name tenk-probe)
    for c in [nodes["primary"]] + nodes["replicas"]:
        n = int(sql(as_postgres(c), "select count(*) from pg_stat_activity where "
                    "application_name = 'tenk-probe' and usename = 'tenk'"))
        assert n >= 1, c
    os.kill(holder, signal.SIGKILL)
    wait_until(lambda: lease() not in (0, holder) and lease() in t.worker_pids(), timeout=10,
               what="another worker holding the probe lease")
    # and it measures: fresh probes on every backend
    wait_until(lambda: all(0 <= b["probe_age_ms"] < 1000 for b in backends(t)), timeout=5,
               what="fresh probes after the takeover")
