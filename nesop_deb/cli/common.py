"""What every CLI shares: logging set-up and the one place errors become exit codes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

import click

from nesop_deb import __version__
from nesop_deb.errors import ExitCode, NesopError
from nesop_deb.text import PrintableFormatter
from nesop_deb.text import printable as printable  # re-exported: it lived here, callers import it here

T = TypeVar("T")


def show(line: str, *, err: bool = False) -> None:
    """Print one line that quotes a package's or the server's strings, escaped (:func:`printable`)."""
    click.echo(printable(line), err=err)


def group(prog: str, doc: str) -> click.Group:
    """The top-level command of a CLI: --version, -v/--verbose, --debug; the context object is
    the debug flag, which :func:`guarded` reads."""

    @click.group(context_settings={"help_option_names": ["-h", "--help"]}, help=doc)
    @click.version_option(__version__, prog_name=prog)
    @click.option("-v", "--verbose", is_flag=True, help="Log every command run.")
    @click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
    @click.pass_context
    def cli(ctx: click.Context, verbose: bool, debug: bool) -> None:
        setup_logging(verbose)
        ctx.obj = debug

    return cli


def setup_logging(verbose: bool) -> None:
    """Log to stderr, escaped: a line may quote a package's or the server's strings."""
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(PrintableFormatter("%(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[stderr], force=True)


def guarded(prog: str, debug: bool, fn: Callable[[], T]) -> T:
    """Run ``fn``; map a :class:`NesopError` to its one-line message and exit code."""
    try:
        return fn()
    except NesopError as exc:
        if debug:
            raise
        # an error message may quote a package's or the server's names: escape them too
        click.echo(f"{prog}: error: {printable(exc)}", err=True)
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
