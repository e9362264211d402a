"""The README's first command on a fresh minimal machine: Debian 12 and Ubuntu 24.04.

Every other test runs on this host, which has whatever earlier runs and its image put
there (netbase's /etc/protocols, say): a file the product needs but never installs goes
unseen. Here a minimal root file system is built from the distribution's archive with
`debootstrap --variant=minbase` (the base of many container and cloud images), a clean
clone of this repository's HEAD is put in /root/dynknock, and the README's first command
runs in it as root, as on a new machine: nothing of this host but its kernel and its
network (for apt and pip).

The root gets a mount namespace and a PID namespace of its own and becomes their root by
pivot_root (so `ip netns exec` and `nsenter` see it as "/", as on a real machine); the
demo makes its own network namespaces inside it and tears them down; when the test ends,
every process and mount of the machine goes with its namespaces. The environment is
empty but for PATH, HOME, TERM and PIP_CERT: the root trusts the certificates this host
trusts, because it reaches PyPI through this host's network (which, in this workplace,
re-signs TLS). The clone is of HEAD: uncommitted changes are not in it.

Cost (measured on 2 CPUs): debootstrap ~25 s, the README's command ~60-90 s (apt, pip,
pypcap's build, the demo) per distribution.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
KEYS = Path(__file__).resolve().parent / "keys"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
ROOT_CA = "/etc/host-trusted-ca.crt"  # in the root: not where a package would put anything


@dataclass(frozen=True)
class Distribution:
    suite: str
    mirror: str
    # Ubuntu's archive key is not in Debian: tests/e2e/keys/ubuntu-archive-keyring.gpg comes from
    # ubuntu-keyring 2023.11.28.1 (key F6EC B376 2474 EDA9 D21B 7022 8719 20D1 991B C93C).
    keyring: Path | None = None
    script: str | None = None  # debootstrap's script, when it has none for this suite
    # What the distribution's own images list (debootstrap writes only "main").
    sources: str | None = None


UBUNTU = "http://archive.ubuntu.com/ubuntu"
DISTRIBUTIONS = {
    "debian-12": Distribution("bookworm", "http://deb.debian.org/debian"),
    "ubuntu-24.04": Distribution(
        "noble", UBUNTU, KEYS / "ubuntu-archive-keyring.gpg", "/usr/share/debootstrap/scripts/gutsy",
        "".join(f"deb {UBUNTU} {suite} main restricted universe multiverse\n"
                for suite in ("noble", "noble-updates", "noble-security"))),
}

# Runs as root in a new mount and PID namespace: make the root a machine, then run "$@" in it.
MACHINE = r"""
set -eu
root=$1; shift
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=0755 run "$root/run"
mount -t tmpfs -o mode=1777 tmp "$root/tmp"
cd "$root"
mkdir -p .host
pivot_root . .host
umount -l /.host
rmdir /.host
cd /root
exec "$@"
"""


def readme_first_command() -> str:
    """The first command of the README's first code block, comment cut."""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("    ") and line.strip():
            return re.split(r"\s{2,}#", line.strip(), maxsplit=1)[0].strip()
    raise AssertionError("the README has no code block")


def debootstrap(distribution: Distribution, root: Path) -> None:
    argv = ["debootstrap", "--variant=minbase"]
    if distribution.keyring is not None:
        argv.append(f"--keyring={distribution.keyring}")
    argv += [distribution.suite, str(root), distribution.mirror]
    if distribution.script is not None:
        argv.append(distribution.script)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"debootstrap failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    if distribution.sources is not None:
        (root / "etc/apt/sources.list").write_text(distribution.sources)
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    if HOST_CA.exists():
        shutil.copy(HOST_CA, root / ROOT_CA.lstrip("/"))


def run_in(root: Path, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TERM=dumb"]
    if HOST_CA.exists():
        env.append(f"PIP_CERT={ROOT_CA}")
    argv = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--",
            "sh", "-c", MACHINE, "machine", str(root), "env", "-i", *env, "bash", "-c", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dynknock-fresh-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_the_readme_demo_runs_on_a_fresh_minimal_machine(name: str, scratch: Path) -> None:
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is not installed (scripts/test.sh installs it)", pytrace=False)
    root = scratch / "root"
    debootstrap(DISTRIBUTIONS[name], root)
    assert not (root / "etc/protocols").exists(), "minbase was expected to lack netbase"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(root / "root/dynknock")], check=True)
    # A minimal machine has no sudo, and whoever runs this is root (as the README asks).
    command = readme_first_command().removeprefix("sudo ")
    assert shlex.split(command)[0] == "./scripts/demo.sh", "the README's first command is no longer the demo"
    done = run_in(root, f"cd /root/dynknock && {command}", timeout=900)
    report = f"{command} exited {done.returncode}\n--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-4000:]}"
    assert done.returncode == 0, report
    said = done.stdout + done.stderr
    assert re.search(r"Door is open at \S+ port \d+ for \d+ seconds", said), report
    assert "hello from" in said and "through the door" in said, report
    # The stack really ran in the machine: the gate's firewall rule and the kernel door, as the tap saw them.
    assert "Firewall opened port" in said and "through the kernel door" in said, report
