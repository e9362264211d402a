"""client/lean.py's stand-ins against typing.NamedTuple and secrets, and what knock-client's
start-up path imports (a module coming back is a start-up regression; bench/client_startup.py
says how much it costs)."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from collections import Counter
from pathlib import Path

import pytest

from dynknock.client.lean import secrets

# As the client's modules import it: mypy sees typing's, the run gets client/lean.py's.
if typing.TYPE_CHECKING:
    from typing import NamedTuple
else:
    from dynknock.client.lean import NamedTuple

REPO = Path(__file__).resolve().parents[2]


class Point(NamedTuple):
    """A point."""

    x: int
    y: int = 2

    @property
    def total(self) -> int:
        return self.x + self.y


class TypingPoint(typing.NamedTuple):
    """A point."""

    x: int
    y: int = 2

    @property
    def total(self) -> int:
        return self.x + self.y


def test_named_tuple_is_what_typing_makes() -> None:
    ours, theirs = Point(1), TypingPoint(1)
    assert ours == (1, 2) and theirs == (1, 2) and hash(ours) == hash(theirs)
    assert repr(ours) == "Point(x=1, y=2)" and repr(theirs) == "TypingPoint(x=1, y=2)"
    assert Point._fields == TypingPoint._fields and Point._field_defaults == TypingPoint._field_defaults
    assert ours.total == 3 and Point.__doc__ == "A point." and Point.__module__ == __name__
    assert Point.__qualname__ == "Point" and ours._replace(y=5) == (1, 5) and ours._asdict() == {"x": 1, "y": 2}
    assert issubclass(Point, tuple) and not hasattr(ours, "__dict__")
    with pytest.raises(AttributeError):
        ours.x = 3  # type: ignore[misc]


def test_named_tuple_refuses_what_typing_refuses() -> None:
    with pytest.raises(TypeError):
        class Bad(NamedTuple):
            x: int = 1
            y: int  # type: ignore[misc]

    with pytest.raises(AttributeError):
        class Worse(NamedTuple):
            x: int

            def _asdict(self) -> dict[str, int]:  # type: ignore[misc]
                return {}


def test_token_bytes() -> None:
    assert len(secrets.token_bytes(16)) == 16 and secrets.token_bytes(16) != secrets.token_bytes(16)


def test_randbelow_is_uniform_and_in_range() -> None:
    with pytest.raises(ValueError):
        secrets.randbelow(0)
    assert {secrets.randbelow(1) for _ in range(20)} == {0}
    counts = Counter(secrets.randbelow(6) for _ in range(6000))
    assert set(counts) == set(range(6))
    assert all(800 < n < 1200 for n in counts.values())  # ~13 standard deviations from 1000
    assert max(secrets.randbelow(64512) for _ in range(2000)) > 60000


# The modules the start-up no longer pays for, and why each matters (bench/client_startup_results.md).
NOT_ON_THE_KEY_FILE_PATH = ("argparse", "typing", "dataclasses", "inspect", "pathlib", "hmac", "hashlib", "_hashlib",
                            "socket", "selectors", "secrets", "base64", "re", "random", "gettext", "Crypto")


SERVER_LINE = "dynknock-x25519 CQ/sVuX2tiYKhf8zSybXFB7OdqdYrC4qsg5BjYeBdxk="


@pytest.mark.parametrize("kind", ["symmetric", "key pair"])
def test_a_proxy_run_with_a_key_file_imports_none_of_the_slow_modules(tmp_path: Path, kind: str) -> None:
    """knock-client --proxy -k KEY HOST, as ssh runs it, up to the knock: quick_parse, the
    config and the key file read, the session keys, P1 sealed (and signed, for a key pair).
    None of these modules loads."""
    key = tmp_path / "k.key"
    seed = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    key.write_text(f"dynknock-ed25519-private {seed}\n" if kind == "key pair" else seed + "\n")
    key.chmod(0o600)
    pin = ["--server-key", SERVER_LINE] if kind == "key pair" else []
    code = f"""
import sys
from dynknock.client import main
options = main.quick_parse(["--proxy", "-q", "-k", {str(key)!r}, *{pin!r}, "127.0.0.1"])
assert options is not None
from dynknock.client import app
from dynknock.client.session import ClientSession, Timing, new_request
settings = app.resolve_settings(options, {{"USER": "alice"}})
keys, pair = app.Client(settings, app.Io())._keys()
assert (pair is None) == {kind == "symmetric"!r}
session = ClientSession(keys, new_request("ssh", None), Timing(), pair=pair)
session.start(0.0, 1_700_000_000_000)
print(" ".join(sorted(set(sys.modules) & set({NOT_ON_THE_KEY_FILE_PATH!r}))))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {
        "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
