"""GET /dashboard: a self-contained page, loaded in headless Debian Chromium (playwright-core) while a
load runs: no console errors, nothing fetched from elsewhere, its numbers move, a screenshot is kept."""
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

from tenkharness import (SRCDIR, TENK_DB, Reader, Tenkd as _Tenkd, build_request, free_port, skip,
                         wait_until)

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
NODE_DIR = os.path.join(SRCDIR, "var", "test-node")
ARTIFACTS = os.path.join(SRCDIR, "var", "test-artifacts")
PLAYWRIGHT = "playwright-core@1.65.1"
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
TOKEN = "dash-token-51"


def Tenkd(**kw):
    t = _Tenkd(**kw)
    while t.admin_port is not None and t.admin_port == t.port:
        t.admin_port = free_port()
    return t


def _chromium_runs():
    """Skip (only) when Chromium truly cannot run here."""
    if not os.access(CHROMIUM, os.X_OK):
        skip("%s not installed (apt-get install chromium)" % CHROMIUM)
    prof = tempfile.mkdtemp(prefix="tenk-chromium-")
    try:
        r = subprocess.run([CHROMIUM] + CHROME_ARGS + ["--user-data-dir=" + prof, "--dump-dom",
                                                       "data:text/html,<p>ok</p>"],
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        skip("chromium cannot run: %s" % e)
    finally:
        shutil.rmtree(prof, ignore_errors=True)
    if "<p>ok</p>" not in r.stdout:
        skip("chromium cannot run (rc %d): %s" % (r.returncode, r.stderr[-500:]))


def _playwright():
    """node_modules with playwright-core under var/ (installed at run time, never committed);
    None when node/npm can't provide it."""
    mod = os.path.join(NODE_DIR, "node_modules", "playwright-core")
    if os.path.isdir(mod):
        return os.path.join(NODE_DIR, "node_modules")
    if not shutil.which("node") or not shutil.which("npm"):
        return None
    os.makedirs(NODE_DIR, exist_ok=True)
    r = subprocess.run(["npm", "install", "--prefix", NODE_DIR, "--no-audit", "--no-fund", "--silent",
                        PLAYWRIGHT], capture_output=True, text=True, timeout=300)
    return os.path.join(NODE_DIR, "node_modules") if r.returncode == 0 and os.path.isdir(mod) else None


class Load:
    """Keep-alive GETs from a few threads until stopped; a slice of 404s and (with a database) /db."""

    def __init__(self, t, threads=3):
        self.t, self.stop_ev, self.sent, self.errors = t, threading.Event(), [0], []
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]

    def run(self, k):
        try:
            s = self.t.connect()
            rd = Reader(s)
            i = 0
            while not self.stop_ev.is_set():
                i += 1
                path = "/db" if (TENK_DB and i % 10 == 0) else "/nope" if i % 25 == 0 else "/plaintext"
                s.sendall(build_request("GET", path))
                st, h, _ = rd.response()
                # /db may fail while another test locks or restarts the shared database
                assert path == "/db" or st in (200, 404), (path, st)
                self.sent[0] += 1
                if h.get("connection", "").lower() == "close":  # limits.max_requests_per_conn
                    s.close()
                    s = self.t.connect()
                    rd = Reader(s)
                if i % 50 == 0:
                    time.sleep(0.005)  # leave the CPU to the browser now and then (2 shared cores)
            s.close()
        except Exception as e:  # reported by stop()
            self.errors.append(e)

    def __enter__(self):
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        for th in self.threads:
            th.join(10)
        assert not self.errors, self.errors


def test_dashboard_is_self_contained():
    with Tenkd(workers=1, admin=True, db="", redis="", conf="[admin]\ntoken = %s\n" % TOKEN) as t:
        # the page holds no data: served without the token; its data source is not
        st, h, body = t.request("GET", "/dashboard", port=t.admin_port)
        assert st == 200 and h["content-type"].startswith("text/html"), (st, h)
        assert t.request("GET", "/debug/stats", port=t.admin_port)[0] == 401
        html = body.decode()
        assert "<canvas" in html and "/debug/stats" in html
        # nothing from the network: no external URL, no src/href to another origin
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "external asset"
        assert not re.search(r"\burl\(\s*['\"]?(https?:)?//", html)
        assert not re.search(r"@import", html)
        csp = h.get("content-security-policy", "")
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp, csp
        # served from the binary: the same bytes as the source file
        with open(os.path.join(SRCDIR, "handlers", "dashboard.html"), "rb") as f:
            assert f.read() == body
        assert t.request("GET", "/dashboard")[0] == 404  # not on the public listener


def test_dashboard_live_in_headless_chromium():
    _chromium_runs()
    modules = None if os.environ.get("TENK_DASHBOARD_NO_NODE") else _playwright()
    os.makedirs(ARTIFACTS, exist_ok=True)
    shot = os.path.join(ARTIFACTS, "dashboard.png")
    if os.path.exists(shot):
        os.unlink(shot)
    with Tenkd(workers=2, admin=True, conf="[admin]\ntoken = %s\n" % TOKEN) as t:
        url = "http://127.0.0.1:%d/dashboard#token=%s" % (t.admin_port, TOKEN)
        with Load(t) as load:
            if modules:
                seen = _run_playwright(modules, url, shot)
            else:
                seen = _run_dump_dom(url, shot)
            assert load.sent[0] > 100, load.sent
        frames = seen["frames"]
        assert seen["status"] == 200
        assert not seen["consoleErrors"], seen["consoleErrors"]
        assert not seen["pageErrors"], seen["pageErrors"]
        assert not seen["offOrigin"], "fetched from elsewhere: %s" % seen["offOrigin"]
        assert not seen["failed"], seen["failed"]
        last = frames[-1]
        assert last["failures"] == 0 and last["samples"] >= 3, last
        assert last["status"].startswith("updated"), last["status"]
        # the total grows frame after frame while the load runs
        totals = [int(f["tiles"]["requests"]["text"]) for f in frames if f["tiles"]["requests"]["text"].isdigit()]
        assert len(totals) >= 3 and totals == sorted(totals) and totals[-1] > totals[0], totals
        rps = [f["tiles"]["rps"]["text"] for f in frames]
        assert len(set(rps)) > 1, rps
        assert any(float(x.rstrip("kM")) > 0 for x in rps if x not in ("–",)), rps
        # latency percentiles of the last second, with a threshold grade
        p99 = [f["tiles"]["p99"] for f in frames if f["tiles"]["p99"]["text"] != "–"]
        assert p99 and p99[-1]["grade"] in ("good", "warn", "bad"), p99
        lat = [v for f in frames for k, v in f["charts"].items() if k.startswith("Latency")]
        assert any("p99.9" in x and "p99.9 –" not in x for x in lat), lat
        # green threads, CPU per worker, memory, pool and workers are all drawn
        assert last["tiles"]["threads"]["text"].isdigit()
        gt = [v for k, v in last["charts"].items() if k.startswith("Green threads")][0]
        assert all(st in gt for st in ("running", "runnable", "wait_net", "wait_db", "wait_broker")), gt
        cpu = [v for k, v in last["charts"].items() if k.startswith("CPU")][0]
        assert "w" in cpu and cpu.count("%") == 2, cpu  # one line per worker
        assert last["tiles"]["mem"]["text"].endswith("MiB")
        assert last["tiles"]["workers"]["text"].startswith("2 live"), last["tiles"]["workers"]
        if TENK_DB:
            assert last["tiles"]["dbwait"]["grade"] in ("good", "warn", "bad")
            assert "of" in last["tiles"]["dbuse"]["text"]
        # the screenshot is the test's artefact
        with open(shot, "rb") as f:
            png = f.read()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000, len(png)


def _run_playwright(modules, url, shot):
    script = os.path.join(SRCDIR, "tests", "integration", "browser", "dashboard.js")
    env = dict(os.environ, NODE_PATH=modules, CHROMIUM=CHROMIUM)
    r = subprocess.run(["node", script, url, shot, "6"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, "dashboard.js failed:\n%s%s" % (r.stdout, r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def _run_dump_dom(url, shot):
    """Without node: Chromium's own --dump-dom, several times with a virtual-time budget, console
    messages from its log. Reads the tiles back out of the DOM."""
    frames, console = [], []
    for i in range(3):
        prof = tempfile.mkdtemp(prefix="tenk-chromium-")
        try:
            r = subprocess.run([CHROMIUM] + CHROME_ARGS + [
                "--user-data-dir=" + prof, "--enable-logging=stderr", "--v=0",
                "--virtual-time-budget=%d" % (4000 + 1000 * i), "--dump-dom", url],
                capture_output=True, text=True, timeout=120)
            if i == 2:
                subprocess.run([CHROMIUM] + CHROME_ARGS + ["--user-data-dir=" + prof,
                               "--virtual-time-budget=4000", "--window-size=1400,1000",
                               "--screenshot=" + shot, url], capture_output=True, timeout=120)
        finally:
            shutil.rmtree(prof, ignore_errors=True)
        console += [x for x in r.stderr.splitlines() if "CONSOLE" in x and ("Error" in x or "error" in x)]
        dom = r.stdout
        tiles = {m.group(2): {"text": m.group(3), "grade": m.group(1)} for m in re.finditer(
            r'<div class="tile ?([a-z]*)" id="t-([a-z0-9]+)">.*?<div class="v" id="v-\2">([^<]*)</div>', dom)}
        charts = {m.group(1): re.sub(r"<[^>]*>", "", m.group(2)) for m in re.finditer(
            r'<h2>([^<]*)</h2><canvas[^>]*></canvas><div class="legend">(.*?)</div>', dom)}
        body = re.search(r'<body data-samples="(\d+)" data-polls="(\d+)" data-failures="(\d+)"', dom)
        status = re.search(r'<span id="status"[^>]*>([^<]*)<', dom)
        frames.append({"tiles": tiles, "charts": charts,
                       "samples": int(body.group(1)) if body else 0,
                       "failures": int(body.group(3)) if body else -1,
                       "status": status.group(1) if status else ""})
    return {"status": 200, "consoleErrors": console, "pageErrors": [], "offOrigin": [], "failed": [],
            "frames": frames}
