#!/usr/bin/env bash
# Installs or upgrades dynknock on Debian/Ubuntu, idempotently, one line of progress per step:
# apt packages, the "dynknock" system user, its directories, a virtualenv in
# /opt/dynknock/venv built from this checkout (system Python, so the unprivileged stages
# can run it), /etc/dynknock/supervisord.conf and the systemd unit dynknock.service.
# Run it again after `git pull` to upgrade: users, config and the replay journal stay, and a
# running stack is restarted onto the new code. scripts/uninstall.sh undoes it.
#
#   sudo scripts/setup.sh               # one server (or a fleet's host, or an auth replica)
#   sudo scripts/setup.sh --with-etcd   # also etcd-server, etcd-client and openssl, for the etcd members
#                                       # and the admin host of replicated auth (examples/ha/README.md);
#                                       # the etcd.service the package brings is left stopped and disabled
#                                       # until examples/ha's configuration is in place
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=/opt/dynknock/venv
etc=/etc/dynknock
unit=/etc/systemd/system/dynknock.service
ctl_socket=/run/dynknock-supervisor.sock

step() { echo "setup: $*"; }
# Runs a command that chatters (compiler hints, deprecation notes); shows its output only if it fails.
quiet() { local out; if ! out=$("$@" 2>&1); then echo "$out" >&2; echo "setup.sh: failed: $*" >&2; exit 1; fi; }

with_etcd=false
for arg in "$@"; do
    case "$arg" in
        --with-etcd) with_etcd=true ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (sudo $0): it installs packages and creates a system user" >&2
    exit 2
fi

apt_packages=(python3 python3-venv python3-dev gcc libpcap-dev nftables iproute2 iputils-ping
              openssh-server openssh-client tcpdump util-linux procps
              conntrack)  # the gate's `conntrack -E`: kernel doors' connection events and byte counts
if $with_etcd; then
    apt_packages+=(etcd-server etcd-client openssl)
fi
missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    step "apt: installing ${missing[*]} (apt-get update + install, may take a minute)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    for p in "${missing[@]}"; do
        policy=$(apt-cache policy "$p" 2>/dev/null)  # not piped into grep -q: SIGPIPE under pipefail
        if [[ "$policy" != *"Candidate: "[0-9]* ]]; then
            # Ubuntu keeps python3-venv and conntrack in "universe", which debootstrap-made and
            # some cloud images leave out.
            echo "setup.sh: apt knows no package $p: on Ubuntu enable the universe component" \
                 "(add-apt-repository universe, or add it to Components: in /etc/apt/sources.list.d/ubuntu.sources), then run me again" >&2
            exit 1
        fi
    done
    # etcd-server's package would start etcd with its default configuration (no TLS, no RBAC):
    # nothing may start while the packages install (policy-rc.d 101), and it stays disabled below.
    policy=/usr/sbin/policy-rc.d
    ours=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        ours="$policy"
        trap 'rm -f "$ours"' EXIT
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ -z "$ours" ] || rm -f "$ours"
    trap - EXIT
else
    step "apt: all ${#apt_packages[@]} packages already installed"
fi
# openssh-server's package scripts may start an sshd on the host; dynknock's demo and
# tests run their own sshd inside a namespace and need none here.
if $with_etcd; then
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ] \
            && ! grep -q '^ETCD_CLIENT_CERT_AUTH' /etc/default/etcd 2>/dev/null; then
        systemctl disable --now etcd.service >/dev/null 2>&1 || true
        step "etcd: installed, not started: configure it as examples/ha/README.md says, then systemctl enable --now etcd"
    else
        step "etcd: installed (etcd-server, etcd-client, openssl)"
    fi
fi

if getent passwd dynknock >/dev/null; then
    step "user: dynknock exists"
else
    step "user: creating system user and group dynknock"
    getent group dynknock >/dev/null || groupadd --system dynknock
    useradd --system --gid dynknock --no-create-home --home-dir /var/lib/dynknock \
        --shell /usr/sbin/nologin dynknock
fi

step "directories: $etc (root:dynknock 0750), /var/lib/dynknock (dynknock 0700), /var/log/dynknock"
install -d -m 0750 -o root -g dynknock "$etc"
install -d -m 0700 -o dynknock -g dynknock /var/lib/dynknock
install -d -m 0750 -o root -g dynknock /var/log/dynknock
# After an uninstall and a reinstall the user may have another uid: the replay journal and
# the users file kept from before must still be the service's.
chown -R dynknock:dynknock /var/lib/dynknock
if [ -e "$etc/users.json" ]; then chgrp dynknock "$etc/users.json"; fi

if [ ! -x "$venv/bin/python" ]; then
    step "venv: creating $venv"
    /usr/bin/python3 -m venv "$venv"
    # A venv left half-made (no network, say) would be taken as done by the next run.
    "$venv/bin/pip" install -q --upgrade pip || { rm -rf "$venv"; exit 1; }
fi
step "pip: installing dynknock from $repo and its dependencies into $venv (about 30 s the first time)"
# A copy, not an editable install: the unprivileged stages must be able to read the
# code wherever this checkout lives. pip builds in the checkout, and setuptools' build/ keeps
# every file an earlier layout had (0.1's top-level auth/, client/, ...): the wheel would carry
# them back into site-packages, so each install builds from an empty one.
rm -rf "$repo/build"
# pypcap's only release ships a C file made by a Cython too old for Python 3.12 (Ubuntu 24.04,
# Debian 13): it does not compile there. Build it from its own pcap.pyx with a current Cython, on
# every Python, so that the build CI tests is the one every server gets.
pypcap=1.3.0
if ! "$venv/bin/python" -c "import pcap, sys; sys.exit(pcap.__version__ != '$pypcap')" 2>/dev/null; then
    step "pypcap: building $pypcap from its Cython source (its release's C file predates Python 3.12)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$venv/bin/pip" install -q "cython>=3.0,<4"
    "$venv/bin/pip" download -q --no-deps --no-binary :all: "pypcap==$pypcap" -d "$work"
    tar -xzf "$work/pypcap-$pypcap.tar.gz" -C "$work"
    # -2: the language level the released C file was made with (str literals, division).
    quiet "$venv/bin/cython" -2 "$work/pypcap-$pypcap/pcap.pyx" -o "$work/pypcap-$pypcap/pcap.c"
    quiet "$venv/bin/pip" install -q --no-cache-dir "$work/pypcap-$pypcap"
    "$venv/bin/pip" uninstall -q -y cython
fi
"$venv/bin/pip" install -q --upgrade "$repo[server,dev]"
"$venv/bin/pip" install -q --force-reinstall --no-deps "$repo"
chmod -R a+rX /opt/dynknock

step "commands: knock-client knock-admin knock-tap supervisord supervisorctl in /usr/local/bin"
for tool in knock-client knock-admin knock-tap; do
    ln -sf "$venv/bin/$tool" "/usr/local/bin/$tool"
done
for tool in supervisord supervisorctl; do
    command -v "$tool" >/dev/null || ln -sf "$venv/bin/$tool" "/usr/local/bin/$tool"
done

# supervisord.conf is part of the program (commands, privileges), not of the settings (those
# are in dynknock.toml): an upgrade replaces it, keeping a changed one as .old.
if [ -e "$etc/supervisord.conf" ] && ! cmp -s "$repo/supervisord.conf" "$etc/supervisord.conf"; then
    step "supervisord.conf: replacing $etc/supervisord.conf (the previous one kept as supervisord.conf.old)"
    cp -p "$etc/supervisord.conf" "$etc/supervisord.conf.old"
else
    step "supervisord.conf: installing $etc/supervisord.conf"
fi
install -m 0640 -o root -g root "$repo/supervisord.conf" "$etc/supervisord.conf"

step "systemd: installing $unit"
install -m 0644 -o root -g root "$repo/packaging/dynknock.service" "$unit"
systemd_running=false
[ -d /run/systemd/system ] && systemd_running=true
if $systemd_running; then systemctl daemon-reload; fi

# Upgrade: a running stack restarts onto the code just installed.
if $systemd_running && systemctl is-active --quiet dynknock; then
    step "restart: systemctl restart dynknock (onto the new code)"
    systemctl restart dynknock
elif [ -S "$ctl_socket" ] && "$venv/bin/supervisorctl" -c "$etc/supervisord.conf" pid >/dev/null 2>&1; then
    step "restart: supervisorctl reload (supervisord re-reads its config and restarts every stage)"
    "$venv/bin/supervisorctl" -c "$etc/supervisord.conf" reload >/dev/null
else
    step "not running; start it with: systemctl enable --now dynknock (or supervisord -c $etc/supervisord.conf)"
fi
if [ ! -e "$etc/dynknock.toml" ]; then step "next: cp examples/dynknock.toml $etc/ and edit it (see README.md)"; fi
step "done: dynknock installed in $venv"
