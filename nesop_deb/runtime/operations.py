"""What each maintainer-script intent does, and the server operations nesop-update shares."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from nesop_deb import manifest as mf
from nesop_deb import shims, signing
from nesop_deb.errors import NesopError, RefusedError
from nesop_deb.manifest import Manifest
from nesop_deb.runtime import (
    apply,
    backup,
    checks,
    deps,
    failures,
    gating,
    health,
    history,
    lock,
    repo,
    retention,
    service,
    state,
    transaction,
    unitfile,
)
from nesop_deb.runtime import log as runlog
from nesop_deb.runtime.context import Context
from nesop_deb.runtime.log import log


def _dpkg_root() -> Path:
    return Path(os.environ.get("DPKG_ROOT") or "/")


def manifest_from_script(path: Path) -> Manifest:
    """The manifest a preinst carries (the payload is not unpacked when preinst runs).

    On a server with trusted keys it must carry a signature that verifies, before anything reads
    it: preinst is the one check ``dpkg -i`` cannot skip (the APT hook only sees apt's installs).
    """
    fields = shims.embedded(path.read_text(encoding="utf-8"))
    found = shims.decode(fields) if fields is not None else None
    if found is None:
        raise NesopError(f"{path}: no embedded manifest; the package was not built by nesop-deb")
    raw, signature = found
    signing.verify_manifest(raw, signature, "the update manifest embedded in preinst", _dpkg_root())
    return mf.loads(raw)


def check_installed_manifest(package: str) -> None:
    """postinst configure, before anything: on a server with trusted keys, the manifest dpkg
    unpacked (the one postinst applies and checks the payload against) must verify too; preinst
    verified only its own copy, and a package could ship another."""
    if not signing.trusted_keyrings(_dpkg_root()):
        return
    share = _dpkg_root() / "usr/share" / package
    path = share / mf.NAME
    sig = share / (mf.NAME + signing.SUFFIX)
    try:
        raw = path.read_bytes()
        signature = sig.read_text(encoding="ascii") if sig.is_file() else None
    except (OSError, UnicodeDecodeError) as exc:
        raise NesopError(f"{path}: cannot read it ({exc}); the package is not unpacked") from None
    signing.verify_manifest(raw, signature, str(path), _dpkg_root())


def embed(manifest: Manifest) -> str:
    """What preinst's ``MANIFEST = "…"`` line holds for ``manifest``."""
    return shims.encode(manifest.to_json().encode())[0]


def lock_path(ctx: Context) -> Path:
    return ctx.state_dir / "lock"


def _setup_log(ctx: Context) -> None:
    runlog.setup(ctx.log_file)  # on a first install, it waits in memory until the root exists


def preflight(manifest: Manifest) -> None:
    """preinst install/upgrade: read-only checks; refusing here costs nothing (dpkg unwinds)."""
    ctx = apply.context_for(manifest)
    _setup_log(ctx)
    try:
        with runlog.step(f"preflight {manifest.package} {manifest.version}"):
            if lock_path(ctx).exists():
                with lock.held(lock_path(ctx), f"preflight {manifest.version}", wait=5):
                    pass
            checks.preflight(ctx, manifest)
    except NesopError as exc:
        _note_refusal(ctx, manifest, "preflight", exc)
        raise


def preflight_downgrade(manifest: Manifest) -> None:
    """preinst of an older version replacing a newer one: the newer prerm must have undone it."""
    ctx = apply.context_for(manifest)
    _setup_log(ctx)
    st = state.load(ctx)
    if st.current is not None and st.current != manifest.version and st.entry(manifest.version) is None:
        exc = RefusedError(
            f"cannot go back to {manifest.version}: it was never applied on this server (live: {st.current})",
        )
        _note_refusal(ctx, manifest, "preflight", exc)
        raise exc


def _note_refusal(ctx: Context, manifest: Manifest, step: str, exc: NesopError) -> None:
    """A refusal goes into the history too (where the app has a root to hold it)."""
    if not ctx.app_root.is_dir():
        return  # a first install refused: nothing of the app exists yet, the log and journal say it
    try:
        live = state.load(ctx).current
    except state.StateError:
        live = None
    history.note(ctx, refusal_entry(ctx, manifest, live, step, str(exc)))


def ensure_running(ctx: Context) -> None:
    """After dpkg unwound something: the app must be up."""
    st = service.status(ctx.app.service)
    if st.exists and not st.active:
        log.info("starting %s", ctx.app.service)
        gating.start_app(ctx)
    else:
        gating.release(ctx)  # a start that waits for it goes on


def still_applied(ctx: Context, version: str) -> None:
    """postinst abort-upgrade: dpkg would mark this version installed again; say so only if it is.

    A version that failed (``iF``) and then saw a newer package refused must stay half-configured:
    ``dpkg -l`` has to keep telling the truth.
    """
    current = state.load(ctx).current
    if current is not None and current != version:
        raise NesopError(
            f"{ctx.package} {version} was never applied on this server (the app runs {current})",
            hint=f"install {version} again once fixed, or go back with apt install {ctx.package}={current}",
        )


# the steps whose undo drives the app's service (Stop.undo starts it, Start.undo stops it)
_SERVICE_STEPS = ("stop", "start", "health")


def recover(ctx: Context, *, boot: bool = False) -> str | None:
    """Finish an interrupted transaction (caller holds the lock). Returns what was done.

    ``boot``: the app's service has not started and systemd starts it once this returns (the
    boot unit, :mod:`nesop_deb.runtime.bootrecover`): the service is neither started, stopped
    nor health-checked here, as a ``systemctl`` call on it would wait for this very recovery."""
    journal = state.read_journal(ctx)
    if journal is None:
        return None
    # the app stays gated while the interrupted transaction is finished (a killed holder's gate
    # already kept it so; this makes it this process's): the undo's last step, or the start
    # below, opens it
    gating.hold(ctx, f"recovery of the interrupted {journal.get('kind')} of {journal.get('version')}")
    # postinst configure calls this too: an interrupted rollback must not pass for an apply
    if journal.get("kind") == "restore":
        safety = ctx.backups_dir / str(journal.get("safety"))
        if not boot:  # the restored version may be running: it is stopped before its tree changes
            gating.stop_app(ctx, f"recovery of the interrupted restore of {journal.get('backup')}")
        if backup.exists(ctx, safety.name):
            backup.restore_files(ctx, safety)
            backup.restore_database(ctx, safety, keep_current=True)
            unitfile.restore(ctx, safety)
            deps.restore_from(ctx, safety)
        if not boot:
            ensure_running(ctx)
        state.clear_journal(ctx)
        gating.release(ctx)
        return f"undid the interrupted restore of {journal.get('backup')}"
    if journal.get("kind") == "undo":
        # a rollback is finished, not reversed: the operator asked for the older version
        from nesop_deb.runtime import undo

        target = str(journal.get("target"))
        if boot:
            # the rollback stops and starts the service itself: before the app starts, it would
            # wait for this recovery; the app stays down rather than run a half-rolled-back tree
            raise NesopError(
                f"an interrupted rollback to {target} cannot be finished before {ctx.app.service} starts",
                hint=f"run `nesop-update recover --app {ctx.app.name}`, which finishes it and starts the app",
            )
        undo.undo_locked(ctx, target, resume_from=str(journal.get("version")))
        return f"finished the interrupted rollback to {target}"
    st = state.load(ctx)
    version = str(journal.get("version"))
    if journal.get("kind") == "apply" and st.current == version:
        # it had committed; only the journal's removal (and maybe its history line) was lost
        apply.release_reserve(ctx, str(journal.get("backup")))
        last = (history.read(ctx.history_file) or [{}])[-1]
        if (last.get("status"), last.get("version")) != ("success", version):
            history.note(
                ctx,
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "action": "recover",
                    "package": ctx.package,
                    "version": version,
                    "from": journal.get("from"),
                    "status": "committed",
                    "reason": "the process was killed while committing; the update had been recorded",
                    "backup": journal.get("backup"),
                },
            )
        state.clear_journal(ctx)
        gating.release(ctx)
        return f"{version} had been applied; nothing to undo"
    with runlog.step(f"recover: undo the interrupted {journal.get('kind')} of {version}"):
        started = time.monotonic()
        failed_before = journal.get("phase") == "undoing"  # it had failed, and its undo was cut short
        manifest = _journal_manifest(ctx, journal)
        job = apply.Job(ctx, manifest, ctx.share, journal.get("from"), str(journal["backup"]))
        job.kept_config = list(journal.get("kept_config", []))
        job.created_dirs = list(journal.get("created_dirs", []))
        release = lambda: apply.release_reserve(ctx, job.backup_name)  # noqa: E731

        def steps(_journal: dict[str, object]) -> list[transaction.Step]:
            return [s for s in apply.build_steps(job) if not (boot and s.name in _SERVICE_STEPS)]

        errors = transaction.undo_from_journal(ctx, journal, steps, release)
        healthy: bool | None = None  # at boot: not started yet, systemd starts it after this
        if not boot and not errors:  # never started on a tree the undo could not make whole
            ensure_running(ctx)
            healthy = _healthy(ctx)
        entry = apply.history_entry(
            job,
            "interrupted",
            started,
            action="recover",
            failed_step=journal.get("failed_step") or (journal.get("steps") or ["?"])[-1],
            reason=journal.get("reason") or "the process was killed during the update",
            undo_errors=errors,
            old_app_healthy=healthy,
            **({"at_boot": True} if boot else {}),
        )
        history.note(ctx, entry)
        if errors:
            raise NesopError(f"recovery of {version} incomplete: {'; '.join(errors)}")
        if failed_before:
            _record_failure_of(ctx, journal, manifest)
        state.clear_journal(ctx)
        gating.release(ctx)  # at boot the service steps did not run: the app starts after this
    return f"undid the interrupted update to {version}"


def _record_failure_of(ctx: Context, journal: dict[str, object], manifest: Manifest) -> None:
    """Record the failure the journal names (the transaction wrote its step, its reason and whether
    it was transient before the undo): for an update that failed, and for one whose undo was then
    interrupted, which failed all the same (not for one killed while it applied)."""
    step, reason = journal.get("failed_step"), str(journal.get("reason") or "")
    if not isinstance(step, str):
        return
    # a journal written before this was judged counts as transient: tried again, as it was then
    failures.record(ctx, manifest, step, reason, is_transient=journal.get("transient") is not False)


def _journal_manifest(ctx: Context, journal: dict[str, object]) -> Manifest:
    version = str(journal["version"])
    try:
        return state.stored_manifest(ctx, version)
    except state.StateError:
        return apply.load_installed_manifest(ctx.package, ctx.root)


def _healthy(ctx: Context) -> bool:
    try:
        health.wait_healthy(ctx.app.service, ctx.app.health_url, min(ctx.app.health_timeout, 30))
    except NesopError as exc:
        log.error("the app is not healthy: %s", exc)
        return False
    return True


def configure(package: str, version: str) -> None:
    """postinst configure: apply this version, or restore the old app and raise."""
    manifest = apply.load_installed_manifest(package, Path(os.environ.get("DPKG_ROOT") or "/"))
    ctx = apply.context_for(manifest)
    _setup_log(ctx)
    with lock.held(lock_path(ctx), f"configure {package} {version}", wait=60):
        recover(ctx)
        st = state.load(ctx)
        if st.current == manifest.version:
            failures.clear(ctx)  # the live version's package is configured: dpkg is honest again
            with runlog.step(f"{package} {version} is already applied: checking it"):
                was_running = service.status(ctx.app.service).active
                ensure_running(ctx)
                # an app up all along (after a rollback's own gate) needs no second settle window
                health.wait_healthy(
                    ctx.app.service, ctx.app.health_url, ctx.app.health_timeout, settle=not was_running
                )
            return
        try:
            failures.refuse_repeat(ctx, manifest, st.current)
        except RefusedError as exc:
            history.note(ctx, refusal_entry(ctx, manifest, st.current, "retry", str(exc)))
            raise
        run_apply(ctx, manifest, ctx.share, st)


def refusal_entry(
    ctx: Context, manifest: Manifest, live: str | None, step: str, reason: str
) -> dict[str, object]:
    """The history entry of an update refused before any change (preinst, or a failed version's
    postinst run again)."""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "action": "apply",
        "package": manifest.package,
        "version": manifest.version,
        "from": live,
        "status": "refused",
        "failed_step": step,
        "reason": reason,
        "backup": None,
    }


def retry(ctx: Context) -> str:
    """``nesop-update retry``: forget the failure that holds a version back and let dpkg configure
    it again (with the lock, recovery and every check that brings). Returns dpkg's output."""
    from nesop_deb import proc

    failure = failures.read(ctx)
    status = proc.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Version}", ctx.package], check=False)
    abbrev, installed = [*status.out.split(), "", ""][:2] if status.returncode == 0 else ("", "")
    abbrev = abbrev[:2]  # a third letter is an error flag (reinstreq)
    if abbrev not in ("iF", "iU", "iH", "iW", "it"):
        failures.clear(ctx)
        raise RefusedError(
            f"nothing to retry: {ctx.package} is {f'{abbrev} {installed}' if abbrev else 'not installed'}",
            hint="`dpkg -l` says what is installed; install the version you want with apt",
        )
    failures.clear(ctx)
    if failure is not None:
        log.info("retrying %s %s (it failed at %s: %s)", ctx.package, installed, failure.step, failure.reason)
    result = proc.run(["dpkg", "--configure", ctx.package], check=False)
    output = (result.out + result.err).strip()
    if result.returncode != 0 and failure is not None and failures.read(ctx) is None:
        # dpkg failed before the postinst tried the version (its lock, another package): the
        # version has still not been tried, so apt must still not try it on its own
        failures.keep(ctx, failure)
    if result.returncode != 0:
        for line in output.splitlines():
            log.error("%s", line)
        raise NesopError(
            f"{ctx.package} {installed} failed again (dpkg --configure exit code {result.returncode})",
            hint="`nesop-update history` and the update log say why",
        )
    return output


def run_apply(ctx: Context, manifest: Manifest, source: Path, st: state.State) -> None:
    started = time.monotonic()
    job = apply.Job(
        ctx, manifest, source, st.current, backup.new_name("pre_update", manifest.version), started=started
    )
    with runlog.step(f"apply {manifest.package} {manifest.version} (live: {st.current or 'unmanaged'})"):
        try:
            with runlog.step("verify"):
                checks.preflight(ctx, manifest)
                apply.verify_payload(job)
        except RefusedError as exc:
            history.note(
                ctx,
                apply.history_entry(
                    job, "refused", started, failed_step="preflight", reason=str(exc), backup=None
                ),
            )
            raise
        journal: dict[str, object] = {
            "kind": "apply",
            "package": manifest.package,
            "version": manifest.version,
            "from": st.current,
            "backup": job.backup_name,
            "started": time.time(),
            "kept_config": job.kept_config,
            "created_dirs": job.created_dirs,
        }
        job.persist = lambda: state.write_journal(ctx, journal)
        try:
            transaction.run(
                ctx, journal, apply.build_steps(job), lambda: apply.release_reserve(ctx, job.backup_name)
            )
        except transaction.TransactionFailed as exc:
            healthy = _healthy(ctx)
            history.note(
                ctx,
                apply.history_entry(
                    job,
                    "failed",
                    started,
                    failed_step=exc.step,
                    reason=str(exc.cause),
                    undo_errors=exc.undo_errors,
                    old_app_healthy=healthy,
                ),
            )
            # judged before the undo (a full disk is full then); a journal without it: transient
            _record_failure_of(ctx, journal, manifest)
            if not exc.undo_errors:
                state.clear_journal(ctx)
            log.error(
                "update to %s FAILED at %s: %s; %s",
                manifest.version,
                exc.step,
                exc.cause,
                "the previous version is restored and running"
                if healthy
                else "the previous app is NOT healthy",
            )
            raise
        apply.release_reserve(ctx, job.backup_name)
        state.clear_journal(ctx)
        failures.clear(ctx)
    _after_commit(ctx, job.manifest.version)
    log.info("%s is now at %s", ctx.app.name, job.manifest.version)


def _after_commit(ctx: Context, version: str) -> None:
    """Housekeeping that must never undo a committed update: pins, apt's list, retention."""
    try:
        held = repo.held_version(ctx)
        if held is not None and held != version:
            repo.release(ctx)
            log.info("released the hold on %s %s: %s was installed on purpose", ctx.package, held, version)
        repo.publish(ctx, version)
        repo.refresh_lists(ctx)
        for name in retention.prune(ctx):
            log.info("pruned backup %s (keeping %d)", name, ctx.app.keep_backups)
        deps.prune(ctx)
    except (NesopError, OSError) as exc:
        log.warning("after the commit: %s", exc)


def purge(package: str) -> None:
    """postrm purge: drop the state, the repository entry and any pin; keep the app and backups."""
    root = Path(os.environ.get("DPKG_ROOT") or "/")
    shutil.rmtree(root / "var/lib" / package, ignore_errors=True)
    for path in (root / f"etc/apt/sources.list.d/{package}.list", root / f"etc/apt/preferences.d/{package}"):
        path.unlink(missing_ok=True)
