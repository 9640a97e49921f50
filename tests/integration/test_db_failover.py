"""test_db_failover.py: the primary stops and a replica is promoted (scripts/devenv promote 1)
under a mixed load: writes fail fast with 503 + Retry-After while there is no primary, come back
within 2 s of the promotion through the multi-host db.primary, and no read fails; afterwards the
promoted node, still listed as db.replica, is no replica any more (wrong-role), and the other
replica follows the new timeline.

Destructive, so it runs on a devenv of its own: TENK_VAR_DIR=var/failover on ports
TENK_PG_PORT+20 and TENK_REDIS_PORT+20 (override: TENK_FAILOVER_PG_PORT,
TENK_FAILOVER_REDIS_PORT); it is reset at the start of the next run and stopped at the end."""
import json
import os
import re
import subprocess
import threading
import time

import pytest

from tenkharness import need_db, wait_until

SRCDIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VAR = os.path.join(SRCDIR, "var", "failover")


def _env():
    e = dict(os.environ)
    pg = int(os.environ.get("TENK_PG_PORT", "62329"))
    rd = int(os.environ.get("TENK_REDIS_PORT", "63799"))
    e["TENK_VAR_DIR"] = VAR
    e["TENK_PG_PORT"] = os.environ.get("TENK_FAILOVER_PG_PORT", str(pg + 20))
    e["TENK_REDIS_PORT"] = os.environ.get("TENK_FAILOVER_REDIS_PORT", str(rd + 20))
    for k in list(e):  # the other devenv's derived ports must not leak into this one
        if k.startswith("TENK_PG_REPLICA") or k.startswith("TENK_PGBOUNCER") or \
                k.startswith("TENK_REDIS_REPLICA") or k.startswith("TENK_SENTINEL"):
            del e[k]
    return e


def devenv(*args, timeout=300):
    r = subprocess.run([os.path.join(SRCDIR, "scripts", "devenv")] + list(args), cwd=SRCDIR,
                       env=_env(), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError("scripts/devenv %s failed:\n%s" % (" ".join(args),
                                                               (r.stdout + r.stderr)[-3000:]))
    return r.stdout


def env_file():
    out = {}
    with open(os.path.join(VAR, "devenv.env")) as f:
        for line in f:
            m = re.match(r"^([A-Z0-9_]+)='(.*)'$", line.strip())
            if m:
                out[m.group(1)] = m.group(2)
    return out


def is_primary(conninfo):
    r = subprocess.run(["psql", "-X", "-A", "-t", re.sub(r"\buser=\S+", "user=postgres", conninfo),
                        "-c", "select pg_is_in_recovery()"],
                       capture_output=True, text=True, timeout=10)
    return r.returncode == 0 and r.stdout.strip() == "f"


@pytest.fixture(scope="module")
def failover_env():
    need_db()
    if os.path.exists(os.path.join(VAR, "pg-promoted")):
        devenv("reset")  # the last run promoted a replica: start from a fresh primary
    devenv("up", "--replicas", "2")
    yield env_file()
    devenv("down")


def backends(t):
    r = t.ctl("--json", "db")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["backends"]


def test_promote_under_mixed_load(tenkd, failover_env):
    e = failover_env
    reps = [e["TENK_DB_REPLICA_1"], e["TENK_DB_REPLICA_2"]]
    t = tenkd(workers=2, admin=True, redis="", db=e["TENK_DB_PRIMARY_MULTI"],
              conf="[db]\nreplica = %s\nreplica = %s\nacquire_timeout = 1s\n" % tuple(reps))
    wait_until(lambda: [b["health"] for b in backends(t)] == ["ok", "ok", "ok"], timeout=10,
               what="every backend ok")
    stop = threading.Event()
    writes, reads = [], []  # (t_start, t_end, status, retry_after)
    lock = threading.Lock()

    def writer(n):
        i = 0
        while not stop.is_set():
            i += 1
            body = json.dumps({"name": "f", "email": "f%d-%d-%d@failover.test"
                               % (n, i, time.monotonic_ns())}).encode()
            t0 = time.monotonic()
            try:
                st, h, _ = t.request("POST", "/users", body=body, timeout=10,
                                     headers={"Content-Type": "application/json"})
            except OSError:
                st, h = -1, {}
            with lock:
                writes.append((t0, time.monotonic(), st, h.get("retry-after")))
            time.sleep(0.02)  # a steady trickle, not a flood of 503s

    def reader():
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                st = t.request("GET", "/users?limit=2", timeout=10)[0]
            except OSError:
                st = -1
            with lock:
                reads.append((t0, time.monotonic(), st))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for th in threads:
        th.start()
    promoted_at = []
    try:
        wait_until(lambda: sum(1 for w in writes if w[2] == 201) > 20, timeout=10,
                   what="writes flowing")
        # the promotion instant: when replica 1 leaves recovery, watched from outside
        watch_stop = threading.Event()

        def watch():
            while not watch_stop.is_set() and not promoted_at:
                if is_primary(reps[0]):
                    promoted_at.append(time.monotonic())
                time.sleep(0.02)

        w = threading.Thread(target=watch)
        w.start()
        stopped_at = time.monotonic()
        devenv("promote", "1")
        watch_stop.set()
        w.join()
        assert promoted_at, "replica 1 never left recovery"
        # writes are back within 2 s of the promotion
        wait_until(lambda: any(x[2] == 201 and x[0] > promoted_at[0] for x in writes), timeout=5,
                   what="a write after the promotion")
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=30)
    first_ok = min(x[1] for x in writes if x[2] == 201 and x[0] > promoted_at[0])
    back = first_ok - promoted_at[0]
    print("failover: promotion at +%.2f s after the stop began, first write %.3f s after it"
          % (promoted_at[0] - stopped_at, back))
    assert back <= 2.0, back
    bad_reads = [r for r in reads if r[2] != 200]
    assert not bad_reads and len(reads) > 50, (len(reads), bad_reads[:5])
    # while there was no primary: 503 with Retry-After, each well within db.acquire_timeout
    failed = [x for x in writes if x[2] != 201]
    assert failed, "no write ever failed: was the primary really stopped?"
    assert all(x[2] == 503 and x[3] for x in failed), failed[:5]
    assert max(x[1] - x[0] for x in failed) < 1.0 + 0.5, max(x[1] - x[0] for x in failed)
    # afterwards: the old replica 1 is the primary (timeline 2); listed as a replica it is
    # wrong-role; replica 2 follows the new timeline and serves reads again
    # (replica 2's timeline is published by the probe a round after its health)
    wait_until(lambda: [b["health"] for b in backends(t)] == ["ok", "wrong-role", "ok"] and
               backends(t)[2]["timeline"] == backends(t)[0]["timeline"] >= 2,
               timeout=15, what="primary ok, replica 1 wrong-role, replica 2 ok (now %r)"
               % [b["health"] for b in backends(t)])
    b = backends(t)
    assert b[0]["timeline"] >= 2 and b[2]["timeline"] == b[0]["timeline"], b
    got = {t.request("GET", "/users?limit=2")[1].get("tenk-backend") for _ in range(20)}
    assert got == {"replica-2"}, got
    log = open(t.log_path).read()
    assert "a failover" in log and "replica 1 (unix:" in log


def pg_ctl(*args):
    """pg_ctl as the devenv's user (the data directories are tenkdev's)."""
    bindir = sorted(d for d in os.listdir("/usr/lib/postgresql"))[-1]
    cmd = [os.path.join("/usr/lib/postgresql", bindir, "bin", "pg_ctl")] + list(args)
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "tenkdev", "--"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def test_old_primary_on_another_timeline(tenkd, failover_env):
    """The old primary, written to after the failover and then started as a standby of the new
    one without pg_rewind: in recovery, but on timeline 1 with WAL the new primary never had.
    Listed as a db.replica, it is never used; the replica that followed is."""
    if not os.path.exists(os.path.join(VAR, "pg-promoted")):
        devenv("promote", "1")
    e = env_file()
    run = os.path.join(VAR, "run")
    old_port = int(_env()["TENK_PG_PORT"])
    new_port = int(re.search(r"\bport=(\d+)", e["TENK_DB"]).group(1))
    old = "host=%s port=%d dbname=tenk user=tenk" % (run, old_port)
    pgdir = os.path.join(VAR, "pg")
    r = pg_ctl("-D", pgdir, "-w", "-l", os.path.join(VAR, "pg.log"), "start")
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        # history the new primary does not have: a write on timeline 1 after the fork
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
                        old.replace("user=tenk", "user=postgres"), "-c",
                        "insert into users (name, email) values ('diverged', "
                        "'diverged-%d@failover.test')" % time.monotonic_ns()],
                       check=True, capture_output=True, timeout=30)
        r = pg_ctl("-D", pgdir, "-m", "fast", "-w", "stop")
        assert r.returncode == 0, r.stderr
        open(os.path.join(pgdir, "standby.signal"), "w").close()
        with open(os.path.join(pgdir, "postgresql.auto.conf"), "a") as f:
            f.write("primary_conninfo = 'host=%s port=%d user=postgres'\n" % (run, new_port))
        r = pg_ctl("-D", pgdir, "-w", "-l", os.path.join(VAR, "pg.log"), "start")
        assert r.returncode == 0, r.stdout + r.stderr
        t = tenkd(workers=2, admin=True, redis="", db=e["TENK_DB"],
                  conf="[db]\nreplica = %s\nreplica = %s\nreplica_max_lag = 500ms\n"
                  % (old, e["TENK_DB_REPLICA_2"]))
        for i in range(3):  # the new primary moves on
            body = json.dumps({"name": "n", "email": "n%d-%d@failover.test"
                               % (i, time.monotonic_ns())}).encode()
            assert t.request("POST", "/users", body=body,
                             headers={"Content-Type": "application/json"})[0] == 201
        wait_until(lambda: [b["health"] for b in backends(t)][0::2] == ["ok", "ok"] and
                   backends(t)[1]["health"] in ("wrong-role", "lagging"), timeout=10,
                   what="the old primary out, the follower in (now %r)" % backends(t))
        b = backends(t)
        print("old primary as a standby: %s, in recovery %s, timeline %s, LSN %s; primary LSN %s"
              % (b[1]["health"], b[1]["in_recovery"], b[1]["timeline"], b[1]["lsn"], b[0]["lsn"]))
        assert b[1]["in_recovery"]
        got = {t.request("GET", "/users?limit=2")[1].get("tenk-backend") for _ in range(20)}
        assert got == {"replica-2"}, got
    finally:
        pg_ctl("-D", pgdir, "-m", "immediate", "-w", "stop")
