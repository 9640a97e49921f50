"""test_broker_fairness: no worker starves for database connections.

A real tenkd with 4 workers shares a small db.max_open under concurrent load;
from the per-worker wait histograms of `tenkctl db --json` (4 buckets per
octave: a bucket bound is within 19% of the waits in it) every worker must have
waited often enough to count, and no worker's p99 wait may be above twice the
global p99 (or above MOVE_BOUND_US, what one rate-limited move takes, if that
is more). pg_stat_activity is watched throughout: max_open is never exceeded.

Two loads, each even on one side and uneven on the other (keep-alive
connections stay on the worker that accepted them, so the heavy ones land on
some workers and not others):
  * plain SELECTs (/db) from wrk plus a few keep-alive connections running
    /queries?queries=20: pipelined on shared connections, the waits are mostly
    inside the workers (local waits) and the broker must move connections to
    the workers whose queues are longer;
  * /updates (a connection of its own per request: the broker's queue and its
    cross-worker hand-offs) from wrk plus the same heavy SELECT connections.
"""
import asyncio
import json
import re
import shutil
import subprocess
import sys
import threading
import time

from tenkharness import SANITIZED, TENK_DB, Tenkd, need_db, skip
from test_broker import NO_ADMIN, Watcher, app_conninfo

WORKERS = 4
MAX_OPEN = 4
SECONDS = 4
MIN_WAITS = 30  # samples a worker needs for its p99 to count
# A worker left without a connection waits for one to move from another worker: the head waits
# 10 ms (TK_BROKER_LOCAL_BIAS_NS), the broker makes at most one move per 100 ms
# (TK_BROKER_MOVE_INTERVAL_NS, the rate limit that keeps /updates from collapsing into backend
# starts), the old backend must exit (20-40 ms with the box saturated, README) and a new one
# start: about 160 ms by design, 172 ms as the histogram's bucket bound. A worker's p99 within
# that is the policy at work, not starvation, however low the global p99 of that load (the
# pipelined /db load's was 10-60 ms here, and a worker that needed moves showed 72-145 ms).
MOVE_BOUND_US = 172237


def db_json(t):
    r = t.ctl("db", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def hist_by_worker(d):
    return {w["slot"]: w["wait_histogram_counts"] for w in d["workers"]}


def quantile(bounds, counts, q):
    """Upper bound (us) of the bucket holding quantile q; None if no samples."""
    n = sum(counts)
    if n == 0:
        return None
    cum = 0
    for b, c in zip(bounds, counts):
        cum += c
        if cum >= q * n:
            return float("inf") if b == "+Inf" else b
    return float("inf")


async def _heavy_client(port, path, until, out):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < until:
            w.write(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode())
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length: *(\d+)", head)
            await r.readexactly(int(m.group(1)) if m else 0)
            out.append(int(head.split(b" ", 2)[1]))
    except Exception as e:
        out.append(repr(e))
    finally:
        w.close()


def heavy_load(port, path, conns, seconds, out):
    until = time.monotonic() + seconds

    async def main():
        await asyncio.gather(*[_heavy_client(port, path, until, out) for _ in range(conns)])
    asyncio.run(main())


def wrk(port, path, conns, seconds):
    r = subprocess.run(["wrk", "-t2", "-c%d" % conns, "-d%ds" % seconds,
                        "http://127.0.0.1:%d%s" % (port, path)],
                       capture_output=True, text=True, timeout=seconds + 30)
    assert r.returncode == 0, r.stderr
    m = re.search(r"(\d+) requests in", r.stdout)
    assert m, r.stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", r.stdout)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", r.stdout)
    assert not bad, r.stdout
    assert not errs or sum(map(int, errs.groups())) == 0, r.stdout
    return int(m.group(1))


def run_phase(t, app, even_path, even_conns, heavy_path, heavy_conns):
    before = db_json(t)
    watcher = Watcher(app)
    watcher.start()
    heavy = []
    th = threading.Thread(target=heavy_load, args=(t.port, heavy_path, heavy_conns, SECONDS, heavy))
    th.start()
    try:
        n = wrk(t.port, even_path, even_conns, SECONDS)
    finally:
        th.join(SECONDS + 30)
        watcher.stop = True
        watcher.join()
    after = db_json(t)
    assert heavy and all(s == 200 for s in heavy), [s for s in heavy if s != 200][:5]
    assert watcher.samples >= 3, watcher.samples
    assert watcher.max <= MAX_OPEN, "db.max_open %d, saw %d backends" % (MAX_OPEN, watcher.max)
    assert after["waiting_all_high_water"] >= 1, after

    bounds = [b["le_us"] for b in after["wait_histogram"]]
    h0, h1 = hist_by_worker(before), hist_by_worker(after)
    per = {w: [c1 - c0 for c0, c1 in zip(h0.get(w, [0] * len(bounds)), h1[w])] for w in h1}
    total = [sum(col) for col in zip(*per.values())]
    g99 = quantile(bounds, total, 0.99)
    acq = {w["slot"]: w["acquires"] for w in after["workers"]}
    acq0 = {w["slot"]: w["acquires"] for w in before["workers"]}
    report = {w: dict(waits=sum(c), p50=quantile(bounds, c, 0.5), p99=quantile(bounds, c, 0.99),
                      acquires=acq[w] - acq0.get(w, 0)) for w, c in sorted(per.items())}
    print("%s + %d x %s: %d wrk requests, %d heavy; global p99 <= %s us; per worker %s" %
          (even_path, heavy_conns, heavy_path, n, len(heavy), g99, report))
    assert len(per) == WORKERS, per
    assert g99 is not None and g99 != float("inf"), total
    # A worker that never queued in this load is not starved (it had the
    # connections it needed); the p99s of those that did are compared, and
    # most must have (the test runs both loads: every worker must in one).
    waited = [w for w, r in report.items() if r["waits"] >= MIN_WAITS]
    assert len(waited) >= WORKERS - 1, "too few workers queued: %s" % report
    for w in waited:
        r = report[w]
        assert r["p99"] <= max(2 * g99, MOVE_BOUND_US), "worker %d p99 %s us > 2 x global p99 %s us and > %d us: %s" % (
            w, r["p99"], g99, MOVE_BOUND_US, report)
    return report


# pg_stat_activity polled as fast as one libpq connection allows, through
# ctypes in a process of its own (no psql process per sample, no GIL shared
# with the load): a backend that outlives its close by a millisecond is seen.
# Its own connection has another application_name. Prints "samples max over".
POLLER = r"""
import ctypes, ctypes.util, sys, time
conninfo, app, limit, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
pq = ctypes.CDLL(ctypes.util.find_library("pq") or "libpq.so.5")
pq.PQconnectdb.restype = ctypes.c_void_p
pq.PQconnectdb.argtypes = [ctypes.c_char_p]
pq.PQstatus.argtypes = [ctypes.c_void_p]
pq.PQexec.restype = ctypes.c_void_p
pq.PQexec.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
pq.PQresultStatus.argtypes = [ctypes.c_void_p]
pq.PQgetvalue.restype = ctypes.c_char_p
pq.PQgetvalue.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
pq.PQclear.argtypes = [ctypes.c_void_p]
conn = pq.PQconnectdb((conninfo + " application_name=tkit_watcher").encode())
if pq.PQstatus(conn) != 0:
    sys.exit("watcher cannot connect")
# autocommit: pg_stat_activity is read afresh for each statement
q = ("select count(*) from pg_stat_activity where application_name = '%s'" % app).encode()
print("ready", flush=True)
n = mx = over = 0
until = time.monotonic() + seconds
while time.monotonic() < until:
    res = pq.PQexec(conn, q)
    if pq.PQresultStatus(res) != 2:
        sys.exit("watcher query failed")
    c = int(pq.PQgetvalue(res, 0, 0))
    pq.PQclear(res)
    n, mx, over = n + 1, max(mx, c), over + (c > limit)
print(n, mx, over, flush=True)
"""


def test_max_open_holds_at_the_server_while_connections_move():
    """A slot is released only after its old backend has exited: with few
    slots, db.max_idle 1 (releases close) and /updates from 4 workers (the
    slots move between workers all the time), the backends PostgreSQL shows
    for this server never exceed db.max_open, sampled every few hundred
    microseconds. (Before the fix, a closed backend lingering for a moment
    after PQfinish() while its slot was already granted showed max_open + 1.)"""
    need_db()
    if shutil.which("wrk") is None:
        skip("wrk not installed")
    max_open = 3
    db, app = app_conninfo()
    # max_lifetime 100ms: connections are closed and their slots passed on
    # (conn_discard) all the time, besides the moves and max_idle closes
    conf = NO_ADMIN + ("[db]\nmax_open = %d\nmax_idle = 1\nmax_lifetime = 100ms\nacquire_timeout = 10s\n"
                       "query_timeout = 20s\n" % max_open)
    with Tenkd(workers=WORKERS, db=db, conf=conf) as t:
        assert t.request("GET", "/db")[0] == 200
        before = db_json(t)
        watcher = subprocess.Popen([sys.executable, "-c", POLLER, TENK_DB, app, str(max_open), str(SECONDS + 1)],
                                   stdout=subprocess.PIPE, text=True)
        assert watcher.stdout.readline().strip() == "ready"
        heavy = []
        th = threading.Thread(target=heavy_load, args=(t.port, "/updates?queries=5", 4, SECONDS, heavy))
        th.start()
        try:
            n = wrk(t.port, "/updates?queries=1", 32 if not SANITIZED else 16, SECONDS)
        finally:
            th.join(SECONDS + 30)
            out, _ = watcher.communicate(timeout=30)
        after = db_json(t)
        assert watcher.returncode == 0, out
        samples, seen, over = map(int, out.split())
        assert heavy and all(s == 200 for s in heavy), [s for s in heavy if s != 200][:5]
        moved = after["handoffs_remote"] - before["handoffs_remote"]
        closed = sum(after[k] - before[k] for k in ("max_idle_closed", "max_lifetime_closed"))
        print("%d wrk requests, %d heavy; %d pg_stat_activity samples, max %d backends (%d over %d); "
              "%d remote hand-offs, %d closed for max_idle or max_lifetime" %
              (n, len(heavy), samples, seen, over, max_open, moved, closed))
        assert samples >= 300, samples  # fast enough to see a lingering backend
        assert moved + closed >= 100, (moved, closed)  # connections did move and close
        assert seen <= max_open, "db.max_open %d, saw %d backends in %d of %d samples" % (
            max_open, seen, over, samples)
        assert seen >= 2, seen


def test_no_worker_starves_for_connections():
    need_db()
    if shutil.which("wrk") is None:
        skip("wrk not installed")
    db, app = app_conninfo()
    conf = NO_ADMIN + "[db]\nmax_open = %d\nmax_idle = %d\nacquire_timeout = 10s\nquery_timeout = 20s\n" % (
        MAX_OPEN, MAX_OPEN)
    with Tenkd(workers=WORKERS, db=db, conf=conf) as t:
        # every worker up and connected once, so none starts the run cold
        assert t.request("GET", "/db")[0] == 200
        a = run_phase(t, app, "/db", 256, "/queries?queries=20", 6)
        b = run_phase(t, app, "/updates?queries=2", 48 if not SANITIZED else 24, "/queries?queries=20", 6)
        for w in range(WORKERS):
            assert a[w]["waits"] + b[w]["waits"] >= MIN_WAITS, "worker %d hardly waited: %s %s" % (w, a, b)
