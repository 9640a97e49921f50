#!/usr/bin/env bash
# test_devenv.sh: the replicated devenv, end to end, in a throw-away TENK_VAR_DIR with ports of
# its own (the devenv scripts/test already runs is not touched): `scripts/devenv up --replicas 2
# --pgbouncer --redis-replicas 2 --sentinels 3`, replication to both replicas through slots,
# PgBouncer in transaction pooling, Redis replication, the Sentinels' view, `promote 1` found by
# TENK_DB_PRIMARY_MULTI, `redis-failover`, and `down` leaving no process behind. Run once by
# scripts/test (it tests the scripts, not a build). Needs root or the devenv user's rights.
#
# Prints "ok - NAME" / "not ok - NAME" per check, "# ..." notes with the timings, and ends with
# `N passed, N failed`; exits 1 on any failure.
#   TENK_DEVENV_TEST_PG_PORT     its primary (default 61329); PgBouncer +1, replicas +2 and +3
#   TENK_DEVENV_TEST_REDIS_PORT  its Redis (default 61799); replicas +1 and +2, Sentinels +5..+7
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
PASSED=0 FAILED=0
PG=${TENK_DEVENV_TEST_PG_PORT:-61329}
RD=${TENK_DEVENV_TEST_REDIS_PORT:-61799}
PORTS="$PG $((PG + 1)) $((PG + 2)) $((PG + 3)) $RD $((RD + 1)) $((RD + 2)) $((RD + 5)) $((RD + 6)) $((RD + 7))"

ok() { PASSED=$((PASSED + 1)); echo "ok - $1"; }
nok() { FAILED=$((FAILED + 1)); echo "not ok - $1"; shift; [ $# -eq 0 ] || printf '    %s\n' "$@"; }
check() { # check NAME COMMAND...: one counted check, passes when COMMAND succeeds
    local name=$1 _o; shift
    if _o=$("$@" 2>&1); then ok "$name"; else nok "$name" "${_o:0:2000}"; fi
}
# eventually SECONDS COMMAND...: COMMAND succeeds within SECONDS (polled every 0.1 s).
eventually() {
    local secs=$1 i; shift
    for ((i = 0; i < secs * 10; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    "$@" # once more, with its output, for the report
}
is() { [ "$1" = "$2" ] || { echo "got '$1', want '$2'"; return 1; }; }
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
finish() {
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" = 0 ]
    exit
}

VAR=$(mktemp -d /tmp/tenk-devenv-test.XXXXXX)
chmod 755 "$VAR"
export TENK_VAR_DIR=$VAR TENK_PG_PORT=$PG TENK_REDIS_PORT=$RD
unset TENK_PGBOUNCER_PORT TENK_PG_REPLICA_PORT TENK_REDIS_REPLICA_PORT TENK_SENTINEL_PORT
dv() { timeout 180 "$SRC/scripts/devenv" "$@"; }

# Processes of this devenv: whatever runs in, or names, its var dir.
ours() {
    local p
    for p in /proc/[0-9]*; do
        case "$(readlink "$p/cwd" 2>/dev/null)" in "$VAR"*) echo "${p#/proc/}"; continue ;; esac
        { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null | grep -qF "$VAR" && echo "${p#/proc/}"
    done
}
none_left() {
    local pids p
    pids=$(ours)
    [ -z "$pids" ] || { echo "still running:"; for p in $pids; do tr '\0' ' ' < "/proc/$p/cmdline"; echo; done; return 1; }
    for p in $PORTS; do port_free "$p" || { echo "port $p still answers"; return 1; }; done
}
cleanup() {
    local p
    dv down >/dev/null 2>&1
    for p in $(ours); do kill -KILL "$p" 2>/dev/null; done # only what this test started
    rm -rf "$VAR"
}
trap cleanup EXIT
trap 'exit 1' TERM INT # so that cleanup runs under timeout(1) and Ctrl-C too

for p in $PORTS; do
    port_free "$p" || { nok "port $p is free" "set TENK_DEVENV_TEST_PG_PORT / TENK_DEVENV_TEST_REDIS_PORT"; finish; }
done

# --- 1. up ----------------------------------------------------------------------------------
t=$(date +%s%N)
if out=$(dv up --replicas 2 --pgbouncer --redis-replicas 2 --sentinels 3 2>&1); then
    ok "up --replicas 2 --pgbouncer --redis-replicas 2 --sentinels 3"
else
    nok "up --replicas 2 --pgbouncer --redis-replicas 2 --sentinels 3" "${out: -3000}"
    finish
fi
echo "# up with 2 PostgreSQL replicas, PgBouncer, 2 Redis replicas, 3 Sentinels: $(ms_since "$t") ms"
set -a
. "$VAR/devenv.env"
set +a
RUN="$VAR/run"
check "devenv.env names every node" is "$(grep -oE '^TENK_[A-Z0-9_]+' "$VAR/devenv.env" | sort | paste -sd' ' -)" \
    "TENK_DB TENK_DB_PGBOUNCER TENK_DB_PRIMARY_MULTI TENK_DB_REPLICA_1 TENK_DB_REPLICA_2 TENK_PG_PORT TENK_REDIS TENK_REDIS_PORT TENK_REDIS_REPLICA_1 TENK_REDIS_REPLICA_2 TENK_REDIS_SENTINELS TENK_REDIS_SOCKET"
check "TENK_DB_PRIMARY_MULTI names the primary and both replicas, read-write" is "$TENK_DB_PRIMARY_MULTI" \
    "host=$RUN,$RUN,$RUN port=$PG,$((PG + 2)),$((PG + 3)) dbname=tenk user=tenk target_session_attrs=read-write"
check "TENK_REDIS_SENTINELS lists 3 Sentinels" is "$TENK_REDIS_SENTINELS" \
    "127.0.0.1:$((RD + 5)),127.0.0.1:$((RD + 6)),127.0.0.1:$((RD + 7))"
cp "$VAR/devenv.env" "$VAR/devenv.env.first"
t=$(date +%s%N)
out=$(dv up --replicas 2 --pgbouncer --redis-replicas 2 --sentinels 3 2>&1)
check "up again with the same options starts nothing" \
    eval '! grep -E "starting|pg_basebackup|initdb" <<<"$out" && cmp "$VAR/devenv.env" "$VAR/devenv.env.first"'
echo "# up again (no-op): $(ms_since "$t") ms"
check "status: every node runs, with its role" eval 'st=$(dv status) && echo "$st" &&
    [ "$(grep -c ": running" <<<"$st")" = 10 ] && grep -q "replica 2: running (port $((PG + 3)), replica)" <<<"$st" &&
    grep -q "sentinel 3: running (port $((RD + 7)), master tenk at 127.0.0.1:$RD)" <<<"$st"'
check "every node listens on loopback or a unix socket only" eval \
    '! ss -Hltnp | grep -E "users:.*pid=($(ours | paste -sd"|" -))," | grep -vE " (127\.0\.0\.1|\[::1\]):[0-9]+ "'

# --- 2. PostgreSQL: replication, slots, PgBouncer ---------------------------------------------
psql_q() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
token="row-$RANDOM-$$"
check "a row inserted on the primary" psql_q "$TENK_DB" -c "create table devenv_probe (id int primary key, v text)" \
    -c "insert into devenv_probe values (1, '$token')"
t=$(date +%s%N)
check "it appears on replica 1" eventually 10 eval 'is "$(psql_q "$TENK_DB_REPLICA_1" -c "select v from devenv_probe where id = 1" 2>&1)" "$token"'
check "it appears on replica 2" eventually 10 eval 'is "$(psql_q "$TENK_DB_REPLICA_2" -c "select v from devenv_probe where id = 1" 2>&1)" "$token"'
echo "# replication lag seen: $(ms_since "$t") ms"
check "replica 1 refuses writes (hot standby)" eval \
    '! out=$(psql_q "$TENK_DB_REPLICA_1" -c "insert into devenv_probe values (2, 2)" 2>&1) && grep -q "read-only transaction" <<<"$out"'
check "pg_stat_replication: 2 replicas streaming through their slots" is "$(psql_q "$TENK_DB" -U postgres -c \
    "select string_agg(r.application_name || ':' || r.state || ':' || s.slot_name, ' ' order by r.application_name)
     from pg_stat_replication r join pg_replication_slots s on s.active_pid = r.pid where s.slot_type = 'physical'")" \
    "replica_1:streaming:replica_1 replica_2:streaming:replica_2"
check "the primary loads pg_stat_statements" is "$(psql_q "$TENK_DB" -c "select count(*) from pg_extension where extname = 'pg_stat_statements'")" 1
check "a query through PgBouncer" is "$(psql_q "$TENK_DB_PGBOUNCER" -c "select v from devenv_probe where id = 1")" "$token"
check "PgBouncer pools tenk in transaction mode (SHOW POOLS)" eval \
    'psql_q "host=$RUN port=$((PG + 1)) dbname=pgbouncer user=postgres" -c "show pools" | grep -E "^tenk\|tenk\|.*\|transaction$"'
check "psql helper reaches replica 2" is "$(dv psql replica 2 -XAtc "select pg_is_in_recovery(), current_setting('port')")" "t|$((PG + 3))"

# --- 3. Redis: replication, Sentinels --------------------------------------------------------
rcli() { redis-cli -h 127.0.0.1 "$@" 2>&1 | tr -d '\r'; }
check "a key set on the Redis master" is "$(rcli -p "$RD" set devenv:probe "$token")" OK
check "it appears on Redis replica 1" eventually 10 eval 'is "$(rcli -p "${TENK_REDIS_REPLICA_1##*:}" get devenv:probe)" "$token"'
check "it appears on Redis replica 2" eventually 10 eval 'is "$(rcli -p "${TENK_REDIS_REPLICA_2##*:}" get devenv:probe)" "$token"'
check "Redis replica 1 is read-only" eval 'rcli -p "${TENK_REDIS_REPLICA_1##*:}" set devenv:probe x | grep -q READONLY'
sentinels_say() { # sentinels_say HOST:PORT: every Sentinel names it as master tenk
    local s
    for s in ${TENK_REDIS_SENTINELS//,/ }; do
        is "$(rcli -p "${s##*:}" sentinel get-master-addr-by-name tenk | paste -sd: -)" "$1" || return 1
    done
}
check "all 3 Sentinels name the master" sentinels_say "127.0.0.1:$RD"
check "each Sentinel sees 2 replicas and 2 other Sentinels" eval 'for s in ${TENK_REDIS_SENTINELS//,/ }; do
    rcli -p "${s##*:}" sentinel master tenk | paste -sd" " - | grep -E "num-slaves 2 .*num-other-sentinels 2 .*quorum 2 " || exit 1; done'

# --- 4. promote 1 ----------------------------------------------------------------------------
t=$(date +%s%N)
check "promote 1" dv promote 1
echo "# promote 1 (stop the primary, promote, replica 2 follows): $(ms_since "$t") ms"
check "replica 1 is out of recovery" is "$(psql_q "$TENK_DB_REPLICA_1" -c "select pg_is_in_recovery()")" f
check "TENK_DB_PRIMARY_MULTI reaches replica 1, read-write" is "$(psql_q "$TENK_DB_PRIMARY_MULTI" -c \
    "insert into devenv_probe values (3, 'after') returning current_setting('port'), pg_is_in_recovery()")" "$((PG + 2))|f"
check "replica 2 follows the new primary" eventually 10 eval \
    'is "$(psql_q "$TENK_DB_REPLICA_2" -c "select v from devenv_probe where id = 3" 2>&1)" after'
check "PgBouncer follows the new primary" is "$(psql_q "$TENK_DB_PGBOUNCER" -c "select current_setting('port')")" "$((PG + 2))"
check "devenv.env: TENK_DB names the new primary" grep -qx "TENK_DB='host=$RUN port=$((PG + 2)) dbname=tenk user=tenk'" "$VAR/devenv.env"

# --- 5. redis-failover -----------------------------------------------------------------------
t=$(date +%s%N)
new=$(dv redis-failover 2>/dev/null)
check "redis-failover moves the master" eval '[ -n "$new" ] && [ "$new" != "127.0.0.1:$RD" ] && echo "$new"'
echo "# redis-failover (until all Sentinels agree): $(ms_since "$t") ms"
check "all 3 Sentinels agree on the new master" sentinels_say "$new"
check "the new master takes writes" is "$(rcli -p "${new##*:}" set devenv:probe after)" OK

# --- 6. down ---------------------------------------------------------------------------------
t=$(date +%s%N)
check "down" dv down
echo "# down: $(ms_since "$t") ms"
check "down leaves no process of this devenv and no port in use" none_left
finish
