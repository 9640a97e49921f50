#!/usr/bin/env python3
"""run.py: runs tenk's integration tests (every test_* function of tests/integration/test_*.py).

Usage: run.py [FILE_OR_DIR ...] [-k SUBSTRING]
Prints one line per test and ends with `N passed, N failed` (`, N skipped` if any).
Exit status 1 if any test failed.
"""
import glob
import importlib.util
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tenkharness  # noqa: E402


def load(path):
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv):
    paths, pattern = [], None
    i = 0
    while i < len(argv):
        if argv[i] == "-k":
            pattern = argv[i + 1]
            i += 2
            continue
        paths.append(argv[i])
        i += 1
    if not paths:
        paths = [HERE]
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += sorted(glob.glob(os.path.join(p, "test_*.py")))
        else:
            files.append(p)
    label = os.environ.get("TENK_TEST_LABEL", "")
    passed = failed = skipped = 0
    for f in files:
        try:
            mod = load(f)
        except Exception:
            failed += 1
            print("FAIL %s%s (import)\n%s" % (label, os.path.basename(f), traceback.format_exc()), flush=True)
            continue
        tests = [(n, getattr(mod, n)) for n in dir(mod) if n.startswith("test_") and callable(getattr(mod, n))]
        tests.sort(key=lambda t: t[1].__code__.co_firstlineno)
        for name, fn in tests:
            full = "%s%s::%s" % (label, os.path.basename(f), name)
            if pattern and pattern not in full:
                continue
            t0 = time.monotonic()
            try:
                fn()
            except tenkharness.Skip as e:
                skipped += 1
                print("skip %s (%s)" % (full, e), flush=True)
                continue
            except Exception:
                failed += 1
                print("FAIL %s (%.1fs)\n%s" % (full, time.monotonic() - t0, traceback.format_exc()), flush=True)
                continue
            passed += 1
            print("ok   %s (%.1fs)" % (full, time.monotonic() - t0), flush=True)
    line = "%d passed, %d failed" % (passed, failed)
    if skipped:
        line += ", %d skipped" % skipped
    print(line, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
