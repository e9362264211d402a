"""The attack suite's fixtures: one lab and stack for the package (`world`), a settled stack for
every test (`settled`, autouse). They live in world.py with everything the tests share."""

from tests.e2e.attacks.world import settled, world

__all__ = ["settled", "world"]
