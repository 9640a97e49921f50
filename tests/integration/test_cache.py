"""test_cache: Redis cache-aside (users, /cached-queries) against real Redis and PostgreSQL.

Every server here uses its own Redis database number (or its own redis-server),
so flushing it never disturbs other instances sharing the devenv's Redis.
"""
import atexit
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid

from tenkharness import (TENK_DB, TENK_REDIS, Tenkd, free_port, need_db, need_redis, psql, skip,
                         wait_until)

NO_ADMIN = "[admin]\nlisten =\n"
TEST_DB = 9  # Redis database of the shared server: flushed at will
_srv = [None]


# --- a minimal RESP client (stdlib only) -----------------------------------------------

class Redis:
    def __init__(self, addr=None, db=0, timeout=5.0):
        host, port = (addr or TENK_REDIS).rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""
        if db:
            self.cmd("SELECT", db)

    def close(self):
        self.sock.close()

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("redis closed the connection")
                self.buf += chunk
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise ValueError("bad RESP line %r" % line)

    def cmd(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)
        return self._reply()


def rcmd(*args, db=TEST_DB):
    r = Redis(db=db)
    try:
        return r.cmd(*args)
    finally:
        r.close()


# --- servers ------------------------------------------------------------------------------

def _stop_shared():
    if _srv[0] is not None:
        _srv[0].stop()


atexit.register(_stop_shared)


def redis_conf(addr, db=TEST_DB, extra=""):
    return "[redis]\naddr = %s\ndb = %d\n%s" % (addr, db, extra)


def server():
    """Two workers on Redis db 9, cache.ttl 120 s, negative 7 s."""
    need_db()
    need_redis()
    if _srv[0] is None or _srv[0].proc.poll() is not None:
        conf = NO_ADMIN + redis_conf(TENK_REDIS) + "\n[cache]\nttl = 120s\nnegative_ttl = 7s\n"
        _srv[0] = Tenkd(workers=2, conf=conf, redis="").start()
        wait_loaded(TEST_DB)
    return _srv[0]


def wait_loaded(db, timeout=15):
    """The start-up load of cachedworld into Redis db is done (the last id is there and the
    key count stops growing)."""
    def done():
        return rcmd("EXISTS", "cachedworld:10000", db=db) and \
            sum(1 for i in (1, 2500, 5000, 7500, 9999) if rcmd("EXISTS", "cachedworld:%d" % i, db=db)) == 5
    wait_until(done, timeout, "cachedworld loaded into Redis db %d" % db)


def stats(t):
    r = t.ctl("stats", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def cache_stats(t):
    return stats(t)["cache"]


def req(t, method, path, body=None):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    st, h, b = t.request(method, path, headers=headers, body=body)
    return st, h, (json.loads(b) if b and h.get("content-type") == "application/json" else b)


def new_user(t):
    st, _, u = req(t, "POST", "/users", {"name": "cache-%s" % uuid.uuid4().hex[:8],
                                         "email": "cache-%s@example.com" % uuid.uuid4().hex})
    assert st == 201, (st, u)
    return u


# --- cache-aside for /users/{id} -------------------------------------------------------------

def test_miss_then_hit_with_ttl():
    t = server()
    u = new_user(t)
    key = "user:%d" % u["id"]
    st, h, body = req(t, "GET", "/users/%d" % u["id"])
    assert st == 200 and h.get("x-cache") == "miss" and body == u, (st, h, body)
    stored = rcmd("GET", key)
    assert stored is not None and json.loads(stored) == u, stored
    ttl = rcmd("TTL", key)
    assert 100 < ttl <= 120, ttl  # cache.ttl = 120s
    # fresh connections: the other worker hits too (the cache is Redis, not per worker)
    for _ in range(4):
        st, h, body = req(t, "GET", "/users/%d" % u["id"])
        assert st == 200 and h.get("x-cache") == "hit" and body == u, (st, h, body)
    # a hit is what Redis holds, not the database: change the row behind tenk's back
    psql("update users set name = 'changed behind' where id = %d" % u["id"])
    st, h, body = req(t, "GET", "/users/%d" % u["id"])
    assert st == 200 and h["x-cache"] == "hit" and body["name"] == u["name"], body


def test_counters_in_tenkctl_stats():
    t = server()
    u = new_user(t)
    before = cache_stats(t)
    req(t, "GET", "/users/%d" % u["id"])  # miss
    for _ in range(3):
        req(t, "GET", "/users/%d" % u["id"])  # hits
    wait_until(lambda: cache_stats(t)["hits"] >= before["hits"] + 3 and
               cache_stats(t)["misses"] >= before["misses"] + 1, 5, "tenkctl counts the hits and the miss")
    c = cache_stats(t)
    assert 0 < c["hit_ratio"] < 1 and c["connected"] == 2 and c["latency_us_mean"] > 0, c
    human = t.ctl("stats").stdout
    assert "cache" in human and "bypasses" in human and "hit rate" in human, human


def test_put_invalidates():
    t = server()
    u = new_user(t)
    path = "/users/%d" % u["id"]
    assert req(t, "GET", path)[1]["x-cache"] == "miss"
    assert req(t, "GET", path)[1]["x-cache"] == "hit"
    new = {"name": "renamed", "email": "renamed-%s@example.com" % uuid.uuid4().hex}
    st, _, body = req(t, "PUT", path, new)
    assert st == 200 and body["name"] == "renamed", body
    assert rcmd("EXISTS", "user:%d" % u["id"]) == 0
    st, h, body = req(t, "GET", path)
    assert st == 200 and h["x-cache"] == "miss" and body["name"] == "renamed" and \
        body["email"] == new["email"], (h, body)
    st, h, body = req(t, "GET", path)
    assert h["x-cache"] == "hit" and body["name"] == "renamed"


RACE_DB = 10  # Redis database of the two-server race test
GATE_LOCK = 731_515  # advisory lock key the gate waits on


def _gate_install():
    """A read of users row N that waits on advisory lock GATE_LOCK while N is in tk_test_gate:
    a restrictive row-level security policy calls tk_test_gate_pass(id) for every row read, after
    the statement took its snapshot. So the read returns the row as it was when it began, however
    long it waits, which is the window in which another worker's update can commit."""
    psql("""
CREATE TABLE IF NOT EXISTS tk_test_gate (id bigint PRIMARY KEY);
CREATE OR REPLACE FUNCTION tk_test_gate_pass(uid bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM tk_test_gate WHERE id = uid) THEN
        PERFORM pg_advisory_lock_shared(%d);
        PERFORM pg_advisory_unlock_shared(%d);
    END IF;
    RETURN true;
END $$;
DROP POLICY IF EXISTS tk_test_all ON users;
DROP POLICY IF EXISTS tk_test_gate ON users;
CREATE POLICY tk_test_all ON users USING (true) WITH CHECK (true);
CREATE POLICY tk_test_gate ON users AS RESTRICTIVE FOR SELECT USING (tk_test_gate_pass(id));
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
""" % (GATE_LOCK, GATE_LOCK))


def _gate_remove():
    psql("""
ALTER TABLE users NO FORCE ROW LEVEL SECURITY;
ALTER TABLE users DISABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tk_test_gate ON users;
DROP POLICY IF EXISTS tk_test_all ON users;
DROP FUNCTION IF EXISTS tk_test_gate_pass(bigint);
DROP TABLE IF EXISTS tk_test_gate;
""")


def test_stale_load_in_another_worker_is_not_stored():
    """Worker B misses user:N and reads the row; worker A (another process) commits an update and
    invalidates the key; only then does B's load finish and try to store what it read. The old row
    must never be served from the cache afterwards (it used to be, for cache.ttl)."""
    need_db()
    need_redis()
    rcmd("FLUSHDB", db=RACE_DB)
    conf = NO_ADMIN + redis_conf(TENK_REDIS, db=RACE_DB) + "timeout = 2s\n\n[cache]\nttl = 120s\n"
    _gate_install()
    holder = None
    try:
        with Tenkd(workers=1, conf=conf, redis="") as a, Tenkd(workers=1, conf=conf, redis="") as b:
            u = new_user(a)
            n, path = u["id"], "/users/%d" % u["id"]
            # the gate is closed: a session holds GATE_LOCK until we say so
            holder = subprocess.Popen(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                       TENK_DB], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True)
            holder.stdin.write("SELECT 'locked' FROM pg_advisory_lock(%d);\n" % GATE_LOCK)
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "locked"
            psql("INSERT INTO tk_test_gate VALUES (%d)" % n)
            got = {}
            reader = threading.Thread(target=lambda: got.update(r=req(b, "GET", path)))
            reader.start()
            # B's load has its snapshot and waits at the gate
            wait_until(lambda: psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type "
                                    "= 'Lock' AND wait_event = 'advisory'") == "1",
                       10, "the reader waiting at the gate")
            psql("DELETE FROM tk_test_gate")  # A's UPDATE ... RETURNING passes the gate
            new = {"name": "raced", "email": "raced-%s@example.com" % uuid.uuid4().hex}
            st, _, body = req(a, "PUT", path, new)
            assert st == 200 and body["name"] == "raced", (st, body)
            # open the gate: B's load returns the row it read before the update, and stores it
            # (or not)
            holder.stdin.write("SELECT pg_advisory_unlock(%d);\n" % GATE_LOCK)
            holder.stdin.close()
            holder.wait(timeout=10)
            holder = None
            reader.join(timeout=10)
            assert not reader.is_alive()
            st, h, old = got["r"]
            assert st == 200 and h["x-cache"] == "miss" and old["name"] == u["name"], (st, h, old)
            # from now on, every read on either worker sees the update
            for t in (a, b, a, b):
                st, h, body = req(t, "GET", path)
                assert st == 200 and body["name"] == "raced", (h.get("x-cache"), body)
            assert rcmd("GET", "user:%d" % n, db=RACE_DB) is not None  # cached again, the new row
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        _gate_remove()
        rcmd("FLUSHDB", db=RACE_DB)


def test_delete_invalidates_then_caches_not_found():
    t = server()
    u = new_user(t)
    path = "/users/%d" % u["id"]
    req(t, "GET", path)
    assert req(t, "GET", path)[1]["x-cache"] == "hit"
    st, _, _ = req(t, "DELETE", path)
    assert st == 204
    st, h, _ = req(t, "GET", path)
    assert st == 404 and h["x-cache"] == "miss", (st, h)
    st, h, _ = req(t, "GET", path)
    assert st == 404 and h["x-cache"] == "hit", (st, h)


def test_negative_caching_and_create_invalidates_it():
    t = server()
    missing = 1900000000 + random.randrange(10 ** 8)
    path = "/users/%d" % missing
    st, h, _ = req(t, "GET", path)
    assert st == 404 and h["x-cache"] == "miss"
    assert rcmd("GET", "user:%d" % missing) == b""  # "" = not found
    ttl = rcmd("TTL", "user:%d" % missing)
    assert 0 < ttl <= 7, ttl  # cache.negative_ttl = 7s
    st, h, _ = req(t, "GET", path)
    assert st == 404 and h["x-cache"] == "hit"
    # an id looked up before it exists: its creation drops the negative entry
    nxt = int(psql("select last_value + 1 from users_id_seq"))
    st, h, _ = req(t, "GET", "/users/%d" % nxt)
    assert st == 404 and rcmd("EXISTS", "user:%d" % nxt) == 1
    u = new_user(t)
    if u["id"] != nxt:
        return  # someone else took that id meanwhile: nothing to check
    st, h, body = req(t, "GET", "/users/%d" % nxt)
    assert st == 200 and body == u, (st, body)


def test_without_redis_the_users_api_uses_the_database():
    need_db()
    with Tenkd(workers=1, conf=NO_ADMIN, redis="") as t:
        st, h, body = req(t, "GET", "/users/1")
        assert st == 200 and body["id"] == 1 and "x-cache" not in h, h
        assert cache_stats(t)["hits"] + cache_stats(t)["misses"] == 0


# --- single flight -----------------------------------------------------------------------------

class PgProxy:
    """A TCP proxy to PostgreSQL that counts the executions of statements whose SQL contains
    `needle`, and can hold the server's replies (so queries stay in flight)."""

    def __init__(self, needle):
        self.needle = needle.encode()
        self.port = free_port()
        self.pg_port = int(os.environ.get("TENK_PG_PORT", "62329"))
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(64)
        self.released = threading.Event()
        self.released.set()
        self.lock = threading.Lock()
        self.executions = 0
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def conninfo(self):
        kv = dict(p.split("=", 1) for p in TENK_DB.split())
        kv.update(host="127.0.0.1", port=str(self.port), sslmode="disable")
        return " ".join("%s=%s" % p for p in kv.items())

    def close(self):
        self.stop = True
        self.released.set()
        self.lsock.close()

    def _accept(self):
        while not self.stop:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.pg_port))
            threading.Thread(target=self._up, args=(c, s), daemon=True).start()
            threading.Thread(target=self._down, args=(s, c), daemon=True).start()

    def _down(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self.released.wait()
                dst.sendall(data)
        except OSError:
            pass
        dst.close()

    def _up(self, src, dst):
        """Forward client -> server, parsing the frontend protocol on the way."""
        buf, started, names = b"", False, {}
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                buf += data
                while True:
                    if not started:  # untyped: SSLRequest / StartupMessage
                        if len(buf) < 8:
                            break
                        n = int.from_bytes(buf[:4], "big")
                        if len(buf) < n:
                            break
                        code = int.from_bytes(buf[4:8], "big")
                        buf = buf[n:]
                        started = code != 80877103  # anything but the SSL request starts the session
                        continue
                    if len(buf) < 5:
                        break
                    n = int.from_bytes(buf[1:5], "big")
                    if len(buf) < n + 1:
                        break
                    kind, body, buf = buf[:1], buf[5:n + 1], buf[n + 1:]
                    if kind == b"P":  # Parse: name \0 query \0 ...
                        name, rest = body.split(b"\0", 1)
                        names[name] = rest.split(b"\0", 1)[0]
                    elif kind == b"B":  # Bind: portal \0 statement \0 ...
                        stmt = body.split(b"\0", 2)[1]
                        if self.needle in names.get(stmt, b""):
                            with self.lock:
                                self.executions += 1
                    elif kind == b"Q" and self.needle in body:
                        with self.lock:
                            self.executions += 1
        except OSError:
            pass
        dst.close()


def test_single_flight_50_concurrent_misses_make_one_query():
    need_db()
    need_redis()
    proxy = PgProxy("FROM users WHERE id = $1")
    conf = NO_ADMIN + "[db]\nconninfo = %s\n" % proxy.conninfo() + redis_conf(TENK_REDIS)
    try:
        with Tenkd(workers=1, conf=conf, db="", redis="") as t:
            # a warm database connection with the statement prepared
            assert req(t, "GET", "/users/2")[0] == 200
            uid = int(psql("insert into users(name, email) values ('sf', 'sf-%s@example.com') "
                           "returning id" % uuid.uuid4().hex).split()[0])
            rcmd("DEL", "user:%d" % uid)
            base = proxy.executions
            proxy.released.clear()  # queries now stay in flight until released
            results = []

            def get():
                results.append(req(t, "GET", "/users/%d" % uid)[:2])

            threads = [threading.Thread(target=get) for _ in range(50)]
            for th in threads:
                th.start()
            # all 50 requests are inside tenk (one waits on the database, 49 on it)
            wait_until(lambda: stats(t)["connections"]["active"] >= 50, 10, "50 requests in flight")
            wait_until(lambda: proxy.executions > base, 5, "the leader's query")
            proxy.released.set()
            for th in threads:
                th.join(10)
            assert len(results) == 50 and all(st == 200 for st, _ in results), results
            assert proxy.executions - base == 1, proxy.executions - base
            misses = sum(1 for _, h in results if h["x-cache"] == "miss")
            assert misses == 50, misses  # they all missed; one query served them
            assert req(t, "GET", "/users/%d" % uid)[1]["x-cache"] == "hit"
            assert proxy.executions - base == 1
    finally:
        proxy.close()


# --- /cached-queries -----------------------------------------------------------------------------

def check_worlds(arr, n):
    assert isinstance(arr, list) and len(arr) == n, (n, arr if not isinstance(arr, list) else len(arr))
    ids = sorted({w["id"] for w in arr})
    assert all(1 <= i <= 10000 for i in ids)
    real = dict(tuple(map(int, line.split("|"))) for line in
                psql("select id, randomnumber from cachedworld where id in (%s)" %
                     ",".join(map(str, ids))).splitlines())
    for w in arr:
        assert set(w) == {"id", "randomNumber"} and w["randomNumber"] == real[w["id"]], w


def test_cached_queries_count_rules():
    t = server()
    for q, n in (("", 1), ("?count=", 1), ("?count=0", 1), ("?count=-3", 1), ("?count=abc", 1),
                 ("?count=1", 1), ("?count=20", 20), ("?count=500", 500), ("?count=501", 500),
                 ("?count=100000", 500), ("?other=5", 1)):
        st, h, arr = req(t, "GET", "/cached-queries" + q)
        assert st == 200 and h["content-type"] == "application/json", (q, st)
        check_worlds(arr, n)


def test_cached_queries_served_by_redis():
    t = server()
    before = cache_stats(t)
    for _ in range(5):
        st, _, arr = req(t, "GET", "/cached-queries?count=20")
        assert st == 200
        check_worlds(arr, 20)
    wait_until(lambda: cache_stats(t)["hits"] >= before["hits"] + 100, 5, "100 more hits")
    assert cache_stats(t)["misses"] == before["misses"]


def test_cached_queries_refill_after_flush():
    t = server()
    rcmd("FLUSHDB")
    st, _, arr = req(t, "GET", "/cached-queries?count=500")
    assert st == 200
    check_worlds(arr, 500)  # from the database
    ids = {w["id"] for w in arr}
    # put back in the background, with the database's values
    wait_until(lambda: all(rcmd("EXISTS", "cachedworld:%d" % i) for i in list(ids)[:50]), 5,
               "missing keys refilled")
    for w in arr[:20]:
        assert int(rcmd("GET", "cachedworld:%d" % w["id"])) == w["randomNumber"]
        assert rcmd("TTL", "cachedworld:%d" % w["id"]) == -1  # no expiry


# --- Redis failing: down, restarted, slow --------------------------------------------------------

class OwnRedis:
    """A private redis-server on a free port."""

    def __init__(self, port=None):
        if not shutil.which("redis-server"):
            skip("redis-server not installed")
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="tenk-it-redis-")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up():
            try:
                r = Redis("127.0.0.1:%d" % self.port, timeout=0.5)
                ok = r.cmd("PING") == "PONG"
                r.close()
                return ok
            except OSError:
                return False
        wait_until(up, 10, "redis-server on port %d" % self.port)
        return self

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port


class Load:
    """Closed-loop load in threads: GET /users/{random id} and /cached-queries; counts statuses."""

    def __init__(self, t, nthreads=4):
        self.t = t
        self.status = {}
        self.failures = []
        self.lock = threading.Lock()
        self.running = True
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(nthreads)]
        for th in self.threads:
            th.start()

    def _run(self):
        while self.running:
            path = "/users/%d" % random.randint(1, 500) if random.random() < 0.8 \
                else "/cached-queries?count=5"
            try:
                st = self.t.request("GET", path, timeout=5)[0]
            except Exception as e:  # a refused or dropped connection is a failure too
                with self.lock:
                    self.failures.append(repr(e))
                continue
            with self.lock:
                self.status[st] = self.status.get(st, 0) + 1

    def total(self):
        with self.lock:
            return sum(self.status.values())

    def stop(self):
        self.running = False
        for th in self.threads:
            th.join(10)


def test_redis_killed_mid_load_then_restarted():
    need_db()
    r = OwnRedis().start()
    try:
        with Tenkd(workers=2, conf=NO_ADMIN + redis_conf(r.addr, db=0), redis="") as t:
            load = Load(t)
            try:
                wait_until(lambda: cache_stats(t)["hits"] > 50, 10, "hits before the kill")
                r.kill()
                c0 = cache_stats(t)
                n0 = load.total()
                # tenk noticed (errors or bypasses counted after the kill) and kept serving
                wait_until(lambda: cache_stats(t)["bypasses"] + cache_stats(t)["errors"] >
                           c0["bypasses"] + c0["errors"], 5, "failures counted while Redis is down")
                wait_until(lambda: load.total() > n0 + 200, 10, "200 requests while Redis is down")
                # each worker publishes its client's state about once a second
                wait_until(lambda: cache_stats(t)["connected"] == 0, 5,
                           "every worker's Redis connection counted down")
                down = cache_stats(t)
                r.start()  # same port, empty: misses refill it
                wait_until(lambda: cache_stats(t)["hits"] > down["hits"] + 20, 15,
                           "hits resume after Redis is back")
            finally:
                load.stop()
            assert not load.failures, load.failures[:5]
            assert set(load.status) <= {200}, load.status
            assert load.status.get(200, 0) > 300, load.status
            assert "5" not in "".join(str(k)[0] for k in load.status)
    finally:
        r.kill()


class SilentRedis:
    """Answers the connection handshake (AUTH, SELECT, PING) like Redis, then never replies to
    anything else: every GET/SET outlives redis.timeout."""

    def __init__(self):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.conns = []
        self.commands = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    return
                buf += data
                while True:  # whole RESP arrays of bulk strings
                    args, rest = _parse_resp_command(buf)
                    if args is None:
                        break
                    buf = rest
                    self.commands += 1
                    name = args[0].upper()
                    if name == b"PING":
                        c.sendall(b"+PONG\r\n")
                    elif name in (b"AUTH", b"SELECT"):
                        c.sendall(b"+OK\r\n")
                    # anything else: silence
        except OSError:
            return

    def close(self):
        self.lsock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


def _parse_resp_command(buf):
    if not buf.startswith(b"*") or b"\r\n" not in buf:
        return None, buf
    head, rest = buf.split(b"\r\n", 1)
    args = []
    for _ in range(int(head[1:])):
        if b"\r\n" not in rest:
            return None, buf
        ln, rest2 = rest.split(b"\r\n", 1)
        n = int(ln[1:])
        if len(rest2) < n + 2:
            return None, buf
        args.append(rest2[:n])
        rest = rest2[n + 2:]
    return args, rest


def test_silent_redis_means_database_without_a_stall():
    need_db()
    fake = SilentRedis()
    try:
        conf = NO_ADMIN + redis_conf("127.0.0.1:%d" % fake.port, db=0) + "timeout = 50ms\n"
        with Tenkd(workers=1, conf=conf, redis="") as t:
            wait_until(lambda: fake.commands >= 1, 5, "tenk connects to the silent Redis")
            worst = 0.0
            t0 = time.monotonic()
            for i in range(40):
                s = time.monotonic()
                st, h, body = req(t, "GET", "/users/%d" % (i + 1))
                worst = max(worst, time.monotonic() - s)
                assert st == 200 and body["id"] == i + 1, (st, body)
                st, _, arr = req(t, "GET", "/cached-queries?count=3")
                assert st == 200 and len(arr) == 3
            elapsed = time.monotonic() - t0
            # each request waits at most one 50 ms timeout (less once the breaker is open)
            assert worst < 1.0, worst
            assert elapsed < 80 * 0.05 + 3, elapsed
            c = wait_until(lambda: (lambda c: c if c["timeouts"] >= 5 and c["bypasses"] > 0 else None)(
                cache_stats(t)), 5, "timeouts and breaker bypasses counted")
            assert c["hits"] == 0, c
    finally:
        fake.close()
