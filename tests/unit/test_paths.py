"""Safe relative paths, symlink containment and the ``[files].exclude`` globs (pure)."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nesop_deb.paths import (
    UnsafePath,
    control_character,
    excluded,
    link_chain_stays_inside,
    link_stays_inside,
    matches,
    safe_relative,
)


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("server.py", "server.py"),
        ("./server.py", "server.py"),
        ("static/js/app.js", "static/js/app.js"),
        ("static//js/./app.js", "static/js/app.js"),
        ("static/js/", "static/js"),
        ("dir with space/ünïcødé.txt", "dir with space/ünïcødé.txt"),
        ("..hidden/x", "..hidden/x"),  # a name starting with dots is not a parent reference
        ("a/...", "a/..."),
    ],
)
def test_safe_relative_normalises(raw: str, normal: str) -> None:
    assert safe_relative(raw) == normal


@pytest.mark.parametrize(
    "raw",
    ["", ".", "./", "/etc/passwd", "//x", "..", "../x", "a/../../x", "a/..", "a/../b", "x\0y"],
)
def test_safe_relative_refuses(raw: str) -> None:
    with pytest.raises(UnsafePath):
        safe_relative(raw)


@pytest.mark.parametrize(
    ("raw", "char"),
    [
        ("a\x1b[2J", "\x1b"),
        ("a\tb", "\t"),
        ("a\nb", "\n"),
        ("a\x7f", "\x7f"),
        ("a/\x9bb", "\x9b"),
        ("\rx", "\r"),
    ],
)
def test_safe_relative_refuses_control_characters(raw: str, char: str) -> None:
    with pytest.raises(UnsafePath) as info:
        safe_relative(raw)
    assert str(info.value) == f"{raw!r} contains the control character {char!r}"
    assert control_character(raw) == char


@pytest.mark.parametrize("raw", ["a b/c", "ünïcødé", "日本/x", "a\u00a0b", "tab-free"])
def test_printable_names_have_no_control_character(raw: str) -> None:
    assert control_character(raw) is None


_segment = st.sampled_from(["a", "b c", "..", ".", "", "ü", "x.y", "..z"])


@given(st.lists(_segment, min_size=1, max_size=6), st.booleans())
def test_safe_relative_never_escapes(parts: list[str], absolute: bool) -> None:
    raw = ("/" if absolute else "") + "/".join(parts)
    try:
        normal = safe_relative(raw)
    except UnsafePath:
        return
    p = PurePosixPath(normal)
    assert not p.is_absolute()
    assert ".." not in p.parts and "." not in p.parts and "" not in normal.split("/")
    assert safe_relative(normal) == normal  # idempotent


@pytest.mark.parametrize(
    ("link", "target", "inside"),
    [
        ("a", "b", True),
        ("a", "./b", True),
        ("dir/a", "../b", True),
        ("dir/sub/a", "../../b", True),
        ("dir/sub/a", "../x/../b", True),
        ("a", "../b", False),
        ("dir/a", "../../b", False),
        ("dir/a", "x/../../../b", False),
        ("dir/a", "../b/../../c", False),  # leaves the root on the way, even if it would come back
        ("a", "/etc/passwd", False),
        ("dir/a", "/opt/app/b", False),
        ("a", ".", True),
    ],
)
def test_link_stays_inside(link: str, target: str, inside: bool) -> None:
    assert link_stays_inside(link, target) is inside


@pytest.mark.parametrize(
    ("path", "pattern", "matched"),
    [
        # plain names match exactly, and a directory name matches everything below it
        ("nesop-deb.toml", "nesop-deb.toml", True),
        ("sub/nesop-deb.toml", "nesop-deb.toml", False),
        ("docs/a/b.md", "docs", True),
        ("docs/a/b.md", "docs/", True),
        ("docsx/a.md", "docs", False),
        # * and ? stay inside one path segment
        ("a.pyc", "*.pyc", True),
        ("dir/a.pyc", "*.pyc", False),
        ("dir/a.pyc", "dir/*.pyc", True),
        ("dir/sub/a.pyc", "dir/*.pyc", False),
        ("a1.txt", "a?.txt", True),
        ("a/.txt", "a?.txt", False),
        # ** spans directories, including none
        ("tests/unit/test_x.py", "tests/**", True),
        ("tests", "tests/**", False),  # as in gitignore: what is inside, not a file named so
        ("a.pyc", "**/*.pyc", True),
        ("x/y/z/a.pyc", "**/*.pyc", True),
        ("x/y/z/a.py", "**/*.pyc", False),
        ("static/a/b/c.map", "static/**/*.map", True),
        ("static/c.map", "static/**/*.map", True),
        ("other/static/c.map", "static/**/*.map", False),
        ("x/__pycache__/m.cpython-311.pyc", "**/__pycache__", True),
        # regex metacharacters are literal
        ("a+b.txt", "a+b.txt", True),
        ("aab.txt", "a+b.txt", False),
        ("fileXtxt", "file.txt", False),
        ("(x)", "(x)", True),
    ],
)
def test_matches(path: str, pattern: str, matched: bool) -> None:
    assert matches(path, pattern) is matched


def test_excluded_any_pattern() -> None:
    patterns = ("tests/**", "docs/**", "nesop-deb.toml", "**/*.pyc")
    assert excluded("tests/test_a.py", patterns)
    assert excluded("lib/x.pyc", patterns)
    assert excluded("nesop-deb.toml", patterns)
    assert not excluded("server.py", patterns)
    assert not excluded("lib/tests.py", patterns)
    assert not excluded("server.py", ())


@pytest.mark.parametrize(
    ("links", "inside"),
    [
        ({"static/a": "..", "static/b": "a/x"}, True),  # a -> the root itself; b -> a/x -> x
        ({"static/a": "..", "static/b": "a/.."}, False),  # b -> static/a/.. -> root/.. : outside
        ({"d/a": "b/..", "d/b": "c", "d/c": ".."}, False),  # b -> c -> the root, then ..
        ({"a": "b", "b": "a"}, False),  # a loop resolves nowhere
        ({"d/l": "../e", "e": "f/../g"}, True),
        ({"x": "/etc"}, False),
    ],
)
def test_link_chains_are_resolved_through_each_other(links: dict[str, str], inside: bool) -> None:
    assert all(link_stays_inside(p, t) for p, t in links.items() if not t.startswith("/")), "each alone"
    assert all(link_chain_stays_inside(p, t, links.get) for p, t in links.items()) is inside
