#!/usr/bin/env python3
"""services.py: a private PostgreSQL and Redis for the destructive torture cases.

The devenv's instances are shared by every engineer's test runs, so the cases
that stop PostgreSQL or kill Redis get their own: a cluster under
$TENK_TORTURE_DIR (default /tmp/tenk-torture-<hash of $TENK_BUILD>) on port
24000 + (that hash % 400), below the ephemeral port range, (kept between runs, schema from migrations/ applied
once), and a Redis on 63000 + the same offset.
PostgreSQL refuses to run as root: as root, both run as the devenv's user
(tenkdev), like scripts/devenv does.

    services.py up | down       (also used as a module: Services().up())
"""
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEV_USER = "tenkdev"


def pg_bin():
    ds = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    if not ds:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql")
    return ds[-1]


def _port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class Services:
    def __init__(self, base=None, pg_port=None, redis_port=None):
        # one set per build directory, so that runs from different builds (two engineers'
        # scripts/test, a torture run next to the integration suite) never stop each
        # other's database
        import hashlib
        key = hashlib.sha1(os.path.abspath(os.environ.get("TENK_BUILD", ".")).encode()).hexdigest()[:8]
        off = int(key, 16) % 400
        self.base = base or os.environ.get("TENK_TORTURE_DIR", "/tmp/tenk-torture-%s" % key)
        # below the kernel's ephemeral range (32768..60999 here): the suite's own client
        # sockets must never hold the port a restarted PostgreSQL wants back
        self.pg_port = int(pg_port or os.environ.get("TENK_TORTURE_PG_PORT", 24000 + off))
        self.redis_port = int(redis_port or os.environ.get("TENK_TORTURE_REDIS_PORT", 63000 + off))
        self.pgdata = os.path.join(self.base, "pg")
        self.run = os.path.join(self.base, "run")
        self.conninfo = "host=%s port=%d dbname=tenk user=tenk" % (self.run, self.pg_port)
        self.redis_addr = "127.0.0.1:%d" % self.redis_port
        self.redis_proc = None

    # as the devenv user when root
    def _as_dev(self, args, **kw):
        if os.getuid() == 0:
            args = ["setpriv", "--reuid=" + DEV_USER, "--regid=" + DEV_USER, "--init-groups", "--"] + args
        return subprocess.run(args, capture_output=True, text=True, **kw)

    def _chown(self, path):
        if os.getuid() == 0:
            pw = pwd.getpwnam(DEV_USER)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _psql(self, sql=None, user="tenk", db="tenk", f=None):
        args = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", self.run, "-p", str(self.pg_port),
                "-U", user, "-d", db]
        args += ["-f", f] if f else ["-c", sql]
        r = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, PGOPTIONS="-c client_min_messages=warning"))
        if r.returncode != 0:
            raise RuntimeError("psql: %s" % r.stderr)
        return r.stdout.strip()

    def up(self):
        for d in (self.base, self.run):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
            self._chown(d)
        fresh = not os.path.exists(os.path.join(self.pgdata, "PG_VERSION"))
        if fresh:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            os.makedirs(self.pgdata)
            self._chown(self.pgdata)
            r = self._as_dev([pg_bin() + "/initdb", "-D", self.pgdata, "-U", "postgres", "--auth=trust",
                              "-E", "UTF8", "--locale=C.UTF-8"])
            if r.returncode != 0:
                raise RuntimeError("initdb failed: %s" % r.stderr)
            with open(os.path.join(self.pgdata, "postgresql.conf"), "a") as f:
                f.write("\n# tenk torture\nlisten_addresses = '127.0.0.1'\nport = %d\n"
                        "unix_socket_directories = '%s'\nmax_connections = 200\nfsync = off\n"
                        "synchronous_commit = off\nlog_min_messages = warning\n" % (self.pg_port, self.run))
        self.pg_start()
        if fresh or self._psql("select 1 from pg_database where datname='tenk'", user="postgres", db="postgres") != "1":
            self._psql("create role tenk login", user="postgres", db="postgres")
            self._psql("create database tenk owner tenk", user="postgres", db="postgres")
            for f in sorted(glob.glob(os.path.join(SRC, "migrations", "*.sql"))):
                self._psql(f=f)
        self.redis_start()
        return self

    def pg_start(self):
        # the port on the command line wins over the one written at initdb time
        r = self._as_dev([pg_bin() + "/pg_ctl", "-D", self.pgdata, "-l", os.path.join(self.base, "pg.log"),
                          "-o", "-p %d" % self.pg_port, "-w", "-t", "60", "start"])
        if r.returncode != 0 and "another server might be running" not in r.stderr:
            raise RuntimeError("pg_ctl start failed: %s %s" % (r.stdout, r.stderr))

    def pg_stop(self, mode="fast"):
        self._as_dev([pg_bin() + "/pg_ctl", "-D", self.pgdata, "-m", mode, "-w", "stop"])

    def redis_start(self):
        if _port_open(self.redis_port):
            return
        args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", "",
                "--appendonly", "no", "--dir", self.base, "--logfile", os.path.join(self.base, "redis.log")]
        if os.getuid() == 0:
            args = ["setpriv", "--reuid=" + DEV_USER, "--regid=" + DEV_USER, "--init-groups", "--"] + args
        self.redis_proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True)
        deadline = time.monotonic() + 10
        while not _port_open(self.redis_port):
            if time.monotonic() > deadline or self.redis_proc.poll() is not None:
                raise RuntimeError("redis-server did not start on %d" % self.redis_port)
            time.sleep(0.02)

    def redis_kill(self):
        """kill -9 the Redis we started (the pid of our own child, never by name)."""
        if self.redis_proc is not None and self.redis_proc.poll() is None:
            self.redis_proc.kill()
            self.redis_proc.wait(5)
        self.redis_proc = None

    def down(self):
        self.redis_kill()
        self.pg_stop()


if __name__ == "__main__":
    s = Services()
    if sys.argv[1:] == ["up"]:
        s.up()
        print("TENK_DB='%s'\nTENK_REDIS='%s'" % (s.conninfo, s.redis_addr))
    elif sys.argv[1:] == ["down"]:
        s.pg_stop()
    else:
        sys.exit("usage: services.py up|down")
