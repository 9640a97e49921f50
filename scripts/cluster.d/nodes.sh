# nodes.sh: scripts/cluster's servers (sourced): PostgreSQL primary and streaming replicas, Redis
# master, replicas and Sentinels, the tenk app hosts and HAProxy; status.

# --- PostgreSQL ----------------------------------------------------------------------------------
pgq() { # pgq HOST SQL: one value from a PostgreSQL host, as postgres over TCP (from its namespace)
    nsx "$1" env PGOPTIONS="-c client_min_messages=warning" PGCONNECT_TIMEOUT=2 \
        psql -X -q -At -v ON_ERROR_STOP=1 -h "$(ip_of "$1")" -U postgres -d postgres -c "$2" 2>/dev/null
}
pg_ctl_as() { local h=$1; shift; nsdev "$h" "$(pg_bin)/pg_ctl" "$@"; }
pg_running() { [ -f "$C/$1/postmaster.pid" ] && pg_ctl_as "$1" -D "$C/$1" status >/dev/null 2>&1; }
pg_role() {
    case "$(pgq "$1" 'select pg_is_in_recovery()')" in
    f) echo primary ;; t) echo replica ;; *) echo down ;;
    esac
}
pg_streaming() { [ "$(pgq "$1" "select count(*) from pg_stat_replication where state = 'streaming'")" = "$2" ]; }

pg_start() { # pg_start HOST
    pg_ctl_as "$1" -D "$C/$1" -l "$C/$1.log" -w -t 60 start </dev/null >/dev/null 2>&1 ||
        { tail -n 20 "$C/$1.log" >&2; tk_die "PostgreSQL on $1 did not start"; }
}

pg_primary_up() {
    local d="$C/pg1" f
    tk_say "pg1: initdb, primary on $(ip_of pg1):5432"
    mkdir -p "$d" "$RUN/pg1"
    chown "$DEV_USER:$DEV_USER" "$d" "$RUN/pg1"
    nsdev pg1 "$(pg_bin)/initdb" -D "$d" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    # fsync off: the cluster is rebuilt, never recovered, after a crash of this machine
    cat >> "$d/postgresql.conf" <<CONF
# scripts/cluster: pg1
listen_addresses = '$(ip_of pg1)'
port = 5432
unix_socket_directories = '$RUN/pg1'
max_connections = 200
shared_buffers = 64MB
synchronous_commit = off
fsync = off
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
hot_standby_feedback = on
wal_keep_size = 256MB
log_min_messages = warning
CONF
    cat >> "$d/pg_hba.conf" <<CONF
host all all $NET.0/24 trust
host replication all $NET.0/24 trust
CONF
    pg_start pg1
    pgq pg1 "create role tenk login" >/dev/null
    pgq pg1 "create database tenk owner tenk" >/dev/null
    for f in "$TK_SRC"/migrations/*.sql; do
        nsx pg1 env PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 \
            -h "$(ip_of pg1)" -U tenk -d tenk -1 -f "$f" >/dev/null || tk_die "migration $f failed"
    done
}

# pg_replica_up K: a base backup of the current primary, as a hot standby with its own slot.
pg_replica_up() {
    local k=$1 d="$C/pg$1" from=${2:-pg1}
    tk_say "pg$k: pg_basebackup from $from, streaming replica on $(ip_of "pg$k"):5432"
    rm -rf "$d"
    mkdir -p "$d" "$RUN/pg$k"
    chown "$DEV_USER:$DEV_USER" "$d" "$RUN/pg$k"
    chmod 700 "$d"
    pgq "$from" "select pg_drop_replication_slot('pg$k') from pg_replication_slots where slot_name = 'pg$k' and not active" >/dev/null || true
    nsdev "pg$k" "$(pg_bin)/pg_basebackup" -h "$(ip_of "$from")" -U postgres -D "$d" -X stream -C -S "pg$k" \
        -R -c fast --no-sync || tk_die "pg_basebackup for pg$k failed"
    cat >> "$d/postgresql.conf" <<CONF
# scripts/cluster: pg$k, a streaming replica (primary_conninfo and its slot: postgresql.auto.conf)
listen_addresses = '$(ip_of "pg$k")'
unix_socket_directories = '$RUN/pg$k'
cluster_name = 'pg$k'
CONF
    pg_start "pg$k"
}

# pg_follow K NEW: replica K streams from host NEW (after a promotion), through a slot there.
pg_follow() {
    pgq "$2" "select pg_create_physical_replication_slot('pg$1') where not exists
        (select 1 from pg_replication_slots where slot_name = 'pg$1')" >/dev/null
    pgq "pg$1" "alter system set primary_conninfo = 'host=$(ip_of "$2") port=5432 user=postgres application_name=pg$1'" >/dev/null
    pgq "pg$1" "select pg_reload_conf()" >/dev/null
}

# --- Redis ---------------------------------------------------------------------------------------
rq() { local h=$1 port=$2; shift 2; nsx "$h" redis-cli -h "$(ip_of "$h")" -p "$port" "$@" 2>/dev/null | tr -d '\r'; }
redis_role() {
    case "$(rq "$1" 6379 info replication | sed -n 's/^role://p')" in
    master) echo master ;; slave) echo replica ;; *) echo down ;;
    esac
}
sentinel_master() { rq "$1" 26379 sentinel get-master-addr-by-name tenk | paste -sd: -; }
sentinels_ready() { # every Sentinel knows 2 others and 2 replicas
    local k
    for k in 1 2 3; do
        [ "$(rq "redis$k" 26379 sentinel master tenk | awk '$0=="num-other-sentinels"{getline;print}')" = 2 ] || return 1
        [ "$(rq "redis$k" 26379 sentinel master tenk | awk '$0=="num-slaves"{getline;print}')" = 2 ] || return 1
    done
}
redis_synced() { rq "$1" 6379 info replication | grep -q '^master_link_status:up'; }

redis_pongs() { [ "$(rq "$1" 6379 ping)" = PONG ]; }
redis_start() { nsdev "$1" redis-server "$C/$1/redis.conf" </dev/null >/dev/null 2>&1; wait_for 10 "Redis on $1" redis_pongs "$1"; }

redis_nodes_up() {
    local k d
    for k in 1 2 3; do
        d="$C/redis$k"
        mkdir -p "$d"
        cat > "$d/redis.conf" <<CONF
# scripts/cluster: redis$k
bind $(ip_of "redis$k")
port 6379
protected-mode no
daemonize yes
pidfile $RUN/redis$k.pid
logfile $C/redis$k.log
dir $d
save ""
appendonly no
repl-diskless-sync-delay 0
CONF
        [ "$k" = 1 ] || echo "replicaof $(ip_of redis1) 6379" >> "$d/redis.conf"
        # quorum 2 of 3; down after 1 s; no second failover for 5 s
        cat > "$d/sentinel.conf" <<CONF
# scripts/cluster: Sentinel on redis$k (rewritten by the Sentinel)
bind $(ip_of "redis$k")
port 26379
protected-mode no
daemonize yes
pidfile $RUN/sentinel$k.pid
logfile $C/sentinel$k.log
dir $d
sentinel monitor tenk $(ip_of redis1) 6379 2
sentinel down-after-milliseconds tenk 1000
sentinel failover-timeout tenk 5000
sentinel parallel-syncs tenk 1
CONF
        chown -R "$DEV_USER:$DEV_USER" "$d"
    done
    tk_say "redis1 master, redis2 and redis3 replicas, a Sentinel on each (port 26379)"
    for k in 1 2 3; do redis_start "redis$k"; done
    for k in 2 3; do wait_for 30 "redis$k to sync" redis_synced "redis$k"; done
    for k in 1 2 3; do nsdev "redis$k" redis-sentinel "$C/redis$k/sentinel.conf" </dev/null >/dev/null 2>&1; done
    wait_for 30 "the Sentinels to know each other and both replicas" sentinels_ready
}

# --- tenk app hosts ------------------------------------------------------------------------------
# Workers per app host: this machine has 2 cores for every server of the cluster (and the load),
# so one worker each; a host with its own 8 cores would run 8.
APP_WORKERS=${TENK_CLUSTER_WORKERS:-1}

# tenkd_accepts FILE-TEXT: 0 if the tenkd under test accepts a configuration (tenkd -t).
tenkd_accepts() {
    local f rc
    f=$(mktemp "$C/probe.XXXXXX.conf")
    printf '%s\n' "$1" > "$f"
    "$TENKD" -t -c "$f" >/dev/null 2>&1 && rc=0 || rc=1
    rm -f "$f"
    return $rc
}

# app_conf K: app host K's configuration. db.replica and redis.sentinel lines only if this tenkd
# knows them (the database and cache tiers' branches); else the multi-host db.primary (libpq's
# target_session_attrs=read-write finds a promoted replica) and the master's redis.addr.
app_conf() {
    local k=$1 h="app$1" pgall replicas="" redis
    pgall="host=$(ip_of pg1),$(ip_of pg2),$(ip_of pg3) port=5432,5432,5432 dbname=tenk user=tenk target_session_attrs=read-write connect_timeout=2"
    if tenkd_accepts "$(printf '[db]\nprimary = %s\nreplica = host=%s dbname=tenk user=tenk\n' "$pgall" "$(ip_of pg2)")"; then
        replicas=$(printf 'replica = host=%s port=5432 dbname=tenk user=tenk connect_timeout=2\n' "$(ip_of pg2)" "$(ip_of pg3)")
    fi
    if tenkd_accepts "$(printf '[redis]\nsentinel = %s:26379\nmaster_name = tenk\n' "$(ip_of redis1)")"; then
        redis=$(printf 'sentinel = %s:26379\n' "$(ip_of redis1)" "$(ip_of redis2)" "$(ip_of redis3)"; echo "master_name = tenk")
    else
        redis="addr = $(ip_of redis1):6379"
    fi
    cat <<CONF
# scripts/cluster: app host $k
[server]
name = tkc-$h
listen = $(ip_of "$h"):8080
workers = $APP_WORKERS
user = $DEV_USER
pid_file = $RUN/$h.pid
# HAProxy checks every 500 ms and takes a host out after 2 failures: 2 s of lame duck is ample
drain_delay = 2s
shutdown_timeout = 10s
trusted_proxies = $(ip_of lb)

[db]
primary = $pgall
${replicas}
max_open = 16
acquire_timeout = 1s
query_timeout = 2s

[redis]
${redis}

[admin]
listen = 127.0.0.1:6060

[log]
error_log = $C/$h/error.log
CONF
}

app_start() { # app_start K: tenkd as a daemon in host K (returns once its workers accept)
    # (daemons must not hold the caller's stdout: a pipe from `scripts/cluster up | tail` would never end)
    nsx "app$1" "$TENKD" -c "$C/app$1/tenk.conf" </dev/null >>"$C/app$1/start.log" 2>&1 || { tail -n 20 "$C/app$1/error.log" >&2; tk_die "tenkd on app$1 did not start"; }
}
app_master() { cat "$RUN/app$1.pid" 2>/dev/null; }
app_health() { nsx client curl -s -o /dev/null -w '%{http_code}' -m 2 "http://$(ip_of "app$1"):8080/health" 2>/dev/null || true; }

app_up() {
    local k=$1
    mkdir -p "$C/app$k"
    chown "$DEV_USER:$DEV_USER" "$C/app$k"
    app_conf "$k" > "$C/app$k/tenk.conf"
    "$TENKD" -t -c "$C/app$k/tenk.conf" >/dev/null || tk_die "app$k's configuration is refused by $TENKD"
    tk_say "app$k: tenkd ($APP_WORKERS worker) on $(ip_of "app$k"):8080$(grep -q '^replica' "$C/app$k/tenk.conf" && echo ', db.replica' || true)$(grep -q '^sentinel' "$C/app$k/tenk.conf" && echo ', redis.sentinel' || true)"
    app_start "$k"
}

# --- HAProxy -------------------------------------------------------------------------------------
# lb_conf N [xff|v2]: the real client address by X-Forwarded-For (default: HAProxy keeps and
# reuses its connections to the app hosts) or by a PROXY v2 header (send-proxy-v2: each server
# connection then belongs to one client connection, and round robin opens new ones; see README)
lb_conf() {
    local k n=$1 how=${2:-xff}
    cat <<CONF
# scripts/cluster: the load balancer
global
    daemon
    pidfile $RUN/haproxy.pid
    stats socket $RUN/haproxy.sock mode 600 level admin
    maxconn 4000
    user $DEV_USER
    group $DEV_USER

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 10s
    # a connection refused by a host that is gone is tried on another one
    retries 2
    option redispatch

frontend web
    bind $(ip_of lb):80
    default_backend app

backend app
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    # the real client address: tenk takes it from trusted proxies only (server.trusted_proxies)
    $([ "$how" = v2 ] && echo "# PROXY v2 header" || echo "option forwardfor")
    default-server inter 500ms fastinter 250ms downinter 500ms fall 2 rise 2$([ "$how" = v2 ] && echo " send-proxy-v2")
    # which app host answered (the test sends one request to each)
    http-response set-header X-Tenk-Host %s
CONF
    for ((k = 1; k <= n; k++)); do echo "    server app$k $(ip_of "app$k"):8080 check"; done
}
hactl() { # hactl COMMAND: HAProxy's runtime API
    "$PY" -c 'import socket,sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall((sys.argv[2] + "\n").encode())
print(s.makefile().read(), end="")' "$RUN/haproxy.sock" "$1"
}
lb_state() { hactl "show stat" | awk -F, -v s="$1" '$1=="app" && $2==s {print $18}'; } # UP, DOWN, MAINT...
lb_all_up() { local k; for ((k = 1; k <= $1; k++)); do [ "$(lb_state "app$k")" = UP ] || return 1; done; }
lb_up() {
    lb_conf "$(napps)" "$(cat "$C/proxy")" > "$C/haproxy.cfg"
    haproxy -c -q -f "$C/haproxy.cfg" || tk_die "haproxy refuses $C/haproxy.cfg"
    tk_say "lb: HAProxy on $(ip_of lb):80, httpchk GET /health every 500 ms, client address by $(cat "$C/proxy")"
    nsx lb haproxy -f "$C/haproxy.cfg" </dev/null >>"$C/haproxy.log" 2>&1 || { cat "$C/haproxy.log" >&2; tk_die "HAProxy did not start"; }
    wait_for 10 "HAProxy's stats socket" test -S "$RUN/haproxy.sock"
}
# lb_switch xff|v2: HAProxy's new configuration, reloaded (-sf: the old process finishes its
# connections); waits until every app host is up in the new one
lb_switch() {
    local old
    echo "$1" > "$C/proxy"
    lb_conf "$(napps)" "$1" > "$C/haproxy.cfg"
    old=$(cat "$RUN/haproxy.pid")
    nsx lb haproxy -f "$C/haproxy.cfg" -sf "$old" </dev/null >>"$C/haproxy.log" 2>&1 || tk_die "HAProxy did not reload"
    wait_for 10 "the old HAProxy to exit" app_gone "$old"
    wait_for 20 "HAProxy to see every app host up" lb_all_up "$(napps)"
}
app_gone() { ! kill -0 "$1" 2>/dev/null; }

# --- status --------------------------------------------------------------------------------------
cluster_status() {
    local json=$1 h role health rows=() k
    for h in $(hosts); do
        case $h in
        client) role="load generator"; health=- ;;
        lb) role=haproxy; health=$(hactl "show stat" >/dev/null 2>&1 && echo "up: $(for ((k = 1; k <= $(napps); k++)); do printf 'app%s=%s ' "$k" "$(lb_state "app$k")"; done | sed 's/ $//')" || echo down) ;;
        app*) role=tenk; health="/health $(app_health "${h#app}")" ;;
        pg*) role="postgresql $(pg_role "$h")"; health=$([ "${role#* }" = down ] && echo down || echo up) ;;
        redis*) role="redis $(redis_role "$h")"
            health="sentinel says master $(sentinel_master "$h" || true)"; [ "${role#* }" != down ] || health="down; $health" ;;
        esac
        rows+=("$h|$(ns "$h")|$(ip_of "$h")|$role|$health")
    done
    if [ "$json" = 1 ]; then
        printf '%s\n' "${rows[@]}" | "$PY" -c 'import json,sys
print(json.dumps([dict(zip(["host","namespace","address","role","health"], l.rstrip("\n").split("|"))) for l in sys.stdin], indent=1))'
    else
        { echo "HOST|NAMESPACE|ADDRESS|ROLE|HEALTH"; printf '%s\n' "${rows[@]}"; } | column -t -s '|'
    fi
}

# --- rolling operations --------------------------------------------------------------------------
# app_reloaded K OLDPIDS: app K's workers are all new and HAProxy has it up again
app_reloaded() {
    local w
    w=$(ps -o pid= --ppid "$(app_master "$1")" | tr -d ' ' | sort)
    [ -n "$w" ] && [ -z "$(comm -12 <(echo "$w") <(echo "$2" | tr ' ' '\n' | sort))" ] && [ "$(lb_state "app$1")" = UP ]
}
rolling_reload() {
    local k old
    for ((k = 1; k <= $(napps); k++)); do
        old=$(ps -o pid= --ppid "$(app_master "$k")" | tr -d ' ' | paste -sd' ')
        kill -HUP "$(app_master "$k")"
        wait_for 30 "app$k to reload and be up in HAProxy" app_reloaded "$k" "$old"
    done
}
