#!/usr/bin/env python3
"""load.py: a bounded HTTP/1.1 load on 127.0.0.1 that counts every failure.

Runs N client threads for D seconds against one port; each thread sends GETs
(keep-alive, a new connection per request, or a mix) over raw sockets, checks
the status and, where the answer is known, the body, and classifies every
failure: connect error, reset, timeout, close before a response, non-2xx
status, wrong body. Prints one JSON object on stdout at the end.

    load.py --port P [--duration S] [--conns N] [--mode keepalive|close|mixed]
            [--path /json --path /db ...] [--allow 503] [--interval S] [--events]

--allow STATUS counts that status apart (e.g. 503 while PostgreSQL is down)
instead of as a failure; --interval makes each client pause between requests
(a probe); --events lists the wall-clock time of every failure and allowed
status (for recovery windows).
"""
import argparse
import json
import random
import socket
import sys
import threading
import time

KNOWN = {
    "/health": b'{"status":"ok"}',
    "/json": b'{"message":"Hello, World!"}',
    "/plaintext": b"Hello, World!",
}


class Closed(Exception):
    pass


def read_response(sock, buf):
    """One response from sock -> (status, body, leftover, close)."""
    while b"\r\n\r\n" not in buf:
        c = sock.recv(65536)
        if not c:
            raise Closed("closed before a full response head" if buf else "closed before a response")
        buf += c
    i = buf.index(b"\r\n\r\n")
    head, buf = buf[:i], buf[i + 4:]
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError("bad status line %r" % lines[0][:80])
    status = int(parts[1])
    clen, chunked, close = None, False, False
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        k = k.strip().lower()
        v = v.strip().lower()
        if k == b"content-length":
            clen = int(v)
        elif k == b"transfer-encoding" and v == b"chunked":
            chunked = True
        elif k == b"connection" and v == b"close":
            close = True
    if chunked:
        body = b""
        while True:
            while b"\r\n" not in buf:
                c = sock.recv(65536)
                if not c:
                    raise Closed("closed inside a chunked body")
                buf += c
            j = buf.index(b"\r\n")
            n = int(buf[:j].split(b";")[0], 16)
            buf = buf[j + 2:]
            while len(buf) < n + 2:
                c = sock.recv(65536)
                if not c:
                    raise Closed("closed inside a chunk")
                buf += c
            if n == 0:
                # trailers were not sent by tenk: the terminating CRLF follows
                buf = buf[2:]
                return status, body, buf, close
            body += buf[:n]
            buf = buf[n + 2:]
    n = clen or 0
    while len(buf) < n:
        c = sock.recv(65536)
        if not c:
            raise Closed("closed inside a body")
        buf += c
    return status, buf[:n], buf[n:], close


def body_ok(path, body):
    base = path.split("?")[0]
    if base in KNOWN:
        return body == KNOWN[base]
    if base in ("/db",) or base.startswith("/users/"):
        try:
            o = json.loads(body)
        except ValueError:
            return False
        return isinstance(o, dict) and "id" in o
    if base in ("/queries", "/cached-queries", "/users", "/updates"):
        try:
            return isinstance(json.loads(body), (list, dict))
        except ValueError:
            return False
    return True


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.fail = {}  # kind -> count
        self.allowed = {}  # status -> count
        self.status = {}
        self.lat = []
        self.events = []  # (wall time, kind)
        self.samples = []  # first few failure details

    def add_fail(self, kind, detail, want_events):
        with self.lock:
            self.fail[kind] = self.fail.get(kind, 0) + 1
            if len(self.samples) < 10:
                self.samples.append("%s: %s" % (kind, detail))
            if want_events:
                self.events.append((time.time(), kind))


def client(args, st, stop_at, seed):
    rnd = random.Random(seed)
    sock, buf = None, b""
    allow = set(args.allow)
    while time.monotonic() < stop_at:
        path = rnd.choice(args.path)
        if "{id}" in path:
            path = path.replace("{id}", str(rnd.randint(1, 10000)))
        keep = args.mode == "keepalive" or (args.mode == "mixed" and rnd.random() < 0.5)
        t0 = time.monotonic()
        fresh = sock is None
        try:
            if sock is None:
                try:
                    sock = socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout)
                except OSError as e:
                    st.add_fail("connect", repr(e), args.events)
                    sock = None
                    time.sleep(0.01)
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buf = b""
            req = "GET %s HTTP/1.1\r\nHost: localhost\r\n%s\r\n" % (
                path, "" if keep else "Connection: close\r\n")
            sock.sendall(req.encode())
            status, body, buf, close = read_response(sock, buf)
            dt = time.monotonic() - t0
            with st.lock:
                st.status[status] = st.status.get(status, 0) + 1
                st.lat.append(dt)
            if 200 <= status < 300:
                if body_ok(path, body):
                    with st.lock:
                        st.ok += 1
                else:
                    st.add_fail("body", "%s -> %r" % (path, body[:80]), args.events)
            elif status in allow:
                with st.lock:
                    st.allowed[status] = st.allowed.get(status, 0) + 1
                    if args.events:
                        st.events.append((time.time(), str(status)))
            else:
                st.add_fail("status_%d" % status, "%s -> %r" % (path, body[:80]), args.events)
            if close or not keep:
                sock.close()
                sock = None
        except socket.timeout as e:
            st.add_fail("timeout", "%s %r" % (path, e), args.events)
            sock.close()
            sock = None
        except (ConnectionResetError, BrokenPipeError) as e:
            st.add_fail("reset", "%s %r fresh=%s" % (path, e, fresh), args.events)
            sock.close()
            sock = None
        except Closed as e:
            st.add_fail("closed", "%s %s fresh=%s" % (path, e, fresh), args.events)
            sock.close()
            sock = None
        except (OSError, ValueError) as e:
            st.add_fail("other", "%s %r" % (path, e), args.events)
            if sock:
                sock.close()
            sock = None
        if args.interval:
            time.sleep(args.interval)
    if sock:
        sock.close()


def pct(sorted_vals, p):
    if not sorted_vals:
        return 0.0
    i = min(len(sorted_vals) - 1, int(round(p / 100.0 * (len(sorted_vals) - 1))))
    return sorted_vals[i]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--mode", default="keepalive", choices=("keepalive", "close", "mixed"))
    ap.add_argument("--path", action="append")
    ap.add_argument("--allow", action="append", type=int, default=[])
    ap.add_argument("--timeout", type=float, default=10)
    ap.add_argument("--interval", type=float, default=0)
    ap.add_argument("--events", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    args.path = args.path or ["/json"]
    st = Stats()
    t_start = time.time()
    stop_at = time.monotonic() + args.duration
    ths = [threading.Thread(target=client, args=(args, st, stop_at, args.seed * 1000 + i), daemon=True)
           for i in range(args.conns)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(args.duration + args.timeout + 5)
    lat = sorted(st.lat)
    out = {
        "start": t_start, "end": time.time(), "requests": len(lat), "ok": st.ok,
        "failures": sum(st.fail.values()), "fail": st.fail, "allowed": st.allowed,
        "status": {str(k): v for k, v in sorted(st.status.items())},
        "p50_ms": round(pct(lat, 50) * 1000, 3), "p99_ms": round(pct(lat, 99) * 1000, 3),
        "max_ms": round((lat[-1] if lat else 0) * 1000, 3), "samples": st.samples,
    }
    if args.events:
        out["events"] = st.events
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
