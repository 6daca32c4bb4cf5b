"""The one exception root of nesop-deb, and the exit codes the CLIs map it to (docs/architecture.md §17)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # the operation failed (on a server: the app was restored)
    USAGE = 2  # bad input: nothing was done
    REFUSED = 3  # refused before any change


class NesopError(Exception):
    """Base of every error nesop-deb raises on purpose.

    ``str(err)`` is the one line a user sees: what failed and which input caused it; ``hint``
    says how to fix it.
    """

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class UsageError(NesopError):
    """Bad input (options, files, configuration): nothing was changed."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """The app's nesop-deb.toml is missing, unreadable or invalid."""


class BuildError(UsageError):
    """A package cannot be built from this input (no changes, bad version, unsafe path...)."""


class RefusedError(NesopError):
    """A server-side check refused an operation before anything changed."""

    exit_code = ExitCode.REFUSED


class CommandError(NesopError):
    """A subprocess failed: names the command, its exit status and its stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr: str, *, hint: str | None = None) -> None:
        import shlex

        status = f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else "no error output"
        super().__init__(f"`{shlex.join(argv)}` failed ({status}): {tail}", hint=hint)
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
