"""test_tfb: TechEmpower's database tests (/db, /queries, /fortunes, /updates) against real PostgreSQL."""
import html
import atexit
import json
import re
import time

from tenkharness import Tenkd, need_db, psql, free_port

# the admin listener's default port may be taken by another instance
NO_ADMIN = "[admin]\nlisten =\n"
_srv = [None]


def _stop_shared():
    if _srv[0] is not None:
        _srv[0].stop()


atexit.register(_stop_shared)


def server():
    """One shared server for the read-only checks (started on first use)."""
    need_db()
    if _srv[0] is None or _srv[0].proc.poll() is not None:
        _srv[0] = Tenkd(workers=2, conf=NO_ADMIN).start()
    return _srv[0]


def get_json(path):
    st, h, body = server().request("GET", path)
    assert st == 200, (path, st, body[:200])
    assert h["content-type"] == "application/json", h
    return json.loads(body)


def check_world(o):
    assert set(o) == {"id", "randomNumber"}, o
    assert isinstance(o["id"], int) and 1 <= o["id"] <= 10000, o
    assert isinstance(o["randomNumber"], int) and 1 <= o["randomNumber"] <= 10000, o


def test_db_one_row_matching_the_table():
    o = get_json("/db")
    check_world(o)
    assert int(psql("select randomnumber from world where id = %d" % o["id"])) == o["randomNumber"]
    ids = {get_json("/db")["id"] for _ in range(20)}
    assert len(ids) > 10, "ids are not random: %r" % ids


def test_queries_parameter_rules():
    for q, n in [("", 1), ("?queries=", 1), ("?queries=0", 1), ("?queries=-5", 1), ("?queries=abc", 1),
                 ("?queries=1", 1), ("?queries=7", 7), ("?queries=20", 20), ("?queries=500", 500),
                 ("?queries=501", 500), ("?queries=99999999999999999999", 500), ("?other=3", 1)]:
        arr = get_json("/queries" + q)
        assert isinstance(arr, list) and len(arr) == n, (q, len(arr))
        for o in arr:
            check_world(o)


def test_fortunes_sorted_escaped_with_extra_row():
    st, h, body = server().request("GET", "/fortunes")
    assert st == 200
    assert h["content-type"] == "text/html; charset=utf-8", h
    text = body.decode("utf-8")
    assert text.startswith("<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table>")
    assert text.endswith("</table></body></html>")
    rows = re.findall(r"<tr><td>(\d+)</td><td>(.*?)</td></tr>", text)
    assert len(rows) == 13, len(rows)
    msgs = [html.unescape(m) for _, m in rows]
    assert msgs == sorted(msgs, key=lambda s: s.encode("utf-8")), msgs
    d = {int(i): html.unescape(m) for i, m in rows}
    assert d[0] == "Additional fortune added at request time."
    assert d[12] == "フレームワークのベンチマーク"
    assert d[11] == '<script>alert("This should not be displayed in a browser alert box.");</script>'
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert d[2] == "A computer scientist is someone who fixes things that aren't broken."


def test_updates_write_the_returned_numbers():
    for q, n in [("?queries=5", 5), ("?queries=abc", 1), ("?queries=0", 1), ("?queries=600", 500)]:
        arr = get_json("/updates" + q)
        assert len(arr) == n, (q, len(arr))
        for o in arr:
            check_world(o)
        last = {}
        for o in arr:
            last[o["id"]] = o["randomNumber"]
        # every id reports its final value, and the table holds it
        for o in arr:
            assert o["randomNumber"] == last[o["id"]], arr
        ids = sorted(last)[:50]
        got = psql("select id, randomnumber from world where id in (%s)" % ",".join(map(str, ids)))
        table = {int(a): int(b) for a, b in (line.split("|") for line in got.splitlines())}
        for i in ids:
            assert table[i] == last[i], (i, table[i], last[i])


def test_database_down_is_a_fast_503():
    need_db()
    # no cache: a cached /users/1 would (rightly) be served from Redis while the database is down
    # nothing listens on this port: connecting fails at once
    with Tenkd(workers=1, redis="", db="host=127.0.0.1 port=%d dbname=x user=x connect_timeout=2" % free_port(),
               conf=NO_ADMIN + "[db]\nacquire_timeout = 500ms\n") as t:
        for path in ("/db", "/queries?queries=3", "/fortunes", "/updates", "/users", "/users/1"):
            t0 = time.monotonic()
            st, h, body = t.request("GET", path)
            dt = time.monotonic() - t0
            assert st == 503, (path, st, body)
            assert h.get("retry-after") == "1", h
            assert json.loads(body)["error"], body
            assert dt < 0.6, (path, dt)
        # the worker still serves, and its health check tells the load balancer the truth
        assert t.request("GET", "/plaintext")[0] == 200
        st, _, body = t.request("GET", "/health")
        assert st == 503 and json.loads(body)["status"] == "database unreachable", (st, body)
