"""Coverage-guided fuzzing of the decoders with atheris (libFuzzer), for long campaigns by hand.

The harnesses are those of test_fuzz_decoders.py (same input formats, same
assertions), so a crash found here is a failing explicit example there once its
input is saved under tests/fuzz/corpus/<target>/ as NAME.regress.bin.

    python3 -m venv /tmp/fuzz
    /tmp/fuzz/bin/pip install atheris hypothesis pycryptodome msgpack dpkt
    PYTHONPATH=. /tmp/fuzz/bin/python tests/fuzz/fuzz_atheris.py frames \\
        -max_total_time=60 -max_len=400 /tmp/fuzz-frames tests/fuzz/corpus/frames

TARGET is one of packets, plaintexts, sealed, bus, frames; the rest goes to
libFuzzer (the first corpus directory is where it writes new inputs, so give a
scratch one first and the committed seeds after it).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent

# msgpack's C extension is opaque to coverage; its pure-Python fallback is not.
os.environ.setdefault("MSGPACK_PUREPYTHON", "1")

with atheris.instrument_imports(include=["auth", "capture", "dynknock", "dpkt", "msgpack"]):
    import dpkt  # noqa: F401
    import msgpack  # noqa: F401

    import dynknock.bus  # noqa: F401
    import dynknock.capture.core  # noqa: F401
    import dynknock.protocol  # noqa: F401


def _harnesses() -> object:
    spec = importlib.util.spec_from_file_location("fuzz_harnesses", HERE / "test_fuzz_decoders.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    harnesses = _harnesses()
    targets = {
        "packets": harnesses.fuzz_packet,  # type: ignore[attr-defined]
        "plaintexts": harnesses.fuzz_plaintext,  # type: ignore[attr-defined]
        "sealed": harnesses.fuzz_sealed_plaintext,  # type: ignore[attr-defined]
        "bus": harnesses.fuzz_bus,  # type: ignore[attr-defined]
        "frames": harnesses.fuzz_frame,  # type: ignore[attr-defined]
    }
    if len(sys.argv) < 2 or sys.argv[1] not in targets:
        raise SystemExit(f"usage: fuzz_atheris.py {{{','.join(targets)}}} [libFuzzer options] [corpus dirs]")
    target = targets[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
