"""The example store's release history and the packages the server benchmarks install."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.e2e import store

BASE = "1.0.0"  # the first install (a --full package), what rollbacks return to
UPDATES = ("1.0.1", "1.0.2", "1.0.3")  # one file; frontend (no migration); a migration


@dataclass(frozen=True)
class Packages:
    toolchain: Path
    full: Path  # --full package of BASE
    updates: dict[str, Path]

    def describe(self, version: str) -> str:
        """What an update changes, from the manifest the builder wrote beside it."""
        data = json.loads((self.updates[version].parent / "update_manifest.json").read_text())
        files, migrations = len(data["files"]), len(data["migrations"])
        text = f"{files} file{'s' if files != 1 else ''}"
        if files <= 2:
            text += " (" + ", ".join(f["path"] for f in data["files"]) + ")"
        if migrations:
            text += f", {migrations} migration{'s' if migrations != 1 else ''}"
        return text


def build(work: Path, toolchain: Path) -> Packages:
    """Build the store's history in ``work`` and the packages; copy the toolchain package aside.

    The toolchain is copied so that a `make package` run meanwhile cannot swap it mid-benchmark.
    """
    work.mkdir(parents=True, exist_ok=True)
    if not toolchain.is_file():
        raise FileNotFoundError(f"{toolchain}: build it first with `make package`")
    own_toolchain = work / toolchain.name
    shutil.copyfile(toolchain, own_toolchain)
    repo = store.ExampleRepo.create(work)
    full = repo.build(f"v{BASE}", "--full", name=f"full-{BASE}")
    updates = {v: repo.build(f"v{v}") for v in UPDATES}
    return Packages(own_toolchain, full, updates)
