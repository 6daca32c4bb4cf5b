"""Property-based tests of manifest and path validation: whatever a hostile or damaged
manifest holds, reading it either fails with ManifestError or yields only safe, normalised
paths that stay below the app root."""

from __future__ import annotations

import contextlib
import json
from pathlib import PurePosixPath
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nesop_deb import manifest as mf
from nesop_deb.paths import link_stays_inside

SHA = "a" * 64

segments = st.one_of(
    st.sampled_from(["..", ".", "", "etc", "opt", "app.py", "a b", "é", "\\", "~", "-rf"]),
    st.text(min_size=0, max_size=8),
)
paths = st.builds(
    lambda parts, lead: ("/" if lead else "") + "/".join(parts), st.lists(segments, max_size=6), st.booleans()
)
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def _base(files: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": mf.FORMAT, "package": "app-update", "version": "1.0.1", "bases": ["1.0.0"], "full": False,
        "source": {"commit": "0" * 40, "since_commit": None, "since_ref": None, "created": 0},
        "builder_version": "0.1.0", "config": {"app": {"name": "app"}}, "config_files": [],
        "files": files, "migrations": [],
    }  # fmt: skip


def _file(path: str, /, **extra: Any) -> dict[str, Any]:
    entry = {"path": path, "action": "add", "sha256": SHA, "size": 1, "mode": 0o644, "preimage_sha256": None}
    return {**entry, **extra}


def _assert_safe(m: mf.Manifest) -> None:
    for f in m.files:
        for p in (f.path, f.renamed_from):
            if p is None:
                continue
            pure = PurePosixPath(p)
            assert not pure.is_absolute() and ".." not in pure.parts and "." not in pure.parts and p
            assert str(pure) == p, "normalised"
        if f.link_target is not None:
            assert link_stays_inside(f.path, f.link_target)


@settings(max_examples=400, deadline=None)
@given(path=paths, link=st.one_of(st.none(), paths))
def test_any_path_is_refused_or_safe(path: str, link: str | None) -> None:
    text = json.dumps(_base([_file(path, link_target=link)]))
    try:
        m = mf.loads(text)
    except mf.ManifestError:
        return
    _assert_safe(m)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(["path", "action", "sha256", "size", "mode", "preimage_sha256", "renamed_from",
                            "link_target"]), value=json_values)  # fmt: skip
def test_any_field_value_is_refused_or_valid(key: str, value: Any) -> None:
    text = json.dumps(_base([_file("app.py", **{key: value})]))
    try:
        m = mf.loads(text)
    except mf.ManifestError:
        return
    _assert_safe(m)
    f = m.files[0]
    assert f.mode is None or (0 <= f.mode <= 0o7777 and not f.mode & 0o6002)


@settings(max_examples=200, deadline=None)
@given(data=st.one_of(json_values, st.dictionaries(st.sampled_from(list(_base([]))), json_values)))
def test_arbitrary_documents_only_ever_raise_manifest_error(data: Any) -> None:
    with contextlib.suppress(mf.ManifestError):  # anything else fails the test
        mf.loads(json.dumps(data))


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_only_ever_raise_manifest_error(raw: bytes) -> None:
    with contextlib.suppress(mf.ManifestError):  # anything else fails the test
        mf.loads(raw)
