#!/usr/bin/env python3
"""replicas.py: /users and /db with 0, 1 and 2 read replicas (issue #17), on one machine.

Usage: replicas.py [ROUNDS] [SECONDS]   (after scripts/devenv up --replicas 2; reads var/devenv.env
or TENK_VAR_DIR's)
Three tenkd (2 workers each, no Redis, db.primary the devenv's multi-host primary) with 0, 1
and 2 db.replica lines run side by side; each path (REPLICA_PATHS, default "/users?limit=10
/db"; wrk -t1 -c32, keep-alive) is loaded on one server at a time, ROUNDS rounds with the order
rotated. Every server shares the same two cores, so this measures the cost of routing, not
scaling. Per server and path: requests/s (median), tenkd CPU per request (utime+stime of its
process tree), PostgreSQL CPU per request (every node's process tree), and where the queries
went (each node's own pg_stat_statements calls of the path's statement) and the connections
(tenkctl db --json, open per backend, at the end of the load)."""
import json, os, re, socket, statistics, subprocess, sys, time
from proccpu import free_port, tree_cpu

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VAR = os.environ.get("TENK_VAR_DIR") or os.path.join(SRC, "var")
BUILD = os.environ.get("TENK_BUILD", os.path.join(SRC, "build", "release"))
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
SECS = int(sys.argv[2]) if len(sys.argv) > 2 else 4
PATHS = os.environ.get("REPLICA_PATHS", "/users?limit=10 /db").split()
STMT = {"/users": "SELECT id, name, email FROM users WHERE id > $1",
        "/db": "SELECT id, randomnumber FROM world WHERE id = $1"}


def env_file():
    out = {}
    for line in open(os.path.join(VAR, "devenv.env")):
        m = re.match(r"^([A-Z0-9_]+)='(.*)'$", line.strip())
        if m:
            out[m.group(1)] = m.group(2)
    return out






def pg_pids():
    out = [int(open(os.path.join(VAR, "pg", "postmaster.pid")).readline())]
    for k in (1, 2):
        out.append(int(open(os.path.join(VAR, "pg-replica-%d" % k, "postmaster.pid")).readline()))
    return out


def calls(conninfo, prefix):
    ci = re.sub(r"\buser=\S+", "user=postgres", conninfo)
    r = subprocess.run(["psql", "-X", "-At", ci, "-c", "select coalesce(sum(calls),0) from "
                        "pg_stat_statements where starts_with(query, '%s')" % prefix],
                       capture_output=True, text=True, timeout=30)
    return int(r.stdout.strip() or 0)


def start(n, e, reps):
    port = free_port()
    name = "bench-rep%d-%d" % (n, os.getpid())
    args = [os.path.join(BUILD, "tenkd"), "--foreground", "--name", name, "--listen",
            "127.0.0.1:%d" % port, "--workers", "2", "--admin", "", "--db",
            e["TENK_DB_PRIMARY_MULTI"]]
    for r in reps[:n]:
        args += ["--db-replica", r]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                         stderr=open("/tmp/bench-replicas-%d.log" % n, "w"))
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return p, port, name


def wrk(port, path):
    r = subprocess.run(["wrk", "-t1", "-c32", "-d%ds" % SECS, "http://127.0.0.1:%d%s" % (port, path)],
                       capture_output=True, text=True, timeout=SECS + 30)
    req = int(re.search(r"(\d+) requests in", r.stdout).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", r.stdout)
    return req, int(non2xx.group(1)) if non2xx else 0


def main():
    e = env_file()
    nodes = [e["TENK_DB"], e["TENK_DB_REPLICA_1"], e["TENK_DB_REPLICA_2"]]
    servers = [start(n, e, nodes[1:]) for n in (0, 1, 2)]
    time.sleep(1.5)  # the probe's first rounds (health unknown -> ok)
    pgs = pg_pids()
    res = {}  # (n, path) -> list of dicts
    try:
        for path in PATHS:
            for n, (p, port, _) in enumerate(servers):
                wrk_warm = subprocess.run(["wrk", "-t1", "-c32", "-d1s", "http://127.0.0.1:%d%s"
                                           % (port, path)], capture_output=True, timeout=30)
                del wrk_warm
        for rnd in range(ROUNDS):
            for path in PATHS:
                prefix = STMT[path.split("?")[0]]
                order = [(rnd + k) % 3 for k in range(3)]
                for n in order:
                    p, port, name = servers[n]
                    c0 = [calls(c, prefix) for c in nodes]
                    t0, g0 = tree_cpu(p.pid), [tree_cpu(x) for x in pgs]
                    req, bad = wrk(port, path)
                    t1, g1 = tree_cpu(p.pid), [tree_cpu(x) for x in pgs]
                    c1 = [calls(c, prefix) for c in nodes]
                    ctl = subprocess.run([os.path.join(BUILD, "tenkctl"), "-n", name, "--json",
                                          "db"], capture_output=True, text=True, timeout=20)
                    be = json.loads(ctl.stdout).get("backends", [])
                    res.setdefault((n, path), []).append({
                        "rps": req / SECS, "bad": bad,
                        "tenk_us": (t1 - t0) / req * 1e6,
                        "pg_us": (sum(g1) - sum(g0)) / req * 1e6,
                        "calls": [b - a for a, b in zip(c0, c1)],
                        "open": [b.get("open", 0) for b in be]})
    finally:
        for p, _, _ in servers:
            p.terminate()
        for p, _, _ in servers:
            p.wait(15)
    print("load average at the end: %s" % open("/proc/loadavg").read().split()[:3])
    print("| path | replicas | req/s (median) | tenkd CPU us/req | PostgreSQL CPU us/req | "
          "queries: primary / r1 / r2 | connections open: primary / r1 / r2 | non-2xx |")
    print("|---|---|---|---|---|---|---|---|")
    for path in PATHS:
        for n in (0, 1, 2):
            rs = res[(n, path)]
            q = [sum(r["calls"][i] for r in rs) for i in range(3)]
            tot = sum(q) or 1
            op = rs[-1]["open"] + [0] * (3 - len(rs[-1]["open"]))
            print("| `%s` | %d | %.0f | %.0f (%.0f-%.0f) | %.0f | %s | %s | %d |" % (
                path, n, statistics.median(r["rps"] for r in rs),
                statistics.median(r["tenk_us"] for r in rs), min(r["tenk_us"] for r in rs),
                max(r["tenk_us"] for r in rs), statistics.median(r["pg_us"] for r in rs),
                " / ".join("%d%%" % round(100 * x / tot) for x in q),
                " / ".join(str(x) for x in op[:3]), sum(r["bad"] for r in rs)))


if __name__ == "__main__":
    main()
