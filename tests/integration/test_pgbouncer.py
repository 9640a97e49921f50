"""test_pgbouncer: tenk through a real PgBouncer 1.18 in transaction pooling mode
(scripts/devenv pgbouncer) with db.statements = unnamed: the whole users API and the
TechEmpower endpoints pass, concurrent requests each get their own rows (one query per round
trip: no pipelining in this mode), and what libpq's pipeline mode and named statements do
through PgBouncer (bench/lib/pgb_probe.c) is checked, so the README's finding stays true."""
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import threading

import pytest

import test_cache
import test_tfb
import test_users
from tenkharness import SRCDIR, TENK_DB, TENK_REDIS, TENKD, Tenkd, psql, skip, wait_until

NO_ADMIN = "[admin]\nlisten =\n"
UNNAMED = "[db]\nstatements = unnamed\n"
REDIS_DB = 11  # this file's Redis database number: flushed at will


def _var_dir():
    return os.environ.get("TENK_VAR_DIR") or os.path.join(SRCDIR, "var")


@pytest.fixture(scope="module")
def pgb():
    """The devenv's PgBouncer (started if it is not running): its conninfo and its console's."""
    if not TENK_DB:
        skip("TENK_DB not set (run scripts/devenv up)")
    if not shutil.which("pgbouncer"):
        skip("pgbouncer is not installed")
    r = subprocess.run([os.path.join(SRCDIR, "scripts", "devenv"), "pgbouncer"], cwd=SRCDIR,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, "scripts/devenv pgbouncer failed:\n%s%s" % (r.stdout, r.stderr)
    with open(os.path.join(_var_dir(), "devenv.env")) as f:
        m = re.search(r"^TENK_DB_PGBOUNCER='([^']*)'", f.read(), re.M)
    assert m, "var/devenv.env has no TENK_DB_PGBOUNCER"
    conninfo = m.group(1)
    console = re.sub(r"dbname=\S+", "dbname=pgbouncer", conninfo)
    return {"db": conninfo, "console": console}


def pgb_stats(pgb):
    """PgBouncer's SHOW STATS row of database tenk: total transactions and queries (zeros
    while no client has used database tenk yet: PgBouncer lists a database once used)."""
    out = psql("SHOW STATS", db=pgb["console"])
    for line in out.splitlines():
        f = line.split("|")
        if f[0] == "tenk":
            return {"xacts": int(f[1]), "queries": int(f[2])}
    return {"xacts": 0, "queries": 0}


@pytest.fixture(scope="module")
def server(pgb):
    """A tenkd whose every query goes through PgBouncer (no Redis: reads reach the database)."""
    t = Tenkd(workers=2, db=pgb["db"], redis="", conf=NO_ADMIN + UNNAMED)
    t.start()
    yield t
    t.stop()
    # nothing went wrong on the database side
    bad = [l for l in t.log().splitlines() if "db: postgres:" in l or "does not exist" in l]
    assert not bad, "\n".join(bad[:10])


class _Swap:
    """Point a test module's shared server at ours for one call."""

    def __init__(self, mod, srv):
        self.mod, self.srv = mod, srv

    def __enter__(self):
        self.old = self.mod._srv[0]
        self.mod._srv[0] = self.srv

    def __exit__(self, *exc):
        self.mod._srv[0] = self.old


USERS_TESTS = sorted(n for n in dir(test_users) if n.startswith("test_"))
# the database-down test starts its own server on a dead port: nothing to do with PgBouncer
TFB_TESTS = sorted(n for n in dir(test_tfb) if n.startswith("test_") and "down" not in n)


@pytest.mark.parametrize("name", USERS_TESTS)
def test_users_api_through_pgbouncer(server, pgb, name):
    before = pgb_stats(pgb)["queries"]
    with _Swap(test_users, server):
        getattr(test_users, name)()
    if "bad_parameters" not in name:  # (those are refused before any query)
        assert pgb_stats(pgb)["queries"] > before, "no query went through PgBouncer"


@pytest.mark.parametrize("name", TFB_TESTS)
def test_techempower_through_pgbouncer(server, pgb, name):
    before = pgb_stats(pgb)["queries"]
    with _Swap(test_tfb, server):
        getattr(test_tfb, name)()
    assert pgb_stats(pgb)["queries"] > before, "no query went through PgBouncer"


def test_cached_queries_through_pgbouncer(pgb):
    """/cached-queries with an empty cache reads cachedworld through PgBouncer."""
    if not TENK_REDIS:
        skip("TENK_REDIS not set")
    r = test_cache.Redis(db=REDIS_DB)
    try:
        r.cmd("FLUSHDB")
        with Tenkd(workers=1, db=pgb["db"], conf=NO_ADMIN + UNNAMED + "[redis]\ndb = %d\n" % REDIS_DB) as t:
            before = pgb_stats(pgb)["queries"]
            for q, n in (("?count=20", 20), ("?count=500", 500), ("?count=abc", 1)):
                r.cmd("FLUSHDB")
                st, h, body = t.request("GET", "/cached-queries" + q)
                assert st == 200 and h["content-type"] == "application/json", (q, st, body[:200])
                test_cache.check_worlds(json.loads(body), n)
            assert pgb_stats(pgb)["queries"] > before
    finally:
        r.close()


def _metric(t, name):
    st, _, body = t.request("GET", "/metrics", port=t.admin_port)
    assert st == 200
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_concurrent_requests_each_get_their_own_rows(pgb):
    """64 clients at once: every /users/{id} answers the id it asked for and every /queries row
    holds the table's value, while PgBouncer's 20 server connections rotate between tenk's 25.
    (With reads pipelined, some rows here came from other queries: README, PgBouncer.) The
    workers' exit summaries show no query went on a pipelined connection."""
    world = dict(tuple(map(int, l.split("|"))) for l in psql("select id, randomnumber from world").splitlines())
    ids = [int(x) for x in psql("select id from users where id <= 2000").split()]
    assert len(ids) > 100
    errors = []
    count = [0]
    lock = threading.Lock()
    before = pgb_stats(pgb)
    conf = UNNAMED + "[log]\nlevel = info\n"
    with Tenkd(workers=2, db=pgb["db"], redis="", admin=True, conf=conf) as t:
        acquires0 = _metric(t, "tenk_db_acquires_total")

        def client(seed):
            rnd = random.Random(seed)
            try:
                for _ in range(15):
                    i = rnd.choice(ids)
                    st, _, body = t.request("GET", "/users/%d" % i)
                    assert st == 200, (i, st, body[:200])
                    assert json.loads(body)["id"] == i, (i, body[:200])
                    st, _, body = t.request("GET", "/queries?queries=20")
                    assert st == 200, (st, body[:200])
                    for o in json.loads(body):
                        assert world[o["id"]] == o["randomNumber"], o
                    with lock:
                        count[0] += 1
            except Exception as e:  # reported below
                with lock:
                    errors.append(repr(e))

        th = [threading.Thread(target=client, args=(k,)) for k in range(64)]
        for x in th:
            x.start()
        for x in th:
            x.join(120)
        assert not errors, errors[:5]
        assert count[0] == 64 * 15
        # one connection per request (its 20 queries one after another on it)
        assert _metric(t, "tenk_db_acquires_total") - acquires0 >= 64 * 15 * 2
    after = pgb_stats(pgb)
    # one transaction per query: PgBouncer saw each of them end
    assert after["xacts"] - before["xacts"] >= 64 * 15 * 21, (before, after)
    # "db: N acquisitions, ..., P pipelined queries in B batches", one line per worker
    piped = re.findall(r"(\d+) pipelined queries in (\d+) batches", t.log())
    assert len(piped) == 2 and all(p == ("0", "0") for p in piped), (piped, t.log()[-2000:])
    bad = [l for l in t.log().splitlines() if "db: postgres:" in l or "does not exist" in l]
    assert not bad, "\n".join(bad[:10])


def test_prepared_mode_through_pgbouncer_fails_and_says_why(pgb):
    """The default (prepared) sets plan_cache_mode as a startup option: PgBouncer refuses the
    connection, tenk answers 503 and logs PgBouncer's reason."""
    with Tenkd(workers=1, db=pgb["db"], redis="", conf=NO_ADMIN + "[db]\nacquire_timeout = 500ms\n") as t:
        st, h, body = t.request("GET", "/db")
        assert st == 503 and json.loads(body)["error"], (st, body)
        wait_until(lambda: "unsupported startup parameter: options" in t.log(), 5,
                   "PgBouncer's reason in the log")
        # the worker still serves; its health check says the database is out of reach
        assert t.request("GET", "/plaintext")[0] == 200
        st, _, body = t.request("GET", "/health")
        assert st == 503 and json.loads(body)["status"] == "database unreachable", (st, body)


def test_bad_db_statements_names_the_line():
    d = tempfile.mkdtemp(prefix="tenk-conf-")
    path = os.path.join(d, "t.conf")
    with open(path, "w") as f:
        f.write("[db]\nmax_open = 5\n\nstatements = unamed\n")
    r = subprocess.run([TENKD, "-t", "-c", path], capture_output=True, text=True, timeout=10)
    assert r.returncode == 1, r
    assert "%s:4: db.statements: not one of the choices (accepted: prepared, unnamed)" % path in r.stderr, r.stderr
    with open(path, "w") as f:
        f.write("[db]\nstatements = unnamed\n")
    r = subprocess.run([TENKD, "-t", "-c", path], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and "configuration OK" in (r.stdout + r.stderr), r
    shutil.rmtree(d)


# --- what passes through PgBouncer: bench/lib/pgb_probe.c --------------------------------------

@pytest.fixture(scope="module")
def probe():
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        skip("no C compiler for bench/lib/pgb_probe.c")
    inc = subprocess.run(["pg_config", "--includedir"], capture_output=True, text=True).stdout.strip()
    d = tempfile.mkdtemp(prefix="tenk-pgb-probe-")
    exe = os.path.join(d, "pgb_probe")
    r = subprocess.run([cc, "-O2", "-o", exe, os.path.join(SRCDIR, "bench", "lib", "pgb_probe.c"),
                        "-I" + inc, "-lpq"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    yield exe
    shutil.rmtree(d)


def run_probe(exe, conninfo, mode, clients, rounds, per=8, batches=8, sql=None):
    env = dict(os.environ)
    if sql:
        env["PGB_PROBE_SQL"] = sql
    r = subprocess.run([exe, conninfo, mode, str(clients), str(rounds), str(per), str(batches)],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r
    m = re.search(r"expected=(\d+) ok=(\d+) wrong=(\d+) errors=(\d+) missing=(\d+) first_error=\"(.*)\"",
                  r.stdout)
    assert m, r.stdout
    return {"expected": int(m.group(1)), "ok": int(m.group(2)), "wrong": int(m.group(3)),
            "errors": int(m.group(4)), "missing": int(m.group(5)), "first_error": m.group(6)}


def test_pipeline_probe_through_pgbouncer(probe, pgb):
    """The probe's pipelines, 40 clients on PgBouncer's 20 server connections: one Sync in flight
    at a time, several Syncs sent before the first answer is read, and batches written at random
    moments while the answers before are read. Each answer here is the right one (tenk's own
    load found the crossing these miss: README, PgBouncer). With several Syncs in flight
    PgBouncer keeps the server connection until the pipeline is drained: it counts fewer
    transactions than Syncs, where one Sync at a time is one transaction each."""
    for mode, rounds in (("batch", 30), ("multi", 30), ("jitter", 10)):
        before = pgb_stats(pgb)["xacts"]
        res = run_probe(probe, pgb["db"], mode, 40, rounds, per=8, batches=4)
        xacts = pgb_stats(pgb)["xacts"] - before
        assert res["ok"] == res["expected"] and res["wrong"] == res["errors"] == res["missing"] == 0, (mode, res)
        syncs = 40 * rounds * (1 if mode == "batch" else 4)
        if mode == "batch":
            assert xacts >= syncs, (mode, xacts, syncs)
        else:
            assert xacts < syncs, (mode, xacts, syncs)


def test_named_statements_and_options_fail_through_pgbouncer(probe, pgb):
    """What db.statements = unnamed avoids: a statement prepared in one transaction is missing
    when the next lands on another server connection, and a startup "options" is refused.
    Directly against PostgreSQL both work."""
    direct = run_probe(probe, TENK_DB, "named", 40, 50)
    assert direct["ok"] == direct["expected"] and direct["errors"] == 0, direct
    res = run_probe(probe, pgb["db"], "named", 40, 50)
    # the next execution finds no "probe" on its server connection, or the PREPARE finds
    # another client's there
    assert res["errors"] > 0 and re.search("does not exist|already exists", res["first_error"]), res
    assert res["wrong"] == 0
    res = run_probe(probe, pgb["db"], "options", 2, 1)
    assert res["ok"] == 0 and "unsupported startup parameter: options" in res["first_error"], res
