"""test_reload.py: SIGHUP reloads: a valid file starts a new generation and
drains the old one, an invalid one is refused with the reason, listen
addresses follow the file, and 20 reloads under load fail no request."""
import os
import re
import signal
import threading
import time

from tenkharness import Reader, Tenkd, build_request, free_port, wait_until

ADMIN_OFF = ("--admin", "")


def _reloads_done(t):
    return len(re.findall(r"reloaded: generation \d+", t.log()))


def _refusals(t):
    return t.log().count("reload refused")


def _reload(t, expect_ok=True, timeout=10):
    n_ok, n_bad = _reloads_done(t), _refusals(t)
    t.signal(signal.SIGHUP)
    if expect_ok:
        wait_until(lambda: _reloads_done(t) > n_ok, timeout, "the reload to complete")
    else:
        wait_until(lambda: _refusals(t) > n_bad, timeout, "the reload to be refused")


def test_valid_reload_replaces_every_worker():
    with Tenkd(workers=2, args=ADMIN_OFF) as t:
        wait_until(lambda: len(t.worker_pids()) == 2, 5, "2 workers")
        old = set(t.worker_pids())
        # A visible change: a short request-line limit.
        long_target = "/health?" + "a" * 400
        assert t.request("GET", long_target)[0] == 200
        t.write_conf("[limits]\nmax_request_line = 256\n")
        _reload(t)
        assert "generation 2 with 2 workers accepting, 2 old draining" in t.log()
        wait_until(lambda: len(t.worker_pids()) == 2 and not (set(t.worker_pids()) & old), 10,
                   "the old generation to exit")
        assert t.request("GET", long_target)[0] == 414
        assert t.request("GET", "/health")[0] == 200


def test_invalid_reload_keeps_running_and_says_why():
    with Tenkd(workers=2, args=ADMIN_OFF) as t:
        wait_until(lambda: len(t.worker_pids()) == 2, 5, "2 workers")
        old = sorted(t.worker_pids())
        t.write_conf("[limits]\nmax_headers = 0\n")
        _reload(t, expect_ok=False)
        log = t.log()
        # The exact reason: file, line, setting and range.
        m = re.search(r"reload refused, keeping the running configuration: (.*)", log)
        assert m, log
        assert re.match(r"%s:\d+: limits.max_headers: out of range \(accepted range 1..128\)"
                        % re.escape(t.conf_path), m.group(1)), m.group(1)
        assert sorted(t.worker_pids()) == old
        assert t.request("GET", "/health")[0] == 200
        # A setting that needs a restart is refused, as is a bad value.
        t.write_conf()
        with open(t.conf_path) as f:
            text = f.read()
        with open(t.conf_path, "w") as f:
            f.write(text.replace("name = %s" % t.name, "name = other-%s" % t.name))
        _reload(t, expect_ok=False)
        assert "server.name cannot change on reload (restart tenkd)" in t.log()
        t.write_conf("[http]\ngzip = sometimes\n")
        _reload(t, expect_ok=False)
        assert "http.gzip: not a boolean" in t.log()
        assert sorted(t.worker_pids()) == old
        # And a good file afterwards reloads fine.
        t.write_conf()
        _reload(t)
        assert t.request("GET", "/health")[0] == 200


def test_reload_opens_and_closes_listen_addresses():
    with Tenkd(workers=1, args=ADMIN_OFF) as t:
        port2 = free_port()
        t.write_conf()
        with open(t.conf_path) as f:
            text = f.read()
        both = text.replace("listen = 127.0.0.1:%d" % t.port,
                            "listen = 127.0.0.1:%d, 127.0.0.1:%d" % (t.port, port2))
        assert both != text
        with open(t.conf_path, "w") as f:
            f.write(both)
        _reload(t)
        assert t.request("GET", "/health", port=port2)[0] == 200
        assert t.request("GET", "/health")[0] == 200
        # Back to one address: the second socket is closed once nobody uses it.
        with open(t.conf_path, "w") as f:
            f.write(text)
        _reload(t)
        assert "closing listen socket 127.0.0.1:%d" % port2 in t.log()

        def refused():
            try:
                t.request("GET", "/health", port=port2, timeout=1)
                return False
            except ConnectionRefusedError:
                return True
        wait_until(refused, 10, "port %d to be closed" % port2)
        assert t.request("GET", "/health")[0] == 200


class Clients:
    """Bounded load: keep-alive clients and new-connection clients, counted."""

    def __init__(self, t, keepalive=2, fresh=2, pause=0.002):
        self.t, self.stop, self.pause = t, False, pause
        self.lock = threading.Lock()
        self.ok = {"keepalive": 0, "fresh": 0}
        self.errors = []
        self.threads = [threading.Thread(target=self.run, args=(True,)) for _ in range(keepalive)]
        self.threads += [threading.Thread(target=self.run, args=(False,)) for _ in range(fresh)]

    def _count(self, kind, err=None):
        with self.lock:
            if err is None:
                self.ok[kind] += 1
            else:
                self.errors.append("%s: %s" % (kind, err))

    def run(self, keepalive):
        kind = "keepalive" if keepalive else "fresh"
        s = r = None
        while not self.stop:
            try:
                if s is None:
                    s = self.t.connect(timeout=10)
                    r = Reader(s)
                s.sendall(build_request("GET", "/health",
                                        None if keepalive else {"Connection": "close"}))
                st, h, body = r.response()
                if st != 200:
                    self._count(kind, "status %d" % st)
                else:
                    self._count(kind)
                if not keepalive or h.get("connection", "").lower() == "close":
                    s.close()
                    s = None
            except Exception as e:  # connect errors, resets, early EOF all count
                self._count(kind, repr(e))
                if s is not None:
                    s.close()
                s = None
            time.sleep(self.pause)  # bounded load: leave CPU to the server on 2 cores
        if s is not None:
            s.close()

    def total(self):
        with self.lock:
            return self.ok["keepalive"] + self.ok["fresh"]

    def __enter__(self):
        for x in self.threads:
            x.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        for x in self.threads:
            x.join(30)


def test_20_reloads_under_load_fail_no_request():
    with Tenkd(workers=2, args=ADMIN_OFF) as t:
        with Clients(t) as c:
            wait_until(lambda: c.total() > 100, 10, "the load to run")
            for i in range(20):
                before = c.total()
                _reload(t, timeout=15)
                # Requests flow between reloads (both kinds of client).
                wait_until(lambda: c.total() > before + 20, 10, "requests after reload %d" % i)
            wait_until(lambda: len(t.worker_pids()) == 2, 40, "the old generations to exit")
        assert c.errors == [], "%d failed requests, e.g. %s" % (len(c.errors), c.errors[:5])
        assert c.ok["keepalive"] > 200 and c.ok["fresh"] > 200, c.ok
        assert _reloads_done(t) == 20
        assert "generation 21" in t.log()
