"""Same commit and options → byte-identical .deb, members root-owned at the commit's time; lintian-clean."""

from __future__ import annotations

import filecmp
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Built
from .helpers import Repo, build, control_members, data_members

pytestmark = pytest.mark.integration


def _commit_time(repo: Repo, ref: str) -> int:
    return int(repo.git("show", "-s", "--format=%ct", f"{ref}^{{commit}}"))


@pytest.mark.parametrize(("tag", "options"), [("v1.0.2", ()), ("v1.0.0", ("--full",))])
def test_two_builds_are_byte_identical(
    built: Callable[..., Built],
    example_repo: Repo,
    session_env: dict[str, str],
    tmp_path: Path,
    tag: str,
    options: tuple[str, ...],
) -> None:
    first = built(tag, *options)
    # another clone (other paths, other file times), another output, another clock and umask
    clone = tmp_path / "elsewhere" / "clone"
    example_repo.git("clone", "--quiet", "--no-hardlinks", str(example_repo.path), str(clone))
    Repo(clone, session_env).checkout(tag)
    env = {**session_env, "SOURCE_DATE_EPOCH": "946684800", "TZ": "Pacific/Kiritimati", "LC_ALL": "C"}
    output = tmp_path / "second-output"
    outcome = build(clone, output, env, *options, umask=0o077)
    assert outcome.returncode == 0, outcome.stderr
    second = Path(outcome.last_line)
    assert second.parent == (output / "full" if "--full" in options else output)
    assert second.name == first.deb.name
    assert subprocess.run(["cmp", first.deb, second], check=False).returncode == 0
    manifests = (first.output / "update_manifest.json", second.parent / "update_manifest.json")
    assert filecmp.cmp(*manifests, shallow=False)


@pytest.mark.parametrize("tag", ["v1.0.2", "v1.0.4"])
def test_members_are_root_owned_at_the_commit_time(
    built: Callable[..., Built], example_repo: Repo, tag: str
) -> None:
    b = built(tag)
    when = _commit_time(example_repo, tag)
    for members in (data_members(b.deb), control_members(b.deb)):
        for name, (info, _) in members.items():
            assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "root", "root"), name
            assert info.mtime == when, name
            if info.isdir():
                assert info.mode == 0o755, name
    names = list(data_members(b.deb))
    assert names == sorted(names)  # in byte order (UTF-8 sorts like code points), not disk order


def test_lintian_finds_no_errors_or_warnings(built: Callable[..., Built]) -> None:
    debs = [built("v1.0.2").deb, built("v1.0.6").deb, built("v1.0.0", "--full").deb]
    result = subprocess.run(
        ["lintian", "--pedantic", "--fail-on", "error", *map(str, debs)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    bad = [line for line in result.stdout.splitlines() if line.startswith(("E:", "W:"))]
    assert bad == [], result.stdout
