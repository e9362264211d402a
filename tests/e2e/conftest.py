"""Shared pytest configuration for the end-to-end (network namespace) tests."""

from __future__ import annotations

import pytest

from tests.lab.netlab import LabUnavailable, require_lab_support


def pytest_configure(config: pytest.Config) -> None:
    # Registered here as well as in pyproject.toml so the marker is known
    # (and --strict-markers passes) even when pytest is pointed at this
    # directory with another rootdir/inifile.
    config.addinivalue_line(
        "markers",
        "e2e: whole stack in network namespaces (needs root, netns, nftables, sshd)",
    )


@pytest.fixture(scope="session", autouse=True)
def lab_support() -> None:
    """A machine that cannot build the lab fails every e2e test with one line saying why.

    Failed, not skipped: a suite that skips everything on such a machine would look green.
    """
    missing = ""
    try:
        require_lab_support()
    except LabUnavailable as exc:
        missing = str(exc)
    if missing:  # outside the except: no "during handling of the above exception" in the report
        pytest.fail(f"the e2e lab cannot be built on this machine: {missing}", pytrace=False)
