"""The fault matrix report: every e2e test marked ``@pytest.mark.fault(kind, step)`` is a cell;
with ``NESOP_RELIABILITY_REPORT=PATH`` set, the run writes what each cell ended as to PATH
(`make reliability` writes docs/reliability.md)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .baseroot import SUITES, default_suite

KINDS = ("step fails", "SIGKILL", "power loss", "disk full")
STEPS = (
    "preflight", "record", "stage", "backup", "venv-build", "stop", "snapshot-db", "apply-files",
    "venv-switch", "migrate", "start", "health", "commit", "undo (failed update)", "undo (rollback)",
)  # fmt: skip


@dataclass
class Cell:
    kind: str
    step: str
    test: str
    outcome: str
    seconds: float
    ends_as: str
    release: int  # the Debian release it ran on (12, 13)


_cells: list[Cell] = []


def record(item: pytest.Item, report: pytest.TestReport) -> None:
    marker = item.get_closest_marker("fault")
    if marker is None or (
        report.when != "call" and not (report.when == "setup" and report.outcome != "passed")
    ):
        return
    kind, step = marker.args[:2]
    ends_as = str(marker.kwargs.get("ends_as", ""))
    callspec = getattr(item, "callspec", None)
    suite = str(callspec.params.get("suite", "")) if callspec is not None else ""
    release = SUITES[suite or default_suite()]
    test = item.nodeid.split("::")[-1]
    _cells.append(Cell(kind, step, test, report.outcome, report.duration, ends_as, release))


def write(path: Path) -> None:
    by_cell: dict[tuple[str, str], list[Cell]] = {}
    releases = sorted({c.release for c in _cells})
    for c in _cells:
        by_cell.setdefault((c.step, c.kind), []).append(c)
    lines = [
        "# Reliability: the fault matrix",
        "",
        f"Written by the end-to-end run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        " (`make reliability`). Each cell is a test that breaks an update or a rollback on purpose in a",
        f"booted Debian {' and '.join(map(str, releases)) or '12'} with systemd (a cell says which release"
        " when it ran on more than one), injecting the fault from outside, and then checks the end state:",
        "one whole version, the service healthy, every committed row present, dpkg consistent, the",
        "history saying what happened.",
        "",
        "The update is 1.0.4 → 1.0.5 of the example store (files and a migration); the rollback is",
        "`apt install nesop-store-update=1.0.4` from 1.0.5. The host watches the runtime's write-ahead",
        "journal (the step in progress) with inotify and stops the whole apt process group with SIGSTOP",
        "the moment it names the step; strace, attached from the host, makes each fsync of the run slow",
        "(40 ms) so that even the millisecond steps are caught inside, and the test checks they were.",
        "Then: **SIGKILL** kills apt, dpkg and the maintainer script; **power loss** kills every process",
        "of the machine at once and boots it again on the same root; **step fails** breaks what the step",
        "needs (a read-only directory, a staged file removed, a refused stop, a state file that cannot be",
        "replaced, an app that will not start, a broken migration, a failing health check); **disk",
        "full** fills the app's own small file system. The recovery is the documented one: nothing;",
        "the boot's recovery unit (after a power loss, before the app starts); `dpkg --configure -a`",
        "(after a crash, after freeing space, or after fixing a step before the stop); `nesop-update",
        "retry` after fixing a step that failed after the stop (such a version is not tried again on its",
        "own: `dpkg --configure -a` refuses it before the stop); or `apt install` again.",
        "",
        "| step | " + " | ".join(KINDS) + " |",
        "|---|" + "---|" * len(KINDS),
    ]
    for step in STEPS:
        row = []
        for kind in KINDS:
            cells = by_cell.get((step, kind), [])
            if not cells:
                row.append("not covered yet")
            else:
                row.append(
                    "<br>".join(
                        f"{'PASS' if c.outcome == 'passed' else 'FAIL'}"
                        + (f" on {c.release}" if len(releases) > 1 else "")
                        + f": {c.ends_as}"
                        for c in cells
                    )
                )
        lines.append(f"| {step} | " + " | ".join(row) + " |")
    lines += ["", "## Cells", "", "| step | fault | test | result | seconds |", "|---|---|---|---|---|"]
    for c in sorted(_cells, key=lambda c: (STEPS.index(c.step) if c.step in STEPS else 99, c.kind)):
        lines.append(f"| {c.step} | {c.kind} | `{c.test}` | {c.outcome} | {c.seconds:.1f} |")
    lines += [
        "",
        "Every step failing before or after its work, and a crash after every step, is also covered",
        "in the fast tier against a fake systemd (`tests/unit/test_runtime_transaction.py`,",
        "`tests/unit/test_runtime_recover.py`): the tree, database, service and state equal the",
        "snapshot taken before.",
        "",
        "## How to run it",
        "",
        "```sh",
        "make reliability     # as root: the fault cells, then this file is rewritten",
        "```",
        "",
        "`make test` (and CI) runs every cell too. The cells are in `tests/e2e/test_matrix.py`, and in",
        "`tests/e2e/test_apply.py` for the failed migration, start and health check and the preflight",
        "refusals; the injection tools are in `tests/e2e/faults.py`.",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def finish() -> None:
    target = os.environ.get("NESOP_RELIABILITY_REPORT")
    if target and _cells:
        write(Path(target))
