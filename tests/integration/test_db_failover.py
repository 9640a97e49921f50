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
    wait_until(lambda: [b["health"] for b in backends(t)] == ["ok", "wrong-role", "ok"],
               timeout=15, what="primary ok, replica 1 wrong-role, replica 2 ok (now %r)"
               % [b["health"] for b in backends(t)])
    b = backends(t)
    assert b[0]["timeline"] >= 2 and b[2]["timeline"] == b[0]["timeline"], b
    got = {t.request("GET", "/users?limit=2")[1].get("tenk-backend") for _ in range(20)}
    assert got == {"replica-2"}, got
    log = open(t.log_path).read()
    assert "a failover" in log and "replica 1 (unix:" in log
