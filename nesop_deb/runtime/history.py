"""``<root>/logs/update_history.json``: a valid JSON array, one entry per attempt (architecture.md §17)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nesop_deb.errors import NesopError
from nesop_deb.runtime import safefs
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.fsutil import write_json_atomic
from nesop_deb.runtime.log import log


def read(path: Path) -> list[dict[str, Any]]:
    """The entries of a history file: ``<root>/logs/update_history.json``, read through root's own
    ``logs/`` (see :func:`safefs.records`), or the pending file in the state directory."""
    logs = safefs.records(path.parent.parent, path.parent.name, create=False, mode=0o755)
    if logs is None:
        return []
    with logs:
        if logs.lstat(path.name) is None:
            return []
        try:
            data = json.loads(logs.read_bytes(path.name))
        except (OSError, ValueError):
            # never lose an attempt's record because an old file was damaged: keep it aside
            logs.replace(path.name, path.name + ".corrupt")
            return []
    return data if isinstance(data, list) else []


def _write(path: Path, text: str, mode: int) -> None:
    logs = safefs.records(path.parent.parent, path.parent.name, create=True, mode=0o755)
    assert logs is not None
    with logs:
        logs.write_new(path.name + safefs.TMP_SUFFIX, text.encode("utf-8"), mode)
        logs.replace(path.name + safefs.TMP_SUFFIX, path.name)


def _pending(ctx: Context) -> Path:
    return ctx.state_dir / "history-pending.json"


def entries(ctx: Context) -> list[dict[str, Any]]:
    """Every attempt, the ones still waiting to be written included."""
    return read(ctx.history_file) + read(_pending(ctx))


def append(ctx: Context, entry: dict[str, Any]) -> None:
    """Add ``entry``, after any entries that could not be written before (see :func:`note`)."""
    entries = read(ctx.history_file)
    pending = read(_pending(ctx))
    entries += [*pending, entry]
    _write(ctx.history_file, json.dumps(entries, indent=2, ensure_ascii=False) + "\n", mode=0o640)
    if pending:
        _pending(ctx).unlink(missing_ok=True)


def note(ctx: Context, entry: dict[str, Any]) -> None:
    """:func:`append` where a failure must not hide the error being reported: when the app's file
    system is full (or its logs/ cannot be trusted), the entry waits in the state directory and
    goes in with the next one."""
    try:
        append(ctx, entry)
    except (OSError, NesopError) as exc:  # a full disk, or logs/ that is not root's
        log.error("cannot write %s (%s): the entry is kept in %s until it can be", ctx.history_file, exc,
                  _pending(ctx))  # fmt: skip
        try:
            pending = [*read(_pending(ctx)), entry]
            write_json_atomic(_pending(ctx), json.dumps(pending, indent=2, ensure_ascii=False) + "\n")
        except OSError as again:
            log.error("cannot keep it in %s either (%s): %s", _pending(ctx), again, json.dumps(entry))
