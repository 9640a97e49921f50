"""test_http.py: the HTTP/1.1 engine over raw sockets: keep-alive, pipelining,
Connection: close, HEAD, 404/405, bodies, 100-continue, gzip, drain, parallel
clients and the memory of idle keep-alive connections."""
import gzip
import json
import os
import resource
import signal
import socket
import threading
import time
import zlib

from tenkharness import Reader, Tenkd, build_request, rss_kb, skip, wait_until


def _is_closed(sock, timeout=5.0):
    """True when the peer closed (EOF or reset) within timeout."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_endpoints_and_headers():
    with Tenkd(workers=1) as t:
        st, h, body = t.request("GET", "/health")
        assert st == 200 and json.loads(body) == {"status": "ok"}, (st, body)
        assert h["content-type"] == "application/json"
        assert h["server"] == "tenk"
        # IMF-fixdate, and current
        date = time.strptime(h["date"], "%a, %d %b %Y %H:%M:%S GMT")
        assert abs(time.mktime(date) - time.mktime(time.gmtime())) < 5, h["date"]
        assert int(h["content-length"]) == len(body)
        st, h, body = t.request("GET", "/json")
        assert st == 200 and json.loads(body) == {"message": "Hello, World!"}
        st, h, body = t.request("GET", "/plaintext")
        assert st == 200 and body == b"Hello, World!" and h["content-type"] == "text/plain"


def test_keepalive_many_requests_one_connection():
    with Tenkd(workers=1) as t:
        s = t.connect()
        r = Reader(s)
        for i in range(50):
            s.sendall(build_request("GET", "/health" if i % 2 else "/plaintext"))
            st, h, body = r.response()
            assert st == 200, st
            assert "connection" not in h or h["connection"].lower() != "close"
        s.close()


def test_pipelining_16_in_order_in_few_writes():
    with Tenkd(workers=1) as t:
        s = t.connect()
        paths = ["/plaintext", "/json", "/health", "/nope"] * 4
        s.sendall(b"".join(build_request("GET", p) for p in paths))
        r = Reader(s)
        for p in paths:
            st, h, body = r.response()
            if p == "/nope":
                assert st == 404 and json.loads(body)["error"], (st, body)
            elif p == "/plaintext":
                assert st == 200 and body == b"Hello, World!"
            elif p == "/json":
                assert st == 200 and json.loads(body)["message"] == "Hello, World!"
            else:
                assert st == 200 and json.loads(body)["status"] == "ok"
        # the burst was answered at once: everything arrived and nothing more
        s.sendall(build_request("GET", "/plaintext"))
        st, _, body = r.response()
        assert st == 200 and r.buf == b""
        s.close()


def test_pipelining_answers_leave_together():
    """16 pipelined requests sent in one segment: all 16 answers are readable
    from the first recv burst (they were flushed together, not one by one)."""
    with Tenkd(workers=1) as t:
        s = t.connect()
        s.sendall(build_request("GET", "/plaintext") * 16)
        data = b""
        deadline = time.monotonic() + 5
        while data.count(b"Hello, World!") < 16 and time.monotonic() < deadline:
            data += s.recv(65536)
        assert data.count(b"HTTP/1.1 200 OK") == 16
        s.close()


def test_pipelined_request_split_across_reads():
    with Tenkd(workers=1) as t:
        s = t.connect()
        raw = build_request("GET", "/health") + build_request("GET", "/plaintext")
        r = Reader(s)
        # the second request's head arrives in pieces after the first one
        s.sendall(raw[:len(raw) // 2 + 3])
        st, _, _ = r.response()
        assert st == 200
        s.sendall(raw[len(raw) // 2 + 3:])
        st, _, body = r.response()
        assert st == 200 and body == b"Hello, World!"
        s.close()


def _server_send_queue(server_port, client_port):
    """Bytes queued in the server's socket of this connection (/proc/net/tcp tx_queue)."""
    want = (":%04X" % server_port, ":%04X" % client_port)
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            p = line.split()
            if p[1].endswith(want[0]) and p[2].endswith(want[1]):
                return int(p[4].split(":")[0], 16)
    return 0


def test_request_sent_while_the_answer_waits_to_be_written():
    """A client that does not read a large answer, sends its next request and
    only then reads: the thread waits to write (the connection's own read
    event steps aside meanwhile), and the next request must still be seen."""
    conf = "[limits]\nmax_body_size = 16m\n"
    with Tenkd(workers=1, admin=True, conf=conf) as t:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", t.admin_port))
        s.settimeout(10)
        body = os.urandom(4 * 1024 * 1024)
        s.sendall(b"POST /debug/echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        # the echo fills our small receive window, then the server's send buffer
        wait_until(lambda: _server_send_queue(t.admin_port, s.getsockname()[1]) > 65536, 10,
                   "the server to block writing the echo")
        s.sendall(build_request("GET", "/health"))
        r = Reader(s)
        st, _, got = r.response()
        assert st == 200 and got == body
        st, _, got = r.response()
        assert st == 200 and json.loads(got) == {"status": "ok"}
        s.close()


def test_request_arriving_while_the_thread_is_busy():
    """The next request arrives while the thread is still producing the
    previous answer (a stream that yields between chunks, so the loop sees the
    new bytes before the thread reads again): it must be answered at once, not
    when the keep-alive timer ends. Repeated with varied timing, since the
    window is short."""
    with Tenkd(workers=1, admin=True) as t:
        s = t.connect(timeout=3, port=t.admin_port)
        r = Reader(s)
        for i in range(150):
            s.sendall(build_request("GET", "/debug/stream?n=300"))
            time.sleep((i % 10) * 0.0003)
            s.sendall(build_request("GET", "/health"))
            st, _, got = r.response()
            assert st == 200 and got.count(b"\n") == 300, (i, st)
            st, _, got = r.response()  # a lost wake-up would time out here
            assert st == 200 and json.loads(got) == {"status": "ok"}, (i, st)
        s.close()


def test_connection_close_from_client():
    with Tenkd(workers=1) as t:
        s = t.connect()
        s.sendall(build_request("GET", "/health", {"Connection": "close"}))
        r = Reader(s)
        st, h, _ = r.response()
        assert st == 200 and h["connection"].lower() == "close"
        assert _is_closed(s)


def test_http10_keepalive_rules():
    with Tenkd(workers=1) as t:
        s = t.connect()
        s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        st, h, body = Reader(s).response()
        assert st == 200 and h.get("connection", "").lower() == "close"
        assert _is_closed(s)
        s = t.connect()
        r = Reader(s)
        s.sendall(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        st, h, _ = r.response()
        assert st == 200 and h["connection"].lower() == "keep-alive"
        s.sendall(b"GET /plaintext HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        st, h, body = r.response()
        assert st == 200 and body == b"Hello, World!"
        s.close()


def test_max_requests_per_connection():
    with Tenkd(workers=1, conf="[limits]\nmax_requests_per_conn = 3\n") as t:
        s = t.connect()
        r = Reader(s)
        for i in range(3):
            s.sendall(build_request("GET", "/health"))
            st, h, _ = r.response()
            assert st == 200
            closing = h.get("connection", "").lower() == "close"
            assert closing == (i == 2), (i, h)
        assert _is_closed(s)


def test_head_has_length_but_no_body():
    with Tenkd(workers=1) as t:
        s = t.connect()
        r = Reader(s)
        s.sendall(build_request("HEAD", "/json"))
        st, h, _ = r.response(head=True)
        assert st == 200 and h["content-length"] == "27"
        # if a body had been sent, it would now be parsed as the next response
        s.sendall(build_request("GET", "/plaintext"))
        st, _, body = r.response()
        assert st == 200 and body == b"Hello, World!"
        s.close()


def test_404_and_405_with_allow():
    with Tenkd(workers=1) as t:
        st, h, body = t.request("GET", "/no/such/path")
        assert st == 404 and h["content-type"] == "application/json"
        assert "error" in json.loads(body)
        st, h, body = t.request("POST", "/health", body=b"")
        assert st == 405, st
        assert h["allow"] == "GET, HEAD", h
        assert "error" in json.loads(body)
        st, h, body = t.request("DELETE", "/plaintext")
        assert st == 405 and "GET" in h["allow"]


def test_invalid_percent_encoding_is_400():
    with Tenkd(workers=1) as t:
        st, _, body = t.request("GET", "/health?x=%zz")
        assert st == 400 and "error" in json.loads(body)
        st, _, _ = t.request("GET", "/health?x=%41")
        assert st == 200


def test_unknown_path_with_body_does_not_desync():
    """A request body the server will not read must not be parsed as a request."""
    with Tenkd(workers=1) as t:
        s = t.connect()
        smuggled = build_request("GET", "/plaintext")
        s.sendall(build_request("POST", "/nope", {"Content-Length": str(len(smuggled))}) + smuggled)
        r = Reader(s)
        st, _, _ = r.response()
        assert st == 404
        # either the body was read and dropped (next response is ours), or the
        # connection was closed: never an answer to the smuggled request
        s.sendall(build_request("GET", "/health"))
        try:
            st, _, body = r.response()
            assert json.loads(body) == {"status": "ok"}, body
        except (ConnectionError, OSError):
            pass
        s.close()


def test_body_content_length_chunked_and_100_continue():
    with Tenkd(workers=1, admin=True) as t:
        payload = os.urandom(100000)
        st, h, body = t.request("POST", "/debug/echo", {"Content-Type": "application/x-test"},
                                payload, port=t.admin_port)
        assert st == 200 and body == payload and h["content-type"] == "application/x-test"
        # chunked, in odd pieces with extensions, then a pipelined request
        s = t.connect(port=t.admin_port)
        chunks = [b"hello ", b"", b"chunked", b" world" * 300]
        raw = b"POST /debug/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        for c in chunks:
            if c:
                raw += b"%x;ext=1\r\n" % len(c) + c + b"\r\n"
        raw += b"0\r\nTrailer-X: 1\r\n\r\n" + build_request("GET", "/health")
        for i in range(0, len(raw), 7):
            s.sendall(raw[i:i + 7])
        r = Reader(s)
        st, _, body = r.response()
        assert st == 200 and body == b"".join(chunks), body[:50]
        st, _, body = r.response()
        assert st == 200 and json.loads(body) == {"status": "ok"}
        # 100-continue: the interim answer comes before we send the body
        s.sendall(b"POST /debug/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        s.settimeout(5)
        st, _, _ = r.response()
        assert st == 100, st
        s.sendall(b"abcde")
        st, _, body = r.response()
        assert st == 200 and body == b"abcde"
        # with the body already sent along, no 100 is required; the answer is right
        s.sendall(b"POST /debug/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                  b"Expect: 100-continue\r\n\r\nxyz")
        st, _, body = r.response()
        if st == 100:
            st, _, body = r.response()
        assert st == 200 and body == b"xyz"
        s.close()


def test_streamed_responses_chunked_and_close_delimited():
    with Tenkd(workers=1, admin=True) as t:
        expect = b"".join(b"line %d\n" % i for i in range(5))
        s = t.connect(port=t.admin_port)
        r = Reader(s)
        s.sendall(build_request("GET", "/debug/stream?n=5"))
        st, h, body = r.response()
        assert st == 200 and h["transfer-encoding"] == "chunked" and body == expect, (h, body)
        assert "content-length" not in h
        # the connection stays usable after the last chunk
        s.sendall(build_request("GET", "/debug/stream?n=0"))
        st, h, body = r.response()
        assert st == 200 and body == b""
        s.sendall(build_request("HEAD", "/debug/stream?n=5"))
        st, h, _ = r.response(head=True)
        assert st == 200
        s.sendall(build_request("GET", "/health"))
        st, _, body = r.response()
        assert json.loads(body) == {"status": "ok"}
        s.close()
        # HTTP/1.0 has no chunked coding: the body ends with the connection
        s = t.connect(port=t.admin_port)
        s.sendall(b"GET /debug/stream?n=5 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        st, h, body = Reader(s).response()
        assert st == 200 and "transfer-encoding" not in h and body == expect
        assert h["connection"].lower() == "close"
        s.close()


def test_gzip_roundtrip_and_vary():
    with Tenkd(workers=1, admin=True, conf="[http]\ngzip_min_size = 16\n") as t:
        st, h, body = t.request("GET", "/json", {"Accept-Encoding": "gzip, deflate"})
        assert st == 200 and h.get("content-encoding") == "gzip", h
        assert h["vary"] == "Accept-Encoding"
        assert json.loads(zlib.decompress(body, 16 + zlib.MAX_WBITS)) == {"message": "Hello, World!"}
        assert int(h["content-length"]) == len(body)
        # refused or not asked: identity, still with Vary
        for ae in ("gzip;q=0", "identity", None):
            st, h, body = t.request("GET", "/json", {"Accept-Encoding": ae})
            assert st == 200 and "content-encoding" not in h, (ae, h)
            assert json.loads(body)["message"] == "Hello, World!"
            assert h["vary"] == "Accept-Encoding"
        # HEAD: compressed length, no body
        st, h, _ = t.request("HEAD", "/json", {"Accept-Encoding": "gzip"})
        assert st == 200 and h["content-encoding"] == "gzip" and int(h["content-length"]) > 0
        # a big compressible body through the echo: much smaller on the wire
        text = (b"tenk compresses text " * 5000)
        st, h, body = t.request("POST", "/debug/echo",
                                {"Content-Type": "text/plain", "Accept-Encoding": "gzip"},
                                text, port=t.admin_port)
        assert h["content-encoding"] == "gzip" and len(body) < len(text) // 10
        assert gzip.decompress(body) == text
        # not compressible: left alone
        st, h, body = t.request("POST", "/debug/echo",
                                {"Content-Type": "image/png", "Accept-Encoding": "gzip"},
                                text, port=t.admin_port)
        assert "content-encoding" not in h and body == text
    with Tenkd(workers=1) as t:
        # default threshold (1 KiB): /json is too small to be worth it
        st, h, _ = t.request("GET", "/json", {"Accept-Encoding": "gzip"})
        assert "content-encoding" not in h


def test_parallel_clients():
    with Tenkd(workers=2) as t:
        errors = []
        counts = [0] * 16

        def client(k):
            try:
                s = t.connect()
                r = Reader(s)
                for _ in range(100):
                    s.sendall(build_request("GET", "/plaintext"))
                    st, _, body = r.response()
                    if st != 200 or body != b"Hello, World!":
                        errors.append((st, body))
                    counts[k] += 1
                s.close()
            except Exception as e:  # noqa
                errors.append(repr(e))
        th = [threading.Thread(target=client, args=(k,)) for k in range(16)]
        for x in th:
            x.start()
        for x in th:
            x.join(30)
        assert not errors, errors[:3]
        assert sum(counts) == 1600


def test_graceful_drain_answers_arrived_requests():
    """SIGQUIT: an idle keep-alive connection that sends its next request
    within the drain window is answered (with Connection: close); a fresh
    request on another connection in flight is answered too."""
    with Tenkd(workers=1, args=("-v",)) as t:
        s = t.connect()
        r = Reader(s)
        s.sendall(build_request("GET", "/health"))
        assert r.response()[0] == 200
        pid = t.worker_pids()[0]
        os.kill(pid, signal.SIGQUIT)
        wait_until(lambda: "draining: 1 connections open" in t.log(), 5, "the worker to drain")
        s.sendall(build_request("GET", "/plaintext"))
        st, h, body = r.response()
        assert st == 200 and body == b"Hello, World!"
        assert h["connection"].lower() == "close"
        assert _is_closed(s)


def test_graceful_drain_finishes_a_request_in_flight():
    """SIGQUIT while a request's body is still arriving: it is read and
    answered (Connection: close), not cut."""
    with Tenkd(workers=1, admin=True, args=("-v",)) as t:
        s = t.connect(port=t.admin_port)
        r = Reader(s)
        s.sendall(b"POST /debug/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        assert r.response()[0] == 100  # the worker is reading this request now
        s.sendall(b"hello")
        pid = t.worker_pids()[0]
        os.kill(pid, signal.SIGQUIT)
        wait_until(lambda: "draining:" in t.log(), 5, "the worker to drain")
        s.sendall(b"world")
        st, h, body = r.response()
        assert st == 200 and body == b"helloworld"
        assert h["connection"].lower() == "close"
        assert _is_closed(s)
        # the worker exits once its last connection is gone; the master replaces it
        wait_until(lambda: pid not in t.worker_pids(), 10, "the drained worker to exit")


def test_fast_stop_bounds_a_request_in_flight():
    """SIGTERM: a request still in flight gets about a second, then the
    worker goes away."""
    with Tenkd(workers=1, admin=True) as t:
        s = t.connect(port=t.admin_port)
        s.sendall(b"POST /debug/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        assert Reader(s).response()[0] == 100  # the worker is reading this request now
        pid = t.worker_pids()[0]
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        assert _is_closed(s, timeout=5)
        elapsed = time.monotonic() - t0
        assert 0.5 <= elapsed <= 3.0, elapsed


def test_idle_keepalive_memory():
    """2,000 idle keep-alive connections cost <= 1 KiB each of worker RSS."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = 2000
    if soft < n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 500), hard))
    with Tenkd(workers=1) as t:
        pid = t.worker_pids()[0]
        with open("/proc/%d/maps" % pid) as f:
            if "libasan" in f.read():
                skip("sanitizer build: redzones inflate the memory per connection")
        # warm up: pools, the loop's tables, one request per path
        warm = []
        for _ in range(200):
            s = t.connect()
            s.sendall(build_request("GET", "/health"))
            warm.append(s)
        for s in warm:
            Reader(s).response()
            s.close()
        wait_until(lambda: len(os.listdir("/proc/%d/fd" % pid)) < 50, 5, "warm-up connections closed")
        before = rss_kb(pid)
        socks = []
        for _ in range(n):
            s = t.connect()
            s.sendall(build_request("GET", "/health"))
            socks.append(s)
        for s in socks:
            st, _, _ = Reader(s).response()
            assert st == 200
        wait_until(lambda: len(os.listdir("/proc/%d/fd" % pid)) >= n, 5, "connections held")
        after = rss_kb(pid)
        per_conn = (after - before) * 1024 / n
        print("idle keep-alive: %.0f bytes per connection (RSS %d -> %d KiB)" % (per_conn, before, after))
        assert per_conn <= 1024, per_conn
        for s in socks:
            s.close()


def test_connections_spread_across_workers():
    """A burst of 100 connections lands on both workers, not on whichever
    woke first: the busier one holds back (shared-memory connection counts)."""
    # no database or cache: their sockets would count as connections here
    with Tenkd(workers=2, args=("-v",), db="", redis="") as t:
        wait_until(lambda: len(t.worker_pids()) == 2, 5, "two workers")
        wait_until(lambda: t.log().count(") accepting on ") == 2, 5, "both workers accepting")
        pids = t.worker_pids()

        def sockets(pid):
            n = 0
            for fd in os.listdir("/proc/%d/fd" % pid):
                try:
                    if os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("socket:"):
                        n += 1
                except OSError:
                    pass
            return n
        base = {p: sockets(p) for p in pids}
        socks = [t.connect() for _ in range(100)]
        for s in socks:
            s.sendall(build_request("GET", "/plaintext"))
        for s in socks:
            assert Reader(s).response()[0] == 200
        held = {p: sockets(p) - base[p] for p in pids}
        print("connections per worker: %s" % sorted(held.values()))
        # (a connection of the harness's readiness check may close meanwhile)
        assert 97 <= sum(held.values()) <= 100, held
        # without the hold-back, one worker's wake-up takes up to 64 at once and
        # a 100/0 or 64/36 split is common; scheduling noise on 2 busy cores
        # still moves a few, hence 15 rather than a near-even split
        assert min(held.values()) >= 15, held
        for s in socks:
            s.close()
