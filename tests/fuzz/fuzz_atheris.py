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

import os
import sys

import atheris  # type: ignore[import-untyped]  # not in the venv: installed by hand, see above

# msgpack's C extension is opaque to coverage; its pure-Python fallback is not.
os.environ.setdefault("MSGPACK_PUREPYTHON", "1")

with atheris.instrument_imports(include=["auth", "capture", "dynknock", "dpkt", "msgpack"]):
    import dpkt  # noqa: F401
    import msgpack  # noqa: F401

    import dynknock.bus  # noqa: F401
    import dynknock.capture.core  # noqa: F401
    import dynknock.protocol  # noqa: F401

from tests.fuzz import test_fuzz_decoders as harnesses  # noqa: E402  (after the instrumented imports)


def main() -> None:
    targets = {
        "packets": harnesses.fuzz_packet,
        "plaintexts": harnesses.fuzz_plaintext,
        "sealed": harnesses.fuzz_sealed_plaintext,
        "bus": harnesses.fuzz_bus,
        "frames": harnesses.fuzz_frame,
    }
    if len(sys.argv) < 2 or sys.argv[1] not in targets:
        raise SystemExit(f"usage: fuzz_atheris.py {{{','.join(targets)}}} [libFuzzer options] [corpus dirs]")
    target = targets[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
