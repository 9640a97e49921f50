"""test_lb.py: what tenk needs behind a load balancer: the lame duck of server.drain_delay
(/health 503 while everything else is served, on a graceful stop, a fast stop and a reload, with
no request lost), /health 503 while the primary is unreachable, and server.trusted_proxies with
the PROXY protocol v2 and X-Forwarded-For (the client's address in the access log and
/debug/threads; untrusted peers and malformed headers refused); `tenkd -t` checks both keys."""
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

from tenkharness import (TENK_DB, TENKD, Tenkd, build_request, free_port, need_db, recv_response,
                         wait_until)

PROXY_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2(src, dst="127.0.0.1", sport=40000, dport=80, cmd=1):
    """A PROXY v2 header as HAProxy's send-proxy-v2 writes it (TCP over IPv4 or IPv6)."""
    if cmd == 0:
        return PROXY_SIG + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    if ":" in src:
        addrs = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst or "::1")
        fam = 0x21
    else:
        addrs = socket.inet_aton(src) + socket.inet_aton(dst)
        fam = 0x11
    body = addrs + struct.pack("!HH", sport, dport)
    return PROXY_SIG + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


def _health(t):
    try:
        return t.request("GET", "/health", timeout=2.0)[0]
    except OSError:
        return None


class Load:
    """Steady requests on fresh connections and on keep-alive ones (which reconnect when the
    server says Connection: close, as a client must), counting every failure."""

    def __init__(self, t, path="/plaintext", threads=4):
        self.t, self.path = t, path
        self.ok = 0
        self.failures = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i % 2 == 0,), daemon=True)
                        for i in range(threads)]

    def _run(self, keepalive):
        s = None
        while not self.stop.is_set():
            try:
                if s is None:
                    s = self.t.connect(timeout=5.0)
                s.sendall(build_request("GET", self.path))
                st, h, _ = recv_response(s)
                with self.lock:
                    if st == 200:
                        self.ok += 1
                    else:
                        self.failures.append("status %d" % st)
                if not keepalive or h.get("connection", "").lower() == "close":
                    s.close()
                    s = None
            except (OSError, AssertionError, ValueError) as e:
                with self.lock:
                    self.failures.append(repr(e))
                if s is not None:
                    s.close()
                s = None
        if s is not None:
            s.close()

    def __enter__(self):
        for th in self.threads:
            th.start()
        wait_until(lambda: self.ok >= 50, 10, "the load to get going")
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for th in self.threads:
            th.join(10)


def test_drain_delay_on_graceful_stop():
    with Tenkd(workers=2, db="", redis="", conf="[server]\ndrain_delay = 1500ms\n") as t:
        assert _health(t) == 200
        with Load(t) as load:
            t0 = time.monotonic()
            t.signal(signal.SIGQUIT)
            wait_until(lambda: _health(t) == 503, 2, "/health to answer 503 in the lame duck")
            seen_503 = time.monotonic() - t0
            # the lame duck serves everything else; its /health stays 503 until the listeners close
            ok_before = load.ok
            wait_until(lambda: load.ok >= ok_before + 50, 5, "requests served in the lame duck")
            assert t.request("GET", "/json")[0] == 200
            assert _health(t) == 503

            def refused():
                try:
                    t.request("GET", "/health", timeout=1.0)
                    return False
                except OSError:
                    return True
            wait_until(refused, 10, "the listeners to close after the lame duck")
            closed_after = time.monotonic() - t0
        assert t.proc.wait(15) == 0
        assert seen_503 < 1.0, seen_503
        assert closed_after >= 1.4, "listeners closed %.2f s after SIGQUIT, before drain_delay" % closed_after
        # requests in flight at the close may fail on the client side (that is what the lame duck is for:
        # the balancer has stopped sending by then); none failed before the close
        assert load.ok > 100
        assert "lame duck before the graceful stop" in t.log()


def test_second_stop_signal_ends_the_lame_duck():
    with Tenkd(workers=1, db="", redis="", conf="[server]\ndrain_delay = 30s\n") as t:
        t0 = time.monotonic()
        t.signal(signal.SIGTERM)
        wait_until(lambda: _health(t) == 503, 2, "/health 503 after SIGTERM with drain_delay")
        t.signal(signal.SIGTERM)
        assert t.proc.wait(10) == 0
        assert time.monotonic() - t0 < 10


def test_reload_lame_duck_drops_no_request():
    with Tenkd(workers=2, db="", redis="", admin=True,
               conf="[server]\ndrain_delay = 1s\n") as t:
        old = set(t.worker_pids())
        states = []
        with Load(t) as load:
            t.signal(signal.SIGHUP)
            wait_until(lambda: _health(t) == 503, 2, "/health 503 during the reload's lame duck")
            states.append(503)

            def new_generation():
                pids = set(t.worker_pids())
                return pids and not (pids & old) and _health(t) == 200
            wait_until(new_generation, 15, "the new generation alone, /health 200 again")
            ok_at = load.ok
            wait_until(lambda: load.ok >= ok_at + 50, 5, "requests after the reload")
        assert load.failures == [], load.failures[:5]
        assert load.ok > 200, load.ok
        assert "lame duck before the reload" in t.log()


def test_health_503_while_the_primary_is_unreachable():
    # a port nothing listens on: connects are refused, as from a host whose database is gone
    dead = free_port()
    conf = "[db]\nprimary = host=127.0.0.1 port=%d dbname=x user=x connect_timeout=1\n" % dead
    with Tenkd(workers=1, db="", redis="", conf=conf) as t:
        assert _health(t) == 200  # nothing tried yet: no news is not bad news
        st, _, _ = t.request("GET", "/db")
        assert st == 503, st
        assert _health(t) == 503
        body = t.request("GET", "/health")[2]
        assert json.loads(body)["status"] == "database unreachable"
        assert t.request("GET", "/plaintext")[0] == 200  # the rest still answers


def test_health_200_with_a_reachable_primary():
    need_db()
    with Tenkd(workers=1, redis="") as t:
        assert t.request("GET", "/db")[0] == 200
        assert _health(t) == 200


def _raw(t, data, timeout=5.0):
    s = t.connect(timeout=timeout)
    try:
        s.sendall(data)
        return recv_response(s)
    finally:
        s.close()


def _log_lines(path):
    try:
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip()]
    except OSError:
        return []


def test_proxy_v2_from_trusted_proxies_only():
    d = tempfile.mkdtemp(prefix="tenk-lb-")
    log = os.path.join(d, "access.log")
    conf = ("[server]\ntrusted_proxies = 10.9.0.0/16, 127.0.0.1\n"
            "[log]\naccess_log = %s\naccess_log_format = json\n" % log)
    try:
        with Tenkd(workers=1, db="", redis="", conf=conf) as t:
            req = build_request("GET", "/plaintext?who=v4")
            assert _raw(t, proxy_v2("203.0.113.7") + req)[0] == 200
            assert _raw(t, proxy_v2("2001:db8::42", "::1") + build_request("GET", "/plaintext?who=v6"))[0] == 200
            # LOCAL (HAProxy's own health checks): the peer stays the proxy
            assert _raw(t, proxy_v2(None, cmd=0) + build_request("GET", "/plaintext?who=local"))[0] == 200
            # a trusted peer may also speak plain HTTP
            assert _raw(t, build_request("GET", "/plaintext?who=plain"))[0] == 200
            # the header split over several packets
            s = t.connect()
            hdr = proxy_v2("198.51.100.9")
            for i in range(0, len(hdr), 5):
                s.sendall(hdr[i:i + 5])
                time.sleep(0.01)  # separate segments, not a wait for a condition
            s.sendall(build_request("GET", "/plaintext?who=split"))
            assert recv_response(s)[0] == 200
            s.close()
            # malformed: version 3, a length past the cap, an INET block too short: closed, no answer
            for bad in (PROXY_SIG + b"\x31\x11\x00\x0c" + b"\x00" * 12,
                        PROXY_SIG + b"\x21\x11\xff\xff",
                        PROXY_SIG + b"\x21\x11\x00\x04" + b"\x00" * 4):
                s = t.connect()
                s.sendall(bad + build_request("GET", "/plaintext?who=bad"))
                s.settimeout(5)
                assert s.recv(100) == b"", bad
                s.close()
            assert t.request("GET", "/plaintext")[0] == 200  # the worker still serves

            want = {"who=v4": "203.0.113.7", "who=v6": "2001:db8::42", "who=local": "127.0.0.1",
                    "who=plain": "127.0.0.1", "who=split": "198.51.100.9"}

            def peers():
                got = {l["query"]: l["remote"] for l in _log_lines(log)}
                return got if all(q in got for q in want) else None
            got = wait_until(peers, 5, "the access log lines")
            assert {q: got[q] for q in want} == want, got
            assert not any(l["query"] == "who=bad" for l in _log_lines(log))

        # not trusted: the header is not HTTP, 400, and the address is never taken from it
        with Tenkd(workers=1, db="", redis="", conf="[server]\ntrusted_proxies = 10.9.0.0/16\n") as t:
            st, _, _ = _raw(t, proxy_v2("203.0.113.7") + build_request("GET", "/plaintext"))
            assert st == 400, st
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_x_forwarded_for_from_trusted_proxies_only():
    d = tempfile.mkdtemp(prefix="tenk-lb-")
    log = os.path.join(d, "access.log")
    conf = ("[server]\ntrusted_proxies = 127.0.0.1, 10.9.0.0/16\n"
            "[log]\naccess_log = %s\naccess_log_format = json\n" % log)
    try:
        with Tenkd(workers=1, db="", redis="", conf=conf) as t:
            cases = {
                "who=one": ("203.0.113.9", "203.0.113.9"),
                # the client's own claim is left of what the proxy saw: the rightmost untrusted wins
                "who=spoof": ("1.2.3.4, 198.51.100.20", "198.51.100.20"),
                # a second trusted proxy in the chain is skipped
                "who=chain": ("198.51.100.21,10.9.3.4", "198.51.100.21"),
                "who=v6": ("2001:db8::7", "2001:db8::7"),
                # garbage ends the walk: the peer stays
                "who=junk": ("unknown", "127.0.0.1"),
                "who=port": ("198.51.100.22:443", "127.0.0.1"),
            }
            for q, (xff, _) in cases.items():
                assert t.request("GET", "/plaintext?" + q, headers={"X-Forwarded-For": xff})[0] == 200
            # after a PROXY v2 header that named the client, X-Forwarded-For is the client's word
            st = _raw(t, proxy_v2("192.0.2.5") + build_request("GET", "/plaintext?who=both",
                                                               {"X-Forwarded-For": "6.6.6.6"}))[0]
            assert st == 200
            want = {q: v[1] for q, v in cases.items()}
            want["who=both"] = "192.0.2.5"

            def peers():
                got = {l["query"]: l["remote"] for l in _log_lines(log)}
                return got if all(q in got for q in want) else None
            got = wait_until(peers, 5, "the access log lines")
            assert {q: got[q] for q in want} == want, got
        # an untrusted peer's X-Forwarded-For is ignored
        os.unlink(log)
        conf2 = "[server]\ntrusted_proxies = 10.9.0.0/16\n[log]\naccess_log = %s\naccess_log_format = json\n" % log
        with Tenkd(workers=1, db="", redis="", conf=conf2) as t:
            assert t.request("GET", "/plaintext?who=untrusted", headers={"X-Forwarded-For": "203.0.113.9"})[0] == 200
            got = wait_until(lambda: {l["query"]: l["remote"] for l in _log_lines(log)}.get("who=untrusted"), 5,
                             "the access log line")
            assert got == "127.0.0.1", got
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_proxy_v2_peer_in_debug_threads():
    need_db()
    with Tenkd(workers=2, admin=True, redis="",
               conf="[server]\ntrusted_proxies = 127.0.0.0/8\n[db]\nquery_timeout = 10s\n") as t:
        email = "it-lb-%d-%d@example.com" % (os.getpid(), int(time.time() * 1e6))
        st, _, body = t.request("POST", "/users", headers={"Content-Type": "application/json"},
                                body=json.dumps({"name": "Proxied", "email": email}))
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
            s = t.connect()
            path = "/users/%d" % uid
            s.sendall(proxy_v2("192.0.2.77") +
                      build_request("PUT", path, {"Content-Type": "application/json"},
                                    json.dumps({"name": "Proxied 2", "email": email})))

            def parked():
                st, _, b = t.request("GET", "/debug/threads", port=t.admin_port)
                hits = [x for x in json.loads(b)["threads"] if x.get("path") == path]
                return hits[0] if hits else None
            th = wait_until(parked, 10, "the PUT to show in /debug/threads")
            assert th["peer"] == "192.0.2.77", th
        finally:
            locker.stdin.write("ROLLBACK;\n")
            locker.stdin.close()
            locker.wait(10)
            if s is not None:
                assert recv_response(s)[0] == 200
                s.close()


def _check(text):
    d = tempfile.mkdtemp(prefix="tenk-conf-")
    path = os.path.join(d, "lb.conf")
    with open(path, "w") as f:
        f.write(text)
    r = subprocess.run([TENKD, "-t", "-c", path], capture_output=True, text=True, timeout=10)
    shutil.rmtree(d)
    return r, path


def test_config_check_of_the_lb_keys():
    r, _ = _check("[server]\ndrain_delay = 5s\ntrusted_proxies = 10.0.0.0/8, ::1, fd00::/8\n")
    assert r.returncode == 0 and r.stdout.strip() == "configuration OK", r
    for text, want in (("[server]\ndrain_delay = 5\n", "server.drain_delay: a duration needs a unit"),
                       ("[server]\ndrain_delay = 2h\n", "server.drain_delay: out of range"),
                       ("[server]\ntrusted_proxies = 10.0.0.0/33\n", "an IPv4 prefix is at most /32"),
                       ("[server]\ntrusted_proxies = example.com\n", "is not ADDR or ADDR/BITS"),
                       ("[server]\ntrusted_proxies = 10.0.0.1/\n", "bad prefix length")):
        r, path = _check(text)
        assert r.returncode == 1, (text, r)
        assert "%s:2: " % path in r.stderr and want in r.stderr, (text, r.stderr)
