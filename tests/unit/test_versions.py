"""Debian versions of update packages and the ``vX.Y.Z`` release tags (pure)."""

from __future__ import annotations

import pytest

from nesop_deb.errors import ExitCode, UsageError
from nesop_deb.versions import compare, from_tag, highest_below, parse


@pytest.mark.parametrize("text", ["1.0.5", "0", "1:2.0", "1.0.5-1", "1.0~rc1", "2.0+dfsg-3", "10.2.3.4"])
def test_parse_accepts(text: str) -> None:
    assert str(parse(text)) == text


@pytest.mark.parametrize(
    "text", ["", "abc", "v1.0.5", "1.0 5", "1.0_5", "-1", "1.0-", "1:", "a:1.0", "1.0\n"]
)
def test_parse_refuses_naming_the_input(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse(text, what="--version")
    assert info.value.exit_code is ExitCode.USAGE
    assert f"--version {text!r} is not a valid Debian version" in str(info.value)
    assert info.value.hint is not None and "1.0.5" in info.value.hint


@pytest.mark.parametrize(
    ("tag", "version"),
    [("v1.0.5", "1.0.5"), ("v2.0~rc1", "2.0~rc1"), ("v1:1.0", "1:1.0"), ("1.0.5", None), ("vx", None)],
)
def test_from_tag(tag: str, version: str | None) -> None:
    got = from_tag(tag)
    assert (None if got is None else str(got)) == version


def test_from_tag_ignores_other_tags() -> None:
    assert from_tag("release-1.0") is None
    assert from_tag("v") is None
    assert from_tag("v1.0 5") is None
    assert from_tag("v1.0\n") is None


def test_highest_below_uses_dpkg_ordering() -> None:
    tags = ["v1.0.0", "v1.0.9", "v1.0.10", "v1.0.10~rc1", "junk", "v2.0.0", "latest"]
    found = highest_below(parse("1.0.11"), tags)
    assert found is not None and found[0] == "v1.0.10"
    found = highest_below(parse("1.0.10"), tags)
    assert found is not None and found[0] == "v1.0.10~rc1"
    found = highest_below(parse("1.0.1"), tags)
    assert found is not None and found[0] == "v1.0.0"
    assert highest_below(parse("1.0.0"), tags) is None
    assert highest_below(parse("1.0.0"), []) is None


@pytest.mark.parametrize(
    ("a", "b", "sign"),
    [
        ("1.0.5", "1.0.4", 1),
        ("1.0.10", "1.0.9", 1),
        ("1.0~rc1", "1.0", -1),
        ("1:0.1", "9.9", 1),
        ("1.0.5", "1.0.5", 0),
        ("1.0.5-1", "1.0.5", 1),
    ],
)
def test_compare(a: str, b: str, sign: int) -> None:
    assert compare(a, b) == sign
    assert compare(b, a) == -sign
