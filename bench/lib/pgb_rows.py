"""pgb_rows.py: whether concurrent /queries?queries=20 answers hold the database's own rows.

Usage: set -a; . var/devenv.env; TENK_BUILD=build/release python3 bench/lib/pgb_rows.py CONNINFO "EXTRA CONF" [CLIENTS]
Starts a tenkd (2 workers, no Redis) on CONNINFO with the extra configuration (\n for new
lines, e.g. "[db]\nstatements = unnamed\n"), snapshots table world with psql, then CLIENTS
(64) threads each make 15 requests; /queries answers the id it asked for with the
randomNumber of the row PostgreSQL returned, so a row that differs from the snapshot is an
answer that belonged to another query. Prints "rows N crossed M failed_requests F [first few]"
and, when M + F > 0, the server's log. Used for the README's PgBouncer finding."""
import sys, os, json, random, threading
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "integration"))
os.environ.setdefault("TENK_BUILD", "build/release")
from tenkharness import Tenkd, psql
db, conf = sys.argv[1], sys.argv[2].replace("\\n", "\n")
nthreads = int(sys.argv[3]) if len(sys.argv) > 3 else 64
world = dict(tuple(map(int, l.split("|"))) for l in psql("select id, randomnumber from world").splitlines())
bad = []; n = [0]; lock = threading.Lock()
with Tenkd(workers=2, db=db, redis="", conf="[admin]\nlisten =\n" + conf) as t:
    def client(seed):
        for _ in range(15):
            st, _, body = t.request("GET", "/queries?queries=20")
            if st != 200:
                with lock: bad.append(("status", st)); continue
            for o in json.loads(body):
                with lock:
                    n[0] += 1
                    if world[o["id"]] != o["randomNumber"]: bad.append(o)
    th = [threading.Thread(target=client, args=(k,)) for k in range(nthreads)]
    [x.start() for x in th]; [x.join() for x in th]
failed = [b for b in bad if isinstance(b, tuple)]
crossed = [b for b in bad if not isinstance(b, tuple)]
print("rows", n[0], "crossed", len(crossed), "failed_requests", len(failed), crossed[:3], failed[:3], flush=True)
if bad:
    print("\n".join(l for l in t.log().splitlines() if "[info]" not in l and "long_run" not in l and "root" not in l)[-3000:])
