"""hostile.py: the hostile-input case of scripts/torture (issue 15).

Two families of requests, each on a fresh connection, against a tenkd with an admin listener:
- deeply nested JSON of every shape (arrays, objects, the two mixed, openers never closed) from
  10^2 to 10^6 levels, and brackets hidden in strings, on every endpoint that takes a JSON body:
  400 with a JSON error when the body fits, 413 when it is above limits.max_body_size; paths of
  4,000 segments (404);
- on every route (public and admin), a body, a request target and a header section exactly at
  their limit (the route's ordinary answer) and one byte past it (413, 414, 431), and 100 then
  101 header fields.
Every 4xx must carry a {"error": "..."} body. No worker may die: `tenkctl status` shows the same
workers with the same restart counts afterwards, and the log holds no stack overflow report.
"""
import json
import socket
import time

from tenkharness import Reader, build_request

# The defaults of limits.* (tenk.conf(5)); the case's tenkd runs with them.
MAX_BODY = 1024 * 1024
MAX_TARGET = 8192
MAX_HEADER = 8192
MAX_FIELDS = 100


def nested(shape, n):
    """n levels of nesting (bytes)."""
    if shape == "array":
        return b"[" * n + b"]" * n
    if shape == "object":
        return b'{"a":' * n + b"1" + b"}" * n
    if shape == "mixed":  # [{"a":[{"a":...}]}]
        half = n // 2
        return b'[{"a":' * half + b"1" + b"}]" * half
    if shape == "open":  # openers only, never closed
        return b"[{" * (n // 2)
    if shape == "escaped":  # arrays whose strings hold escaped quotes and brackets
        return b'["\\"[",' * n + b"1" + b"]" * n
    raise ValueError(shape)


SHAPES = ("array", "object", "mixed", "open", "escaped")


def exchange(port, raw, body_cut=None, timeout=20.0):
    """Send raw (only its first body_cut bytes when given: the server answers a declared
    oversize body from the head) -> (status, headers, body); the answer must arrive."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(raw if body_cut is None else raw[:body_cut])
        return Reader(s).response()
    finally:
        s.close()


def is_json_error(h, body):
    try:
        return h.get("content-type") == "application/json" and isinstance(json.loads(body)["error"], str)
    except (ValueError, KeyError, TypeError):
        return False


class Checker:
    def __init__(self):
        self.checked = 0
        self.bad = []
        self.statuses = {}

    def check(self, what, port, raw, want, body_cut=None):
        """want: a status, or a set of acceptable ones."""
        self.checked += 1
        try:
            st, h, body = exchange(port, raw, body_cut)
        except (OSError, ValueError) as e:
            self.bad.append("%s: no answer (%s)" % (what, e))
            return None
        self.statuses[st] = self.statuses.get(st, 0) + 1
        ok = st in want if isinstance(want, (set, frozenset, tuple)) else st == want
        if not ok:
            self.bad.append("%s: status %d, want %s: %r" % (what, st, want, body[:120]))
        elif st >= 400 and not is_json_error(h, body):
            self.bad.append("%s: %d without a JSON error body: %r" % (what, st, body[:120]))
        return st, h, body


def json_req(method, path, body):
    return build_request(method, path, {"Content-Type": "application/json"}, body)


def deep_json(chk, port, uid, depths):
    """Nested JSON of every shape and depth on POST /users and PUT /users/{id}."""
    for n in depths:
        for shape in SHAPES:
            body = nested(shape, n)
            for method, path in (("POST", "/users"), ("PUT", "/users/%d" % uid)):
                what = "%s %s %s x%d (%d bytes)" % (method, path, shape, n, len(body))
                if len(body) > MAX_BODY:
                    chk.check(what, port, json_req(method, path, body), 413, body_cut=65536)
                else:
                    chk.check(what, port, json_req(method, path, body), 400)
    # brackets inside strings do not nest: this body fails on its name, not its depth
    name = "[" * 10000 + "{" * 10000
    body = json.dumps({"name": name, "email": "deep@example.com"}).encode()
    r = chk.check("POST /users brackets in a string", port, json_req("POST", "/users", body), 400)
    if r and b"name" not in r[2]:
        chk.bad.append("brackets in a string were counted as nesting: %r" % r[2][:120])
    # 32 levels are allowed: a valid object that deep is created
    body = b'{"name":"x","email":"deep-%d@b.cd","deep":' % uid + b"[" * 31 + b"]" * 31 + b"}"
    chk.check("POST /users 32 levels", port, json_req("POST", "/users", body), 201)


def deep_paths(chk, port):
    """The router recurses once per path segment only along registered routes: 4,000 segments
    cost it no more than three."""
    for path in ("/" + "a/" * 4000, "/users/" + "1/" * 4000, "/users/1" + "/" * 4000, "/" * 8000):
        chk.check("GET %s... (%d bytes)" % (path[:12], len(path)), port, build_request("GET", path), 404)


def user_body(size, email):
    """A valid users body padded with whitespace to exactly size bytes."""
    b = json.dumps({"name": "limit", "email": email}).encode()
    return b + b" " * (size - len(b))


def limits(chk, port, admin_port, uid, seq):
    """Body, target and header section at and one past their limits on every route."""
    routes = [("GET", p, port) for p in ("/health", "/json", "/plaintext", "/users?limit=5", "/users/%d" % uid,
                                         "/db", "/queries?queries=2", "/fortunes", "/updates?queries=2",
                                         "/cached-queries?count=2", "/heavy")]
    routes += [("POST", "/users", port), ("PUT", "/users/%d" % uid, port), ("DELETE", "/users/999999999", port)]
    routes += [("GET", p, admin_port) for p in ("/metrics", "/debug/stats", "/debug/threads", "/debug/config",
                                                "/dashboard")]
    routes += [("POST", "/debug/echo", admin_port)]

    def body_for(method, path, size):
        if path.startswith("/users") and method in ("POST", "PUT"):
            seq[0] += 1
            return user_body(size, "limit%d@example.com" % seq[0])
        return b"x" * size

    def req(method, path, headers=None, body=None):
        h = {"Content-Type": "application/json"} if body is not None else {}
        h.update(headers or {})
        return build_request(method, path, h, body)

    for method, path, p in routes:
        base = chk.check("%s %s baseline" % (method, path), p,
                         req(method, path, body=body_for(method, path, 64) if method in ("POST", "PUT") else None),
                         frozenset(range(200, 500)))
        if base is None:
            continue
        want = base[0]
        # body: at the limit, then one past (declared: answered from the head)
        chk.check("%s %s body at the limit" % (method, path), p, req(method, path, body=body_for(method, path, MAX_BODY)),
                  want)
        chk.check("%s %s body one past" % (method, path), p, req(method, path, body=b"x" * (MAX_BODY + 1)), 413,
                  body_cut=65536)
        # request target: exactly MAX_TARGET bytes, then one more
        sep = "&" if "?" in path else "?"
        pad = MAX_TARGET - len(path) - len(sep) - len("pad=")
        target = path + sep + "pad=" + "p" * pad
        assert len(target) == MAX_TARGET
        b = body_for(method, path, 64) if method in ("POST", "PUT") else None
        chk.check("%s %s target at the limit" % (method, path), p, req(method, target, body=b), want)
        b = body_for(method, path, 64) if method in ("POST", "PUT") else None
        chk.check("%s %s target one past" % (method, path), p, req(method, target + "p", body=b), 414)
        # header section (after the request line, through the empty line): exactly MAX_HEADER bytes
        for extra, status in ((0, want), (1, 431)):
            b = body_for(method, path, 64) if method in ("POST", "PUT") else None
            raw = req(method, path, {"X-Pad": ""}, body=b)
            head_end = raw.index(b"\r\n\r\n") + 4
            line_end = raw.index(b"\r\n") + 2
            size = head_end - line_end
            raw = raw.replace(b"X-Pad: ", b"X-Pad: " + b"h" * (MAX_HEADER - size + extra), 1)
            chk.check("%s %s header section %s" % (method, path, "at the limit" if not extra else "one past"), p,
                      raw, status)
        # header fields: 100 (Host included), then 101
        for nf, status in ((MAX_FIELDS, want), (MAX_FIELDS + 1, 431)):
            b = body_for(method, path, 64) if method in ("POST", "PUT") else None
            fixed = 1 + (2 if b is not None else 0)  # Host, Content-Type + Content-Length
            hs = {"X-F%d" % i: "v" for i in range(nf - fixed)}
            chk.check("%s %s %d header fields" % (method, path, nf), p, req(method, path, hs, body=b), status)


def run(t, depths):
    """Both families against a running Tenkd t (admin listener on) -> numbers; raises on a bad answer."""
    chk = Checker()
    st, _, body = exchange(t.port, json_req("POST", "/users", json.dumps(
        {"name": "hostile", "email": "hostile-%d@example.com" % (time.time() * 1e6)}).encode()))
    assert st == 201, (st, body)
    uid = json.loads(body)["id"]
    seq = [int(time.time() * 1000) % 10**9 * 100]
    deep_json(chk, t.port, uid, depths)
    deep_paths(chk, t.port)
    limits(chk, t.port, t.admin_port, uid, seq)
    return chk
