"""`nesop-deb publish`: the aptly and gpg commands in their order, and the refusals, through a
fake of the one subprocess seam (real .deb files, written here as ar archives)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nesop_deb import proc, publish
from nesop_deb.errors import ExitCode, NesopError, RefusedError, UsageError
from nesop_deb.signing import _crc24

FPR = "0051661949F9950A8580CC060DCEC3DEB6783681"
OTHER = "1111111111111111111111111111111111111111"


def _ar_member(name: str, data: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) % 2 else b"")


def _tar_gz(files: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_deb(path: Path, name: str, version: str, arch: str = "all", body: bytes = b"") -> Path:
    control = f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: A <a@example.com>\n"
    control += "Description: test\n"
    path.write_bytes(
        b"!<arch>\n"
        + _ar_member("debian-binary", b"2.0\n")
        + _ar_member("control.tar.gz", _tar_gz({"./control": control.encode()}))
        + _ar_member("data.tar.gz", _tar_gz({"./usr/share/doc/x": body}))
    )
    return path


def _armoured_key() -> str:
    data = b"\x99\x00\x01\x04"  # a public key packet, as far as the armour reader looks
    crc = base64.b64encode(_crc24(data).to_bytes(3, "big")).decode()
    body = base64.b64encode(data).decode()
    return f"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n{body}\n={crc}\n-----END PGP PUBLIC KEY BLOCK-----\n"


KEY = _armoured_key()


def _show(sha: str, suites: list[str]) -> str:
    refs = "".join(f"  local repo [nesop-{s}]\n" for s in suites)
    return f"Package: demo\nVersion: 1.0.5\nSHA256: {sha}\nDescription: x\n\nReferences to package:\n{refs}\n"


@dataclass
class FakeTools:
    """aptly, gpg and gpgv as the seam sees them; aptly's publish writes into DIR like the real one."""

    repo: Path
    keys: dict[str, str] = field(default_factory=lambda: {"repo@example.com": FPR, FPR: FPR})
    installed: bool = True
    shows: dict[str, str] = field(default_factory=dict)  # aptly query → `package show` output
    repos: set[str] = field(default_factory=set)
    published: set[str] = field(default_factory=set)
    publish_error: str = ""
    calls: list[list[str]] = field(default_factory=list)

    def __call__(
        self,
        argv: list[str],
        cwd: Path | None,
        env: Mapping[str, str] | None,
        stdin: bytes | None,
        timeout: float | None,
    ) -> proc.Result:
        self.calls.append(argv)
        if argv[0] == "aptly":
            if not self.installed:
                raise FileNotFoundError(argv[0])
            return self._aptly(argv, [a for a in argv[1:] if not a.startswith("-config=")])
        if argv[0] == "gpg":
            return self._gpg(argv)
        assert argv[0] == "gpgv", argv
        return proc.Result(argv, 0, f"[GNUPG:] GOODSIG {FPR[-16:]} nesop test repo\n".encode(), b"")

    def _gpg(self, argv: list[str]) -> proc.Result:
        if "--export" in argv:
            return proc.Result(argv, 0, KEY.encode(), b"")
        fpr = self.keys.get(argv[-1])
        if fpr is None:
            return proc.Result(argv, 2, b"", b"gpg: error reading key: No secret key\n")
        listing = f"sec:u:255:22:{fpr[-16:]}:1:::u:::scSC:::+::ed25519:::0:\nfpr:::::::::{fpr}:\n"
        return proc.Result(argv, 0, listing.encode(), b"")

    def _aptly(self, argv: list[str], args: list[str]) -> proc.Result:
        def ok(out: str = "") -> proc.Result:
            return proc.Result(argv, 0, out.encode(), b"")

        match args:
            case ["version"]:
                return ok("aptly version: 1.5.0\n")
            case ["package", "show", "-with-references", query]:
                return ok(self.shows.get(query, ""))
            case ["publish", "list", "-raw"]:
                return ok("".join(f"{publish.ENDPOINT} {s}\n" for s in sorted(self.published)))
            case ["repo", "show", name]:
                return ok() if name in self.repos else proc.Result(argv, 1, b"", b"ERROR: not found\n")
            case ["repo", "create", *_, name]:
                self.repos.add(name)
                return ok()
            case ["repo", "add", "-remove-files", _, incoming]:
                for deb in Path(incoming).iterdir():
                    deb.unlink()
                return ok()
            case ["publish", "repo" | "update", "-batch", *rest]:
                suite = (
                    rest[-2] if args[1] == "update" else next(a[14:] for a in rest if a.startswith("-distr"))
                )
                return self._publish(argv, suite)
            case ["repo", "remove", _, _] | ["db", "cleanup"]:
                return ok()
        raise AssertionError(f"unexpected aptly call {args}")

    def _publish(self, argv: list[str], suite: str) -> proc.Result:
        dists = self.repo / "dists" / suite
        dists.mkdir(parents=True, exist_ok=True)
        (self.repo / "pool/main/d/demo").mkdir(parents=True, exist_ok=True)
        (self.repo / "pool/main/d/demo/demo_new.deb").write_bytes(b"deb")
        if self.publish_error:
            (dists / "Release.tmp").write_text("partial")
            return proc.Result(argv, 1, b"Signing file 'Release' with gpg\n", self.publish_error.encode())
        (dists / "InRelease").write_text("signed")
        self.published.add(suite)
        return proc.Result(argv, 0, b"", b"")

    def aptly_calls(self) -> list[list[str]]:
        return [[a for a in c[1:] if not a.startswith("-config=")] for c in self.calls if c[0] == "aptly"]


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTools:
    fake = FakeTools(tmp_path / "repo")
    monkeypatch.setattr(proc, "executor", fake)
    return fake


@pytest.fixture
def os_release(tmp_path: Path) -> Path:
    path = tmp_path / "os-release"
    path.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n')
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_first_publish_creates_adds_publishes_and_checks_the_signature(
    tools: FakeTools, tmp_path: Path, os_release: Path
) -> None:
    deb = make_deb(tmp_path / "demo.deb", "demo", "1.0.5")
    before = deb.read_bytes()
    outcome = publish.publish(tools.repo, [deb], sign="repo@example.com", os_release=os_release)
    query = "demo (= 1.0.5) {all}"
    incoming = tools.repo / ".aptly/incoming/bookworm"
    assert tools.aptly_calls() == [
        ["version"],
        ["package", "show", "-with-references", query],
        ["publish", "list", "-raw"],
        ["repo", "show", "nesop-bookworm"],
        ["repo", "create", "-distribution=bookworm", "-component=main", "-comment=nesop-deb bookworm",
         "nesop-bookworm"],
        ["repo", "add", "-remove-files", "nesop-bookworm", str(incoming)],
        ["publish", "repo", "-batch", f"-gpg-key={FPR}", "-origin=nesop-deb", "-label=nesop-deb",
         "-distribution=bookworm", "-component=main", "nesop-bookworm", "filesystem:repo:."],
    ]  # fmt: skip
    assert all(c[1] == f"-config={tools.repo}/.aptly/aptly.conf" for c in tools.calls[1:] if c[0] == "aptly")
    assert tools.calls[-1][0] == "gpgv" and tools.calls[-1][-1] == str(
        tools.repo / "dists/bookworm/InRelease"
    )
    config = json.loads((tools.repo / ".aptly/aptly.conf").read_text())
    assert config["rootDir"] == f"{tools.repo}/.aptly"
    assert config["architectures"] == ["amd64", "arm64", "all"]
    assert config["FileSystemPublishEndpoints"] == {
        "repo": {"rootDir": str(tools.repo), "linkMethod": "hardlink"}
    }
    state = json.loads((tools.repo / ".aptly/nesop-publish.json").read_text())
    assert state == {"format": 1, "key": FPR, "suites": ["bookworm"]}
    assert (tools.repo / "nesop-deb-archive-keyring.asc").read_text() == KEY
    assert deb.read_bytes() == before and not incoming.exists()
    lines = outcome.lines()
    assert lines[0] == "added demo 1.0.5 (all) to bookworm"
    assert lines[-1] == f"deb [signed-by=/etc/apt/keyrings/nesop-deb.asc] file://{tools.repo}/ bookworm main"


def test_a_later_publish_updates_with_the_recorded_key_into_every_suite(
    tools: FakeTools, tmp_path: Path, os_release: Path
) -> None:
    first = make_deb(tmp_path / "a.deb", "demo", "1.0.4")
    publish.publish(tools.repo, [first], sign=FPR, suites=["bookworm", "trixie"], os_release=os_release)
    tools.calls.clear()
    outcome = publish.publish(
        tools.repo, [make_deb(tmp_path / "b.deb", "demo", "1.0.5")], os_release=os_release
    )
    publishes = [c for c in tools.aptly_calls() if c[0] == "publish" and c[1] != "list"]
    assert publishes == [
        ["publish", "update", "-batch", f"-gpg-key={FPR}", suite, "filesystem:repo:."]
        for suite in ("bookworm", "trixie")
    ]
    assert ["repo", "create"] not in [c[:2] for c in tools.aptly_calls()]
    assert outcome.lines()[0] == "added demo 1.0.5 (all) to bookworm, trixie"
    assert outcome.url == f"file://{tools.repo}/"


def test_aptly_missing_is_a_usage_error_and_nothing_is_created(tools: FakeTools, tmp_path: Path) -> None:
    tools.installed = False
    with pytest.raises(UsageError) as err:
        publish.publish(tools.repo, [make_deb(tmp_path / "a.deb", "demo", "1.0.5")], sign=FPR)
    assert err.value.message == "aptly is not installed" and err.value.hint == "apt-get install aptly"
    assert not tools.repo.exists()


def test_no_key_is_refused_with_how_to_make_one(tools: FakeTools, tmp_path: Path, os_release: Path) -> None:
    with pytest.raises(RefusedError) as err:
        publish.publish(tools.repo, [make_deb(tmp_path / "a.deb", "demo", "1.0.5")], os_release=os_release)
    assert err.value.exit_code == ExitCode.REFUSED
    assert "no signing key" in err.value.message and "gpg --quick-gen-key" in (err.value.hint or "")
    assert not tools.repo.exists()


def test_an_unknown_key_is_refused_before_any_aptly_change(tools: FakeTools, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--sign nobody: no such secret key"):
        publish.publish(tools.repo, [make_deb(tmp_path / "a.deb", "demo", "1.0.5")], sign="nobody")
    assert not tools.repo.exists()


def test_another_key_than_the_recorded_one_is_refused(
    tools: FakeTools, tmp_path: Path, os_release: Path
) -> None:
    deb = make_deb(tmp_path / "a.deb", "demo", "1.0.5")
    publish.publish(tools.repo, [deb], sign=FPR, os_release=os_release)
    tools.keys["other"] = OTHER
    before = _tree(tools.repo)
    tools.calls.clear()
    with pytest.raises(RefusedError, match=f"signed with {FPR}, not {OTHER}"):
        publish.publish(tools.repo, [make_deb(tmp_path / "b.deb", "demo", "1.0.6")], sign="other")
    assert _tree(tools.repo) == before
    assert tools.aptly_calls() == [["version"]]


def test_a_recorded_key_missing_from_the_keyring_is_refused(
    tools: FakeTools, tmp_path: Path, os_release: Path
) -> None:
    publish.publish(
        tools.repo, [make_deb(tmp_path / "a.deb", "demo", "1.0.4")], sign=FPR, os_release=os_release
    )
    tools.keys.clear()
    with pytest.raises(RefusedError, match=r"signing key .* is not in the gpg keyring"):
        publish.publish(tools.repo, [make_deb(tmp_path / "b.deb", "demo", "1.0.5")], os_release=os_release)


def test_other_content_under_a_published_version_is_refused_before_any_change(
    tools: FakeTools, tmp_path: Path, os_release: Path
) -> None:
    publish.publish(
        tools.repo, [make_deb(tmp_path / "a.deb", "demo", "1.0.4")], sign=FPR, os_release=os_release
    )
    tools.shows["demo (= 1.0.5) {all}"] = _show("ab" * 32, ["bookworm"])
    before = _tree(tools.repo)
    tools.calls.clear()
    deb = make_deb(tmp_path / "b.deb", "demo", "1.0.5", body=b"other")
    with pytest.raises(RefusedError) as err:
        publish.publish(tools.repo, [deb], os_release=os_release)
    assert err.value.message == f"{deb}: demo 1.0.5 (all) is already published with other content"
    assert "build a new version" in (err.value.hint or "")
    assert [c[:2] for c in tools.aptly_calls()] == [["version"], ["package", "show"]]
    assert _tree(tools.repo) == before


def test_the_same_file_again_changes_nothing(tools: FakeTools, tmp_path: Path, os_release: Path) -> None:
    deb = make_deb(tmp_path / "a.deb", "demo", "1.0.5")
    publish.publish(tools.repo, [deb], sign=FPR, os_release=os_release)
    sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    tools.shows["demo (= 1.0.5) {all}"] = _show(sha, ["bookworm"])
    tools.calls.clear()
    outcome = publish.publish(tools.repo, [deb], os_release=os_release)
    assert not [c for c in tools.aptly_calls() if c[:2] in (["repo", "add"], ["publish", "update"])]
    assert outcome.lines()[0] == "already there: demo 1.0.5 (all) in bookworm"
    assert outcome.lines()[-1].startswith("deb [signed-by=")


def test_a_failed_publish_takes_back_what_it_added(
    tools: FakeTools, tmp_path: Path, os_release: Path
) -> None:
    publish.publish(
        tools.repo, [make_deb(tmp_path / "a.deb", "demo", "1.0.4")], sign=FPR, os_release=os_release
    )
    (tools.repo / "pool/main/d/demo/demo_new.deb").unlink()
    before = _tree(tools.repo)
    tools.publish_error = (
        "gpg: signing failed: No secret key\nERROR: unable to publish: unable to detached sign file\n"
    )
    tools.calls.clear()
    with pytest.raises(NesopError) as err:
        publish.publish(tools.repo, [make_deb(tmp_path / "b.deb", "demo", "1.0.5")], os_release=os_release)
    assert err.value.exit_code == ExitCode.FAILED
    assert err.value.message == (
        "publishing bookworm failed, nothing of it changed: ERROR: unable to publish: unable to detached sign"
        " file (gpg: signing failed: No secret key)"
    )
    assert tools.aptly_calls()[-2:] == [
        ["repo", "remove", "nesop-bookworm", "demo (= 1.0.5) {all}"],
        ["db", "cleanup"],
    ]
    assert _tree(tools.repo) == before  # Release.tmp and the new pool file are gone, the state unchanged


def test_a_package_for_one_architecture_goes_to_the_release_its_version_names(
    tools: FakeTools, tmp_path: Path, os_release: Path
) -> None:
    deb = make_deb(tmp_path / "t.deb", "nesop-deb", "0.1.0+deb13u1", "amd64")
    outcome = publish.publish(tools.repo, [deb], sign=FPR, os_release=os_release)
    assert outcome.lines()[0] == "added nesop-deb 0.1.0+deb13u1 (amd64) to trixie"
    with pytest.raises(UsageError, match="built for trixie, not for --suite bookworm"):
        publish.publish(tools.repo, [deb], suites=["bookworm"], os_release=os_release)


def test_a_package_for_one_architecture_without_a_release_needs_one_suite(
    tools: FakeTools, tmp_path: Path, os_release: Path
) -> None:
    deb = make_deb(tmp_path / "t.deb", "nesop-deb", "0.1.0", "amd64")
    for suites in ([], ["bookworm", "trixie"]):
        with pytest.raises(UsageError, match="belongs to one Debian release") as err:
            publish.publish(tools.repo, [deb], sign=FPR, suites=suites, os_release=os_release)
        assert "exactly one --suite" in (err.value.hint or "")
    assert not tools.repo.exists()
    outcome = publish.publish(tools.repo, [deb], sign=FPR, suites=["bookworm"], os_release=os_release)
    assert outcome.lines()[0] == "added nesop-deb 0.1.0 (amd64) to bookworm"


def _pkg(version: str, arch: str = "all") -> publish.Package:
    return publish.Package(Path(f"/p/{version}.deb"), "demo", version, arch, "0" * 64)


def test_the_suites_of_a_package_for_every_architecture() -> None:
    pkg = _pkg("1.0.5")
    assert publish.plan([pkg], ["trixie", "bookworm", "trixie"], ["bookworm"], "bookworm") == {
        "trixie": [pkg],
        "bookworm": [pkg],
    }
    assert publish.plan([pkg], [], ["bookworm", "trixie"], "bookworm") == {"bookworm": [pkg], "trixie": [pkg]}
    assert publish.plan([pkg], [], [], "trixie") == {"trixie": [pkg]}
    with pytest.raises(UsageError, match="cannot tell which Debian release"):
        publish.plan([pkg], [], [], None)


def test_the_host_release_comes_from_os_release(tmp_path: Path, os_release: Path) -> None:
    assert publish.host_suite(os_release) == "bookworm"
    assert publish.host_suite(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"suites": ["Bookworm"]}, "--suite 'Bookworm': not a Debian release name"),
        ({"url": "http://a b/"}, "--url 'http://a b/': not a URL"),
    ],
)
def test_bad_options_are_refused(
    tools: FakeTools, tmp_path: Path, option: dict[str, object], message: str
) -> None:
    deb = make_deb(tmp_path / "a.deb", "demo", "1.0.5")
    with pytest.raises(UsageError, match=re.escape(message)):
        publish.publish(tools.repo, [deb], sign=FPR, **option)  # type: ignore[arg-type]
    assert not tools.repo.exists()


def test_two_files_of_one_version_with_other_content_are_refused(tools: FakeTools, tmp_path: Path) -> None:
    a = make_deb(tmp_path / "a.deb", "demo", "1.0.5")
    b = make_deb(tmp_path / "b.deb", "demo", "1.0.5", body=b"other")
    with pytest.raises(UsageError, match=re.escape("both demo 1.0.5 (all) with different content")):
        publish.publish(tools.repo, [a, b], sign=FPR)


def test_a_directory_that_is_not_a_repository_is_refused(tools: FakeTools, tmp_path: Path) -> None:
    tools.repo.mkdir()
    (tools.repo / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty and not a nesop-deb repository"):
        publish.publish(tools.repo, [make_deb(tmp_path / "a.deb", "demo", "1.0.5")], sign=FPR)
    assert _tree(tools.repo) == {"notes.txt": b"mine"}


def test_a_file_that_is_not_a_package_is_refused(tools: FakeTools, tmp_path: Path) -> None:
    junk = tmp_path / "junk.deb"
    junk.write_text("not a package")
    with pytest.raises(UsageError, match=re.escape("junk.deb: not a Debian package")):
        publish.publish(tools.repo, [junk], sign=FPR)


def test_a_repository_others_can_change_is_refused(tmp_path: Path) -> None:
    # a link or a directory someone else writes to could redirect what publish writes, or put
    # packages in front of the signing key
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(RefusedError, match="a symbolic link"):
        publish.check_repo_dir(link)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    with pytest.raises(RefusedError, match="others can write to it"):
        publish.check_repo_dir(shared)
    state = real / publish.STATE_DIR
    state.mkdir()
    state.chmod(0o777)
    with pytest.raises(RefusedError, match="others can write to it"):
        publish.check_repo_dir(real)
    state.chmod(0o755)
    publish.check_repo_dir(real)
