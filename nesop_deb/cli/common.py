"""What every CLI shares: logging set-up and the one place errors become exit codes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

import click

from nesop_deb.errors import ExitCode, NesopError

T = TypeVar("T")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
        force=True,
    )


def guarded(prog: str, debug: bool, fn: Callable[[], T]) -> T:
    """Run ``fn``; map a :class:`NesopError` to its one-line message and exit code."""
    try:
        return fn()
    except NesopError as exc:
        if debug:
            raise
        click.echo(f"{prog}: error: {exc}", err=True)
        sys.exit(int(exc.exit_code))
    except BrokenPipeError:
        # `nesop-update history | head`: the reader left; that is not an error
        sys.stderr.close()
        sys.exit(int(ExitCode.OK))
    except KeyboardInterrupt:
        click.echo(f"{prog}: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        click.echo(
            f"{prog}: internal error: {exc!r}; please report it (rerun with --debug for details)", err=True
        )
        sys.exit(int(ExitCode.FAILED))
