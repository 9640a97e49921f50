"""test_limits.py: every request limit and rejection, each with its status, a
JSON error body and (for a broken request) the connection closed."""
import json
import os
import socket
import time

from tenkharness import Reader, Tenkd, build_request, wait_until


def _closed(sock, timeout=5.0):
    sock.settimeout(timeout)
    try:
        while True:
            if sock.recv(65536) == b"":
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def _reject(t, raw, status, port=None, closes=True):
    s = t.connect(port=port)
    try:
        s.sendall(raw)
        st, h, body = Reader(s).response()
        assert st == status, (raw[:80], st, body)
        assert h["content-type"] == "application/json", h
        assert isinstance(json.loads(body)["error"], str)
        if closes:
            assert h.get("connection", "").lower() == "close", (raw[:80], h)
            assert _closed(s), raw[:80]
        return body
    finally:
        s.close()


def test_target_too_long_414():
    with Tenkd(workers=1) as t:
        _reject(t, build_request("GET", "/" + "a" * 9000), 414)
        # just under the limit is fine (404: no such path)
        st, _, _ = t.request("GET", "/" + "a" * 8000)
        assert st == 404


def test_header_section_too_large_431():
    with Tenkd(workers=1) as t:
        _reject(t, build_request("GET", "/health", {"X-Big": "v" * 9000}), 431)
        many = {"X-H%d" % i: "1" for i in range(101)}
        _reject(t, build_request("GET", "/health", many), 431)
        ok = {"X-H%d" % i: "1" for i in range(90)}
        st, _, _ = t.request("GET", "/health", ok)
        assert st == 200


def test_configured_limits():
    conf = "[limits]\nmax_request_line = 256\nmax_header_size = 1k\nmax_headers = 5\nmax_body_size = 1000\n"
    with Tenkd(workers=1, admin=True, conf=conf) as t:
        _reject(t, build_request("GET", "/" + "b" * 300), 414)
        _reject(t, build_request("GET", "/health", {"X-Big": "v" * 1100}), 431)
        _reject(t, build_request("GET", "/health", {"X-H%d" % i: "1" for i in range(6)}), 431)
        # body limits: by Content-Length before reading, and while de-chunking
        _reject(t, build_request("POST", "/debug/echo", body=b"x" * 1001), 413, port=t.admin_port)
        raw = (b"POST /debug/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
               (b"200\r\n" + b"y" * 512 + b"\r\n") * 2 + b"0\r\n\r\n")
        _reject(t, raw, 413, port=t.admin_port)
        st, _, body = t.request("POST", "/debug/echo", body=b"z" * 1000, port=t.admin_port)
        assert st == 200 and body == b"z" * 1000


def test_content_length_over_default_413_without_reading():
    with Tenkd(workers=1) as t:
        s = t.connect()
        s.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n")
        st, h, body = Reader(s).response()
        assert st == 413 and "error" in json.loads(body)
        s.close()


def test_expectation_417():
    with Tenkd(workers=1) as t:
        _reject(t, build_request("GET", "/health", {"Expect": "something-else"}), 417)


def test_version_505_and_minor_versions():
    with Tenkd(workers=1) as t:
        _reject(t, b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 505)
        _reject(t, b"GET /health HTTP/3.1\r\nHost: x\r\n\r\n", 505)
        # 1.x with a higher minor version is answered as 1.1 (RFC 9110 2.5)
        s = t.connect()
        s.sendall(b"GET /health HTTP/1.7\r\nHost: x\r\n\r\n")
        st, _, body = Reader(s).response()
        assert st == 200 and json.loads(body)["status"] == "ok"
        s.close()


def test_transfer_coding_501():
    with Tenkd(workers=1) as t:
        _reject(t, b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501)


BAD_400 = [
    b"GET /health HTTP/1.1\r\n\r\n",  # no Host
    b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two Hosts
    b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
    b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX: a\r\n  folded\r\n\r\n",  # obs-fold
    b"GET /health HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX : a\r\n\r\n",  # space before colon
    b"GET /health HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",  # bare CR
    b"GET /health HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",  # NUL
    b"G@T /health HTTP/1.1\r\nHost: x\r\n\r\n",  # non-token method
    b"GET  /health HTTP/1.1\r\nHost: x\r\n\r\n",  # extra space
    b"GET /health\r\nHost: x\r\n\r\n",  # missing version
    b"GET /health HTTP/1.1\nHost: x\n\n",  # bare LF
]


def test_malformed_400_and_close():
    with Tenkd(workers=1) as t:
        for raw in BAD_400:
            _reject(t, raw, 400)


BAD_CHUNKED = [b"0x10", b"-1", b"+1", b" 1", b"zz", b"fffffffffffffffff"]


def test_bad_chunk_sizes_400():
    with Tenkd(workers=1, admin=True) as t:
        for size in BAD_CHUNKED:
            raw = (b"POST /debug/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
                   size + b"\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n")
            _reject(t, raw, 400, port=t.admin_port)


def test_smuggling_attempt_gets_one_answer():
    """CL+TE: rejected outright, so the smuggled request is never served."""
    with Tenkd(workers=1) as t:
        s = t.connect()
        s.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        data = b""
        try:
            while True:
                c = s.recv(65536)
                if not c:
                    break
                data += c
        except ConnectionResetError:
            pass
        assert data.startswith(b"HTTP/1.1 400 ") and data.count(b"HTTP/1.1") == 1, data
        s.close()


def test_max_connections_per_worker():
    with Tenkd(workers=1, conf="[server]\nmax_connections = 4\n") as t:
        held = []
        for _ in range(4):
            s = t.connect()
            r = Reader(s)
            s.sendall(build_request("GET", "/health"))
            assert r.response()[0] == 200
            held.append((s, r))
        # the fifth waits in the kernel's queue, unanswered
        extra = t.connect()
        extra.sendall(build_request("GET", "/plaintext"))
        extra.settimeout(0.5)
        try:
            got = extra.recv(1)
        except socket.timeout:
            got = None
        assert got is None, "a connection over max_connections was served"
        held[0][0].close()
        extra.settimeout(5)
        st, _, body = Reader(extra).response()
        assert st == 200 and body == b"Hello, World!"
        for s, _ in held[1:]:
            s.close()
        extra.close()


def test_no_green_thread_left_503():
    """At runtime.max_threads every green thread is busy: a new request gets
    503 with a JSON error and Retry-After, and the others still finish."""
    # no database or cache: their clients' green threads would count too
    with Tenkd(workers=1, admin=True, conf="[runtime]\nmax_threads = 2\n", db="", redis="") as t:
        busy = []
        for _ in range(2):
            s = t.connect(port=t.admin_port)
            r = Reader(s)
            s.sendall(b"POST /debug/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                      b"Expect: 100-continue\r\n\r\n")
            assert r.response()[0] == 100  # its green thread now waits for the body
            busy.append((s, r))
        s = t.connect()
        s.sendall(build_request("GET", "/health"))
        st, h, body = Reader(s).response()
        assert st == 503 and h["retry-after"] == "1", (st, h)
        assert json.loads(body)["error"]
        assert int(h["content-length"]) == len(body)
        assert _closed(s)
        for s, r in busy:
            s.sendall(b"ok")
            st, _, body = r.response()
            assert st == 200 and body == b"ok"
            s.close()
        st, _, _ = t.request("GET", "/health")
        assert st == 200


def test_emfile_backs_off_without_spinning():
    """Out of file descriptors: the worker stops accepting for a moment
    instead of spinning on a readable listen socket, logs it at most once a
    second, and serves the waiting connections once descriptors are back."""
    import resource
    with Tenkd(workers=1) as t:
        pid = t.worker_pids()[0]
        nfd = len(os.listdir("/proc/%d/fd" % pid))
        old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (nfd + 3, old[1]))
        socks = []
        for _ in range(12):  # /plaintext: /health may say 503 while the database is unreachable
            s = t.connect()
            s.sendall(build_request("GET", "/plaintext"))
            socks.append(s)
        wait_until(lambda: "accept4() failed" in t.log(), 5, "the EMFILE warning")

        def cpu_ticks():
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])
        c0, t0 = cpu_ticks(), time.monotonic()
        wait_until(lambda: time.monotonic() - t0 >= 1.0, 2, "a second of back-off")
        used = cpu_ticks() - c0
        assert used < 30, "worker used %d ticks in 1 s while out of descriptors" % used
        warnings = t.log().count("accept4() failed")
        assert warnings <= 3, warnings
        resource.prlimit(pid, resource.RLIMIT_NOFILE, old)
        for s in socks:
            st, _, _ = Reader(s).response()
            assert st == 200
            s.close()
