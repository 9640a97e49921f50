"""test_tfb_counts: every TechEmpower query is executed. At 512 concurrent connections on /db,
/queries?queries=20 and /updates?queries=20, PostgreSQL's own counters (pg_stat_statements'
calls, pg_stat_user_tables.idx_scan on world) move by exactly requests x queries: no query is
joined to an identical one (the TechEmpower statements are not TK_DB_JOINABLE) and none is
run twice. The load is bounded: each connection makes a fixed number of requests."""
import asyncio

from tenkharness import Tenkd, need_db, psql, wait_until

CONNS = 512
PER_CONN = 2
SELECT_WORLD = "SELECT id, randomnumber FROM world WHERE id = $1"
UPDATE_WORLD = "UPDATE world SET randomnumber = u.rn FROM unnest($1::int[], $2::int[]) AS u(id, rn) WHERE world.id = u.id"
# time for the load itself: thousands of requests on a shared, busy 2-core machine
LOAD_TIMEOUT = 120


async def _client(port, path, n, statuses):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(n):
            writer.write(("GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path).encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
            await reader.readexactly(length)
            statuses.append(status)
    finally:
        writer.close()


def load(port, path, conns=CONNS, per_conn=PER_CONN):
    """conns keep-alive connections at once, per_conn requests each; the statuses seen."""
    statuses = []

    async def main():
        await asyncio.wait_for(asyncio.gather(*[_client(port, path, per_conn, statuses) for _ in range(conns)]),
                               LOAD_TIMEOUT)
    asyncio.run(main())
    return statuses


def calls(sql):
    return int(psql("select coalesce(sum(calls), 0) from pg_stat_statements where query = $q$%s$q$" % sql))


def idx_scan():
    return int(psql("select idx_scan from pg_stat_user_tables where relname = 'world'"))


def _server():
    # generous timeouts: a 503 or 504 would leave it unknown whether the request's queries ran
    return Tenkd(workers=2, redis="", conf="[admin]\nlisten =\n[db]\nacquire_timeout = 30s\nquery_timeout = 30s\n")


def _measure(path, per_request, check_idx=True, extra=None):
    need_db()
    c0, i0 = calls(SELECT_WORLD), idx_scan()
    e0 = calls(extra) if extra else 0
    t = _server().start()
    try:
        statuses = load(t.port, path)
    finally:
        t.stop()  # its backends exit, and flush their statistics
    ok = statuses.count(200)
    assert len(statuses) == CONNS * PER_CONN and ok == len(statuses), \
        (path, len(statuses), {s: statuses.count(s) for s in set(statuses)})
    want = ok * per_request
    # pg_stat_statements counts each execution when it ends, in shared memory: exact
    got = calls(SELECT_WORLD) - c0
    assert got == want, "%s: %d 200s x %d queries = %d, pg_stat_statements counted %d" % (path, ok, per_request, want, got)
    if extra:
        assert calls(extra) - e0 == ok, (path, calls(extra) - e0, ok)
    if check_idx:
        # idx_scan reaches the shared counters when a backend idles or exits: ours have exited.
        # (At least, not exactly: another test's server still running may flush its own scans
        # of world in the meantime; joined queries would leave it short, as they did.)
        wait_until(lambda: idx_scan() - i0 >= want, 15, "idx_scan on world to reach %d" % want)
    return want, got


def test_db_every_query_executed():
    _measure("/db", 1)


def test_queries20_every_query_executed():
    _measure("/queries?queries=20", 20)


def test_updates20_every_query_executed():
    # the UPDATE joins world by its index too, so idx_scan is not the SELECTs' alone: count calls
    _measure("/updates?queries=20", 20, check_idx=False, extra=UPDATE_WORLD)
