"""The build plan: from an app repository and the build options to what the package will hold.

Reading git happens in :func:`make_plan`; deciding what ships is the pure :func:`select_files` and
:func:`select_migrations`, tested on plain data. The plan is data: ``--dry-run`` prints it and
:mod:`nesop_deb.builder.package` writes it into a ``.deb``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from nesop_deb import __version__, config
from nesop_deb.builder import release, requirements, socketunit, wheels
from nesop_deb.builder.git import Change, Commit, GitRepo, TreeEntry
from nesop_deb.builder.migrations import (
    MIGRATION_NAME,
    check_names,
    check_transactional,
    is_migration_file,
    refuse_python,
    runs_outside_transaction,
)
from nesop_deb.errors import BuildError, ConfigError, UsageError
from nesop_deb.manifest import (
    WHEEL_NAME,
    Action,
    Dependencies,
    FileEntry,
    LeftBehind,
    Manifest,
    MigrationEntry,
)
from nesop_deb.paths import (
    UnsafePath,
    control_character,
    excluded,
    link_chain_stays_inside,
    link_stays_inside,
    safe_relative,
)


@dataclass(frozen=True)
class BuildOptions:
    version: str | None = None
    since: str | None = None
    files: tuple[str, ...] = ()
    no_migrations: bool = False
    full: bool = False
    allow_dirty: bool = False
    allow_partial: bool = False
    python: str | None = None  # --python: the servers' python3 instead of [dependencies] python
    arch: str | None = None  # --arch: their Debian architecture instead of [dependencies] architecture
    all_wheels: bool = False  # --all-wheels: the update carries every wheel and switches the venv


@dataclass(frozen=True)
class BuildPlan:
    config: config.Config
    manifest: Manifest
    payload: Mapping[str, bytes]  # app-relative path -> content (symlinks: the target)
    migrations: Mapping[str, bytes]  # file name -> content
    commits: Sequence[Commit]
    epoch: int
    notes: Sequence[str] = field(default_factory=tuple)
    warnings: Sequence[str] = field(default_factory=tuple)
    wheels: Mapping[str, bytes] = field(default_factory=dict)  # wheel file name -> content

    @property
    def package(self) -> str:
        return self.config.package.name

    @property
    def version(self) -> str:
        return self.manifest.version


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _mode(entry: TreeEntry) -> int:
    return 0o755 if entry.mode == "100755" else 0o644


def _check_entry(entry: TreeEntry, blobs: Mapping[str, bytes]) -> None:
    if entry.mode == "160000":
        raise BuildError(f"{entry.path} is a git submodule", hint="exclude it in [files].exclude")
    if entry.mode == "120000":
        target = blobs[entry.blob].decode("utf-8", "surrogateescape")
        if not link_stays_inside(entry.path, target):
            raise BuildError(
                f"symlink {entry.path} -> {target} points outside the repository",
                hint="make it relative and inside the app, or exclude it in [files].exclude",
            )


def normalise_files_option(raw: Sequence[str], app_dir: Path) -> tuple[str, ...]:
    """``--files`` arguments as app-relative paths; absolute ones must lie inside the app."""
    out = []
    for item in raw:
        path = Path(item)
        if path.is_absolute():
            try:
                item = str(path.resolve().relative_to(app_dir))
            except ValueError:
                raise UsageError(
                    f"--files {item}: the path leaves the repository {app_dir}",
                    hint="name files inside the app",
                ) from None
        try:
            out.append(safe_relative(item.rstrip("/")) if item not in (".", "./") else ".")
        except UnsafePath:
            raise UsageError(
                f"--files {item}: the path leaves the repository", hint="name files inside the app"
            ) from None
    return tuple(out)


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(p == "." or path == p or path.startswith(p + "/") for p in prefixes)


def _check_named(
    only: tuple[str, ...],
    changes: Sequence[Change],
    head: Mapping[str, TreeEntry],
    exclude: tuple[str, ...],
) -> None:
    """Each ``--files`` path must name something at HEAD or changed in the range, and a file that
    ``[files] exclude`` removes cannot be asked for."""
    changed = {p for ch in changes for p in (ch.path, ch.old_path) if p is not None}
    for p in only:
        if p == ".":
            continue
        if p in head or p in changed:
            if excluded(p, exclude):
                raise UsageError(
                    f"--files {p}: [files] exclude removes it from what ships",
                    hint="name files that ship, or change [files].exclude in nesop-deb.toml",
                )
            continue
        if not any(_under(k, (p,)) for k in (*head, *changed)):
            raise UsageError(
                f"--files {p}: no such file in the repository at HEAD",
                hint="name files as git tracks them, relative to the app directory",
            )


def select_files(
    changes: Sequence[Change],
    head: Mapping[str, TreeEntry],
    base: Mapping[str, TreeEntry],
    blobs: Mapping[str, bytes],
    exclude: tuple[str, ...],
    only: tuple[str, ...] = (),
) -> list[FileEntry]:
    """The file entries of an update from git's changes between base and head (pure).

    ``only`` (``--files``) narrows them to those paths; a file it names that did not change in the
    range ships as HEAD has it (the user asked for it)."""
    if only:
        _check_named(only, changes, head, exclude)
    changed = {p for ch in changes for p in (ch.path, ch.old_path) if p is not None}
    # a named file that did not change ships as HEAD has it: as if the range had changed it
    named = [Change("M", p) for p in only if p in head and p not in changed]
    entries: list[FileEntry] = []
    for ch in [*changes, *named]:
        paths = [ch.path] + ([ch.old_path] if ch.old_path else [])
        if only and not any(_under(p, only) for p in paths):
            continue
        if ch.status == "D":
            if excluded(ch.path, exclude):
                continue
            old = base[ch.path]
            entries.append(FileEntry(ch.path, Action.DELETE, None, 0, None, _sha256(blobs[old.blob])))
            continue
        new = head[ch.path]
        new_excluded = excluded(ch.path, exclude)
        old_excluded = ch.old_path is None or excluded(ch.old_path, exclude)
        if ch.status == "R" and ch.old_path is not None and new_excluded and not old_excluded:
            # moved out of what ships: on the server it is a deletion
            old = base[ch.old_path]
            entries.append(FileEntry(ch.old_path, Action.DELETE, None, 0, None, _sha256(blobs[old.blob])))
            continue
        if new_excluded:  # checked before the entry: excluding a bad symlink or a submodule must work
            continue
        _check_entry(new, blobs)
        data = blobs[new.blob]
        link = data.decode("utf-8", "surrogateescape") if new.mode == "120000" else None
        if ch.status == "R" and ch.old_path is not None:
            old = base[ch.old_path]
            if old_excluded:  # moved into what ships: an addition
                entries.append(
                    FileEntry(ch.path, Action.ADD, _sha256(data), len(data), _mode(new), None, None, link)
                )
                continue
            entries.append(
                FileEntry(
                    ch.path,
                    Action.RENAME,
                    _sha256(data),
                    len(data),
                    _mode(new),
                    _sha256(blobs[old.blob]),
                    ch.old_path,
                    link,
                )
            )
            continue
        old_entry = base.get(ch.path)
        pre = _sha256(blobs[old_entry.blob]) if old_entry is not None else None
        action = Action.ADD if old_entry is None else Action.MODIFY
        entries.append(FileEntry(ch.path, action, _sha256(data), len(data), _mode(new), pre, None, link))
    _check_link_chains(entries)
    return sorted(entries, key=lambda e: e.path)


def left_behind(
    changes: Sequence[Change],
    head: Mapping[str, TreeEntry],
    base: Mapping[str, TreeEntry],
    blobs: Mapping[str, bytes],
    exclude: tuple[str, ...],
    files: Sequence[FileEntry],
) -> list[LeftBehind]:
    """The paths the range changes, among those that ship, that ``files`` does not write (pure):
    what a partial package leaves on the server as the base has it."""
    written = {p for f in files for p in (f.path, f.renamed_from) if p is not None}
    out: dict[str, LeftBehind] = {}

    def digest(tree: Mapping[str, TreeEntry], path: str | None) -> str | None:
        return None if path is None else _sha256(blobs[tree[path].blob])

    for ch in changes:
        sides: list[tuple[str, str | None, str | None]] = []  # (path, at base, at head)
        old_ships = ch.old_path is not None and not excluded(ch.old_path, exclude)
        if ch.status == "R" and ch.old_path is not None and old_ships:
            sides.append((ch.old_path, ch.old_path, None))
        if not excluded(ch.path, exclude):
            if ch.status == "D":
                sides.append((ch.path, ch.path, None))
            elif ch.status in ("A", "R"):
                sides.append((ch.path, None, ch.path))
            else:
                sides.append((ch.path, ch.path, ch.path))
        for path, at_base, at_head in sides:
            entries = [base.get(at_base or ""), head.get(at_head or "")]
            if path in written or any(e is not None and e.mode == "160000" for e in entries):
                continue  # shipped, or a submodule (never shippable: the full range refuses it)
            out[path] = LeftBehind(path, digest(base, at_base), digest(head, at_head))
    return [out[p] for p in sorted(out)]


def _check_link_chains(entries: Sequence[FileEntry]) -> None:
    """Each link may stay inside on its own while a chain of them leaves (``a -> ..`` and
    ``b -> a/..``): resolve them through each other, as the server's runtime does again."""
    links = {e.path: e.link_target for e in entries if e.link_target is not None}
    for path, target in sorted(links.items()):
        if not link_chain_stays_inside(path, target, links.get):
            raise BuildError(
                f"symlink {path} -> {target} leads outside the app through other symlinks",
                hint="point it at a path inside the app that needs no other link, or exclude it",
            )


def full_files(
    head: Mapping[str, TreeEntry], blobs: Mapping[str, bytes], exclude: tuple[str, ...], only: tuple[str, ...]
) -> list[FileEntry]:
    """Every included file at head, as additions: a first install."""
    changes = [Change("A", p) for p in head]
    return select_files(changes, head, {}, blobs, exclude, only)


def select_migrations(
    changes: Sequence[Change],
    head: Mapping[str, TreeEntry],
    base: Mapping[str, TreeEntry],
    blobs: Mapping[str, bytes],
    migrations_dir: str,
    full: bool,
) -> tuple[list[MigrationEntry], dict[str, bytes]]:
    """The migrations added in the range (every one, for a full install) with their contents."""
    prefix = migrations_dir.rstrip("/") + "/"
    in_dir = {
        p[len(prefix) :]: e for p, e in head.items() if p.startswith(prefix) and "/" not in p[len(prefix) :]
    }
    new_names: set[str] = set()
    if full:
        new_names = set(in_dir)
        for name in sorted(in_dir):
            refuse_python(prefix, name)
    else:
        for ch in changes:
            if not ch.path.startswith(prefix) and not (ch.old_path or "").startswith(prefix):
                continue
            name = ch.path[len(prefix) :] if ch.path.startswith(prefix) else ""
            if ch.status != "D" and name in in_dir:
                refuse_python(prefix, name)
            m = MIGRATION_NAME.match(name) or MIGRATION_NAME.match((ch.old_path or "")[len(prefix) :])
            if m is None:
                continue
            # a file under a name the engine never took (0002-x.sql) has not run: renamed, it is new
            old_ran = (
                ch.old_path is not None
                and ch.old_path in base
                and is_migration_file(ch.old_path, migrations_dir)
            )
            released = ch.path in base or old_ran
            new = ch.status == "A" or (ch.status == "R" and not old_ran)
            if m.group("rollback") is None and (released or not new):
                raise BuildError(
                    f"{ch.old_path or ch.path} was changed after it was released",
                    hint="never edit a released migration: add a new one "
                    "(or build with --no-migrations --allow-partial)",
                )
            if ch.status in ("A", "R"):
                new_names.add(name)
    entries: list[MigrationEntry] = []
    contents: dict[str, bytes] = {}
    for name in sorted(new_names):
        m = MIGRATION_NAME.match(name)
        if m is None or m.group("rollback"):
            continue
        data = blobs[in_dir[name].blob]
        outside = runs_outside_transaction(data)
        check_transactional(prefix + name, data, outside)
        rollback_name = f"{m.group('id')}.rollback.sql"
        rollback = in_dir.get(rollback_name)
        contents[name] = data
        rsha = None
        if rollback is not None:
            rdata = blobs[rollback.blob]
            check_transactional(prefix + rollback_name, rdata, outside)
            contents[rollback_name] = rdata
            rsha = _sha256(rdata)
        entries.append(
            MigrationEntry(
                m.group("id"),
                name,
                _sha256(data),
                rollback is not None,
                rollback_name if rollback else None,
                rsha,
            )
        )
    return entries, contents


def _unshippable_name(path: str) -> str | None:
    """Why a name git accepts cannot go into a package, if it cannot."""
    if "\n" in path or "\r" in path:  # dpkg's md5sums and file lists are line-based
        return "contains a line break"
    if control_character(path) is not None:  # the runtime refuses it: fail here, not on the server
        return "contains a control character"
    try:  # git stores names as bytes; the manifest and the server need UTF-8
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def _names(left: Sequence[LeftBehind], limit: int = 20) -> str:
    shown = ", ".join(lb.path for lb in left[:limit])
    return shown + (f" and {len(left) - limit} more" if len(left) > limit else "")


def _left_out_cause(options: BuildOptions, left: Sequence[LeftBehind], migrations_dir: str) -> str:
    by_migrations = any(is_migration_file(lb.path, migrations_dir) for lb in left)
    by_files = bool(options.files) and any(not is_migration_file(lb.path, migrations_dir) for lb in left)
    return (
        " and ".join(name for name, on in (("--files", by_files), ("--no-migrations", by_migrations)) if on)
        or "--files"
    )


def _leaves_out(cause: str) -> str:
    return f"{cause} {'leave' if ' and ' in cause else 'leaves'} out"


def _partial_refused(
    options: BuildOptions, left: Sequence[LeftBehind], migrations_dir: str, rng: str
) -> UsageError:
    cause = _left_out_cause(options, left, migrations_dir)
    fix = "add them to --files" if "--files" in cause else "drop --no-migrations"
    if cause == "--no-migrations":
        fix += " (updates built from the next release tag will not carry them either)"
    return UsageError(
        f"{_leaves_out(cause)} {len(left)} file(s) that {rng} changed: {_names(left)}",
        hint=(
            f"{fix}, or build with --allow-partial: the server then keeps these as they were until"
            " an update writes them"
        ),
    )


def _check_pointers(
    cfg: config.Config, head: Mapping[str, TreeEntry], files: Sequence[FileEntry], full: bool
) -> None:
    """What the config names must be in the release: ``[app] unit_file`` (what a first install
    enables), every ``[files] config`` entry and, with a database, the migrations directory."""
    for key, unit, what in (
        ("unit_file", cfg.app.unit_file, "the service"),
        ("socket_file", cfg.app.socket_file, "the socket unit"),
    ):
        if unit is None:
            continue
        why = _missing(unit, head, cfg.files.exclude)
        if why is None and full and not any(f.path == unit for f in files):
            why = "is not among the files this --full build ships (--files)"
        if why is not None:
            raise BuildError(
                f"[app] {key} {unit} {why}, so the server could not install {what}",
                hint=f"commit the unit file there, take it out of [files] exclude, or fix [app] {key}",
            )
    for entry in cfg.files.config:
        why = _missing(entry, head, cfg.files.exclude)
        if why is not None:
            raise BuildError(
                f"[files] config entry {entry} {why}",
                hint="commit the file there, take it out of [files] exclude, or fix [files] config",
            )
    mig = cfg.migrations.dir.rstrip("/")
    if cfg.migrations.database is not None and not any(p.startswith(mig + "/") for p in head):
        elsewhere = sorted(
            {
                p.rsplit("/", 1)[0]
                for p in head
                if "/" in p
                and p.endswith(".sql")
                and is_migration_file(p, p.rsplit("/", 1)[0])
                and not excluded(p, cfg.files.exclude)
            }
        )
        if elsewhere or mig != config.MigrationsConfig.dir:
            found = f" (migrations are in {', '.join(elsewhere)})" if elsewhere else ""
            raise BuildError(
                f"[migrations] dir {mig} does not exist at HEAD{found}",
                hint=f"set [migrations] dir to where the migrations are, or commit them in {mig}/",
            )
    if cfg.migrations.database is not None and excluded(f"{mig}/0001_probe.sql", cfg.files.exclude):
        raise BuildError(
            f"[files] exclude removes the migrations dir {mig}, so its migrations would not ship",
            hint="take it out of [files] exclude (migrations ship with the app's files)",
        )


def _check_socket(repo: GitRepo, head: str, cfg: config.Config, warnings: list[str]) -> None:
    """The socket unit must be one the runtime can hold connections with; a health URL on
    another port would be answered by nothing the socket starts."""
    path = cfg.app.socket_file
    if path is None:
        return
    raw = repo.file_at(head, path) or b""
    unit = socketunit.check(raw.decode("utf-8", "replace"), path, cfg.app.service)
    url = cfg.health.url
    if url is None:
        return
    port = urlsplit(url).port or (443 if url.startswith("https:") else 80)
    if not any(listen.rsplit(":", 1)[-1] == str(port) for listen in unit.listen):
        warnings.append(
            f"[health] url {url} is on port {port}, which {path} does not listen on"
            f" ({', '.join(unit.listen)}): the health gate would not reach the app through it"
        )


def _missing(path: str, head: Mapping[str, TreeEntry], exclude: tuple[str, ...]) -> str | None:
    if path not in head:
        return "is not a file in the repository at HEAD"
    if excluded(path, exclude):
        return "is removed by [files] exclude"
    return None


def _base_config(repo: GitRepo, base: str) -> config.Config | None:
    """The base release's config, or None when it has none that loads today."""
    raw = repo.file_at(base, config.CONFIG_NAME)
    try:
        return config.loads(raw.decode("utf-8")) if raw is not None else None
    except (ConfigError, UnicodeDecodeError):
        return None


def _unit_file_newly_named(
    repo: GitRepo, base: str, cfg: config.Config, changes: Sequence[Change], head: Mapping[str, TreeEntry]
) -> list[Change]:
    """``[app] unit_file`` or ``socket_file`` set, or pointed at another file, since the base
    release: the server installs a unit only from an update that writes it, so it ships although
    it did not change."""
    before_cfg = _base_config(repo, base)  # one that does not load today: name the units to be safe
    added: list[Change] = []
    for unit, before in (
        (cfg.app.unit_file, before_cfg.app.unit_file if before_cfg is not None else None),
        (cfg.app.socket_file, before_cfg.app.socket_file if before_cfg is not None else None),
    ):
        if unit is None or unit not in head or any(unit in (c.path, c.old_path) for c in changes):
            continue
        if before != unit:
            added.append(Change("M", unit))
    return added


def _without_venv(cfg: config.Config, head: Mapping[str, TreeEntry], notes: list[str]) -> config.Config:
    """[dependencies] venv never ships: on the server it is the link to the virtualenv root
    builds (a virtualenv tracked in git, or one it tracked before, is left out, deletions too)."""
    if cfg.dependencies is None:
        return cfg
    venv = cfg.dependencies.venv
    patterns = (venv, f"{venv}/**")
    tracked = sum(1 for p in head if excluded(p, patterns))
    if tracked:
        notes.append(
            f"{venv}/ is in the repository ({tracked} files): it never ships, the server builds the"
            f" virtualenv; `git rm -r --cached {venv}` and `/{venv}/` in .gitignore keep it out"
        )
    files = dataclasses.replace(cfg.files, exclude=(*cfg.files.exclude, *patterns))
    return dataclasses.replace(cfg, files=files)


def _with_target(cfg: config.Config, options: BuildOptions) -> config.Config:
    """The config with ``--python``/``--arch`` in place of [dependencies]' python/architecture."""
    given = [(o, v) for o, v in (("--python", options.python), ("--arch", options.arch)) if v is not None]
    if not given:
        return cfg
    deps = cfg.dependencies
    if deps is None:
        option, value = given[0]
        raise UsageError(
            f"{option} {value}: {config.CONFIG_NAME} at HEAD has no [dependencies], so no wheels are fetched",
            hint=f"drop {option}, or add a [dependencies] section to {config.CONFIG_NAME}",
        )
    python = options.python if options.python is not None else deps.python
    if not wheels.is_python_version(python):
        raise UsageError(
            f"--python {python!r} is not a major.minor version",
            hint="give the servers' python3 version: 3.11 on Debian 12, 3.13 on Debian 13",
        )
    arch = options.arch if options.arch is not None else deps.architecture
    if arch not in config.ARCHITECTURES:
        raise UsageError(
            f"--arch {arch!r} is not one this builder fetches wheels for",
            hint=f"give the servers' `dpkg --print-architecture`: one of {', '.join(config.ARCHITECTURES)}",
        )
    return dataclasses.replace(cfg, dependencies=dataclasses.replace(deps, python=python, architecture=arch))


@dataclass(frozen=True)
class _VenvChange:
    """A release whose virtualenv differs from its base's: the pinned set and what the server has."""

    text: str
    pins: requirements.Requirements
    base: requirements.Requirements | None  # the set the server has wheels for; None: none known


def _venv_change(
    repo: GitRepo,
    deps: config.DependenciesConfig,
    head: str,
    base: str | None,
    *,
    all_wheels: bool = False,
    target_given: bool = False,
) -> _VenvChange | None:
    """HEAD's pinned set (refused unless every line is pinned with hashes), when the update
    changes the virtualenv: always in a full package; in an update when the base release had no
    [dependencies], another python or architecture (the server has no wheel for this target), or
    another requirements text or venv path."""
    raw = repo.file_at(head, deps.requirements)
    if raw is None:
        raise BuildError(
            f"[dependencies] requirements {deps.requirements} is not a file in the repository at HEAD",
            hint="commit it there, or fix [dependencies] requirements",
        )
    try:
        text = raw.decode("utf-8-sig")  # as pip reads it: a byte order mark is no part of line 1
    except UnicodeDecodeError:
        raise BuildError(
            f"{deps.requirements}: not UTF-8 text", hint="write it in UTF-8 (pip-compile does)"
        ) from None
    pins = requirements.parse(text, deps.requirements)
    if all_wheels:  # a server whose wheel store lacks the base's (its virtualenv was made by hand)
        return _VenvChange(text, pins, None)
    before_cfg = _base_config(repo, base) if base is not None else None
    before = before_cfg.dependencies if before_cfg is not None else None
    if before is None:
        return _VenvChange(text, pins, None)
    # --python/--arch name the servers this update is for: their base was built for them too
    if (before.python, before.architecture) != (deps.python, deps.architecture) and not target_given:
        return _VenvChange(text, pins, None)
    base_raw = repo.file_at(base, before.requirements) if base is not None else None
    if base_raw == raw and before.venv == deps.venv:
        return None
    try:  # the set the base shipped; unreadable today, it counts for nothing and every wheel ships
        base_pins = (
            None
            if base_raw is None
            else requirements.parse(base_raw.decode("utf-8-sig"), before.requirements)
        )
    except (BuildError, UnicodeDecodeError):
        base_pins = None
    return _VenvChange(text, pins, base_pins)


def _check_untracked_migrations(
    repo: GitRepo, cfg: config.Config, allow_dirty: bool, notes: list[str]
) -> None:
    """A migration written but never added to git would not ship, and the build would not say so.
    Ignored files count (a ``*.sql`` in .gitignore would hide it); subdirectories and what
    ``[files] exclude`` removes do not (the naming check covers what is committed there)."""
    prefix = cfg.migrations.dir.rstrip("/") + "/"
    loose = [
        p
        for p in repo.untracked(prefix)
        if p.lower().endswith(".sql") and "/" not in p[len(prefix) :] and not excluded(p, cfg.files.exclude)
    ]
    if not loose:
        return
    if allow_dirty:
        notes.append(f"untracked migration(s) not included: {', '.join(loose)}")
        return
    raise UsageError(
        f"untracked migration file(s) in {prefix}: {', '.join(loose[:3])}"
        + (" ..." if len(loose) > 3 else ""),
        hint=f"add and commit them (git add -f {shlex.quote(loose[0])}), or build HEAD without them with"
        " --allow-dirty",
    )


def find_app_dir(start: Path) -> Path:
    """The app directory for ``start``: the nearest directory holding a ``nesop-deb.toml``, from
    ``start`` up to the repository's top (as git finds its repository); ``start`` if none does."""
    repo = GitRepo(start)
    for directory in (repo.dir, *repo.dir.parents):
        if (directory / config.CONFIG_NAME).is_file():
            return directory
        if directory == repo.top or not directory.is_relative_to(repo.top):
            break
    return repo.dir


def load_config(repo: GitRepo, head: str, allow_dirty: bool, notes: list[str]) -> config.Config:
    """The app's config as the commit being built has it (a package is built from a commit)."""
    path = repo.dir / config.CONFIG_NAME
    committed = repo.file_at(head, config.CONFIG_NAME)
    if committed is None:
        if path.exists():
            raise UsageError(
                f"{path} is not committed: a package is built from a commit, with its config",
                hint=f"commit it: git add {config.CONFIG_NAME} && git commit",
            )
        return config.load(path)  # the error says how to write one
    try:
        text = committed.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    if allow_dirty and path.is_file() and path.read_bytes() != committed:
        notes.append(f"using {config.CONFIG_NAME} as committed at HEAD; its uncommitted edits are not used")
    return config.loads(text, f"{path} (at HEAD)")


def make_plan(app_dir: Path, options: BuildOptions) -> BuildPlan:
    """Read the repository and decide everything the package will hold."""
    repo = GitRepo(app_dir)
    if not repo.has_commits():
        raise UsageError(f"{repo.dir}: the repository has no commits", hint="commit the app first")
    notes: list[str] = []
    warnings: list[str] = []
    head = repo.resolve("HEAD")
    dirty = repo.dirty_paths()  # first: an uncommitted fix of the config is named as such
    if dirty:
        if not options.allow_dirty:
            shown = ", ".join(dirty[:3]) + (" ..." if len(dirty) > 3 else "")
            raise UsageError(
                f"uncommitted changes in {repo.dir}: {shown}",
                hint="commit them (packages are built from commits), or build HEAD anyway with --allow-dirty",
            )
        notes.append(f"building HEAD; {len(dirty)} uncommitted change(s) are not included")
    cfg = _with_target(load_config(repo, head, options.allow_dirty, notes), options)
    _check_untracked_migrations(repo, cfg, options.allow_dirty, notes)
    version = release.resolve_version(repo, head, options.version)
    only = normalise_files_option(options.files, repo.dir)
    release.check_version(
        repo, head, version, options.version is not None, options.since is not None, options.full
    )
    since_ref: str | None = None
    since_commit: str | None = None
    bases: tuple[str, ...] = ()
    if not options.full:
        base = release.choose_base(repo, head, version, options.since, warnings)
        since_ref, since_commit, bases = base.ref, base.commit, (base.version,)
    elif options.since is not None:
        since_ref = options.since  # recorded; a full install has no base

    head_tree = repo.tree(head)
    recorded = cfg  # what the manifest carries: the config as written (and the target used)
    cfg = _without_venv(cfg, head_tree, notes)
    base_tree = repo.tree(since_commit) if since_commit else {}
    changes = repo.diff(since_commit, head) if since_commit else [Change("A", p) for p in head_tree]
    if since_commit is not None:
        changes += _unit_file_newly_named(repo, since_commit, cfg, changes, head_tree)
    for ch in changes:
        for p in (ch.path, ch.old_path):
            if p is None:
                continue
            problem = _unshippable_name(p)
            if problem and excluded(p, cfg.files.exclude):
                continue  # never shipped: an odd name there is the repository's business
            if problem:
                raise BuildError(
                    f"git path {p!r} {problem}",
                    hint="rename it (git mv), or exclude it in [files].exclude",
                )
            try:
                safe_relative(p)
            except UnsafePath as exc:
                raise BuildError(f"git path {p!r}: {exc}") from None

    check_names(
        (c.path for c in changes if c.status != "D" and not excluded(c.path, cfg.files.exclude)),
        cfg.migrations.dir,
        head_tree,
    )

    # a submodule's entry names a commit, not a blob: select_files refuses it unless excluded
    wanted = {head_tree[c.path].blob for c in changes if c.path in head_tree}
    wanted |= {base_tree[p].blob for c in changes for p in (c.path, c.old_path) if p and p in base_tree}
    wanted |= {t[p].blob for p in only for t in (head_tree, base_tree) if p in t}  # named, unchanged
    wanted -= {e.blob for e in (*head_tree.values(), *base_tree.values()) if e.mode == "160000"}
    blobs = repo.blobs(sorted(wanted))

    mig_dir = cfg.migrations.dir

    def migration_change(ch: Change) -> bool:
        return any(p is not None and is_migration_file(p, mig_dir) for p in (ch.path, ch.old_path))

    shippable = [c for c in changes if not (options.no_migrations and migration_change(c))]
    if options.no_migrations:
        for p in only:
            if is_migration_file(p, mig_dir):
                raise UsageError(
                    f"--files {p}: --no-migrations leaves migration files out",
                    hint="drop --no-migrations to ship the range's migrations, or do not name it",
                )
    elif only:
        # --files narrows the app's files; the range's migrations still ship, and their files with them
        ships = {c.path for c in shippable if migration_change(c) and not excluded(c.path, cfg.files.exclude)}
        only += tuple(sorted(ships - set(only)))
    files = select_files(shippable, head_tree, base_tree, blobs, cfg.files.exclude, only)
    migrations: list[MigrationEntry] = []
    migration_data: dict[str, bytes] = {}
    if not options.no_migrations:
        migrations, migration_data = select_migrations(
            changes, head_tree, base_tree, blobs, mig_dir, options.full or since_commit is None
        )
    if migrations and cfg.migrations.database is None:
        raise BuildError(
            f"the range adds migrations ({migrations[0].id}...) but [migrations].database is not set",
            hint="set it in nesop-deb.toml, or build with --no-migrations --allow-partial",
        )
    rng = f"{since_ref}..HEAD" if since_commit else "HEAD"
    left = left_behind(changes, head_tree, base_tree, blobs, cfg.files.exclude, files)
    deps = cfg.dependencies
    if options.all_wheels and deps is None:
        raise UsageError(
            f"--all-wheels: {config.CONFIG_NAME} at HEAD has no [dependencies], so no wheels are fetched",
            hint="drop --all-wheels, or add a [dependencies] section",
        )
    venv = (
        _venv_change(
            repo,
            deps,
            head,
            since_commit,
            all_wheels=options.all_wheels,
            target_given=options.python is not None or options.arch is not None,
        )
        if deps is not None
        else None
    )
    if not files and not migrations and venv is None:
        why = f" ({_leaves_out(_left_out_cause(options, left, mig_dir))} {_names(left)})" if left else ""
        raise UsageError(
            f"nothing to ship: no included file or migration changed in {rng}{why}",
            hint="commit the changes first, or check [files].exclude and --files",
        )
    if left and not options.allow_partial:
        raise _partial_refused(options, left, mig_dir, rng)
    _check_pointers(cfg, head_tree, files, options.full or since_commit is None)
    _check_socket(repo, head, cfg, warnings)

    dependencies: Dependencies | None = None
    wheel_data: dict[str, bytes] = {}
    if venv is not None and deps is not None:  # last: fetching is the slow part, after every check
        target = wheels.Target(deps.python, deps.architecture)
        fetched = wheels.fetch(venv.pins, target)
        dependencies, wheel_data = wheels.select(
            venv.text, deps.requirements, venv.pins, venv.base, target, fetched
        )

    payload = {f.path: blobs[head_tree[f.path].blob] for f in files if f.ships_payload}
    epoch = repo.commit_time(head)
    manifest = Manifest(
        package=cfg.package.name,
        version=version,
        bases=bases,
        full=options.full or since_commit is None,
        source_commit=head,
        since_commit=since_commit,
        since_ref=since_ref,
        builder_version=__version__,
        created=epoch,
        config=recorded.to_dict(),
        files=tuple(files),
        migrations=tuple(migrations),
        config_files=tuple(p for p in cfg.files.config if p in head_tree or p in base_tree),
        left_behind=tuple(left),
        dependencies=dependencies,
    )
    commits = repo.log(since_commit, head)
    return BuildPlan(
        cfg, manifest, payload, migration_data, commits, epoch, tuple(notes), tuple(warnings), wheel_data
    )


def describe(manifest: Manifest) -> list[str]:
    """Human lines summarising what an update changes (control Description, inspect, dry-run)."""
    c = manifest.counts()
    base = f"from {', '.join(manifest.bases)}" if manifest.bases else "full install"
    deps = manifest.dependencies
    lines = [
        f"{manifest.package} {manifest.version} ({base}): {c['add']} added, {c['modify']} modified, "
        f"{c['rename']} renamed, {c['delete']} deleted, {len(manifest.migrations)} migration(s)"
        + (f", {len(manifest.left_behind)} left out (partial)" if manifest.left_behind else "")
        + (f", new virtualenv ({len(deps.wheels)} wheel(s) shipped)" if deps is not None else "")
    ]
    symbol = {Action.ADD: "+", Action.MODIFY: "~", Action.RENAME: ">", Action.DELETE: "-"}
    for f in manifest.files:
        extra = f" (from {f.renamed_from})" if f.renamed_from else ""
        lines.append(f"{symbol[f.action]} {f.path}{extra}")
    for m in manifest.migrations:
        lines.append(f"migration {m.id}{'' if m.reversible else ' (not reversible)'}")
    for lb in manifest.left_behind:
        lines.append(f"! {lb.path} (left out: stays as the base has it)")
    if deps is not None:
        lines.append(f"virtualenv from {deps.requirements_file} for {target_text(deps)}")
        lines += [f"wheel {_wheel_pin(w.file)}" for w in deps.wheels]
    return lines


def _wheel_pin(file: str) -> str:
    """``MarkupSafe==3.0.2`` for a wheel's file name: what it is, short enough for a control line."""
    m = WHEEL_NAME.fullmatch(file)
    return f"{m.group('name')}=={m.group('version')}" if m is not None else file


def target_text(deps: Dependencies) -> str:
    """``Python 3.13 on amd64``, or ``Python 3.13, any architecture`` for a pure-Python set."""
    where = "any architecture (pure Python)" if deps.architecture == "all" else f"on {deps.architecture}"
    return f"Python {deps.python}{',' if deps.architecture == 'all' else ''} {where}"


__all__ = ["BuildOptions", "BuildPlan", "describe", "find_app_dir", "left_behind", "make_plan", "target_text"]
