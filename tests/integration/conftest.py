"""conftest.py: pytest glue for tenk's integration tests (devenv, build, markers, fixtures).

Test modules read TENK_DB, TENK_REDIS and TENK_BUILD when they are imported, so the devenv is
brought up and its settings exported in pytest_sessionstart, before collection imports them;
this file imports tenkharness only inside hooks and fixtures for the same reason.
Options: --build DIR (TENK_BUILD), --no-devenv (database tests skip), and TENK_TEST_LABEL
("[asan] ") names the build in failure headers and in the result lines.
"""
import os
import re
import shlex
import signal
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.path.dirname(os.path.dirname(HERE))

# Marked by file so that the test files stay plain: -m "not slow" is the quick run.
TORTURE_FILES = {"test_torture.py"}
SLOW_FILES = {"test_torture.py", "test_broker_fairness.py", "test_stack_depth.py", "test_heavy.py"}
# Single tests of other files that take over 20 s in a release build ("test_x.py::test_y"; none on
# 2026-12-06 by --durations=30: the slowest outside the files above, the dashboard's, took 10-15 s).
SLOW_TESTS = set()


def pytest_addoption(parser):
    g = parser.getgroup("tenk")
    g.addoption("--build", metavar="DIR", help="build directory with tenkd and tenkctl "
                "(sets TENK_BUILD; default $TENK_BUILD, else build/release)")
    g.addoption("--no-devenv", action="store_true",
                help="do not run scripts/devenv up; tests that need TENK_DB/TENK_REDIS skip")


def _label():
    return os.environ.get("TENK_TEST_LABEL", "")


def _devenv_file():
    return os.path.join(os.environ.get("TENK_VAR_DIR") or os.path.join(SRCDIR, "var"), "devenv.env")


def _load_env_file(path):
    """Export var/devenv.env's KEY='value' lines, without overriding what the caller set."""
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            words = shlex.split(line)
            if len(words) == 1 and "=" in words[0]:
                k, v = words[0].split("=", 1)
                os.environ.setdefault(k, v)


def _interrupt(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def pytest_configure(config):
    # `timeout` (scripts/test) sends SIGTERM: stop the running test's tenkd and still print the
    # counts so far, as for ^C
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    build = config.getoption("build")
    if build:
        os.environ["TENK_BUILD"] = os.path.abspath(build)
    elif "TENK_BUILD" not in os.environ and "TENKD" not in os.environ:
        default = os.path.join(SRCDIR, "build", "release")
        if os.path.exists(os.path.join(default, "tenkd")):
            os.environ["TENK_BUILD"] = default


def pytest_sessionstart(session):
    config = session.config
    if config.getoption("no_devenv") or config.getoption("collectonly"):
        return
    if os.environ.get("TENK_DB") and os.environ.get("TENK_REDIS"):
        return
    # idempotent: starts what is down (initdb and schema on first use), leaves the rest running
    r = subprocess.run([os.path.join(SRCDIR, "scripts", "devenv"), "up"], cwd=SRCDIR,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    if r.returncode != 0:
        raise pytest.UsageError("scripts/devenv up failed (exit %d; --no-devenv runs without it):\n%s"
                                % (r.returncode, r.stdout[-3000:]))
    _load_env_file(_devenv_file())


def pytest_collection_modifyitems(config, items):
    for item in items:
        base = os.path.basename(item.nodeid.split("::")[0])
        if base in TORTURE_FILES:
            item.add_marker(pytest.mark.torture)
        if base in SLOW_FILES or "%s::%s" % (base, item.name) in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    label = _label().strip()
    if label and rep.location:  # the failure header ("___ [asan] test_x ___") names the build
        path, line, domain = rep.location
        rep.location = (path, line, "%s %s" % (label, domain))


def pytest_terminal_summary(terminalreporter):
    """One line per failure, error and skip, with the build label (logs mix builds)."""
    label = _label()
    lines = []
    for word in ("failed", "error", "skipped"):
        for rep in terminalreporter.stats.get(word, []):
            why = ""
            if word == "skipped" and isinstance(rep.longrepr, tuple):
                why = ": " + re.sub(r"^(Skipped|tenkharness\.Skip): ", "", str(rep.longrepr[2]))
            elif word == "error":
                why = " (in %s)" % rep.when
            lines.append("%s%s %s%s" % (label, word.upper(), rep.nodeid, why))
    if lines:
        terminalreporter.section("tenk %s" % (label.strip() or "results"))
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def devenv():
    """The devenv's settings (TENK_DB, TENK_REDIS, ...); skips when there is no database."""
    if not os.environ.get("TENK_DB"):
        pytest.skip("TENK_DB not set (scripts/devenv up, or run without --no-devenv)")
    return {k: v for k, v in os.environ.items() if k.startswith("TENK_")}


@pytest.fixture
def tenkd():
    """Factory: tenkd(workers=2, conf=..., admin=True, ...) starts a Tenkd (same arguments as
    tenkharness.Tenkd) and returns it; every one started is stopped at teardown, pass or fail
    (a sanitizer report in its log then fails the test)."""
    from tenkharness import Tenkd

    started = []

    def start(**kwargs):
        t = Tenkd(**kwargs)
        started.append(t)
        return t.start()

    yield start
    errors = []
    for t in reversed(started):
        try:
            t.stop()
        except Exception as e:  # stop them all, then report the first
            errors.append(e)
    if errors:
        raise errors[0]
