"""etcd's published RBAC bypasses, by release: the members of the store an operator must upgrade.

A table apart from the store (auth/etcd.py), read and extended on its own as advisories come out;
the store's health() reports the advisories each member's version is affected by.
"""

from __future__ import annotations

_FIXED_42 = {(3, 4): (3, 4, 42), (3, 5): (3, 5, 28), (3, 6): (3, 6, 9)}
_FIXED_44 = {(3, 4): (3, 4, 44), (3, 5): (3, 5, 30), (3, 6): (3, 6, 11)}
# etcd's published RBAC bypasses that matter to this store, and the first release of each line
# that fixes them (a line not listed: fixed if newer than the newest listed, affected if older).
# Debian 12's etcd-server 3.4.23 has all three; verified in tests/stage/test_etcd_store.py.
ADVISORIES: tuple[tuple[str, dict[tuple[int, int], tuple[int, int, int]]], ...] = (
    ("CVE-2026-33343 (nested txns skip RBAC: any logged-in user, a replica too, can write the users)", _FIXED_42),
    ("CVE-2026-33413 (alarms, compaction, lease and member APIs need no login: a client certificate "
     "alone can raise NOSPACE and stop every claim)", _FIXED_42),
    ("CVE-2026-44283 (lease attachment and prev_kv in txn puts skip RBAC)", _FIXED_44),
)


def advisories(version: str) -> list[str]:
    """The ADVISORIES an etcd server of `version` ("3.4.23") is affected by; [] if unparsable."""
    try:
        parts = tuple(int(x) for x in version.split("-")[0].split(".")[:3])
        major, minor, patch = parts[0], parts[1], parts[2]
    except (ValueError, IndexError):
        return []
    found = []
    for text, fixed in ADVISORIES:
        line = fixed.get((major, minor))
        if line is not None:
            affected = (major, minor, patch) < line
        else:
            affected = (major, minor) < min(fixed)
        if affected:
            found.append(f"etcd {version}: {text}")
    return found
