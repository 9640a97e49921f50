# chaos.sh: scripts/cluster chaos (sourced): each failure case under a steady, bounded load through
# HAProxy (load.py in the client namespace), with its numbers. The script plays the operator where
# one is needed (pg_promote on a replica after the primary died).

RATE=${TENK_CHAOS_RATE:-150}   # requests/s in all
CONNS=${TENK_CHAOS_CONNS:-12}  # keep-alive connections
WPCT=${TENK_CHAOS_WRITES:-10}  # percent of writes (PUT /users/{id})

# load_start SECONDS NAME: the load in the background; LOAD_PID, LOAD_OUT
load_start() {
    mkdir -p "$C/chaos"
    LOAD_OUT="$C/chaos/$2.txt"
    nsx client "$PY" "$LOAD" run "http://$(ip_of lb):80" "$1" "$RATE" "$CONNS" "$WPCT" "$LOAD_OUT" &
    LOAD_PID=$!
    EVENTS=()
    # the load runs a while before the fault, so its steady state is in the numbers
    sleep "$WARMUP"
}
event() { EVENTS+=("$1=$(now)"); }
load_report() { # load_report NAME EXPECT: wait for the load, print its numbers
    wait "$LOAD_PID" || true
    local r
    r=$("$PY" "$LOAD" report "$LOAD_OUT" "${EVENTS[@]}")
    printf '%-22s %s\n    expected: %s\n' "$1" "$r" "$2"
    echo "$1 $r" >> "$C/chaos/report.txt"
}
lb_is() { [ "$(lb_state "app$1")" = "$2" ]; }
app_health_is() { [ "$(app_health "$1")" = "$2" ]; }

case_kill9_app() {
    load_start "$((WARMUP + 8))" kill9-app1
    event inject
    kill -KILL $(ip netns pids "$(ns app1)")
    wait_for 10 "HAProxy to take app1 out" lb_is 1 DOWN
    event lb_down
    load_report kill9-app1 "failures only for requests in flight; HAProxy routes around within its check interval (2 x 500 ms)"
    rm -f "$RUN/app1.pid"
    app_start 1
    wait_for 30 "app1 back in HAProxy" lb_is 1 UP
}

case_rolling_sighup() {
    load_start "$((WARMUP + 6 * $(napps) + 2))" rolling-sighup
    event inject
    rolling_reload
    event done
    load_report rolling-sighup "0 failures"
}

case_rolling_restart() {
    local k m
    load_start "$((WARMUP + 7 * $(napps) + 2))" rolling-restart
    event inject
    for ((k = 1; k <= $(napps); k++)); do
        m=$(app_master "$k")
        kill -QUIT "$m"
        wait_for 30 "app$k to stop after its lame duck" app_gone "$m"
        app_start "$k"
        wait_for 30 "app$k back in HAProxy" lb_is "$k" UP
    done
    event done
    load_report rolling-restart "0 failures (SIGQUIT: 2 s lame duck, HAProxy takes the host out, then it stops)"
}

case_kill_pg_replica() {
    load_start "$((WARMUP + 6))" kill-pg-replica
    event inject
    pg_ctl_as pg3 -D "$C/pg3" -m immediate stop >/dev/null
    sleep 4 # the replica stays dead for a while under load
    event restart
    pg_start pg3
    load_report kill-pg-replica "0 5xx"
    wait_for 30 "pg3 to stream again" pg_streaming "$(pg_current_primary)" 2
}

case_cut_db() {
    local t0
    load_start "$((WARMUP + 10))" cut-app1-from-db
    event inject
    net_cut_db 1
    wait_for 20 "app1's /health to say 503" app_health_is 1 503
    event health_503
    wait_for 10 "HAProxy to take app1 out" lb_is 1 DOWN
    event lb_down
    # straight to app1 (not through HAProxy): how fast does a database request fail there?
    t0=$(now)
    CUT_DIRECT=$(nsx client curl -s -o /dev/null -w '%{http_code} in %{time_total} s' -m 10 \
        -X PUT -H 'Content-Type: application/json' -d '{"name":"cut","email":"user1@example.com"}' \
        "http://$(ip_of app1):8080/users/1" || true)
    net_uncut_db 1
    event uncut
    load_report cut-app1-from-db "app1 answers 503 fast, its /health says 503, HAProxy takes it out (direct PUT to app1 while cut: $CUT_DIRECT)"
    wait_for 30 "app1 back in HAProxy" lb_is 1 UP
}

case_kill_redis_master() {
    local pid
    load_start "$((WARMUP + 10))" kill-redis-master
    event inject
    pid=$(cat "$RUN/redis1.pid")
    kill -KILL "$pid"
    wait_for 30 "the Sentinels to fail over" redis_switched
    event switch
    load_report kill-redis-master "Sentinel fails over, 0 5xx (new master: $(sentinel_master redis2))"
}
redis_switched() { local m; m=$(sentinel_master redis2); [ -n "$m" ] && [ "$m" != "$(ip_of redis1):6379" ]; }

pg_current_primary() { local k; for k in 1 2 3; do [ "$(pg_role "pg$k")" = primary ] && { echo "pg$k"; return; }; done; echo pg1; }

case_kill_primary() {
    load_start "$((WARMUP + 8))" kill-primary-promote
    event inject
    pg_ctl_as pg1 -D "$C/pg1" -m immediate stop >/dev/null
    # the operator: promote pg2 (a monitor would decide this after its own timeout; here at once)
    pgq pg2 "select pg_promote(true, 30)" >/dev/null
    event promote
    pg_follow 3 pg2
    load_report kill-primary-promote "writes get 503 only in the gap, back within 2 s of the promotion; reads never fail"
    wait_for 30 "pg3 to follow pg2" pg_streaming pg2 1
}

cluster_chaos() {
    local quick=$1
    WARMUP=$([ "$quick" = 1 ] && echo 2 || echo 3)
    rm -f "$C/chaos/report.txt"
    tk_say "chaos: $(napps) app hosts, load $RATE req/s on $CONNS connections, $WPCT% writes; $(cat /proc/loadavg | cut -d' ' -f1-3) load average"
    tk_say "tenk: $(grep -q '^replica' "$C/app1/tenk.conf" && echo 'db.replica set' || echo 'no db.replica (this tenkd lacks it): reads on the primary'), $(grep -q '^sentinel' "$C/app1/tenk.conf" && echo 'redis.sentinel set' || echo 'no redis.sentinel (this tenkd lacks it): redis.addr = redis1')"
    # TENK_CHAOS_CASES: a subset, in this order (default: all)
    local c
    for c in ${TENK_CHAOS_CASES:-kill9_app rolling_sighup rolling_restart kill_pg_replica cut_db kill_redis_master kill_primary}; do
        "case_$c"
    done
    tk_say "chaos done; numbers also in $C/chaos/report.txt (times in s from the fault: event_*, first/last_failure)"
}
