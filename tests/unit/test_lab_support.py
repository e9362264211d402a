"""When the lab cannot be built, the demo and the tests say in one line what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynknock.lab import demo
from dynknock.lab.netlab import LabUnavailable, explain_netns_failure, explain_nft_failure

REPO = Path(__file__).resolve().parents[2]


def test_netns_exec_without_a_root_mount_point_is_explained() -> None:
    line = explain_netns_failure('"mount --make-rslave /" failed: Invalid argument\n')
    assert "\n" not in line
    assert "ip netns exec" in line and "mount point" in line and "mount --bind / /" in line


def test_other_netns_failures_keep_what_ip_said() -> None:
    line = explain_netns_failure("mount of /sys failed: Operation not permitted\nsecond line\n")
    assert "\n" not in line and "mount of /sys failed: Operation not permitted" in line


@pytest.mark.parametrize("stderr", [
    "Error: Could not process rule: Operation not supported\nadd table inet dkprobe\n^^^^^^^^^^^^^^^^^^^^^\n",
    "netlink: Error: cannot open socket: Protocol not supported\n",
])
def test_nft_missing_from_the_kernel_is_explained(stderr: str) -> None:
    line = explain_nft_failure(stderr)
    assert "\n" not in line and "nf_tables" in line and "modprobe" in line


def test_nft_not_installed_is_explained() -> None:
    line = explain_nft_failure(None)
    assert "\n" not in line and "apt-get install nftables" in line


def test_demo_prints_one_line_when_the_lab_cannot_be_built(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    def unavailable() -> None:
        raise LabUnavailable("nftables is not usable in this kernel (modprobe nf_tables)")

    monkeypatch.setattr(demo, "require_lab_support", unavailable)
    assert demo.main(["--supervisord-conf", str(REPO / "supervisord.conf")]) == 2
    err = capsys.readouterr().err
    assert err == "knock-demo: nftables is not usable in this kernel (modprobe nf_tables)\n"
