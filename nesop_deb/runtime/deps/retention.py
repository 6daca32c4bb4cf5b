"""Environments, an adopted directory and wheels go when no backup can reach them any more."""

from __future__ import annotations

from pathlib import Path

from nesop_deb.errors import NesopError
from nesop_deb.runtime import backup, safefs
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.deps import link, store, venvs
from nesop_deb.runtime.deps.pins import pins, wheel_pin
from nesop_deb.runtime.log import log


def _referenced(ctx: Context) -> tuple[set[str], bool]:
    """The environment ids the live link and the backups point at, and whether a backup still
    records an adopted directory."""
    targets: list[str | None] = []
    adopted = False
    try:
        targets.append(link.read(ctx).target)
    except (NesopError, OSError):  # an odd entry there: keep everything
        return set(venvs.built(ctx)), True
    for b in backup.list_backups(ctx):
        rec = b.data.get("venv")
        if isinstance(rec, dict):
            targets.append(rec.get("target") if isinstance(rec.get("target"), str) else None)
            adopted = adopted or rec.get("kind") == "dir"
    ids = {Path(t).name for t in targets if t is not None and Path(t).parent == ctx.venvs_dir}
    return ids, adopted


def prune(ctx: Context) -> list[str]:
    """Remove what nothing can reach; return what went (for the log)."""
    if ctx.app.venv is None:
        return []
    keep, adopted = _referenced(ctx)
    gone: list[str] = []
    markers = venvs.built(ctx)
    # a directory without its marker is an interrupted or failed build: nothing runs from it
    for vid in venvs.present(ctx) - keep:
        if venvs.discard(ctx, vid, keep):
            gone.append(str(venvs.env_path(ctx, vid)))
    store.drop_scratch(ctx)
    rel = ctx.app.venv + link.ADOPTED_SUFFIX
    if not adopted:
        # never removed by root: the app's account may have renamed anything to this name
        with safefs.Tree.open(ctx.app_root) as app:
            if app.is_dir(rel):
                log.info("no backup needs %s any more: remove it once you no longer want it", app.path / rel)
    needed = set()
    for vid in keep:
        rec = markers.get(vid)
        if rec is not None and isinstance(rec.get("requirements"), str):
            needed |= pins(str(rec["requirements"]))
    if keep and all(vid in markers for vid in keep):
        unused = {w for w in store.stored(ctx) if wheel_pin(w) not in needed}
        store.remove(ctx, unused)
        gone += sorted(unused)
    for g in gone:
        log.info("pruned %s: no backup reaches it any more", g)
    return gone
