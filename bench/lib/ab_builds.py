#!/usr/bin/env python3
"""ab_builds.py: the same run, two tenkd builds side by side (a change against the build before it).

Usage: TENK_DB=... ab_builds.py [options] OLD_TENKD NEW_TENKD [ROUNDS] [SECONDS]

Both servers run at the same time (WORKERS workers each, the devenv's database, no Redis); each
scenario runs a warm-up on each, then ROUNDS rounds alternating old-new / new-old, so that
neither build always runs second. A scenario is one of
  /PATH or ka:/PATH[:CONNS]   keep-alive, wrk -t1 -cCONNS (64)
  close:/PATH[:CONNS]         a connection per request, wrk -t2 with Connection: close (100)
  http10:/PATH[:CONNS]        a connection per request, ab over HTTP/1.0 (50 concurrent)
  storm:/PATH[:CONNS]         CONNS connections opened at once, one request each (storm.py, 10000)
(default: AB_PATHS, else "/plaintext /db /users/1"). Prints per scenario the medians of req/s
and p99, the paired new/old ratio (median and range of the rounds) and each server's CPU
microseconds per request (utime+stime of its process tree, from /proc), which is steadier than
req/s on a shared machine; and the load average before and after.
Environment: AB_CONNS (keep-alive connections, 64), AB_REDIS=host:port (give both a Redis),
AB_PG_PID=<postmaster pid> (PostgreSQL's CPU per request too: its backends are the postmaster's
children, and one server is loaded at a time, so the database's CPU is that server's)."""
import argparse, json, os, re, signal, socket, statistics, subprocess, sys, tempfile, time
from proccpu import free_port, loadavg, tree_cpu

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONNS = {"ka": int(os.environ.get("AB_CONNS", "64")), "close": 100, "http10": 50, "storm": 10000}
PG = int(os.environ.get("AB_PG_PID", "0"))  # the postmaster: PostgreSQL's CPU per request too


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("rounds", nargs="?", type=int, default=4)
    ap.add_argument("seconds", nargs="?", type=int, default=4)
    ap.add_argument("--scenario", "-s", action="append", default=[], help="repeatable; see above")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--old-label", default="old")
    ap.add_argument("--new-label", default="new")
    ap.add_argument("--json", help="write every round's figures here")
    ap.add_argument("--logdir", default=tempfile.gettempdir(), help="the servers' stderr go here")
    a = ap.parse_args()
    if not a.scenario:
        a.scenario = os.environ.get("AB_PATHS", "/plaintext /db /users/1").split()
    return a


def parse_spec(spec):
    kind, rest = ("ka", spec) if spec.startswith("/") else spec.split(":", 1)
    if kind not in DEFAULT_CONNS:
        sys.exit("ab_builds.py: unknown scenario kind %r in %r" % (kind, spec))
    path, _, conns = rest.partition(":")
    return kind, path, int(conns) if conns else DEFAULT_CONNS[kind]








def start(binary, name, workers, logdir):
    port = free_port()
    args = [binary, "--foreground", "--name", name, "--listen", "127.0.0.1:%d" % port,
            "--workers", str(workers), "--admin", ""]
    if os.environ.get("TENK_DB"):
        args += ["--db", os.environ["TENK_DB"]]
    if os.environ.get("AB_REDIS"):
        args += ["--redis", os.environ["AB_REDIS"]]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(os.path.join(logdir, "ab-%s.log" % name), "w"))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if p.poll() is not None:
            sys.exit("ab_builds.py: %s exited at start (see %s/ab-%s.log)" % (binary, logdir, name))
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    sys.exit("ab_builds.py: %s did not listen within 15 s" % binary)


def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(port, path, conns, secs, close):
    args = ["wrk", "-t%d" % (2 if close else 1), "-c%d" % conns, "-d%ds" % secs, "--timeout", "2s", "--latency"]
    if close:
        args += ["-H", "Connection: close"]
    out = subprocess.run(args + ["http://127.0.0.1:%d%s" % (port, path)], capture_output=True, text=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    p99 = re.search(r"\s99%\s+([\d.]+)(us|ms|s)\b", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    if not m or not n:
        return None
    return {"rps": float(m.group(1)), "n": int(n.group(1)), "p99_ms": ms(*p99.groups()) if p99 else None,
            "errors": errs + (int(bad.group(1)) if bad else 0)}


def run_ab(port, path, conns, secs):
    with tempfile.NamedTemporaryFile("r", suffix=".csv") as csv:
        out = subprocess.run(["timeout", str(secs + 30), "ab", "-q", "-r", "-s", "2", "-c", str(conns), "-t", str(secs),
                              "-n", "100000000", "-e", csv.name, "http://127.0.0.1:%d%s" % (port, path)],
                             capture_output=True, text=True).stdout
        p99 = None
        for line in csv.read().splitlines():
            f = line.split(",")
            if f[0] == "99":
                p99 = float(f[1])
    m = re.search(r"Requests per second:\s+([\d.]+)", out)
    n = re.search(r"Complete requests:\s+(\d+)", out)
    if not m or not n:
        return None
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    non2 = re.search(r"Non-2xx responses:\s+(\d+)", out)
    return {"rps": float(m.group(1)), "n": int(n.group(1)), "p99_ms": p99,
            "errors": (int(failed.group(1)) if failed else 0) + (int(non2.group(1)) if non2 else 0)}


def run_storm(port, path, conns):
    out = subprocess.run(["timeout", "60", sys.executable, os.path.join(HERE, "storm.py"), "--port", str(port),
                          "--conns", str(conns), "--path", path, "--timeout", "30"], capture_output=True, text=True).stdout
    try:
        d = json.loads(out)
    except ValueError:
        return None
    time.sleep(1)  # let the server reap the closed connections before the other's round
    return {"rps": d["rps"], "n": d["answered"], "p99_ms": d.get("p99_ms"),
            "errors": sum((d.get("errors") or {}).values())}


def run(kind, port, path, conns, secs):
    if kind == "ka":
        return run_wrk(port, path, conns, secs, False)
    if kind == "close":
        return run_wrk(port, path, conns, secs, True)
    if kind == "http10":
        return run_ab(port, path, conns, secs)
    return run_storm(port, path, conns)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def main():
    a = parse_args()
    specs = [parse_spec(s) for s in a.scenario]
    tag = os.getpid()
    servers = {"old": start(a.old, "abold%d" % tag, a.workers, a.logdir),
               "new": start(a.new, "abnew%d" % tag, a.workers, a.logdir)}
    label = {"old": a.old_label, "new": a.new_label}
    doc = {"old": a.old, "new": a.new, "workers": a.workers, "rounds": a.rounds, "seconds": a.seconds,
           "loadavg_start": loadavg(), "scenarios": []}
    print("%s = %s\n%s = %s\n%d workers each, %d rounds of %d s, alternated; load average %s" %
          (label["old"], a.old, label["new"], a.new, a.workers, a.rounds, a.seconds, doc["loadavg_start"]), flush=True)
    try:
        for (kind, path, conns), spec in zip(specs, a.scenario):
            for k in servers:  # warm-up: stacks, buffers, database connections
                run(kind, servers[k][1], path, conns, min(a.seconds, 2))
            rounds = {"old": [], "new": []}
            for r in range(a.rounds):
                for k in (("old", "new") if r % 2 == 0 else ("new", "old")):
                    p, port = servers[k]
                    c0, g0 = tree_cpu(p.pid), tree_cpu(PG) if PG else 0
                    res = run(kind, port, path, conns, a.seconds)
                    c1, g1 = tree_cpu(p.pid), tree_cpu(PG) if PG else 0
                    if res is None:
                        print("  %s %s round %d: the load tool gave no figures" % (label[k], spec, r + 1), flush=True)
                        continue
                    res["cpu_us"] = (c1 - c0) / max(res["n"], 1) * 1e6
                    res["pg_cpu_us"] = (g1 - g0) / max(res["n"], 1) * 1e6 if PG else None
                    res["round"] = r + 1
                    rounds[k].append(res)
            byround = {k: {x["round"]: x for x in rounds[k]} for k in rounds}
            pairs = [byround["new"][r]["rps"] / byround["old"][r]["rps"]
                     for r in byround["old"] if r in byround["new"] and byround["old"][r]["rps"] > 0]
            s = {"scenario": "%s:%s:%d" % (kind, path, conns), "rounds": rounds, "pairs": pairs}
            for k in ("old", "new"):
                s[k] = {"rps": med(x["rps"] for x in rounds[k]), "p99_ms": med(x["p99_ms"] for x in rounds[k]),
                        "cpu_us": med(x["cpu_us"] for x in rounds[k]), "errors": sum(x["errors"] for x in rounds[k]),
                        "pg_cpu_us": med(x["pg_cpu_us"] for x in rounds[k])}
            s["ratio"] = statistics.median(pairs) if pairs else float("nan")
            doc["scenarios"].append(s)
            print("%-24s %s %8.0f  %s %8.0f req/s  %s/%s paired %.3f (%s)  p99 %.2f / %.2f ms  "
                  "CPU/req %.1f / %.1f us  errors %d / %d" %
                  (s["scenario"], label["old"], s["old"]["rps"], label["new"], s["new"]["rps"], label["new"], label["old"],
                   s["ratio"], " ".join("%.2f" % x for x in pairs), s["old"]["p99_ms"], s["new"]["p99_ms"],
                   s["old"]["cpu_us"], s["new"]["cpu_us"], s["old"]["errors"], s["new"]["errors"]) +
                  ("  PostgreSQL CPU/req %.1f / %.1f us" % (s["old"]["pg_cpu_us"], s["new"]["pg_cpu_us"]) if PG else ""),
                  flush=True)
    finally:
        for p, _ in servers.values():
            p.send_signal(signal.SIGTERM)
        for p, _ in servers.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    doc["loadavg_end"] = loadavg()
    print("load average at the end %s" % doc["loadavg_end"], flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
