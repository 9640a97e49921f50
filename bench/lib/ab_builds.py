#!/usr/bin/env python3
"""ab_builds.py: the same run, two tenkd builds side by side (a change against the build before it).

Usage: TENK_DB=... ab_builds.py OLD_TENKD NEW_TENKD [ROUNDS] [SECONDS]
Both servers run at the same time (2 workers each, the devenv's database, Redis only when
AB_REDIS=host:port is set); each scenario (AB_PATHS, default "/plaintext /db /users/1"; keep-alive,
wrk -t1 -c64, AB_CONNS connections) runs a warm-up,
then ROUNDS rounds alternating old-new / new-old. Prints per scenario the medians, the paired
new/old ratio (median and range of the rounds) and each server's CPU microseconds per request
(utime+stime of its process tree), which is steadier than req/s on a shared machine; with
AB_PG_PID=<postmaster pid>, PostgreSQL's CPU per request too (its backends are the postmaster's
children; only one server is loaded at a time, so the database's CPU is that server's)."""
import os, re, signal, socket, statistics, subprocess, sys, time

OLD, NEW = sys.argv[1], sys.argv[2]
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 4
SECS = int(sys.argv[4]) if len(sys.argv) > 4 else 4
DB = os.environ["TENK_DB"]
HZ = os.sysconf("SC_CLK_TCK")
PG = int(os.environ.get("AB_PG_PID", "0"))


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def tree_cpu(pid):
    tot = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            st = open("/proc/%s/stat" % d).read()
        except OSError:
            continue
        f = st[st.rindex(")") + 2:].split()
        if int(d) == pid or int(f[1]) == pid:
            tot += int(f[11]) + int(f[12])
    return tot / HZ


def start(binary, name):
    port = free_port()
    p = subprocess.Popen([binary, "--foreground", "--name", name, "--listen", "127.0.0.1:%d" % port,
                          "--workers", "2", "--admin", "", "--db", DB] +
                         (["--redis", os.environ["AB_REDIS"]] if os.environ.get("AB_REDIS") else []),
                         stdout=subprocess.DEVNULL, stderr=open("/tmp/ab-%s.log" % name, "w"))
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return p, port


def wrk(port, path):
    out = subprocess.run(["wrk", "-t1", "-c%s" % os.environ.get("AB_CONNS", "64"), "-d%ds" % SECS, "http://127.0.0.1:%d%s" % (port, path)],
                         capture_output=True, text=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return float(m.group(1)), int(n.group(1)), int(bad.group(1)) if bad else 0


servers = {"old": start(OLD, "abold%d" % os.getpid()), "new": start(NEW, "abnew%d" % os.getpid())}
try:
    for path in os.environ.get("AB_PATHS", "/plaintext /db /users/1").split():
        for k in servers:  # warm-up
            wrk(servers[k][1], path)
        res = {"old": [], "new": []}
        cpu = {"old": [], "new": []}
        pgcpu = {"old": [], "new": []}
        for r in range(ROUNDS):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for k in order:
                p, port = servers[k]
                c0 = tree_cpu(p.pid)
                g0 = tree_cpu(PG) if PG else 0
                rps, n, bad = wrk(port, path)
                c1 = tree_cpu(p.pid)
                g1 = tree_cpu(PG) if PG else 0
                res[k].append(rps)
                cpu[k].append((c1 - c0) / max(n, 1) * 1e6)
                pgcpu[k].append((g1 - g0) / max(n, 1) * 1e6)
                if bad:
                    print("  %s %s: %d non-2xx" % (k, path, bad))
        pairs = [n / o for n, o in zip(res["new"], res["old"])]
        print("%-10s old %8.0f  new %8.0f req/s (medians)  new/old paired median %.3f (%.3f-%.3f)  "
              "CPU/req old %.1f new %.1f us" % (path, statistics.median(res["old"]), statistics.median(res["new"]),
                                                statistics.median(pairs), min(pairs), max(pairs),
                                                statistics.median(cpu["old"]), statistics.median(cpu["new"])) +
              ("  PostgreSQL CPU/req old %.1f new %.1f us" % (statistics.median(pgcpu["old"]),
                                                              statistics.median(pgcpu["new"])) if PG else ""),
              flush=True)
finally:
    for p, _ in servers.values():
        p.send_signal(signal.SIGTERM)
    for p, _ in servers.values():
        p.wait(timeout=10)
