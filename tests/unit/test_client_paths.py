"""client/paths.py prints file names exactly as pathlib did."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dynknock.client.paths import expand_user, path_text

NAMES = st.text(alphabet="/.~ab", max_size=14)


@given(NAMES)
@example("")
@example("//a//b/")
@example("///a")
@example("./a/./b/.")
def test_path_text_is_str_of_path(name: str) -> None:
    assert path_text(name) == str(Path(name))


@settings(max_examples=300)
@given(NAMES, st.sampled_from(["/home/alice", "/home/alice/", "", "/", "//net/home", "rel/home", None]))
@example("~", "")
@example("~/x.key", "/home/alice/")
@example("~root/x", None)
@example("~nosuchuser_dynknock/x", "/h")
def test_expand_user_is_str_of_path_expanduser(name: str, home: str | None) -> None:
    with pytest.MonkeyPatch.context() as patch:
        if home is None:
            patch.delenv("HOME", raising=False)
        else:
            patch.setenv("HOME", home)
        try:
            want: str | RuntimeError = str(Path(name).expanduser())
        except RuntimeError as exc:
            want = exc
        try:
            got: str | RuntimeError = expand_user(name)
        except RuntimeError as exc:
            got = exc
    assert type(got) is type(want) and str(got) == str(want)
