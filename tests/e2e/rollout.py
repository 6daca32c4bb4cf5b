"""A fleet's rollout, driven the way an operator does it: `nesop-deb publish` into a signed
repository served inside the fleet's network, then `ansible-playbook ansible/rollout.yml`.

Used by the fleet tests, `make fleet-demo` and the fleet benchmark.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.gpgkeys import Key, make_key

from . import store
from .fleet import Fleet, Host
from .store import REPO_TOP

PLAYBOOK = REPO_TOP / "ansible" / "rollout.yml"
KEY_FILE = "nesop-deb-archive-keyring.asc"


class Repository:
    """A signed apt repository made with `nesop-deb publish` (aptly), with its own signing key."""

    def __init__(self, where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        self.dir = where / "repo"
        self.key: Key = make_key(where / "gnupg", "Fleet Repository <fleet@example.com>")

    @property
    def key_file(self) -> Path:
        return self.dir / KEY_FILE

    def publish(self, *debs: Path, suites: tuple[str, ...] = (), url: str | None = None) -> str:
        """`nesop-deb publish` (`url`: for the deb lines it prints); returns what it printed."""
        argv = [sys.executable, "-m", "nesop_deb.cli.build", "publish", "--repo", str(self.dir)]
        argv += ["--sign", self.key.fingerprint]
        for suite in suites:
            argv += ["--suite", suite]
        if url is not None:
            argv += ["--url", url]
        result = subprocess.run([*argv, *map(str, debs)], env=self.key.env, capture_output=True, text=True)
        if result.returncode != 0:
            raise AssertionError(f"nesop-deb publish failed: {result.stderr}")
        return result.stdout

    def close(self) -> None:
        self.key.close()


@dataclass(frozen=True)
class HostView:
    """What a host runs, as dpkg, systemd and the app itself say."""

    dpkg: tuple[str, str]
    pid: int
    packages: str  # sha256 of /var/lib/dpkg/status: every package's state
    app_version: str

    @classmethod
    def of(cls, host: Host) -> HostView:
        box = host.box
        packages = hashlib.sha256(box.path("/var/lib/dpkg/status").read_bytes()).hexdigest()
        return cls(
            store.dpkg_status(box), box.service_main_pid(store.UNIT), packages, store.health(box)["version"]
        )


@dataclass
class Rollout:
    result: subprocess.CompletedProcess[str]
    report: dict[str, Any]

    diagnostics: str = ""

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr + self.diagnostics

    def host(self, name: str) -> dict[str, Any]:
        rows = [row for row in self.report["hosts"] if row["host"] == name]
        assert len(rows) == 1, self.report
        row: dict[str, Any] = rows[0]
        return row


def variables(repo: Repository, url: str, version: str, report: Path, **extra: object) -> dict[str, object]:
    """The playbook's variables for rolling ``version`` out of ``repo`` (served at ``url``)."""
    return {
        "nesop_package": store.PACKAGE,
        "nesop_version": version,
        "nesop_repo_url": url,
        "nesop_repo_key": str(repo.key_file),
        "nesop_report": str(report),
        **extra,
    }


def read_report(result: subprocess.CompletedProcess[str], report: Path) -> Rollout:
    if not report.is_file():
        raise AssertionError(
            f"the rollout wrote no report (exit {result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    data: dict[str, Any] = json.loads(report.read_text())
    return Rollout(result, data)


def rollout(fleet: Fleet, repo: Repository, url: str, version: str, report: Path, **extra: object) -> Rollout:
    """`ansible-playbook ansible/rollout.yml` from the controller; the report is read back."""
    report.unlink(missing_ok=True)
    result = fleet.playbook(PLAYBOOK, variables(repo, url, version, report, **extra))
    return read_report(result, report)


class Running:
    """A rollout started in the background, to do something to the fleet meanwhile."""

    def __init__(
        self, fleet: Fleet, repo: Repository, url: str, version: str, report: Path, **extra: object
    ) -> None:
        report.unlink(missing_ok=True)
        self.report = report
        self.log = report.with_suffix(".log")
        self.log.unlink(missing_ok=True)
        self.proc = fleet.start_playbook(PLAYBOOK, variables(repo, url, version, report, **extra), self.log)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = 900) -> Rollout:
        code = self.proc.wait(timeout)
        return read_report(subprocess.CompletedProcess(self.proc.args, code, self.output(), ""), self.report)


def report_table(report: Mapping[str, Any], reason_width: int = 48) -> str:
    """A rollout report's hosts as a text table: host, batch, before → after, dpkg, state, reason
    (cut at `reason_width` characters)."""
    rows = [("host", "batch", "before → after", "dpkg", "state", "reason")]
    for row in report["hosts"]:
        reason = str(row["reason"] or "")
        if len(reason) > reason_width:
            reason = reason[: reason_width - 1] + "…"
        rows.append(
            (
                str(row["host"]),
                "-" if row["batch"] is None else str(row["batch"]),
                f"{row['before'] or '-'} → {row['after'] or '-'}",
                str(row["dpkg"] or "-"),
                str(row["state"]) + (" (resumed)" if row.get("resumed") else ""),
                reason,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
