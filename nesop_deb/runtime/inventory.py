"""The app's tree as data: every file, link and directory with its kind, sha256, mode and owner.

It is read the way root reads anything in the app's tree (:mod:`nesop_deb.runtime.safefs`): one
directory descriptor at a time, following no link, opening no file that is not a regular one.
The app's account may remove, swap or plant entries while the walk runs: an entry gone since its
directory was listed is left out, and one swapped for a link or a special file is named in
:attr:`Inventory.refused` instead of being read.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nesop_deb.errors import RefusedError
from nesop_deb.runtime import safefs

FILE, LINK, DIR, OTHER = "file", "link", "dir", "other"
MAX_DEPTH = 64  # directories deeper than this are named, not walked: no app nests its code so deep


@dataclass(frozen=True)
class Entry:
    kind: str  # FILE, LINK, DIR or OTHER (a FIFO, socket or device)
    sha256: str | None  # a file's content, a link's target text (as safefs.Tree.digest); else None
    mode: int
    uid: int
    gid: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "sha256": self.sha256, "mode": self.mode, "uid": self.uid, "gid": self.gid}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        return cls(
            str(data["kind"]), data.get("sha256"), int(data["mode"]), int(data["uid"]), int(data["gid"])
        )


@dataclass
class Inventory:
    entries: dict[str, Entry] = field(default_factory=dict)  # app-relative path -> entry
    refused: list[str] = field(default_factory=list)  # "path: why" for entries that could not be read


def kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISLNK(mode):
        return LINK
    if stat.S_ISDIR(mode):
        return DIR
    return OTHER


def scan(
    app: safefs.Tree,
    skip: Callable[[str], bool],
    *,
    digest: Callable[[str], bool] = lambda _rel: True,
) -> Inventory:
    """Every entry below ``app`` except those ``skip`` names (a skipped directory is not entered);
    files and links get their sha256 where ``digest`` says so."""
    found = Inventory()
    _scan(app, "", skip, digest, found, 0)
    return found


def _scan(
    d: safefs.Tree,
    prefix: str,
    skip: Callable[[str], bool],
    digest: Callable[[str], bool],
    out: Inventory,
    depth: int,
) -> None:
    try:
        names = d.listdir()
    except OSError as exc:
        out.refused.append(f"{prefix.rstrip('/') or '.'}: cannot list it ({exc.strerror})")
        return
    for name in names:
        rel = prefix + name
        if skip(rel):
            continue
        try:
            st = d.lstat(name)
            if st is None:
                continue  # removed since the directory was listed
            kind = kind_of(st.st_mode)
            sha = d.digest(name) if kind in (FILE, LINK) and digest(rel) else None
        except FileNotFoundError:
            continue
        except RefusedError as exc:  # a link or special file swapped in, or a name no path may hold
            out.refused.append(f"{rel}: {exc.message}")
            continue
        except OSError as exc:  # swapped for another kind between the look and the read
            out.refused.append(f"{rel}: changed while it was read ({exc.strerror})")
            continue
        out.entries[rel] = Entry(kind, sha, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        if kind != DIR:
            continue
        if depth >= MAX_DEPTH:
            out.refused.append(f"{rel}: nested more than {MAX_DEPTH} directories deep; not read")
            continue
        try:
            sub = d.subdir(name)
        except FileNotFoundError:
            continue
        except RefusedError as exc:  # swapped for a link since the look
            out.refused.append(f"{rel}: {exc.message}")
            continue
        except OSError as exc:  # swapped for a file since the look
            out.refused.append(f"{rel}: changed while it was read ({exc.strerror})")
            continue
        with sub:
            _scan(sub, rel + "/", skip, digest, out, depth + 1)
