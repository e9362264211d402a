#!/usr/bin/env bash
# Removes what scripts/setup.sh installed, one line per step:
#   sudo ./scripts/uninstall.sh           stops dynknock; removes its nftables table, the
#                                         systemd unit, the venv and commands, the dynknock
#                                         user; KEEPS /etc/dynknock (config, users file),
#                                         /var/lib/dynknock (replay journal) and the logs
#   sudo ./scripts/uninstall.sh --purge   also removes those three directories
# The apt packages stay (other software may use them).
set -euo pipefail
venv=/opt/dynknock/venv
etc=/etc/dynknock
unit=/etc/systemd/system/dynknock.service
pidfile=/run/dynknock-supervisord.pid
purge=false

say() { echo "uninstall: $*"; }

for arg in "$@"; do
    case "$arg" in
        --purge) purge=true ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "uninstall.sh: unknown argument $arg (only --purge)" >&2; exit 2 ;;
    esac
done
if [ "$(id -u)" -ne 0 ]; then
    echo "uninstall.sh: run as root (sudo $0)" >&2
    exit 2
fi

# The table name is the config's gate.table (read before the venv goes), "dynknock" by default.
table=dynknock
if [ -x "$venv/bin/python" ] && [ -e "$etc/dynknock.toml" ]; then
    table=$("$venv/bin/python" -c 'import sys; from dynknock.config import load; print(load(sys.argv[1]).nft_table)' \
            "$etc/dynknock.toml" 2>/dev/null) || table=dynknock
fi

if [ -d /run/systemd/system ] && systemctl list-unit-files dynknock.service >/dev/null 2>&1; then
    say "stopping: systemctl disable --now dynknock"
    systemctl disable --now dynknock >/dev/null 2>&1 || true
fi
if [ -e "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    pid=$(cat "$pidfile")
    say "stopping: supervisord (pid $pid) and its stages"
    kill -TERM "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "uninstall.sh: supervisord (pid $pid) did not stop within 30 s" >&2
        exit 1
    fi
else
    say "stopping: supervisord is not running"
fi

if nft list table inet "$table" >/dev/null 2>&1; then
    say "nftables: deleting table inet $table (knock-gate --remove-table: also puts route_localnet back)"
    if ! { [ -x "$venv/bin/knock-gate" ] && [ -e "$etc/dynknock.toml" ] &&
           "$venv/bin/knock-gate" --remove-table -c "$etc/dynknock.toml" >/dev/null 2>&1; }; then
        nft delete table inet "$table"
    fi
else
    say "nftables: no table inet $table"
fi

say "systemd: removing $unit"
rm -f "$unit"
if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

say "program: removing $venv, the commands in /usr/local/bin and $etc/supervisord.conf"
for tool in knock-client knock-admin knock-tap supervisord supervisorctl; do
    link=/usr/local/bin/$tool
    if [ -L "$link" ] && [ "$(readlink "$link")" = "$venv/bin/$tool" ]; then rm -f "$link"; fi
done
rm -rf /opt/dynknock
rm -f "$etc/supervisord.conf" "$etc/supervisord.conf.old"
rm -rf /run/dynknock /run/dynknock-supervisor.sock "$pidfile"

if getent passwd dynknock >/dev/null; then
    say "user: deleting user dynknock"
    userdel dynknock
fi
if getent group dynknock >/dev/null; then groupdel dynknock; fi

if $purge; then
    say "purge: removing $etc (config, users file), /var/lib/dynknock (replay journal), /var/log/dynknock"
    rm -rf "$etc" /var/lib/dynknock /var/log/dynknock
else
    say "kept: $etc (config, users file), /var/lib/dynknock (replay journal), /var/log/dynknock; --purge removes them"
fi
say "done"
