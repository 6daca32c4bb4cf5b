"""A thin typed wrapper over ``git`` (through the subprocess seam) for what the builder reads.

All paths are relative to the app directory (``-C DIR``), which may be a sub-directory of the
repository: diffs use ``--relative`` and trees are listed from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nesop_deb import proc
from nesop_deb.errors import BuildError, CommandError, UsageError

# Keep git's behaviour independent of the developer's configuration where it matters.
_GIT = ["git", "-c", "core.quotePath=false", "-c", "diff.renames=true", "-c", "log.showSignature=false"]


@dataclass(frozen=True)
class TreeEntry:
    path: str
    mode: str  # git's octal mode: 100644, 100755, 120000 (symlink), 160000 (submodule)
    blob: str


@dataclass(frozen=True)
class Change:
    status: str  # A, M, D, R, T (git's letters; C is disabled)
    path: str
    old_path: str | None = None


@dataclass(frozen=True)
class Commit:
    sha: str
    author: str
    email: str
    time: int
    subject: str


class GitRepo:
    def __init__(self, directory: Path) -> None:
        if not directory.is_dir():
            what = "not a directory" if directory.exists() else "no such directory"
            raise UsageError(f"{directory}: {what}", hint="pass the app repository with -C DIR")
        try:
            result = proc.run([*_GIT, "-C", directory, "rev-parse", "--show-toplevel", "--show-prefix"])
        except CommandError:
            raise UsageError(
                f"{directory} is not a git repository",
                hint="run nesop-deb in the app's repository, or `git init` and commit the app first",
            ) from None
        top, prefix = [*result.out.splitlines(), "", ""][:2]
        self.dir = directory.resolve()
        self.top = Path(top)
        self.prefix = prefix

    def git(self, *args: str) -> proc.Result:
        return proc.run([*_GIT, "-C", self.dir, *args])

    def git_optional(self, *args: str) -> str | None:
        """A git command's output, or None when it fails (a question answered "no")."""
        result = proc.run([*_GIT, "-C", self.dir, *args], check=False)
        return result.out.strip() if result.returncode == 0 else None

    def resolve(self, ref: str) -> str:
        try:
            return self.git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").out.strip()
        except CommandError:
            raise UsageError(
                f"git reference {ref!r} does not name a commit in {self.dir}",
                hint="pass a release tag such as v1.0.4, a branch or a commit (git tag --list)",
            ) from None

    def has_commits(self) -> bool:
        head = proc.run([*_GIT, "-C", self.dir, "rev-parse", "--verify", "--quiet", "HEAD"], check=False)
        return head.returncode == 0

    def tags(self) -> list[str]:
        return [t for t in self.git("tag", "--list").out.splitlines() if t]

    def tags_at(self, commit: str) -> list[str]:
        return [t for t in self.git("tag", "--points-at", commit).out.splitlines() if t]

    def is_shallow(self) -> bool:
        return self.git("rev-parse", "--is-shallow-repository").out.strip() == "true"

    def is_ancestor(self, ancestor: str, commit: str) -> bool:
        """Whether ``ancestor`` is ``commit`` or reachable from it."""
        args: list[str | Path] = [*_GIT, "-C", self.dir, "merge-base", "--is-ancestor", ancestor, commit]
        return proc.run(args, check=False).returncode == 0

    def describe(self, commit: str) -> str:
        """``abc1234 "subject"``: a commit as a person recognises it."""
        return self.git("show", "-s", '--format=%h "%s"', commit).out.strip()

    def file_at(self, commit: str, path: str) -> bytes | None:
        """The content of ``path`` (relative to the app directory) in ``commit``, or None."""
        args: list[str | Path] = [*_GIT, "-C", self.dir, "cat-file", "blob", f"{commit}:./{path}"]
        result = proc.run(args, check=False)
        return result.stdout if result.returncode == 0 else None

    def untracked(self, path: str) -> list[str]:
        """Files below ``path`` (app-relative) that git does not track, ignored ones included."""
        out = self.git("ls-files", "--others", "-z", "--", path).stdout
        return [p.decode("utf-8", "surrogateescape") for p in out.split(b"\0") if p]

    def commit_time(self, commit: str) -> int:
        return int(self.git("show", "-s", "--format=%ct", commit).out.strip())

    def dirty_paths(self) -> list[str]:
        """Tracked files with uncommitted changes (staged or not) below the app directory."""
        out = self.git("status", "--porcelain=v1", "-z", "--untracked-files=no", "--", ".").stdout
        records = iter(out.split(b"\0"))
        paths = []
        for rec in records:
            if len(rec) > 3:
                paths.append(rec[3:].decode("utf-8", "surrogateescape"))
                if rec[:1] in (b"R", b"C"):
                    next(records, None)  # a rename's record is followed by its old path, without status
        return paths

    def tree(self, commit: str) -> dict[str, TreeEntry]:
        out = self.git("ls-tree", "-r", "-z", commit).stdout
        entries: dict[str, TreeEntry] = {}
        for rec in out.split(b"\0"):
            if not rec:
                continue
            meta, _, raw_path = rec.partition(b"\t")
            mode, _kind, blob = meta.decode().split(" ")
            path = raw_path.decode("utf-8", "surrogateescape")
            entries[path] = TreeEntry(path, mode, blob)
        return entries

    def diff(self, since: str, until: str) -> list[Change]:
        out = self.git(
            "diff", "--name-status", "-z", "--find-renames", "--no-ext-diff", "--relative", since, until
        ).stdout
        fields = [f.decode("utf-8", "surrogateescape") for f in out.split(b"\0")]
        changes: list[Change] = []
        i = 0
        while i < len(fields) and fields[i]:
            status = fields[i][0]
            if status in "RC":
                changes.append(Change("R", fields[i + 2], fields[i + 1]))
                i += 3
            else:
                changes.append(Change(status, fields[i + 1]))
                i += 2
        return changes

    def blobs(self, shas: list[str]) -> dict[str, bytes]:
        """Contents of many blobs in one ``git cat-file --batch`` call."""
        unique = sorted(set(shas))
        if not unique:
            return {}
        out = proc.run(
            [*_GIT, "-C", self.dir, "cat-file", "--batch"], stdin="\n".join(unique).encode() + b"\n"
        ).stdout
        result: dict[str, bytes] = {}
        pos = 0
        for sha in unique:
            header_end = out.index(b"\n", pos)
            header = out[pos:header_end].decode().split()
            if len(header) < 3 or header[1] != "blob":
                raise BuildError(f"git object {sha} is not a blob: {' '.join(header)}")
            size = int(header[2])
            start = header_end + 1
            result[sha] = out[start : start + size]
            pos = start + size + 1
        return result

    def log(self, since: str | None, until: str, limit: int = 200) -> list[Commit]:
        rng = f"{since}..{until}" if since else until
        out = self.git(
            "log", f"--max-count={limit}", "-z", "--format=%H%x1f%an%x1f%ae%x1f%ct%x1f%s", rng, "--", "."
        )
        commits = []
        for rec in out.out.split("\0"):
            if rec.strip():
                sha, author, email, time, subject = rec.strip("\n").split("\x1f", 4)
                commits.append(Commit(sha, author, email, int(time), subject))
        return commits
