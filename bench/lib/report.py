#!/usr/bin/env python3
"""report.py: turn one scripts/bench results folder into report.md and PNG charts.

Usage: report.py RESULTS_DIR            write RESULTS_DIR/report.md and charts
       report.py --readme RESULTS_ROOT  write RESULTS_ROOT/latest-summary.md (+ latest-*.png)
                                        from the newest full run (newest quick run if none)

Reads RESULTS_DIR/runs.tsv (one line per run, written by scripts/bench), meta.txt and
the raw outputs under raw/. Standard library only; charts are drawn by gnuplot.
"""
import csv
import glob
import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys

HTTP_SERVERS = ("tenk", "tenk-nocache", "nginx", "h2o", "go")
# connection churn runs are recorded as SCENARIO-Nw (N workers)
CHURN_RE = re.compile(r"^(close-100|http10-50|connect-storm)-(\d+)w$")
ERR_KINDS = ("connect", "read", "write", "timeout", "status")

# The figures the issues ask for: (scenario, peer, what, threshold)
TARGETS = [
    ("plaintext-100", "nginx", "rps_ratio", 1.1, "issue 3: >= 1.1x nginx req/s"),
    ("plaintext-2000", "nginx", "rps_ratio", 1.1, "issue 3: >= 1.1x nginx req/s"),
    ("health-100", "nginx", "rps_ratio", 1.1, "issue 3: >= 1.1x nginx req/s"),
    ("health-2000", "nginx", "rps_ratio", 1.1, "issue 3: >= 1.1x nginx req/s"),
    ("plaintext-100", "nginx", "p99_le", 1.0, "issue 3: p99 no worse than nginx"),
    ("plaintext-2000", "nginx", "p99_le", 1.0, "issue 3: p99 no worse than nginx"),
    ("health-100", "nginx", "p99_le", 1.0, "issue 3: p99 no worse than nginx"),
    ("health-2000", "nginx", "p99_le", 1.0, "issue 3: p99 no worse than nginx"),
    ("idle10k", None, "idle_bytes", 1024, "issue 3: <= 1 KiB per idle keep-alive connection"),
    ("users-load", "go", "rps_ratio", 2.5, "issue 6: >= 2.5x the Go server at 2,000 connections"),
    ("users-load", None, "zero_errors", 0, "issue 6: zero errors at 2,000 connections"),
    ("users-load", "go", "p99_le", 0.5, "issue 6: p99 <= half of Go's"),
    ("users-load", "pgbench", "rps_ratio", 0.75, "issue 6: >= 0.75x pgbench"),
    ("users-100", "pgbench", "rps_ratio", 0.75, "issue 6: >= 0.75x pgbench"),
    ("db", "pgbench", "rps_ratio", 1.2, "issue 22: /db >= 1.2x pgbench -M prepared"),
    ("fortunes", "pgbench", "rps_ratio", 1.0, "issue 22: /fortunes >= 1.0x pgbench -M prepared"),
    ("cached20", "redis", "rps_ratio", 0.9, "issue 22: /cached-queries?count=20 >= 0.9x redis-benchmark"),
    ("users-100", "pgbench", "rps_ratio", 1.09, "issue 22: /users no worse than the issue's 1.09x pgbench"),
    ("queries20", "pgbench", "rps_ratio", 2.85, "issue 22: /queries?queries=20 no worse than README's 2.85x pgbench"),
    ("db", None, "zero_errors", 0, "issue 22: errors 0"),
    ("fortunes", None, "zero_errors", 0, "issue 22: errors 0"),
    ("cached20", None, "zero_errors", 0, "issue 22: errors 0"),
    ("close-100-2w", "nginx", "rps_ratio", 1.0, "issue 21: >= 1.0x nginx req/s, a connection per request"),
    ("http10-50-2w", "nginx", "rps_ratio", 1.0, "issue 21: >= 1.0x nginx req/s, a connection per request"),
    ("close-100-2w", "nginx", "p99_le", 1.0, "issue 21: p99 no worse than nginx"),
    ("http10-50-2w", "nginx", "p99_le", 1.0, "issue 21: p99 no worse than nginx"),
]


# ------------------------------------------------------------------ parsing

def read(path):
    """A file's text, or that of PATH.gz (scripts/bench compresses the per-request logs), or ""."""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        pass
    try:
        with gzip.open(path + ".gz", "rt", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def parse_wrk(text):
    m = re.search(r"^BENCHJSON (\{.*\})\s*$", text, re.M)
    if not m:
        m2 = re.search(r"Requests/sec:\s*([\d.]+)", text)
        if not m2:
            return None
        # wrk.lua did not print its summary: wrk's own error lines, so none go uncounted
        errs = dict.fromkeys(ERR_KINDS, 0)
        m3 = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
        if m3:
            errs.update(zip(("connect", "read", "write", "timeout"), map(int, m3.groups())))
        m3 = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        if m3:
            errs["status"] = int(m3.group(1))
        return {"rps": float(m2.group(1)), "errors": errs}
    d = json.loads(m.group(1))
    secs = d["duration_us"] / 1e6 or 1
    pct = d["pct_us"]
    return {
        "rps": d["requests"] / secs,
        "requests": d["requests"],
        "p50": pct["50"] / 1000, "p90": pct["90"] / 1000, "p99": pct["99"] / 1000,
        "p999": pct["99.9"] / 1000, "mean": d["lat_mean_us"] / 1000, "max": d["lat_max_us"] / 1000,
        "errors": {k: d[k] for k in ERR_KINDS},
    }


def parse_ab(text, csvpath):
    """ApacheBench's summary; p50/p99 from its -e file (ms with decimals; the summary's are whole ms)."""
    m = re.search(r"Requests per second:\s*([\d.]+)", text)
    if not m:
        return None
    r = {"rps": float(m.group(1)), "errors": {}}
    m = re.search(r"Complete requests:\s*(\d+)", text)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Failed requests:\s*(\d+)", text)
    if m:
        r["errors"]["failed"] = int(m.group(1))
    m = re.search(r"Non-2xx responses:\s*(\d+)", text)
    if m:
        r["errors"]["status"] = int(m.group(1))
    pc = {}
    for line in read(csvpath).splitlines():
        a, _, b = line.partition(",")
        try:
            pc[int(a)] = float(b)
        except ValueError:
            continue
    for q, k in ((50, "p50"), (90, "p90"), (99, "p99")):
        if q in pc:
            r[k] = pc[q]
    return r


def parse_storm(doc):
    """storm.py's JSON: req/s = answered / time until all were answered."""
    if not isinstance(doc, dict):
        return None
    return {"rps": doc.get("rps"), "requests": doc.get("answered"), "p50": doc.get("p50_ms"),
            "p99": doc.get("p99_ms"), "max": doc.get("max_ms"), "errors": doc.get("errors") or {},
            "all_answered_s": doc.get("all_answered_s"), "elapsed_s": doc.get("elapsed_s")}


def parse_pgbench(text):
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", text)
    if not m:
        return None
    r = {"rps": float(m.group(1)), "errors": {}}
    m = re.search(r"number of transactions actually processed: (\d+)", text)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"latency average = ([\d.]+) ms", text)
    if m:
        r["mean"] = float(m.group(1))
    m = re.search(r"number of failed transactions: (\d+)", text)
    if m:
        r["errors"]["failed"] = int(m.group(1))
    return r


def parse_redis(text):
    rows = list(csv.reader(l for l in text.splitlines() if l.startswith('"')))
    if len(rows) < 2:
        return None
    head, val = rows[0], rows[-1]
    d = dict(zip(head, val))
    r = {"rps": float(d["rps"]), "errors": {}}
    for k, name in (("avg_latency_ms", "mean"), ("p50_latency_ms", "p50"), ("p99_latency_ms", "p99")):
        if k in d:
            r[name] = float(d[k])
    return r


def pctl(sorted_vals, q):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(q / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


def parse_h2load(text, logpath, per_second=False):
    r = {"errors": {}}
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", text)
    failed = timeout = status = 0
    if m:
        total, started, done, ok, failed, errored, timeout = map(int, m.groups())
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        status = int(m.group(3)) + int(m.group(4))
    # h2load's "failed" already counts 4xx/5xx answers and timeouts: split it, don't add it twice
    r["errors"] = {"status": status, "timeout": timeout, "other": max(0, failed - status - timeout)}
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    if m:
        r["rps"] = float(m.group(3))
    durs, starts, statuses = [], [], []
    for line in read(logpath).splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        try:
            starts.append(int(parts[0]))
            statuses.append(int(parts[1]))
            durs.append(int(parts[2]) / 1000.0)
        except ValueError:
            continue
    if durs:
        s = sorted(durs)
        for q, k in ((50, "p50"), (90, "p90"), (99, "p99"), (99.9, "p999")):
            r[k] = pctl(s, q)
        r["max"] = s[-1]
        r["mean"] = sum(s) / len(s)
        span = (max(starts) - min(starts)) / 1e6
        if span > 0:
            r["rps"] = len(durs) / span
    if per_second and durs:
        t0 = min(starts)
        buckets = {}
        # by completion time: bucketing by start would drop the slow requests still in
        # flight at the end and make the last seconds look fast
        for st, code, d in zip(starts, statuses, durs):
            buckets.setdefault(int((st - t0 + d * 1000) // 1000000), []).append(d)
        series = []
        for sec in sorted(buckets):
            v = sorted(buckets[sec])
            series.append((sec, len(v), pctl(v, 50), pctl(v, 99), v[-1]))
        r["series"] = series
    return r


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def flatten(doc, prefix=""):
    """{"a":{"b":1}} -> [("a.b", 1)]; lists indexed."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.extend(flatten(v, prefix + str(k) + "."))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.extend(flatten(v, prefix + str(i) + "."))
    elif isinstance(doc, (int, float)) and not isinstance(doc, bool):
        out.append((prefix[:-1], doc))
    return out


def pick(doc, *names):
    """Sum of numeric leaves whose last key is one of names, preferring a
    top-level/total one: schema-tolerant reading of tenkctl --json."""
    if doc is None:
        return None
    leaves = flatten(doc)
    for n in names:
        # a "total" (or top-level) value wins over summing per-worker values
        tot = [v for p, v in leaves if p.split(".")[-1] == n and (p == n or "total" in p)]
        if tot:
            return tot[0]
        vals = [v for p, v in leaves if p.split(".")[-1] == n]
        if vals:
            return max(vals) if any(w in n for w in ("max", "high", "hwm")) else sum(vals)
    return None


def wait_ms_of(doc):
    """The broker's total queued time in ms, whatever unit tenkctl names it in (shm: wait_ns)."""
    for names, div in ((("wait_ns", "wait_duration_ns"), 1e6), (("wait_us", "wait_duration_us"), 1e3),
                       (("wait_ms", "wait_duration_ms"), 1.0), (("wait_s", "wait_duration_s"), 1e-3)):
        v = pick(doc, *names)
        if v is not None:
            return v / div
    return None


def hist_quantile(hist, q):
    """The upper bound (ms) of the bucket holding quantile q of [(le_us, count), ...] (per-bucket
    counts, bounds ascending, the last may be "+Inf"); None without samples."""
    n = sum(c for _, c in hist)
    if n <= 0:
        return None
    acc = 0
    for le, c in hist:
        acc += c
        if acc >= q * n:
            return float("inf") if le == "+Inf" else le / 1000.0
    return None


def db_run(before, after):
    """The broker's figures for one run from `tenkctl db --json` before and after it: waits (all
    kinds, and those queued inside a worker for a shared pipelined connection), their total and
    mean, p50/p99 from the wait histogram, and the queue high-water marks (since that tenkd
    started, just before the run). Missing fields (an older tenkctl) give None."""
    if not isinstance(after, dict):
        return {}
    b = before if isinstance(before, dict) else {}

    def delta(k):
        a = after.get(k)
        return None if not isinstance(a, (int, float)) else a - (b.get(k) or 0)
    r = {"waits": delta("wait_count"), "waits_local": delta("wait_count_local"),
         "wait_ms": None, "hwm": after.get("waiting_high_water"),
         "hwm_local": after.get("waiting_local_high_water"), "hwm_all": after.get("waiting_all_high_water")}
    if r["waits"] is None:
        r["waits"] = pick(after, "wait_count")
    us = delta("wait_duration_us")
    r["wait_ms"] = us / 1e3 if us is not None else wait_ms_of(after)
    if r["hwm"] is None:
        r["hwm"] = pick(after, "waiting_high_water", "qhwm")
    hb = {str(x.get("le_us")): x.get("count", 0) for x in b.get("wait_histogram", []) if isinstance(x, dict)}
    hist = [(x.get("le_us"), x.get("count", 0) - hb.get(str(x.get("le_us")), 0))
            for x in after.get("wait_histogram", []) if isinstance(x, dict)]
    r["wait_p50"], r["wait_p99"] = hist_quantile(hist, 0.5), hist_quantile(hist, 0.99)
    fin = [le for le, _ in hist if isinstance(le, (int, float))]
    r["wait_last_ms"] = max(fin) / 1000.0 if fin else None
    r["wait_mean"] = r["wait_ms"] / r["waits"] if r["waits"] and r["wait_ms"] is not None else None
    return r


# ------------------------------------------------------------------ loading

def load(resdir):
    meta = {}
    for line in read(os.path.join(resdir, "meta.txt")).splitlines():
        k, _, v = line.partition("=")
        meta[k] = v
    runs = []
    with open(os.path.join(resdir, "runs.tsv")) as f:
        for row in csv.DictReader(f, delimiter="\t"):
            run = dict(row)
            run["round"] = int(run["round"])
            raw = os.path.join(resdir, run["raw"]) if run["raw"] not in ("", "-") else ""
            res = None
            if run["status"] in ("ok", "fail") and raw:
                text = read(raw)
                tool = run["tool"]
                if tool == "wrk":
                    res = parse_wrk(text)
                elif tool == "pgbench":
                    res = parse_pgbench(text)
                    # a pipelined script runs per_tx statements per transaction: count statements
                    m = re.search(r"per_tx=(\d+)", run["note"])
                    if res and m:
                        res["tps"] = res["rps"]
                        res["rps"] *= int(m.group(1))
                        if res.get("requests"):
                            res["requests"] *= int(m.group(1))
                elif tool == "ab":
                    res = parse_ab(text, raw[:-4] + ".csv")
                elif tool == "storm":
                    res = parse_storm(load_json(raw))
                elif tool == "redis-benchmark":
                    res = parse_redis(text)
                elif tool == "h2load":
                    res = parse_h2load(text, raw[:-4] + ".log", per_second=run["scenario"] == "timeseries")
                elif tool == "idle":
                    res = load_json(raw)
                    if res is not None:
                        # idle.py's failures, plus connections the server closed while idle: errors
                        # like any other run's, so they are marked
                        errs = {k: v for k, v in (res.get("failures") or {}).items()}
                        lost = (res.get("answered") or 0) - (res.get("alive_after_hold") or 0)
                        unanswered = (res.get("conns_wanted") or 0) - (res.get("answered") or 0)
                        if lost > 0:
                            errs["dropped"] = lost
                        if unanswered > sum(errs.values()):
                            errs["unanswered"] = unanswered - sum(errs.values())
                        res["errors"] = errs
                elif tool == "strace":
                    res = load_json(raw)
                elif tool in ("perf", "callgrind"):
                    res = {"profile": text}
            if res is None and run["status"] == "ok":
                run["status"] = "fail"
                run["note"] = (run["note"] + "; " if run["note"] else "") + "no result in output"
            run["res"] = res or {}
            if run["sample"] not in ("", "-"):
                run["sample_doc"] = load_json(os.path.join(resdir, run["sample"]))
            runs.append(run)
    return meta, runs


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def errsum(res):
    return sum(v for v in res.get("errors", {}).values() if isinstance(v, (int, float)))


def aggregate(runs):
    """(scenario, server) -> summary over rounds."""
    groups, order = {}, []
    for r in runs:
        key = (r["scenario"], r["server"])
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(r)
    agg = {}
    for key in order:
        rs = groups[key]
        ok = [r for r in rs if r["status"] == "ok"]
        na = [r for r in rs if r["status"] == "na"]
        g = {"runs": rs, "n_ok": len(ok), "na": na[0]["note"] if na and not ok else "",
             "failed": len([r for r in rs if r["status"] == "fail"])}
        rps = [r["res"].get("rps") for r in ok]
        rps = [v for v in rps if v is not None]
        g["rps"] = med(rps)
        g["rps_min"] = min(rps) if rps else None
        g["rps_max"] = max(rps) if rps else None
        for k in ("p50", "p90", "p99", "p999", "mean", "max"):
            g[k] = med([r["res"].get(k) for r in ok])
        errs = {}
        for r in ok:
            for k, v in r["res"].get("errors", {}).items():
                errs[k] = errs.get(k, 0) + v
        g["errors"] = errs
        g["err_runs"] = len([r for r in ok if errsum(r["res"]) > 0])
        samples = [r.get("sample_doc") for r in ok if r.get("sample_doc")]
        g["rss_peak"] = max((s["rss_peak"] for s in samples), default=None)
        g["rss_end"] = med([s["rss_end"] for s in samples])
        g["cpu_s"] = med([s["cpu_s"] for s in samples])
        agg[key] = g
    return agg, order


# ------------------------------------------------------------------ formatting

def f_rps(v):
    if v is None:
        return "–"
    return "%.1fk" % (v / 1000) if v >= 10000 else ("%.2fk" % (v / 1000) if v >= 1000 else "%.0f" % v)


def f_ms(v):
    if v is None:
        return "–"
    return "%.2f ms" % v if v < 10 else ("%.1f ms" % v if v < 100 else "%.0f ms" % v)


def f_mib(v):
    return "–" if v is None else "%.1f MiB" % (v / 1048576.0)


def f_err(errs):
    parts = ["%s %d" % (k, v) for k, v in sorted(errs.items()) if v]
    return ", ".join(parts) if parts else "0"


def rate_cell(g):
    """"12.3k (11.9k–12.8k) req/s", marked **E** when a round had errors and with the rounds that
    gave no result: a figure is never quoted without saying so."""
    c = "%s (%s–%s) req/s" % (f_rps(g["rps"]), f_rps(g["rps_min"]), f_rps(g["rps_max"]))
    if g["err_runs"]:
        c += " **E**"
    if g["failed"]:
        c += " (%d failed)" % g["failed"]
    return c


def server_label(scn, v):
    if v == "tenk-nocache":
        return "tenk (no Redis)"
    if v == "pgbench":
        return "pgbench (DB limit)"
    if v == "pgbench-pipe":
        return "pgbench, 8 per round trip (pipelined DB limit)"
    if v == "redis":
        return "redis-benchmark"
    return v


def md_table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def tenk_key(agg, scn):
    for v in ("tenk", "tenk-nocache"):
        if (scn, v) in agg:
            return (scn, v)
    return None


def ratio(agg, scn, peer, what="rps"):
    tk = tenk_key(agg, scn)
    if not tk or (scn, peer) not in agg:
        return None
    a, b = agg[tk].get(what), agg[(scn, peer)].get(what)
    if not a or not b:
        return None
    return a / b


def paired(agg, scn, peer, what="rps"):
    """tenk ÷ peer within each round (the two ran back to back), over the rounds where both
    gave a result: (median, min, max, n) or None. Slow drift of the shared machine cancels in a
    pair, which the ratio of the medians does not do."""
    tk = tenk_key(agg, scn)
    if not tk or (scn, peer) not in agg:
        return None
    mine = {r["round"]: r["res"].get(what) for r in agg[tk]["runs"] if r["status"] == "ok"}
    theirs = {r["round"]: r["res"].get(what) for r in agg[(scn, peer)]["runs"] if r["status"] == "ok"}
    rs = [mine[k] / theirs[k] for k in mine if k in theirs and mine[k] and theirs[k]]
    if not rs:
        return None
    return statistics.median(rs), min(rs), max(rs), len(rs)


def f_paired(p):
    return "–" if p is None else "%.2f× (%.2f–%.2f, %d pairs)" % p


# ------------------------------------------------------------------ charts

def gnuplot(outdir, name, script, data):
    """Write NAME.dat and NAME.gp under outdir/charts and render NAME.png; True on success."""
    cdir = os.path.join(outdir, "charts")
    os.makedirs(cdir, exist_ok=True)
    dat = os.path.join(cdir, name + ".dat")
    with open(dat, "w") as f:
        f.write(data)
    png = os.path.join(outdir, name + ".png")
    gp = ("set terminal pngcairo size 1000,560 font 'DejaVu Sans,10'\nset output '%s'\n"
          "set datafile separator '\\t'\nset key outside right top\nset grid ytics\n" % png) + \
        script.replace("DATA", "'%s'" % dat)
    with open(os.path.join(cdir, name + ".gp"), "w") as f:
        f.write(gp)
    if not shutil.which("gnuplot"):
        return False
    r = subprocess.run(["gnuplot", os.path.join(cdir, name + ".gp")], capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write("gnuplot %s: %s\n" % (name, r.stderr.strip()[-300:]))
        return False
    return os.path.exists(png)


def bar_chart(outdir, name, title, ylabel, agg, order, field, scale=1.0, logscale=True):
    scns = []
    for scn, _ in order:
        if scn not in scns:
            scns.append(scn)
    servers = []
    for _, v in order:
        if v not in servers and v in HTTP_SERVERS + ("pgbench", "pgbench-pipe", "redis"):
            servers.append(v)
    # gnuplot refuses a histogram column without a single valid point
    servers = [v for v in servers if any(agg.get((scn, v), {}).get(field) for scn in scns)]
    rows = []
    for scn in scns:
        vals = [agg.get((scn, v), {}).get(field) for v in servers]
        if all(x is None for x in vals):
            continue
        rows.append([scn] + ["%.3f" % (x * scale) if x else "NaN" for x in vals])
    if not rows:
        return False
    data = "scenario\t" + "\t".join(server_label("", v) for v in servers) + "\n"
    data += "\n".join("\t".join(r) for r in rows) + "\n"
    script = ("set title '%s'\nset ylabel '%s'\nset style data histograms\nset style histogram clustered gap 1\n"
              "set style fill solid 0.85 border -1\nset boxwidth 0.9\nset xtics rotate by -35 scale 0\n%s"
              "set yrange [%s:*]\nplot " % (title, ylabel, "set logscale y\n" if logscale else "",
                                            "*" if logscale else "0"))
    script += ", ".join("DATA using %d:xtic(1) title columnheader(%d)" % (i + 2, i + 2) for i in range(len(servers)))
    return gnuplot(outdir, name, script + "\n", data)


# ------------------------------------------------------------------ report

def report(resdir):
    meta, runs = load(resdir)
    agg, order = aggregate(runs)
    charts = []
    L = []
    mode = meta.get("mode", "?")
    L.append("# tenk benchmark report — %s (%s mode)" % (meta.get("date", "?"), mode))
    L.append("")
    L.append("Command: `%s` · %s round(s) per server (%s for the engine scenarios against nginx), "
             "alternated A B, B A · %s s per closed-loop run (the /users load test: %s s) · %s workers for "
             "every server"
             % (meta.get("command", "").strip(), meta.get("rounds"),
                meta.get("engine_rounds", meta.get("rounds")), meta.get("dur"), meta.get("load_dur"),
                meta.get("workers")))
    L.append("")
    L.append("Machine: %s cores (%s), %s, Linux %s, load average at start %s · git %s · nginx %s, %s, wrk %s, "
             "PostgreSQL %s." % (meta.get("cores"), meta.get("cpu"), meta.get("mem"), meta.get("kernel"),
                                 meta.get("loadavg"), meta.get("git"), meta.get("nginx"), meta.get("go"),
                                 meta.get("wrk"), meta.get("postgres")))
    L.append("")
    L.append("> Load generator and servers share the same cores on loopback, so absolute numbers are "
             "those of this machine under its load at the time; ratios between servers run in the same "
             "rounds are the figures to compare. %s" % ("A `--quick` run is a smoke test: short runs, "
                                                         "few rounds, noisy." if mode == "quick" else ""))
    L.append("")

    # ---- main table
    L.append("## Throughput and latency (closed loop, wrk)")
    L.append("")
    L.append("Median of the rounds, with min–max; latency percentiles are medians of the per-run "
             "percentiles. **E** marks a server with errors in at least one run (see the runs table). "
             "`pgbench` and `redis-benchmark` rows are the database's and Redis' own limits "
             "(transactions/s or commands/s over 25 / 50 connections).")
    L.append("")
    rows = []
    wrk_like = [k for k in order if k[0] not in ("idle10k", "fixed-rate", "pool-sizing", "timeseries", "cpu")
                and not CHURN_RE.match(k[0]) and not k[0].startswith("cpu-")]
    for key in wrk_like:
        scn, v = key
        g = agg[key]
        if g["na"]:
            rows.append([scn, server_label(scn, v), "*%s*" % g["na"], "", "", "", "", "", ""])
            continue
        rate = "%s (%s–%s)" % (f_rps(g["rps"]), f_rps(g["rps_min"]), f_rps(g["rps_max"]))
        flag = " **E**" if g["err_runs"] else ""
        if g["failed"]:
            flag += " (%d failed)" % g["failed"]
        r = ratio(agg, scn, v) if v not in ("tenk", "tenk-nocache") else None
        rows.append([scn, server_label(scn, v), rate + flag, f_ms(g["p50"]), f_ms(g["p99"]),
                     f_err(g["errors"]), "%s / %s" % (f_mib(g["rss_peak"]), f_mib(g["rss_end"])),
                     "–" if g["cpu_s"] is None else "%.1f" % g["cpu_s"],
                     "%.2f×" % r if r else ""])
    L.append(md_table(["scenario", "server", "req/s median (min–max)", "p50", "p99", "errors (sum)",
                       "RSS peak / end", "CPU s/run", "tenk ÷ this"], rows))
    L.append("")
    scn_user = [s for s, _ in wrk_like]
    if ("user-by-id-cache", "tenk") in agg and ("user-by-id-nocache", "tenk-nocache") in agg:
        a, b = agg[("user-by-id-cache", "tenk")], agg[("user-by-id-nocache", "tenk-nocache")]
        hits = []
        for r in a["runs"]:
            if r["status"] != "ok":
                continue
            base = os.path.join(resdir, r["raw"][:-4])
            b0, b1 = load_json(base + ".stats-before.json"), load_json(base + ".stats-after.json")
            h0, h1 = pick(b0, "cache_hits", "hits"), pick(b1, "cache_hits", "hits")
            m0, m1 = pick(b0, "cache_misses", "misses"), pick(b1, "cache_misses", "misses")
            if None not in (h0, h1, m0, m1) and (h1 - h0) + (m1 - m0) > 0:
                hits.append((h1 - h0) / float((h1 - h0) + (m1 - m0)))
        if hits:
            L.append("Measured cache hit rate (tenkctl stats): %.0f%% (median of rounds)." % (100 * med(hits)))
            L.append("")
        if a["rps"] and b["rps"]:
            L.append("Cache effect on `/users/{id}`: %.2f× the requests/s, mean latency %s → %s "
                     "(ids drawn so that about 80%% hit a warmed key at the start; cold ids warm up during "
                     "the run, so the hit rate drifts upward)." % (a["rps"] / b["rps"], f_ms(b["mean"]), f_ms(a["mean"])))
            L.append("")
    if bar_chart(resdir, "throughput", "requests/s (median)", "req/s (log)", agg, wrk_like, "rps"):
        charts.append(("throughput.png", "Requests/s per scenario and server"))
    if bar_chart(resdir, "latency-p99", "p99 latency (median of runs)", "ms (log)", agg, wrk_like, "p99"):
        charts.append(("latency-p99.png", "p99 latency per scenario and server"))

    # ---- targets
    trows = []
    for scn, peer, what, thr, label in TARGETS:
        tk = tenk_key(agg, scn)
        if not tk or agg[tk]["na"] or not agg[tk]["n_ok"]:
            continue
        val, ok = None, None
        pr = ""
        if what == "rps_ratio":
            val = ratio(agg, scn, peer)
            ok = val is not None and val >= thr
            val = "–" if val is None else "%.2f×" % val
            pr = f_paired(paired(agg, scn, peer))
        elif what == "p99_le":
            r = ratio(agg, scn, peer, "p99")
            ok = r is not None and r <= thr
            val = "–" if r is None else "%.2f× %s's p99" % (r, peer)
            pr = f_paired(paired(agg, scn, peer, "p99"))
        elif what == "zero_errors":
            e = sum(errsum(r["res"]) for r in agg[tk]["runs"] if r["status"] == "ok")
            # a round that gave no result may have failed for errors: never "met" with one
            ok, val = e == 0 and not agg[tk]["failed"], "%d errors" % e
            if agg[tk]["failed"]:
                val += ", %d round(s) failed" % agg[tk]["failed"]
        elif what == "idle_bytes":
            b = med([r["res"].get("bytes_per_conn") for r in agg[tk]["runs"] if r["status"] == "ok"])
            # a server that dropped idle connections would look cheap for the wrong reason
            ok = b is not None and b <= thr and not agg[tk]["err_runs"]
            val = "–" if b is None else "%.0f B" % b + (" (with errors)" if agg[tk]["err_runs"] else "")
        trows.append([label, scn, val, pr, "met" if ok else "**not met**"])
    if trows:
        L.append("## Targets from the issues")
        L.append("")
        L.append("*Measured* is the ratio of the medians, which decides *met*; *paired* is the median "
                 "(min–max) of the ratios within each round, where the two servers ran back to back.")
        L.append("")
        L.append(md_table(["target", "scenario", "measured", "paired", ""], trows))
        L.append("")

    churn_section(L, resdir, agg, order, wrk_like)
    db_cpu_section(L, resdir, agg, wrk_like)

    # ---- idle
    idle = [k for k in order if k[0] == "idle10k"]
    if idle:
        L.append("## Idle keep-alive connections")
        L.append("")
        L.append("Each connection sends one request, reads the answer and stays open and idle; RSS is the sum "
                 "over the server's processes (master and workers), read before and with every connection "
                 "idle.")
        L.append("")
        rows, data = [], "server\tbytes\n"
        for key in idle:
            g = agg[key]
            if g["na"]:
                rows.append([server_label("", key[1]), "*%s*" % g["na"], "", "", "", ""])
                continue
            ok = [r["res"] for r in g["runs"] if r["status"] == "ok"]
            b = med([x.get("bytes_per_conn") for x in ok])
            rows.append([server_label("", key[1]), ("–" if b is None else "%.0f" % b) +
                         (" **E**" if g["err_runs"] else ""),
                         "%s" % med([x.get("answered") for x in ok]),
                         "%s" % med([x.get("alive_after_hold") for x in ok]),
                         f_mib(med([x.get("rss_idle") for x in ok])), f_err(g["errors"])])
            if b is not None:
                data += "%s\t%.1f\n" % (key[1], b)
        L.append(md_table(["server", "bytes per idle connection (median)", "answered", "still open",
                           "RSS with all idle", "errors (sum)"], rows))
        L.append("")
        if data.count("\n") > 1 and gnuplot(resdir, "idle", "set title 'server memory per idle keep-alive "
                                            "connection'\nset ylabel 'bytes'\nset style fill solid 0.8\n"
                                            "set boxwidth 0.6\nset yrange [0:*]\nplot DATA using 0:2:xtic(1) "
                                            "with boxes notitle\n", data):
            charts.append(("idle.png", "Bytes per idle keep-alive connection"))

    # ---- fixed rate
    fixed = [k for k in order if k[0] == "fixed-rate"]
    if fixed:
        L.append("## Fixed rate: 10,000 req/s on /users (h2load --h1 --rps, 500 connections × 20 req/s)")
        L.append("")
        L.append("Latency from each request's scheduled start as h2load logs it; a server that cannot keep "
                 "up shows an achieved rate under the target rather than hiding it in fewer samples.")
        L.append("")
        rows = []
        for key in fixed:
            g = agg[key]
            if g["na"]:
                rows.append([server_label("", key[1]), "*%s*" % g["na"], "", "", "", "", "", ""])
                continue
            rows.append([server_label("", key[1]), f_rps(g["rps"]) + (" **E**" if g["err_runs"] else "") +
                         (" (%d failed)" % g["failed"] if g["failed"] else ""), f_ms(g["p50"]), f_ms(g["p90"]),
                         f_ms(g["p99"]), f_ms(g["p999"]), f_ms(g["max"]), f_err(g["errors"])])
        fixed_ok = [k for k in fixed if agg[k].get("p50")]
        data = "percentile\t" + "\t".join(k[1] for k in fixed_ok) + "\n"
        for q in ("p50", "p90", "p99", "p999"):
            data += q + "\t" + "\t".join("%.3f" % agg[k][q] if agg[k].get(q) else "NaN" for k in fixed_ok) + "\n"
        L.append(md_table(["server", "achieved req/s", "p50", "p90", "p99", "p99.9", "max", "errors"], rows))
        L.append("")
        if fixed_ok and gnuplot(
                resdir, "fixed-rate", "set title 'latency at 10,000 req/s'\nset ylabel 'ms (log)'\n"
                "set logscale y\nset style data histograms\nset style fill solid 0.85 border -1\nplot " +
                ", ".join("DATA using %d:xtic(1) title columnheader(%d)" % (i + 2, i + 2) for i in range(len(fixed_ok)))
                + "\n", data):
            charts.append(("fixed-rate.png", "Latency percentiles at a fixed 10,000 req/s"))

    # ---- pool sizing
    pool = [r for r in runs if r["scenario"] == "pool-sizing"]
    if pool:
        L.append("## Pool sizing: /users at 2,000 connections by db.max_open")
        L.append("")
        L.append("tenkd is restarted at each size. Broker figures from `tenkctl db --json` before and after "
                 "each run (medians over rounds): waits for a connection, all kinds (*local*: queued inside "
                 "a worker for room on one of its shared pipelined connections); mean wait; wait p50/p99 "
                 "as the upper bound of the wait histogram's bucket (4 per octave); queue high-water of "
                 "the broker's FIFO and of the workers' local queues since that tenkd started, just "
                 "before the run.")
        L.append("")
        na = [r for r in pool if r["status"] == "na"]
        if na and len(na) == len(pool):
            L.append("*not available: %s*" % na[0]["note"])
        else:
            rows, data = [], "max_open\treq/s\tp99\n"
            sizes = []
            for r in pool:
                if r["server"] not in sizes:
                    sizes.append(r["server"])
            for sz in sizes:
                g = agg[("pool-sizing", sz)]
                dbs = [db_run(load_json(os.path.join(resdir, r["raw"][:-4] + ".db-before.json")),
                              load_json(os.path.join(resdir, r["raw"][:-4] + ".db-after.json")))
                       for r in g["runs"] if r["status"] == "ok"]

                def m(k):
                    return med([d.get(k) for d in dbs])

                def cnt(v):
                    return "–" if v is None else "%d" % v
                n = sz.split("-")[-1]
                waits = cnt(m("waits"))
                if m("waits_local") is not None:
                    waits += " (%s local)" % cnt(m("waits_local"))
                hw = cnt(m("hwm"))
                if m("hwm_local") is not None:
                    hw += " / %s" % cnt(m("hwm_local"))
                p99w, last = m("wait_p99"), m("wait_last_ms")
                rows.append([n, rate_cell(g), f_ms(g["p50"]), f_ms(g["p99"]), waits, f_ms(m("wait_mean")),
                             f_ms(m("wait_p50")),
                             "> %s" % f_ms(last) if p99w == float("inf") else f_ms(p99w),
                             hw, f_err(g["errors"])])
                if g["rps"]:
                    data += "%s\t%.1f\t%.3f\n" % (n, g["rps"], g["p99"] or 0)
            L.append(md_table(["db.max_open", "req/s median (min–max)", "p50", "p99",
                               "waits for a connection", "mean wait", "wait p50", "wait p99",
                               "queue high-water (broker / in workers)", "errors"], rows))
            if data.count("\n") > 1 and gnuplot(
                    resdir, "pool-sizing", "set title '/users by db.max_open'\nset xlabel 'db.max_open'\n"
                    "set ylabel 'req/s'\nset y2label 'p99 ms'\nset y2tics\nset yrange [0:*]\nset y2range [0:*]\n"
                    "plot DATA using 1:2 with linespoints title 'req/s', DATA using 1:3 axes x1y2 with "
                    "linespoints title 'p99 ms'\n", data):
                charts.append(("pool-sizing.png", "Pool sizing"))
        L.append("")

    # ---- time series
    ts = [r for r in runs if r["scenario"] == "timeseries"]
    if ts:
        r = ts[0]
        L.append("## tenk over time: /users at 2,000 connections (h2load, one sample per second)")
        L.append("")
        if r["status"] != "ok":
            L.append("*%s*" % (r["note"] or "failed"))
        else:
            series = r["res"].get("series", [])
            sdoc = r.get("sample_doc") or {}
            lat = "second\treq/s\tp50\tp99\tmax\n" + "".join("%d\t%d\t%.3f\t%.3f\t%.3f\n" % x for x in series)
            if series and gnuplot(resdir, "ts-latency", "set title 'tenk latency over time'\nset xlabel 's'\n"
                                  "set ylabel 'ms (log)'\nset logscale y\nplot DATA using 1:3 with lines "
                                  "title 'p50', DATA using 1:4 with lines title 'p99', DATA using 1:5 with "
                                  "lines title 'max'\n", lat):
                charts.append(("ts-latency.png", "Latency over time"))
            if series and gnuplot(resdir, "ts-rps", "set title 'tenk requests/s over time'\nset xlabel 's'\n"
                                  "set ylabel 'req/s'\nset yrange [0:*]\nplot DATA using 1:2 with lines "
                                  "title 'completed req/s'\n", lat):
                charts.append(("ts-rps.png", "Requests/s over time"))
            mem = "second\tRSS MiB\tCPU s\n" + "".join("%.1f\t%.2f\t%.2f\n" % (t, rss / 1048576.0, cpu)
                                                        for t, rss, cpu, _ in sdoc.get("series", []))
            if sdoc.get("series") and gnuplot(resdir, "ts-memory", "set title 'tenk memory over time (RSS of "
                                              "all processes)'\nset xlabel 's'\nset ylabel 'MiB'\nset yrange "
                                              "[0:*]\nplot DATA using 1:2 with lines title 'RSS'\n", mem):
                charts.append(("ts-memory.png", "Memory over time"))
            # green threads by state: tenkctl stats --json's threads.by_state (the totals over
            # the live workers, tk_gt_state_name's names); failing that (an older tenkctl), any
            # numeric field whose path mentions threads, added over workers
            thr_rows, names, by_state = [], [], True
            for st in sdoc.get("stats", []):
                doc = st.get("stats")
                if doc is None:
                    continue
                by = (doc.get("threads") or {}).get("by_state") if isinstance(doc, dict) else None
                if isinstance(by, dict) and by:
                    vals = {k: v for k, v in by.items() if isinstance(v, (int, float))}
                else:
                    vals, by_state = {}, False
                    for p, v in flatten(doc):
                        if "thread" in p.lower() and "total" not in p.split(".") \
                                and not p.split(".")[-1].isdigit():
                            leaf = p.split(".")[-1]
                            vals[leaf] = vals.get(leaf, 0) + v
                for k in vals:
                    if k not in names:
                        names.append(k)
                thr_rows.append((st["t_s"], vals))
            # states never seen in the run would only draw lines along zero
            names = [n for n in names if any(v.get(n) for _, v in thr_rows)] or names
            if names:
                cols = names + (["total"] if by_state else [])
                data = "second\t" + "\t".join(cols) + "\n" + "".join(
                    "%.1f\t" % t + "\t".join(str(v.get(n, "NaN")) for n in names) +
                    ("\t%d" % sum(v.values()) if by_state else "") + "\n" for t, v in thr_rows)
                names = cols
                # noenhanced: state names have underscores (wait_db), not subscripts
                if gnuplot(resdir, "ts-threads", "set title 'tenk green threads by state over time (all "
                           "workers)'\nset xlabel 's'\nset key noenhanced\n"
                           "set ylabel 'green threads'\nset yrange [0:*]\nplot " +
                           ", ".join("DATA using 1:%d with lines title columnheader(%d)" % (i + 2, i + 2)
                                     for i in range(len(names))) + "\n", data):
                    charts.append(("ts-threads.png", "Green threads over time"))
            else:
                L.append("Green threads over time: *not available* (`tenkctl stats --json` gave no thread "
                         "counts).")
                L.append("")
            g = r["res"]
            L.append("Whole run: %s req/s, p50 %s, p99 %s, max %s, errors %s; RSS peak %s, end %s; CPU %s s."
                     % (f_rps(g.get("rps")), f_ms(g.get("p50")), f_ms(g.get("p99")), f_ms(g.get("max")),
                        f_err(g.get("errors", {})), f_mib(sdoc.get("rss_peak")), f_mib(sdoc.get("rss_end")),
                        sdoc.get("cpu_s", "–")))
        L.append("")

    # ---- CPU breakdown
    cpu = [r for r in runs if r["scenario"] == "cpu"]
    if cpu:
        r = cpu[0]
        m = re.search(r"path=(\S+)", r["note"])
        L.append("## Where tenk's CPU goes under load (%s)" % (m.group(1) if m else "/users"))
        L.append("")
        if r["status"] != "ok":
            L.append("*%s*" % (r["note"] or "failed"))
        else:
            buckets, top = cpu_buckets(r["res"]["profile"], r["tool"])
            if r["tool"] == "perf":
                how = ("Self time by symbol from `perf record` (%s) on every tenk process, put in buckets by "
                       "symbol and library name; kernel time is split by kernel symbol into network system "
                       "calls, scheduling and the rest." % r["note"])
            else:
                how = ("Instruction counts by function from `valgrind --tool=callgrind` (%s): user space only "
                       "(system calls are not counted), and valgrind serialises the worker, so read it as "
                       "the split of tenk's own work, not of wall time." % r["note"])
            L.append(how)
            L.append("")
            L.append(md_table(["bucket", "share of tenk's CPU"],
                              [[b, "%.1f%%" % v] for b, v in sorted(buckets.items(), key=lambda x: -x[1])]))
            L.append("")
            L.append("Top symbols: " + ", ".join("`%s` %.1f%%" % (s, v) for s, v in top[:12]))
        L.append("")

    breakdown_section(L, resdir, runs)

    # ---- every run
    L.append("## Every run")
    L.append("")
    rows = []
    for r in runs:
        res = r["res"]
        e = errsum(res)
        sd = r.get("sample_doc") or {}
        cpu = "–"
        if sd.get("procs"):
            # per process: master first, workers after (pid order), e.g. "1.93 = 0.01 + 0.95 + 0.97"
            per = [x["cpu_s"] for x in sd["procs"]]
            cpu = "%.2f" % sd["cpu_s"] + (" = " + " + ".join("%.2f" % x for x in per) if len(per) > 1 else "")
        rows.append([r["scenario"], server_label(r["scenario"], r["server"]), r["round"], r["tool"],
                     r["status"] + (" **E**" if e else ""), f_rps(res.get("rps")), f_ms(res.get("p99")),
                     f_err(res.get("errors", {})), cpu,
                     "–" if not sd else "%s / %s" % (f_mib(sd.get("rss_peak")), f_mib(sd.get("rss_end"))),
                     "" if r["raw"] in ("", "-") else "[raw](%s)" % r["raw"], r["note"]])
    L.append(md_table(["scenario", "server", "round", "tool", "status", "req/s", "p99", "errors",
                       "CPU s (per process)", "RSS peak / end", "output", "note"], rows))
    L.append("")
    pgb = read(os.path.join(resdir, "pgbouncer.md"))
    if pgb:  # scenario pgbouncer-db: its own table (bench/lib/pgbouncer_ab.py)
        L.append("## /db direct against /db through PgBouncer (pgbouncer-db)")
        L.append("")
        L.append(pgb)
    rep = read(os.path.join(resdir, "replicas.md"))
    if rep:  # scenario replicas: bench/lib/replicas.py's output, its table at the end
        L.append("## /users and /db with 0, 1 and 2 read replicas (replicas)")
        L.append("")
        L.append(rep)
    if charts:
        L.append("## Charts")
        L.append("")
        for f, t in charts:
            L.append("![%s](%s)" % (t, f))
            L.append("")
    with open(os.path.join(resdir, "report.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    with open(os.path.join(resdir, "summary.json"), "w") as f:
        json.dump({"meta": meta, "charts": charts,
                   "agg": {"%s|%s" % k: {kk: vv for kk, vv in g.items() if kk != "runs"}
                           for k, g in agg.items()}}, f, indent=1)
    return 0


def worker_counts(doc, field):
    """[per-worker connections.FIELD] from `tenkctl stats --json`, by slot; None if absent."""
    ws = (doc or {}).get("workers") if isinstance(doc, dict) else None
    if not isinstance(ws, list):
        return None
    out = []
    for w in sorted(ws, key=lambda w: w.get("slot", 0)):
        c = w.get("connections") or {}
        if field not in c:
            return None
        out.append(c[field])
    return out


def accept_shares(resdir, run):
    """Each tenk worker's share of the connections accepted during a run (stats before/after)."""
    base = os.path.join(resdir, run["raw"].rsplit(".", 1)[0])
    b = worker_counts(load_json(base + ".stats-before.json"), "accepted")
    a = worker_counts(load_json(base + ".stats-after.json"), "accepted")
    if not a or not b or len(a) != len(b):
        return None
    d = [x - y for x, y in zip(a, b)]
    tot = sum(d)
    return [x / float(tot) for x in d] if tot > 0 else None


def cpu_us_per_req(run):
    sd, n = run.get("sample_doc") or {}, run["res"].get("requests")
    if sd.get("cpu_s") is None or not n:
        return None
    return sd["cpu_s"] * 1e6 / n


READS = ("read", "readv", "recvfrom", "recvmsg", "recvmmsg")
WRITES = ("write", "writev", "sendto", "sendmsg", "sendmmsg")


def breakdown_section(L, resdir, runs):
    """The cpu-* scenarios (scripts/bench run_breakdown): perf buckets, tenk's and PostgreSQL's
    CPU per request, and strace's system calls per request by peer."""
    scns = []
    for r in runs:
        if r["scenario"].startswith("cpu-") and r["scenario"] not in scns:
            scns.append(r["scenario"])
    for scn in scns:
        rs = [r for r in runs if r["scenario"] == scn]
        pr = next((r for r in rs if r["tool"] == "perf"), None)
        sr = next((r for r in rs if r["tool"] == "strace"), None)
        note = (pr or sr or rs[0])["note"]
        m = re.search(r"path=(\S+?),", note + ",")
        L.append("## Per request: %s" % (m.group(1) if m else scn))
        L.append("")
        if pr and pr["status"] == "ok":
            w = re.search(r"wrk=(\S+)", pr["note"])
            wres = parse_wrk(read(os.path.join(resdir, w.group(1)))) if w else None
            n = (wres or {}).get("requests")
            sd = pr.get("sample_doc") or {}
            pg = load_json(os.path.join(resdir, pr["raw"][:-4] + ".pg.json"))
            if n and sd.get("cpu_s") is not None:
                t = sd["cpu_s"] * 1e6 / n
                line = "Under `wrk -t2 -c256` for the whole profiled run: %s req/s, p99 %s, errors %s; " \
                       "tenk's CPU %.1f µs per request" % (f_rps(wres.get("rps")), f_ms(wres.get("p99")),
                                                        f_err(wres.get("errors", {})), t)
                if pg and pg.get("cpu_s") is not None:
                    p = pg["cpu_s"] * 1e6 / n
                    line += ", PostgreSQL's %.1f µs (tenk %.0f%% of the two)" % (p, 100 * t / (t + p))
                L.append(line + ".")
                L.append("")
            buckets, top = cpu_buckets(pr["res"]["profile"], "perf")
            L.append("Self time by bucket (`perf record`, %s):" % pr["note"].split(", wrk=")[0])
            L.append("")
            L.append(md_table(["bucket", "share of tenk's CPU"] + (["µs per request"] if n and sd.get("cpu_s") else []),
                              [[b, "%.1f%%" % v] + (["%.2f" % (v / 100 * sd["cpu_s"] * 1e6 / n)] if n and sd.get("cpu_s") else [])
                               for b, v in sorted(buckets.items(), key=lambda x: -x[1])]))
            L.append("")
            L.append("Top symbols: " + ", ".join("`%s` %.1f%%" % (s_, v) for s_, v in top[:15]))
            L.append("")
        elif pr:
            L.append("perf: *%s*" % pr["note"])
            L.append("")
        if sr and sr["status"] == "ok":
            doc = load_json(os.path.join(resdir, sr["raw"])) or {}
            n = doc.get("requests") or 0
            if not n:
                L.append("strace: *no request was answered while the workers were traced (%s)*" % sr["note"])
                L.append("")
            if n:
                rows = []
                for peer in ("client", "postgres", "redis", "event loop", "other"):
                    c = doc.get("by_peer", {}).get(peer)
                    if not c:
                        continue
                    rd = sum(v for k, v in c.items() if k in READS)
                    wr = sum(v for k, v in c.items() if k in WRITES)
                    rest = sum(c.values()) - rd - wr
                    restd = ", ".join("%s %.3f" % (k, v / n) for k, v in sorted(c.items(), key=lambda x: -x[1])
                                      if k not in READS + WRITES)
                    rows.append([peer, "%.3f" % (rd / n), "%.3f" % (wr / n), "%.3f" % (rest / n), restd])
                rows.append(["all", "", "", "", "%.2f calls per request (%d calls, %d requests)"
                             % (doc["total"] / n, doc["total"], n)])
                L.append("System calls of the workers per request (`strace -f -yy` over a %s; strace slows "
                         "every call, so the batches to the database are larger than without it):"
                         % sr["note"].split(", wrk=")[0].replace("path=", "run of "))
                L.append("")
                L.append(md_table(["peer", "reads", "writes", "other calls", "which"], rows))
                L.append("")
        elif sr:
            L.append("strace: *%s*" % sr["note"])
            L.append("")


def db_cpu_section(L, resdir, agg, wrk_like):
    """CPU per request of the server and of PostgreSQL (raw/TAG.pg.json, the postmaster's tree
    sampled during the run) in the database scenarios: on two shared cores, the side that spends
    more per request sets the pace."""
    rows = []
    for key in wrk_like:
        g = agg[key]
        t, p = [], []
        for r in g["runs"]:
            if r["status"] != "ok" or r["raw"] in ("", "-"):
                continue
            pg = load_json(os.path.join(resdir, r["raw"][:-4] + ".pg.json"))
            n = r["res"].get("requests")
            if not pg or not n:
                continue
            p.append(pg["cpu_s"] * 1e6 / n)
            t.append(cpu_us_per_req(r))
        if not p:
            continue
        tm, pm = med(t), med(p)
        share = "–" if tm is None else "%.0f%% / %.0f%%" % (100 * tm / (tm + pm), 100 * pm / (tm + pm))
        rows.append([key[0], server_label(key[0], key[1]), f_rps(g["rps"]),
                     "–" if tm is None else "%.1f" % tm, "%.1f" % pm, share])
    if not rows:
        return
    L.append("## CPU per request: the server and PostgreSQL")
    L.append("")
    L.append("Medians over the rounds of CPU time (utime + stime from /proc) ÷ requests answered (pgbench: "
             "statements). *PostgreSQL* is the postmaster's whole tree (backends, WAL writer, ...); "
             "backends that start during a run count from their start, and a backend's last second "
             "before it exits may be missed (pgbench's rows). The load generator's CPU is not counted.")
    L.append("")
    L.append(md_table(["scenario", "server", "req/s", "server CPU µs/req", "PostgreSQL CPU µs/req",
                       "server / PostgreSQL share"], rows))
    L.append("")


def churn_section(L, resdir, agg, order, wrk_like):
    """Connection churn rows (SCENARIO-Nw), and beside them how tenk spread the keep-alive
    scenarios' long-lived connections over its workers."""
    keys = [k for k in order if CHURN_RE.match(k[0])]
    if not keys:
        return
    L.append("## Connection churn: a new connection per request")
    L.append("")
    L.append("`close-100`: wrk with `Connection: close`, 100 connections; `http10-50`: ab (HTTP/1.0, no "
             "keep-alive), 50 concurrent; `connect-storm`: 10,000 connections opened at once by "
             "`bench/lib/storm.py`, one request each (req/s = 10,000 ÷ the time until all were "
             "answered, latency from the connect). Every server restarted at each worker count (h2o: "
             "threads, Go: GOMAXPROCS). *CPU µs/req*: the server's CPU time (all processes) ÷ the "
             "requests answered, median of rounds. *Largest worker share*: tenk's busiest worker's "
             "share of the accepted connections (tenkctl counters; 50% is even with 2 workers).")
    L.append("")
    rows = []
    for key in keys:
        scn, v = key
        g = agg[key]
        m = CHURN_RE.match(scn)
        if g["na"]:
            rows.append([m.group(1), m.group(2), server_label(scn, v), "*%s*" % g["na"], "", "", "", "", "", ""])
            continue
        ok = [r for r in g["runs"] if r["status"] == "ok"]
        cpu = med([cpu_us_per_req(r) for r in ok])
        share = ""
        if v == "tenk":
            sh = [accept_shares(resdir, r) for r in ok]
            sh = [max(x) for x in sh if x]
            if sh:
                share = "%.0f%% (max %.0f%%)" % (100 * med(sh), 100 * max(sh))
        extra = ""
        if m.group(1) == "connect-storm":
            t = med([r["res"].get("all_answered_s") for r in ok])
            extra = "" if t is None else " · all in %.2f s" % t
        pp = paired(agg, scn, "nginx") if v == "tenk" else None
        rows.append([m.group(1), m.group(2), server_label(scn, v), rate_cell(g) + extra, f_ms(g["p50"]),
                     f_ms(g["p99"]), f_err(g["errors"]), "–" if cpu is None else "%.1f" % cpu, share,
                     f_paired(pp) if pp else ""])
    L.append(md_table(["scenario", "workers", "server", "req/s median (min–max)", "p50", "p99", "errors (sum)",
                       "CPU µs/req", "largest worker share", "tenk ÷ nginx, paired"], rows))
    L.append("")
    rows = []
    for scn, v in wrk_like:
        if v != "tenk":
            continue
        spreads = []
        for r in agg[(scn, v)]["runs"]:
            if r["status"] != "ok" or r["raw"] in ("", "-"):
                continue
            c = worker_counts(load_json(os.path.join(resdir, r["raw"][:-4] + ".stats-mid.json")), "open")
            if c:
                spreads.append("/".join(str(x) for x in c))
        if spreads:
            rows.append([scn, ", ".join(spreads)])
    if rows:
        L.append("Beside it, the load-aware accept's purpose: tenk's open connections per worker half-way "
                 "through each keep-alive round (worker 0/worker 1/…; `tenkctl stats --json`).")
        L.append("")
        L.append(md_table(["keep-alive scenario", "open connections per worker, each round"], rows))
        L.append("")


# Kernel symbols: scheduling, else network/system-call path, else "kernel, other".
KERNEL_RULES = [
    ("scheduler and switches", r"schedule|switch|pick_next|dequeue_task|enqueue_task|try_to_wake_up|"
     r"futex|update_curr|update_load|idle|tick|hrtimer"),
    ("network system calls", r"tcp|ip_|ipv4|inet|sock|sk_|skb|net|loopback|napi|softirq|epoll|ep_|syscall|"
     r"__sys_|xfrm|bbr|eth_|backlog|bh_|"
     r"SYSCALL|copy_user|copyout|copyin|_copy_|iov|__x64_sys|ksys_|vfs_|fdget|fput|rw_verify|spin|"
     r"irqentry|entry_|__fsnotify|security_|apparmor|nf_|dev_|__wake_up|raw_"),
]

# User-space: first matching rule wins; (bucket, regex on "dso symbol")
CPU_RULES = [
    ("results (PGresult build, read, free)", r"pqRowProcessor|pqAddTuple|pqResultAlloc|PQclear|PQmakeEmptyPGresult|"
     r"pqResultStrdup|PQgetvalue|PQntuples|PQgetlength|getRowDescriptions|getAnotherTuple|PQcopyResult|"
     r"pqClearAsyncResult|PQsetResultAttrs|pqPrepareAsyncResult|PQresultStatus|tk_db_rows"),
    ("libpq", r"libpq|\bPQ|\bpq[A-Z]|pqsecure|pg_"),
    ("hiredis", r"hiredis|\bredis[A-Z]|\bsds[a-zA-Z]|__redis|tk_cache"),
    ("JSON and HTML output", r"cJSON|json|tk_http_buf|vfprintf|printf|_IO_|html_escape|write_worlds|"
     r"h_fortunes|cmp_fortune|msort|qsort|_itoa|tk_fmt"),
    ("HTTP parsing", r"tk_http_pars|http_parser|tk_http_req|tk_uri|tk_query|/uri\.c:"),
    ("scheduler and switches", r"tk_sched|tk_coro|coro_switch|tk_wait|event_base|evmap|epoll_dispatch|"
     r"libevent|/sched\.c:|/coro[_a-z0-9]*\.[cS]:|"
     r"event_process|event_active|\b__schedule|\bschedule\b|finish_task_switch|pick_next|__switch_to|"
     r"futex|swapgs|dequeue_task|enqueue_task|try_to_wake_up"),
    ("network system calls", r"__libc_(read|write|recv|send)|writev|readv|\bread\b|\bwrite\b|recv|send|"
     r"epoll_wait|accept4|__vdso|syscall"),
    ("handler", r"tk_handler|tk_users|tk_tfb|tk_health|handlers|tk_http_respond|tk_router|tk_http_"),
    ("allocator and libc", r"libc\.so|malloc|free|memcpy|memmove|memset|strlen|ld-linux"),
]


def cpu_buckets(text, tool):
    rows = []
    if tool == "perf":
        # "    12.34%  tenkd   [.] tk_http_parse"  (--sort dso,sym)
        for line in text.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*\S)", line)
            if m:
                dso, kind, sym = m.group(2), m.group(3), m.group(4)
                if kind == "k":
                    dso = "[kernel] " + dso
                rows.append((float(m.group(1)), dso, sym))
    else:
        # callgrind_annotate: "  1,234,567 (12.34%)  file:function [obj]"
        total = 0
        for line in text.splitlines():
            m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*\S)", line)
            if m and "PROGRAM TOTALS" not in line and not m.group(2).startswith(("=>", "<")):
                n = int(m.group(1).replace(",", ""))
                rest = m.group(2)
                obj = re.search(r"\[(.*)\]\s*$", rest)
                short = re.sub(r"\s*\[.*\]\s*$", "", rest).split("/")[-1]
                rows.append((n, obj.group(1) if obj else "", rest, short))
                total += n
        rows = [(n * 100.0 / total, d, s, sh) for n, d, s, sh in rows] if total else []
    if tool == "perf":
        # an unresolved address says little without its library
        rows = [(p, d, s, "%s:%s" % (os.path.basename(d.split()[-1]), s) if s.startswith("0x") else s)
                for p, d, s in rows]
    buckets, top = {}, []
    for pct, dso, sym, short in rows:
        name = "%s %s" % (dso, sym)
        b = "other"
        rules = CPU_RULES
        if dso.startswith("[kernel"):
            b, rules = "kernel, other", KERNEL_RULES
        for bucket, rx in rules:
            if re.search(rx, name):
                b = bucket
                break
        buckets[b] = buckets.get(b, 0) + pct
        top.append((short[:60], pct))
    top.sort(key=lambda x: -x[1])
    tot = sum(buckets.values()) or 1
    return {k: v * 100.0 / tot for k, v in buckets.items()}, top


# ------------------------------------------------------------------ README summary

def readme(root):
    dirs = sorted(d for d in glob.glob(os.path.join(root, "2*")) if os.path.exists(os.path.join(d, "report.md")))
    if not dirs:
        sys.stderr.write("no report under %s: run scripts/bench first\n" % root)
        return 1
    # prefer a full run of every scenario, then any full run, then whatever is newest
    metas = {d: read(os.path.join(d, "meta.txt")) for d in dirs}
    full_all = [d for d in dirs if "mode=full" in metas[d] and "selection=all" in metas[d]]
    full = [d for d in dirs if "mode=full" in metas[d]]
    chosen = (full_all or full or dirs)[-1]
    if not full_all:
        sys.stderr.write("warning: no full run of every scenario yet: summarising %s (%s)\n"
                         % (os.path.basename(chosen), "full, some scenarios" if full else "quick"))
    meta, runs = load(chosen)
    agg, order = aggregate(runs)
    L = ["## Performance", ""]
    L.append("Measured by `%s` on %s: %s cores (%s), %s, Linux %s, tenk and its peers on loopback with "
             "%s workers each, %s round(s) per server (%s for the engine scenarios), alternated; %s. Full report: `bench/results/%s/report.md`; how to "
             "read it: [bench/README.md](bench/README.md)."
             % (meta.get("command", "").strip(), meta.get("date"), meta.get("cores"), meta.get("cpu"),
                meta.get("mem"), meta.get("kernel"), meta.get("workers"), meta.get("rounds"),
                meta.get("engine_rounds", meta.get("rounds")),
                "a quick smoke run, short and noisy" if meta.get("mode") != "full"
                else "the load generator shares the cores, so read ratios rather than absolutes",
                os.path.basename(chosen)))
    L.append("")
    rows = []
    seen = []
    marked = False
    for scn, v in order:
        if scn in seen or scn in ("pool-sizing", "timeseries", "cpu"):
            continue
        seen.append(scn)
        tk = tenk_key(agg, scn)
        peers = [p for s2, p in order if s2 == scn and p not in ("tenk", "tenk-nocache")]
        if scn == "idle10k":
            cells = []
            for p in [x for s2, x in order if s2 == scn]:
                b = med([r["res"].get("bytes_per_conn") for r in agg[(scn, p)]["runs"] if r["status"] == "ok"])
                cells.append("%s %s%s" % (p, "–" if b is None else "%.0f B" % b,
                                          " **E**" if agg[(scn, p)]["err_runs"] else ""))
                marked = marked or agg[(scn, p)]["err_runs"] > 0
            rows.append([scn, "bytes per idle connection: " + ", ".join(cells), "", ""])
            continue
        t = agg.get(tk) if tk else None
        tk_cell = "n/a" if not t or not t["rps"] else "%s, p99 %s" % (rate_cell(t), f_ms(t["p99"]))
        peer_cells, ratio_cells, pair_cells = [], [], []
        for p in peers:
            g = agg[(scn, p)]
            if g["rps"]:
                peer_cells.append("%s %s" % (server_label(scn, p), rate_cell(g)))
                rr = ratio(agg, scn, p)
                if rr:
                    ratio_cells.append("%.2f× %s" % (rr, p))
                pp = paired(agg, scn, p)
                if pp and p == "nginx":
                    pair_cells.append("%.2f× (%.2f–%.2f)" % pp[:3])
        rows.append([scn, tk_cell, ", ".join(peer_cells) or "–", ", ".join(ratio_cells) or "–",
                     ", ".join(pair_cells) or ""])
        marked = marked or "**E**" in tk_cell + "".join(peer_cells) or "failed" in tk_cell + "".join(peer_cells)
    L.append(md_table(["scenario", "tenk: req/s median (min–max)", "peers: req/s median (min–max)",
                       "tenk ÷ peer (medians)", "÷ nginx, paired rounds"], rows))
    L.append("")
    if marked:
        L.append("**E**: errors (connect, read, write, timeout or non-2xx answers) in at least one round "
                 "of that server; *N failed*: rounds without a result, left out of the median. The full "
                 "report's *Every run* table has each round.")
        L.append("")
    s = load_json(os.path.join(chosen, "summary.json")) or {}
    want = ["throughput.png", "ts-latency.png", "idle.png", "latency-p99.png"]
    have = [c for c in s.get("charts", []) if c[0] in want]
    have.sort(key=lambda c: want.index(c[0]))
    for f, title in have[:3]:
        dst = os.path.join(root, "latest-" + f)
        shutil.copyfile(os.path.join(chosen, f), dst)
        L.append("![%s](bench/results/latest-%s)" % (title, f))
        L.append("")
    out = os.path.join(root, "latest-summary.md")
    with open(out, "w") as f:
        f.write("\n".join(L) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--readme":
        sys.exit(readme(sys.argv[2]))
    if len(sys.argv) != 2:
        sys.stderr.write(__doc__)
        sys.exit(2)
    sys.exit(report(sys.argv[1]))
