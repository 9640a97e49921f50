# bench.sh: scripts/cluster bench (sourced): wrk from the client namespace through HAProxy with
# 1..N app hosts in service (the others in maintenance), for /db (one PostgreSQL query) and
# /cached-queries?queries=1 (one Redis read), then /updates?queries=1 (a read and an UPDATE) and
# /plaintext (no backend) with every app host, then the first two with netem delay on the database
# links. Req/s, p50/p95/p99, errors, and CPU per request for each tier from the processes' own
# counters (/proc/PID/stat utime+stime, plus cutime+cstime: a PostgreSQL backend that exits is
# charged to the postmaster). Every server shares this machine's two cores: this measures each
# tier's cost, not a scaling curve.

# tier_ticks TIER: clock ticks used so far by every process of a tier (its namespaces)
tier_ticks() {
    local h pids=""
    for h in $(hosts); do
        case "$1:$h" in
        lb:lb | app:app* | pg:pg*) pids+=" $(ip netns pids "$(ns "$h")" 2>/dev/null | paste -sd' ')" ;;
        redis:redis* | sentinel:redis*) pids+=" $(ip netns pids "$(ns "$h")" 2>/dev/null | paste -sd' ')" ;;
        esac
    done
    local want=redis-server
    [ "$1" = sentinel ] && want=redis-sentinel
    for p in $pids; do
        case $1 in redis | sentinel) [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$want" ] || continue ;; esac
        # fields after the ")" of comm: utime is the 12th, stime 13th, cutime 14th, cstime 15th
        sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13 + $14 + $15}'
    done | awk '{s += $1} END {print s + 0}'
}

# tier_pss TIER: memory of a tier in MB, the sum of its processes' proportional set size (shared
# pages split among their users: PostgreSQL's shared buffers are not counted once per backend)
tier_pss() {
    local h p kb=0 v
    for h in $(hosts); do
        case "$1:$h" in lb:lb | app:app* | pg:pg* | redis:redis*) ;; *) continue ;; esac
        for p in $(ip netns pids "$(ns "$h")" 2>/dev/null); do
            v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null) || continue
            kb=$((kb + ${v:-0}))
        done
    done
    echo $((kb / 1024))
}

WRK_LUA=
bench_one() { # bench_one NAPPS PATH SECONDS LABEL
    local n=$1 path=$2 secs=$3 label=$4 k t tiers="lb app pg redis sentinel" before=() after=() out i=0 tick
    for ((k = 1; k <= $(napps); k++)); do
        if [ "$k" -le "$n" ]; then hactl "set server app/app$k state ready" >/dev/null; else hactl "set server app/app$k state maint" >/dev/null; fi
    done
    wait_for 20 "$n app hosts up in HAProxy" lb_all_up "$n"
    # warm: pools, prepared statements, the cache
    nsx client wrk -t1 -c16 -d1s "http://$(ip_of lb)$path" >/dev/null 2>&1 || true
    for t in $tiers; do before+=("$(tier_ticks "$t")"); done
    out=$(nsx client wrk -t2 -c32 -d"${secs}s" -s "$WRK_LUA" "http://$(ip_of lb)$path" 2>&1)
    for t in $tiers; do after+=("$(tier_ticks "$t")"); done
    tick=$(getconf CLK_TCK)
    local reqs rps p50 p95 p99 errs
    reqs=$(sed -n 's/^REQS //p' <<<"$out")
    rps=$(sed -n 's/^Requests\/sec: *//p' <<<"$out")
    read -r p50 p95 p99 <<<"$(sed -n 's/^PCT //p' <<<"$out")"
    errs=$(sed -n 's/^ERRS //p' <<<"$out")
    printf '%-34s %2d app  %8s req/s  p50 %6.2f ms  p95 %6.2f ms  p99 %6.2f ms  errors %s\n' \
        "$label $path" "$n" "$rps" "$(bc -l <<<"$p50/1000")" "$(bc -l <<<"$p95/1000")" "$(bc -l <<<"$p99/1000")" "$errs"
    printf '%-34s CPU us/request:' ""
    for t in $tiers; do
        printf ' %s %.1f' "$t" "$(bc -l <<<"(${after[$i]} - ${before[$i]}) * 1000000 / $tick / ($reqs + 0.000001)")"
        i=$((i + 1))
    done
    echo
}

cluster_bench() {
    local quick=$1 secs n path d
    [ -e "$C/apps" ] || tk_die "no cluster (scripts/cluster up)"
    secs=$([ "$quick" = 1 ] && echo 4 || echo 10)
    WRK_LUA="$C/wrk-report.lua"
    cat > "$WRK_LUA" <<'LUA'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("REQS %d\n", summary.requests))
  io.write(string.format("PCT %d %d %d\n", latency:percentile(50), latency:percentile(95), latency:percentile(99)))
  io.write(string.format("ERRS connect %d read %d write %d timeout %d status %d\n", e.connect, e.read, e.write, e.timeout, e.status))
end
LUA
    tk_say "bench: wrk -t2 -c32 -d${secs}s through HAProxy (client address by $(cat "$C/proxy")); load average $(cut -d' ' -f1-3 /proc/loadavg); tenk $(git -C "$TK_SRC" rev-parse --short HEAD)"
    for path in /db "/cached-queries?queries=1"; do
        for ((n = 1; n <= $(napps); n++)); do bench_one "$n" "$path" "$secs" "direct"; done
    done
    for path in "/updates?queries=1" /plaintext; do bench_one "$(napps)" "$path" "$secs" "direct"; done
    # the client address by the other means: its cost in HAProxy and tenk
    local was other
    was=$(cat "$C/proxy")
    other=$([ "$was" = v2 ] && echo xff || echo v2)
    lb_switch "$other"
    for path in /plaintext /db; do bench_one "$(napps)" "$path" "$secs" "proxy $other"; done
    lb_switch "$was"
    tk_say "memory (PSS) per tier: lb $(tier_pss lb) MB, app $(tier_pss app) MB ($(napps) hosts), pg $(tier_pss pg) MB (3 hosts), redis $(tier_pss redis) MB (3 hosts + 3 Sentinels)"
    if [ -e "$C/delay" ]; then
        tk_say "netem delay set by up (--delay $(cat "$C/delay")): every run above had it"
    elif ! netem_available; then
        tk_say "no netem qdisc in this kernel ($(uname -r)): the runs with a database delay are skipped"
    else
        d=${TENK_CLUSTER_DELAY:-0.4}
        net_delay "$d"
        for path in /db "/cached-queries?queries=1"; do bench_one "$(napps)" "$path" "$secs" "netem ${d}ms"; done
        net_undelay
    fi
    for ((n = 1; n <= $(napps); n++)); do hactl "set server app/app$n state ready" >/dev/null; done
    tk_say "bench done; load average $(cut -d' ' -f1-3 /proc/loadavg)"
}
