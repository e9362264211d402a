"""The attack suite's fixtures: one lab and stack for the package (`world`), the door window each
test asks for (`settled`, autouse, and `long_window`), no door at the start (`no_doors`). They live
in world.py with everything the tests share."""

from tests.e2e.attacks.world import long_window, no_doors, settled, world

__all__ = ["long_window", "no_doors", "settled", "world"]
