#!/usr/bin/env bash
# test_deb.sh: builds the Debian package from a copy of the tree, checks it with lintian,
# installs it on this machine, runs the installed unit's ExecStart as its User= (no systemd
# as PID 1 here), removes and purges it. Needs root: it installs and purges the package
# `tenk` (and so removes any tenk package installed on this machine).
#
# Prints "ok - NAME" / "not ok - NAME" per check and ends with `N passed, N failed`
# (or `0 passed, 0 failed, 1 skipped` when it cannot run); exits 1 on any failure.
#   TENK_DEB_KEEP=DIR   keep the built .deb, the build log and lintian's output in DIR
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
PASSED=0 FAILED=0
KEEP=${TENK_DEB_KEEP:-}

ok() { PASSED=$((PASSED + 1)); echo "ok - $1"; }
nok() { FAILED=$((FAILED + 1)); echo "not ok - $1"; shift; [ $# -eq 0 ] || printf '    %s\n' "$@"; }
check() { # check NAME COMMAND...: one counted check, passes when COMMAND succeeds
    local name=$1 out; shift
    if out=$("$@" 2>&1); then ok "$name"; else nok "$name" "${out:0:2000}"; fi
}
skip_all() { echo "skip - $1"; echo "0 passed, 0 failed, 1 skipped"; exit 0; }
finish() {
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" = 0 ]
    exit
}

[ "$(id -u)" = 0 ] || skip_all "test_deb needs root (dpkg -i, adduser, purge)"
[ -f "$SRC/debian/control" ] || skip_all "no debian/ in $SRC (a make dist tarball has none)"
for c in dpkg-buildpackage dh lintian fakeroot dh_autoreconf setpriv curl systemd-analyze; do
    command -v "$c" >/dev/null || skip_all "$c is not installed (scripts/lib/common.sh lists it)"
done

TMP=$(mktemp -d /tmp/tenk-deb.XXXXXX)
PID=
cleanup() {
    [ -z "$PID" ] || kill -KILL "$PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

# A tenkd left by an earlier run of this test that died: only processes of the packaged binary.
leftover_tenkd() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/exe" 2>/dev/null)" = /usr/sbin/tenkd ] && echo "${p#/proc/}"
    done
}
purge_leftovers() {
    local p
    for p in $(leftover_tenkd); do kill -KILL "$p" 2>/dev/null; done
    if dpkg-query -W -f='${Status}' tenk 2>/dev/null | grep -qv '^unknown ok not-installed'; then
        dpkg --purge tenk >/dev/null 2>&1 || true
    fi
}
purge_leftovers

# --- 1. build, from a copy, so the tree's build/ and var/ stay as they are -------------------
VERSION=$(dpkg-parsechangelog -l "$SRC/debian/changelog" -S Version)
ARCH=$(dpkg --print-architecture)
DEB="$TMP/tenk_${VERSION}_${ARCH}.deb"
mkdir "$TMP/tenk"
if git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$SRC" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$TMP/tenk"
else
    tar -C "$SRC" --exclude=./build --exclude=./var -cf - . | tar -xf - -C "$TMP/tenk"
fi
(cd "$TMP/tenk" && DEB_BUILD_OPTIONS="parallel=$(nproc)" dpkg-buildpackage -us -uc -b) >"$TMP/build.log" 2>&1
rc=$?
if [ $rc = 0 ] && [ -f "$DEB" ]; then
    ok "dpkg-buildpackage -us -uc -b builds $(basename "$DEB")"
else
    nok "dpkg-buildpackage -us -uc -b builds $(basename "$DEB") (exit $rc)" "$(tail -n 30 "$TMP/build.log")"
    finish
fi
[ -z "$KEEP" ] || { mkdir -p "$KEEP" && cp "$DEB" "$TMP/build.log" "$KEEP/"; }
conf_version=$(sed -nE 's/^AC_INIT\(\[tenk\], \[([^]]+)\].*/\1/p' "$SRC/configure.ac")
check "the package version ($VERSION) is configure.ac's ($conf_version)" test "$VERSION" = "$conf_version"
# dh_auto_test ran `make check`: automake's summary names every unit test.
unit_pass=$(sed -nE 's/^# PASS: +([0-9]+)$/\1/p' "$TMP/build.log" | tail -n 1)
unit_fail=$(sed -nE 's/^# FAIL: +([0-9]+)$/\1/p' "$TMP/build.log" | tail -n 1)
check "the build ran make check: ${unit_pass:-no} unit tests passed, ${unit_fail:-?} failed" \
    test "${unit_pass:-0}" -gt 0 -a "${unit_fail:-1}" = 0

# --- 2. lintian: no error, no warning (overrides carry their reason in the source) ----------
lintian --fail-on error,warning "$TMP"/tenk_"${VERSION}"_"${ARCH}".changes >"$TMP/lintian.log" 2>&1
rc=$?
[ -z "$KEEP" ] || cp "$TMP/lintian.log" "$KEEP/"
ew=$(grep -E '^[EW]: ' "$TMP/lintian.log")
if [ $rc = 0 ] && [ -z "$ew" ]; then ok "lintian: no error, no warning"; else nok "lintian (exit $rc)" "$(cat "$TMP/lintian.log")"; fi

# --- 3. install --------------------------------------------------------------------------
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o DPkg::Lock::Timeout=300 "$DEB" >"$TMP/install.log" 2>&1
rc=$?
status=$(dpkg-query -W -f='${Status} ${Version}' tenk 2>/dev/null)
if [ $rc = 0 ] && [ "$status" = "install ok installed $VERSION" ]; then
    ok "apt-get install ./$(basename "$DEB")"
else
    nok "apt-get install ./$(basename "$DEB") (exit $rc, status '$status')" "$(tail -n 20 "$TMP/install.log")"
    finish
fi

# --- 4. files, user, conffile, enabled unit ------------------------------------------------
UNIT=/lib/systemd/system/tenk.service
missing=()
for f in /usr/sbin/tenkd /usr/bin/tenkctl /etc/tenk/tenk.conf $UNIT /usr/share/man/man8/tenkd.8.gz \
    /usr/share/man/man8/tenkctl.8.gz /usr/share/man/man5/tenk.conf.5.gz /usr/share/doc/tenk/README.md.gz \
    /usr/share/doc/tenk/changelog.gz /usr/share/doc/tenk/copyright; do
    [ -f "$f" ] || missing+=("$f")
done
check "the package installs tenkd, tenkctl, tenk.conf, the unit, 3 man pages, README and changelog" \
    test ${#missing[@]} = 0
[ ${#missing[@]} = 0 ] || printf '    missing: %s\n' "${missing[@]}"
check "/etc/tenk/tenk.conf is a conffile" \
    bash -c "dpkg-query -W -f='\${Conffiles}\n' tenk | grep -qE '^ /etc/tenk/tenk.conf [0-9a-f]{32}$'"
user_ok() {
    local uid shell gid
    IFS=: read -r _ _ uid gid _ _ shell < <(getent passwd tenk) || { echo "no user tenk"; return 1; }
    [ "$uid" -lt 1000 ] || { echo "uid $uid is not a system uid"; return 1; }
    [ "$(getent group tenk | cut -d: -f3)" = "$gid" ] || { echo "primary group is not tenk"; return 1; }
    case "$shell" in */nologin | */false) ;; *) echo "login shell $shell"; return 1 ;; esac
    [ ! -e /home/tenk ] || { echo "/home/tenk was created"; return 1; }
}
check "postinst created the system user and group tenk (no home, no shell)" user_ok
check "tenk.conf is root:tenk 0640 (it may hold passwords)" \
    test "$(stat -c '%U:%G %a' /etc/tenk/tenk.conf)" = "root:tenk 640"
check "postinst enabled the unit (multi-user.target.wants)" \
    test "$(readlink /etc/systemd/system/multi-user.target.wants/tenk.service)" = $UNIT

# --- 5. the configuration check, as root and as the unit's ExecStartPre runs it (User=tenk) ---
unit_get() { sed -nE "s/^$1=(.*)$/\1/p" "$UNIT" | tail -n 1; }
USER_=$(unit_get User) GROUP_=$(unit_get Group)
check "tenkd -t -c /etc/tenk/tenk.conf" bash -c '/usr/sbin/tenkd -t -c /etc/tenk/tenk.conf | grep -qx "configuration OK"'
read -r -a PRE <<<"$(unit_get ExecStartPre)"
check "ExecStartPre (${PRE[*]}) as $USER_" \
    setpriv --reuid="$USER_" --regid="$GROUP_" --init-groups "${PRE[@]}"

# --- 6. systemd-analyze verify on the installed unit ---------------------------------------
out=$(systemd-analyze verify $UNIT 2>&1)
rc=$?
if [ $rc = 0 ] && [ -z "$out" ]; then ok "systemd-analyze verify $UNIT"; else nok "systemd-analyze verify (exit $rc)" "$out"; fi

# --- 7. run the unit's ExecStart as systemd would: User=/Group=, RuntimeDirectory=,
#        LogsDirectory=, LimitNOFILE=, the installed configuration ---------------------------
read -r -a START <<<"$(unit_get ExecStart)"
port_busy() { ! python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", int(sys.argv[1])))' "$1" 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=8080 ADMIN=6060 NAME=tenk EXTRA=()
# The shipped defaults (0.0.0.0:8080, admin 127.0.0.1:6060, name tenk) unless another server
# on this machine holds them (a developer's scripts/run): then loopback ports of our own.
if port_busy 8080 || port_busy 6060; then
    PORT=$(free_port) ADMIN=$(free_port)
    EXTRA+=(--listen "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN")
fi
if [ -e /dev/shm/tenk-tenk ]; then NAME=tenkdeb$$; EXTRA+=(--name "$NAME"); fi
[ ${#EXTRA[@]} = 0 ] || echo "    (8080, 6060 or the name tenk is in use here: adding ${EXTRA[*]})"
install -d -o "$USER_" -g "$GROUP_" -m "$(unit_get RuntimeDirectoryMode)" "/run/$(unit_get RuntimeDirectory)"
install -d -o "$USER_" -g "$GROUP_" -m "$(unit_get LogsDirectoryMode)" "/var/log/$(unit_get LogsDirectory)"
(
    ulimit -n "$(unit_get LimitNOFILE)"
    exec env RUNTIME_DIRECTORY="/run/$(unit_get RuntimeDirectory)" LOGS_DIRECTORY="/var/log/$(unit_get LogsDirectory)" \
        setpriv --reuid="$USER_" --regid="$GROUP_" --init-groups "${START[@]}" "${EXTRA[@]}"
) >"$TMP/tenkd.log" 2>&1 &
PID=$!
deadline=$((SECONDS + 20)) code=
while [ $SECONDS -lt $deadline ] && kill -0 "$PID" 2>/dev/null; do
    code=$(curl -s -o "$TMP/health" -w '%{http_code}' "http://127.0.0.1:$PORT/health") && [ "$code" = 200 ] && break
    sleep 0.1
done
if [ "$code" = 200 ] && grep -q '"status":"ok"' "$TMP/health"; then
    ok "ExecStart (${START[*]}) as $USER_: GET /health answers 200 {\"status\":\"ok\"}"
else
    nok "ExecStart (${START[*]}) as $USER_: GET /health answered '${code:-nothing}'" "$(tail -n 20 "$TMP/tenkd.log")"
fi
check "the master runs as $USER_" \
    bash -c "grep -qE '^Uid:\s+$(id -u "$USER_")\s' /proc/$PID/status"
for path in /db /users; do
    code=$(curl -s -D "$TMP/hdr" -o "$TMP/body" -w '%{http_code}' "http://127.0.0.1:$PORT$path")
    if [ "$code" = 503 ] && grep -qi '^content-type: application/json' "$TMP/hdr" &&
        python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["error"]' "$TMP/body" 2>/dev/null; then
        ok "GET $path with no db.primary: 503 $(cat "$TMP/body")"
    else
        nok "GET $path with no db.primary: $code" "$(cat "$TMP/hdr" "$TMP/body")"
    fi
done
out=$(tenkctl -n "$NAME" status 2>&1)
if echo "$out" | grep -q "master pid $PID" && echo "$out" | grep -qE 'workers +[0-9]+ configured, [0-9]+ running'; then
    ok "tenkctl status (root) shows master $PID and its workers"
else
    nok "tenkctl status (root)" "$out"
fi
kill -TERM "$PID" 2>/dev/null
deadline=$((SECONDS + 20))
while [ $SECONDS -lt $deadline ] && kill -0 "$PID" 2>/dev/null; do sleep 0.1; done
if kill -0 "$PID" 2>/dev/null; then
    nok "SIGTERM stops tenkd within 20 s"
else
    wait "$PID"
    rc=$?
    PID=
    if [ $rc = 0 ]; then ok "SIGTERM stops tenkd (exit 0)"; else nok "tenkd exited $rc on SIGTERM" "$(tail -n 20 "$TMP/tenkd.log")"; fi
fi
check "tenkd logged no error" bash -c "! grep -E '\[(error|crit|alert|emerg)\]' '$TMP/tenkd.log'"

# --- 8. remove keeps the conffile and the user; purge removes everything -------------------
dpkg --remove tenk >"$TMP/remove.log" 2>&1
check "dpkg --remove: binaries gone, conffile and user kept" bash -c \
    "[ ! -e /usr/sbin/tenkd ] && [ -f /etc/tenk/tenk.conf ] && getent passwd tenk >/dev/null &&
     [ \"\$(dpkg-query -W -f='\${Status}' tenk)\" = 'deinstall ok config-files' ]"
dpkg --purge tenk >"$TMP/purge.log" 2>&1
gone=()
for f in /etc/tenk /var/log/tenk /run/tenk /usr/sbin/tenkd /usr/bin/tenkctl $UNIT \
    /etc/systemd/system/multi-user.target.wants/tenk.service /usr/share/doc/tenk; do
    [ ! -e "$f" ] || gone+=("$f")
done
getent passwd tenk >/dev/null && gone+=("user tenk")
getent group tenk >/dev/null && gone+=("group tenk")
dpkg-statoverride --list /etc/tenk/tenk.conf >/dev/null 2>&1 && gone+=("statoverride of tenk.conf")
dpkg-query -W -f='${Status}' tenk 2>/dev/null | grep -qv 'not-installed' && gone+=("dpkg still knows tenk")
if [ ${#gone[@]} = 0 ]; then
    ok "dpkg --purge: files, /etc/tenk, /var/log/tenk, /run/tenk, user and group gone"
else
    nok "dpkg --purge left: ${gone[*]}" "$(cat "$TMP/purge.log")"
fi
finish
