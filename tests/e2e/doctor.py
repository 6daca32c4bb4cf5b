"""Make hostile or broken variants of a real update package: what an attacker or a damaged
transfer would hand the server. The manifest is changed both where postinst reads it and where
preinst carries it, so each variant is consistent and only the runtime's checks can stop it."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Manifest = dict[str, Any]


def doctor(
    deb: Path,
    out: Path,
    change: Callable[[Manifest], None] | None = None,
    files: Mapping[str, bytes | None] | None = None,
    symlinks: Mapping[str, str] | None = None,
    migrations: Mapping[str, bytes] | None = None,
) -> Path:
    """Unpack ``deb``, change its manifest and payload files, pack it as ``out``."""
    work = out.with_suffix(".d")
    subprocess.run(["dpkg-deb", "-R", str(deb), str(work)], check=True)
    package = next(p.name for p in (work / "usr/share").iterdir() if (p / "update_manifest.json").exists())
    share = work / "usr/share" / package
    manifest_path = share / "update_manifest.json"
    manifest: Manifest = json.loads(manifest_path.read_text())
    if change is not None:
        change(manifest)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    manifest_path.write_text(text)
    preinst = work / "DEBIAN/preinst"
    embedded = base64.b64encode(zlib.compress(text.encode(), 9)).decode()
    preinst.write_text(
        re.sub(r'^MANIFEST = ".*"$', f'MANIFEST = "{embedded}"', preinst.read_text(), flags=re.M)
    )
    for rel, data in (files or {}).items():
        target = share / "payload" / rel
        if data is None:
            target.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    for name, data in (migrations or {}).items():
        (share / "migrations").mkdir(exist_ok=True)
        (share / "migrations" / name).write_bytes(data)
    for rel, link in (symlinks or {}).items():
        target = share / "payload" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(link)
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", str(work), str(out)], check=True, capture_output=True
    )
    return out


def truncate(deb: Path, out: Path) -> Path:
    data = deb.read_bytes()
    out.write_bytes(data[: len(data) * 2 // 3])
    return out
