"""The admin listener: bearer token, /debug/stats vs tenkctl, /debug/threads (a parked request with its
wait reason, every worker), /debug/config with secrets masked, and the access log (JSON, combined,
SIGUSR1 reopen)."""
import json
import os
import re
import signal
import subprocess
import tempfile
import time

from tenkharness import (TENK_DB, Tenkd as _Tenkd, build_request, free_port, need_db, recv_response,
                         wait_until)


def Tenkd(**kw):
    """The harness's Tenkd with an admin port that never equals the public one
    (two free_port() calls can return the same port)."""
    t = _Tenkd(**kw)
    while t.admin_port is not None and t.admin_port == t.port:
        t.admin_port = free_port()
    return t

TOKEN = "tok-3f9a1c7e-admin"
ADMIN_PATHS = ["/metrics", "/debug/stats", "/debug/threads", "/debug/config"]


def admin_get(t, path, token=None, headers=None):
    h = dict(headers or {})
    if token:
        h["Authorization"] = "Bearer " + token
    return t.request("GET", path, headers=h, port=t.admin_port)


def admin_json(t, path, token=None):
    st, h, body = admin_get(t, path, token)
    assert st == 200, (path, st, body[:300])
    assert h["content-type"].startswith("application/json"), h["content-type"]
    return json.loads(body)


def test_token_is_required_and_checked():
    with Tenkd(workers=2, admin=True, db="", redis="", conf="[admin]\ntoken = %s\n" % TOKEN) as t:
        for path in ADMIN_PATHS:
            st, h, body = admin_get(t, path)
            assert st == 401, (path, st)
            assert h.get("www-authenticate", "").startswith("Bearer"), h
            assert b"token" in body
            for wrong in (TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "", "x" * len(TOKEN)):
                st, _, _ = admin_get(t, path, headers={"Authorization": "Bearer " + wrong})
                assert st == 401, (path, wrong, st)
            # not a bearer credential at all
            st, _, _ = admin_get(t, path, headers={"Authorization": "Basic " + TOKEN})
            assert st == 401
            st, _, _ = admin_get(t, path, token=TOKEN)
            assert st == 200, (path, st)
        # the scheme is case-insensitive (RFC 9110 11.1)
        assert admin_get(t, "/metrics", headers={"Authorization": "bearer " + TOKEN})[0] == 200
        # the token never leaks through /debug/config
        st, _, body = admin_get(t, "/debug/config", token=TOKEN)
        assert TOKEN.encode() not in body
        # the public listener knows none of these
        for path in ADMIN_PATHS:
            assert t.request("GET", path)[0] == 404, path


def test_no_token_configured_means_open_on_loopback():
    with Tenkd(workers=1, admin=True, db="", redis="") as t:
        for path in ADMIN_PATHS:
            assert admin_get(t, path)[0] == 200, path
        conf = admin_json(t, "/debug/config")
        host = conf["admin"]["listen"].rsplit(":", 1)[0]
        assert host in ("127.0.0.1", "[::1]", "localhost"), conf["admin"]


def test_debug_stats_mirrors_tenkctl():
    with Tenkd(workers=2, admin=True) as t:
        for i in range(40):
            t.request("GET", "/plaintext" if i % 4 else "/nope")
        if TENK_DB:
            for _ in range(5):
                assert t.request("GET", "/db")[0] == 200
        ctl = t.ctl("stats", "--json")
        assert ctl.returncode == 0, ctl.stderr
        ctl = json.loads(ctl.stdout)
        # nothing else runs: our snapshot is taken before this request is counted
        ours = admin_json(t, "/debug/stats")

        def keys(d, prefix=""):
            out = set()
            for k, v in d.items():
                out.add(prefix + k)
                if isinstance(v, dict):
                    out |= keys(v, prefix + k + ".")
            return out
        missing = keys({k: v for k, v in ctl.items() if k not in ("workers", "routes")}) - keys(ours)
        assert not missing, "tenkctl stats fields missing from /debug/stats: %s" % sorted(missing)
        for k in ("requests_total", "errors_total", "bytes_in_total", "status", "name", "master_pid",
                  "generation"):
            assert ours[k] == ctl[k], (k, ours[k], ctl[k])
        # the same green-thread states in both (counts differ: this request is a thread)
        assert set(ctl["threads"]["by_state"]) == set(ours["threads"]["by_state"]), (ctl["threads"],
                                                                                    ours["threads"])
        assert {w["pid"] for w in ours["workers"]} >= {w["pid"] for w in ctl["workers"]}
        wk = keys(ctl["workers"][0]) - keys(ours["workers"][0])
        assert not wk, "per-worker fields missing: %s" % sorted(wk)
        routes = {r["route"]: r for r in ours["routes"]}
        assert routes["GET /plaintext"]["requests"] == 30
        assert ours["status"]["4xx"] == 10
        assert ours["latency_us"]["p99"] >= ours["latency_us"]["p50"] > 0
        assert ours["master"]["rss_bytes"] > 0
        assert sum(c for _, c in ours["latency_histogram"]) == ours["requests_total"]
        live = [w for w in ours["workers"] if w["live"]]
        assert len(live) == 2 and all(w["process"]["rss_bytes"] > 0 for w in live)
        # the db block is what `tenkctl db --json` shows
        db = t.ctl("db", "--json")
        assert db.returncode == 0, db.stderr
        db = json.loads(db.stdout)
        if TENK_DB:
            assert ours["db"]["configured"] is True
            missing = set(db) - set(ours["db"]) - {"name", "master_pid", "generation", "uptime_s"}
            assert not missing, "tenkctl db fields missing: %s" % sorted(missing)
            for k in ("max_open", "wait_count"):
                assert ours["db"][k] == db[k], (k, ours["db"][k], db[k])
            assert ours["db"]["acquires"] >= 5
            # these can move between two snapshots (a worker's db timer turns an unused shared
            # connection idle, or back; acquires was seen 7 vs 8): they must agree once two
            # snapshots see the same state
            gauges = ("open", "in_use", "idle", "acquires")
            deadline = time.monotonic() + 5
            while True:
                a = admin_json(t, "/debug/stats")["db"]
                b = json.loads(t.ctl("db", "--json").stdout)
                if all(a[k] == b[k] for k in gauges) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            for k in gauges:
                assert a[k] == b[k], (k, a[k], b[k])


def test_debug_threads_shows_a_parked_request():
    need_db()
    with Tenkd(workers=2, admin=True, conf="[db]\nquery_timeout = 10s\n") as t:
        assert admin_get(t, "/debug/threads")[0] == 200  # fail before taking any lock
        # a user of our own, whose row we lock: nobody else's queries wait on it
        email = "it-threads-%d-%d@example.com" % (os.getpid(), int(time.time() * 1e6))
        st, _, body = t.request("POST", "/users", headers={"Content-Type": "application/json"},
                                body=json.dumps({"name": "Parked", "email": email}))
        assert st == 201, (st, body)
        uid = json.loads(body)["id"]
        locker = subprocess.Popen(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", TENK_DB],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        s = None
        try:
            locker.stdin.write("BEGIN;\nSELECT 1 FROM users WHERE id = %d FOR UPDATE;\n\\echo locked\n" % uid)
            locker.stdin.flush()
            assert locker.stdout.readline().strip() == "1"
            assert locker.stdout.readline().strip() == "locked"
            # the UPDATE behind PUT waits for our row lock: its green thread parks on PostgreSQL
            s = t.connect()
            s.sendall(build_request("PUT", "/users/%d" % uid, {"Content-Type": "application/json"},
                                    json.dumps({"name": "Parked 2", "email": email})))
            path = "/users/%d" % uid

            def parked():
                d = admin_json(t, "/debug/threads")
                hits = [x for x in d["threads"] if x.get("path") == path]
                return (d, hits[0]) if hits and hits[0]["state"] == "wait_db" else None
            d, th = wait_until(parked, 10, "the PUT to show as parked on PostgreSQL")
            assert th["method"] == "PUT"
            assert th["wait"] == "PostgreSQL reply"
            assert isinstance(th["id"], int) and th["id"] > 0
            assert th["pid"] in t.worker_pids()
            # its age grows while it waits
            age0 = th["age_s"]
            again = wait_until(lambda: [x for x in admin_json(t, "/debug/threads")["threads"]
                                        if x.get("path") == path and x["age_s"] > age0], 5,
                               "the parked thread's age to grow")
            assert again[0]["id"] == th["id"] and again[0]["pid"] == th["pid"]
            # every live worker answered, and the one serving us shows itself running
            pids = sorted(w["pid"] for w in d["workers"])
            assert pids == sorted(t.worker_pids()), (pids, t.worker_pids())
            assert all("error" not in w for w in d["workers"]), d["workers"]
            me = [x for x in d["threads"] if x.get("path") == "/debug/threads"]
            assert len(me) == 1 and me[0]["state"] == "running", me
            # each thread names its worker's slot, the same as tenkctl's
            slot_of = {w["pid"]: w["slot"] for w in d["workers"]}
            assert all(x["worker"] == slot_of[x["pid"]] for x in d["threads"]), d["threads"]
            ctl = json.loads(t.ctl("status", "--json").stdout)
            assert {w["pid"]: w["slot"] for w in ctl["workers"] if w["pid"] in slot_of} == slot_of
            # the per-worker counts agree with the list
            for w in d["workers"]:
                assert w["threads"] == sum(1 for x in d["threads"] if x["pid"] == w["pid"])
        finally:
            locker.stdin.write("ROLLBACK;\n")
            locker.stdin.close()
            locker.wait(10)
        st, _, body = recv_response(s)
        assert st == 200, (st, body)
        s.close()
        # once answered it is gone
        wait_until(lambda: not [x for x in admin_json(t, "/debug/threads")["threads"]
                                if x.get("path") == path], 5, "the PUT's thread to end")
        assert t.request("DELETE", "/users/%d" % uid)[0] in (200, 204)


def test_debug_threads_survives_a_stopped_worker():
    """A worker that can't answer costs the others a bounded wait, not the answer."""
    with Tenkd(workers=2, admin=True, db="", redis="") as t:
        a, b = t.worker_pids()
        # both workers must be up and answering before one is stopped (an ASan
        # build can still be starting the second when the first serves /health)
        wait_until(lambda: {w["pid"] for w in admin_json(t, "/debug/threads")["workers"]
                            if "error" not in w} == {a, b}, 10, "both workers in /debug/threads")
        os.kill(b, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            st, _, body = admin_get(t, "/debug/threads")  # only a can accept it
            took = time.monotonic() - t0
            assert st == 200, (st, body)
            d = json.loads(body)
            ws = {w["pid"]: w for w in d["workers"]}
            assert set(ws) == {a, b}, ws
            assert "error" in ws[b] and ws[b]["threads"] == 0, ws[b]
            assert "error" not in ws[a] and ws[a]["threads"] >= 1, ws[a]
            # bounded: at most the per-worker timeout (2 s) and change; it can be
            # quicker (a worker stopped before its thread-table socket listened
            # refuses the connection at once)
            assert took < 5, took
        finally:
            os.kill(b, signal.SIGCONT)
        d = wait_until(lambda: admin_json(t, "/debug/threads"), 5, "/debug/threads after SIGCONT")
        assert all("error" not in w for w in d["workers"]), d["workers"]


def test_debug_config_masks_secrets():
    secrets = ["hunter2-db-pw", "redis-pw-77x", TOKEN]
    db_kv = (TENK_DB or "host=/nonexistent dbname=tenk") + " password=%s" % secrets[0]
    conf = ("[db]\nconninfo = %s\nmax_open = 5\nmax_idle = 5\n[redis]\npassword = %s\n"
            "[admin]\ntoken = %s\n[limits]\nmax_headers = 77\n" % (db_kv, secrets[1], secrets[2]))
    with Tenkd(workers=1, admin=True, db="", redis="", conf=conf) as t:
        st, _, body = admin_get(t, "/debug/config", token=TOKEN)
        assert st == 200
        for s in secrets:
            assert s.encode() not in body, "secret %r leaked: %s" % (s, body)
        c = json.loads(body)
        assert "password=********" in c["db"]["conninfo"], c["db"]
        assert c["db"]["conninfo"].startswith((TENK_DB or "host=/nonexistent").split(" ")[0])
        assert c["redis"]["password"] == "********"
        assert c["admin"]["token"] == "********"
        assert c["limits"]["max_headers"] == 77
        assert c["db"]["max_open"] == 5
        assert c["server"]["name"] == t.name
        assert c["server"]["workers"] == 1
    # URI form, and a quoted key=value password with a space
    for conninfo, secret in (("postgresql://tenk:uri-secret-9@localhost:1/tenk?connect_timeout=1", "uri-secret-9"),
                             ("postgres://u@localhost:1/tenk?password=q-secret-5&sslmode=disable", "q-secret-5"),
                             ("host=localhost port=1 password = 'two words\\' x' dbname=tenk", "two words")):
        with Tenkd(workers=1, admin=True, db="", redis="",
                   conf="[db]\nconninfo = %s\nmax_open = 2\nmax_idle = 2\n" % conninfo) as t:
            st, _, body = admin_get(t, "/debug/config")
            assert st == 200 and secret.encode() not in body, body
            c = json.loads(body)
            assert "********" in c["db"]["conninfo"], c["db"]
            assert "tenk" in c["db"]["conninfo"]


def _lines(path):
    try:
        with open(path) as f:
            return [x for x in f.read().split("\n") if x]
    except FileNotFoundError:
        return []


def test_access_log_json_lines_and_reopen():
    d = tempfile.mkdtemp(prefix="tenk-al-")
    path = os.path.join(d, "access.log")
    conf = "[log]\naccess_log = %s\naccess_log_format = json\n" % path
    with Tenkd(workers=2, admin=True, db="", redis="", conf=conf) as t:
        ua = 'tk-test/1 "quoted" \\ back'
        for i in range(6):
            st, _, _ = t.request("GET", "/plaintext?i=%d" % i, headers={"User-Agent": ua, "Referer": "http://r/"})
            assert st == 200
        assert t.request("GET", "/nope")[0] == 404
        # flushed within a second without any further traffic
        mine = lambda: [x for x in _lines(path) if '"/health"' not in x]  # not the harness's probes
        wait_until(lambda: len(mine()) >= 7, 3, "7 access-log lines")
        recs = [json.loads(x) for x in mine()]
        ok = [r for r in recs if r["path"] == "/plaintext"]
        assert len(ok) == 6, recs
        r = ok[0]
        assert r["method"] == "GET" and r["status"] == 200 and r["protocol"] == "HTTP/1.1"
        assert r["user_agent"] == ua and r["referer"] == "http://r/"
        assert r["bytes_out"] > len("Hello, World!") and r.get("bytes_in", 1) > 0
        assert r["remote"] == "127.0.0.1" and r["duration_s"] >= 0
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", r["time"]), r["time"]
        assert sorted({x["query"] for x in ok}) == ["i=%d" % i for i in range(6)]
        assert {x["worker"] for x in recs} <= {0, 1, 2, 3}
        assert [x for x in recs if x["path"] == "/nope"][0]["status"] == 404
        # logrotate: move the file away, SIGUSR1, new lines go to a new file
        os.rename(path, path + ".1")
        t.signal(signal.SIGUSR1)
        wait_until(lambda: os.path.exists(path), 5, "the access log to be reopened")
        # every worker has reopened once the file exists for each: probe until lines land there
        n_old = len(_lines(path + ".1"))

        def landed():
            t.request("GET", "/json")
            return len([x for x in _lines(path) if '"/json"' in x]) >= 1
        wait_until(landed, 5, "requests to be logged to the new file")
        for _ in range(4):
            t.request("GET", "/json")
        wait_until(lambda: len([x for x in _lines(path) if '"/json"' in x]) >= 5, 3,
                   "all /json lines in the new file")
        assert len(_lines(path + ".1")) <= n_old + 2 * t.workers, "old file kept growing"


def test_access_log_combined_format():
    d = tempfile.mkdtemp(prefix="tenk-al-")
    path = os.path.join(d, "access.log")
    conf = "[log]\naccess_log = %s\naccess_log_format = combined\n" % path
    with Tenkd(workers=1, admin=True, db="", redis="", conf=conf) as t:
        st, _, _ = t.request("GET", "/json?a=%22x%22", headers={"User-Agent": 'ua "q"'})
        assert st == 200
        assert t.request("GET", "/nope", headers={"Referer": "http://x/"})[0] == 404
        # the harness's readiness probes (/health) may land in the file at any time
        mine = lambda: [x for x in _lines(path) if "/health" not in x]
        wait_until(lambda: len(mine()) >= 2, 3, "2 access-log lines")
        lines = mine()
        rx = re.compile(r'^127\.0\.0\.1 - - \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
                        r'"([^"]*)" (\d{3}) (\d+) "([^"]*)" "([^"]*)" (\d+\.\d{6})$')
        m = rx.match(lines[0])
        assert m, lines[0]
        assert m.group(1) == "GET /json?a=%22x%22 HTTP/1.1" and m.group(2) == "200"
        assert m.group(4) == "-" and m.group(5) == "ua \\x22q\\x22", lines[0]
        m = rx.match(lines[1])
        assert m and m.group(1) == "GET /nope HTTP/1.1" and m.group(2) == "404", lines[1]
        assert m.group(4) == "http://x/" and m.group(5) == "-", lines[1]
