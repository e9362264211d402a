"""Stand-ins for typing.NamedTuple and secrets that cost knock-client no start-up.

ssh starts knock-client for every connection, so every module it imports is paid on every
connection (bench/client_startup.py prints the cost of each). ``typing`` costs ~3 ms (and
imports ``re``), ``secrets`` ~4 ms (``hmac`` loads OpenSSL, ``base64`` imports ``re``,
``random``), for one class factory and two functions. The client's modules import these
instead, and mypy still sees the real ones::

    TYPE_CHECKING = False
    if TYPE_CHECKING:
        import secrets
        from typing import NamedTuple
    else:
        from dynknock.client.lean import NamedTuple, secrets

tests/unit/test_client_lean.py checks them against the originals.
"""

from __future__ import annotations

import os
from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _NamedTupleMeta(type):
    """typing.NamedTupleMeta's work for the classes knock-client declares: the fields are the
    annotated names (in order, with their defaults), everything else in the body (methods,
    properties, the docstring) is set on the collections.namedtuple made of them."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> Any:
        if not bases:  # NamedTuple itself
            return super().__new__(mcs, name, bases, namespace)
        annotations: dict[str, Any] = namespace.get("__annotations__", {})
        fields = tuple(annotations)
        defaults = [namespace[field] for field in fields if field in namespace]
        if any(field not in namespace for field in fields[len(fields) - len(defaults):]):
            raise TypeError(f"Non-default namedtuple field cannot follow default field in {name}")
        cls = namedtuple(name, fields, defaults=defaults, module=namespace["__module__"])  # type: ignore[misc]
        for key, value in namespace.items():
            if key in ("__module__", "__annotations__") or key in fields:
                continue
            if key in _PROHIBITED:
                raise AttributeError(f"Cannot overwrite NamedTuple attribute {key}")
            setattr(cls, key, value)
        return cls


_PROHIBITED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults",
                         "_make", "_replace", "_asdict", "_source"})


class NamedTuple(metaclass=_NamedTupleMeta):
    """``class Point(NamedTuple): x: int; y: int = 0`` makes what typing.NamedTuple makes."""


class secrets:  # lower case: it stands in for the module, as in ``secrets.token_bytes(16)``
    """secrets.token_bytes and secrets.randbelow, on os.urandom as the originals are."""

    @staticmethod
    def token_bytes(nbytes: int) -> bytes:
        return os.urandom(nbytes)

    @staticmethod
    def randbelow(exclusive_upper_bound: int) -> int:
        """A uniform integer in [0, bound): random.SystemRandom's rejection sampling on getrandbits."""
        if exclusive_upper_bound <= 0:
            raise ValueError("Upper bound must be positive.")
        bits = exclusive_upper_bound.bit_length()
        size = (bits + 7) // 8
        while True:
            value = int.from_bytes(os.urandom(size), "big") >> (size * 8 - bits)
            if value < exclusive_upper_bound:
                return value
