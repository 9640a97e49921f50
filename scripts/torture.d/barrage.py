#!/usr/bin/env python3
"""barrage.py: hostile requests for D seconds; every answer must be a 4xx or a close.

    barrage.py --port P [--duration S] [--seed N] [--table tests/unit/test_http_parser.c]
               [--wait S]

Each round picks one attack: a request from the parser's reject table (its
expected status must come back, or a close), random bytes followed by a
half-close, a huge header section, an endless chunked body, a request cut
short by a half-close, a request line of garbage. A 2xx/3xx, a 5xx other than
the table's own 501/505, or no answer nor close within --wait seconds is a
failure. Prints one JSON object on stdout.
"""
import argparse
import json
import os
import random
import re
import socket
import sys
import time

H11 = "GET / HTTP/1.1\r\nHost: a\r\n"
P11 = "POST / HTTP/1.1\r\nHost: a\r\n"


def c_literals(text):
    """Concatenate the C string literals in text (H11/P11 expanded) -> bytes."""
    out = b""
    for tok in re.finditer(r'"((?:[^"\\]|\\.)*)"|\b(H11|P11)\b', text, re.S):
        if tok.group(2):
            out += (H11 if tok.group(2) == "H11" else P11).encode()
            continue
        s = tok.group(1)
        i = 0
        b = bytearray()
        while i < len(s):
            ch = s[i]
            if ch != "\\":
                b += ch.encode("utf-8")
                i += 1
                continue
            n = s[i + 1]
            simple = {"r": 13, "n": 10, "t": 9, "\\": 92, '"': 34, "'": 39, "a": 7, "b": 8,
                      "f": 12, "v": 11, "?": 63}
            if n in simple:
                b.append(simple[n])
                i += 2
            elif n == "x":
                m = re.match(r"[0-9a-fA-F]+", s[i + 2:])
                b.append(int(m.group(0), 16) & 0xFF)
                i += 2 + len(m.group(0))
            elif n in "01234567":
                m = re.match(r"[0-7]{1,3}", s[i + 1:])
                b.append(int(m.group(0), 8) & 0xFF)
                i += 1 + len(m.group(0))
            else:
                raise ValueError("escape \\%s" % n)
        out += bytes(b)
    return out


def reject_table(path):
    """[(name, raw bytes, expected status)] from the unit test's bad_cases[]."""
    try:
        src = open(path, encoding="latin-1").read()
    except OSError:
        return []
    m = re.search(r"bad_cases\[\]\s*=\s*\{(.*?)\n\};", src, re.S)
    if not m:
        return []
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    cases = []
    for e in re.finditer(r'\{\s*"([^"]*)",\s*R\((.*?)\),\s*(\d{3})\s*\}', body, re.S):
        try:
            cases.append((e.group(1), c_literals(e.group(2)), int(e.group(3))))
        except (ValueError, AttributeError):
            pass
    return cases


def answer(sock, wait):
    """Read until close -> (first status or None, closed_ok, timed_out)."""
    sock.settimeout(wait)
    data = b""
    try:
        while True:
            c = sock.recv(65536)
            if not c:
                break
            data += c
            if len(data) > 1 << 20:
                break
    except socket.timeout:
        return _status(data), False, True
    except ConnectionResetError:
        pass
    return _status(data), True, False


def _status(data):
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
    return int(m.group(1)) if m else None


def attack(kind, rnd, table, port, wait):
    """One attack -> (kind, status or None, closed, timed_out, expected)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    expected = None
    try:
        if kind == "table":
            name, raw, expected = rnd.choice(table)
            kind = "table:" + name
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)  # a reject must not wait for more bytes
        elif kind == "random":
            s.sendall(bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 4096))))
            s.shutdown(socket.SHUT_WR)
        elif kind == "random_line":
            junk = bytes(rnd.choice(b"ABCDEFGHIJ /\t:;\x00\x7f\xff%?#") for _ in range(rnd.randint(1, 200)))
            s.sendall(junk + b"\r\nHost: a\r\n\r\n")
        elif kind == "huge_headers":
            try:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n")
                for i in range(2000):  # ~200 KiB, far past the 8 KiB limit
                    s.sendall(b"X-Pad-%d: %s\r\n" % (i, b"v" * 90))
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif kind == "many_headers":
            req = b"GET /health HTTP/1.1\r\nHost: a\r\n" + b"".join(
                b"X-%d: 1\r\n" % i for i in range(300)) + b"\r\n"
            s.sendall(req)
        elif kind == "endless_chunked":
            s.sendall(b"POST /users HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            try:
                chunk = b"4000\r\n" + b"a" * 0x4000 + b"\r\n"
                for _ in range(200):  # 3.2 MiB, past the 1 MiB body limit
                    s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif kind == "half_closed":
            req = b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
            s.sendall(req[:rnd.randint(1, len(req) - 1)])
            s.shutdown(socket.SHUT_WR)
        elif kind == "huge_target":
            s.sendall(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        elif kind == "bad_chunk":
            s.sendall(b"POST /users HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + rnd.choice([b"0x10\r\n", b"-1\r\n", b"zz\r\n", b"fffffffffffffffff\r\n",
                                    b"5\r\nhelloXX"]))
            s.shutdown(socket.SHUT_WR)
        st, closed, timed_out = answer(s, wait)
        return kind, st, closed, timed_out, expected
    finally:
        s.close()


def verdict(st, closed, timed_out, expected):
    if timed_out:
        return "timeout"
    if st is None:
        return None if closed else "no_answer"
    if expected is not None:
        return None if st == expected else "status_%d_want_%d" % (st, expected)
    if 400 <= st < 500:
        return None
    return "status_%d" % st


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--seed", type=int, default=os.getpid())
    ap.add_argument("--table", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                    "..", "..", "tests", "unit", "test_http_parser.c"))
    ap.add_argument("--wait", type=float, default=8)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    table = reject_table(args.table)
    kinds = ["random", "random_line", "huge_headers", "many_headers", "endless_chunked",
             "half_closed", "huge_target", "bad_chunk"] + (["table"] * 4 if table else [])
    counts, fails, samples = {}, {}, []
    stop = time.monotonic() + args.duration
    n = 0
    while time.monotonic() < stop:
        kind = rnd.choice(kinds)
        try:
            k, st, closed, timed_out, expected = attack(kind, rnd, table, args.port, args.wait)
        except OSError as e:
            k, st, closed, timed_out, expected = kind, None, False, False, None
            v = "connect:%s" % type(e).__name__
        else:
            v = verdict(st, closed, timed_out, expected)
        n += 1
        key = k.split(":")[0]
        counts[key] = counts.get(key, 0) + 1
        if v:
            fails[v] = fails.get(v, 0) + 1
            if len(samples) < 10:
                samples.append("%s -> %s" % (k, v))
    json.dump({"attacks": n, "table_cases": len(table), "kinds": counts,
               "failures": sum(fails.values()), "fail": fails, "samples": samples}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
