#!/usr/bin/env python3
"""storm.py: scripts/bench's connect-storm client: opens N connections at once (non-blocking
connects issued back to back), sends one GET on each as soon as it is connected, reads the
answer to its end, and reports as JSON: the time until all were answered, per-connection
latency percentiles (connect issued -> answer read), req/s (N / that time) and failures.

Usage: storm.py --port P [--conns 10000] [--path /health] [--timeout 30]

The server's accept queue (net.core.somaxconn, its backlog) may be shorter than N: then SYNs
are dropped and retried by the kernel after 1 s, and that shows in the time, as it would for
real clients. Needs N + ~50 file descriptors (raised to the hard limit here).
"""
import argparse
import errno
import json
import resource
import selectors
import socket
import sys
import time


def pctl(s, q):
    if not s:
        return None
    i = min(len(s) - 1, max(0, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[i]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--path", default="/health")
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.conns + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % a.path).encode()
    sel = selectors.EpollSelector()
    st = {}  # sock -> [t_start, sent, bytes]
    fails = {"connect": 0, "read": 0, "status": 0, "timeout": 0}
    lat = []
    t0 = time.monotonic()
    for _ in range(a.conns):
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            fails["connect"] += 1
            continue
        s.setblocking(False)
        e = s.connect_ex(("127.0.0.1", a.port))
        if e not in (0, errno.EINPROGRESS):
            fails["connect"] += 1
            s.close()
            continue
        st[s] = [time.monotonic(), False, b""]
        sel.register(s, selectors.EVENT_WRITE)
    issued = time.monotonic() - t0
    deadline = t0 + a.timeout
    while st and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            c = st[s]
            try:
                if not c[1]:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise ConnectionRefusedError(err)
                    s.send(req)
                    c[1] = True
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                d = s.recv(4096)
                if d:
                    c[2] += d
                    continue
                if c[2].startswith(b"HTTP/1.1 200") or c[2].startswith(b"HTTP/1.0 200"):
                    lat.append(time.monotonic() - c[0])
                else:
                    fails["status" if c[2] else "read"] += 1
            except OSError:
                fails["connect" if not c[1] else "read"] += 1
            sel.unregister(s)
            s.close()
            del st[s]
    total = time.monotonic() - t0
    fails["timeout"] += len(st)
    for s in list(st):
        s.close()
    s = sorted(x * 1000 for x in lat)
    out = {"conns": a.conns, "answered": len(lat), "all_answered_s": total if not st else None,
           "elapsed_s": total, "issue_s": issued, "rps": len(lat) / total if total > 0 else 0,
           "p50_ms": pctl(s, 50), "p99_ms": pctl(s, 99), "max_ms": s[-1] if s else None,
           "errors": fails}
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
