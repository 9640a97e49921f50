#!/usr/bin/env python3
"""sample.py: sample the RSS and CPU time of server process trees once a second.

Usage: sample.py --out FILE.json [--tsv FILE.tsv] [--stats-cmd CMD] [--interval S] [--ready F] ROOTPID...

Each second it walks the process tree under every ROOTPID (master + workers),
sums VmRSS and records each process's utime+stime. With --stats-cmd, the
command's stdout (JSON, e.g. `tenkctl stats --json`) is recorded each second
too. On SIGTERM/SIGINT it writes a JSON summary: peak and end RSS (total and
per process), CPU seconds spent during the sampling window per process, and
the time series. Processes that appear later (respawned workers) are picked up.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def children_map():
    """pid -> list of child pids, from /proc/*/stat."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rfind(")") + 2:].split()
        ppid = int(rest[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(roots):
    kids = children_map()
    out, todo = [], list(roots)
    while todo:
        p = todo.pop()
        if p in out:
            continue
        if os.path.exists("/proc/%d" % p):
            out.append(p)
        todo.extend(kids.get(p, []))
    return out


def proc_info(pid):
    """(comm, rss_bytes, cpu_seconds) or None if gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    comm = s[s.find("(") + 1:s.rfind(")")]
    rest = s[s.rfind(")") + 2:].split()
    utime, stime = int(rest[11]), int(rest[12])
    rss_pages = int(rest[21])
    return comm, rss_pages * PAGE, (utime + stime) / CLK


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tsv")
    ap.add_argument("--stats-cmd")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--ready", help="file created once the first sample is taken")
    ap.add_argument("pids", nargs="+", type=int)
    a = ap.parse_args()

    stop = [False]

    def on_sig(signum, frame):
        stop[0] = True

    signal.signal(signal.SIGTERM, on_sig)
    signal.signal(signal.SIGINT, on_sig)

    t0 = time.monotonic()
    first_cpu, last = {}, {}
    series, stats = [], []
    peak_total, peak_by_pid = 0, {}
    tsv = open(a.tsv, "w") if a.tsv else None
    if tsv:
        tsv.write("t_s\trss_bytes\tcpu_s\tnprocs\n")
    while True:
        now = time.monotonic() - t0
        total_rss, total_cpu = 0, 0.0
        pids = tree(a.pids)
        for p in pids:
            info = proc_info(p)
            if info is None:
                continue
            comm, rss, cpu = info
            # a process that appears after the first sample started during the window (a new
            # database backend, a respawned worker): all of its CPU counts
            first_cpu.setdefault(p, cpu if not series else 0.0)
            last[p] = (comm, rss, cpu)
            peak_by_pid[p] = max(peak_by_pid.get(p, 0), rss)
            total_rss += rss
            total_cpu += cpu - first_cpu[p]
        peak_total = max(peak_total, total_rss)
        series.append([round(now, 2), total_rss, round(total_cpu, 3), len(pids)])
        if tsv:
            tsv.write("%.2f\t%d\t%.3f\t%d\n" % tuple(series[-1]))
            tsv.flush()
        if a.stats_cmd:
            try:
                r = subprocess.run(a.stats_cmd, shell=True, capture_output=True, timeout=2, text=True)
                doc = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None
            except (subprocess.TimeoutExpired, ValueError):
                doc = None
            stats.append({"t_s": round(now, 2), "stats": doc})
        if a.ready and len(series) == 1:
            open(a.ready, "w").close()
        if stop[0]:
            break
        # sleep to the next tick, waking early on a signal
        deadline = t0 + (len(series)) * a.interval
        while not stop[0] and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        if stop[0]:
            # one last sample so "end" is taken at the end of the load
            continue

    procs = []
    for p, (comm, rss, cpu) in sorted(last.items()):
        procs.append({"pid": p, "comm": comm, "rss_end": rss if os.path.exists("/proc/%d" % p) else 0,
                      "rss_peak": peak_by_pid.get(p, 0), "cpu_s": round(cpu - first_cpu[p], 3)})
    doc = {
        "duration_s": round(time.monotonic() - t0, 2),
        "rss_peak": peak_total,
        "rss_end": series[-1][1] if series else 0,
        "cpu_s": round(sum(x["cpu_s"] for x in procs), 3),
        "procs": procs,
        "series": series,
    }
    if a.stats_cmd:
        doc["stats"] = stats
    with open(a.out, "w") as f:
        json.dump(doc, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
