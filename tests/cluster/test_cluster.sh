#!/usr/bin/env bash
# test_cluster.sh: scripts/cluster's short form, as root: `up --app 2 --quick`, the status table,
# one request through HAProxy to each app host, a rolling reload (SIGHUP, lame duck) under a steady
# load with 0 failures, `down` leaving nothing behind, and a failed `up` (a tenkd that refuses its
# configuration) leaving nothing behind either. Run once by scripts/test with the release build
# (TENK_BUILD); the full chaos suite is `scripts/cluster chaos`.
#
# Prints "ok - NAME" / "not ok - NAME" per check, "# ..." notes, and ends with `N passed, N
# failed`; exits 1 on any failure.
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
CL="$SRC/scripts/cluster"
C="${TENK_VAR_DIR:-$SRC/var}/cluster"
PASSED=0 FAILED=0

ok() { PASSED=$((PASSED + 1)); echo "ok - $1"; }
nok() { FAILED=$((FAILED + 1)); echo "not ok - $1"; shift; [ $# -eq 0 ] || printf '    %s\n' "$@"; }
check() { # check NAME COMMAND...: one counted check, passes when COMMAND succeeds
    local name=$1 _o; shift
    if _o=$("$@" 2>&1); then ok "$name"; grep '^# ' <<<"$_o" || true; else nok "$name" "${_o:0:2000}"; fi
}
finish() {
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" = 0 ]
    exit
}

# nothing of a cluster is left: namespaces, links, state, shared memory, processes
left_behind() {
    local bad=""
    bad+=$(ip netns list | grep -E '^tk-' | cut -d' ' -f1 | paste -sd' ')
    bad+=$(ip -o link show | grep -oE 'tk-(br0|v-[a-z0-9]+)' | paste -sd' ')
    [ ! -e "$C" ] || bad+=" $C"
    bad+=$(ls /dev/shm/tenk-tkc-* 2>/dev/null | paste -sd' ')
    bad+=$(ps -eo pid=,args= | grep -F "$C" | grep -v grep | paste -sd' ')
    [ -z "${bad// /}" ] || { echo "left behind: $bad"; return 1; }
}

[ "$(id -u)" = 0 ] || { echo "skip - scripts/cluster needs root (network namespaces)"; finish; }
if ip netns list | grep -qE '^tk-' || [ -e "$C" ]; then
    nok "no cluster is up before the test" "$(ip netns list | grep -E '^tk-' | paste -sd' ') $C"
    finish
fi
trap '"$CL" down >/dev/null 2>&1' EXIT

t0=$SECONDS
check "up --app 2 --quick" "$CL" up --app 2 --quick
echo "# up took $((SECONDS - t0)) s"

status_ok() {
    local j
    j=$("$CL" status --json) || return 1
    /usr/bin/python3 - "$j" <<'PY'
import json, sys
rows = {r["host"]: r for r in json.loads(sys.argv[1])}
want = {"pg1": "postgresql primary", "pg2": "postgresql replica", "pg3": "postgresql replica",
        "redis1": "redis master", "redis2": "redis replica", "redis3": "redis replica", "lb": "haproxy"}
bad = [(h, rows.get(h, {}).get("role"), r) for h, r in want.items() if rows.get(h, {}).get("role") != r]
bad += [(h, rows[h]["health"]) for h in ("app1", "app2") if rows[h]["health"] != "/health 200"]
if rows["lb"]["health"] != "up: app1=UP app2=UP":
    bad.append(("lb", rows["lb"]["health"]))
if len(rows) != 10 or any(not r["address"].startswith("10.231.7.") for r in rows.values()):
    bad.append(("hosts", sorted(rows)))
print(bad)
sys.exit(1 if bad else 0)
PY
}
check "status --json: every host with its role and health" status_ok

# one request through HAProxy to each app host (HAProxy names the server that answered)
each_host() {
    local seen="" i h
    for ((i = 0; i < 20; i++)); do
        h=$(ip netns exec tk-client curl -s -o /dev/null -D - -m 5 http://10.231.7.10/users/7 |
            tr -d '\r' | awk 'NR == 1 { st = $2 } tolower($1) == "x-tenk-host:" { print st, $2 }')
        case $h in "200 app1" | "200 app2") ;; *) echo "request $i: '$h'"; return 1 ;; esac
        [[ " $seen " == *" ${h#200 } "* ]] || seen="$seen ${h#200 }"
        [ "$(wc -w <<<"$seen")" = 2 ] && { echo "# served by:$seen after $((i + 1)) requests"; return 0; }
    done
    echo "only$seen answered"
    return 1
}
check "one request through HAProxy to each app host" each_host

# a rolling reload of both app hosts under a steady load: 0 failures
reload_under_load() {
    local out="$C/test-load.txt" r lp
    ip netns exec tk-client /usr/bin/python3 "$SRC/scripts/cluster.d/load.py" run http://10.231.7.10:80 14 100 8 10 "$out" &
    lp=$!
    sleep 1 # the load runs before the reload starts
    "$CL" reload-all || { wait $lp; return 1; }
    wait $lp
    r=$(/usr/bin/python3 "$SRC/scripts/cluster.d/load.py" report "$out")
    echo "# rolling reload under load: $r"
    /usr/bin/python3 -c 'import json,sys; r = json.loads(sys.argv[1]); sys.exit(0 if r["requests"] > 500 and r["ok"] == r["requests"] else 1)' "$r"
}
check "rolling reload (SIGHUP, lame duck) under load: 0 failures" reload_under_load
grep -h "lame duck before the reload" "$C"/app*/error.log | head -2 | sed 's/^/# /'

check "down" "$CL" down
check "down leaves nothing behind" left_behind

# a failed up removes what it made (a tenkd that refuses every configuration)
if TENKD=/bin/false "$CL" up --app 1 --quick >/dev/null 2>&1; then
    nok "a failed up fails" "up with TENKD=/bin/false succeeded"
else
    ok "a failed up fails"
fi
check "a failed up leaves nothing behind" left_behind
trap - EXIT
finish
