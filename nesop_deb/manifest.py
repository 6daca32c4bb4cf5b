"""``update_manifest.json`` (contract: docs/architecture.md §17): what an update package changes, as data.

The builder writes it; ``nesop-deb inspect``/``verify`` and the server runtime read it back through
:func:`loads`, which validates every field (paths included) before anything trusts it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from nesop_deb import versions
from nesop_deb.config import (
    MAX_HEALTH_TIMEOUT,
    health_timeout_ok,
    is_account_name,
    is_package_name,
    is_unit_name,
)
from nesop_deb.errors import NesopError
from nesop_deb.paths import (
    UnsafePath,
    app_root_problem,
    control_character,
    link_chain_stays_inside,
    link_stays_inside,
    safe_relative,
)

FORMAT = 1
NAME = "update_manifest.json"


class ManifestError(NesopError):
    """A manifest that is malformed, of an unknown format, or names unsafe paths."""


class Action(StrEnum):
    ADD = "add"
    MODIFY = "modify"
    DELETE = "delete"
    RENAME = "rename"


@dataclass(frozen=True)
class FileEntry:
    path: str
    action: Action
    sha256: str | None  # None for a deletion
    size: int
    mode: int | None  # permission bits (0o644, 0o755); None for a deletion
    preimage_sha256: str | None  # the file as the base version has it; None for an addition
    renamed_from: str | None = None
    link_target: str | None = None  # the file is a symlink to this relative target

    @property
    def ships_payload(self) -> bool:
        return self.action is not Action.DELETE


@dataclass(frozen=True)
class MigrationEntry:
    id: str  # file stem: 0003_add_stock
    file: str  # relative to the package's migrations directory
    sha256: str
    reversible: bool
    rollback_file: str | None = None
    rollback_sha256: str | None = None


@dataclass(frozen=True)
class LeftBehind:
    """A file the build's range changed that a partial package (``--files``, ``--no-migrations``)
    does not write: the server keeps it as the base has it until a later update writes it."""

    path: str
    base_sha256: str | None  # the content the server keeps (the base's); None: absent there
    release_sha256: str | None  # the release's content; None: the release deletes it


@dataclass(frozen=True)
class WheelEntry:
    """A wheel the package ships in its ``wheels/`` directory (for the server's wheel store)."""

    file: str  # the wheel's file name: name-version(-build)?-python-abi-platform.whl
    sha256: str
    size: int


@dataclass(frozen=True)
class Dependencies:
    """The virtualenv an update needs: present when the release's requirements differ from the
    base's (or in a full package). The runtime builds it offline from ``requirements`` (the pinned
    text, hashes included) with the wheels the server stores and the ones shipped here."""

    requirements: str  # the requirements file's content at the release
    wheels: tuple[WheelEntry, ...]  # shipped here; the others the server has from earlier updates
    python: str  # the target python3, major.minor
    architecture: str  # the target Debian architecture; "all" when every wheel is pure Python
    requirements_file: str = "requirements.txt"  # app-relative, for messages

    @property
    def requirements_sha256(self) -> str:
        return hashlib.sha256(self.requirements.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "requirements": self.requirements,
            "requirements_file": self.requirements_file,
            "wheels": [asdict(w) for w in self.wheels],
            "python": self.python,
            "architecture": self.architecture,
        }


# name-version(-build)?-python-abi-platform.whl, as PEP 427 names them (no path, no "..")
WHEEL_NAME = re.compile(
    r"(?P<name>[A-Za-z0-9_.]+)-(?P<version>[A-Za-z0-9_.!+]+)(-[0-9][A-Za-z0-9_.]*)?"
    r"-(?P<python>[A-Za-z0-9_.]+)-(?P<abi>[A-Za-z0-9_.]+)-(?P<platform>[A-Za-z0-9_.]+)\.whl"
)


@dataclass(frozen=True)
class Manifest:
    package: str
    version: str
    bases: tuple[str, ...]  # installed versions this update applies to; empty for a full install
    full: bool
    source_commit: str
    since_commit: str | None
    since_ref: str | None
    builder_version: str
    created: int  # SOURCE_DATE_EPOCH of the build
    config: dict[str, Any]
    files: tuple[FileEntry, ...] = ()
    migrations: tuple[MigrationEntry, ...] = ()
    config_files: tuple[str, ...] = ()
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)
    left_behind: tuple[LeftBehind, ...] = ()  # a partial package: changes of the range it leaves out
    dependencies: Dependencies | None = None  # the virtualenv this update switches to

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "format": self.format,
            "package": self.package,
            "version": self.version,
            "bases": list(self.bases),
            "full": self.full,
            "source": {
                "commit": self.source_commit,
                "since_commit": self.since_commit,
                "since_ref": self.since_ref,
                "created": self.created,
            },
            "builder_version": self.builder_version,
            "config": self.config,
            "config_files": list(self.config_files),
            "files": [_entry_dict(asdict(f)) for f in self.files],
            "migrations": [_entry_dict(asdict(m)) for m in self.migrations],
        }
        if self.left_behind:  # written only by a partial package: others read as they always did
            data["left_behind"] = [asdict(lb) for lb in self.left_behind]
        if self.dependencies is not None:  # written only when the virtualenv changes
            data["dependencies"] = self.dependencies.to_dict()
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def counts(self) -> dict[str, int]:
        counts = {a.value: 0 for a in Action}
        for f in self.files:
            counts[f.action.value] += 1
        return counts


def _entry_dict(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.value if isinstance(v, StrEnum) else v) for k, v in d.items()}


def _req(d: dict[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ManifestError(f"update manifest: {where} lacks {key!r}")
    value = d[key]
    if not isinstance(value, types) or (isinstance(value, bool) and types is not bool):
        raise ManifestError(f"update manifest: {where}.{key} has the wrong type ({type(value).__name__})")
    return value


def _sha(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ManifestError(f"update manifest: {where} is not a sha256 hex digest")
    return value


def _path(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ManifestError(f"update manifest: {where} is not a path")
    try:
        normal = safe_relative(value)
    except UnsafePath as exc:
        raise ManifestError(f"update manifest: {where}: unsafe path: {exc}") from None
    if normal != value:
        raise ManifestError(f"update manifest: {where}: path {value!r} is not normalised")
    return normal


def _file(d: Any, i: int) -> FileEntry:
    where = f"files[{i}]"
    if not isinstance(d, dict):
        raise ManifestError(f"update manifest: {where} is not an object")
    path = _path(d.get("path"), f"{where}.path")
    try:
        action = Action(str(d.get("action")))
    except ValueError:
        raise ManifestError(f"update manifest: {where}.action {d.get('action')!r} is unknown") from None
    sha = None if action is Action.DELETE else _sha(d.get("sha256"), f"{where}.sha256")
    pre = d.get("preimage_sha256")
    pre = None if pre is None else _sha(pre, f"{where}.preimage_sha256")
    if action in (Action.MODIFY, Action.DELETE) and pre is None:
        raise ManifestError(f"update manifest: {where}: a {action.value} needs preimage_sha256")
    mode = d.get("mode")
    if action is not Action.DELETE and (
        not isinstance(mode, int) or isinstance(mode, bool) or mode & ~0o7777
    ):
        raise ManifestError(f"update manifest: {where}.mode must be permission bits")
    if mode is not None and mode & 0o6002:
        raise ManifestError(f"update manifest: {where}.mode {mode:o} is setuid, setgid or world-writable")
    size = d.get("size", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"update manifest: {where}.size must be a non-negative integer")
    renamed_from = d.get("renamed_from")
    if action is Action.RENAME:
        renamed_from = _path(renamed_from, f"{where}.renamed_from")
    elif renamed_from is not None:
        raise ManifestError(f"update manifest: {where}.renamed_from only goes with a rename")
    link = d.get("link_target")
    if link is not None and (not isinstance(link, str) or not link_stays_inside(path, link)):
        raise ManifestError(f"update manifest: {where}: symlink target {link!r} leaves the app root")
    if link is not None and control_character(link) is not None:
        raise ManifestError(f"update manifest: {where}: symlink target {link!r} contains a control character")
    return FileEntry(path, action, sha, size, mode, pre, renamed_from, link)


def _migration(d: Any, i: int) -> MigrationEntry:
    where = f"migrations[{i}]"
    if not isinstance(d, dict):
        raise ManifestError(f"update manifest: {where} is not an object")
    mid = _req(d, "id", str, where)
    file = _path(_req(d, "file", str, where), f"{where}.file")
    if "/" in file or "/" in mid:
        raise ManifestError(f"update manifest: {where}: migration files live directly in migrations/")
    rollback = d.get("rollback_file")
    if rollback is not None:
        rollback = _path(rollback, f"{where}.rollback_file")
    for key, name, expected in (
        ("file", file, f"{mid}.sql"),
        ("rollback_file", rollback, f"{mid}.rollback.sql"),
    ):
        if name is None:
            continue
        # the runtime hands these files to the database as SQL: anything else (a .py step) is refused
        if not name.endswith(".sql"):
            raise ManifestError(
                f"update manifest: {where}.{key} {name!r}: only SQL migrations (.sql) are supported"
            )
        if name != expected:
            raise ManifestError(f"update manifest: {where}.{key} {name!r} does not match the id {mid!r}")
    rsha = d.get("rollback_sha256")
    return MigrationEntry(
        mid,
        file,
        _sha(d.get("sha256"), f"{where}.sha256"),
        bool(_req(d, "reversible", bool, where)),
        rollback,
        None if rsha is None else _sha(rsha, f"{where}.rollback_sha256"),
    )


def _left_behind(data: dict[str, Any], files: tuple[FileEntry, ...]) -> tuple[LeftBehind, ...]:
    raw = data.get("left_behind", [])
    if not isinstance(raw, list):
        raise ManifestError("update manifest: left_behind is not a list")
    written = {p for f in files for p in (f.path, f.renamed_from) if p is not None}
    out: list[LeftBehind] = []
    for i, d in enumerate(raw):
        where = f"left_behind[{i}]"
        if not isinstance(d, dict):
            raise ManifestError(f"update manifest: {where} is not an object")
        path = _path(d.get("path"), f"{where}.path")
        base, release = d.get("base_sha256"), d.get("release_sha256")
        base = None if base is None else _sha(base, f"{where}.base_sha256")
        release = None if release is None else _sha(release, f"{where}.release_sha256")
        if base is None and release is None:
            raise ManifestError(f"update manifest: {where}: {path!r} is absent both before and after")
        if path in written or any(lb.path == path for lb in out):
            raise ManifestError(f"update manifest: {path!r} appears twice")
        out.append(LeftBehind(path, base, release))
    return tuple(out)


def _dependencies(data: dict[str, Any]) -> Dependencies | None:
    raw = data.get("dependencies")
    if raw is None:
        return None
    where = "dependencies"
    if not isinstance(raw, dict):
        raise ManifestError(f"update manifest: {where} is not an object")
    requirements = _req(raw, "requirements", str, where)
    python = _req(raw, "python", str, where)
    if re.fullmatch(r"3\.[0-9]{1,2}", python) is None:
        raise ManifestError(f"update manifest: {where}.python {python!r} is not a major.minor version")
    arch = _req(raw, "architecture", str, where)
    if re.fullmatch(r"[a-z0-9]+", arch) is None:
        raise ManifestError(f"update manifest: {where}.architecture {arch!r} is not a Debian architecture")
    wheels: list[WheelEntry] = []
    for i, w in enumerate(_req(raw, "wheels", list, where)):
        wwhere = f"{where}.wheels[{i}]"
        if not isinstance(w, dict):
            raise ManifestError(f"update manifest: {wwhere} is not an object")
        name = _req(w, "file", str, wwhere)
        if WHEEL_NAME.fullmatch(name) is None or ".." in name:
            raise ManifestError(f"update manifest: {wwhere}.file {name!r} is not a wheel file name")
        if any(x.file == name for x in wheels):
            raise ManifestError(f"update manifest: wheel {name!r} appears twice")
        size = _req(w, "size", int, wwhere)
        if size < 0:
            raise ManifestError(f"update manifest: {wwhere}.size must be a non-negative integer")
        wheels.append(WheelEntry(name, _sha(w.get("sha256"), f"{wwhere}.sha256"), size))
    requirements_file = _path(raw.get("requirements_file", "requirements.txt"), f"{where}.requirements_file")
    return Dependencies(requirements, tuple(wheels), python, arch, requirements_file)


def _package(data: dict[str, Any]) -> str:
    package: str = _req(data, "package", str, "manifest")
    if not is_package_name(package):
        raise ManifestError(f"update manifest: package {package!r} is not a valid Debian package name")
    return package


def _version(value: str, where: str) -> str:
    if not versions.is_valid(value):
        raise ManifestError(f"update manifest: {where} {value!r} is not a valid Debian version")
    return value


def _section(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    section = cfg.get(name, {})
    if not isinstance(section, dict):
        raise ManifestError(f"update manifest: config.{name} is not an object")
    return section


def _check_app(app: dict[str, Any]) -> None:
    """Who and where: the account root hands files to, the tree it writes, the unit it runs."""
    name, root, service = app.get("name"), app.get("root"), app.get("service")
    if not isinstance(name, str) or not is_package_name(name):
        raise ManifestError(f"update manifest: config.app.name {name!r} is not a valid app name")
    if not isinstance(root, str) or (problem := app_root_problem(root)) is not None:
        why = "is not a path" if not isinstance(root, str) else problem
        raise ManifestError(f"update manifest: config.app.root {root!r} {why}")
    for key in ("user", "group"):
        value = app.get(key, "root")
        if not isinstance(value, str) or not is_account_name(value):
            raise ManifestError(f"update manifest: config.app.{key} {value!r} is not a valid account name")
    if not isinstance(service, str) or not is_unit_name(service):
        raise ManifestError(f"update manifest: config.app.service {service!r} is not a systemd service name")


def check_config(cfg: dict[str, Any]) -> None:
    """Raise :class:`ManifestError` unless ``cfg`` holds app settings the runtime may act on as root
    (a manifest's ``config``, or what an adoption recorded)."""
    _check_config(cfg)


def _check_config(cfg: dict[str, Any]) -> None:
    """The app settings the runtime acts on as root: paths it writes, how long it waits."""
    _check_app(_section(cfg, "app"))
    unit_file = _section(cfg, "app").get("unit_file")
    if unit_file is not None:
        _path(unit_file, "config.app.unit_file")
    socket_file = _section(cfg, "app").get("socket_file")
    if socket_file is not None:
        _path(socket_file, "config.app.socket_file")
        if unit_file is None:
            raise ManifestError("update manifest: config.app.socket_file is set without config.app.unit_file")
    writable = _section(cfg, "app").get("writable", [])
    if not isinstance(writable, list):
        raise ManifestError("update manifest: config.app.writable is not a list of paths")
    for i, entry in enumerate(writable):
        _path(entry, f"config.app.writable[{i}]")
    deps = _section(cfg, "dependencies")
    if "venv" in deps:
        _path(deps["venv"], "config.dependencies.venv")
    entries = _section(cfg, "files").get("config", [])
    if not isinstance(entries, list):
        raise ManifestError("update manifest: config.files.config is not a list of paths")
    for i, entry in enumerate(entries):
        _path(entry, f"config.files.config[{i}]")
    health = _section(cfg, "health")
    if "timeout" in health:
        timeout = health["timeout"]
        # json.loads accepts NaN and Infinity: a health wait that never ends, or never starts
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not health_timeout_ok(timeout)
        ):
            raise ManifestError(
                f"update manifest: config.health.timeout {timeout!r} must be a number of seconds "
                f"above 0 and at most {MAX_HEALTH_TIMEOUT}"
            )


def loads(text: str | bytes) -> Manifest:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"update manifest is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError("update manifest is not a JSON object")
    fmt = data.get("format")
    if fmt != FORMAT:
        raise ManifestError(
            f"update manifest format {fmt!r} is not supported (this nesop-deb reads format {FORMAT})",
            hint="upgrade nesop-deb on this machine to a version that knows it",
        )
    source = _req(data, "source", dict, "manifest")
    files = tuple(_file(f, i) for i, f in enumerate(_req(data, "files", list, "manifest")))
    links = {f.path: f.link_target for f in files if f.link_target is not None}
    for path, target in links.items():
        if not link_chain_stays_inside(path, target, links.get):
            raise ManifestError(
                f"update manifest: symlink {path} -> {target} leaves the app root through other links"
            )
    seen: set[str] = set()
    for f in files:
        for p in (f.path, f.renamed_from):
            if p is not None and p in seen:
                raise ManifestError(f"update manifest: {p!r} appears twice")
            if p is not None:
                seen.add(p)
    bases = _req(data, "bases", list, "manifest")
    if not all(isinstance(b, str) for b in bases):
        raise ManifestError("update manifest: bases must be version strings")
    config = _req(data, "config", dict, "manifest")
    _check_config(config)
    dependencies = _dependencies(data)
    venv = _section(config, "dependencies").get("venv")
    if dependencies is not None and venv is None:
        raise ManifestError("update manifest: dependencies without config.dependencies.venv")
    if venv is not None:
        # the link root switches, one name in the app root: never a path the payload writes
        if "/" in venv or venv in ("backups", "logs"):
            raise ManifestError(f"update manifest: config.dependencies.venv {venv!r} is not one plain name")
        clash = next((f.path for f in files if f.path == venv or f.path.startswith(venv + "/")), None)
        if clash is not None:
            raise ManifestError(f"update manifest: {clash!r} is inside the virtualenv link {venv!r}")
    return Manifest(
        package=_package(data),
        version=_version(_req(data, "version", str, "manifest"), "version"),
        bases=tuple(_version(b, "bases entry") for b in bases),
        full=bool(_req(data, "full", bool, "manifest")),
        source_commit=_req(source, "commit", str, "source"),
        since_commit=source.get("since_commit"),
        since_ref=source.get("since_ref"),
        builder_version=_req(data, "builder_version", str, "manifest"),
        created=int(_req(source, "created", int, "source")),
        config=config,
        files=files,
        migrations=tuple(_migration(m, i) for i, m in enumerate(_req(data, "migrations", list, "manifest"))),
        config_files=tuple(_path(p, "config_files") for p in data.get("config_files", [])),
        left_behind=_left_behind(data, files),
        dependencies=dependencies,
    )
