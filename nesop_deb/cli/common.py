"""What every CLI shares: logging set-up and the one place errors become exit codes."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from nesop_deb import __version__
from nesop_deb.errors import ExitCode, NesopError
from nesop_deb.text import PrintableFormatter
from nesop_deb.text import printable as printable  # re-exported: it lived here, callers import it here

T = TypeVar("T")


def show(line: str, *, err: bool = False) -> None:
    """Print one line that quotes a package's or the server's strings, escaped (:func:`printable`)."""
    click.echo(printable(line), err=err)


ARGV_KEY = "nesop.argv"  # the command line as given, in the context's meta (shared by every nested one)


class _RootCommand(click.Command):
    """A command only root may run: anyone else stops before it reads anything, with one line
    saying how to run it (exit 2, a usage error). Its --help and bad options are answered first."""

    def invoke(self, ctx: click.Context) -> Any:
        if os.geteuid() != 0:
            prog = ctx.find_root().info_name or ""
            again = shlex.join([prog, *ctx.meta.get(ARGV_KEY, [])])
            click.echo(f"{prog}: error: run as root: sudo {printable(again)}", err=True)
            ctx.exit(int(ExitCode.USAGE))
        return super().invoke(ctx)


class _RootGroup(click.Group):
    """A CLI whose every command runs as root (:class:`_RootCommand`)."""

    command_class = _RootCommand

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[ARGV_KEY] = list(args)  # for the "sudo ..." line: the arguments the user gave
        return super().parse_args(ctx, args)


def group(prog: str, doc: str, *, root_only: bool = False) -> click.Group:
    """The top-level command of a CLI: --version, -v/--verbose, --debug; the context object is
    the debug flag, which :func:`guarded` reads. With ``root_only``, every command refuses to run
    for anyone but root (--help and --version still answer)."""

    @click.group(
        cls=_RootGroup if root_only else click.Group,
        context_settings={"help_option_names": ["-h", "--help"]},
        help=doc,
    )
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
