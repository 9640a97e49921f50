"""tenkharness: starts a real tenkd master (with real workers) for integration tests.

Python 3 standard library only. Every wait is a poll on a condition with a
deadline; nothing sleeps in place of waiting for a condition.
"""
import glob
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

_BUILD = os.environ.get("TENK_BUILD", ".")
TENKD = os.environ.get("TENKD", os.path.join(_BUILD, "tenkd"))
TENKCTL = os.environ.get("TENKCTL", os.path.join(_BUILD, "tenkctl"))
TENK_DB = os.environ.get("TENK_DB", "")
TENK_REDIS = os.environ.get("TENK_REDIS", "")
SRCDIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_counter = [0]


def _sanitized():
    try:
        with open(os.path.join(_BUILD, "config.h")) as f:
            return "#define TK_SANITIZERS 1" in f.read()
    except OSError:
        return False


# True for an --enable-sanitizers build: timing bounds that ASan slows down get more room.
SANITIZED = _sanitized()

# Lines an ASan/UBSan/LSan build prints; any of them in a server log fails the test.
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


# Under pytest (conftest.py) a Skip is pytest's own skip outcome; the harness needs no pytest.
_SkipBase = sys.modules["pytest"].skip.Exception if "pytest" in sys.modules else Exception


class Skip(_SkipBase):
    """Raised by a test that cannot run here; counted as skipped."""

    def __init__(self, reason):
        try:  # pytest then reports the test's line, not this file's
            super().__init__(reason, _use_item_location=True)
        except TypeError:
            super().__init__(reason)


def skip(reason):
    raise Skip(reason)


def need_db():
    if not TENK_DB:
        skip("TENK_DB not set (run scripts/devenv up)")


def need_redis():
    if not TENK_REDIS:
        skip("TENK_REDIS not set (run scripts/devenv up)")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=5.0, what="condition", interval=0.01):
    """Poll predicate() until it returns a true value; return that value."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = predicate()
            if v:
                return v
        except Exception as e:  # the condition may raise while not yet true
            last_exc = e
        if time.monotonic() >= deadline:
            msg = "timed out after %.1fs waiting for %s" % (timeout, what)
            if last_exc is not None:
                msg += " (last error: %r)" % (last_exc,)
            raise AssertionError(msg)
        time.sleep(interval)


def _read_exact(sock, buf, n):
    while len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


def _read_line(sock, buf):
    while b"\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed while reading a line")
        buf += chunk
    i = buf.index(b"\r\n")
    return buf[:i], buf[i + 2:]


class Reader:
    """Buffered response reader over a raw socket (keeps leftover bytes for pipelining)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def response(self, head=False):
        """Read one response -> (status, headers_lowercase_dict, body_bytes)."""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                if self.buf:
                    raise ConnectionError("connection closed inside a response head: %r" % self.buf[:200])
                raise ConnectionError("connection closed before a response")
            self.buf += chunk
        i = self.buf.index(b"\r\n\r\n")
        head_bytes, self.buf = self.buf[:i], self.buf[i + 4:]
        lines = head_bytes.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ValueError("bad status line %r" % lines[0])
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            key = k.decode("latin-1").strip().lower()
            val = v.decode("latin-1").strip()
            headers[key] = headers[key] + ", " + val if key in headers else val
        if head or status in (204, 304) or 100 <= status < 200:
            return status, headers, b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                line, self.buf = _read_line(self.sock, self.buf)
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while True:  # trailers until the empty line
                        line, self.buf = _read_line(self.sock, self.buf)
                        if not line:
                            break
                    return status, headers, body
                self.buf = _read_exact(self.sock, self.buf, size + 2)
                body += self.buf[:size]
                self.buf = self.buf[size + 2:]
        if "content-length" in headers:
            n = int(headers["content-length"])
            self.buf = _read_exact(self.sock, self.buf, n)
            body, self.buf = self.buf[:n], self.buf[n:]
            return status, headers, body
        body = self.buf + recv_all_until_close(self.sock)
        self.buf = b""
        return status, headers, body


def recv_response(sock, head=False):
    """Read one HTTP/1.1 response from a raw socket (no pipelined leftovers kept)."""
    return Reader(sock).response(head=head)


def recv_all_until_close(sock, timeout=10.0):
    sock.settimeout(timeout)
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return out


def build_request(method, path, headers=None, body=None, host="localhost"):
    h = {"Host": host}
    if headers:
        h.update(headers)
    if body is not None and not any(k.lower() == "content-length" for k in h) \
            and not any(k.lower() == "transfer-encoding" for k in h):
        h["Content-Length"] = str(len(body))
    lines = ["%s %s HTTP/1.1" % (method, path)] + ["%s: %s" % kv for kv in h.items() if kv[1] is not None]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if body is not None:
        raw += body if isinstance(body, bytes) else body.encode()
    return raw


class Tenkd:
    """A real tenkd master with real workers, on a free loopback port."""

    def __init__(self, workers=2, conf="", args=(), name=None, env=None, port=None,
                 admin=False, db=None, redis=None, wait=True, timeout=15.0, debug_endpoints=True):
        _counter[0] += 1
        self.name = name or "t%d-%d" % (os.getpid(), _counter[0])
        self.port = port or free_port()
        self.admin_port = None
        while admin and self.admin_port in (None, self.port):
            self.admin_port = free_port()
        self.workers = workers
        # the admin listener's test endpoints (/debug/echo, /debug/stream): off by default in
        # tenkd, on in the tests that have an admin listener unless they ask otherwise
        self.debug_endpoints = debug_endpoints
        self.extra_conf = conf
        self.args = list(args)
        self.env = dict(os.environ)
        if env:
            self.env.update(env)
        self.db = TENK_DB if db is None else db
        self.redis = TENK_REDIS if redis is None else redis
        self.wait = wait
        self.timeout = timeout
        self.tmp = tempfile.mkdtemp(prefix="tenk-it-")
        self.conf_path = os.path.join(self.tmp, "tenk.conf")
        self.log_path = os.path.join(self.tmp, "tenkd.log")
        self.pid_file = os.path.join(self.tmp, "tenkd.pid")
        self.proc = None

    def write_conf(self, extra=None):
        server = ["[server]",
                  "name = %s" % self.name,
                  "listen = 127.0.0.1:%d" % self.port,
                  "workers = %d" % self.workers,
                  "pid_file = %s" % self.pid_file]
        text = "\n".join(server) + "\n"
        if self.admin_port:
            text += "\n[admin]\nlisten = 127.0.0.1:%d\n" % self.admin_port
            if self.debug_endpoints:
                text += "debug_endpoints = on\n"
        if self.db:
            text += "\n[db]\nconninfo = %s\n" % self.db
        if self.redis:
            text += "\n[redis]\naddr = %s\n" % self.redis
        text += "\n" + (self.extra_conf if extra is None else extra) + "\n"
        with open(self.conf_path, "w") as f:
            f.write(text)

    def start(self):
        self.write_conf()
        self._log = open(self.log_path, "ab")
        args = list(self.args)
        if not self.admin_port and "--admin" not in args:
            args = ["--admin", ""] + args  # the default 127.0.0.1:6060 would collide between instances
        self.proc = subprocess.Popen([TENKD, "-c", self.conf_path, "--foreground"] + args,
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        if self.wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=None):
        def up():
            if self.proc.poll() is not None:
                raise AssertionError("tenkd exited with %s; log:\n%s" % (self.proc.returncode, self.log()))
            try:
                st, _, _ = self.request("GET", "/health", timeout=1.0)
                return st == 200
            except OSError:
                return False
        wait_until(up, timeout or self.timeout, "tenkd to serve /health on port %d" % self.port)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # never leave a worker behind: kill the whole session group
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self._log.close()
        rc = self.proc.returncode
        for f in glob.glob("/dev/shm/tenk-%s" % self.name) + glob.glob("/dev/shm/tenk-%s.*" % self.name):
            try:
                os.unlink(f)  # left behind only if the master was killed
            except OSError:
                pass
        reports = [m for m in SANITIZER_MARKS if m in self.log()]
        if reports:
            raise AssertionError("sanitizer report(s) %s in the tenkd log:\n%s" % (reports, self.log()[-6000:]))
        return rc

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def signal(self, sig):
        self.proc.send_signal(sig)

    def connect(self, timeout=10.0, port=None):
        s = socket.create_connection(("127.0.0.1", port or self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def request(self, method, path, headers=None, body=None, timeout=10.0, port=None):
        """One request over a fresh connection -> (status, headers, body)."""
        s = self.connect(timeout=timeout, port=port)
        try:
            s.sendall(build_request(method, path, headers, body))
            return recv_response(s, head=(method == "HEAD"))
        finally:
            s.close()

    def get_json(self, path, port=None):
        import json
        st, h, body = self.request("GET", path, port=port)
        return st, json.loads(body) if body else None

    def worker_pids(self):
        """Live worker pids: the master's children."""
        try:
            with open("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    def ctl(self, *args, timeout=20.0):
        return subprocess.run([TENKCTL, "-n", self.name] + [str(a) for a in args],
                              capture_output=True, text=True, timeout=timeout)


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def psql(sql, db=None):
    """Run SQL through psql against the devenv database; returns stdout."""
    r = subprocess.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", db or TENK_DB, "-c", sql],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError("psql failed: %s" % r.stderr)
    return r.stdout.strip()
