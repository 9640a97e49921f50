"""test_torture.py: the short form of scripts/torture (issue 10) inside the integration suite.

Each test runs one torture case with shortened durations (scripts/torture.d/torture.py,
Ctx(short=True)) and asserts its bars: kill -9 under load costs only in-flight requests and
leaves the broker empty; 10 reloads under load fail no request; a malformed-request barrage
from four processes gets only 4xx or closes and leaks nothing; a flood of 3,000 clients
against workers limited to 1,024 fds neither crashes nor spins; slowloris, slow body and slow
read with 1,000 connections each are cut by the timeouts while /health stays fast;
PostgreSQL restarted and Redis killed under load give 503s only while the database is down
and no 5xx at all for the cache. Every case runs against private PostgreSQL and Redis
instances (scripts/torture.d/services.py), never the shared devenv's.
The full form (longer loads, 20 reloads, 10 minutes of memory) is `scripts/torture`.
"""
import atexit
import os
import shutil
import sys

from tenkharness import SRCDIR, skip

sys.path.insert(0, os.path.join(SRCDIR, "scripts", "torture.d"))
import torture  # noqa: E402


_CTX = []


def _ctx():
    """One run-wide context: private PostgreSQL/Redis (never the shared devenv's, where
    other runs lock tables and terminate backends), stopped when the runner exits."""
    if _CTX:
        if isinstance(_CTX[0], str):
            skip(_CTX[0])
        return _CTX[0]
    torture.raise_nofile()
    ctx = torture.Ctx(short=True)
    try:
        ctx.services()
    except Exception as e:  # no PostgreSQL server binaries, a port taken, ...
        _CTX.append("private PostgreSQL/Redis unavailable: %s" % e)
        skip(_CTX[0])
    atexit.register(ctx.close)
    _CTX.append(ctx)
    return ctx


def _show(name, res):
    print("  torture %s: %s" % (name, res), flush=True)


def test_kill9_under_load_costs_only_in_flight_requests():
    res = torture.case_kill9(_ctx())
    assert res["kills"] >= 2 and res["restarts"] >= res["kills"], res
    _show("kill9", res)


def test_reloads_under_load_fail_nothing():
    ctx = _ctx()
    res = torture.case_reload(ctx)
    assert res["failures"] == 0 and res["completed"] >= 10 and res["refused"] >= 5, res
    _show("reload", res)


def test_malformed_barrage_answers_4xx_or_closes_and_leaks_nothing():
    res = torture.case_malformed(_ctx())
    assert res["attacks"] >= 100 and res["table_cases"] >= 60, res
    _show("malformed", res)


def test_hostile_input_deep_json_and_limits_kill_no_worker():
    """Issue 15: nested JSON from 10^2 to 10^6 levels on every body-taking endpoint and every
    limit at and one past its edge on every route: 4xx with a JSON body, restart counts unchanged
    (2,000 '[' used to overflow a green thread's stack and kill the worker)."""
    res = torture.case_hostile(_ctx())
    assert res["requests"] >= 200 and res["statuses"].get(400, 0) >= 20, res
    _show("hostile", res)


def test_fd_flood_no_crash_no_busy_loop_service_resumes():
    res = torture.case_flood(_ctx())
    assert res["connected"] >= 2500, res
    _show("flood", res)


def test_slow_clients_are_cut_and_health_stays_fast():
    if not shutil.which("slowhttptest"):
        skip("slowhttptest not installed (apt-get install slowhttptest)")
    res = torture.case_slow(_ctx())
    for m in ("H", "B", "X"):
        assert res[m]["health_p99_ms"] < (150 if torture.sanitized() else 50), res
        assert res[m]["cut_after_peak_s"] is not None, res
    _show("slow", res)


def test_database_restart_and_redis_kill_under_load():
    ctx = _ctx()
    pg = torture.case_pg(ctx)
    assert pg["503"] > 0 and pg["ok"] > 0 and pg["recovery_s"] <= 2.0, pg
    _show("pg", pg)
    rd = torture.case_redis(ctx)
    assert rd["failures"] == 0, rd
    _show("redis", rd)


def test_valgrind_start_serve_stop_cycle():
    """Master and one worker under valgrind: serve a few requests (database, cache, a bad
    request), SIGTERM; no memory error and nothing definitely or indirectly lost in either
    process (regression: the moved environment of the process title was reported lost)."""
    import glob
    import signal
    import subprocess
    import tempfile
    from tenkharness import TENKD, Tenkd, wait_until
    if not shutil.which("valgrind"):
        skip("valgrind not installed")
    if torture.sanitized():
        skip("valgrind does not run ASan builds")
    ctx = _ctx()
    logdir = tempfile.mkdtemp(prefix="tenk-vg-")
    vg = os.path.join(logdir, "valgrind")
    with open(vg, "w") as f:
        f.write("#!/bin/sh\nexec valgrind -q --trace-children=yes --leak-check=full "
                "--show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect "
                "--log-file=%s/vg.%%p.log %s \"$@\"\n" % (logdir, TENKD))
    os.chmod(vg, 0o755)
    import tenkharness as th
    real, th.TENKD = th.TENKD, vg
    try:
        t = Tenkd(workers=1, db=ctx.db, redis=ctx.redis, timeout=60).start()
    finally:
        th.TENKD = real
    try:
        for path in ("/health", "/json", "/db", "/users/1", "/cached-queries?count=2", "/nope"):
            st, _, _ = t.request("GET", path, timeout=30)
            assert st in (200, 404), (path, st)
        s = t.connect(timeout=30)
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400"), "CL+TE not refused"
        s.close()
    finally:
        rc = t.stop(signal.SIGTERM, timeout=60)
    logs = glob.glob(os.path.join(logdir, "vg.*.log"))
    assert rc == 0 and len(logs) >= 2, (rc, logs)
    text = "".join(open(p).read() for p in logs)
    # -q: valgrind writes only errors and leaks
    assert "definitely lost" not in text and "indirectly lost" not in text and "Invalid" not in text \
        and "uninitialised" not in text, text[-6000:]
    shutil.rmtree(logdir, ignore_errors=True)
