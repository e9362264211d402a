"""Shared pytest configuration for the end-to-end (network namespace) tests."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Registered here as well as in pyproject.toml so the marker is known
    # (and --strict-markers passes) even when pytest is pointed at this
    # directory with another rootdir/inifile.
    config.addinivalue_line(
        "markers",
        "e2e: whole stack in network namespaces (needs root, netns, nftables, sshd)",
    )
