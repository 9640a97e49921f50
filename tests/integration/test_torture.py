"""test_torture.py: the short form of scripts/torture (issue 10) inside the integration suite.

Each test runs one torture case with shortened durations (scripts/torture.d/torture.py,
Ctx(short=True)) and asserts its bars: kill -9 under load costs only in-flight requests and
leaves the broker empty; 10 reloads under load fail no request; a malformed-request barrage
from four processes gets only 4xx or closes and leaks nothing; a flood of 3,000 clients
against workers limited to 1,024 fds neither crashes nor spins; slowloris, slow body and slow
read with 1,000 connections each are cut by the timeouts while /health stays fast;
PostgreSQL restarted and Redis killed under load (private instances, never the devenv's)
give 503s only while the database is down and no 5xx at all for the cache.
The full form (longer loads, 20 reloads, 10 minutes of memory) is `scripts/torture`.
"""
import os
import shutil
import sys

from tenkharness import SRCDIR, TENK_DB, TENK_REDIS, skip

sys.path.insert(0, os.path.join(SRCDIR, "scripts", "torture.d"))
import torture  # noqa: E402


def _ctx():
    if not TENK_DB or not TENK_REDIS:
        skip("TENK_DB/TENK_REDIS not set (run scripts/devenv up)")
    torture.raise_nofile()
    return torture.Ctx(short=True)


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


def test_fd_flood_no_crash_no_busy_loop_service_resumes():
    res = torture.case_flood(_ctx())
    assert res["connected"] >= 2500, res
    _show("flood", res)


def test_slow_clients_are_cut_and_health_stays_fast():
    if not shutil.which("slowhttptest"):
        skip("slowhttptest not installed (apt-get install slowhttptest)")
    res = torture.case_slow(_ctx())
    for m in ("H", "B", "X"):
        assert res[m]["health_p99_ms"] < 50 and res[m]["cut_after_peak_s"] is not None, res
    _show("slow", res)


def test_database_restart_and_redis_kill_under_load():
    ctx = _ctx()
    try:
        try:
            ctx.services()
        except Exception as e:  # no PostgreSQL server binaries, port taken, ...
            skip("private PostgreSQL/Redis unavailable: %s" % e)
        pg = torture.case_pg(ctx)
        assert pg["503"] > 0 and pg["ok"] > 0 and pg["recovery_s"] <= 2.0, pg
        _show("pg", pg)
        rd = torture.case_redis(ctx)
        assert rd["failures"] == 0, rd
        _show("redis", rd)
    finally:
        ctx.close()
