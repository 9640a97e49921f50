#!/usr/bin/env python3
"""idle.py: open N keep-alive connections, one request each, then hold them idle
and measure what they cost the server (RSS of its whole process tree).

Usage: idle.py --port P [--host 127.0.0.1] [--conns 10000] [--path /health]
               [--hold 3] [--batch 500] ROOTPID...

Prints one JSON object: RSS before (after a warm-up), RSS with every connection
idle, bytes per connection, how many connections were established and answered,
and failures. The caller raises `ulimit -n` above N first.
"""
import argparse
import errno
import json
import os
import selectors
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sample import tree, proc_info  # noqa: E402


def rss_of(roots):
    total = 0
    for p in tree(roots):
        info = proc_info(p)
        if info:
            total += info[1]
    return total


def settle_rss(roots, secs=1.5):
    """RSS after it stops moving (or secs, whichever first): median of a few reads."""
    vals = []
    end = time.monotonic() + secs
    while time.monotonic() < end:
        vals.append(rss_of(roots))
        time.sleep(0.25)
    vals.sort()
    return vals[len(vals) // 2]


def response_complete(buf):
    """True once buf holds one whole response with a Content-Length body."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return False
    length = 0
    for line in buf[:head_end].split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip() or 0)
    return len(buf) >= head_end + 4 + length


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--path", default="/health")
    ap.add_argument("--hold", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("pids", nargs="+", type=int)
    a = ap.parse_args()

    req = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: keep-alive\r\n\r\n"
           % (a.path, a.host, a.port)).encode()

    # warm-up: a few connections so lazily allocated pools exist before "before"
    for _ in range(4):
        try:
            s = socket.create_connection((a.host, a.port), timeout=2)
            s.sendall(req)
            s.recv(4096)
            s.close()
        except OSError:
            pass
    before = settle_rss(a.pids)

    sel = selectors.DefaultSelector()
    socks, bufs = {}, {}
    fails = {"connect": 0, "reset": 0, "bad_status": 0, "timeout": 0}
    answered = 0
    pending = 0
    opened = 0
    deadline = time.monotonic() + a.timeout
    while (opened < a.conns or pending) and time.monotonic() < deadline:
        # open the next batch once the previous one is mostly answered
        while opened < a.conns and pending < a.batch:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            err = s.connect_ex((a.host, a.port))
            opened += 1
            if err not in (0, errno.EINPROGRESS):
                fails["connect"] += 1
                s.close()
                continue
            socks[s.fileno()] = s
            bufs[s.fileno()] = b""
            sel.register(s, selectors.EVENT_WRITE)
            pending += 1
        for key, ev in sel.select(timeout=0.5):
            s = key.fileobj
            fd = s.fileno()
            if ev & selectors.EVENT_WRITE:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fails["connect"] += 1
                    sel.unregister(s)
                    s.close()
                    del socks[fd]
                    pending -= 1
                    continue
                try:
                    s.send(req)
                except OSError:
                    fails["reset"] += 1
                    sel.unregister(s)
                    s.close()
                    del socks[fd]
                    pending -= 1
                    continue
                sel.modify(s, selectors.EVENT_READ)
                continue
            try:
                chunk = s.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                fails["reset"] += 1
                sel.unregister(s)
                s.close()
                del socks[fd]
                pending -= 1
                continue
            bufs[fd] += chunk
            if response_complete(bufs[fd]):
                if not bufs[fd].startswith(b"HTTP/1.1 2"):
                    fails["bad_status"] += 1
                sel.unregister(s)
                bufs[fd] = b""
                answered += 1
                pending -= 1
    fails["timeout"] = pending

    time.sleep(a.hold)
    during = settle_rss(a.pids)
    # still open? a server that dropped idle connections would make the figure meaningless
    alive = 0
    for s in socks.values():
        try:
            d = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            alive += 1 if d != b"" else 0
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    for s in socks.values():
        s.close()
    n = max(answered, 1)
    print(json.dumps({
        "conns_wanted": a.conns, "answered": answered, "alive_after_hold": alive,
        "rss_before": before, "rss_idle": during,
        "bytes_per_conn": round((during - before) / n, 1), "failures": fails,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
