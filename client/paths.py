"""File names as pathlib.Path prints them, without importing pathlib.

knock-client names its key file and config file in its messages ("~/k/./a.key: key file not
found" says "/home/alice/k/a.key: ..."), always as ``str(Path(name).expanduser())`` did.
pathlib and what it imports (re, fnmatch, urllib.parse) cost ~4 ms of every start, and ssh
starts knock-client for every connection, so the client keeps names as these strings and
hands them to os.stat and open as they are. tests/unit/test_client_paths.py checks both
functions against pathlib.
"""

from __future__ import annotations

import os


def _parse(name: str) -> tuple[str, list[str]]:
    """pathlib's root and parts of a POSIX name: empty and "." parts dropped, exactly two
    leading slashes kept (POSIX leaves their meaning to the system)."""
    relative = name.lstrip("/")
    leading = len(name) - len(relative)
    root = "//" if leading == 2 else "/" if leading else ""
    return root, [part for part in relative.split("/") if part and part != "."]


def path_text(name: str) -> str:
    """``str(pathlib.PurePosixPath(name))``, "." for nothing."""
    root, parts = _parse(name)
    return root + "/".join(parts) or "."


def expand_user(name: str) -> str:
    """``str(pathlib.Path(name).expanduser())``: a leading ~ or ~user made the home directory,
    and the same RuntimeError as pathlib when there is none."""
    root, parts = _parse(name)
    if root or not parts or parts[0][:1] != "~":
        return root + "/".join(parts) or "."
    home = os.path.expanduser(parts[0])
    if home[:1] == "~":
        raise RuntimeError("Could not determine home directory.")
    root, home_parts = _parse(home)
    return root + "/".join(home_parts + parts[1:]) or "."
