# postgres.sh: scripts/devenv's replicated PostgreSQL (sourced by it, uses its settings):
# streaming replicas in var/pg-replica-K, promotion, a PgBouncer in var/pgbouncer, psql on a node.

PGB_DIR="$TK_VAR/pgbouncer"
PGB_INI="$PGB_DIR/pgbouncer.ini"

pg_replica_dir() { echo "$TK_VAR/pg-replica-$1"; }
# The replicas created so far, by number.
pg_replicas() {
    local d
    for d in "$TK_VAR"/pg-replica-*; do
        if [ -f "$d/PG_VERSION" ]; then echo "${d##*-}"; fi
    done | sort -n
}
pg_node_running() { [ -f "$1/postmaster.pid" ] && as_dev "$(pg_bin)/pg_ctl" -D "$1" status >/dev/null 2>&1; }
pg_replica_port() { conf_value "$(pg_replica_dir "$1")/postgresql.conf" port; }
# The primary's port: the original one, or replica K's once `promote K` made it the primary.
pg_primary_port() {
    if [ -f "$PROMOTED" ]; then pg_replica_port "$(cat "$PROMOTED")"; else echo "$PG_PORT"; fi
}
psql_port() { # psql_port PORT ARGS...: psql as postgres on one node
    local port=$1; shift
    PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 -h "$RUN_DIR" -p "$port" -U postgres -d postgres "$@"
}
pg_role() { # pg_role PORT: primary | replica
    case "$(psql_port "$1" -At -c 'select pg_is_in_recovery()' 2>/dev/null)" in
    f) echo primary ;;
    t) echo replica ;;
    *) echo "not answering" ;;
    esac
}
pg_streaming() { # pg_streaming PRIMARY_PORT NAME: replica NAME streams from that primary through its slot
    [ "$(psql_port "$1" -At -c "select count(*) from pg_stat_replication r join pg_replication_slots s
        on s.active_pid = r.pid where r.application_name = '$2' and r.state = 'streaming'")" = 1 ]
}

# pg_replica_up K: create replica K from a base backup of the primary (once), start it.
pg_replica_up() {
    local k=$1 dir slot=replica_$1 port bin
    dir=$(pg_replica_dir "$k")
    bin=$(pg_bin)
    if [ ! -f "$dir/PG_VERSION" ]; then
        [ ! -f "$PROMOTED" ] || tk_die "replica $(cat "$PROMOTED") was promoted: scripts/devenv reset before adding replicas"
        port=$((PG_REPLICA_PORT + k - 1))
        port_free "$port" || tk_die "port $port for PostgreSQL replica $k is taken: set TENK_PG_REPLICA_PORT"
        tk_say "pg_basebackup: replica $k, port $port, slot $slot"
        rm -rf "$dir"
        dev_mkdir "$dir"
        chmod 700 "$dir"
        # A slot left by an earlier replica K whose folder was deleted would keep WAL forever.
        psql_admin -At -c "select pg_drop_replication_slot(slot_name) from pg_replication_slots
            where slot_name = '$slot' and not active" >/dev/null
        # -R writes standby.signal, primary_conninfo and primary_slot_name; -C creates the slot;
        # --no-sync and fsync = off below: a replica is rebuilt, not recovered, after an OS crash,
        # and syncing every file at its first start took seconds on a busy machine.
        as_dev "$bin/pg_basebackup" -h "$RUN_DIR" -p "$PG_PORT" -U postgres -D "$dir" \
            -X stream -C -S "$slot" -R -c fast --no-sync ||
            { rm -rf "$dir"; tk_die "pg_basebackup for replica $k failed"; }
        # cluster_name is also the walreceiver's application_name in pg_stat_replication.
        cat >> "$dir/postgresql.conf" <<CONF
# tenk devenv: streaming replica $k (primary_conninfo and the slot are in postgresql.auto.conf)
port = $port
cluster_name = '$slot'
hot_standby = on
hot_standby_feedback = on
shared_buffers = 32MB
fsync = off
CONF
    fi
    if ! pg_node_running "$dir"; then
        port=$(pg_replica_port "$k")
        port_free "$port" || tk_die "port $port of PostgreSQL replica $k is taken by something else"
        tk_say "starting PostgreSQL replica $k on port $port"
        retry_bind "$TK_VAR/pg-replica-$k.log" as_dev "$bin/pg_ctl" -D "$dir" -l "$TK_VAR/pg-replica-$k.log" -w -t 60 start >/dev/null ||
            { tail -n 20 "$TK_VAR/pg-replica-$k.log" >&2; tk_die "PostgreSQL replica $k did not start"; }
    fi
}

# pg_replicas_up N: replicas 1..N and every replica created before; wait until each one that is
# still a replica streams from the primary.
pg_replicas_up() {
    local k n=$1 primary
    for k in $(seq 1 "$n") $(pg_replicas); do pg_replica_up "$k"; done
    [ -n "$(pg_replicas)" ] || return 0
    primary=$(pg_primary_port)
    for k in $(pg_replicas); do
        [ "$(pg_role "$(pg_replica_port "$k")")" = replica ] || continue
        wait_for 30 "replica $k to stream from port $primary" pg_streaming "$primary" "replica_$k"
    done
}

pg_replicas_down() {
    local k
    for k in $(pg_replicas); do
        if pg_node_running "$(pg_replica_dir "$k")"; then
            tk_say "stopping PostgreSQL replica $k"
            as_dev "$(pg_bin)/pg_ctl" -D "$(pg_replica_dir "$k")" -m fast -w stop >/dev/null
        fi
    done
}

# pg_promote K: a failover. The primary stops first, so that exactly one node takes writes and
# the other replicas have nothing the new primary lacks; then they follow it (their
# recovery_target_timeline is 'latest') through slots of the same names on it.
pg_promote() {
    local k=$1 dir port j t0=$SECONDS
    dir=$(pg_replica_dir "$k")
    [ -f "$dir/PG_VERSION" ] || tk_die "there is no PostgreSQL replica $k (scripts/devenv up --replicas $k)"
    pg_node_running "$dir" || tk_die "replica $k is not running (scripts/devenv up)"
    port=$(pg_replica_port "$k")
    if [ "$(pg_role "$port")" = primary ]; then
        tk_say "replica $k is a primary already"
        return 0
    fi
    [ ! -f "$PROMOTED" ] || tk_die "replica $(cat "$PROMOTED") was promoted before: scripts/devenv reset to start over"
    if [ -f "$PG_DATA/PG_VERSION" ] && pg_running; then
        tk_say "stopping the primary (port $PG_PORT)"
        as_dev "$(pg_bin)/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
    fi
    tk_say "promoting replica $k (port $port)"
    as_dev "$(pg_bin)/pg_ctl" -D "$dir" -w -t 60 promote >/dev/null || tk_die "pg_ctl promote failed"
    wait_for 30 "replica $k to leave recovery" test "$(pg_role "$port")" = primary
    echo "$k" > "$PROMOTED"
    for j in $(pg_replicas); do
        [ "$j" != "$k" ] && pg_node_running "$(pg_replica_dir "$j")" || continue
        psql_port "$port" -At -c "select pg_create_physical_replication_slot('replica_$j')
            where not exists (select 1 from pg_replication_slots where slot_name = 'replica_$j')" >/dev/null
        psql_port "$(pg_replica_port "$j")" \
            -c "alter system set primary_conninfo = 'host=$RUN_DIR port=$port user=postgres'" \
            -c "select pg_reload_conf()" >/dev/null
    done
    for j in $(pg_replicas); do
        [ "$j" != "$k" ] && pg_node_running "$(pg_replica_dir "$j")" || continue
        wait_for 30 "replica $j to follow replica $k" pg_streaming "$port" "replica_$j"
    done
    if pgbouncer_running; then pgbouncer_conf "$(conf_value "$PGB_INI" listen_port)" && kill -HUP "$(pgbouncer_pid)"; fi
    write_env
    tk_say "replica $k (port $port) is the primary, after $((SECONDS - t0)) s"
}

# --- PgBouncer -------------------------------------------------------------------------------
pgbouncer_pid() { # the pid of this devenv's PgBouncer, or fail
    local pid
    pid=$(cat "$RUN_DIR/pgbouncer.pid" 2>/dev/null) || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = pgbouncer ] && echo "$pid"
}
pgbouncer_running() { pgbouncer_pid >/dev/null; }
pgbouncer_answers() { psql -X -At -h "$RUN_DIR" -p "$1" -U postgres -d pgbouncer -c 'show version' >/dev/null 2>&1; }

# pgbouncer_conf PORT: its config, pointing at the current primary; trust as on the primary.
pgbouncer_conf() {
    dev_mkdir "$PGB_DIR"
    printf '"%s" ""\n' "$DB_USER" postgres > "$PGB_DIR/userlist.txt"
    cat > "$PGB_INI" <<CONF
;; written by scripts/devenv: PgBouncer in front of the devenv's primary
[databases]
* = host=$RUN_DIR port=$(pg_primary_port)

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $1
unix_socket_dir = $RUN_DIR
auth_type = trust
auth_file = $PGB_DIR/userlist.txt
admin_users = postgres
stats_users = $DB_USER
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 20
ignore_startup_parameters = extra_float_digits
logfile = $PGB_DIR/pgbouncer.log
pidfile = $RUN_DIR/pgbouncer.pid
CONF
    [ "$(id -u)" != 0 ] || chown "$DEV_USER:$DEV_USER" "$PGB_INI" "$PGB_DIR/userlist.txt"
}

pgbouncer_up() {
    local port
    command -v pgbouncer >/dev/null || tk_die "pgbouncer is not installed (apt-get install $TK_PKGS_HA)"
    pgbouncer_running && return 0
    if [ -f "$PGB_INI" ]; then port=$(conf_value "$PGB_INI" listen_port); else port=$PGBOUNCER_PORT; fi
    port_free "$port" || tk_die "port $port for PgBouncer is taken: set TENK_PGBOUNCER_PORT"
    pgbouncer_conf "$port"
    tk_say "starting PgBouncer on port $port (transaction pooling, primary on port $(pg_primary_port))"
    retry_bind "$PGB_DIR/pgbouncer.log" as_dev "$(command -v pgbouncer)" -d -q "$PGB_INI" ||
        { tail -n 20 "$PGB_DIR/pgbouncer.log" >&2; tk_die "PgBouncer did not start"; }
    wait_for 10 "PgBouncer on port $port" pgbouncer_answers "$port"
}


# --- var/devenv.env, status, psql --------------------------------------------------------------
pg_env() {
    local k hosts=$RUN_DIR ports=$PG_PORT
    for k in $(pg_replicas); do
        echo "TENK_DB_REPLICA_$k='host=$RUN_DIR port=$(pg_replica_port "$k") dbname=$DB_NAME user=$DB_USER'"
        hosts="$hosts,$RUN_DIR" ports="$ports,$(pg_replica_port "$k")"
    done
    # libpq tries each host in turn and keeps the first that takes writes: after a promotion,
    # the promoted replica.
    [ "$hosts" = "$RUN_DIR" ] ||
        echo "TENK_DB_PRIMARY_MULTI='host=$hosts port=$ports dbname=$DB_NAME user=$DB_USER target_session_attrs=read-write'"
    [ ! -f "$PGB_INI" ] ||
        echo "TENK_DB_PGBOUNCER='host=$RUN_DIR port=$(conf_value "$PGB_INI" listen_port) dbname=$DB_NAME user=$DB_USER'"
}

pg_status() { # one line per replica and PgBouncer; fails if one is stopped
    local k port rc=0
    for k in $(pg_replicas); do
        port=$(pg_replica_port "$k")
        if pg_node_running "$(pg_replica_dir "$k")"; then
            echo "postgresql replica $k: running (port $port, $(pg_role "$port"))"
        else
            echo "postgresql replica $k: stopped (port $port)"; rc=3
        fi
    done
    [ -f "$PGB_INI" ] || return $rc
    port=$(conf_value "$PGB_INI" listen_port)
    if pgbouncer_running; then
        echo "pgbouncer: running (port $port, transaction pooling to port $(pg_primary_port))"
    else
        echo "pgbouncer: stopped (port $port)"; rc=3
    fi
    return $rc
}

# devenv_psql [primary|replica K|pgbouncer] [ARGS]: psql as tenk on database tenk (-U, -d override).
devenv_psql() {
    local port
    case "${1:-}" in
    replica)
        [[ "${2:-}" =~ ^[0-9]+$ ]] && [ -f "$(pg_replica_dir "$2")/PG_VERSION" ] || tk_die "psql replica K: no replica ${2:-}"
        port=$(pg_replica_port "$2"); shift 2 ;;
    pgbouncer)
        [ -f "$PGB_INI" ] || tk_die "no PgBouncer (scripts/devenv pgbouncer)"
        port=$(conf_value "$PGB_INI" listen_port); shift ;;
    primary) port=$(pg_primary_port); shift ;;
    *) port=$(pg_primary_port) ;;
    esac
    PGHOST=$RUN_DIR PGPORT=$port PGUSER=$DB_USER PGDATABASE=$DB_NAME exec psql "$@"
}
