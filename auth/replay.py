"""Replay protection that survives restarts and several devices per user.

The SIG^2 paper kept the last timestamp per user and refused anything not newer.
That breaks with two devices whose clocks differ by a second, and forgets
everything when the daemon restarts. Instead:

* a packet is accepted only if its timestamp lies within ±skew of the server's
  clock (checked by the engine), and
* its nonce has never been accepted before. Accepted nonces are remembered until
  their timestamp leaves the window (after that the timestamp check alone
  refuses the packet), so memory is bounded by the rate of *authenticated*
  packets, which an attacker without a key cannot raise.

The journal appends each accepted nonce to a file, and auth fsyncs it once per
batch of packets *before* any effect of the batch (a reply, a door command)
leaves the process, so a restart reloads every nonce that had an effect: a
packet captured before the restart is still a replay after it. (One fdatasync
per packet made auth spend a third of its time in the journal at 1,000 clients.)

The journal is compacted while running, not only at start: once it holds more than
twice the live records (and at least COMPACT_SLACK dead ones), the live set is
written to a new file, synced, and renamed over it. So a server that runs for
months keeps a journal of about its last minutes, not of every packet ever.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

_RECORD = struct.Struct("!Q24s")  # expiry in ms, nonce
COMPACT_SLACK = 4096  # dead records tolerated before a compaction (128 KiB): rewrites stay rare


class ReplayJournal:
    """Append-only file of (expiry_ms, nonce) records, compacted on open."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = -1
        self._unsynced = False
        self.records = 0  # records in the file now, live or dead

    def load_and_compact(self, now_ms: int) -> dict[bytes, int]:
        live: dict[bytes, int] = {}
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            data = b""
        whole = len(data) - len(data) % _RECORD.size  # a torn last record is dropped
        for expiry, nonce in _RECORD.iter_unpack(data[:whole]):
            if expiry > now_ms:
                live[nonce] = max(expiry, live.get(nonce, 0))
        self.rewrite(live)
        return live

    def rewrite(self, live: dict[bytes, int]) -> None:
        """Replace the file by exactly these records, durably, and append to the new one.

        `live` holds every record appended so far that still matters (the cache's whole
        set, unsynced ones included), so after the fsync of the new file and of the
        directory nothing appended before is lost, synced or not.
        """
        tmp = self._path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            handle.write(b"".join(_RECORD.pack(e, n) for n, e in live.items()))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self._path)
        directory = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself must survive a crash, or the old file comes back
        finally:
            os.close(directory)
        self.close()
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
        self.records = len(live)
        self._unsynced = False

    def append(self, nonce: bytes, expiry_ms: int) -> None:
        """Write the record; it is durable only after sync()."""
        os.write(self._fd, _RECORD.pack(expiry_ms, nonce))
        self.records += 1
        self._unsynced = True

    def sync(self) -> None:
        """One fdatasync for everything appended since the last: the shell calls it before
        any effect of the packets it covers (a reply, a door command) leaves the process."""
        if self._unsynced:
            os.fdatasync(self._fd)
            self._unsynced = False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ReplayCache:
    """Nonces accepted within the window; optional journal for restarts."""

    def __init__(self, journal: ReplayJournal | None = None, now_ms: int = 0) -> None:
        self._journal = journal
        self._seen: dict[bytes, int] = journal.load_and_compact(now_ms) if journal else {}
        self._next_sweep_ms = now_ms

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, nonce: bytes, now_ms: int) -> bool:
        expiry = self._seen.get(nonce)
        return expiry is not None and expiry > now_ms

    def remember(self, nonce: bytes, expiry_ms: int) -> None:
        if self._journal is not None:
            self._journal.append(nonce, expiry_ms)
        self._seen[nonce] = expiry_ms

    def sweep(self, now_ms: int) -> None:
        if now_ms < self._next_sweep_ms:
            return
        self._seen = {n: e for n, e in self._seen.items() if e > now_ms}
        self._next_sweep_ms = now_ms + 10_000
        journal = self._journal
        if journal is not None and journal.records > 2 * len(self._seen) + COMPACT_SLACK:
            journal.rewrite(self._seen)
