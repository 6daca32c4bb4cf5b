"""``<root>/logs/update_history.json``: a valid JSON array, one entry per attempt (contract)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nesop_deb.runtime.context import Context
from nesop_deb.runtime.fsutil import write_json_atomic


def read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        # never lose an attempt's record because an old file was damaged: keep it aside
        path.replace(path.with_name(path.name + ".corrupt"))
        return []
    return data if isinstance(data, list) else []


def append(ctx: Context, entry: dict[str, Any]) -> None:
    entries = read(ctx.history_file)
    entries.append(entry)
    write_json_atomic(ctx.history_file, json.dumps(entries, indent=2, ensure_ascii=False) + "\n", mode=0o640)


def note(ctx: Context, entry: dict[str, Any]) -> None:
    """:func:`append` where a failure must not hide the error being reported (a full disk)."""
    try:
        append(ctx, entry)
    except OSError as exc:
        from nesop_deb.runtime.log import log

        log.error("cannot write %s (%s); this attempt: %s", ctx.history_file, exc, json.dumps(entry))
