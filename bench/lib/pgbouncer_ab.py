#!/usr/bin/env python3
"""pgbouncer_ab.py: /db direct against /db through PgBouncer, in the same run.

Usage: TENK_DB=... TENK_DB_PGBOUNCER=... pgbouncer_ab.py [ROUNDS [SECONDS [OUTDIR]]]
Three tenkd run at once on the same binary (TENKD, default build/release/tenkd; BENCH_WORKERS
workers each, default 2; no Redis): "direct" on TENK_DB with the default db.statements =
prepared (declared reads pipelined), "direct-unnamed" on TENK_DB with db.statements = unnamed (one query per round trip: what
the mode costs without the extra hop), and "pgbouncer" on TENK_DB_PGBOUNCER with unnamed.
After a warm-up of each, ROUNDS rounds (default 3) of wrk -t2 -c PGB_CONNS (256) --latency
for SECONDS (10) on PGB_PATH (/db), each server first in turn. For each run: req/s, p99 latency, non-2xx,
and CPU microseconds per request from /proc/PID/stat (utime+stime) of the tenkd process tree,
of PgBouncer (TK_VAR/run/pgbouncer.pid) and of PostgreSQL's process tree (its backends
included; TK_VAR/pg/postmaster.pid). Prints a Markdown table (medians, and the paired
pgbouncer/direct req/s ratio of each round) and writes it, with wrk's outputs, to OUTDIR."""
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from proccpu import free_port, proc_table, tree_cpu

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
SECS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
OUTDIR = sys.argv[3] if len(sys.argv) > 3 else None
SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VAR = os.environ.get("TENK_VAR_DIR") or os.path.join(SRC, "var")
TENKD = os.environ.get("TENKD") or os.path.join(SRC, "build", "release", "tenkd")
PATH = os.environ.get("PGB_PATH", "/db")
CONNS = int(os.environ.get("PGB_CONNS", "256"))
WORKERS = os.environ.get("BENCH_WORKERS", "2")








def pid_from(path):
    with open(path) as f:
        return int(f.readline().strip())


def start(name, db, statements):
    port = free_port()
    conf = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
    conf.write("[db]\nstatements = %s\n" % statements)
    conf.close()
    log = open(os.path.join(OUTDIR or tempfile.gettempdir(), "pgbouncer-ab-%s.log" % name), "w")
    p = subprocess.Popen([TENKD, "-c", conf.name, "--foreground", "--name", "%s%d" % (name, os.getpid()),
                          "--listen", "127.0.0.1:%d" % port, "--workers", WORKERS, "--admin", "", "--db", db],
                         stdout=log, stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return p, port
        except OSError:
            if p.poll() is not None:
                sys.exit("tenkd (%s) exited: see %s" % (name, log.name))
            time.sleep(0.05)
    sys.exit("tenkd (%s) did not start" % name)


def to_ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port, secs):
    out = subprocess.run(["wrk", "-t2", "-c%d" % CONNS, "-d%ds" % secs, "--timeout", "5s", "--latency",
                          "http://127.0.0.1:%d%s" % (port, PATH)], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    n = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    err = re.search(r"Socket errors: (.*)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    return {"rps": rps, "n": n, "bad": int(bad.group(1)) if bad else 0, "sockerr": err.group(1) if err else "",
            "p99": to_ms(*p99.groups()) if p99 else float("nan"), "out": out}


def main():
    db = os.environ["TENK_DB"]
    pgb = os.environ.get("TENK_DB_PGBOUNCER")
    if not pgb:
        sys.exit("TENK_DB_PGBOUNCER not set: scripts/devenv pgbouncer, then . var/devenv.env")
    if OUTDIR:
        os.makedirs(OUTDIR, exist_ok=True)
    pgb_pid = pid_from(os.path.join(VAR, "run", "pgbouncer.pid"))
    pg_pid = pid_from(os.path.join(VAR, "pg", "postmaster.pid"))
    load0 = open("/proc/loadavg").read().split()[:3]
    servers = {"direct": start("pgbdirect", db, "prepared"), "direct-unnamed": start("pgbunnamed", db, "unnamed"),
               "pgbouncer": start("pgbvia", pgb, "unnamed")}
    runs = {k: [] for k in servers}
    try:
        for k in servers:  # warm-up: connections opened, statements prepared
            wrk(servers[k][1], 2)
        for r in range(ROUNDS):
            names = list(servers)
            order = names[r % 3:] + names[:r % 3]  # each server first in turn
            for k in order:
                p, port = servers[k]
                t0 = proc_table()
                res = wrk(port, SECS)
                t1 = proc_table()
                n = max(res["n"], 1)
                res["tenkd_us"] = (tree_cpu(p.pid, t1) - tree_cpu(p.pid, t0)) / n * 1e6
                res["pgbouncer_us"] = (tree_cpu(pgb_pid, t1) - tree_cpu(pgb_pid, t0)) / n * 1e6
                res["postgres_us"] = (tree_cpu(pg_pid, t1) - tree_cpu(pg_pid, t0)) / n * 1e6
                runs[k].append(res)
                if OUTDIR:
                    with open(os.path.join(OUTDIR, "db-pgbouncer.%s.r%d.txt" % (k, r + 1)), "w") as f:
                        f.write(res["out"])
                print("round %d %-9s %8.0f req/s  p99 %7.1f ms  CPU/req tenkd %6.1f us, pgbouncer %6.1f us, "
                      "postgres %6.1f us  non-2xx %d %s" % (r + 1, k, res["rps"], res["p99"], res["tenkd_us"],
                                                           res["pgbouncer_us"], res["postgres_us"], res["bad"],
                                                           res["sockerr"]), flush=True)
    finally:
        for p, _ in servers.values():
            p.send_signal(signal.SIGTERM)
        for p, _ in servers.values():
            p.wait(timeout=15)
    load1 = open("/proc/loadavg").read().split()[:3]
    med = lambda k, f: statistics.median(x[f] for x in runs[k])
    pairs = [b["rps"] / a["rps"] for a, b in zip(runs["direct"], runs["pgbouncer"])]
    lines = ["| `%s`, %d connections, %d workers | req/s | p99 | tenkd CPU/req | PgBouncer CPU/req | PostgreSQL CPU/req | all three | non-2xx |"
             % (PATH, CONNS, int(WORKERS)),
             "|---|---|---|---|---|---|---|---|"]
    for k, label in (("direct", "direct, `db.statements = prepared` (pipelined)"),
                     ("direct-unnamed", "direct, `unnamed` (one query per round trip)"),
                     ("pgbouncer", "through PgBouncer, `unnamed`")):
        tot = med(k, "tenkd_us") + med(k, "pgbouncer_us") + med(k, "postgres_us")
        lines.append("| %s | %.0f | %.1f ms | %.1f µs | %.1f µs | %.1f µs | %.1f µs | %d |"
                     % (label, med(k, "rps"), med(k, "p99"), med(k, "tenkd_us"), med(k, "pgbouncer_us"),
                        med(k, "postgres_us"), tot, sum(x["bad"] for x in runs[k])))
    lines.append("")
    lines.append("Medians of %d rounds of %d s, alternated; pgbouncer/direct req/s per round: %s (median %.2f). "
                 "Load average %s before, %s after." % (ROUNDS, SECS, ", ".join("%.2f" % x for x in pairs),
                                                       statistics.median(pairs), " ".join(load0), " ".join(load1)))
    text = "\n".join(lines) + "\n"
    print(text)
    if OUTDIR:
        with open(os.path.join(OUTDIR, "pgbouncer.md"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
