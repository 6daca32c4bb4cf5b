"""The git wrapper's parsing of git's -z output, through a fake of the one subprocess seam."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nesop_deb import proc
from nesop_deb.builder.git import Change, Commit, GitRepo, TreeEntry
from nesop_deb.errors import BuildError, ExitCode, UsageError


@dataclass
class FakeGit:
    """Answers git commands by their subcommand; records every call."""

    answers: dict[str, Callable[[list[str], bytes | None], proc.Result]] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)

    def on(self, sub: str, stdout: bytes = b"", returncode: int = 0, stderr: bytes = b"") -> None:
        self.answers[sub] = lambda argv, _stdin: proc.Result(argv, returncode, stdout, stderr)

    def __call__(
        self,
        argv: list[str],
        cwd: Path | None,
        env: Mapping[str, str] | None,
        stdin: bytes | None,
        timeout: float | None,
    ) -> proc.Result:
        self.calls.append(argv)
        assert argv[0] == "git"
        sub = next(a for a in argv[1:] if not a.startswith("-") and "=" not in a and not a.startswith("/"))
        return self.answers[sub](argv, stdin)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeGit]:
    git = FakeGit()
    git.on("rev-parse", f"{tmp_path}\napp/\n".encode())
    monkeypatch.setattr(proc, "executor", git)
    yield git


def test_opening_reads_top_and_prefix(fake: FakeGit, tmp_path: Path) -> None:
    repo = GitRepo(tmp_path)
    assert repo.top == tmp_path and repo.prefix == "app/" and repo.dir == tmp_path.resolve()
    argv = fake.calls[0]
    # the developer's configuration must not change what the builder reads
    assert "core.quotePath=false" in argv and "diff.renames=true" in argv
    assert argv[argv.index("-C") + 1] == str(tmp_path)


def test_not_a_repository(fake: FakeGit, tmp_path: Path) -> None:
    fake.on("rev-parse", returncode=128, stderr=b"fatal: not a git repository")
    with pytest.raises(UsageError) as info:
        GitRepo(tmp_path)
    assert info.value.exit_code is ExitCode.USAGE
    assert f"{tmp_path} is not a git repository" in str(info.value) and "git init" in str(info.value)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such directory; pass the app repository with -C DIR"):
        GitRepo(tmp_path / "nope")


def test_diff_parses_every_status_and_odd_names(fake: FakeGit, tmp_path: Path) -> None:
    out = b"\0".join(
        [
            b"M",
            b"server.py",
            b"A",
            b"dir with space/\xc3\xbc.txt",
            b"D",
            b"old.css",
            b"R087",
            b"scripts/old.js",
            b"scripts/new.js",
            b"R100",
            b"a\tb",
            b"c\nd",
            b"T",
            b"link",
            b"",
        ]
    )
    fake.on("diff", out)
    changes = GitRepo(tmp_path).diff("v1", "v2")
    assert changes == [
        Change("M", "server.py"),
        Change("A", "dir with space/ü.txt"),
        Change("D", "old.css"),
        Change("R", "scripts/new.js", "scripts/old.js"),
        Change("R", "c\nd", "a\tb"),
        Change("T", "link"),
    ]
    argv = fake.calls[-1]
    assert {"--name-status", "-z", "--find-renames", "--relative", "--no-ext-diff"} <= set(argv)
    assert argv[-2:] == ["v1", "v2"]


def test_diff_of_nothing(fake: FakeGit, tmp_path: Path) -> None:
    fake.on("diff", b"")
    assert GitRepo(tmp_path).diff("a", "b") == []


def test_tree_parses_modes_and_names(fake: FakeGit, tmp_path: Path) -> None:
    fake.on(
        "ls-tree",
        b"100644 blob aaaa\tserver.py\0"
        b"100755 blob bbbb\tbin/run me\0"
        b"120000 blob cccc\tcurrent\0"
        b"160000 commit dddd\tvendor/lib\0"
        b"100644 blob eeee\t\xe3\x83\x95\xe3\x82\xa1\xe3\x82\xa4\xe3\x83\xab\0",
    )
    tree = GitRepo(tmp_path).tree("HEAD")
    assert tree == {
        "server.py": TreeEntry("server.py", "100644", "aaaa"),
        "bin/run me": TreeEntry("bin/run me", "100755", "bbbb"),
        "current": TreeEntry("current", "120000", "cccc"),
        "vendor/lib": TreeEntry("vendor/lib", "160000", "dddd"),
        "ファイル": TreeEntry("ファイル", "100644", "eeee"),
    }


def test_blobs_reads_a_batch_with_binary_content(fake: FakeGit, tmp_path: Path) -> None:
    a, b = "a" * 40, "b" * 40
    binary = b"\x00\n\xff" + b"x" * 10 + b"\n"
    out = f"{a} blob {len(binary)}\n".encode() + binary + b"\n" + f"{b} blob 0\n".encode() + b"\n"
    fake.on("cat-file", out)
    repo = GitRepo(tmp_path)
    assert repo.blobs([b, a, a]) == {a: binary, b: b""}
    assert fake.calls[-1][-2:] == ["cat-file", "--batch"]


def test_blobs_of_nothing_runs_nothing(fake: FakeGit, tmp_path: Path) -> None:
    repo = GitRepo(tmp_path)
    before = len(fake.calls)
    assert repo.blobs([]) == {}
    assert len(fake.calls) == before


def test_blobs_refuses_what_is_not_a_blob(fake: FakeGit, tmp_path: Path) -> None:
    fake.on("cat-file", f"{'c' * 40} missing\n".encode())
    with pytest.raises(BuildError, match="is not a blob"):
        GitRepo(tmp_path).blobs(["c" * 40])


def test_dirty_paths(fake: FakeGit, tmp_path: Path) -> None:
    fake.on("status", b" M server.py\0M  static/a b.css\0")
    assert GitRepo(tmp_path).dirty_paths() == ["server.py", "static/a b.css"]
    argv = fake.calls[-1]
    assert "--untracked-files=no" in argv and argv[-2:] == ["--", "."]


def test_dirty_paths_skip_the_old_path_of_a_staged_rename(fake: FakeGit, tmp_path: Path) -> None:
    fake.on("status", b"R  static/new name.js\0static/old name.js\0 M server.py\0C  copy.py\0orig.py\0")
    assert GitRepo(tmp_path).dirty_paths() == ["static/new name.js", "server.py", "copy.py"]


def test_tags_and_commit_time(fake: FakeGit, tmp_path: Path) -> None:
    fake.on("tag", b"v1.0.0\nv1.0.1\n")
    fake.on("show", b"1736154000\n")
    repo = GitRepo(tmp_path)
    assert repo.tags() == ["v1.0.0", "v1.0.1"]
    assert repo.tags_at("HEAD") == ["v1.0.0", "v1.0.1"]
    assert repo.commit_time("HEAD") == 1736154000


def test_resolve_names_a_bad_reference(fake: FakeGit, tmp_path: Path) -> None:
    repo = GitRepo(tmp_path)
    fake.on("rev-parse", returncode=1)
    with pytest.raises(UsageError, match="git reference 'v9' does not name a commit"):
        repo.resolve("v9")


def test_log(fake: FakeGit, tmp_path: Path) -> None:
    fake.on(
        "log",
        b"1111\x1fAnn\x1fann@example.com\x1f100\x1fFix the cart\0\n"
        b"2222\x1fBob\x1fbob@example.com\x1f200\x1fAdd a\x1fweird subject\0",
    )
    commits = GitRepo(tmp_path).log("v1", "HEAD")
    assert commits == [
        Commit("1111", "Ann", "ann@example.com", 100, "Fix the cart"),
        Commit("2222", "Bob", "bob@example.com", 200, "Add a\x1fweird subject"),
    ]
    argv = fake.calls[-1]
    assert "v1..HEAD" in argv and argv[-2:] == ["--", "."]
