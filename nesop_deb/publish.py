"""``nesop-deb publish``: a signed apt repository of packages, kept with aptly, for a fleet.

DIR is what a static web server serves: ``dists/<suite>/``, ``pool/`` and the armoured public key
``nesop-deb-archive-keyring.asc``. aptly's state (its configuration, database and own pool, and
the signing key's fingerprint in ``nesop-publish.json``) lives in ``DIR/.aptly/``; it publishes
into DIR through a filesystem endpoint (``filesystem:repo:.``). aptly keeps every version, so a
server can install any of them, and go back to an older one.

One aptly local repository (``nesop-<suite>``) and distribution per Debian release: an update
for every architecture goes to each suite, a package for one architecture (compiled wheels, the
toolchain) to the one its version or ``--suite`` names. Everything is checked before anything
changes; a publish that fails (a signing key that went away) takes back what it added, so the
repository stays as apt clients last saw it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nesop_deb import debfile, proc, signing
from nesop_deb.errors import CommandError, NesopError, RefusedError, UsageError

log = logging.getLogger(__name__)

ENDPOINT = "filesystem:repo:."
STATE_DIR = ".aptly"
CONFIG = "aptly.conf"
STATE = "nesop-publish.json"
LOCK = "lock"
KEY_FILE = "nesop-deb-archive-keyring.asc"
SERVER_KEY = "/etc/apt/keyrings/nesop-deb.asc"  # where a server keeps it (the `signed-by` of the deb line)
COMPONENT = "main"
ARCHITECTURES = ("amd64", "arm64", "all")
RELEASES = {"12": "bookworm", "13": "trixie"}  # the +debNNuM of a version → its suite
ORIGIN = "nesop-deb"

_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+\Z")  # Debian policy 5.6.1
_VERSION = re.compile(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~-]*\Z")  # 5.6.12, without a hyphen-free check
_ARCH = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
_SUITE = re.compile(r"[a-z][a-z0-9-]*\Z")
_RELEASE_IN_VERSION = re.compile(r"\+deb([0-9]+)u[0-9]+")
_STATE_HINT = "restore it from a backup, or publish into a new directory"
_KEY_HINT = (
    "apt refuses unsigned repositories; pass --sign KEYID (create a key with "
    "`gpg --quick-gen-key 'Your Name <you@example.com>' ed25519 sign never`)"
)


@dataclass(frozen=True)
class Package:
    """One .deb to publish, as its control file names it."""

    path: Path
    name: str
    version: str
    arch: str
    sha256: str

    @property
    def query(self) -> str:
        """aptly's query for exactly this name, version and architecture."""
        return f"{self.name} (= {self.version}) {{{self.arch}}}"

    @property
    def label(self) -> str:
        return f"{self.name} {self.version} ({self.arch})"

    @property
    def file_name(self) -> str:
        return f"{self.name}_{self.version.partition(':')[2] or self.version}_{self.arch}.deb"


@dataclass(frozen=True)
class State:
    """``DIR/.aptly/nesop-publish.json``: the signing key and the suites published."""

    key: str | None = None
    suites: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps({"format": 1, "key": self.key, "suites": list(self.suites)}, indent=2) + "\n"


@dataclass(frozen=True)
class Outcome:
    """What a publish did, for the CLI to print (the last line a ``deb`` line)."""

    added: tuple[tuple[Package, tuple[str, ...]], ...]
    present: tuple[tuple[Package, tuple[str, ...]], ...]
    key_file: Path
    fingerprint: str
    suites: tuple[str, ...]
    url: str

    def lines(self) -> list[str]:
        out = [f"added {p.label} to {', '.join(s)}" for p, s in self.added]
        out += [f"already there: {p.label} in {', '.join(s)}" for p, s in self.present]
        out.append(f"key: {self.key_file}  (on each server: {SERVER_KEY}; fingerprint {self.fingerprint})")
        out += [f"deb [signed-by={SERVER_KEY}] {self.url} {suite} {COMPONENT}" for suite in self.suites]
        return out


# --- input: packages, suites, state -------------------------------------------------------


def read_package(path: Path) -> Package:
    """The name, version and architecture of a .deb; one that apt could not index is refused."""
    fields = debfile.control_fields(path)
    name, version, arch = (fields.get(f, "") for f in ("Package", "Version", "Architecture"))
    checks = (("Package", name, _NAME), ("Version", version, _VERSION), ("Architecture", arch, _ARCH))
    for field, value, pattern in checks:
        if not pattern.match(value):
            raise UsageError(
                f"{path}: its control field {field} is {value!r}, not one apt can index",
                hint="build it again with `nesop-deb build` or dpkg-deb",
            )
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return Package(path, name, version, arch, digest.hexdigest())


def unique(packages: Sequence[Package]) -> list[Package]:
    """The packages once each; two different files of one name, version and architecture refused."""
    seen: dict[str, Package] = {}
    for pkg in packages:
        other = seen.setdefault(pkg.query, pkg)
        if other.sha256 != pkg.sha256:
            raise UsageError(
                f"{other.path} and {pkg.path} are both {pkg.label} with different content",
                hint="publish one of them; a new build needs a new version",
            )
    return list(seen.values())


def host_suite(os_release: Path = Path("/etc/os-release")) -> str | None:
    """This machine's Debian release (``VERSION_CODENAME``), if it says."""
    try:
        text = os_release.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "VERSION_CODENAME":
            value = value.strip().strip("\"'")
            return value if _SUITE.match(value) else None
    return None


def check_suites(suites: Sequence[str]) -> None:
    for suite in suites:
        if not _SUITE.match(suite):
            raise UsageError(
                f"--suite {suite!r}: not a Debian release name",
                hint="give a codename such as bookworm (Debian 12) or trixie (Debian 13)",
            )


def plan(
    packages: Sequence[Package], given: Sequence[str], existing: Sequence[str], host: str | None
) -> dict[str, list[Package]]:
    """Suite → the packages that go there. ``Architecture: all`` goes to every ``--suite``, else
    every suite the repository has, else this machine's release. A package for one architecture
    belongs to one release's system: the suite its version names (``+deb12u1``), else the one
    ``--suite``."""
    every = list(dict.fromkeys(given)) or list(existing) or ([host] if host else [])
    targets: dict[str, list[Package]] = {}
    for pkg in packages:
        if pkg.arch == "all":
            if not every:
                raise UsageError(
                    f"{pkg.path}: cannot tell which Debian release to publish it for",
                    hint="pass --suite bookworm or --suite trixie",
                )
            suites = every
        else:
            suites = [_arch_suite(pkg, list(dict.fromkeys(given)))]
        for suite in suites:
            targets.setdefault(suite, []).append(pkg)
    return targets


def _arch_suite(pkg: Package, given: list[str]) -> str:
    match = _RELEASE_IN_VERSION.search(pkg.version)
    named = RELEASES.get(match.group(1)) if match else None
    if named is not None:
        if given and named not in given:
            raise UsageError(
                f"{pkg.path}: version {pkg.version} is built for {named}, not for --suite {', '.join(given)}",
                hint=f"publish it with --suite {named} (or without --suite)",
            )
        return named
    if len(given) == 1:
        return given[0]
    raise UsageError(
        f"{pkg.path}: a package for {pkg.arch} belongs to one Debian release, and "
        + ("its version names none" if not given else f"{len(given)} suites were given"),
        hint="publish it with exactly one --suite (bookworm or trixie), the release it was built on",
    )


def read_state(repo: Path) -> State:
    path = repo / STATE_DIR / STATE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return State()
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read it ({exc})", hint=_STATE_HINT) from None
    if not isinstance(raw, dict) or raw.get("format") != 1:
        raise UsageError(f"{path}: not a nesop-deb publish state", hint=_STATE_HINT)
    key, suites = raw.get("key"), raw.get("suites", [])
    if not (key is None or (isinstance(key, str) and re.fullmatch(r"[0-9A-F]{40,64}", key))) or not (
        isinstance(suites, list) and all(isinstance(s, str) and _SUITE.match(s) for s in suites)
    ):
        raise UsageError(f"{path}: its key or suites are not valid", hint=_STATE_HINT)
    return State(key, tuple(suites))


def _check_private(path: Path, what: str) -> None:
    """``path`` (when it exists) is a real directory that only this user can change: a link or a
    directory someone else writes to could send the files written there elsewhere, or put
    packages in front of the signing key."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise RefusedError(f"{what} {path}: a symbolic link", hint="give the directory itself")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise RefusedError(
            f"{what} {path}: others can write to it "
            f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})",
            hint=f"a repository must be writable only by whoever publishes: chown and chmod go-w {path}",
        )


def check_repo_dir(repo: Path) -> None:
    """DIR is new, empty, or a repository this command made: never someone's other directory."""
    _check_private(repo, "--repo")
    _check_private(repo / STATE_DIR, "--repo")
    if repo.exists() and not repo.is_dir():
        raise UsageError(f"--repo {repo}: not a directory", hint="give the repository's directory")
    if repo.is_dir() and not (repo / STATE_DIR).is_dir() and any(repo.iterdir()):
        raise UsageError(
            f"--repo {repo}: not empty and not a nesop-deb repository (no {STATE_DIR}/)",
            hint="give a new or empty directory, or the one an earlier `nesop-deb publish` wrote",
        )


def resolve_key(repo: Path, state: State, sign: str | None) -> str:
    """The fingerprint to sign with: --sign (the first time, or the same key again), else the one
    recorded. A repository's key never changes quietly: every server trusts that key only."""
    if sign is not None:
        fpr = signing.fingerprint(sign)
        if state.key is not None and state.key != fpr:
            raise RefusedError(
                f"--sign {sign}: {repo} is signed with {state.key}, not {fpr}",
                hint=f"publish with --sign {state.key} or without --sign; a new key would have to reach "
                f"every server's {SERVER_KEY} first",
            )
        return fpr
    if state.key is None:
        raise RefusedError(f"{repo}: no signing key for this repository", hint=_KEY_HINT)
    try:
        signing.check_key(state.key)
    except UsageError:
        raise RefusedError(
            f"{repo}: its signing key {state.key} (in {STATE_DIR}/{STATE}) is not in the gpg keyring",
            hint="import it (gpg --import), or set GNUPGHOME to the keyring that holds it",
        ) from None
    return state.key


# --- aptly --------------------------------------------------------------------------------


class Aptly:
    """aptly with DIR's configuration; stdin is /dev/null, so it never waits for a terminal."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.config = repo / STATE_DIR / CONFIG

    def __call__(self, *args: str | Path, check: bool = True) -> proc.Result:
        result = proc.run(["aptly", f"-config={self.config}", *args], check=False)
        if check and result.returncode != 0:  # aptly says why on stderr, gpg on either
            raise CommandError(result.argv, result.returncode, result.out + result.err)
        return result

    def config_text(self) -> str:
        config = {
            "rootDir": str(self.repo / STATE_DIR),
            "architectures": list(ARCHITECTURES),
            "gpgProvider": "gpg",
            "skipContentsPublishing": True,
            "skipBz2Publishing": True,
            "FileSystemPublishEndpoints": {"repo": {"rootDir": str(self.repo), "linkMethod": "hardlink"}},
        }
        return json.dumps(config, indent=2) + "\n"

    def published(self) -> set[str]:
        lines = self("publish", "list", "-raw").out.splitlines()
        return {line.split()[1] for line in lines if len(line.split()) == 2 and line.split()[0] == ENDPOINT}

    def ensure_repo(self, suite: str) -> None:
        if self("repo", "show", f"nesop-{suite}", check=False).returncode != 0:
            self("repo", "create", f"-distribution={suite}", f"-component={COMPONENT}",
                 f"-comment=nesop-deb {suite}", f"nesop-{suite}")  # fmt: skip

    def holders(self, pkg: Package) -> list[tuple[str, set[str]]]:
        """Every copy of ``pkg``'s name, version and architecture aptly has: (SHA256, suites)."""
        out = self("package", "show", "-with-references", pkg.query).out
        copies: list[tuple[str, set[str]]] = []
        for stanza in re.split(r"\n(?=Package: )", out):
            sha = re.search(r"^SHA256: *([0-9a-f]{64})$", stanza, re.MULTILINE)
            if sha is None:
                continue
            suites = set(re.findall(r"^ *local repo \[nesop-([a-z0-9-]+)\]", stanza, re.MULTILINE))
            copies.append((sha.group(1), suites))
        return copies


def aptly_version() -> str:
    try:
        return proc.run(["aptly", "version"]).out.strip()
    except CommandError as exc:
        if exc.returncode == 127:
            raise UsageError("aptly is not installed", hint="apt-get install aptly") from None
        raise


# --- the run ------------------------------------------------------------------------------


def _write(path: Path, text: str, mode: int = 0o644) -> bool:
    """Replace ``path`` by ``text`` (tmp, fsync, rename) unless it holds it already."""
    data = text.encode()
    if path.is_file() and path.read_bytes() == data:
        return False
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # O_EXCL: follows no link
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another nesop-deb publish into %s", path.parent.parent)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _files(repo: Path) -> set[Path]:
    """What a publish may write into DIR: dists/ and the pool (DIR's own files and .aptly/ aside)."""
    found: set[Path] = set()
    for top in (repo / "dists", repo / "pool"):
        if top.is_dir():
            found.add(top)
            for parent, dirs, names in os.walk(top):
                found.update(Path(parent) / n for n in [*dirs, *names])
    return found


def _undo(aptly: Aptly, suite: str, added: Sequence[Package], before: set[Path]) -> None:
    """Take back a failed add or publish: the packages leave the suite's repository, and what
    aptly left in DIR (``Release.tmp``, ``Packages.tmp``, pool files) goes; the served files are
    as they were. Carries on past errors: each is logged."""
    for pkg in added:
        result = aptly("repo", "remove", f"nesop-{suite}", pkg.query, check=False)
        if result.returncode != 0:
            log.error("could not remove %s from nesop-%s: %s", pkg.label, suite, result.err.strip())
    aptly("db", "cleanup", check=False)  # drop them from the database too, else they look published
    for path in sorted(_files(aptly.repo) - before, reverse=True):  # files before their dirs
        try:
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
        except OSError as exc:
            log.error("could not remove %s: %s", path, exc.strerror or exc)


def _last_error(exc: CommandError) -> str:
    """aptly's last ``ERROR:`` line, and gpg's reason when it was the signing."""
    lines = [ln.strip() for ln in exc.stderr.splitlines()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    gpg = [ln for ln in lines if ln.startswith("gpg: ") and ("failed" in ln or "skipped" in ln)]
    said = errors[-1] if errors else str(exc)
    return f"{said} ({gpg[-1]})" if gpg else said


def _add_and_publish(aptly: Aptly, suite: str, new: Sequence[Package], fpr: str, published: set[str]) -> None:
    before = _files(aptly.repo)
    added: list[Package] = []
    try:
        if new:
            incoming = aptly.repo / STATE_DIR / "incoming" / suite
            shutil.rmtree(incoming, ignore_errors=True)  # what an interrupted run left
            incoming.mkdir(parents=True)
            for pkg in new:  # a copy: aptly hardlinks what it adds, the caller's file must stay theirs
                shutil.copyfile(pkg.path, incoming / pkg.file_name)
            added = list(new)
            aptly("repo", "add", "-remove-files", f"nesop-{suite}", incoming)
            incoming.rmdir()
        if suite in published:
            aptly("publish", "update", "-batch", f"-gpg-key={fpr}", suite, ENDPOINT)
        else:
            first = [
                f"-origin={ORIGIN}",
                f"-label={ORIGIN}",
                f"-distribution={suite}",
                f"-component={COMPONENT}",
            ]
            aptly("publish", "repo", "-batch", f"-gpg-key={fpr}", *first, f"nesop-{suite}", ENDPOINT)
    except CommandError as exc:
        _undo(aptly, suite, added, before)
        raise NesopError(
            f"publishing {suite} failed, nothing of it changed: {_last_error(exc)}",
            hint=f"check the key with `gpg --list-secret-keys {fpr}` (expired? a passphrase and no agent?)"
            if "sign" in exc.stderr
            else "run again with --verbose to see aptly's commands",
        ) from None
    except BaseException:
        _undo(aptly, suite, added, before)
        raise


def publish(
    repo: Path,
    debs: Sequence[Path],
    *,
    sign: str | None = None,
    suites: Sequence[str] = (),
    url: str | None = None,
    os_release: Path = Path("/etc/os-release"),
) -> Outcome:
    """Add ``debs`` to the repository in ``repo`` and publish it signed; see the module's doc."""
    repo = repo.absolute()
    check_suites(suites)
    if url is not None and (not url or any(c.isspace() for c in url)):
        raise UsageError(f"--url {url!r}: not a URL", hint="give the address servers fetch DIR from")
    aptly_version()
    packages = unique([read_package(deb) for deb in debs])
    check_repo_dir(repo)
    host = host_suite(os_release)
    seen = read_state(repo)
    fpr = resolve_key(repo, seen, sign)
    plan(packages, suites, seen.suites, host)  # refuse bad input before anything exists

    repo.mkdir(mode=0o755, parents=True, exist_ok=True)
    (repo / STATE_DIR).mkdir(mode=0o755, exist_ok=True)
    check_repo_dir(repo)  # again: made now, or there before
    with _locked(repo / STATE_DIR / LOCK):
        state = read_state(repo)  # again, now that no other run can write it
        if state != seen:
            fpr = resolve_key(repo, state, sign)
        targets = plan(packages, suites, state.suites, host)
        return _publish_locked(repo, targets, state, fpr, url)


def _publish_locked(
    repo: Path, targets: Mapping[str, list[Package]], state: State, fpr: str, url: str | None
) -> Outcome:
    aptly = Aptly(repo)
    _write(aptly.config, aptly.config_text())
    # before any change: a name, version and architecture aptly has with other content is refused
    present: dict[Package, list[str]] = {}
    for pkg in dict.fromkeys(p for ps in targets.values() for p in ps):
        copies = aptly.holders(pkg)
        if any(sha != pkg.sha256 for sha, _ in copies):
            raise RefusedError(
                f"{pkg.path}: {pkg.label} is already published with other content",
                hint="build a new version; servers that installed the published one would never get this one",
            )
        present[pkg] = sorted({s for _, suites in copies for s in suites})
    key = signing.export_public(fpr)
    key_file = repo / KEY_FILE
    published = aptly.published()
    added: dict[Package, list[str]] = {}
    there: dict[Package, list[str]] = {}
    done: list[str] = []
    for suite, packages in targets.items():
        new = [p for p in packages if suite not in present[p]]
        for pkg in packages:
            (added if pkg in new else there).setdefault(pkg, []).append(suite)
        if not new and suite in published:
            continue
        aptly.ensure_repo(suite)
        try:
            _add_and_publish(aptly, suite, new, fpr, published)
        except NesopError as exc:
            if done:
                exc.message += f" ({', '.join(done)} published)"
            raise
        done.append(suite)
        # recorded at once: a later suite that fails leaves this one published and known
        _write(key_file, key)
        _write(repo / STATE_DIR / STATE, State(fpr, tuple(dict.fromkeys([*state.suites, *done]))).to_json())
    _write(key_file, key)
    for suite in done:
        in_release = repo / "dists" / suite / "InRelease"
        if signing.verify_inline(in_release, key) is None:
            raise NesopError(
                f"{in_release}: its signature does not verify with {key_file}",
                hint="check the key with `gpg --list-keys`, then publish again",
            )
    all_suites = tuple(dict.fromkeys([*state.suites, *sorted(targets)]))  # every target is published
    _write(repo / STATE_DIR / STATE, State(fpr, all_suites).to_json())
    order = [s for s in sorted(all_suites) if s not in targets] + sorted(targets)
    return Outcome(
        tuple((p, tuple(s)) for p, s in added.items()),
        tuple((p, tuple(s)) for p, s in there.items()),
        key_file,
        fpr,
        tuple(order),
        url if url is not None else f"file://{repo}/",
    )
