#!/bin/sh
# test_systemd.sh UNIT NMFD -- checks the generated nmfd.service:
#  - every @VAR@ was substituted and the contract's directives are there;
#  - `systemd-analyze verify` accepts it (with ExecStart pointed at the
#    built nmfd, since the installed path does not exist yet);
#  - `systemd-analyze security --offline=true` rates its exposure <= 2.0.
# Exits 77 (skipped) only when systemd-analyze is not installed.
set -eu

unit=$1
# ExecStart needs an absolute path; meson may hand us a relative one.
nmfd=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
max_exposure=2.0

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd-analyze not found; skipping"
    exit 77
fi

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

grep -q '@[A-Z_]*@' "$unit" && fail "unsubstituted variable in $unit"
for d in 'Type=notify' 'NotifyAccess=main' 'WatchdogSec=' \
    'ExecReload=/bin/kill -HUP $MAINPID' 'Restart=on-failure' \
    'RestartPreventExitStatus=2' 'DynamicUser=yes' 'StateDirectory=nmfd' \
    'ConfigurationDirectory=nmfd' 'ProtectSystem=strict' \
    'NoNewPrivileges=yes' 'SystemCallFilter=@system-service' \
    'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX' 'UMask=0077'; do
    grep -qxF "$d" "$unit" || grep -q "^$d" "$unit" || fail "missing $d"
done
# Brokers are remote in production: the unit must not cut off the network.
grep -q '^IPAddressDeny=' "$unit" && fail "IPAddressDeny= would cut off Kafka"
grep -q '^PrivateNetwork=yes' "$unit" && fail "PrivateNetwork= would cut off Kafka"
grep -Eq '^ExecStart=/[^ ]*/nmfd --config [^ ]+/nmfd\.conf$' "$unit" ||
    fail "unexpected ExecStart: $(grep '^ExecStart=' "$unit")"

sed "s|^ExecStart=[^ ]*|ExecStart=$nmfd|" "$unit" >"$tmp/nmfd.service"
if ! systemd-analyze verify "$tmp/nmfd.service" >"$tmp/verify.out" 2>&1 ||
    [ -s "$tmp/verify.out" ]; then
    cat "$tmp/verify.out" >&2
    fail "systemd-analyze verify"
fi

systemd-analyze security --offline=true "$tmp/nmfd.service" \
    >"$tmp/security.out" 2>&1 || true
exposure=$(sed -n 's/.*Overall exposure level for nmfd\.service: \([0-9.]*\).*/\1/p' \
    "$tmp/security.out")
[ -n "$exposure" ] || { cat "$tmp/security.out" >&2; fail "no exposure level"; }
echo "overall exposure $exposure (at most $max_exposure)"
awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e <= m) }' || {
    grep '✗' "$tmp/security.out" >&2 || true
    fail "exposure $exposure > $max_exposure"
}

# The drop-in docs/operations.md gives for the HTTP secrets keeps the
# unit valid and its exposure where it was.
mkdir "$tmp/cred"
awk '{ print } /^\[Service\]/ {
    print "LoadCredential=tls.key:/etc/nmfd/tls.key"
    print "LoadCredential=token:/etc/nmfd/token" }' \
    "$tmp/nmfd.service" >"$tmp/cred/nmfd.service"
grep -q '^LoadCredential=token:' "$tmp/cred/nmfd.service" ||
    fail "the credential drop-in was not applied"
if ! systemd-analyze verify "$tmp/cred/nmfd.service" >"$tmp/verify2.out" 2>&1 ||
    [ -s "$tmp/verify2.out" ]; then
    cat "$tmp/verify2.out" >&2
    fail "systemd-analyze verify with LoadCredential="
fi
systemd-analyze security --offline=true "$tmp/cred/nmfd.service" \
    >"$tmp/security2.out" 2>&1 || true
exposure2=$(sed -n 's/.*Overall exposure level for nmfd\.service: \([0-9.]*\).*/\1/p' \
    "$tmp/security2.out")
echo "with LoadCredential=: overall exposure $exposure2"
awk -v e="$exposure2" -v m="$max_exposure" 'BEGIN { exit !(e != "" && e <= m) }' ||
    fail "exposure with LoadCredential= $exposure2 > $max_exposure"
echo "ok"
