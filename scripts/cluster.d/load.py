#!/usr/bin/python3
"""load.py: scripts/cluster's steady, bounded load and its report (run inside the tk-client
namespace; the only target is the cluster's HAProxy address given on the command line).

  load.py run URL SECONDS RATE CONNS WRITE_PCT OUT   keep-alive connections, paced to RATE
        requests/s in all: GET /users/{id} (reads through the Redis cache), PUT /users/{id}
        (writes: an UPDATE on the primary and a cache invalidation) for WRITE_PCT percent; one
        line per request to OUT: wall-clock time, r|w, status (0 = no answer), latency in ms.
  load.py report OUT [NAME=EPOCH ...]   the numbers of one run, times relative to the events.
"""
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse


def run(url, secs, rate, conns, write_pct, out):
    u = urllib.parse.urlsplit(url)
    host, port = u.hostname, u.port or 80
    end = time.time() + secs
    lines, lock = [], threading.Lock()
    per = rate / conns

    def worker(seed):
        rnd = random.Random(seed)
        c = None
        nxt = time.time() + rnd.random() / per
        while True:
            now = time.time()
            if now >= end:
                break
            if now < nxt:
                time.sleep(min(nxt - now, end - now))
                continue
            nxt += 1.0 / per
            if nxt < now - 1.0:
                nxt = now  # behind by a second: do not burst to catch up
            uid = rnd.randint(1, 10000)
            write = rnd.random() * 100 < write_pct
            t0 = time.time()
            st = 0
            try:
                if c is None:
                    c = http.client.HTTPConnection(host, port, timeout=5)
                if write:
                    body = json.dumps({"name": "User %d v%d" % (uid, rnd.randint(0, 1 << 30)),
                                       "email": "user%d@example.com" % uid})
                    c.request("PUT", "/users/%d" % uid, body, {"Content-Type": "application/json"})
                else:
                    c.request("GET", "/users/%d" % uid)
                r = c.getresponse()
                r.read()
                st = r.status
                if (r.getheader("Connection") or "").lower() == "close":
                    c.close()
                    c = None
            except (OSError, http.client.HTTPException):
                if c is not None:
                    c.close()
                c = None
            with lock:
                lines.append("%.4f %s %d %.2f\n" % (t0, "w" if write else "r", st, (time.time() - t0) * 1e3))
        if c is not None:
            c.close()

    ths = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conns)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(secs + 30)
    with open(out, "w") as f:
        f.writelines(sorted(lines))


def pct(v, p):
    if not v:
        return 0.0
    v = sorted(v)
    return v[min(len(v) - 1, int(p / 100.0 * len(v)))]


def report(out, events):
    rows = []
    with open(out) as f:
        for line in f:
            t, k, st, lat = line.split()
            rows.append((float(t), k, int(st), float(lat)))
    ev = {}
    for e in events:
        name, ts = e.split("=", 1)
        ev[name] = float(ts)
    t0 = ev.get("inject", rows[0][0] if rows else 0.0)
    bad = lambda st: st == 0 or st >= 500
    res = {"requests": len(rows),
           "ok": sum(1 for r in rows if 200 <= r[2] < 300),
           "5xx": sum(1 for r in rows if r[2] >= 500),
           "503": sum(1 for r in rows if r[2] == 503),
           "no_answer": sum(1 for r in rows if r[2] == 0),
           "other": sum(1 for r in rows if 300 <= r[2] < 500),
           "reads_failed": sum(1 for r in rows if r[1] == "r" and bad(r[2])),
           "writes_failed": sum(1 for r in rows if r[1] == "w" and bad(r[2])),
           "p50_ms": round(pct([r[3] for r in rows], 50), 2),
           "p99_ms": round(pct([r[3] for r in rows], 99), 2)}
    fails = [r[0] for r in rows if bad(r[2])]
    if fails:
        res["first_failure_s"] = round(min(fails) - t0, 3)
        res["last_failure_s"] = round(max(fails) - t0, 3)
    if "promote" in ev:
        p = ev["promote"]
        wf = [r[0] for r in rows if r[1] == "w" and bad(r[2])]
        after = [r[0] for r in rows if r[1] == "w" and 200 <= r[2] < 300 and r[0] > (max(wf) if wf else p)]
        res["writes_back_after_promote_s"] = round((min(after) if after else float("nan")) - p, 3)
        res["last_write_failure_after_promote_s"] = round((max(wf) - p) if wf else 0.0, 3)
    for name, ts in ev.items():
        res["event_" + name + "_s"] = round(ts - t0, 3)
    print(json.dumps(res, sort_keys=True))


if __name__ == "__main__":
    if len(sys.argv) >= 8 and sys.argv[1] == "run":
        run(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]),
            sys.argv[7])
    elif len(sys.argv) >= 3 and sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3:])
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)
