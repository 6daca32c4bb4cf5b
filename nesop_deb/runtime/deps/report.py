"""What the app's virtualenv is now, for ``status`` and ``validate --check files``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nesop_deb.errors import NesopError
from nesop_deb.runtime import state
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.deps import link, venvs
from nesop_deb.runtime.deps.target import server_python


@dataclass(frozen=True)
class Report:
    path: str  # <root>/<venv>
    live: str  # what it is: "-> /opt/venvs/...", "a directory (not managed)", "missing"
    expected: str | None  # the requirements the applied versions call for (None: none shipped)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "live": self.live, "problems": self.problems}


def expected_requirements(ctx: Context, st: state.State) -> tuple[str, str] | None:
    """(version, requirements text) of the newest applied version that changed the virtualenv."""
    for entry in reversed(st.applied):
        try:
            deps = state.stored_manifest(ctx, entry.version).dependencies
        except state.StateError:
            continue
        if deps is not None:
            return entry.version, deps.requirements
    return None


def report(ctx: Context) -> Report | None:
    if ctx.app.venv is None:
        return None
    rel = ctx.app.venv
    path = str(ctx.app_path(rel))
    try:
        live = link.read(ctx)
    except NesopError as exc:
        return Report(path, "not a link", None, [exc.message])
    wanted = expected_requirements(ctx, state.load(ctx))
    if wanted is None:
        shown = {"link": f"-> {live.target}", "dir": "a directory", "absent": "missing"}[live.kind]
        return Report(path, shown, None)
    version, requirements = wanted
    problems: list[str] = []
    if live.kind != "link" or live.target is None:
        problems.append(f"{rel}: {live.kind}, but {version} switched it to a link to its virtualenv")
        return Report(path, live.kind, requirements, problems)
    vid = venvs.env_id(server_python(), requirements)
    target = Path(live.target)
    if target != venvs.env_path(ctx, vid):
        problems.append(f"{rel} -> {live.target}, but {version}'s virtualenv is {venvs.env_path(ctx, vid)}")
    elif not venvs.is_built(ctx, vid):
        problems.append(f"{rel} -> {live.target}, which is not a complete virtualenv")
    return Report(path, f"-> {live.target}", requirements, problems)
