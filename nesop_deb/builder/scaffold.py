"""``nesop-deb init``: set an app repository up so that ``make deb`` builds its update packages.

:func:`survey` reads what the repository already holds (its systemd unit, its migrations, whether
``dist/`` is ignored); :func:`settings` turns that and the options into the values init writes;
:func:`write` writes ``nesop-deb.toml``, ``nesop-deb.mk``, a ``Makefile`` and the ``.gitignore``
line; :func:`report` is what init prints: what it wrote, what it found, and what is left to check.
Every check happens before the first write: a refusal leaves the repository as it was.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from nesop_deb import __version__, proc
from nesop_deb.builder import release
from nesop_deb.builder.git import GitRepo
from nesop_deb.builder.migrations import MIGRATION_NAME
from nesop_deb.config import CONFIG_NAME, is_account_name, is_package_name, is_unit_name, loads
from nesop_deb.errors import UsageError
from nesop_deb.paths import app_root_problem, control_character, excluded
from nesop_deb.render import render

MAKE_SNIPPET = "nesop-deb.mk"
REQUIREMENTS = "requirements.txt"  # an app that has one gets a [dependencies] section, commented out
OUTPUT = "dist"  # the make snippet's NESOP_OUTPUT default: built packages, never committed
# [files] exclude as init writes it: what a repository holds that never goes to the server
DEFAULT_EXCLUDE = (
    "tests/**", "docs/**", "dist/**", "nesop-deb.toml", MAKE_SNIPPET, "Makefile", "debian/**", ".gitignore",
)  # fmt: skip
# Directories init never looks into for a unit file or migrations: git's own, built packages,
# virtualenvs and caches (a directory holding pyvenv.cfg is a virtualenv whatever its name).
SKIP_DIRS = frozenset({".git", OUTPUT, "venv", ".venv", "env", "virtualenv", ".tox", ".nox",
                       "node_modules", "__pycache__", "site-packages", ".mypy_cache", ".pytest_cache",
                       ".ruff_cache"})  # fmt: skip
# An account useradd accepts: the name rule of config plus its length limit
MAX_ACCOUNT_NAME = 32
NEXT_COMMANDS = ('git add -A && git commit -m "Package with nesop-deb"', "git tag v1.0.0", "make deb-full")
PLACEHOLDER_NAME, PLACEHOLDER_EMAIL = "Maintainer", "root@localhost"
_UNIT_USER = re.compile(r"^\s*User\s*=\s*(\S*)\s*$")


@dataclass(frozen=True)
class Found:
    """What the repository holds that nesop-deb.toml names (paths relative to the app directory)."""

    unit_files: tuple[str, ...] = ()
    migration_dirs: tuple[tuple[str, int], ...] = ()  # (directory, how many migrations it holds)
    unit_user: str | None = None  # the one unit file's User= ("root" without one); None if not read
    dist_ignored: bool = False
    first_tag: str = "v1.0.0"  # the release tag to give HEAD: above every release tag there is
    requirements: str | None = None  # the app's requirements.txt, if it has one beside the config

    @property
    def unit_file(self) -> str | None:
        return self.unit_files[0] if len(self.unit_files) == 1 else None

    @property
    def migrations_dir(self) -> str | None:
        return self.migration_dirs[0][0] if len(self.migration_dirs) == 1 else None


@dataclass(frozen=True)
class Setup:
    """The values init writes into nesop-deb.toml, and where they came from."""

    name: str
    root: str
    user: str
    maintainer: str
    maintainer_from: str  # "--maintainer", "git config", "DEBFULLNAME/DEBEMAIL" or "" (a placeholder)
    found: Found = field(default_factory=Found)

    @property
    def service(self) -> str:
        unit = self.found.unit_file
        return PurePosixPath(unit).name if unit is not None else f"{self.name}.service"


@dataclass(frozen=True)
class Written:
    """What :func:`write` did, for :func:`report`."""

    files: tuple[Path, ...]
    makefile_includes: bool  # the Makefile includes the snippet (init wrote it, or it did already)
    gitignore: Path | None = None  # the .gitignore /dist/ was added to


def open_repo(directory: Path) -> GitRepo:
    """The app's git work tree at ``directory``; a usage error if there is none."""
    if not directory.is_dir():
        raise UsageError(f"{directory}: no such directory", hint="pass the app repository with -C DIR")
    found = proc.run(["git", "-C", directory, "rev-parse", "--is-inside-work-tree"], check=False)
    if found.returncode != 0 or found.out.strip() != "true":
        raise UsageError(f"{directory}: not a git repository", hint="run `git init` and commit the app first")
    return GitRepo(directory)


def find(paths: Iterable[str]) -> Found:
    """The unit files and migration directories among ``paths``: files relative to the app
    directory, as ``git ls-files`` lists them. Files under :data:`SKIP_DIRS`, in a virtualenv, or
    that [files] exclude keeps off the server are left out: they never ship."""
    listed = [p for p in paths if control_character(p) is None]
    venvs = {str(PurePosixPath(p).parent) for p in listed if PurePosixPath(p).name == "pyvenv.cfg"}
    units: list[str] = []
    migrations: dict[str, int] = {}
    for path in listed:
        p = PurePosixPath(path)
        parents = [str(d) for d in p.parents if str(d) != "."]
        if SKIP_DIRS.intersection(p.parts[:-1]) or venvs.intersection(parents):
            continue
        if excluded(path, DEFAULT_EXCLUDE):
            continue
        if p.name.endswith(".service") and is_unit_name(p.name) and not p.name.endswith("@.service"):
            units.append(path)
        m = MIGRATION_NAME.match(p.name)
        if m is not None and m.group("ext") == "sql" and not m.group("rollback") and parents:
            migrations[parents[0]] = migrations.get(parents[0], 0) + 1
    requirements = REQUIREMENTS if REQUIREMENTS in listed else None
    return Found(tuple(sorted(units)), tuple(sorted(migrations.items())), requirements=requirements)


def unit_user(text: str) -> str:
    """The account a unit file runs its service as: its last ``User=``, else root."""
    users = [m.group(1) for m in map(_UNIT_USER.match, text.splitlines()) if m is not None]
    return users[-1] if users and users[-1] else "root"


def survey(repo: GitRepo) -> Found:
    """What the repository at ``repo`` holds: its files, tracked or not (ignored ones excepted,
    as `git add -A` would take them), and whether git ignores the packages init's make snippet
    writes into dist/."""
    out = repo.git("ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", ".").stdout
    paths = sorted({p.decode("utf-8", "surrogateescape") for p in out.split(b"\0") if p})
    found = find(p for p in paths if (repo.dir / p).is_file())
    user = None
    if found.unit_file is not None:
        user = unit_user((repo.dir / found.unit_file).read_text(encoding="utf-8", errors="replace"))
    ignored = repo.git_optional("check-ignore", "-q", f"{OUTPUT}/x.deb") is not None
    return Found(
        found.unit_files, found.migration_dirs, user, ignored, release.next_tag(repo), found.requirements
    )


def maintainer_of(
    given: str | None, repo_identity: tuple[str, str], env: Mapping[str, str]
) -> tuple[str, str]:
    """``(maintainer, where it came from)``: --maintainer, else the repository's git identity
    (``user.name``, ``user.email``), else DEBFULLNAME / DEBEMAIL; a placeholder ("") otherwise."""
    if given:
        return given, "--maintainer"
    git_name, git_email = repo_identity
    name = git_name or env.get("DEBFULLNAME", "")
    email = git_email or env.get("DEBEMAIL", "")
    if not (name and email):
        return f"{name or PLACEHOLDER_NAME} <{email or PLACEHOLDER_EMAIL}>", ""
    if git_name and git_email:
        return f"{name} <{email}>", "git config"
    if git_name or git_email:
        return f"{name} <{email}>", "git config and DEBFULLNAME/DEBEMAIL"
    return f"{name} <{email}>", "DEBFULLNAME/DEBEMAIL"


def git_identity(repo: GitRepo) -> tuple[str, str]:
    """``(user.name, user.email)`` as git sees them in the app repository (its own config counts,
    not that of the current directory); empty where unset."""
    return repo.git_optional("config", "user.name") or "", repo.git_optional("config", "user.email") or ""


def settings(
    repo: GitRepo,
    found: Found,
    *,
    name: str | None,
    root: str | None,
    user: str | None,
    maintainer: tuple[str, str],
) -> Setup:
    """The values init writes; a usage error naming the option when one cannot be used."""
    if name is None:
        app = repo.dir.name.lower().replace("_", "-")
        if not is_package_name(app):
            raise UsageError(
                f"{repo.dir}: the directory's name does not make a package name ({app!r})",
                hint="pass --name NAME (lower case letters, digits, '+', '-', '.')",
            )
    elif not is_package_name(name):
        raise UsageError(
            f"--name {name!r} is not a valid Debian package name",
            hint="use lower case letters, digits, '+', '-' and '.'",
        )
    else:
        app = name
    app_root = root if root is not None else f"/opt/{app}"
    problem = app_root_problem(app_root)
    if problem is not None:
        raise UsageError(f"--root {app_root!r} {problem}", hint=f"use a directory like /opt/{app}")
    account = user if user is not None else app
    if not is_account_name(account) or len(account) > MAX_ACCOUNT_NAME:
        option = "--user" if user is not None else f"the app name {app!r}"
        raise UsageError(
            f"{option} {account!r} is not a valid account name" if user is not None
            else f"{option} is not a valid account name, so it cannot be the app's account",
            hint="pass --user NAME (lower case letters, digits, '_' and '-', at most 32)",
        )  # fmt: skip
    text, source = maintainer
    return Setup(app, app_root, account, text, source, found)


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def render_config(setup: Setup) -> str:
    """nesop-deb.toml as init writes it; it is loaded again here: what init writes must be valid."""
    text = render(
        "nesop-deb.toml.j2",
        q=toml_string,
        builder_version=__version__,
        s=setup,
        found=setup.found,
        exclude=DEFAULT_EXCLUDE,
    )
    loads(text, CONFIG_NAME)
    return text


def render_make() -> str:
    return render("nesop-deb.mk.j2", builder_version=__version__, output=OUTPUT)


def write(directory: Path, setup: Setup) -> Written:
    """Write nesop-deb.toml, the make snippet, a Makefile if there is none, and ``/dist/`` into
    .gitignore if git does not ignore dist/ yet."""
    config = render_config(setup)
    snippet = render_make()
    target, mk, makefile = directory / CONFIG_NAME, directory / MAKE_SNIPPET, directory / "Makefile"
    target.write_text(config, encoding="utf-8")
    mk.write_text(snippet, encoding="utf-8")
    files = [target, mk]
    if not makefile.exists():
        makefile.write_text(f"include {MAKE_SNIPPET}\n", encoding="utf-8")
        files.append(makefile)
        includes = True
    else:
        includes = MAKE_SNIPPET in makefile.read_text(encoding="utf-8", errors="replace")
    gitignore = None
    if not setup.found.dist_ignored:
        gitignore = directory / ".gitignore"
        before = gitignore.read_text(encoding="utf-8", errors="replace") if gitignore.exists() else ""
        sep = "\n" if before and not before.endswith("\n") else ""
        with gitignore.open("a", encoding="utf-8") as f:
            f.write(f"{sep}/{OUTPUT}/\n")
    return Written(tuple(files), includes, gitignore)


def _names(paths: Iterable[object]) -> str:
    items = [str(p) for p in paths]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def report(directory: Path, setup: Setup, written: Written, *, here: Path) -> list[str]:
    """What init prints: what it wrote, what it found, the checklist, the next commands."""
    found = setup.found
    lines = [f"wrote {_names(written.files)}"]
    if written.gitignore is not None:
        lines.append(f"added /{OUTPUT}/ to {written.gitignore}: the built packages are not committed")
    lines.append("found:")
    if found.unit_file is not None:
        lines.append(f"  unit file   {found.unit_file}: [app] unit_file, service = {setup.service}")
    elif found.unit_files:
        lines.append(f"  unit files  {_names(found.unit_files)}: several, none set")
    else:
        lines.append("  unit file   none")
    if found.migrations_dir is not None:
        (where, count), = found.migration_dirs  # fmt: skip
        lines.append(f"  migrations  {count} in {where}/: [migrations] dir = {where}")
    elif found.migration_dirs:
        lines.append(
            f"  migrations  in {_names(d + '/' for d, _ in found.migration_dirs)}: several, none set"
        )
    else:
        lines.append("  migrations  none")
    if found.requirements is not None:
        lines.append(f"  requirements {found.requirements}: [dependencies], commented out")
    who = f"{setup.maintainer} ({setup.maintainer_from})" if setup.maintainer_from else "no identity"
    lines.append(f"  maintainer  {who}")
    lines.append(f"check in {directory / CONFIG_NAME}:")
    lines += [f"  - {item}" for item in checklist(setup, written)]
    elsewhere = directory.resolve() != here.resolve()
    lines.append(f"then, in {directory}:" if elsewhere else "then:")
    lines += [f"  {command.replace('v1.0.0', setup.found.first_tag)}" for command in NEXT_COMMANDS]
    return lines


def checklist(setup: Setup, written: Written) -> list[str]:
    """What is left to fill in or check before the first build."""
    found, name, root, user = setup.found, setup.name, setup.root, setup.user
    items = []
    if not written.makefile_includes:
        items.append(f"Makefile: add `include {MAKE_SNIPPET}` to it (make deb and make deb-full need it)")
    items.append(f'[app] root = "{root}": where the app lives on the server')
    if user == "root":
        items.append(
            "[app] user = \"root\": warning: the app's data directories and database would be root's;"
            f" give the app its own account (init's default: --user {name})"
        )
    else:
        items.append(
            f'[app] user = "{user}" (group "{user}"): owns the app\'s data; a first install (make deb-full)'
            f" creates the system account and group if missing (no login shell, home {root}), an update"
            " refuses a server without them"
        )
    if found.unit_user is not None and found.unit_user != user:
        items.append(
            f"{found.unit_file} runs the app as {found.unit_user} (User=), not as {user}: make them the same"
        )
    if found.unit_file is None:
        if found.unit_files:
            items.append(
                f"[app] unit_file: several unit files ({_names(found.unit_files)}): set unit_file and"
                " service to the app's"
            )
        else:
            items.append(
                f"[app] unit_file: no *.service file found: commit the app's systemd unit (e.g."
                f" deploy/{name}.service) and set unit_file, or the server must have {setup.service} already"
            )
    items.append(
        "[health] url: a page that answers 2xx when the app works; without it an update counts as"
        " healthy once the service is active"
    )
    if found.migrations_dir is not None:
        items.append(
            f"[migrations] database: the database the migrations in {found.migrations_dir}/ change (e.g."
            f" sqlite:///{root}/data/{name}.db); a build that ships migrations refuses without it"
        )
    elif found.migration_dirs:
        items.append(
            f"[migrations] dir: several directories hold migrations"
            f" ({_names(d for d, _ in found.migration_dirs)}): set the one the server runs, and database"
        )
    if found.requirements is not None:
        items.append(
            f"[dependencies]: to ship the packages of {found.requirements} (the server builds the app's"
            " virtualenv from them, offline), pin them with hashes (pip-compile --generate-hashes),"
            " uncomment the section and set python to the servers' python3 (3.11 on Debian 12, 3.13 on"
            " Debian 13)"
        )
    if not setup.maintainer_from:
        items.append(
            f'[package] maintainer = "{setup.maintainer}": no git identity found; set it (Name <email>)'
        )
    return items
