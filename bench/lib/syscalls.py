#!/usr/bin/env python3
"""syscalls.py: count the system calls of an `strace -f -yy -o FILE` trace, by call and by peer.

Usage: syscalls.py TRACE --requests N --client-port P [--pg-port P] [--redis-port P] > summary.json

Each call's first argument is the descriptor as `strace -yy` prints it (`12<TCP:[a:p->b:q]>`,
`9<UNIX-STREAM:[1234->1235]>`, `4<anon_inode:[eventpoll]>`), which says whom the call talked
to (a Unix socket's peer by its inode in /proc/net/unix, read when this runs: run it while the
traced server still holds its connections): the HTTP clients (tenk's listening port), PostgreSQL (its port or its Unix
socket), Redis (its port or a socket named redis), the event loop (epoll, eventfd, timerfd), or
something else. Counts per request are the counts divided by N, the requests answered while the
trace ran. Standard library only.
"""
import argparse
import json
import re
import sys

CALL = re.compile(r"^\d+\s+([a-z_0-9]+)\((.*)$")


def unix_paths():
    """inode -> path of the bound Unix sockets (accepted ones carry their listener's path)."""
    paths = {}
    try:
        with open("/proc/net/unix") as f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) >= 8:
                    paths[parts[6]] = parts[7]
    except OSError:
        pass
    return paths


def classify(arg, a, paths):
    if "eventpoll" in arg or "eventfd" in arg or "timerfd" in arg:
        return "event loop"
    u = re.search(r"UNIX[-A-Z]*:\[\d+->(\d+)\]", arg)
    if u:
        arg += paths.get(u.group(1), "")
    if ".s.PGSQL" in arg or (a.pg_port and re.search(r":%d\b" % a.pg_port, arg)):
        return "postgres"
    if "redis" in arg or (a.redis_port and re.search(r":%d\b" % a.redis_port, arg)):
        return "redis"
    if re.search(r":%d\b" % a.client_port, arg):
        return "client"
    return "other"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--client-port", type=int, required=True)
    ap.add_argument("--pg-port", type=int, default=0)
    ap.add_argument("--redis-port", type=int, default=0)
    a = ap.parse_args()
    by_call, by_peer, total = {}, {}, 0
    paths = unix_paths()
    with open(a.trace, errors="replace") as f:
        for line in f:
            m = CALL.match(line)
            if not m or m.group(1) in ("exit", "exit_group"):
                continue
            name, rest = m.group(1), m.group(2)
            # the first argument, descriptor and its annotation
            d = re.match(r"(-?\d+<(?:->|[^>])*>|[^,)]*)", rest)
            peer = classify(d.group(1) if d else "", a, paths)
            total += 1
            by_call[name] = by_call.get(name, 0) + 1
            p = by_peer.setdefault(peer, {})
            p[name] = p.get(name, 0) + 1
    json.dump({"requests": a.requests, "total": total, "by_call": by_call, "by_peer": by_peer},
              sys.stdout, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
