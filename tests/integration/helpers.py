"""Deterministic git repositories, the CLIs run for real, and independent readers of a .deb.

Nothing here uses nesop_deb to check nesop_deb: expectations come from git itself (``git diff``,
``git show``, ``git ls-tree``) and packages are read with ``dpkg-deb`` and :mod:`tarfile`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
NESOP_DEB = BIN / "nesop-deb"
NESOP_UPDATE = BIN / "nesop-update"
REPO_ROOT = Path(__file__).resolve().parents[2]
MAKE_RELEASE_REPO = REPO_ROOT / "examples/nesop-store/make-release-repo"

FIRST_COMMIT = 1704103200  # 2024-01-01 10:00 UTC
IDENTITY = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.com",
}


def hermetic_env(home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every git and nesop-deb call of the tests runs with: no user config leaks in."""
    env = {k: v for k, v in (base if base is not None else os.environ).items() if not k.startswith("GIT_")}
    env.update(
        HOME=str(home),
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CEILING_DIRECTORIES=str(home.parent),
        LC_ALL="C.UTF-8",
        LANG="C.UTF-8",
        TZ="UTC",
    )
    env.pop("SOURCE_DATE_EPOCH", None)
    # a make run inside the tests must not inherit the outer `make test`'s flags and level
    for key in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
        env.pop(key, None)
    return env


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Repo:
    """A git repository in a temporary directory whose commits are the same on every run."""

    path: Path
    env: dict[str, str]
    clock: int = FIRST_COMMIT

    @classmethod
    def create(cls, path: Path, env: dict[str, str]) -> Repo:
        path.mkdir(parents=True, exist_ok=True)
        repo = cls(path, env)
        repo.git("init", "--quiet", "--template=", "--initial-branch=main")
        return repo

    def git(self, *args: str, cwd: Path | None = None) -> str:
        return self.git_bytes(*args, cwd=cwd).decode()

    def git_bytes(self, *args: str, cwd: Path | None = None) -> bytes:
        env = {**self.env, **IDENTITY}
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"{self.clock} +0000"
        result = subprocess.run(
            ["git", "-c", "core.quotePath=false", "-c", "commit.gpgsign=false", *args],
            cwd=cwd or self.path,
            env=env,
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed: {result.stderr.decode()}")
        return result.stdout

    def write(self, rel: str, data: str | bytes, mode: int = 0o644) -> Path:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        target.chmod(mode)
        return target

    def symlink(self, rel: str, link_target: str) -> None:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(link_target)

    def remove(self, rel: str) -> None:
        self.git("rm", "--quiet", "--", rel)

    def move(self, old: str, new: str) -> None:
        (self.path / new).parent.mkdir(parents=True, exist_ok=True)
        self.git("mv", "--", old, new)

    def commit(self, message: str, tag: str | None = None) -> str:
        """Commit everything, one hour after the previous commit; tag it if asked."""
        self.clock += 3600
        self.git("add", "--all")
        self.git("commit", "--quiet", "--no-verify", "--allow-empty", "--message", message)
        if tag:
            self.git("tag", tag)
        return self.git("rev-parse", "HEAD").strip()

    def checkout(self, ref: str) -> None:
        self.git("checkout", "--quiet", "--detach", ref)


# --- the CLIs, as a user runs them -----------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        lines = self.stdout.splitlines()
        return lines[-1] if lines else ""

    @property
    def error_lines(self) -> list[str]:
        return self.stderr.splitlines()


def run_tool(
    argv: Sequence[str | Path],
    env: Mapping[str, str],
    cwd: Path | None = None,
    umask: int | None = None,
) -> Outcome:
    """Run ``nesop-deb``/``nesop-update`` (or any command) as a subprocess."""
    args = [str(a) for a in argv]
    if umask is not None:  # through the shell: the umask is inherited the way a user's is
        args = ["sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", *args]
    result = subprocess.run(args, cwd=cwd, env=dict(env), capture_output=True, check=False, timeout=300)
    return Outcome(result.returncode, result.stdout.decode(), result.stderr.decode())


def build(
    app: Path, output: Path, env: Mapping[str, str], *options: str, umask: int | None = None
) -> Outcome:
    return run_tool([NESOP_DEB, "build", "-C", app, "--output", output, *options], env, umask=umask)


# --- reading a package with dpkg-deb ---------------------------------------------------------


def dpkg_deb(*args: str | Path) -> bytes:
    return subprocess.run(["dpkg-deb", *map(str, args)], capture_output=True, check=True).stdout


def control_fields(deb: Path) -> dict[str, str]:
    text = dpkg_deb("-f", deb).decode()
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if line.startswith((" ", "\t")):
            fields[key] += "\n" + line[1:]
        else:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _tar(data: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    members: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            fh = tar.extractfile(m) if m.isfile() else None
            members[m.name.removeprefix("./").rstrip("/")] = (m, fh.read() if fh else None)
    return members


@functools.lru_cache(maxsize=64)
def _members(
    deb: Path, which: str, _stamp: tuple[int, int]
) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    return _tar(dpkg_deb(which, deb))


def data_members(deb: Path) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    """The data.tar members by path (``usr/share/...``; the root is ``""``) with their contents."""
    st = deb.stat()  # cached per file version: the scenario tests read each package many times
    return dict(_members(deb, "--fsys-tarfile", (st.st_mtime_ns, st.st_size)))


def control_members(deb: Path) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    st = deb.stat()
    return dict(_members(deb, "--ctrl-tarfile", (st.st_mtime_ns, st.st_size)))


def package_manifest(deb: Path, package: str) -> tuple[dict[str, Any], bytes]:
    _, raw = data_members(deb)[f"usr/share/{package}/update_manifest.json"]
    assert raw is not None
    data: dict[str, Any] = json.loads(raw)
    return data, raw


# --- what git says ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GitChange:
    status: str  # A M D R T
    path: str
    old_path: str | None = None


def exclude_pathspecs(patterns: Sequence[str]) -> list[str]:
    """``[files].exclude`` as git's own glob pathspecs: an independent reading of the patterns."""
    return [f":(exclude,glob){p}" for p in patterns]


def git_changes(
    repo: Repo, since: str, until: str, exclude: Sequence[str], cwd: Path | None = None
) -> list[GitChange]:
    out = repo.git_bytes(
        "diff", "-z", "--name-status", "--find-renames", "--relative", since, until, "--", ".",
        *exclude_pathspecs(exclude), cwd=cwd,
    )  # fmt: skip
    fields = out.decode().split("\0")
    changes: list[GitChange] = []
    i = 0
    while i < len(fields) and fields[i]:
        status = fields[i][0]
        if status == "R":
            changes.append(GitChange("R", fields[i + 2], fields[i + 1]))
            i += 3
        else:
            changes.append(GitChange(status, fields[i + 1]))
            i += 2
    return changes


def git_files(repo: Repo, ref: str, exclude: Sequence[str], cwd: Path | None = None) -> dict[str, str]:
    """Path -> git mode of every file at ``ref`` minus the excluded ones."""
    # ls-tree takes no pathspec magic; a diff from the empty tree lists the same files and does
    empty = repo.git("hash-object", "-t", "tree", os.devnull).strip()
    included = set(git_changes(repo, empty, ref, exclude, cwd))
    out = repo.git_bytes("ls-tree", "-r", "-z", ref, cwd=cwd)
    modes = {}
    for rec in out.decode().split("\0"):
        if rec:
            meta, _, path = rec.partition("\t")
            modes[path] = meta.split()[0]
    return {c.path: modes[c.path] for c in included}


def git_show(repo: Repo, ref: str, path: str, cwd: Path | None = None) -> bytes:
    return repo.git_bytes("show", f"{ref}:./{path}" if cwd else f"{ref}:{path}", cwd=cwd)


def git_mode(repo: Repo, ref: str, path: str, cwd: Path | None = None) -> str:
    out = repo.git("ls-tree", ref, "--", path, cwd=cwd)
    return out.split()[0]


def config_at(repo: Repo, ref: str, cwd: Path | None = None) -> dict[str, Any]:
    return tomllib.loads(git_show(repo, ref, "nesop-deb.toml", cwd).decode())


def toolchain_version() -> str:
    """The builder's version as pyproject.toml states it (what Pre-Depends must require)."""
    version: str = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def _mode_bits(git_mode: str) -> int:
    return 0o755 if git_mode == "100755" else 0o644


def expected_entries(
    repo: Repo, since: str, until: str, exclude: Sequence[str], cwd: Path | None = None
) -> dict[str, dict[str, Any]]:
    """The manifest's file entries as git says they must be, keyed by path."""
    out: dict[str, dict[str, Any]] = {}
    for ch in git_changes(repo, since, until, exclude, cwd):
        if ch.status == "D":
            pre = sha256(git_show(repo, since, ch.path, cwd))
            out[ch.path] = {"action": "delete", "sha256": None, "mode": None, "preimage_sha256": pre}
            out[ch.path].update(size=0, renamed_from=None, link_target=None)
            continue
        data = git_show(repo, until, ch.path, cwd)
        mode = git_mode(repo, until, ch.path, cwd)
        old = ch.old_path or ch.path
        out[ch.path] = {
            "action": {"A": "add", "R": "rename"}.get(ch.status, "modify"),
            "sha256": sha256(data),
            "size": len(data),
            "mode": _mode_bits(mode),
            "preimage_sha256": None if ch.status == "A" else sha256(git_show(repo, since, old, cwd)),
            "renamed_from": ch.old_path,
            "link_target": data.decode() if mode == "120000" else None,
        }
    return out


def check_payload(deb: Path, package: str, files: dict[str, dict[str, Any]], repo: Repo, ref: str,
                  cwd: Path | None = None) -> None:  # fmt: skip
    """The payload of ``deb`` holds exactly the shipped files of ``files``, as git has them at ``ref``."""
    members = data_members(deb)
    prefix = f"usr/share/{package}/payload/"
    shipped = {n[len(prefix) :]: v for n, v in members.items() if n.startswith(prefix) and not v[0].isdir()}
    assert sorted(shipped) == sorted(p for p, e in files.items() if e["action"] != "delete")
    for path, (info, content) in shipped.items():
        entry = files[path]
        if entry["link_target"] is not None:
            assert info.issym() and info.linkname == entry["link_target"], path
            continue
        assert info.isfile(), path
        assert content == git_show(repo, ref, path, cwd), path
        assert info.mode == entry["mode"], (path, oct(info.mode))
