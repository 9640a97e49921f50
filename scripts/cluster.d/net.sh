# net.sh: scripts/cluster's network (sourced): the bridge, one namespace and veth per host, netem
# delay on the database links (where the kernel has netem), and cutting one app host off the database.

# veth names: tk-v-HOST on the bridge side (<= 15 characters), eth0 inside the namespace.
veth() { echo "tk-v-$1"; }

net_host_up() {
    local h=$1
    ip netns add "$(ns "$h")"
    ip link add "$(veth "$h")" type veth peer name tk-p-"$h"
    ip link set tk-p-"$h" netns "$(ns "$h")"
    ip link set "$(veth "$h")" master "$BR" up
    nsx "$h" ip link set lo up
    nsx "$h" ip link set tk-p-"$h" name eth0
    nsx "$h" ip addr add "$(ip_of "$h")/24" dev eth0
    nsx "$h" ip link set eth0 up
}

net_up() {
    local h
    for h in $(hosts); do
        ! ip netns list | grep -qw "$(ns "$h")" || tk_die "namespace $(ns "$h") exists already (scripts/cluster down)"
    done
    ! ip link show "$BR" >/dev/null 2>&1 || tk_die "link $BR exists already (scripts/cluster down)"
    tk_say "network: bridge $BR, namespaces $(hosts | sed 's/^/tk-/' | paste -sd' ')"
    ip link add "$BR" type bridge
    ip link set "$BR" up
    for h in $(hosts); do net_host_up "$h"; done
}

net_down() {
    local h
    for h in $(hosts); do
        ip link del "$(veth "$h")" 2>/dev/null || true
        ip netns del "$(ns "$h")" 2>/dev/null || true
    done
    ip link del "$BR" 2>/dev/null || true
}

# netem_available: this kernel has sch_netem (a Firecracker guest kernel, for one, has not)
netem_available() {
    nsx client tc qdisc add dev lo root netem delay 1ms 2>/dev/null || return 1
    nsx client tc qdisc del dev lo root 2>/dev/null || true
}

# net_delay MS: netem on each database host's link (its replies to the app hosts, and replication,
# take MS more: a round trip between an app host and the database grows by MS).
net_delay() {
    local k
    netem_available || tk_die "--delay: this kernel ($(uname -r)) has no netem qdisc (sch_netem)"
    for k in 1 2 3; do nsx "pg$k" tc qdisc replace dev eth0 root netem delay "${1}ms"; done
    echo "$1" > "$C/delay"
    tk_say "netem: ${1} ms on the PostgreSQL hosts' links"
}
net_undelay() {
    local k
    for k in 1 2 3; do nsx "pg$k" tc qdisc del dev eth0 root 2>/dev/null || true; done
    rm -f "$C/delay"
}

# net_cut_db K / net_uncut_db K: app host K's packets to the database hosts (10.231.7.48/29:
# pg1..pg3) are dropped, as on a broken link: a blackhole route (netem loss 100% is not available
# on every kernel). Its open connections hang until their timeouts; new ones fail at once. The
# load balancer still reaches it.
net_cut_db() { nsx "app$1" ip route add blackhole "$NET.48/29"; }
net_uncut_db() { nsx "app$1" ip route del blackhole "$NET.48/29" 2>/dev/null || true; }
