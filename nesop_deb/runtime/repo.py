"""The local apt repository of every update applied here, and holding a version after a rollback.

``/var/lib/<package>/repo/`` keeps each applied ``.deb`` (archived by the APT hook before dpkg
runs), indexed with ``apt-ftparchive`` so the index lists every version, and listed in
``/etc/apt/sources.list.d/<package>.list``. So ``apt install <package>=<older>`` needs no network
and no copy of the old file. After a rollback an apt pin holds the version, so ``apt upgrade``
does not bring the bad one back; ``nesop-update release`` lets it go.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from nesop_deb import proc
from nesop_deb.errors import NesopError
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.fsutil import write_atomic
from nesop_deb.runtime.log import log


def repo_dir(ctx: Context) -> Path:
    return ctx.state_dir / "repo"


def sources_list(ctx: Context) -> Path:
    return ctx.host(f"/etc/apt/sources.list.d/{ctx.package}.list")


def preferences(ctx: Context) -> Path:
    return ctx.host(f"/etc/apt/preferences.d/{ctx.package}")


def incoming_dir(ctx: Context) -> Path:
    return ctx.state_dir / "incoming"


def file_name(package: str, version: str, arch: str = "all") -> str:
    """As Debian names it: an update with compiled wheels is for one architecture."""
    return f"{package}_{version.split(':', 1)[-1]}_{arch}.deb"


def _architecture(deb: Path) -> str:
    arch = proc.run(["dpkg-deb", "--field", deb, "Architecture"]).out.strip()
    return arch if arch.isalnum() else "all"


def stage_incoming(ctx: Context, deb: Path, version: str, signed: bool) -> None:
    """Keep a verified package until its version is applied (only then is it published).

    A package the transaction refuses or fails must never become an apt candidate, so the APT
    hook (before dpkg) only stages it; :func:`publish` moves it into the repository on commit.
    """
    if deb.resolve().parent == repo_dir(ctx).resolve():
        return  # a reinstall from the repository itself
    incoming = incoming_dir(ctx)
    # what an earlier, refused or failed attempt left here is never published: drop it
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir(parents=True)
    target = incoming / file_name(ctx.package, version, _architecture(deb))
    _copy(deb, target)
    from nesop_deb.signing import signature_path

    if signed:
        _copy(signature_path(deb), signature_path(target))


def _copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".part")
    shutil.copyfile(src, tmp)
    tmp.chmod(0o644)
    tmp.replace(dst)


def publish(ctx: Context, version: str) -> bool:
    """After a commit: move the applied version's package into the repository and reindex."""
    from nesop_deb.signing import signature_path

    found = sorted(incoming_dir(ctx).glob(file_name(ctx.package, version, "*")))
    if not found:
        return False  # installed with plain dpkg -i: apt's hook never saw it
    staged = found[0]
    name = staged.name
    repo = repo_dir(ctx)
    repo.mkdir(parents=True, exist_ok=True)
    staged.replace(repo / name)
    if signature_path(staged).exists():
        signature_path(staged).replace(signature_path(repo / name))
    reindex(ctx)
    log.info("archived %s in %s", name, repo)
    return True


def reindex(ctx: Context) -> None:
    repo = repo_dir(ctx)
    packages = proc.run(["apt-ftparchive", "packages", "."], cwd=repo).stdout
    write_atomic(repo / "Packages", packages, 0o644)
    entry = f"# Every {ctx.package} applied on this server (nesop-deb); apt rolls back from here.\n"
    entry += f"deb [trusted=yes] file:{repo_dir(Context(ctx.package, ctx.app)).as_posix()} ./\n"
    path = sources_list(ctx)
    if not path.exists() or path.read_text() != entry:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, entry.encode(), 0o644)


def refresh_lists(ctx: Context) -> None:
    """Let apt know the repository's versions, without touching the other sources."""
    if not sources_list(ctx).exists():
        return
    result = proc.run(
        [
            "apt-get", "update", "-q",
            "-o", f"Dir::Etc::sourcelist={sources_list(ctx)}",
            "-o", "Dir::Etc::sourceparts=-",
            "-o", "APT::Get::List-Cleanup=0",
        ],
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        log.warning("could not refresh apt's list of %s: %s", repo_dir(ctx), result.err.strip()[-300:])


def hold(ctx: Context, version: str) -> None:
    text = (
        f"# Written by nesop-update after a rollback: keep {ctx.package} at {version}.\n"
        f"# `nesop-update release` removes this file.\n"
        f"Package: {ctx.package}\nPin: version {version}\nPin-Priority: 1001\n"
    )
    path = preferences(ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode(), 0o644)
    log.info("%s is held at %s (apt upgrade will not replace it)", ctx.package, version)


def held_version(ctx: Context) -> str | None:
    path = preferences(ctx)
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("Pin: version "):
            return line.split(" ", 2)[2].strip()
    return None


def release(ctx: Context) -> bool:
    path = preferences(ctx)
    if not path.exists():
        return False
    path.unlink()
    return True


def forget(ctx: Context) -> None:
    """Purge: the sources entry and the pin go with the state directory."""
    for path in (sources_list(ctx), preferences(ctx)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def downgrade(ctx: Context, version: str) -> None:
    """Install an older version with apt; its maintainer scripts undo the newer ones."""
    refresh_lists(ctx)
    result = proc.run(
        ["apt-get", "install", "-y", "-q", "--allow-downgrades", f"{ctx.package}={version}"],
        check=False,
        extra_env={"DEBIAN_FRONTEND": "noninteractive"},
    )
    if result.returncode != 0:
        lines = (result.err + result.out).strip().splitlines()
        detail = next((ln for ln in lines if ln.startswith("E:")), lines[-1] if lines else "no output")
        raise NesopError(
            f"apt-get install {ctx.package}={version} failed: {detail}",
            hint=f"apt-cache policy {ctx.package} lists the versions apt knows",
        )
    hold(ctx, version)
