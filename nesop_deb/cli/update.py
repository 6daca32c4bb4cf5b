"""``nesop-update``: the server-side tool (status, backups, rollback, history, validation)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from nesop_deb import debfile, proc, signing
from nesop_deb.builder.plan import describe
from nesop_deb.cli.common import group, guarded, show
from nesop_deb.errors import ExitCode, NesopError, UsageError
from nesop_deb.runtime import (
    adopt,
    apps,
    apthook,
    backup,
    deps,
    failures,
    gating,
    health,
    history,
    manual,
    operations,
    repo,
    service,
    state,
    validate,
)
from nesop_deb.runtime import log as runlog
from nesop_deb.runtime.context import Context

PROG = "nesop-update"
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")

# --config FILE names an app no package manages yet (a server deployed by hand). It is taken before
# the command (the contract's `nesop-update --config FILE status`) and after it, beside --app; both
# land in the context's meta, which every nested context shares.
CONFIG_KEY = "nesop_update.config"
F = TypeVar("F", bound=Callable[..., Any])


def _remember_config(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is None:
        return
    given = ctx.meta.get(CONFIG_KEY)
    if given is not None and given != value:
        raise click.BadParameter(f"given twice ({given} and {value}); give one", param_hint="--config")
    ctx.meta[CONFIG_KEY] = value


config_option = click.option(
    "--config",
    metavar="FILE",
    type=click.Path(path_type=Path),
    expose_value=False,
    callback=_remember_config,
    help="The app's nesop-deb.toml: operate an app no package manages yet (deployed by hand).",
)


def app_option(f: F) -> F:
    """``--app NAME`` and ``--config FILE``: which app a command works on (see :func:`_select`)."""
    f = config_option(f)
    return click.option("--app", "app_name", metavar="NAME", help="The app, where several are managed.")(f)


def _config_given() -> Path | None:
    value = click.get_current_context().meta.get(CONFIG_KEY)
    return value if isinstance(value, Path) else None


def _select(app_name: str | None) -> Context:
    return apps.select(app_name, _config_given())


# every command reads and writes what only root may: anyone else is told to run it with sudo
cli = config_option(
    group(PROG, "Operate the apps updated by nesop-deb packages on this server.", root_only=True)
)


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _package_state(package: str) -> tuple[str, str]:
    out = proc.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Version}", package], check=False).out
    abbrev, _, version = out.partition("\t")
    return abbrev.strip() or "not installed", version.strip()


def _adoption(ctx: Context) -> dict[str, Any] | None:
    found = adopt.recorded(ctx)
    return None if found is None else found.to_dict()


def _show_adoption(adopted: Any, current: str | None) -> None:
    if isinstance(adopted, dict):
        source = f" from {adopted['config_file']}" if adopted.get("config_file") else ""
        show(f"adopted:      {adopted['time']}{source}: {adopted['files']} files recorded")
    elif current is None:
        show(f"adopted:      no (`{PROG} adopt` records the app and its files: no --config needed after)")


@cli.command()
@app_option
@json_option
@click.pass_obj
def status(debug: bool, app_name: str | None, as_json: bool) -> None:
    """App version, package state, service, health, last update, a failed version, the adoption,
    a pending journal."""

    def run() -> None:
        ctx = _select(app_name)
        st = state.load(ctx)
        abbrev, pkg_version = _package_state(ctx.package)
        svc = service.status(ctx.app.service)
        probe = health.probe(ctx.app.health_url) if ctx.app.health_url else None
        entries = history.entries(ctx)
        journal = state.read_journal(ctx)
        failure = failures.read(ctx)
        venv = deps.report(ctx)
        gate = gating.report(ctx, svc)
        data = {
            "app": ctx.app.name,
            "root": str(ctx.app_root),
            "version": st.current,
            "package": {"name": ctx.package, "state": abbrev, "version": pkg_version},
            "service": {
                "unit": ctx.app.service,
                "state": f"{svc.active_state}/{svc.sub_state}",
                "pid": svc.main_pid,
                "socket": gate.to_dict(),
            },
            "health": None
            if probe is None
            else {"url": ctx.app.health_url, "ok": probe.ok, "detail": probe.detail},
            "last_update": entries[-1] if entries else None,
            "pending_journal": journal,
            "failed": None if failure is None else dataclasses.asdict(failure),
            "held": repo.held_version(ctx),
            "applied": [a.version for a in st.applied],
            "adopted": _adoption(ctx),
            "virtualenv": None if venv is None else venv.to_dict(),
        }
        if as_json:
            _emit(data)
            return
        show(f"app:          {ctx.app.name} at {ctx.app_root}")
        show(f"version:      {st.current or 'unmanaged (no update applied yet)'}")
        show(f"package:      {ctx.package} {pkg_version} [{abbrev}]")
        if (abbrev.startswith("iF") or abbrev.startswith("iU")) and not journal:
            back = f"apt install {ctx.package}={st.current}" if st.current else f"apt remove {ctx.package}"
            if failure is not None and failure.version == pkg_version:
                show(f"              (failed at {failure.step}: {failure.reason};")
                click.echo(
                    f"               the old app was restored; fix it and `{PROG} retry`, or `{back}`)"
                )
            else:
                click.echo(
                    "              (half-configured: the last update failed and the old app was restored;"
                )
                click.echo(f"               see `{PROG} history`, then fix and `{PROG} retry`, or `{back}`)")
        show(f"service:      {ctx.app.service} {svc.active_state}/{svc.sub_state} (pid {svc.main_pid})")
        if gate.socket is not None:
            listen = f" on {', '.join(gate.listen)}" if gate.listen else ""
            show(f"socket:       {gate.socket} {gate.socket_state}{listen} ({gate.enabled or 'not enabled'})")
        show(f"gate:         {gate.gate}")
        for problem in gate.problems:
            show(f"              PROBLEM: {problem}")
        if probe is not None:
            show(f"health:       {'ok' if probe.ok else 'FAILING'} ({ctx.app.health_url}: {probe.detail})")
        if entries:
            e = entries[-1]
            show(f"last update:  {e.get('action')} {e.get('version')} at {e.get('time')}: {e.get('status')}")
        show(f"applied:      {', '.join(a.version for a in st.applied) or 'none'}")
        if venv is not None:
            show(f"virtualenv:   {venv.path} {venv.live}")
            for problem in venv.problems:
                show(f"              PROBLEM: {problem}")
        _show_adoption(data["adopted"], st.current)
        held = repo.held_version(ctx)
        if held:
            show(f"held at:      {held} (after a rollback; `{PROG} release` lets apt upgrade again)")
        if journal:
            show(
                f"PENDING:      interrupted {journal.get('kind')} of {journal.get('version')}: "
                f"run `{PROG} recover` (until then a start of the app waits at the gate)"
            )

    guarded(PROG, debug, run)


@cli.command(name="adopt")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@app_option
@click.pass_obj
def adopt_cmd(debug: bool, file: Path | None, app_name: str | None) -> None:
    """Record the app (from FILE, its nesop-deb.toml) and every file of it.

    For a server deployed by hand, before its first update package. Later commands find the app
    without --config, and `validate --check files` checks each file against this record. No
    version is recorded: the first update package still adopts the app as on a server never
    adopted. Run it again to record the files anew after changing them on purpose."""

    def run() -> None:
        given = _config_given()
        if file is not None and given is not None and file != given:
            raise UsageError(f"adopt {file} --config {given}: two config files", hint="give one")
        config_file = file or given
        ctx = apps.select(app_name, config_file)
        done = adopt.adopt(ctx, None if config_file is None else config_file.absolute())
        st = state.load(ctx)
        if st.current is None:
            show(f"{ctx.app.name}: adopted {ctx.app_root} ({done.files} files); --config not needed now")
        else:
            show(f"{ctx.app.name}: recorded {done.files} files of {ctx.app_root} ({st.current} live)")

    guarded(PROG, debug, run)


@cli.command(name="backup")
@click.argument("name", required=False)
@app_option
@click.pass_obj
def backup_cmd(debug: bool, name: str | None, app_name: str | None) -> None:
    """Back up the app's files and a database snapshot now (optionally named NAME)."""

    def run() -> None:
        ctx = _select(app_name)
        if name is not None and ("/" in name or name.startswith(".")):
            raise UsageError(
                f"backup name {name!r} must be a plain name", hint="use letters, digits, _ and -"
            )
        show(str(manual.manual_backup(ctx, name)))

    guarded(PROG, debug, run)


def _backup_rows(ctx: Context) -> list[dict[str, Any]]:
    from nesop_deb.runtime.fsutil import tree_size

    st = state.load(ctx)
    needed = {a.backup for a in st.applied}
    rows = []
    for b in backup.list_backups(ctx):
        rows.append(
            {
                "name": b.name,
                "created": b.created,
                "kind": b.data.get("kind"),
                "version": b.version,
                "for_version": b.data.get("for_version"),
                "files": len(b.data.get("files", [])),
                "absent": len(b.data.get("absent", [])),
                "database": b.data.get("database") is not None,
                "size": tree_size(b.path),
                "needed_for_rollback": b.name in needed,
            }
        )
    return rows


@cli.command(name="list-backups")
@app_option
@json_option
@click.pass_obj
def list_backups(debug: bool, app_name: str | None, as_json: bool) -> None:
    """Backups with time, version, size and what they cover."""

    def run() -> None:
        ctx = _select(app_name)
        rows = _backup_rows(ctx)
        if as_json:
            _emit(rows)
            return
        if not rows:
            show(f"no backups in {ctx.backups_dir}")
            return
        click.echo(f"{'NAME':<44} {'CREATED':<17} {'VERSION':<9} {'SIZE':>9}  COVERS")
        for r in rows:
            covers = f"{r['files']} files" + (" + database" if r["database"] else "")
            mark = "  (needed to roll back)" if r["needed_for_rollback"] else ""
            show(
                f"{r['name']:<44} {r['created']:<17} {r['version'] or '-':<9} {r['size']:>9}  {covers}{mark}"
            )

    guarded(PROG, debug, run)


@cli.command()
@click.argument("name", required=False)
@click.option("--to", "to_version", metavar="VERSION", help="Roll back to this version with apt.")
@app_option
@click.pass_obj
def rollback(debug: bool, name: str | None, to_version: str | None, app_name: str | None) -> None:
    """Restore backup NAME (files and database), or go back to a version with --to."""

    def run() -> None:
        if (name is None) == (to_version is None):
            raise UsageError(
                "give a backup NAME or --to VERSION (one of them)", hint="see nesop-update list-backups"
            )
        ctx = _select(app_name)
        if name is not None:
            manual.restore_backup(ctx, name)
            show(f"{ctx.app.name}: restored backup {name}")
            return
        assert to_version is not None
        repo.downgrade(ctx, to_version)
        show(f"{ctx.app.name}: rolled back to {to_version}, held there (`{PROG} release` lets it go)")

    guarded(PROG, debug, run)


@cli.command(name="history")
@app_option
@json_option
@click.pass_obj
def history_cmd(debug: bool, app_name: str | None, as_json: bool) -> None:
    """Every apply, refusal, recovery and rollback, with what dpkg's log says about the package."""

    def run() -> None:
        ctx = _select(app_name)
        entries = history.entries(ctx)
        dpkg_lines = _dpkg_log(ctx)
        apt_lines = _apt_history(ctx)
        if as_json:
            _emit({"history": entries, "dpkg": dpkg_lines, "apt": apt_lines})
            return
        if not entries:
            click.echo("no update recorded yet")
        for e in entries:
            line = f"{e.get('time')}  {e.get('action'):<9} {e.get('from') or '-'} -> {e.get('version')}"
            line += f"  {e.get('status')}"
            if e.get("status") != "success" and e.get("failed_step"):
                line += f" at {e.get('failed_step')}: {e.get('reason')}"
            show(line)
        if apt_lines:
            click.echo("\napt history:")
            for a in apt_lines[-10:]:
                show(f"  {a}")
        if dpkg_lines:
            click.echo("\ndpkg.log:")
            for d in dpkg_lines[-20:]:
                show(f"  {d}")

    guarded(PROG, debug, run)


def _apt_history(ctx: Context) -> list[str]:
    """apt's own record (/var/log/apt/history.log): one line per apt run that touched the package."""
    try:
        text = ctx.host("/var/log/apt/history.log").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    found = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.strip().splitlines() if ": " in line)
        for action in ("Install", "Upgrade", "Downgrade", "Remove", "Purge", "Reinstall"):
            if f"{ctx.package}:" in fields.get(action, ""):
                found.append(
                    f"{fields.get('Start-Date', '?')}  {action.lower()}  {fields.get('Commandline', '')}"
                )
    return found


def _dpkg_log(ctx: Context) -> list[str]:
    path = ctx.host("/var/log/dpkg.log")
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    wanted = (" install ", " upgrade ", " remove ", " purge ", " status ")
    return [ln for ln in lines if f" {ctx.package}:" in ln and any(w in ln for w in wanted)]


@cli.command(name="validate")
@click.option("--check", "checks", multiple=True, metavar="NAME", help="Run only this check (repeatable).")
@app_option
@json_option
@click.pass_obj
def validate_cmd(debug: bool, checks: tuple[str, ...], app_name: str | None, as_json: bool) -> None:
    """Check files, service, database, web, permissions, config and history (and custom checks)."""

    def run() -> None:
        ctx = _select(app_name)
        results = validate.run(ctx, list(checks) or None)
        if as_json:
            _emit([r.to_dict() for r in results])
        else:
            for r in results:
                show(f"{'PASS' if r.ok else 'FAIL'}  {r.name:<12} {r.summary}")
                for p in r.problems:
                    show(f"      - {p}")
        if not all(r.ok for r in results):
            sys.exit(int(ExitCode.FAILED))

    guarded(PROG, debug, run)


# apply's private copies: a fresh 0700 directory under a fixed, sticky parent (never $TMPDIR)
APPLY_TMP = Path("/var/tmp")  # noqa: S108 - only ever a parent for mkdtemp (0700, unique)


def _copy_regular(src: Path, dst: Path) -> None:
    # O_NONBLOCK: a FIFO swapped in for the file must not hang root; a regular file ignores it
    fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fin:
        if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
            raise UsageError(f"{src}: not a regular file", hint="give the path of an update package (.deb)")
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(out, "wb") as fout:
            shutil.copyfileobj(fin, fout)


@contextmanager
def _private_copy(deb: Path) -> Iterator[Path]:
    """``deb`` (and ``deb.asc``) copied into a directory only root can reach, for as long as apt
    needs it: what was checked is what apt installs, whoever owns the path the user gave."""
    with tempfile.TemporaryDirectory(prefix="nesop-update-apply-", dir=APPLY_TMP) as tmp:
        copy = Path(tmp) / (deb.name if deb.name.endswith(".deb") else deb.name + ".deb")
        _copy_regular(deb, copy)
        if signing.signature_path(deb).is_file():
            _copy_regular(signing.signature_path(deb), signing.signature_path(copy))
        try:
            yield copy
        except NesopError as exc:
            # errors name the file the user gave, not our copy
            exc.message = exc.message.replace(str(copy), str(deb))
            raise


@cli.command(name="apply")
@click.argument("deb", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Verify and show what would change; install nothing.")
@click.pass_obj
def apply_cmd(debug: bool, deb: Path, dry_run: bool) -> None:
    """Verify DEB, show what it changes, then install it with apt."""

    def run() -> None:
        debfile.check_file(deb)  # a missing or non-regular path is a usage error, not a bad signature
        with _private_copy(deb) as copy:
            checked = apthook.check(copy)
            if checked.signer is not None:
                show(f"good signature: {checked.signer}")
            for line in describe(checked.update.manifest):
                show(line)
            if dry_run:
                return
            result = proc.run(
                ["apt-get", "install", "-y", "--allow-downgrades", str(copy)],
                check=False,
                extra_env={"DEBIAN_FRONTEND": "noninteractive"},
            )
        sys.stderr.write(result.err)
        click.echo(result.out, nl=False)
        if result.returncode != 0:
            raise NesopError(
                f"apt-get install {deb} failed (exit code {result.returncode}); see the messages above"
            )

    guarded(PROG, debug, run)


@cli.command()
@app_option
@click.pass_obj
def release(debug: bool, app_name: str | None) -> None:
    """Let apt upgrade the app again after a rollback held it at a version."""

    def run() -> None:
        ctx = _select(app_name)
        held = repo.held_version(ctx)
        if repo.release(ctx):
            show(f"{ctx.package}: released the hold at {held}; `apt upgrade` may install newer versions")
        else:
            show(f"{ctx.package}: not held")

    guarded(PROG, debug, run)


@cli.command()
@app_option
@click.pass_obj
def retry(debug: bool, app_name: str | None) -> None:
    """Try a failed version again, after fixing what made it fail (runs dpkg --configure).

    A version that failed after the app was stopped is not tried again on its own: apt runs its
    postinst again and again, and each would be an outage."""

    def run() -> None:
        ctx = _select(app_name)
        runlog.setup(ctx.log_file)
        output = operations.retry(ctx)
        if output:
            click.echo(output)
        show(f"{ctx.package}: {state.load(ctx).current} is live and configured")

    guarded(PROG, debug, run)


@cli.command()
@app_option
@click.option(
    "--boot",
    is_flag=True,
    help="Before the app's service starts (systemd runs this at boot): leave the service to systemd; "
    "wait for another operation's lock (up to 8 min) unless it is the one starting the app. Every "
    "managed app unless --app is given.",
)
@click.pass_obj
def recover(debug: bool, app_name: str | None, boot: bool) -> None:
    """Finish an interrupted transaction: bring the app back to one whole version."""
    from nesop_deb.runtime import bootrecover

    def run() -> None:
        if not boot:
            ctx = _select(app_name)
            show(f"{ctx.app.name}: {manual.recover(ctx)}")
            return
        if app_name is not None:
            ctx = _select(app_name)
            show(f"{ctx.app.name}: {bootrecover.recover(ctx)}")
            return
        failed = []
        for ctx in apps.managed():
            try:
                show(f"{ctx.app.name}: {bootrecover.recover(ctx)}")
            except Exception as exc:  # one app's failure must not leave the others' journals
                show(f"{PROG}: error: {ctx.app.name}: {exc}", err=True)
                failed.append(ctx.app.name)
        if failed:
            raise NesopError(f"the recovery failed for {', '.join(failed)}", hint="see the errors above")

    guarded(PROG, debug, run)


def main() -> None:
    cli(prog_name=PROG)


if __name__ == "__main__":
    main()
