"""The package's shape: one installed name, and imports that only go down the layers.

dynknock/__init__.py names the layers. An upward import (the wire protocol importing a stage, the
bus importing auth, a stage importing the lab) is what made `client` and `capture` load the auth
stage before; this test keeps it from coming back.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "dynknock"
STAGES = ("capture", "auth", "gate", "relay", "client")

WIRE = {"dynknock.protocol", "dynknock.fields", "dynknock.keys", "dynknock.rules", "dynknock.curve25519"}
SHARED = {"dynknock.bus", "dynknock.topics", "dynknock.limits", "dynknock.transport", "dynknock.config",
          "dynknock.stage", "dynknock.events", "dynknock.metrics", "dynknock.replies", "dynknock.rundir",
          "dynknock.reasons"}
TOOLS = {"dynknock.busd", "dynknock.tap", "dynknock.status"}


def layer_of(module: str) -> int:
    """0 wire, 1 shared server runtime, 2 stages and tools, 3 the lab."""
    if module == "dynknock" or module in WIRE:
        return 0
    if module in SHARED:
        return 1
    if module in TOOLS or module.split(".")[1] in STAGES:
        return 2
    if module.startswith("dynknock.lab"):
        return 3
    raise AssertionError(f"{module} is in no layer: add it to one in this test and in dynknock/__init__.py")


def our_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    # The stage folders by their own paths: whether rglob follows the dynknock/<stage> symlinks
    # depends on the Python version.
    trees = [(PACKAGE, ("dynknock",))] + [(REPO / stage, ("dynknock", stage)) for stage in STAGES]
    for root, prefix in trees:
        for path in sorted(root.rglob("*.py")):
            relative = path.relative_to(root).with_suffix("").parts
            if "__pycache__" in relative or relative[0] in STAGES:
                continue
            parts = prefix + relative
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(path: Path, module: str) -> set[str]:
    """The dynknock modules `path` imports, anywhere in it (a function-level import counts too)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            # `from dynknock import protocol` imports the module dynknock.protocol
            found.update(f"{base}.{alias.name}" for alias in node.names)
    modules = our_modules()
    return {name for name in found if name in modules and name != module}


def test_the_package_maps_every_stage_folder_and_the_checkout_links_it() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {f"dynknock.{stage}": stage for stage in STAGES}
    assert set(config["packages"]) == {"dynknock", "dynknock.lab"} | {f"dynknock.{stage}" for stage in STAGES}
    for stage in STAGES:
        link = PACKAGE / stage
        assert link.is_symlink() and link.resolve() == (REPO / stage).resolve(), link


def test_no_generic_top_level_package_is_imported() -> None:
    """Code imports the stages by their installed names only: `import auth` would load a second copy."""
    offenders = []
    for tree in ("dynknock", "tests", "bench", *STAGES):
        for path in sorted((REPO / tree).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                offenders += [f"{path.relative_to(REPO)}: {name}" for name in names if name.split(".")[0] in STAGES]
    assert offenders == []


@pytest.mark.parametrize("module", sorted(our_modules()))
def test_imports_only_go_down_the_layers(module: str) -> None:
    own = layer_of(module)
    upward = {name for name in imports_of(our_modules()[module], module) if layer_of(name) > own}
    assert upward == set()


def test_one_stage_imports_another_only_where_a_process_is_shared() -> None:
    """Stages talk over the bus. The client is the user's: it imports no server stage, and no server
    stage imports the client."""
    for module, path in our_modules().items():
        if layer_of(module) != 2 or module in TOOLS:
            continue
        stage = module.split(".")[1]
        others = {name.split(".")[1] for name in imports_of(path, module)
                  if layer_of(name) == 2 and name not in TOOLS} - {stage}
        assert others == set(), f"{module} imports the stages {others}"


def test_every_topic_published_is_in_the_catalogue() -> None:
    """A topic literal in runtime code is one the catalogue (dynknock/topics.py) may not know."""
    import re

    from dynknock.topics import Topic

    known = {str(topic) for topic in Topic}
    stage = "(?:auth|capture|gate|relay)"
    literal = re.compile(rf"[\"']({stage}\.[a-z_]+\.[a-z_]+|{stage}\.alive)[\"']")
    for module, path in our_modules().items():
        if module == "dynknock.topics":
            continue
        unknown = set(literal.findall(path.read_text())) - known
        assert unknown == set(), f"{module}: {unknown}"
