"""test_notify.py: the sd_notify protocol as a test $NOTIFY_SOCKET sees it:
READY=1, RELOADING=1 (with MONOTONIC_USEC), READY=1, STOPPING=1 in that order;
a refused reload; abstract socket names; the watchdog that stops while a
worker is wedged."""
import os
import shutil
import signal
import socket
import tempfile
import threading
import time

from tenkharness import Tenkd, wait_until

ADMIN_OFF = ("--admin", "")


class NotifySocket:
    """A datagram socket collecting notify messages as lists of KEY=VALUE."""

    def __init__(self, abstract=False):
        self.dir = tempfile.mkdtemp(prefix="tenk-notify-")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = "tenk-notify-%d-%d" % (os.getpid(), id(self))
            self.sock.bind("\0" + name)
            self.addr = "@" + name
        else:
            self.addr = os.path.join(self.dir, "notify.sock")
            self.sock.bind(self.addr)
        self.sock.settimeout(0.05)
        self.msgs = []  # (monotonic arrival, [assignments])
        self.lock = threading.Lock()
        self.stop = False
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self):
        while not self.stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            with self.lock:
                self.msgs.append((time.monotonic(), data.decode().split("\n")))

    def close(self):
        self.stop = True
        self.thread.join(5)
        self.sock.close()
        shutil.rmtree(self.dir)

    def keys(self, wanted=("READY=1", "RELOADING=1", "STOPPING=1")):
        """The sequence of the wanted assignments, in arrival order."""
        with self.lock:
            return [a for _, m in self.msgs for a in m if a in wanted]

    def find(self, prefix):
        with self.lock:
            return [a for _, m in self.msgs for a in m if a.startswith(prefix)]

    def times(self, assignment):
        with self.lock:
            return [t for t, m in self.msgs if assignment in m]


def test_ready_reloading_ready_stopping_in_order():
    ns = NotifySocket()
    try:
        t = Tenkd(workers=2, args=ADMIN_OFF, env={"NOTIFY_SOCKET": ns.addr}).start()
        try:
            wait_until(lambda: ns.keys() == ["READY=1"], 5, "READY=1")
            before = time.monotonic()
            t.signal(signal.SIGHUP)
            wait_until(lambda: ns.keys() == ["READY=1", "RELOADING=1", "READY=1"], 10,
                       "RELOADING=1 then READY=1")
            # MONOTONIC_USEC= comes with RELOADING=1, on this machine's CLOCK_MONOTONIC.
            usec = [int(a.split("=")[1]) for a in ns.find("MONOTONIC_USEC=")]
            assert len(usec) == 1
            assert before * 1e6 - 1e6 <= usec[0] <= time.monotonic() * 1e6 + 1e6
            # The second READY=1 comes only once the new generation accepts.
            assert "reloaded: generation 2" in t.log()
            assert any(s.startswith("STATUS=") for s in ns.find("STATUS="))
            t.signal(signal.SIGTERM)
            assert t.proc.wait(10) == 0
            assert ns.keys() == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"], ns.keys()
        finally:
            t.stop()
    finally:
        ns.close()


def test_refused_reload_reports_status_and_ready():
    ns = NotifySocket(abstract=True)  # '@name': the abstract namespace
    try:
        with Tenkd(workers=1, args=ADMIN_OFF, env={"NOTIFY_SOCKET": ns.addr}) as t:
            wait_until(lambda: ns.keys() == ["READY=1"], 5, "READY=1")
            t.write_conf("[server]\nbacklog = 0\n")
            t.signal(signal.SIGHUP)
            wait_until(lambda: ns.keys() == ["READY=1", "RELOADING=1", "READY=1"], 10,
                       "the refused reload's READY=1")
            failed = [s for s in ns.find("STATUS=reload failed: ")]
            assert failed and "server.backlog: out of range" in failed[0], ns.find("STATUS=")
            t.signal(signal.SIGQUIT)
            assert t.proc.wait(10) == 0
        assert ns.keys()[-1] == "STOPPING=1"
    finally:
        ns.close()


def test_watchdog_only_while_workers_are_fresh():
    ns = NotifySocket()
    try:
        # 400 ms watchdog: WATCHDOG=1 every 200 ms while heartbeats are fresh.
        with Tenkd(workers=2, args=ADMIN_OFF,
                   env={"NOTIFY_SOCKET": ns.addr, "WATCHDOG_USEC": "400000"}) as t:
            wait_until(lambda: len(ns.times("WATCHDOG=1")) >= 3, 5, "regular WATCHDOG=1")
            victim = t.worker_pids()[0]
            os.kill(victim, signal.SIGSTOP)  # a wedged worker: no more heartbeats
            try:
                wait_until(lambda: "withholding WATCHDOG=1" in t.log(), 5,
                           "the master to notice the stale heartbeat")
                n = len(ns.times("WATCHDOG=1"))
                # While it stays wedged, no ping for well over the interval
                # (checking that nothing happens needs an observation window).
                time.sleep(1.0)
                assert len(ns.times("WATCHDOG=1")) == n, "WATCHDOG=1 sent for a wedged worker"
            finally:
                os.kill(victim, signal.SIGCONT)
            wait_until(lambda: len(ns.times("WATCHDOG=1")) > n, 5, "WATCHDOG=1 to resume")
    finally:
        ns.close()
