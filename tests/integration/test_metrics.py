"""GET /metrics on the admin listener: Prometheus text format, checked by promtool, counters vs a known load."""
import os
import re
import shutil
import signal
import subprocess

from tenkharness import TENK_DB, TENK_REDIS, Tenkd as _Tenkd, free_port, wait_until


def Tenkd(**kw):
    """The harness's Tenkd with an admin port that never equals the public one."""
    t = _Tenkd(**kw)
    while t.admin_port is not None and t.admin_port == t.port:
        t.admin_port = free_port()
    return t

PROMTOOL = os.environ.get("PROMTOOL") or shutil.which("promtool") or "/usr/bin/promtool"

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text):
    """-> (families {name: type}, helps {name}, samples [(name, labels dict, value)])."""
    types, helps, samples = {}, set(), []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            assert name not in types, "family %s declared twice" % name
            types[name] = typ
        elif line.startswith("# HELP "):
            helps.add(line.split(" ", 3)[2])
        elif line and not line.startswith("#"):
            m = _SAMPLE.match(line)
            assert m, "unparsable sample line %r" % line
            labels = dict(_LABEL.findall(m.group(3) or ""))
            v = m.group(4)
            samples.append((m.group(1), labels, float("inf") if v == "+Inf" else float(v)))
    return types, helps, samples


def scrape(t, headers=None):
    st, h, body = t.request("GET", "/metrics", headers=headers, port=t.admin_port)
    assert st == 200, (st, body[:200])
    assert h["content-type"].startswith("text/plain; version=0.0.4"), h["content-type"]
    return body.decode()


def total(samples, name, **want):
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == x for k, x in want.items()))


def promtool_check(text):
    assert os.path.exists(PROMTOOL), "promtool not found (Debian package prometheus)"
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), \
        "promtool check metrics failed (rc %d):\n%s%s" % (r.returncode, r.stdout, r.stderr)


def test_live_scrape_passes_promtool():
    with Tenkd(workers=2, admin=True) as t:
        for _ in range(20):
            assert t.request("GET", "/plaintext")[0] == 200
        assert t.request("GET", "/no/such/path")[0] == 404
        if TENK_DB:
            assert t.request("GET", "/db")[0] == 200
        if TENK_REDIS and TENK_DB:
            t.request("GET", "/cached-queries?count=3")
        text = scrape(t)
        promtool_check(text)
        types, helps, samples = parse(text)
        # every family has HELP and TYPE; counters end in _total
        for name, typ in types.items():
            assert name in helps, "no HELP for %s" % name
            if typ == "counter":
                assert name.endswith("_total"), "counter %s lacks _total" % name
        want = ["tenk_http_requests_total", "tenk_http_request_duration_seconds", "tenk_connections",
                "tenk_connections_accepted_total", "tenk_green_threads", "tenk_green_thread_switches_total",
                "tenk_worker_restarts_total", "tenk_process_resident_memory_bytes",
                "tenk_process_cpu_seconds_total", "tenk_master_resident_memory_bytes"]
        if TENK_DB:
            want += ["tenk_db_max_open_connections", "tenk_db_open_connections", "tenk_db_in_use_connections",
                     "tenk_db_idle_connections", "tenk_db_wait_count_total", "tenk_db_wait_duration_seconds_total",
                     "tenk_db_max_idle_closed_total", "tenk_db_max_idle_time_closed_total",
                     "tenk_db_max_lifetime_closed_total", "tenk_db_wait_seconds"]
        if TENK_REDIS:
            want += ["tenk_cache_hits_total", "tenk_cache_misses_total", "tenk_cache_errors_total"]
        for name in want:
            assert name in types, "family %s missing" % name
        # per-worker series carry the worker label: one per live worker slot
        slots = {l["worker"] for n, l, v in samples if n == "tenk_green_threads"}
        assert len(slots) == 2, slots
        states = {l["state"] for n, l, v in samples if n == "tenk_green_threads"}
        assert {"running", "runnable", "wait_net", "wait_db", "sleeping"} <= states, states
        # every live worker reports memory and CPU
        for s in slots:
            assert total(samples, "tenk_process_resident_memory_bytes", worker=s) > 1 << 20
        assert total(samples, "tenk_master_resident_memory_bytes") > 1 << 20


def test_histograms_are_cumulative():
    with Tenkd(workers=2, admin=True) as t:
        for _ in range(30):
            t.request("GET", "/json")
        types, _, samples = parse(scrape(t))
        hists = [n for n, typ in types.items() if typ == "histogram"]
        assert "tenk_http_request_duration_seconds" in hists
        for h in hists:
            series = {}
            for n, l, v in samples:
                if n == h + "_bucket":
                    key = tuple(sorted((k, x) for k, x in l.items() if k != "le"))
                    series.setdefault(key, []).append((float(l["le"]), v))
            assert series, "histogram %s has no buckets" % h
            for key, buckets in series.items():
                les = [le for le, _ in buckets]
                assert les == sorted(les) and les[-1] == float("inf"), (h, key, les)
                counts = [c for _, c in buckets]
                assert counts == sorted(counts), "%s%s not cumulative: %s" % (h, key, counts)
                labels = dict(key)
                assert total(samples, h + "_count", **labels) == counts[-1], (h, key)
                assert (h + "_sum") in {n for n, _, _ in samples}


def test_counters_match_a_known_load():
    with Tenkd(workers=2, admin=True) as t:
        _, _, before = parse(scrape(t))
        n_ok, n_404, n_405 = 57, 13, 4
        for _ in range(n_ok):
            assert t.request("GET", "/plaintext")[0] == 200
        for i in range(n_404):
            assert t.request("GET", "/missing/%d" % i)[0] == 404
        for _ in range(n_405):
            assert t.request("DELETE", "/plaintext")[0] == 405
        # a keep-alive connection with several requests counts one connection
        s = t.connect()
        from tenkharness import Reader, build_request
        s.sendall(build_request("GET", "/json") * 5)
        rd = Reader(s)
        for _ in range(5):
            assert rd.response()[0] == 200
        s.close()
        _, _, after = parse(scrape(t))

        def delta(name, **labels):
            return total(after, name, **labels) - total(before, name, **labels)

        assert delta("tenk_http_requests_total", route="/plaintext", code="2xx") == n_ok
        assert delta("tenk_http_requests_total", route="/json", code="2xx") == 5
        # 404 and 405 have no route handler: "unmatched", class 4xx
        assert delta("tenk_http_requests_total", route="unmatched", code="4xx") == n_404 + n_405
        # the first scrape is counted once it has been answered: exactly one /metrics more
        assert delta("tenk_http_requests_total", route="/metrics") == 1
        all_requests = delta("tenk_http_requests_total")
        assert all_requests == n_ok + n_404 + n_405 + 5 + 1, all_requests
        assert delta("tenk_http_request_duration_seconds_count") == all_requests
        assert delta("tenk_http_request_duration_seconds_sum") > 0
        # connections: one per request above, one for the pipelined batch, one for this scrape
        conns = n_ok + n_404 + n_405 + 1 + 1
        got = delta("tenk_connections_accepted_total")
        assert conns <= got <= conns + 1, (got, conns)
        assert delta("tenk_http_response_bytes_total") > n_ok * len("Hello, World!")
        # the scheduler's counters are published once a second
        sw0 = total(before, "tenk_green_thread_switches_total")
        wait_until(lambda: total(parse(scrape(t))[2], "tenk_green_thread_switches_total") > sw0, 3,
                   "green-thread switches to be published")
        # per-worker values add up to the totals tenkctl shows
        r = t.ctl("stats", "--json")
        assert r.returncode == 0, r.stderr


def test_db_pool_metrics_follow_queries():
    if not TENK_DB:
        from tenkharness import skip
        skip("TENK_DB not set")
    with Tenkd(workers=2, admin=True, conf="[db]\nmax_open = 7\nmax_idle = 7\n") as t:
        _, _, before = parse(scrape(t))
        for _ in range(25):
            assert t.request("GET", "/db")[0] == 200
        text = scrape(t)
        promtool_check(text)
        _, _, after = parse(text)
        assert total(after, "tenk_db_max_open_connections") == 7
        acq = total(after, "tenk_db_acquires_total") - total(before, "tenk_db_acquires_total")
        assert acq >= 25, acq
        opened = total(after, "tenk_db_open_connections")
        assert 1 <= opened <= 7, opened
        # start-up loads (tfb's cachedworld) may still hold a connection for a moment
        def settled():
            _, _, s = parse(scrape(t))
            return s if total(s, "tenk_db_in_use_connections") == 0 else None
        after = wait_until(settled, 10, "every connection back in the pool")
        assert total(after, "tenk_db_idle_connections") == total(after, "tenk_db_open_connections")


def test_worker_restart_is_counted():
    with Tenkd(workers=2, admin=True) as t:
        _, _, before = parse(scrape(t))
        assert total(before, "tenk_worker_restarts_total") == 0
        victim = t.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)

        def restarted():
            _, _, s = parse(scrape(t))
            return total(s, "tenk_worker_restarts_total") == 1 and \
                total(s, "tenk_workers", state="running") == 2
        wait_until(restarted, 10, "the respawn to show in tenk_worker_restarts_total")
        assert victim not in t.worker_pids()


def test_cache_metrics_follow_lookups():
    from tenkharness import need_db, need_redis
    need_db()
    need_redis()
    with Tenkd(workers=1, admin=True) as t:
        _, _, before = parse(scrape(t))
        for _ in range(6):  # the first may miss and fill the cache; the others hit
            assert t.request("GET", "/users/1")[0] == 200
        h0 = total(before, "tenk_cache_hits_total")
        l0 = total(before, "tenk_cache_reply_duration_seconds_count")

        def published():  # the worker publishes its cache counters once a second
            _, _, s = parse(scrape(t))
            return s if total(s, "tenk_cache_hits_total") >= h0 + 5 else None
        after = wait_until(published, 5, "cache hits in /metrics")
        assert total(after, "tenk_cache_connected") == 1
        assert total(after, "tenk_cache_reply_duration_seconds_count") >= l0 + 6
        promtool_check(scrape(t))


def test_every_route_counts_under_its_own_label():
    """Each registered (method, pattern) is counted under its own method + route labels: the
    routes come from the server (/debug/stats names every registered route), each is hit once."""
    with Tenkd(workers=1, admin=True) as t:
        st, stats = t.get_json("/debug/stats", port=t.admin_port)
        assert st == 200, st
        routes = [r["route"] for r in stats["routes"]]
        assert "GET /users" in routes and "POST /users" in routes, routes
        assert len(routes) == len(set(routes)), routes
        _, _, before = parse(scrape(t))
        admin_only = ("/debug/", "/metrics", "/dashboard")
        for label in routes:
            method, pattern = label.split(" ", 1)
            # an id that matches no row: PUT and DELETE must change nothing
            path = re.sub(r"\{[^}]*\}", "999999999", pattern)
            port = t.admin_port if pattern.startswith(admin_only) else t.port
            body = b"{}" if method in ("POST", "PUT") else None
            st, _, _ = t.request(method, path, body=body, port=port)
            assert st != 404 or pattern == "/users/{id}", (label, st)
            assert st not in (405, 501), (label, st)
        _, _, after = parse(scrape(t))

        def delta(**labels):
            return total(after, "tenk_http_requests_total", **labels) - \
                total(before, "tenk_http_requests_total", **labels)

        for label in routes:
            method, pattern = label.split(" ", 1)
            want = 2 if label == "GET /metrics" else 1  # the first scrape counts once answered
            assert delta(method=method, route=pattern) == want, (label, delta(method=method, route=pattern))
        assert delta() == len(routes) + 1
