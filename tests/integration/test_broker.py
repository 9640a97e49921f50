"""test_broker: the cross-process connection budget against real PostgreSQL and a real tenkd.

max_open is never exceeded (watched in pg_stat_activity), acquire timeout -> 503,
query timeout -> 504 with the query cancelled on the server, a kill -9'd worker's
slots come back, and a database that goes away and comes back is found again.
"""
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid

from tenkharness import TENK_DB, Tenkd, need_db, psql, wait_until

NO_ADMIN = "[admin]\nlisten =\n"


def app_conninfo(db=None):
    """TENK_DB with a unique application_name, to count this server's backends."""
    name = "tkit_%s" % uuid.uuid4().hex[:10]
    return "%s application_name=%s" % (db or TENK_DB, name), name


def backends(app, where=""):
    return int(psql("select count(*) from pg_stat_activity where application_name = '%s' %s" % (app, where)))


class Watcher(threading.Thread):
    """Polls pg_stat_activity for the high-water mark of one application's backends."""

    def __init__(self, app):
        super().__init__(daemon=True)
        self.app, self.max, self.samples, self.stop = app, 0, 0, False

    def run(self):
        while not self.stop:
            n = backends(self.app)
            self.max = max(self.max, n)
            self.samples += 1


async def _client(port, path, n, statuses):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(n):
            w.write(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode())
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            m = re.search(rb"(?i)content-length: *(\d+)", head)
            await r.readexactly(int(m.group(1)) if m else 0)
            statuses.append(status)
    except Exception as e:  # a failed connection counts as an error
        statuses.append(repr(e))
    finally:
        w.close()


def load(port, path, conns, per_conn):
    """conns concurrent keep-alive connections, per_conn requests each -> list of statuses."""
    statuses = []

    async def main():
        await asyncio.gather(*[_client(port, path, per_conn, statuses) for _ in range(conns)])
    asyncio.run(main())
    return statuses


def test_max_open_never_exceeded_under_load():
    need_db()
    db, app = app_conninfo()
    conf = NO_ADMIN + "[db]\nmax_open = 10\nmax_idle = 10\nacquire_timeout = 10s\n"
    with Tenkd(workers=4, db=db, conf=conf) as t:
        w = Watcher(app)
        w.start()
        try:
            statuses = load(t.port, "/queries?queries=3", 1000, 2)
            statuses += load(t.port, "/db", 300, 5)
        finally:
            w.stop = True
            w.join()
        bad = [s for s in statuses if s != 200]
        assert len(statuses) == 3500 and not bad, (len(statuses), bad[:5])
        assert w.samples >= 3, w.samples
        assert 4 <= w.max <= 10, "max_open 10, saw %d backends" % w.max


def lock_world(seconds):
    """A psql session holding an exclusive lock on world for `seconds`."""
    p = subprocess.Popen(["psql", "-X", "-q", TENK_DB, "-c",
                          "begin; lock table world in access exclusive mode; select pg_sleep(%s); commit;" % seconds],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: psql("select count(*) from pg_locks l join pg_class c on c.oid = l.relation "
                            "where c.relname = 'world' and l.mode = 'AccessExclusiveLock' and l.granted") == "1",
               5, "the lock on world")
    return p


def test_acquire_timeout_503_and_query_timeout_504():
    need_db()
    db, app = app_conninfo()
    conf = NO_ADMIN + "[db]\nmax_open = 1\nmax_idle = 1\nacquire_timeout = 300ms\nquery_timeout = 1s\n"
    with Tenkd(workers=2, db=db, conf=conf) as t:
        assert t.request("GET", "/db")[0] == 200
        locker = lock_world(3)
        try:
            res = {}

            def slow():
                t0 = time.monotonic()
                res["slow"] = t.request("GET", "/db") + (time.monotonic() - t0,)
            th = threading.Thread(target=slow)
            th.start()
            # the one connection is now stuck on the lock: others queue, then get 503
            wait_until(lambda: backends(app, "and wait_event_type = 'Lock'") == 1, 5, "a query blocked on the lock")
            t0 = time.monotonic()
            st, h, body = t.request("GET", "/db")
            dt = time.monotonic() - t0
            assert st == 503, (st, body)
            assert h.get("retry-after") == "1" and json.loads(body)["error"], (h, body)
            assert 0.25 <= dt < 1.0, dt
            th.join(10)
            st, h, body, dt = res["slow"]
            assert st == 504, (st, body)
            assert 0.9 <= dt < 2.5, dt
            # the query was cancelled on the server, not left running
            wait_until(lambda: backends(app, "and state = 'active'") == 0, 3, "the cancelled query to stop")
        finally:
            locker.kill()
            locker.wait()
        # and the connection is usable again (never over the cap of 1)
        wait_until(lambda: t.request("GET", "/db")[0] == 200, 3, "service back")
        assert backends(app) <= 1


def worker_of_backends(t, app):
    """{worker pid: backends it holds}, matching pg client ports to worker sockets."""
    ports = [int(p) for p in psql("select client_port from pg_stat_activity where application_name = '%s' "
                                  "and client_port > 0" % app).split()]
    inode_port = {}
    for fn in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(fn) as f:
                for line in f.readlines()[1:]:
                    parts = line.split()
                    inode_port[parts[9]] = int(parts[1].split(":")[1], 16)
        except OSError:
            pass
    out = {}
    for pid in t.worker_pids():
        n = 0
        try:
            for fd in os.listdir("/proc/%d/fd" % pid):
                try:
                    link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
                except OSError:
                    continue
                m = re.match(r"socket:\[(\d+)\]", link)
                if m and inode_port.get(m.group(1)) in ports:
                    n += 1
        except OSError:
            continue
        out[pid] = n
    return out


def tcp_conninfo():
    """TENK_DB over TCP (so backends can be matched to workers by port)."""
    port = re.search(r"port=(\d+)", TENK_DB)
    rest = re.sub(r"host=\S+", "", TENK_DB)
    return "host=127.0.0.1 " + rest if port else None


def test_kill_9_worker_holding_connections_gives_slots_back():
    need_db()
    base = tcp_conninfo()
    if base is None:
        from tenkharness import skip
        skip("TENK_DB has no port")
    db, app = app_conninfo(base)
    conf = NO_ADMIN + "[db]\nmax_open = 4\nmax_idle = 4\nacquire_timeout = 10s\nquery_timeout = 20s\n"
    with Tenkd(workers=2, db=db, conf=conf) as t:
        locker = lock_world(30)
        try:
            # /updates takes a connection for itself (a plain SELECT like /db
            # shares a pipelined one: 12 of them may sit on fewer backends)
            threads = [threading.Thread(target=lambda: _quiet(t.request, "GET", "/updates?queries=1"))
                       for _ in range(12)]
            for th in threads:
                th.start()
            wait_until(lambda: backends(app, "and wait_event_type = 'Lock'") == 4, 10, "4 queries blocked")
            holders = worker_of_backends(t, app)
            victim = max(holders, key=holders.get)
            assert holders[victim] >= 1, holders
            os.kill(victim, signal.SIGKILL)
            t0 = time.monotonic()
            # its backends end once the lock goes; end the lock now
            locker.kill()
            locker.wait()
            psql("select pg_terminate_backend(pid) from pg_stat_activity where query like '%pg_sleep(30)%' "
                 "and pid <> pg_backend_pid()")
            # all 4 slots are usable again within 1 s: lock again and see 4 waiters
            wait_until(lambda: backends(app) <= 4 and victim not in t.worker_pids(), 2, "the dead worker's backends")
            locker = lock_world(30)
            more = [threading.Thread(target=lambda: _quiet(t.request, "GET", "/updates?queries=1"))
                    for _ in range(8)]
            for th in more:
                th.start()
            wait_until(lambda: backends(app, "and wait_event_type = 'Lock'") == 4, 3, "4 slots in use again")
            assert time.monotonic() - t0 < 1.0 + 2.5, time.monotonic() - t0
            assert backends(app) <= 4, backends(app)
        finally:
            locker.kill()
            locker.wait()
            psql("select pg_terminate_backend(pid) from pg_stat_activity where query like '%pg_sleep(30)%' "
                 "and pid <> pg_backend_pid()")
        for th in threads:
            th.join(15)
        wait_until(lambda: t.request("GET", "/db")[0] == 200, 5, "service back")


def _quiet(fn, *a):
    try:
        return fn(*a)
    except Exception:
        return None


class Proxy:
    """A TCP proxy in front of PostgreSQL that can be taken down and brought back,
    which is what a database restart looks like from the server's side."""

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.lsock = None
        self.conns = []
        self.lock = threading.Lock()
        self.flowing = threading.Event()  # cleared: the database's answers are held back
        self.flowing.set()

    def up(self):
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(128)
        threading.Thread(target=self._accept, args=(self.lsock,), daemon=True).start()

    def down(self):
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close alone would not
        except OSError:
            pass
        self.lsock.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self.conns = []

    def _accept(self, ls):
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.target)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, u]
            for a, b, gate in ((c, u, None), (u, c, self.flowing)):
                threading.Thread(target=self._pipe, args=(a, b, gate), daemon=True).start()

    @staticmethod
    def _pipe(a, b, gate=None):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                if gate is not None:
                    gate.wait()
                b.sendall(d)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def proxied_db():
    """A running Proxy in front of the devenv's PostgreSQL and a conninfo through it."""
    need_db()
    m = re.search(r"port=(\d+)", TENK_DB)
    if not m:
        from tenkharness import skip
        skip("TENK_DB has no port")
    proxy = Proxy(int(m.group(1)))
    proxy.up()
    rest = re.sub(r"(host|port)=\S+", "", TENK_DB)
    return proxy, "host=127.0.0.1 port=%d %s" % (proxy.port, rest)


def db_workers(t):
    """Each live worker's connections acquired and connects failed so far, by pid."""
    r = t.ctl("db", "--json")
    assert r.returncode == 0, r.stderr
    ws = json.loads(r.stdout)["workers"]
    assert len(ws) == 2, ws
    return {w["pid"]: (w["acquires"], w["connect_errors"]) for w in ws}


def test_database_restart_fast_503_then_recovery():
    proxy, db = proxied_db()
    conf = NO_ADMIN + "[db]\nmax_open = 4\nmax_idle = 4\nacquire_timeout = 1s\n"
    with Tenkd(workers=2, db=db, conf=conf) as t:
        statuses = load(t.port, "/db", 8, 5)
        assert all(s == 200 for s in statuses), (statuses, t.log()[-3000:])
        proxy.down()
        # down: every request fails fast with 503, never hangs
        for _ in range(10):
            t0 = time.monotonic()
            st, h, body = t.request("GET", "/db")
            assert st in (503,), (st, body)
            assert time.monotonic() - t0 < 1.2
        before = db_workers(t)
        proxy.up()
        t0 = time.monotonic()

        def back():
            # A worker whose connects failed while the database was down (its back-off, at most
            # 500 ms, runs on) is back once it has got a connection since: a request's, or its
            # probe's. Requests alone cannot show it: the accept balancing may give them all
            # to the worker that came back first. One that never tried is not in back-off.
            now = db_workers(t)
            return all(now[pid][0] > acq or now[pid][1] == errs == 0
                       for pid, (acq, errs) in before.items())
        wait_until(lambda: back() and t.request("GET", "/db")[0] == 200 and
                   t.request("GET", "/users/1")[0] == 200, 5, "service back after the database")
        assert time.monotonic() - t0 < 2.0, time.monotonic() - t0
        # and under load, all good again
        statuses = load(t.port, "/db", 8, 5)
        assert all(s == 200 for s in statuses), (statuses, t.log()[-3000:])
    proxy.down()


def test_tenkctl_db_agrees_with_pg_stat_activity():
    need_db()
    db, app = app_conninfo()
    conf = NO_ADMIN + "[db]\nmax_open = 6\nmax_idle = 6\nacquire_timeout = 5s\n"
    with Tenkd(workers=2, db=db, conf=conf) as t:
        statuses = load(t.port, "/queries?queries=2", 40, 5)
        assert all(s == 200 for s in statuses), statuses[:5]

        def agree():
            r = t.ctl("db")
            assert r.returncode == 0, r.stderr
            m = re.search(r"connections\s+open (\d+)\s+in use (\d+)\s+idle (\d+)", r.stdout)
            assert m, r.stdout
            opened, in_use, idle = map(int, m.groups())
            return opened == backends(app) and in_use == 0 and opened == idle and 1 <= opened <= 6
        wait_until(agree, 5, "tenkctl db to match pg_stat_activity")
        out = t.ctl("db").stdout
        assert "db.max_open 6" in out, out
        assert re.search(r"acquires\s+(\d+)", out) and int(re.search(r"acquires\s+(\d+)", out).group(1)) >= 200, out


def test_pipelined_selects_get_their_own_results_and_join():
    """Plain SELECTs share one connection in pipeline mode. With the database's
    answers held back, 60 /users requests for 15 different pages (4 of each)
    pile up on the single allowed backend; once the answers flow, every
    request gets exactly its own page, and identical queries that were still
    queued were run once (the worker's exit summary counts them)."""
    proxy, db = proxied_db()
    db, app = app_conninfo(db)
    conf = NO_ADMIN + "[db]\nmax_open = 1\nmax_idle = 1\nacquire_timeout = 10s\nquery_timeout = 20s\n"
    pages = [(1 + k % 5, k // 5 * 3) for k in range(15)]
    expected = {}
    for lim, after in pages:
        expected[(lim, after)] = [int(x) for x in psql(
            "select id from users where id > %d order by id limit %d" % (after, lim)).split()]
    try:
        with Tenkd(workers=1, db=db, conf=conf, args=("-v",)) as t:
            assert t.request("GET", "/users?limit=1")[0] == 200  # connected, statement prepared
            proxy.flowing.clear()
            res = {}

            def get(i, lim, after):
                res[i] = t.request("GET", "/users?limit=%d&after_id=%d" % (lim, after))
            threads = [threading.Thread(target=get, args=(i,) + pages[i % 15]) for i in range(60)]
            for th in threads:
                th.start()

            def waiting():
                r = t.ctl("threads", "--json")
                tot = json.loads(r.stdout)["total"]
                return tot.get("wait_db", 0) + tot.get("wait_broker", 0) >= 60
            try:
                wait_until(waiting, 10, "60 requests waiting on the database")
            finally:
                proxy.flowing.set()
            for th in threads:
                th.join(20)
            for i in range(60):
                lim, after = pages[i % 15]
                st, _, body = res[i]
                assert st == 200, (i, st, body)
                assert [u["id"] for u in json.loads(body)] == expected[(lim, after)], (i, lim, after, body)
            assert backends(app) <= 1
        m = re.findall(r"(\d+) pipelined queries in (\d+) batches, (\d+) joined", t.log())
        assert m, t.log()[-2000:]
        piped, batches, joined = (int(x) for x in m[-1])
        # 60 requests, the first one and the cache's start-up load; some joined
        assert joined >= 1 and piped + joined >= 61 and piped < 60, m
    finally:
        proxy.down()


def test_libpq_messages_go_through_the_log():
    """Backends terminated by the administrator while their connections sit
    idle make libpq report "FATAL: terminating connection due to
    administrator command" once it reads them (the next acquire looks before
    handing one out); that must reach tenk's log as a tenk line (level, worker,
    "db: postgres:"), never as libpq's bare stderr print, and the request
    gets a live connection instead."""
    need_db()
    db, app = app_conninfo()
    conf = NO_ADMIN + "[db]\nmax_open = 4\nmax_idle = 4\nacquire_timeout = 2s\n"
    with Tenkd(workers=1, db=db, conf=conf) as t:
        # /updates takes connections of its own; they stay idle afterwards
        statuses = load(t.port, "/updates?queries=1", 4, 5)
        assert all(s == 200 for s in statuses), statuses
        wait_until(lambda: backends(app) >= 1 and backends(app, "and state <> 'idle'") == 0, 5, "idle backends")
        psql("select pg_terminate_backend(pid) from pg_stat_activity where application_name = '%s'" % app)
        wait_until(lambda: backends(app) == 0, 5, "the backends to end")
        assert t.request("GET", "/updates?queries=1")[0] == 200
        wait_until(lambda: "terminating connection due to administrator command" in t.log(), 5,
                   "libpq's message in the log")
        lines = [ln for ln in t.log().splitlines() if "terminating connection due to administrator" in ln]
        assert lines and all("[error]" in ln and "db: postgres: FATAL:" in ln for ln in lines), lines
