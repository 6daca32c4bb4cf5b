"""The one subprocess seam: every external command nesop-deb runs goes through :func:`run` (or,
for output too large for memory, :func:`stream` and :func:`pipeline`).

It logs the copy-pasteable command line and turns failures into :class:`CommandError`. Unit tests
replace :data:`executor` to fake commands; nothing else in the code base calls ``subprocess``.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from nesop_deb.errors import CommandError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "surrogateescape")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "surrogateescape")


def _execute(
    argv: list[str],
    cwd: Path | None,
    env: Mapping[str, str] | None,
    stdin: bytes | None,
    timeout: float | None,
) -> Result:
    proc = subprocess.run(
        argv,
        cwd=cwd,
        env=None if env is None else dict(env),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return Result(argv, proc.returncode, proc.stdout, proc.stderr)


Executor = Callable[
    [list[str], "Path | None", "Mapping[str, str] | None", "bytes | None", "float | None"], Result
]
executor: Executor = _execute


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    check: bool = True,
    timeout: float | None = None,
    hint: str | None = None,
) -> Result:
    """Run a command, capture its output; raise :class:`CommandError` if it fails and ``check``."""
    args = [os.fspath(a) for a in argv]
    if extra_env:
        env = {**(env if env is not None else os.environ), **extra_env}
    log.debug("$ %s%s", shlex.join(args), f"  (in {cwd})" if cwd else "")
    try:
        result = executor(args, cwd, env, stdin, timeout)
    except FileNotFoundError as exc:
        raise CommandError(args, 127, f"{args[0]}: command not found", hint=hint) from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(args, 124, f"timed out after {timeout} s", hint=hint) from exc
    if check and result.returncode != 0:
        raise CommandError(args, result.returncode, result.err or result.out, hint=hint)
    return result


def as_account(uid: int, gid: int, argv: Sequence[str | os.PathLike[str]]) -> list[str | os.PathLike[str]]:
    """``argv`` run as ``uid``/``gid`` (no supplementary groups), in a session of its own: no
    controlling terminal, so a process the account can trace or signal never reaches root's
    terminal (``TIOCSTI``). ``setsid -w`` forks only when it must, and then waits."""
    return ["setsid", "-w", "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv]


class _Deadline:
    """Kills ``children`` when ``timeout`` seconds pass before :meth:`cancel` (a child that stops or
    hangs never makes root wait forever); :attr:`fired` tells the caller why they died."""

    def __init__(self, timeout: float | None, *children: subprocess.Popen[bytes]) -> None:
        self.fired = False
        self._timer: threading.Timer | None = None
        if timeout is not None:
            self._timer = threading.Timer(timeout, self._kill, children)
            self._timer.daemon = True
            self._timer.start()

    def _kill(self, *children: subprocess.Popen[bytes]) -> None:
        self.fired = True
        for child in children:
            child.kill()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _stderr_of(fh: IO[bytes]) -> str:
    fh.seek(0)
    return fh.read().decode("utf-8", "surrogateescape")


def stream(
    argv: Sequence[str],
    consume: Callable[[IO[bytes]], T],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    hint: str | None = None,
    timeout: float | None = None,
) -> T:
    """Run a command and hand its standard output, as it comes, to ``consume`` (for output too
    large to hold in memory, such as a database dump); ``consume``'s result once the command has
    succeeded. Raises :class:`CommandError` if it fails (after ``consume`` read what it wrote),
    or when it has not ended after ``timeout`` seconds (it is killed: exit code 124)."""
    args = list(argv)
    log.debug("$ %s > (streamed)", shlex.join(args))
    with tempfile.TemporaryFile() as err:
        try:
            child = subprocess.Popen(
                args, cwd=cwd, env=None if env is None else dict(env),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
            )  # fmt: skip
        except FileNotFoundError as exc:
            raise CommandError(args, 127, f"{args[0]}: command not found", hint=hint) from exc
        assert child.stdout is not None
        deadline = _Deadline(timeout, child)
        try:
            result = consume(child.stdout)
            child.stdout.read()  # whatever consume left: the command must not block on a full pipe
        except BaseException:
            child.kill()
            child.wait()
            if deadline.fired:
                raise CommandError(args, 124, f"timed out after {timeout} s", hint=hint) from None
            raise
        finally:
            deadline.cancel()
            child.stdout.close()
        if child.wait() != 0:
            stderr = f"timed out after {timeout} s" if deadline.fired else _stderr_of(err)
            raise CommandError(args, 124 if deadline.fired else child.returncode, stderr, hint=hint)
    return result


def pipeline(
    first: Sequence[str],
    second: Sequence[str],
    *,
    stdin: int,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    hint: str | None = None,
    timeout: float | None = None,
) -> None:
    """``first < stdin | second``, nothing held in memory; raises :class:`CommandError` for the
    command that failed (``second`` first: when it fails, ``first`` usually dies of a broken pipe);
    both are killed when they have not ended after ``timeout`` seconds (exit code 124)."""
    a, b = list(first), list(second)
    log.debug("$ %s | %s", shlex.join(a), shlex.join(b))
    environment = None if env is None else dict(env)
    with tempfile.TemporaryFile() as err_a, tempfile.TemporaryFile() as err_b:
        try:
            left = subprocess.Popen(
                a, cwd=cwd, env=environment, stdin=stdin, stdout=subprocess.PIPE, stderr=err_a
            )
        except FileNotFoundError as exc:
            raise CommandError(a, 127, f"{a[0]}: command not found", hint=hint) from exc
        assert left.stdout is not None
        try:
            right = subprocess.Popen(
                b, cwd=cwd, env=environment, stdin=left.stdout, stdout=subprocess.DEVNULL, stderr=err_b
            )
        except FileNotFoundError as exc:
            left.kill()
            left.wait()
            raise CommandError(b, 127, f"{b[0]}: command not found", hint=hint) from exc
        finally:
            left.stdout.close()  # the second holds it now: the first sees a broken pipe if it ends
        deadline = _Deadline(timeout, left, right)
        try:
            right_code, left_code = right.wait(), left.wait()
        finally:
            deadline.cancel()
        if deadline.fired:
            raise CommandError(b, 124, f"timed out after {timeout} s", hint=hint)
        if right_code != 0:
            raise CommandError(b, right_code, _stderr_of(err_b), hint=hint)
        if left_code != 0:
            raise CommandError(a, left_code, _stderr_of(err_a), hint=hint)
