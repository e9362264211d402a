#!/usr/bin/env bash
# Installs everything dynknock needs on Debian/Ubuntu, idempotently:
# apt packages, the "dynknock" system user, and a virtualenv in /opt/dynknock/venv
# built from this checkout (system Python, so the unprivileged stages can run it).
# Safe to run again: a second run only refreshes the installed code.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=/opt/dynknock/venv

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (sudo $0): it installs packages and creates a system user" >&2
    exit 2
fi

apt_packages=(python3 python3-venv python3-dev gcc libpcap-dev nftables iproute2 iputils-ping
              openssh-server openssh-client tcpdump util-linux procps)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# openssh-server's package scripts may start an sshd on the host; dynknock's demo and
# tests run their own sshd inside a namespace and need none here.

getent group dynknock >/dev/null || groupadd --system dynknock
getent passwd dynknock >/dev/null || useradd --system --gid dynknock --no-create-home \
    --home-dir /var/lib/dynknock --shell /usr/sbin/nologin dynknock
install -d -m 0750 -o root -g dynknock /etc/dynknock
install -d -m 0700 -o dynknock -g dynknock /var/lib/dynknock
install -d -m 0750 -o root -g dynknock /var/log/dynknock

if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
fi
# A copy, not an editable install: the unprivileged stages must be able to read the
# code wherever this checkout lives.
"$venv/bin/pip" install -q --upgrade "$repo[dev]"
"$venv/bin/pip" install -q --force-reinstall --no-deps "$repo"
chmod -R a+rX /opt/dynknock
for tool in knock-client knock-admin knock-tap; do
    ln -sf "$venv/bin/$tool" "/usr/local/bin/$tool"
done
command -v supervisord >/dev/null || ln -sf "$venv/bin/supervisord" /usr/local/bin/supervisord
echo "setup: dynknock installed in $venv"
