"""Steps with ``apply()`` and ``undo()``, run by a transaction that journals before each one.

On failure every step that started is undone in REVERSE order (stop → migrate → start must come
back as stop-undo last); undo carries on past errors and reports them together. The journal is
fsynced before each step, so after a crash :func:`undo_from_journal` can finish the undo.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any, Protocol

from nesop_deb.errors import NesopError
from nesop_deb.runtime import failures, state
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.log import log
from nesop_deb.runtime.log import step as log_step


class Step(Protocol):
    name: str

    def apply(self) -> None: ...

    def undo(self) -> None: ...


class Interrupted(NesopError):
    """A signal asked the process to stop: the transaction is undone first."""


class TransactionFailed(NesopError):
    """A step failed; the steps before it were undone (``undo_errors`` lists what could not be)."""

    def __init__(self, step: str, cause: BaseException, undo_errors: list[str]) -> None:
        msg = f"step {step!r} failed: {cause}"
        if undo_errors:
            msg += f"; undo incomplete: {'; '.join(undo_errors)}"
        super().__init__(msg)  # str(cause) already carries its hint
        self.step = step
        self.cause = cause
        self.undo_errors = undo_errors


@contextlib.contextmanager
def _signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """``handler`` for SIGTERM, SIGHUP and SIGINT while the block runs."""
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def signals_raise() -> contextlib.AbstractContextManager[None]:
    """SIGTERM, SIGHUP and SIGINT become :class:`Interrupted`, so the undo runs."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(f"interrupted by signal {signal.Signals(signum).name}")

    return _signals(handler)


def signals_deferred() -> contextlib.AbstractContextManager[None]:
    """SIGTERM, SIGHUP and SIGINT are noted and ignored while an undo runs: a second Ctrl-C
    must not cut an undo short (the app would start on a half-restored tree)."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.warning("%s ignored: the undo finishes first", signal.Signals(signum).name)

    return _signals(handler)


def undo_steps(steps: Sequence[Step]) -> list[str]:
    """Undo ``steps`` newest first; keep going past failures and return their messages.

    A step whose undo starts the app (``starts_app``) is left out once an earlier undo failed:
    the app stays stopped (and gated) on a tree that is not whole, until ``nesop-update
    recover`` finishes the undo."""
    errors: list[str] = []
    with signals_deferred():
        for s in reversed(steps):
            if errors and getattr(s, "starts_app", False):
                log.error("undo %s: not done: the app stays stopped until the undo is finished", s.name)
                errors.append(f"undo {s.name}: the app was not started, as an earlier undo failed")
                continue
            try:
                with log_step(f"undo {s.name}"):
                    s.undo()
            except Exception as exc:
                errors.append(f"undo {s.name}: {exc}")
    return errors


def run(
    ctx: Context,
    journal: dict[str, Any],
    steps: Sequence[Step],
    before_undo: Callable[[], None] = lambda: None,
) -> None:
    """Run ``steps`` in order with a durable journal; on failure undo and raise TransactionFailed.

    ``before_undo`` runs first when undoing (it frees the space the undo reserved)."""
    journal.setdefault("steps", [])
    journal["phase"] = "applying"
    started: list[Step] = []
    with signals_raise():
        for s in steps:
            started.append(s)  # a failed journal write fails this step; its undo is idempotent
            try:
                journal["steps"].append(s.name)
                state.write_journal(ctx, journal)
                with log_step(s.name):
                    s.apply()
            except BaseException as exc:
                journal["phase"] = "undoing"
                journal["failed_step"] = s.name
                journal["reason"] = str(exc)
                journal["transient"] = failures.transient(exc, ctx)  # before the undo frees space
                try:
                    state.write_journal(ctx, journal)
                except OSError as journal_exc:  # a full or broken disk: undo all the same
                    log.error("cannot write the journal (%s); undoing anyway", journal_exc)
                log.error("%s failed: %s; undoing %d step(s)", s.name, exc, len(started))
                errors = _release(before_undo) + undo_steps(started)
                raise TransactionFailed(s.name, exc, errors) from exc


def _release(before_undo: Callable[[], None]) -> list[str]:
    try:
        before_undo()
    except Exception as exc:
        return [f"before the undo: {exc}"]
    return []


def undo_from_journal(
    ctx: Context,
    journal: dict[str, Any],
    build: Callable[[dict[str, Any]], list[Step]],
    before_undo: Callable[[], None] = lambda: None,
) -> list[str]:
    """Finish an interrupted transaction: undo every step it started (idempotent undos)."""
    names = list(journal.get("steps", []))
    steps = [s for s in build(journal) if s.name in names]
    journal["phase"] = "undoing"
    journal["recovered_at"] = time.time()
    state.write_journal(ctx, journal)
    return _release(before_undo) + undo_steps(steps)
