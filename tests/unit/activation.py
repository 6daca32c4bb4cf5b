"""Running a program as systemd runs a socket-activated service: the listening socket at fd 3,
LISTEN_FDS=1, and LISTEN_PID the pid of the process that runs the program (exec keeps it)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ACTIVATE = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="nesop-store.socket")
os.execv(sys.argv[2], sys.argv[2:])
"""


def activated(
    argv: Sequence[str], listener: socket.socket, *, cwd: Path, env: Mapping[str, str]
) -> subprocess.Popen[str]:
    """``argv`` (an absolute program first) handed ``listener``; its stderr is piped."""
    fd = listener.fileno()
    return subprocess.Popen(
        [sys.executable, "-c", ACTIVATE, str(fd), *argv],
        cwd=cwd, env=env, pass_fds=(fd,), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
