"""test_churn.py: connection churn (a new connection per request) must not get slower when a
second worker shares the listen socket: 2 workers serve at least half the requests per second of
1 worker, measured here, on loopback, in bounded time (issue #21: the load-aware accept held
both workers back at once and left the accept queue full for 10 ms at a time)."""
import errno
import selectors
import socket
import statistics
import time

from tenkharness import SANITIZED, Tenkd, wait_until

REQ = b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
CONC = 32  # more than the old hold-back's slack (4) per worker, so a burst could trip it
SECONDS = 1.0
ROUNDS = 3


def churn(port, conc=CONC, seconds=SECONDS):
    """conc clients, each: connect, send one request, read to EOF, close, again; for seconds.
    Returns (answered with 200, failures)."""
    sel = selectors.DefaultSelector()
    ok = failed = 0
    deadline = time.monotonic() + seconds
    state = {}

    def open_one():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        e = s.connect_ex(("127.0.0.1", port))
        if e not in (0, errno.EINPROGRESS):
            s.close()
            return False
        state[s] = [False, b""]  # sent, response so far
        sel.register(s, selectors.EVENT_WRITE)
        return True

    def done(s):
        sel.unregister(s)
        del state[s]
        s.close()

    for _ in range(conc):
        if not open_one():
            failed += 1
    while state:
        now = time.monotonic()
        for key, ev in sel.select(timeout=max(0.0, min(0.5, deadline + 5 - now))):
            s = key.fileobj
            st = state[s]
            try:
                if not st[0]:
                    s.send(REQ)  # 60 bytes into an empty socket buffer: all or an error
                    st[0] = True
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                data = s.recv(4096)
            except OSError:
                failed += 1
                done(s)
                data = None
            else:
                if data:
                    st[1] += data
                    continue
                if st[1].startswith(b"HTTP/1.1 200"):
                    ok += 1
                else:
                    failed += 1
                done(s)
            if time.monotonic() < deadline:
                if not open_one():
                    failed += 1
        if time.monotonic() > deadline + 5:
            failed += len(state)  # unanswered 5 s after the end: count them, do not wait forever
            for s in list(state):
                done(s)
    sel.close()
    return ok, failed


def _rate(t):
    churn(t.port, seconds=0.2)  # warm: stacks, buffers, the first accept of each worker
    ok, failed = churn(t.port)
    assert failed == 0, "%d failed connections" % failed
    return ok / SECONDS


def test_two_workers_churn_at_least_half_of_one():
    one = Tenkd(workers=1, db="", redis="").start()
    two = Tenkd(workers=2, db="", redis="").start()
    try:
        wait_until(lambda: len(two.worker_pids()) == 2, 5, "2 workers")
        r1, r2 = [], []
        # alternated rounds, so a neighbour's load on this shared machine hits both alike
        for _ in range(ROUNDS):
            r1.append(_rate(one))
            r2.append(_rate(two))
        m1, m2 = statistics.median(r1), statistics.median(r2)
        print("  1 worker %s, 2 workers %s req/s; ratio %.2f" %
              ([round(x) for x in r1], [round(x) for x in r2], m2 / m1))
        # the client (one Python thread) is the limit with 1 worker; 2 workers must keep up with it
        assert m1 > (200 if SANITIZED else 500), "1 worker served only %.0f req/s" % m1
        assert m2 >= 0.5 * m1, "2 workers: %.0f req/s, 1 worker: %.0f req/s (ratio %.2f < 0.5)" % (
            m2, m1, m2 / m1)
    finally:
        two.stop()
        one.stop()
