"""``nesop-update validate``: the original seven checks, each stronger, plus custom checks.

Custom checks are executables in ``/etc/nesop-deb/checks.d/<app>/``: each runs with the app's
settings in its environment, and exit 0 means it passed (a way to extend validation without
editing the tool).
"""

from __future__ import annotations

import configparser
import json
import os
import stat
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nesop_deb import proc
from nesop_deb.errors import NesopError, UsageError
from nesop_deb.manifest import Action
from nesop_deb.runtime import (
    accounts,
    adopt,
    checks,
    database,
    deps,
    gating,
    health,
    history,
    inventory,
    pages,
    safefs,
    service,
    state,
    unitfile,
)
from nesop_deb.runtime.context import Context


@dataclass
class CheckResult:
    name: str
    ok: bool
    summary: str
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def expected_files(ctx: Context, st: state.State) -> dict[str, tuple[str | None, int | None]]:
    """Replay the applied manifests: app-relative path → (sha256 or None if deleted, mode)."""
    expected: dict[str, tuple[str | None, int | None]] = {}
    for entry in st.applied:
        m = state.stored_manifest(ctx, entry.version)
        for f in m.files:
            if f.renamed_from:
                expected[f.renamed_from] = (None, None)
            if f.path in entry.kept_config:
                expected.pop(f.path, None)  # the server's own edit stands: not ours to check
                continue
            expected[f.path] = (None, None) if f.action is Action.DELETE else (f.sha256, f.mode)
    # a partial update left these at the content the server had: that is what must be there
    for rel, sha in state.left_behind(ctx, st.current).items():
        expected[rel] = (sha, expected.get(rel, (None, None))[1] if sha is not None else None)
    return expected


def check_files(ctx: Context) -> CheckResult:
    result = _check_files(ctx)
    venv = deps.report(ctx)
    if venv is not None:
        result.summary += f"; {venv.path} {venv.live}"
        result.problems += venv.problems
        result.ok = result.ok and not venv.problems
    return result


def _check_files(ctx: Context) -> CheckResult:
    st = state.load(ctx)
    base = adopt.baseline(ctx)
    if base is not None:
        return _check_adopted_files(ctx, st, base)
    if not st.applied:
        return CheckResult("files", ctx.app_root.is_dir(), f"no update applied yet; {ctx.app_root} exists")
    problems: list[str] = []
    expected = expected_files(ctx, st)
    with safefs.Tree.open(ctx.app_root) as app:
        for rel, (sha, _mode) in sorted(expected.items()):
            _compare(app, rel, sha, st.current, problems)
    n = sum(1 for s, _ in expected.values() if s is not None)
    summary = f"{n} files of {st.current} checked by sha256"
    left = state.left_behind(ctx, st.current)
    if left:
        shown = ", ".join(list(left)[:5]) + (", …" if len(left) > 5 else "")
        summary += f"; {len(left)} left at an earlier version by a partial update ({shown})"
    return CheckResult("files", not problems, summary, problems)


def _check_adopted_files(ctx: Context, st: state.State, base: adopt.Baseline) -> CheckResult:
    """Every file of an adopted app: what the applied updates wrote as their manifests say, every
    other file as it was adopted, and nothing more (a file no update wrote and not there then)."""
    if base.adoption.root != ctx.app.root:
        return CheckResult(
            "files",
            False,
            f"adopted at {base.adoption.root}, but the app is at {ctx.app.root}",
            [f"run `nesop-update adopt` again to record {ctx.app_root}"],
        )
    if not ctx.app_root.is_dir():
        return CheckResult("files", False, f"{ctx.app_root} does not exist (adopted {base.adoption.time})")
    problems: list[str] = []
    expected = expected_files(ctx, st) if st.applied else {}
    updated = adopt.updated_paths(ctx, st) | base.managed
    with safefs.Tree.open(ctx.app_root) as app:
        for rel, (sha, _mode) in sorted(expected.items()):
            _compare(app, rel, sha, st.current, problems)
        found = inventory.scan(app, adopt.skip(ctx), digest=lambda rel: rel not in updated)
    problems += found.refused
    since = f"since the adoption of {base.adoption.time}"
    checked = 0
    for rel, was in sorted(base.entries.items()):
        if rel in updated or was.kind == inventory.DIR:
            continue
        checked += 1
        now = found.entries.get(rel)
        if now is None:
            if not any(r.startswith(f"{rel}:") for r in found.refused):
                problems.append(f"{rel}: missing {since}")
        elif now.kind != was.kind:
            problems.append(f"{rel}: a {now.kind}, but a {was.kind} when adopted ({base.adoption.time})")
        elif now.sha256 != was.sha256:
            problems.append(f"{rel}: content changed {since}, and no update wrote it")
    for rel, now in sorted(found.entries.items()):
        if rel not in base.entries and rel not in updated and now.kind != inventory.DIR:
            problems.append(f"{rel}: new {since}, and no update wrote it")
    summary = f"{checked} files checked by sha256 as adopted {base.adoption.time}"
    if st.applied:
        n = sum(1 for s, _ in expected.values() if s is not None)
        summary += f", {n} as {st.current} wrote them"
    return CheckResult("files", not problems, summary, problems)


def _compare(app: safefs.Tree, rel: str, sha: str | None, version: str | None, problems: list[str]) -> None:
    try:
        live = app.digest(rel)
    except safefs.LinkRefused as exc:
        problems.append(f"{rel}: {exc.message}")
        return
    if sha is None and live is not None:
        problems.append(f"{rel}: should have been deleted")
    elif sha is not None and live is None:
        problems.append(f"{rel}: missing")
    elif sha is not None and live != sha:
        problems.append(f"{rel}: content differs from {version}")


RESTART_WATCH = 0.5  # seconds between the two looks at the service


def check_service(ctx: Context) -> CheckResult:
    found = _service(ctx)
    drift = _unit_drift(ctx)
    gate = gating.report(ctx, service.status(ctx.app.service))
    problems = found.problems + drift + gate.problems
    summary = found.summary
    if gate.socket is not None:
        listen = f" on {', '.join(gate.listen)}" if gate.listen else ""
        summary += f"; {gate.socket} {gate.socket_state}{listen}"
    summary += f"; gate {gate.gate}"
    return CheckResult("service", found.ok and not problems, summary, problems)


def _service(ctx: Context) -> CheckResult:
    unit = ctx.app.service
    first = service.status(unit)
    if not first.exists:
        return CheckResult("service", False, f"{unit} is not installed")
    if not first.active:
        return CheckResult("service", False, f"{unit} is {first.active_state}/{first.sub_state}")
    time.sleep(RESTART_WATCH)  # a unit in a restart loop can look active at any one moment
    second = service.status(unit)
    if second.restarts != first.restarts or second.main_pid != first.main_pid:
        return CheckResult(
            "service", False, f"{unit} is restarting (restarts {first.restarts} -> {second.restarts})"
        )
    return CheckResult("service", True, f"{unit} active, pid {second.main_pid}, {second.restarts} restarts")


def _unit_drift(ctx: Context) -> list[str]:
    """The installed units must be the release's ``[app] unit_file`` and ``socket_file``: what
    the applied updates wrote there, or (none wrote it) the app tree's copy."""
    st = state.load(ctx)
    problems = []
    for kind, rel in ((unitfile.SERVICE, ctx.app.unit_file), (unitfile.SOCKET, ctx.app.socket_file)):
        if rel is None:
            continue
        expected = expected_files(ctx, st).get(rel, (None, None))[0] if st.applied else None
        if expected is None and ctx.app_root.is_dir():
            try:
                with safefs.Tree.open(ctx.app_root) as app:
                    expected = app.digest(rel)
            except safefs.LinkRefused as exc:
                problems.append(f"{rel}: {exc.message}")
                continue
        problem = unitfile.drift(ctx, expected, st.current, kind)
        if problem is not None:
            problems.append(problem)
    return problems


def check_database(ctx: Context) -> CheckResult:
    try:
        db = ctx.database
    except NesopError as exc:
        return CheckResult("database", False, exc.message)
    if db is None:
        return CheckResult("database", True, "no database configured")
    path = ctx.database_path
    shown = path.name if path is not None else db.url
    if not db.exists():
        return CheckResult("database", False, f"{path} does not exist")
    try:
        verdict = db.check()
    except database.ERRORS as exc:
        return CheckResult("database", False, f"{shown}: cannot open: {exc}")
    problems = [] if verdict == "ok" else [f"{'quick_check' if db.kind == 'sqlite' else 'check'}: {verdict}"]
    st = state.load(ctx)
    wanted = [i for a in st.applied for i in a.migrations]
    recorded: list[str] = []
    try:
        recorded = database.applied_ids(db)
    except Exception as exc:
        problems.append(f"cannot read the migration table: {exc}")
    missing = [i for i in wanted if i not in recorded]
    if missing:
        problems.append(f"migrations of applied versions not recorded: {', '.join(missing)}")
    return CheckResult(
        "database", not problems, f"{shown}: {verdict}, {len(recorded)} migrations recorded", problems
    )


def check_web(ctx: Context) -> CheckResult:
    url = ctx.app.health_url
    if url is None:
        return CheckResult("web", True, "no health URL configured")
    problems = []
    result = health.probe(url, timeout=5)
    if not result.ok:
        problems.append(f"{url}: {result.detail}")
    summary = f"{url}: {result.detail}"
    if ctx.app.health_pages:
        # each page, and the scripts, style sheets and images it loads from the app
        report = pages.check(url, ctx.app.health_pages)
        problems += report.problems
        summary += f"; {report.pages} pages and {report.assets} assets they load checked"
    return CheckResult("web", not problems, summary, problems)


def check_permissions(ctx: Context) -> CheckResult:
    problems = []
    uid, gid = accounts.uid(ctx, ctx.app.user), accounts.gid(ctx, ctx.app.group)
    st = state.load(ctx)
    expected = expected_files(ctx, st) if st.applied else {}
    with safefs.Tree.open(ctx.app_root) as app:
        for rel, (sha, mode) in sorted(expected.items()):
            try:
                s = app.lstat(rel)  # never through a link: what is there, not what it points at
            except safefs.LinkRefused as exc:
                problems.append(f"{rel}: {exc.message}")
                continue
            if sha is None or s is None or stat.S_ISLNK(s.st_mode):
                continue
            # the app's account owns what is in its writable directories; root owns the code (on a
            # server adopted as it was, the code may still be the account's: writable_code says so)
            owners = {(uid, gid)} | (set() if ctx.app.is_writable(rel) else {(0, 0)})
            if (s.st_uid, s.st_gid) not in owners:
                want = " or ".join(f"{u}:{g}" for u, g in sorted(owners, key=str))
                problems.append(f"{rel}: owned by {s.st_uid}:{s.st_gid}, expected {want}")
            if mode is not None and s.st_mode & 0o7777 != mode:
                problems.append(f"{rel}: mode {s.st_mode & 0o7777:o}, expected {mode:o}")
    adopted = _adopted_permissions(ctx, st, problems)
    found = checks.writable_code(ctx)
    if found:
        problems.append(checks.writable_code_problem(ctx, found))
    for dirpath, dirs, files in os.walk(ctx.app_root):
        if Path(dirpath) == ctx.backups_dir:
            dirs[:] = []
            continue
        for name in dirs + files:
            p = Path(dirpath) / name
            try:
                s = p.lstat()
            except FileNotFoundError:
                continue  # the app's account removed it since the directory was listed: nothing to check
            if not stat.S_ISLNK(s.st_mode) and s.st_mode & 0o002:
                problems.append(f"{p.relative_to(ctx.app_root)}: world-writable")
    for private in (ctx.backups_dir, ctx.state_dir):
        try:
            s = private.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(s.st_mode):
            problems.append(f"{private}: a symlink; it must be a root-only (0700) directory")
        elif s.st_mode & 0o077 or s.st_uid != 0:
            problems.append(f"{private}: must be root-only (0700), is {s.st_mode & 0o7777:o} uid {s.st_uid}")
    try:
        logs = ctx.logs_dir.lstat()
        if stat.S_ISLNK(logs.st_mode) or logs.st_uid != 0 or logs.st_mode & 0o022:
            problems.append(f"{ctx.logs_dir}: must be a directory only root can write to")
    except FileNotFoundError:
        pass
    summary = f"owner, group and mode of {len(expected)} files"
    if adopted is not None:
        summary += f", and of {adopted} entries as adopted"
    return CheckResult("permissions", not problems, summary, problems)


def _adopted_permissions(ctx: Context, st: state.State, problems: list[str]) -> int | None:
    """Files and directories of an adopted app that no update wrote may have lost access since the
    adoption (made root's, ``chmod go-w``: what 5.6 of the guide asks for), never gained it."""
    base = adopt.baseline(ctx)
    if base is None or base.adoption.root != ctx.app.root or not ctx.app_root.is_dir():
        return None  # the files check says why
    updated = adopt.updated_paths(ctx, st) | base.managed
    checked = 0
    with safefs.Tree.open(ctx.app_root) as app:
        for rel, was in sorted(base.entries.items()):
            if rel in updated or was.kind == inventory.LINK:
                continue  # a link's own owner and mode grant nothing
            try:
                s = app.lstat(rel)
            except safefs.LinkRefused as exc:
                problems.append(f"{rel}: {exc.message}")
                continue
            if s is None or inventory.kind_of(s.st_mode) != was.kind:
                continue  # gone or replaced: the files check reports it
            checked += 1
            if (s.st_uid, s.st_gid) not in {(was.uid, was.gid), (0, 0)}:
                problems.append(f"{rel}: owned by {s.st_uid}:{s.st_gid}, by {was.uid}:{was.gid} when adopted")
            mode = stat.S_IMODE(s.st_mode)
            if mode & ~was.mode:
                problems.append(f"{rel}: mode {mode:o}, {was.mode:o} when adopted")
    return checked


def _parse_config(path: Path, data: bytes) -> None:
    text = data.decode("utf-8")
    suffix = path.suffix
    if suffix == ".py":
        compile(text, str(path), "exec")
    elif suffix == ".json":
        json.loads(text)
    elif suffix == ".toml":
        tomllib.loads(text)
    elif suffix in (".ini", ".cfg", ".conf"):
        configparser.ConfigParser().read_string(text)
    elif path.name.startswith(".env") or suffix == ".env":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#") and "=" not in line:
                raise ValueError(f"line {n} is not KEY=VALUE")


CONFIG_CAP = 4 << 20  # bytes: a config file is small; a bigger (perhaps sparse) one is not read


def check_config(ctx: Context) -> CheckResult:
    problems: list[str] = []
    checked = 0
    with safefs.Tree.open(ctx.app_root) as app:
        for rel in ctx.app.config_files:
            for name in (rel, rel + ".nesop-new"):
                try:
                    if app.lstat(name) is None:
                        continue
                    data = _read_config(app, name)  # a link there is refused, never read through
                except safefs.LinkRefused as exc:
                    problems.append(f"{name}: {exc.message}")
                    continue
                except FileNotFoundError:
                    continue  # removed since the lstat (the app's account may): nothing to check
                checked += 1
                problem = _config_problem(name, data)
                if problem is not None:
                    problems.append(problem)
                if name.endswith(".nesop-new"):
                    problems.append(f"{name}: a new version waits beside your edited file; merge it")
    return CheckResult("config", not problems, f"{checked} config files parsed", problems)


def _read_config(app: safefs.Tree, name: str) -> bytes | None:
    """The file's bytes; None when it holds more than :data:`CONFIG_CAP` (only that much is read)."""
    with app.open_file(name) as fh:
        data = fh.read(CONFIG_CAP + 1)
    return None if len(data) > CONFIG_CAP else data


def _config_problem(name: str, data: bytes | None) -> str | None:
    if data is None:
        too_large = f"larger than {CONFIG_CAP >> 20} MiB, too large to check"
        return f"{name}: {too_large}; shrink it or take it out of [files] config"
    try:
        _parse_config(Path(name), data)
    except (RecursionError, MemoryError) as exc:  # CPython's parsers run out of stack on deep nesting
        return f"{name}: nested too deeply to parse ({type(exc).__name__}); flatten it"
    except Exception as exc:  # whatever a parser says of the app's file is the file's problem, not ours
        return f"{name}: {exc}"
    return None


def check_history(ctx: Context) -> CheckResult:
    entries = history.read(ctx.history_file)
    if not entries:
        return CheckResult("history", True, "no update recorded yet")
    last = entries[-1]
    ok = last.get("status") == "success"
    what = f"last {last.get('action')} of {last.get('version')} at {last.get('time')}: {last.get('status')}"
    problems = [] if ok else [f"{last.get('failed_step')}: {last.get('reason')}"]
    journal = state.read_journal(ctx)
    if journal is not None:
        ok = False
        problems.append("an interrupted transaction is pending: run `nesop-update recover`")
    return CheckResult("history", ok, what, problems)


BUILTIN: dict[str, Callable[[Context], CheckResult]] = {
    "files": check_files,
    "service": check_service,
    "database": check_database,
    "web": check_web,
    "permissions": check_permissions,
    "config": check_config,
    "history": check_history,
}


def custom_dir(ctx: Context) -> Path:
    return ctx.host(f"/etc/nesop-deb/checks.d/{ctx.app.name}")


def custom_checks(ctx: Context) -> dict[str, Path]:
    d = custom_dir(ctx)
    if not d.is_dir():
        return {}
    return {p.name: p for p in sorted(d.iterdir()) if p.is_file() and os.access(p, os.X_OK)}


def run_custom(ctx: Context, name: str, path: Path) -> CheckResult:
    env = {
        **os.environ,
        "NESOP_APP_NAME": ctx.app.name,
        "NESOP_APP_ROOT": str(ctx.app_root),
        "NESOP_APP_SERVICE": ctx.app.service,
        "NESOP_HEALTH_URL": ctx.app.health_url or "",
        "NESOP_DATABASE": str(ctx.database_path or ""),
    }
    result = proc.run([path], env=env, check=False, timeout=120)
    out = (result.out + result.err).strip().splitlines()
    return CheckResult(name, result.returncode == 0, out[-1] if out else f"exit code {result.returncode}")


def names(ctx: Context) -> list[str]:
    return [*BUILTIN, *custom_checks(ctx)]


def run(ctx: Context, selected: list[str] | None = None) -> list[CheckResult]:
    custom = custom_checks(ctx)
    wanted = selected or names(ctx)
    unknown = [n for n in wanted if n not in BUILTIN and n not in custom]
    if unknown:
        raise UsageError(f"--check {unknown[0]}: no such check", hint=f"choose from {', '.join(names(ctx))}")
    results = []
    for n in wanted:
        try:
            results.append(BUILTIN[n](ctx) if n in BUILTIN else run_custom(ctx, n, custom[n]))
        except NesopError as exc:
            results.append(CheckResult(n, False, str(exc)))
    return results
