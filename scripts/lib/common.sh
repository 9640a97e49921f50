# common.sh: shared helpers for tenk's scripts (sourced, not run).
# Finds the source tree, installs missing Debian packages, builds out of tree.

TK_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# TENK_VAR_DIR moves the devenv's state (data, sockets, devenv.env) elsewhere, e.g. for a second,
# throw-away devenv beside the usual one (tests/devenv/test_devenv.sh).
TK_VAR=${TENK_VAR_DIR:-$TK_SRC/var}
case "$TK_VAR" in /*) ;; *) TK_VAR="$PWD/$TK_VAR" ;; esac
# The unprivileged user of the devenv's servers and of scripts/run's workers (when run as root).
TK_DEV_USER=tenkdev

tk_say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
tk_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Packages every script needs: the build, the devenv's servers and the test tools.
TK_PKGS_BUILD="autoconf automake libtool pkg-config make gcc libevent-dev libcjson-dev libpq-dev
  libhiredis-dev zlib1g-dev libsystemd-dev libcmocka-dev"
TK_PKGS_RUN="postgresql postgresql-contrib redis-server redis-tools procps passwd util-linux"
# Only for the replicated devenv (scripts/devenv up --pgbouncer; Sentinels are redis-server --sentinel).
TK_PKGS_HA="pgbouncer"
# scripts/cluster: the load balancer, Sentinels, namespaces and netem, the load.
TK_PKGS_CLUSTER="haproxy redis-sentinel iproute2 wrk curl bsdextrautils"
TK_PKGS_TEST="python3 python3-pytest clang libclang-rt-14-dev tmux systemd curl wrk psmisc prometheus chromium nodejs
  slowhttptest valgrind debhelper dh-autoreconf lintian dpkg-dev fakeroot adduser"

# tk_apt_install PKG...: install whichever of PKG are missing (needs root), loudly.
tk_apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || tk_die "missing Debian packages: ${missing[*]} (run as root, or: apt-get install ${missing[*]})"
    tk_say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || tk_die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" || tk_die "apt-get install ${missing[*]} failed"
}

# tk_build DIR [configure args...]: configure (once) and build tenk out of tree in DIR.
tk_build() {
    local dir=$1; shift
    if [ ! -x "$TK_SRC/configure" ] || [ "$TK_SRC/configure.ac" -nt "$TK_SRC/configure" ]; then
        tk_say "autoreconf"
        (cd "$TK_SRC" && autoreconf -fi) || tk_die "autoreconf failed"
    fi
    mkdir -p "$dir"
    if [ ! -f "$dir/Makefile" ] || [ "$dir/config.status" -ot "$TK_SRC/configure" ]; then
        tk_say "configure $* in ${dir#$TK_SRC/}"
        (cd "$dir" && "$TK_SRC/configure" -q "$@") || tk_die "configure failed (see $dir/config.log)"
    fi
    tk_say "make in ${dir#$TK_SRC/}"
    make -C "$dir" -j"$(nproc)" >/dev/null || tk_die "build failed in $dir"
}
