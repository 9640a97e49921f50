"""test_stack_depth.py: how deep each endpoint drives a green thread's stack (issue 15).

Each scenario starts a fresh tenkd (one worker, runtime.stack_paint = on, access log on), ends
its PostgreSQL backends so that the request connects again, and sends one kind of request; the worker's stack high-water mark (`tenkctl threads
--json`: stack_max_used_bytes) is then that scenario's deepest stack use (plus the readiness
probe's /health, the shallowest path). The test fails if any path uses more than half of the
default runtime.stack_size: the default keeps at least 2x headroom over the deepest measured path.

`python3 tests/integration/test_stack_depth.py` prints the table (README, "Stack depth").
"""
import gzip
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tenkharness import TENK_DB, TENK_REDIS, Tenkd, build_request, need_db, need_redis, psql, wait_until  # noqa: E402
from tenkharness import Reader  # noqa: E402

DEFAULT_STACK = 64 * 1024  # etc/tenk.conf runtime.stack_size
DEEP32 = b"[" * 31 + b"]" * 31  # with the enclosing object: 32 levels, the most a body may nest


def _exchange(port, method, path, headers=None, body=None):
    import socket
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        s.sendall(build_request(method, path, headers, body))
        return Reader(s).response(head=(method == "HEAD"))
    finally:
        s.close()


def _uniq():
    return "%d%d" % (os.getpid(), time.monotonic_ns() % 10**9)


def _new_user():
    out = psql("INSERT INTO users (name, email) VALUES ('stack', 'stack-%s@example.com') RETURNING id" % _uniq())
    return int(out.strip().split()[0])


def _user_body(extra=b""):
    return b'{"name":"stack","email":"stack-%s@example.com"%s}' % (_uniq().encode(), extra)


GZ = {"Accept-Encoding": "gzip"}
JS = {"Content-Type": "application/json"}

# label, listener ("pub"/"admin"), requests [(method, path, headers, body)], conf overrides, want status
def scenarios():
    uid = _new_user()
    hit_uid = _new_user()
    return [
        ("GET /health", "pub", [("GET", "/health", None, None)], {}, 200),
        ("GET /json", "pub", [("GET", "/json", None, None)], {}, 200),
        ("GET /plaintext", "pub", [("GET", "/plaintext", None, None)], {}, 200),
        ("GET /users?limit=100", "pub", [("GET", "/users?limit=100", None, None)], {}, 200),
        ("GET /users?limit=100, gzip", "pub", [("GET", "/users?limit=100", GZ, None)], {}, 200),
        ("GET /users/{id}, cache miss", "pub", [("GET", "/users/%d" % uid, None, None)], {}, 200),
        ("GET /users/{id}, cache hit", "pub", [("GET", "/users/%d" % hit_uid, None, None)], {"warm": hit_uid}, 200),
        ("POST /users", "pub", [("POST", "/users", JS, _user_body())], {}, 201),
        ("POST /users, body nested 32 levels", "pub", [("POST", "/users", JS, _user_body(b',"x":' + DEEP32))], {}, 201),
        ("POST /users, 2,000 '[' (refused)", "pub", [("POST", "/users", JS, b"[" * 2000 + b"]" * 2000)], {}, 400),
        ("PUT /users/{id}", "pub", [("PUT", "/users/%d" % uid, JS, _user_body())], {}, 200),
        ("DELETE /users/{id}", "pub", [("DELETE", "/users/%d" % _new_user(), None, None)], {}, 204),
        ("GET /db (first: libpq connect)", "pub", [("GET", "/db", None, None)], {}, 200),
        # the master resolves host names (proc/resolve.c): the worker gets hostaddr and no
        # longer runs getaddrinfo() through NSS on a green thread
        ("GET /db, db.conninfo host=localhost (resolved by the master)", "pub", [("GET", "/db", None, None)],
         {"db": "localhost"}, 200),
        ("GET /queries?queries=500", "pub", [("GET", "/queries?queries=500", None, None)], {}, 200),
        ("GET /queries?queries=500, gzip", "pub", [("GET", "/queries?queries=500", GZ, None)], {}, 200),
        ("GET /fortunes", "pub", [("GET", "/fortunes", None, None)], {}, 200),
        ("GET /fortunes, gzip", "pub", [("GET", "/fortunes", GZ, None)], {}, 200),
        ("GET /updates?queries=500", "pub", [("GET", "/updates?queries=500", None, None)], {}, 200),
        ("GET /cached-queries?count=500", "pub", [("GET", "/cached-queries?count=500", None, None)] * 2, {}, 200),
        # hiredis connects (and resolves redis.addr) and parses replies in the loop's
        # callbacks, on the worker's own stack: this row shows only the green thread's side
        ("GET /cached-queries, redis.addr localhost", "pub",
         [("GET", "/cached-queries?count=100", None, None)] * 2, {"redis": "localhost"}, 200),
        ("GET /heavy", "pub", [("GET", "/heavy", None, None)], {}, 200),
        ("GET /nope (404)", "pub", [("GET", "/nope", None, None)], {}, 404),
        ("GET /metrics", "admin", [("GET", "/metrics", None, None)], {}, 200),
        ("GET /metrics, gzip", "admin", [("GET", "/metrics", GZ, None)], {}, 200),
        ("GET /debug/stats", "admin", [("GET", "/debug/stats", None, None)], {}, 200),
        ("GET /debug/threads", "admin", [("GET", "/debug/threads", None, None)], {}, 200),
        ("GET /debug/config", "admin", [("GET", "/debug/config", None, None)], {}, 200),
        ("GET /dashboard, gzip", "admin", [("GET", "/dashboard", GZ, None)], {}, 200),
        ("POST /debug/echo, 1 MiB", "admin", [("POST", "/debug/echo", None, b"e" * (1024 * 1024))], {}, 200),
    ]


def _threads(t):
    out = t.ctl("threads", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _quiet(t, created_at_least):
    """The worker's published scheduler state once every green thread has ended and at least
    created_at_least were created: the high-water mark then covers all of them (the mark and
    the counts are published together, about once a second)."""
    def ok():
        j = _threads(t)
        return j["threads"] == 0 and j["created"] >= created_at_least and j
    return wait_until(ok, 15, "the worker's green threads to end and be published", interval=0.1)


def measure(label, listener, reqs, over, want, stack=None):
    db, redis = TENK_DB, TENK_REDIS
    if "db" in over:  # a host name instead of the socket directory: libpq resolves it
        db = TENK_DB.replace("host=%s" % TENK_DB.split("host=")[1].split()[0], "host=" + over["db"])
    if over.get("redis") == "localhost":
        redis = "localhost:" + TENK_REDIS.rsplit(":", 1)[1]
    elif "db" in over:
        # no Redis, so no cache warm-up: the request's own getaddrinfo() is the worker's
        # first, and loads the NSS modules (dlopen) on the green thread, the deepest case
        redis = ""
    conf = "[runtime]\nstack_paint = on\n%s[log]\naccess_log = %s\naccess_log_format = json\n" % (
        "stack_size = %d\n" % stack if stack else "", os.devnull)
    if "warm" in over:  # a previous server put the user into Redis: this one hits
        with Tenkd(workers=1, db=db, redis=redis) as w:
            # a worker serves before its Redis connection is up (that request bypasses the
            # cache and stores nothing): ask until the user comes from Redis
            def cached():
                st, h, _ = w.request("GET", "/users/%d" % over["warm"])
                assert st == 200, st
                return h.get("x-cache") == "hit"
            wait_until(cached, 10, "the user in Redis")
    t0 = psql("SELECT clock_timestamp()").strip()
    with Tenkd(workers=1, db=db, redis=redis, admin=True, conf=conf) as t:
        port = t.port if listener == "pub" else t.admin_port
        before = _quiet(t, 1)["created"]  # the readiness probe's thread is counted
        # With Redis, a worker warms its cache at start and opens a database connection then,
        # off any request. End the backends, so that the request's own green thread connects
        # again (libpq connect + the query: the deepest database path), as after a restart.
        # (only those opened since this tenkd started: other tests may share the database)
        ended = psql("WITH b AS MATERIALIZED (SELECT pid FROM pg_stat_activity "
                     "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                     "AND backend_start >= '%s') "
                     "SELECT string_agg(pid::text, ',') FROM b WHERE pg_terminate_backend(pid)" % t0).strip()
        # pg_terminate_backend() only signals: wait until those backends have exited, so the
        # worker sees EOF on its idle connections and drops them instead of sending a write
        # (which is not re-run) into a dying one
        if ended:
            wait_until(lambda: psql("SELECT count(*) FROM pg_stat_activity WHERE pid IN (%s)"
                                    % ended).strip() == "0", 10, "the ended backends to exit")
        for m, p, h, b in reqs:
            st, hd, body = _exchange(port, m, p, h, b)
            assert st == want, (label, st, body[:200])
            if h and h.get("Accept-Encoding") == "gzip":
                assert hd.get("content-encoding") == "gzip", (label, hd)
                gzip.decompress(body)
            if "warm" in over:
                assert hd.get("x-cache") == "hit", (label, hd)
        # one connection, so at least one green thread, per request
        return _quiet(t, before + len(reqs))["stack_max_used_bytes"]


def run_all():
    need_db()
    need_redis()
    rows = []
    for sc in scenarios():
        rows.append((sc[0], measure(*sc)))
    return rows


def test_every_path_leaves_half_the_default_stack():
    rows = run_all()
    for label, used in rows:
        print("  %-55s %6d bytes" % (label, used), flush=True)
    worst = max(rows, key=lambda r: r[1])
    assert worst[1] * 2 <= DEFAULT_STACK, "%s uses %d bytes: less than 2x headroom in %d" % (
        worst[0], worst[1], DEFAULT_STACK)


if __name__ == "__main__":
    for label, used in run_all():
        print("| %s | %s |" % (label, format(used, ",")))
