"""The one subprocess seam: every external command nesop-deb runs goes through :func:`run`.

It logs the copy-pasteable command line and turns failures into :class:`CommandError`. Unit tests
replace :data:`executor` to fake commands; nothing else in the code base calls ``subprocess``.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nesop_deb.errors import CommandError

log = logging.getLogger(__name__)


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
