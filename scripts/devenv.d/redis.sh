# redis.sh: scripts/devenv's replicated Redis (sourced by it, uses its settings): replicas of the
# private Redis in var/redis-replica-K, Sentinels in var/sentinel-J watching it as master "tenk",
# and a forced failover. Every node listens on 127.0.0.1 only.

redis_replica_dir() { echo "$TK_VAR/redis-replica-$1"; }
sentinel_dir() { echo "$TK_VAR/sentinel-$1"; }
# The replicas and Sentinels created so far, by number.
redis_replicas() {
    local d
    for d in "$TK_VAR"/redis-replica-*; do if [ -f "$d/redis.conf" ]; then echo "${d##*-}"; fi; done | sort -n
}
sentinels() {
    local d
    for d in "$TK_VAR"/sentinel-*; do if [ -f "$d/sentinel.conf" ]; then echo "${d##*-}"; fi; done | sort -n
}
redis_replica_sock() { echo "$RUN_DIR/redis-replica-$1.sock"; }
redis_replica_port() { conf_value "$(redis_replica_dir "$1")/redis.conf" port; }
sentinel_port() { conf_value "$(sentinel_dir "$1")/sentinel.conf" port; }
rcli() { redis-cli "$@" 2>/dev/null | tr -d '\r'; }
redis_replica_running() { rcli -s "$(redis_replica_sock "$1")" ping | grep -q PONG; }
# A Sentinel is ours when the pid in our pid file is a Sentinel and its port answers.
sentinel_pid() {
    local pid
    pid=$(cat "$RUN_DIR/sentinel-$1.pid" 2>/dev/null) || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q sentinel && echo "$pid"
}
sentinel_running() { sentinel_pid "$1" >/dev/null && rcli -p "$(sentinel_port "$1")" ping | grep -q PONG; }
# info_field FIELD: a field of INFO output on stdin.
info_field() { sed -n "s/^$1://p"; }
redis_role() { # redis_role REDIS-CLI-ARGS...: "master" or "replica of HOST:PORT, link up|down"
    local info
    info=$(rcli "$@" info replication)
    case "$(info_field role <<<"$info")" in
    master) echo master ;;
    slave) echo "replica of $(info_field master_host <<<"$info"):$(info_field master_port <<<"$info"), link $(info_field master_link_status <<<"$info")" ;;
    *) echo "not answering" ;;
    esac
}
# sentinel_field PORT FIELD: one field of SENTINEL MASTER tenk on one Sentinel.
sentinel_field() { rcli -p "$1" sentinel master tenk | awk -v f="$2" 'NR % 2 == 1 && $0 == f { getline; print; exit }'; }
sentinel_master() { rcli -p "$1" sentinel get-master-addr-by-name tenk | paste -sd: -; }

redis_replica_up() {
    local k=$1 dir conf port
    dir=$(redis_replica_dir "$k")
    conf="$dir/redis.conf"
    # Written once: after a failover the Sentinels rewrite it (CONFIG REWRITE), and that stays.
    if [ ! -f "$conf" ]; then
        port=$((REDIS_REPLICA_PORT + k - 1))
        port_free "$port" || tk_die "port $port for Redis replica $k is taken: set TENK_REDIS_REPLICA_PORT"
        dev_mkdir "$dir"
        cat > "$conf" <<CONF
# written by scripts/devenv: replica $k of the devenv's Redis
bind 127.0.0.1
port $port
unixsocket $(redis_replica_sock "$k")
unixsocketperm 777
dir $dir
pidfile $RUN_DIR/redis-replica-$k.pid
logfile $TK_VAR/redis-replica-$k.log
daemonize yes
save ""
appendonly no
replicaof 127.0.0.1 $REDIS_PORT
replica-read-only yes
repl-diskless-sync-delay 0
CONF
        [ "$(id -u)" != 0 ] || chown "$DEV_USER:$DEV_USER" "$conf"
    fi
    redis_replica_running "$k" && return 0
    port=$(redis_replica_port "$k")
    port_free "$port" || tk_die "port $port of Redis replica $k is taken by something else"
    tk_say "starting Redis replica $k on port $port"
    as_dev redis-server "$conf"
    wait_for 10 "Redis replica $k to start" redis_replica_running "$k"
}

redis_replica_synced() { # a replica's link is up, or it is a master (after a failover)
    local role
    role=$(redis_role -s "$(redis_replica_sock "$1")")
    [ "$role" = master ] || [[ "$role" == *"link up" ]]
}

redis_replicas_up() {
    local k n=$1
    [ "$n" -gt 0 ] || [ -n "$(redis_replicas)" ] || return 0
    # The first full sync would otherwise wait 5 s for more replicas (runtime only: redis.conf
    # stays as plain `up` writes it).
    rcli -s "$RUN_DIR/redis.sock" config set repl-diskless-sync-delay 0 >/dev/null
    for k in $(seq 1 "$n") $(redis_replicas); do redis_replica_up "$k"; done
    for k in $(redis_replicas); do wait_for 30 "Redis replica $k to sync" redis_replica_synced "$k"; done
}

redis_replicas_down() {
    local k
    for k in $(redis_replicas); do
        redis_replica_running "$k" || continue
        tk_say "stopping Redis replica $k"
        rcli -s "$(redis_replica_sock "$k")" shutdown nosave >/dev/null || true
    done
}

sentinel_up() {
    local j=$1 dir conf port
    dir=$(sentinel_dir "$j")
    conf="$dir/sentinel.conf"
    # Sentinels rewrite their own config (ids, known replicas and peers, the current master).
    if [ ! -f "$conf" ]; then
        port=$((SENTINEL_PORT + j - 1))
        port_free "$port" || tk_die "port $port for Sentinel $j is taken: set TENK_SENTINEL_PORT"
        dev_mkdir "$dir"
        # Short timings for tests: down after 1 s, a failover may take 5 s before another starts.
        cat > "$conf" <<CONF
# written by scripts/devenv: Sentinel $j of the devenv's Redis (rewritten by the Sentinel)
bind 127.0.0.1
port $port
daemonize yes
pidfile $RUN_DIR/sentinel-$j.pid
logfile $TK_VAR/sentinel-$j.log
dir $dir
sentinel monitor tenk 127.0.0.1 $REDIS_PORT 1
sentinel down-after-milliseconds tenk 1000
sentinel failover-timeout tenk 5000
sentinel parallel-syncs tenk 1
CONF
        [ "$(id -u)" != 0 ] || chown "$DEV_USER:$DEV_USER" "$conf"
    fi
    sentinel_running "$j" && return 0
    port=$(sentinel_port "$j")
    port_free "$port" || tk_die "port $port of Sentinel $j is taken by something else"
    tk_say "starting Sentinel $j on port $port"
    as_dev redis-server "$conf" --sentinel
    wait_for 10 "Sentinel $j to start" sentinel_running "$j"
}

# Every Sentinel knows every other one and every replica (hello messages come every 2 s).
sentinels_know() {
    local j m=$1 r=$2
    for j in $(sentinels); do
        [ "$(sentinel_field "$(sentinel_port "$j")" num-other-sentinels)" = $((m - 1)) ] || return 1
        [ "$(sentinel_field "$(sentinel_port "$j")" num-slaves)" = "$r" ] || return 1
    done
}

sentinels_up() {
    local j m=$1 total replicas
    for j in $(seq 1 "$m") $(sentinels); do sentinel_up "$j"; done
    total=$(sentinels | wc -l)
    [ "$total" -gt 0 ] || return 0
    for j in $(sentinels); do # the quorum follows the number of Sentinels: a majority
        rcli -p "$(sentinel_port "$j")" sentinel set tenk quorum $((total / 2 + 1)) >/dev/null
    done
    replicas=$(redis_replicas | wc -l)
    wait_for 30 "$total Sentinels to see each other and $replicas replicas" sentinels_know "$total" "$replicas"
}

sentinel_pids() { local j; for j in $(sentinels); do sentinel_pid "$j" || true; done; }

# Every Redis node's INFO-able address: the master's socket, then each replica's.
redis_nodes() {
    local k
    echo "$REDIS_PORT $RUN_DIR/redis.sock"
    for k in $(redis_replicas); do echo "$(redis_replica_port "$k") $(redis_replica_sock "$k")"; done
}
# sentinels_agree OLD: every Sentinel names the same master, not OLD, and it says it is one.
sentinels_agree() {
    local j addr first=
    for j in $(sentinels); do
        addr=$(sentinel_master "$(sentinel_port "$j")")
        [ -n "$addr" ] && [ "$addr" != "$1" ] || return 1
        [ -z "$first" ] || [ "$addr" = "$first" ] || return 1
        first=$addr
    done
    [ "$(redis_role -p "${first##*:}")" = master ]
}
# redis_all_follow HOST:PORT: every other Redis node replicates from it with its link up.
redis_all_follow() {
    local port sock
    while read -r port sock; do
        [ "$port" = "${1##*:}" ] && continue
        [ "$(redis_role -s "$sock")" = "replica of $1, link up" ] || return 1
    done < <(redis_nodes)
}

# redis_failover [--wait-replicas]: SENTINEL FAILOVER tenk, then wait until all Sentinels name
# the new master and it says it is one; with --wait-replicas also until every other node
# follows it (the old master is turned into a replica some 10 s later). Prints HOST:PORT.
redis_failover() {
    local first old new r t0 all=0
    case "${1:-}" in
    --wait-replicas) all=1 ;;
    '') ;;
    *) tk_die "usage: scripts/devenv redis-failover [--wait-replicas]" ;;
    esac
    [ -n "$(sentinels)" ] || tk_die "no Sentinels (scripts/devenv up --redis-replicas 2 --sentinels 3)"
    first=$(sentinel_port "$(sentinels | head -n 1)")
    old=$(sentinel_master "$first")
    t0=$(date +%s%N)
    # Refused (NOGOODSLAVE, INPROG) until the Sentinel has seen a replica in sync, and while an
    # earlier failover still runs: retried for up to 20 s.
    for _ in $(seq 1 100); do
        r=$(rcli -p "$first" sentinel failover tenk)
        [ "$r" = OK ] && break
        sleep 0.2
    done
    [ "$r" = OK ] || tk_die "SENTINEL FAILOVER tenk: $r"
    wait_for 30 "every Sentinel to name a new master" sentinels_agree "$old"
    new=$(sentinel_master "$first")
    tk_say "master moved from $old to $new; every Sentinel agrees after $((($(date +%s%N) - t0) / 1000000)) ms"
    if [ $all = 1 ]; then
        wait_for 60 "every Redis node to follow $new" redis_all_follow "$new"
        tk_say "every other Redis node follows $new after $((($(date +%s%N) - t0) / 1000000)) ms"
    fi
    echo "$new"
}

redis_env() {
    local k j list=
    for k in $(redis_replicas); do echo "TENK_REDIS_REPLICA_$k='127.0.0.1:$(redis_replica_port "$k")'"; done
    for j in $(sentinels); do list="$list${list:+,}127.0.0.1:$(sentinel_port "$j")"; done
    [ -z "$list" ] || echo "TENK_REDIS_SENTINELS='$list'"
}

redis_status() { # one line per replica and Sentinel; fails if one is stopped
    local k j port rc=0
    for k in $(redis_replicas); do
        port=$(redis_replica_port "$k")
        if redis_replica_running "$k"; then
            echo "redis replica $k: running (port $port, $(redis_role -s "$(redis_replica_sock "$k")"))"
        else
            echo "redis replica $k: stopped (port $port)"; rc=3
        fi
    done
    for j in $(sentinels); do
        port=$(sentinel_port "$j")
        if sentinel_running "$j"; then
            echo "sentinel $j: running (port $port, master tenk at $(sentinel_master "$port"))"
        else
            echo "sentinel $j: stopped (port $port)"; rc=3
        fi
    done
    return $rc
}
