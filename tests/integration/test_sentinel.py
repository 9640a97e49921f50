"""test_sentinel: the cache tier behind Redis Sentinel: failover, reads from replicas, bad Sentinels.

Real Redis (1 master, 2 replicas) and 3 real Sentinels from a devenv of their own (failovers are
destructive): TENK_VAR_DIR=<srcdir>/var-sentinel, ports TENK_PG_PORT+40 and TENK_REDIS_PORT+40 (test_db_failover's devenv has +20)
(override with TENK_SENTINEL_PG_PORT / TENK_SENTINEL_REDIS_PORT). The figures (switch-to-write
time, hit ratio recovery, invalidation window) are printed with -s.
"""
import json
import os
import signal
import socket
import subprocess
import threading
import time
import http.client

import pytest

from tenkharness import Tenkd, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.path.dirname(os.path.dirname(HERE))
VAR = os.path.join(SRCDIR, "var-sentinel")
PG_PORT = int(os.environ.get("TENK_SENTINEL_PG_PORT") or int(os.environ.get("TENK_PG_PORT", "62329")) + 40)
REDIS_PORT = int(os.environ.get("TENK_SENTINEL_REDIS_PORT") or
                 int(os.environ.get("TENK_REDIS_PORT", "63799")) + 40)
DEVENV_ENV = {"TENK_VAR_DIR": VAR, "TENK_PG_PORT": str(PG_PORT), "TENK_REDIS_PORT": str(REDIS_PORT)}


# --- a tiny RESP client (the test's own view of Redis and the Sentinels) ------------------------

def resp(port, *args, timeout=2.0):
    """One command to 127.0.0.1:port; the decoded reply (errors as RuntimeError)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(out)
        return _read_reply(s.makefile("rb"))


def _read_reply(f):
    line = f.readline()
    if not line:
        raise ConnectionError("closed")
    t, rest = line[:1], line[1:-2]
    if t == b"+":
        return rest.decode()
    if t == b"-":
        raise RuntimeError(rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode(errors="replace")
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise RuntimeError("bad reply %r" % line)


def info(port, section):
    text = resp(port, "INFO", section)
    d = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            d[k] = v
    return d


def cmdcalls(port, cmd):
    v = info(port, "commandstats").get("cmdstat_" + cmd)
    if not v:
        return 0
    return int(dict(kv.split("=") for kv in v.split(","))["calls"])


# --- the devenv ------------------------------------------------------------------------------

def devenv(*args, timeout=180):
    env = dict(os.environ)
    env.update(DEVENV_ENV)
    r = subprocess.run([os.path.join(SRCDIR, "scripts", "devenv")] + list(args), cwd=SRCDIR, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    assert r.returncode == 0, "devenv %s failed:\n%s" % (" ".join(args), r.stdout[-3000:])
    return r.stdout


def load_env():
    d = {}
    with open(os.path.join(VAR, "devenv.env")) as f:
        for line in f:
            line = line.strip()
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                d[k] = v.strip("'")
    return d


def redis_ports():
    return [REDIS_PORT, REDIS_PORT + 1, REDIS_PORT + 2]


def sentinel_ports(env):
    return [int(a.rsplit(":", 1)[1]) for a in env["TENK_REDIS_SENTINELS"].split(",")]


def master_port(env):
    return int(resp(sentinel_ports(env)[0], "SENTINEL", "get-master-addr-by-name", "tenk")[1])


def healthy(env):
    """Every Sentinel names the same master, which says it is one, with 2 replicas linked."""
    try:
        names = {tuple(resp(p, "SENTINEL", "get-master-addr-by-name", "tenk")) for p in sentinel_ports(env)}
        if len(names) != 1:
            return False
        port = int(names.pop()[1])
        rep = info(port, "replication")
        if rep.get("role") != "master" or rep.get("connected_slaves") != "2":
            return False
        for p in sentinel_ports(env):
            good = 0
            for r in resp(p, "SENTINEL", "replicas", "tenk"):
                f = dict(zip(r[::2], r[1::2]))
                if "down" not in f["flags"] and "disconnected" not in f["flags"] and \
                        f.get("master-link-status") == "ok":
                    good += 1
            if good != 2:
                return False
        return True
    except (OSError, RuntimeError, TypeError, IndexError):
        return False


@pytest.fixture(scope="module")
def senv():
    if not os.environ.get("TENK_DB"):
        pytest.skip("no devenv")
    devenv("up", "--redis-replicas", "2", "--sentinels", "3", timeout=300)
    env = load_env()
    wait_until(lambda: healthy(env), 60, "the Sentinel devenv to settle")
    yield env
    devenv("down")  # its nodes are not left running beside the other tests (up restarts them all)


@pytest.fixture
def topo(senv):
    """A healthy topology before each test (a killed master comes back as a replica)."""
    if not healthy(senv):
        devenv("up")
        wait_until(lambda: healthy(senv), 60, "the Sentinel devenv to settle")
    return senv


def start(senv, workers=2, redis_conf=""):
    sentinels = "\n".join("sentinel = 127.0.0.1:%d" % p for p in sentinel_ports(senv))
    conf = "[redis]\n%s\n%s\n" % (sentinels, redis_conf)
    t = Tenkd(workers=workers, conf=conf, admin=True, db=senv["TENK_DB"], redis="")
    return t.start()


def stats(t):
    c = http.client.HTTPConnection("127.0.0.1", t.admin_port, timeout=5)
    try:
        c.request("GET", "/debug/stats")
        r = c.getresponse()
        return json.loads(r.read())
    finally:
        c.close()


def worker_caches(t):
    return [w["cache"] for w in stats(t)["workers"] if w.get("live")]


# --- load --------------------------------------------------------------------------------------

class Load:
    """Threads of keep-alive clients on /users/{id} and /cached-queries (and PUTs if writes)."""

    def __init__(self, port, threads=3, writes=False, ids=200):
        self.port, self.nthreads, self.writes, self.ids = port, threads, writes, ids
        self.status = {}
        self.errors = 0
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.threads = []

    def _one(self, conn, method, path, body=None):
        hdr = {"Content-Type": "application/json"} if body else {}
        conn.request(method, path, body=body, headers=hdr)
        r = conn.getresponse()
        r.read()
        with self.lock:
            self.status[r.status] = self.status.get(r.status, 0) + 1
        return r.status

    def _run(self, k):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        i = k
        while not self.stop_ev.is_set():
            i += 1
            try:
                if i % 3 == 0:
                    self._one(conn, "GET", "/cached-queries?count=5")
                elif self.writes and i % 10 == 1:
                    uid = 1 + (i * 7) % self.ids
                    self._one(conn, "PUT", "/users/%d" % uid,
                              json.dumps({"name": "n%d" % i, "email": "s%d@example.com" % uid}))
                else:
                    self._one(conn, "GET", "/users/%d" % (1 + (i * 13) % self.ids))
            except (OSError, http.client.HTTPException):
                with self.lock:
                    self.errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            time.sleep(0.002)  # a steady load, not a flood: the machine is shared
        conn.close()

    def __enter__(self):
        for k in range(self.nthreads):
            th = threading.Thread(target=self._run, args=(k,), daemon=True)
            th.start()
            self.threads.append(th)
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        for th in self.threads:
            th.join(15)

    def fivexx(self):
        with self.lock:
            return sum(n for s, n in self.status.items() if s >= 500)


class SwitchWatcher(threading.Thread):
    """Subscribes to +switch-master on a real Sentinel; records when the message came."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.at = None
        self.msg = None
        self.ready = threading.Event()

    def run(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        s.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$14\r\n+switch-master\r\n")
        f = s.makefile("rb")
        _read_reply(f)
        self.ready.set()
        try:
            while True:
                m = _read_reply(f)
                if m and m[0] == "message":
                    self.at = time.monotonic()
                    self.msg = m[2]
                    return
        except OSError:
            return
        finally:
            s.close()


def kill_master(port):
    pid = int(info(port, "server")["process_id"])
    os.kill(pid, signal.SIGKILL)
    return pid


# --- tests -------------------------------------------------------------------------------------

def test_failover_under_load(topo):
    old = master_port(topo)
    t = start(topo, workers=2)
    try:
        wait_until(lambda: all(c["master"] == "127.0.0.1:%d" % old and c["connected"]
                               for c in worker_caches(t)), 10, "workers to find the master")
        # the first Sentinel to publish it: the others learn of the failover later
        watchers = [SwitchWatcher(p) for p in sentinel_ports(topo)]
        for w in watchers:
            w.start()
            assert w.ready.wait(5)

        class First:
            at = msg = None
        watcher = First()

        def first_switch():
            got = [w for w in watchers if w.at is not None]
            if got and watcher.at is None:
                w = min(got, key=lambda w: w.at)
                watcher.at, watcher.msg = w.at, w.msg
        
        samples = []  # (monotonic, hits, misses, bypasses, errors)

        def sample():
            c = stats(t)["cache"]
            samples.append((time.monotonic(), c["hits"], c["misses"], c["bypasses"], c["errors"]))

        with Load(t.port, threads=3, writes=True) as load:
            t_end = time.monotonic() + 2.0
            while time.monotonic() < t_end:
                sample()
                time.sleep(0.1)
            kill_master(old)
            t_kill = time.monotonic()
            # the new master's EVAL count (our stores and invalidations): replicas get effects,
            # never EVAL, so any EVAL there is tenk writing to it
            evals = {}
            for p in redis_ports():
                if p != old:
                    evals[p] = cmdcalls(p, "eval")
            t_write = None
            new = None
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                sample()
                first_switch()
                if watcher.at and new is None:
                    new = int(watcher.msg.split()[4])
                if new is not None and t_write is None:
                    if cmdcalls(new, "eval") > evals.get(new, 0):
                        t_write = time.monotonic()
                if t_write is not None and time.monotonic() > watcher.at + 6:
                    break
                time.sleep(0.02)
        assert watcher.at is not None, "no +switch-master within 40 s of killing the master"
        assert t_write is not None, "tenk never wrote to the new master %s" % new
        switch_to_write = t_write - watcher.at
        # the hit ratio over 500 ms windows after the switch: lookups that Redis answered or
        # skipped all count, so a bypassed cache is 0%, not "no data"
        recovered_at = None
        for i, a in enumerate(samples):
            if a[0] < watcher.at:
                continue
            b = next((s for s in samples[i:] if s[0] >= a[0] + 0.5), None)
            if b is None:
                break
            d = [b[k] - a[k] for k in range(1, 5)]
            if sum(d) and d[0] / sum(d) > 0.7:
                recovered_at = a[0]
                break
        st = stats(t)["cache"]
        wall = time.time() - (time.monotonic() - watcher.at)
        print("\nswitch at %s.%03d; tenk log:" % (time.strftime("%H:%M:%S", time.gmtime(wall)), int(wall * 1000) % 1000))
        print("\n".join(l for l in t.log().splitlines() if "redis:" in l))
        print("\nFAILOVER: kill->+switch-master %.2f s, +switch-master->tenk writes to %d %.3f s, "
              "hit ratio >70%% again %.2f s after the switch; 5xx %d of %s; failovers seen %s; "
              "client errors %d"
              % (watcher.at - t_kill, new, switch_to_write,
                 (recovered_at - watcher.at) if recovered_at else -1, load.fivexx(), load.status,
                 st["failovers"], load.errors))
        assert load.fivexx() == 0, load.status
        assert load.errors == 0
        assert switch_to_write < 1.0, "tenk wrote to the new master %.3f s after the switch" % switch_to_write
        assert recovered_at is not None and recovered_at - watcher.at < 5.0
        # the master now is the one the Sentinels name (on a busy machine a second failover,
        # a Sentinel's own with a later epoch, can follow the first: tenk follows both)
        cur = "127.0.0.1:%d" % master_port(topo)
        wait_until(lambda: all(c["master"] == cur for c in worker_caches(t)), 5,
                   "every worker on the master the Sentinels name")
        assert all(c["failovers"] >= 1 for c in worker_caches(t))
        new = int(cur.rsplit(":", 1)[1])
        # tenkctl and /metrics show it too
        out = subprocess.run([os.path.join(os.environ["TENK_BUILD"], "tenkctl"), "-n", t.name, "stats"],
                             capture_output=True, text=True, timeout=10).stdout
        assert "master 127.0.0.1:%d" % new in out and "failovers" in out, out
        c = http.client.HTTPConnection("127.0.0.1", t.admin_port, timeout=5)
        c.request("GET", "/metrics")
        m = c.getresponse().read().decode()
        assert 'tenk_cache_master{worker="0",node="127.0.0.1:%d"} 1' % new in m
        assert "tenk_cache_failovers_total" in m and "tenk_cache_node_commands_total" in m
    finally:
        t.stop()


def test_reads_from_replicas(topo):
    master = master_port(topo)
    replicas = [p for p in redis_ports() if p != master]
    t = start(topo, workers=2, redis_conf="read_from = replicas")
    try:
        # the two workers spread over the two replicas (after a failover the Sentinels may
        # take a few seconds to see a restarted node's link as ok again)
        want = {"127.0.0.1:%d" % p for p in replicas}
        wait_until(lambda: {a for c in worker_caches(t) for a in c["reading_from"]} == want, 20,
                   "workers to read from both replicas")
        for p in redis_ports():
            resp(p, "CONFIG", "RESETSTAT")
        # 6 keep-alive connections: the accept balancing gives each worker (each reading from its
        # own replica) some of them; 2 could both land on one worker
        with Load(t.port, threads=6, writes=True) as load:
            time.sleep(2.0)  # the load's duration (a fixed amount of traffic, not a wait)
        # tenk's reads are MGETs (key + version; /cached-queries); a GET on the master is the
        # store script's own (commands inside EVAL count in commandstats)
        reads = {p: cmdcalls(p, "mget") for p in redis_ports()}
        writes = {p: cmdcalls(p, "eval") for p in redis_ports()}
        print("\nREPLICAS: MGET per node %s, EVAL per node %s, responses %s"
              % (reads, writes, load.status))
        assert load.fivexx() == 0
        assert all(reads[p] > 0 for p in replicas), reads
        assert reads[master] == 0, reads
        assert writes[master] > 0 and all(writes[p] == 0 for p in replicas), writes
        st = stats(t)["cache"]
        assert st["read_from"] == "replicas" and st["replica_reads"] > 0
        assert {n["addr"] for n in st["nodes"] if n["reading"]} <= {"127.0.0.1:%d" % p for p in replicas}
    finally:
        t.stop()


def test_invalidation_window_under_write_load(topo):
    """The raw window (a DEL on the master until a replica has it) and tenk's bound on it: after a
    PUT answers, a GET of the row, from any worker, reads from a replica and is never stale."""
    master = master_port(topo)
    replicas = [p for p in redis_ports() if p != master]
    t = start(topo, workers=2, redis_conf="read_from = replicas\ntimeout = 200ms")
    try:
        wait_until(lambda: all(c["reading_from"] for c in worker_caches(t)), 10, "replica readers")
        raw = []
        stale = checked = 0
        with Load(t.port, threads=2, writes=True, ids=100):
            # raw: SET on the master, poll a replica until it has it
            for i in range(100):
                v = "v%d" % i
                resp(master, "SET", "sentinel-test:k", v)
                t0 = time.monotonic()
                while resp(replicas[i % 2], "GET", "sentinel-test:k") != v:
                    assert time.monotonic() - t0 < 2
                raw.append(time.monotonic() - t0)
            # through tenk: warm a row, change it, read it back at once on new connections
            for i in range(150):
                uid = 500 + i % 30
                c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
                c.request("GET", "/users/%d" % uid)
                c.getresponse().read()
                name = "w%d-%d" % (i, time.monotonic_ns())
                c.request("PUT", "/users/%d" % uid, body=json.dumps({"name": name, "email": "w%d@example.com" % uid}),
                          headers={"Content-Type": "application/json"})
                assert c.getresponse().read() is not None
                c.close()
                for _ in range(2):  # two fresh connections: either worker
                    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
                    c.request("GET", "/users/%d" % uid)
                    r = c.getresponse()
                    body = json.loads(r.read())
                    c.close()
                    checked += 1
                    stale += body.get("name") != name
        raw.sort()
        # the workers publish once a second: wait for our 150 PUTs' WAITs to show
        wait_until(lambda: stats(t)["cache"]["invalidation_wait"]["waits"] >= 150, 5,
                   "the WAITs of 150 PUTs in /debug/stats")
        st = stats(t)["cache"]
        w = st["invalidation_wait"]
        print("\nINVALIDATION: raw replication window over %d writes: p50 %.2f ms, p99 %.2f ms, max %.2f ms; "
              "tenk WAIT after invalidation: %d waits, %d short, mean %.0f us, max %d us; stale reads %d of %d"
              % (len(raw), raw[len(raw) // 2] * 1e3, raw[int(len(raw) * 0.99)] * 1e3, raw[-1] * 1e3,
                 w["waits"], w["short"], w["us_mean"], w["us_max"], stale, checked))
        assert w["waits"] >= 150, json.dumps(st)
        assert stale <= w["short"], "stale reads after a PUT answered: %d (WAITs short: %d)" % (stale, w["short"])
    finally:
        t.stop()


class FakeSentinel(threading.Thread):
    """A TCP server that is a bad Sentinel: answers every command with the same bytes."""

    def __init__(self, answer):
        super().__init__(daemon=True)
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = 0

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            c.settimeout(5)
            while c.recv(4096):
                c.sendall(self.answer)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def get_users(t, n=20):
    codes = []
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    for i in range(n):
        c.request("GET", "/users/%d" % (1 + i % 7))
        r = c.getresponse()
        r.read()
        codes.append(r.status)
    c.close()
    return codes


def test_bad_sentinels_down_and_garbage(topo):
    garbage = FakeSentinel(b"%%garbage\x00\xff not RESP at all\r\n")
    garbage.start()
    try:
        real = sentinel_ports(topo)
        conf = ("[redis]\nsentinel = 127.0.0.1:%d\nsentinel = 127.0.0.1:%d\nsentinel = 127.0.0.1:%d\n"
                % (garbage.port, closed_port(), real[0]))
        t = Tenkd(workers=2, conf=conf, admin=True, db=topo["TENK_DB"], redis="").start()
        try:
            want = "127.0.0.1:%d" % master_port(topo)
            wait_until(lambda: all(c["master"] == want and c["connected"] for c in worker_caches(t)),
                       10, "workers to find the master past two bad Sentinels")
            assert set(get_users(t)) == {200}
            # the workers publish once a second
            wait_until(lambda: stats(t)["cache"]["hits"] > 0, 5, "hits in /debug/stats")
            st = stats(t)["cache"]
            assert st["sentinel_errors"] > 0
            assert garbage.conns > 0
        finally:
            t.stop()
    finally:
        garbage.close()


def test_unknown_master_name_served_from_postgres(topo):
    t = start(topo, workers=2, redis_conf="master_name = nosuchmaster")
    try:
        wait_until(lambda: all(c["unknown_master"] > 0 for c in worker_caches(t)), 10,
                   "the Sentinels' answer")
        assert set(get_users(t, 30)) == {200}
        time.sleep(2.5)  # let the poll ask again twice: the log line must not repeat
        st = stats(t)["cache"]
        assert st["master"] == "" and st["hits"] == 0 and st["bypasses"] > 0
        assert st["unknown_master"] >= 4  # two workers, polled every second
        log = t.log()
        lines = [l for l in log.splitlines() if "no Sentinel knows master" in l]
        assert 1 <= len(lines) <= 2, lines  # rate-limited: one per worker per 10 s
    finally:
        t.stop()


def test_sentinel_naming_a_replica(topo):
    """A stale Sentinel names a replica as the master: ROLE says otherwise, tenk does not write
    there and serves from PostgreSQL."""
    master = master_port(topo)
    replica = [p for p in redis_ports() if p != master][0]
    host, port = b"127.0.0.1", str(replica).encode()
    stale = FakeSentinel(b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(host), host, len(port), port))
    stale.start()
    try:
        resp(replica, "CONFIG", "RESETSTAT")
        t = Tenkd(workers=2, conf="[redis]\nsentinel = 127.0.0.1:%d\n" % stale.port, admin=True,
                  db=topo["TENK_DB"], redis="").start()
        try:
            wait_until(lambda: all(c["role_mismatches"] > 0 for c in worker_caches(t)), 10,
                       "ROLE to refuse the replica")
            assert set(get_users(t, 30)) == {200}
            st = stats(t)["cache"]
            assert st["master"] == "" and st["hits"] == 0
            assert cmdcalls(replica, "eval") == 0 and cmdcalls(replica, "set") == 0
            assert cmdcalls(replica, "role") > 0
            assert "ROLE says it is not" in t.log()
        finally:
            t.stop()
    finally:
        stale.close()


def test_config_check_and_masking(topo):
    """tenkd -t says redis.addr is not used with Sentinels; /debug/config masks both passwords."""
    tenkd_bin = os.path.join(os.environ["TENK_BUILD"], "tenkd")
    conf = os.path.join(VAR, "sentinel-test.conf")
    with open(conf, "w") as f:
        f.write("[redis]\naddr = 127.0.0.1:6379\nsentinel = 127.0.0.1:1\nsentinel = 127.0.0.1:2\n")
    r = subprocess.run([tenkd_bin, "-t", "-c", conf], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and "configuration OK" in r.stdout
    assert "redis.addr (127.0.0.1:6379) is not used" in r.stdout, r.stdout
    r = subprocess.run([tenkd_bin, "-t", "-c", conf, "--redis-sentinel", "127.0.0.1:x"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "redis.sentinel: expected HOST:PORT" in r.stderr, r.stderr
    os.unlink(conf)
    t = start(topo, workers=1, redis_conf="password = \nsentinel_password = hunter2\nread_from = replicas")
    try:
        c = http.client.HTTPConnection("127.0.0.1", t.admin_port, timeout=5)
        c.request("GET", "/debug/config")
        body = c.getresponse().read().decode()
        cfg = json.loads(body)["redis"]
        assert "hunter2" not in body and cfg["sentinel_password"] != ""
        assert cfg["read_from"] == "replicas" and cfg["master_name"] == "tenk"
        assert cfg["sentinel"] == ["127.0.0.1:%d" % p for p in sentinel_ports(topo)]
    finally:
        t.stop()
