"""Benchmark 2: how big an update is next to a full package and to a debdelta.

In a copy of the example store's history, one extra commit on top of its newest release adds
realistic assets (product photos, vendor scripts and style sheets, see assets.py) and is tagged
with the next minor version (vX.Y.0, after the example's newest release); the next commit changes
one file (a style sheet) and is tagged vX.Y.1. Measured: the update package of vX.Y.1, the
`--full` package of vX.Y.1, and a debdelta between the full packages of vX.Y.0 and vX.Y.1
(verified by rebuilding vX.Y.1 from it with debpatch). The store runs from a
virtualenv since 1.1.0, so the full packages carry its wheels too; the update, whose requirements
did not change, carries none.

Goal: the update is at most 2% of the full package and smaller than the debdelta.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench import assets
from bench.common import Goal, say, size, table
from tests.e2e import store

GOAL_SHARE = 0.02
ASSETS_MIB = 24
RELEASE_TIME = 1736154000 + 30 * 86400  # after the example's history, fixed: same commits every run
CHANGED = "styles/store.css"
# debdelta only Recommends the diff back ends it needs (bsdiff, xdelta3) and the xz tool
DEBDELTA_PACKAGES = ("debdelta", "bsdiff", "xdelta3", "xz-utils")
DEBDELTA_TOOLS = ("debdelta", "debpatch", "bsdiff", "xdelta3", "xz")
CHANGE = """
/* Product photos keep their aspect ratio on narrow screens. */
.product img {
  height: auto;
  max-width: 100%;
}
"""


@dataclass(frozen=True)
class SizeResult:
    asset_set: assets.AssetSet
    update_bytes: int
    update_files: int
    full_bytes: int
    full_previous_bytes: int
    update_build_s: float
    full_build_s: float
    debdelta_bytes: int | None
    debdelta_s: float | None
    debdelta_note: str
    update_file: str = ""  # the update's file name (results from before it was kept: empty)
    # the two releases measured (results pickled before they were kept were made with 1.2.x)
    assets_version: str = "1.2.0"
    fix_version: str = "1.2.1"

    def goals(self) -> list[Goal]:
        share = self.update_bytes / self.full_bytes
        goals = [
            Goal(
                "Size: update ≤ 2% of the full package",
                share <= GOAL_SHARE,
                f"{size(self.update_bytes)} is {share:.3%} of {size(self.full_bytes)} "
                f"({GOAL_SHARE / share:.0f}x under the limit)"
                if share <= GOAL_SHARE
                else f"{size(self.update_bytes)} is {share:.2%} of {size(self.full_bytes)}",
            )
        ]
        if self.debdelta_bytes is None:
            goals.append(
                Goal("Size: update smaller than a debdelta", False, f"no delta: {self.debdelta_note}")
            )
        else:
            ratio = self.update_bytes / self.debdelta_bytes
            goals.append(
                Goal(
                    "Size: update smaller than a debdelta",
                    self.update_bytes < self.debdelta_bytes,
                    f"{size(self.update_bytes)} vs {size(self.debdelta_bytes)} "
                    f"({ratio:.2f}x the delta's size)",
                )
            )
        return goals


def _git(repo: Path, *args: str, when: int | None = None) -> None:
    env = {**os.environ, **store.GIT_ENV}
    if when is not None:
        env |= {"GIT_AUTHOR_DATE": f"{when} +0000", "GIT_COMMITTER_DATE": f"{when} +0000"}
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


def _build(repo: store.ExampleRepo, ref: str, *args: str, name: str) -> tuple[Path, float]:
    started = time.monotonic()
    deb = repo.build(ref, *args, name=name)
    return deb, time.monotonic() - started


def _payload_files(deb: Path) -> int:
    listing = subprocess.run(["dpkg-deb", "--contents", str(deb)], check=True, capture_output=True, text=True)
    return sum(1 for line in listing.stdout.splitlines() if "/payload/" in line and not line.startswith("d"))


def ensure_debdelta() -> str | None:
    """Install Debian's debdelta when missing; return why it is not available, or None."""
    if all(shutil.which(tool) for tool in DEBDELTA_TOOLS):
        return None
    say("installing debdelta (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *DEBDELTA_PACKAGES],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            return f"`{' '.join(argv)}` failed: {result.stderr.strip()[-300:]}"
    missing = [tool for tool in DEBDELTA_TOOLS if not shutil.which(tool)]
    return f"apt-get installed debdelta but {', '.join(missing)} is not on PATH" if missing else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def debdelta(old: Path, new: Path, work: Path) -> tuple[int | None, float | None, str]:
    """Size of a debdelta old → new, checked by rebuilding ``new`` with debpatch."""
    missing = ensure_debdelta()
    if missing:
        return None, None, missing
    delta = work / "full.debdelta"
    delta.unlink(missing_ok=True)
    started = time.monotonic()
    made = subprocess.run(
        ["debdelta", str(old), str(new), str(delta)], capture_output=True, text=True, check=False
    )
    seconds = time.monotonic() - started
    if made.returncode != 0 or not delta.exists():
        why = (made.stderr or made.stdout).strip().splitlines()
        return None, None, f"debdelta exit code {made.returncode}: {' '.join(why[-3:])}"
    rebuilt = work / "rebuilt.deb"
    rebuilt.unlink(missing_ok=True)
    patched = subprocess.run(
        ["debpatch", "-A", str(delta), str(old), str(rebuilt)], capture_output=True, text=True, check=False
    )
    if patched.returncode != 0 or not rebuilt.exists():
        why = (patched.stderr or patched.stdout).strip().splitlines()
        return (
            delta.stat().st_size,
            seconds,
            f"made, but debpatch could not rebuild from it: {' '.join(why[-2:])}",
        )
    if _sha256(rebuilt) != _sha256(new):
        return delta.stat().st_size, seconds, "made, but debpatch rebuilt a different .deb"
    return delta.stat().st_size, seconds, "verified: debpatch rebuilt the new full package byte for byte"


def next_versions(tags: list[str]) -> tuple[str, str]:
    """After the newest ``vX.Y.Z`` of ``tags``: the commit of assets (``X.Y+1.0``), then the fix."""
    releases = [tuple(int(n) for n in t[1:].split(".")) for t in tags if re.fullmatch(r"v\d+\.\d+\.\d+", t)]
    major, minor = max(releases)[:2]
    return f"{major}.{minor + 1}.0", f"{major}.{minor + 1}.1"


def measure(work: Path, assets_mib: int = ASSETS_MIB) -> SizeResult:
    work.mkdir(parents=True, exist_ok=True)
    repo = store.ExampleRepo.create(work)
    tags = subprocess.run(
        ["git", "-C", str(repo.path), "tag", "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    assets_version, fix_version = next_versions(tags)
    say(
        f"size: the example history, plus a commit of generated assets (v{assets_version}) and a "
        f"one-file fix (v{fix_version})"
    )
    _git(repo.path, "checkout", "--quiet", "main")
    asset_set = assets.generate(repo.path, assets_mib * assets.MIB)
    _git(repo.path, "add", "--all")
    _git(repo.path, "commit", "--quiet", "-m", "Add product photos and vendor bundles", when=RELEASE_TIME)
    _git(repo.path, "tag", f"v{assets_version}")
    with (repo.path / CHANGED).open("a", encoding="utf-8") as fh:
        fh.write(CHANGE)
    _git(
        repo.path,
        "commit",
        "--quiet",
        "--all",
        "-m",
        "Keep product photos in proportion",
        when=RELEASE_TIME + 3600,
    )
    _git(repo.path, "tag", f"v{fix_version}")

    say("size: building the update and the two full packages")
    update, update_s = _build(repo, f"v{fix_version}", name=f"update-{fix_version}")
    full, full_s = _build(repo, f"v{fix_version}", "--full", name=f"full-{fix_version}")
    previous, _ = _build(repo, f"v{assets_version}", "--full", name=f"full-{assets_version}")
    say("size: debdelta between the full packages")
    delta_bytes, delta_s, note = debdelta(previous, full, work)
    return SizeResult(
        asset_set=asset_set,
        update_bytes=update.stat().st_size,
        update_files=_payload_files(update),
        full_bytes=full.stat().st_size,
        full_previous_bytes=previous.stat().st_size,
        update_build_s=update_s,
        full_build_s=full_s,
        debdelta_bytes=delta_bytes,
        debdelta_s=delta_s,
        debdelta_note=note,
        update_file=update.name,
        assets_version=assets_version,
        fix_version=fix_version,
    )


def markdown(r: SizeResult) -> str:
    a = r.asset_set
    # results pickled before the tags moved on to 1.2.x name none and mean 1.1.0 and 1.1.1
    fix, assets_version = (r.fix_version, r.assets_version) if r.update_file else ("1.1.1", "1.1.0")
    rows = [
        [
            f"update `{r.update_file or 'nesop-store-update_1.1.1_all.deb'}`",
            size(r.update_bytes),
            "1x",
            f"{r.update_build_s:.2f} s",
        ],
        [
            f"`--full` package of {fix}",
            size(r.full_bytes),
            f"{r.full_bytes / r.update_bytes:,.0f}x",
            f"{r.full_build_s:.2f} s",
        ],
    ]
    if r.debdelta_bytes is not None:
        rows.append(
            [
                f"debdelta full {assets_version} → full {fix}",
                size(r.debdelta_bytes),
                f"{r.debdelta_bytes / r.update_bytes:.2f}x",
                f"{r.debdelta_s:.2f} s" if r.debdelta_s is not None else "",
            ]
        )
    else:
        rows.append([f"debdelta full {assets_version} → full {fix}", "none", "", ""])
    return (
        f"The store carries {size(a.total)} of generated assets in {a.files} files: "
        f"{size(a.image_bytes)} of JPEG/PNG photos (incompressible image data) and "
        f"{size(a.text_bytes)} of JS/CSS bundles. Release {fix} changes one file (`{CHANGED}`); "
        f"the update ships {r.update_files} payload file(s).\n\n"
        + table(["package", "size", "vs update", "build time"], rows)
        + f"\ndebdelta: {r.debdelta_note}.\n"
    )
