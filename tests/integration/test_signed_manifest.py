"""The manifest's own signature: what `nesop-deb build --sign` embeds and ships, what preinst and
postinst refuse on a server with trusted keys (so `dpkg -i` too), what the APT hook checks whatever
a package's Pre-Depends say, and `nesop-update apply` installing only the copy it checked.

Real gpg keys, real dpkg-deb; preinst runs under real dpkg (``--root``, chrootless) with the
runtime of this checkout where the shims expect it (a private mount namespace)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nesop_deb import debfile, signing
from nesop_deb.errors import RefusedError, UsageError
from nesop_deb.runtime import apthook, operations
from tests.e2e.doctor import doctor

from .conftest import Built
from .gpgkeys import Key, make_key
from .helpers import NESOP_UPDATE, build, control_members, data_members, run_tool

pytestmark = pytest.mark.integration

PACKAGE = "nesop-store-update"
SHARE = f"usr/share/{PACKAGE}"
SignedBuild = Callable[..., Path]


@pytest.fixture(scope="session")
def release_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Key]:
    key = make_key(tmp_path_factory.mktemp("gpg") / "release", "Release Signer <release@example.com>")
    yield key
    key.close()


@pytest.fixture(scope="session")
def stranger_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Key]:
    key = make_key(tmp_path_factory.mktemp("gpg") / "stranger", "Stranger <stranger@example.com>")
    yield key
    key.close()


@pytest.fixture(scope="session")
def signed(
    example_checkout: Callable[[str], Path],
    session_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    release_key: Key,
) -> SignedBuild:
    """`nesop-deb build --sign` of a release (once per session and option set)."""
    cache: dict[tuple[str, ...], Path] = {}

    def get(tag: str, *options: str) -> Path:
        if (tag, *options) not in cache:
            output = tmp_path_factory.mktemp("signed")
            env = {**session_env, "GNUPGHOME": str(release_key.home)}
            outcome = build(example_checkout(tag), output, env, "--sign", release_key.fingerprint, *options)
            assert outcome.returncode == 0, outcome.stderr
            cache[(tag, *options)] = Path(outcome.last_line)
        return cache[(tag, *options)]

    return get


def server(root: Path, key: Key | None, *, armour: bool = False) -> Path:
    """A server's root with ``key`` trusted (none: no keyring) and an empty dpkg database."""
    for sub in ("info", "updates", "triggers"):
        (root / "var/lib/dpkg" / sub).mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/status").touch()
    if key is not None:
        key.export(
            root / "etc/nesop-deb/trusted.gpg.d" / ("release.asc" if armour else "release.gpg"), armour=armour
        )
    return root


def alone(deb: Path, where: Path) -> Path:
    """A copy of ``deb`` without its ``.deb.asc``: only the manifest's signature is left."""
    where.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(deb, where / deb.name))


def repack(deb: Path, out: Path, edit: Callable[[Path], None]) -> Path:
    """Unpack ``deb``, let ``edit`` change the tree, pack it as ``out`` (no .asc beside it)."""
    work = out.parent / (out.name + ".d")
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-R", str(deb), str(work)], check=True)
    edit(work)
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", str(work), str(out)], check=True, capture_output=True
    )
    shutil.rmtree(work)
    return out


def set_field(name: str, value: str) -> Callable[[Path], None]:
    def edit(tree: Path) -> None:
        control = tree / "DEBIAN/control"
        text = re.sub(rf"^{name}: .*$", f"{name}: {value}", control.read_text(), flags=re.M)
        control.write_text(text)

    return edit


# --- the build ----------------------------------------------------------------------------------


def test_a_signed_build_signs_the_manifest_it_ships_and_embeds(
    signed: SignedBuild, release_key: Key, tmp_path: Path
) -> None:
    deb = signed("v1.0.1")
    assert signing.signature_path(deb).is_file(), "the whole file's signature is still written"
    members = data_members(deb)
    _, shipped = members[f"{SHARE}/update_manifest.json"]
    _, shipped_sig = members[f"{SHARE}/update_manifest.json.asc"]
    assert shipped is not None and shipped_sig is not None
    assert shipped_sig.startswith(b"-----BEGIN PGP SIGNATURE-----")
    _, preinst = control_members(deb)["preinst"]
    assert preinst is not None
    embedded = re.search(rb'^MANIFEST = "([^"]*)"$', preinst, re.M)
    embedded_sig = re.search(rb'^MANIFEST_SIG = "([^"]*)"$', preinst, re.M)
    assert embedded is not None and embedded_sig is not None
    assert zlib.decompress(base64.b64decode(embedded.group(1))) == shipped, (
        "preinst checks what postinst applies"
    )
    assert base64.b64decode(embedded_sig.group(1)) == shipped_sig
    # gpgv itself, not our code, says the signature is the release key's, over these bytes
    ring = release_key.export(tmp_path / "release.gpg")
    (tmp_path / "m.json").write_bytes(shipped)
    (tmp_path / "m.json.asc").write_bytes(shipped_sig)
    out = subprocess.run(
        ["gpgv", "--homedir", str(tmp_path), "--status-fd", "1", "--keyring", str(ring),
         str(tmp_path / "m.json.asc"), str(tmp_path / "m.json")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0 and "[GNUPG:] GOODSIG" in out.stdout, out.stdout + out.stderr


def test_a_signed_build_is_lintian_clean(signed: SignedBuild) -> None:
    result = subprocess.run(
        ["lintian", "--pedantic", "--fail-on", "error", str(signed("v1.0.3"))],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert [ln for ln in result.stdout.splitlines() if ln.startswith(("E:", "W:"))] == [], result.stdout


def test_an_unsigned_build_carries_no_signature(built: Callable[..., Built]) -> None:
    deb = built("v1.0.1").deb
    assert f"{SHARE}/update_manifest.json.asc" not in data_members(deb)
    _, preinst = control_members(deb)["preinst"]
    assert preinst is not None and b"MANIFEST_SIG" not in preinst


@pytest.mark.parametrize(
    ("tag", "options"),
    [("v1.0.0", ("--full",)), ("v1.0.1", ()), ("v1.0.2", ()), ("v1.0.3", ()), ("v1.0.4", ()),
     ("v1.0.5", ()), ("v1.0.6", ())],
)  # fmt: skip
def test_every_signed_release_passes_the_hook_on_its_manifest_alone(
    signed: SignedBuild,
    release_key: Key,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tag: str,
    options: tuple[str, ...],
) -> None:
    """What the builder writes is exactly what the hook recognises: no false refusals."""
    root = server(tmp_path / "root", release_key)
    monkeypatch.setenv("DPKG_ROOT", str(root))
    deb = alone(signed(tag, *options), tmp_path / "in")
    assert debfile.shape_problems(debfile.open_update(deb)) == []
    checked = apthook.check(deb, root)
    assert checked.signer is not None and "Release Signer" in checked.signer
    assert not checked.whole_file


# --- preinst: the check dpkg -i cannot skip ------------------------------------------------------


def fast_dpkg(root: Path, deb: Path) -> subprocess.CompletedProcess[str]:
    """``dpkg --unpack`` into ``root`` with this checkout's runtime mounted where the shims look
    for it, in a private mount namespace (the host's /opt is untouched). ``--unpack`` runs the
    same preinst as ``dpkg -i``; it stops before postinst, which would act on this host."""
    script = (
        "set -e; mount -t tmpfs tmpfs /opt; mkdir -p /opt/venvs/nesop-deb; "
        f"mount --bind {sys.prefix} /opt/venvs/nesop-deb; "
        f"exec dpkg --root={root} --force-script-chrootless --force-depends --log={root}/dpkg.log "
        f"--unpack {deb}"
    )
    env = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, env=env, check=False, timeout=120,
    )  # fmt: skip


@pytest.fixture
def dpkg_root(tmp_path: Path) -> Path:
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", str(tmp_path)],
        capture_output=True, check=False,
    )  # fmt: skip
    if probe.returncode != 0 or shutil.which("dpkg") is None:
        pytest.skip("needs dpkg and a private mount namespace (root)")
    return tmp_path / "root"


def _change_manifest(manifest: dict[str, object]) -> None:
    manifest["bases"] = ["0.9"]  # what an attacker would change: what it applies to, its hashes


PREINST_REFUSES: dict[str, tuple[Callable[[SignedBuild, Built, Key, Path], Path], str]] = {
    "unsigned": (lambda _s, unsigned, _k, _t: unsigned.deb,
                 "the update manifest embedded in preinst is not signed, and this server only accepts"),
    "manifest-changed-after-signing": (
        lambda s, _u, _k, tmp: _changed_after_signing(s("v1.0.0", "--full"), tmp),
        "the update manifest embedded in preinst: its signature is not valid for a trusted key (BADSIG)"),
    "signed-by-a-stranger": (
        lambda _s, unsigned, key, tmp: _signed_by(key, unsigned.deb, tmp),
        "its signature is not valid for a trusted key"),
}  # fmt: skip


def _changed_after_signing(deb: Path, tmp: Path) -> Path:
    (tmp / "changed").mkdir()
    return doctor(deb, tmp / "changed" / deb.name, _change_manifest)


def _signed_by(key: Key, deb: Path, tmp: Path) -> Path:
    """``deb`` with a manifest signature by ``key`` (embedded and shipped, as the builder does)."""

    def sign(tree: Path) -> None:
        manifest = tree / SHARE / "update_manifest.json"
        sig = key.sign(manifest)
        preinst = tree / "DEBIAN/preinst"
        line = f'MANIFEST_SIG = "{base64.b64encode(sig.read_bytes()).decode()}"'
        preinst.write_text(re.sub(r'^(MANIFEST = ".*")$', rf"\1\n{line}", preinst.read_text(), flags=re.M))

    return repack(deb, tmp / "stranger" / deb.name, sign)


@pytest.mark.parametrize("kind", PREINST_REFUSES)
def test_preinst_refuses_a_manifest_its_trusted_keys_do_not_sign(
    kind: str,
    dpkg_root: Path,
    signed: SignedBuild,
    built: Callable[..., Built],
    stranger_key: Key,
    release_key: Key,
    tmp_path: Path,
) -> None:
    make, said = PREINST_REFUSES[kind]
    deb = make(signed, built("v1.0.0", "--full"), stranger_key, tmp_path)
    root = server(dpkg_root, release_key)
    result = fast_dpkg(root, deb)
    assert result.returncode != 0
    refusal = [ln for ln in result.stderr.splitlines() if ln.startswith(f"{PACKAGE} preinst: error: ")]
    assert len(refusal) == 1 and said in refusal[0], result.stderr
    assert "pre-installation script subprocess returned error exit status 3" in result.stderr
    assert not (root / SHARE).exists(), "refused before dpkg unpacked anything"
    assert not (root / "opt/nesop-store").exists()


def test_preinst_accepts_a_signed_manifest_and_an_armoured_key(
    dpkg_root: Path, signed: SignedBuild, release_key: Key
) -> None:
    root = server(dpkg_root, release_key, armour=True)
    result = fast_dpkg(root, signed("v1.0.0", "--full"))
    assert result.returncode == 0, result.stderr
    assert (root / SHARE / "update_manifest.json.asc").is_file()


def test_preinst_refuses_when_a_trusted_key_file_is_broken(
    dpkg_root: Path, signed: SignedBuild, release_key: Key
) -> None:
    root = server(dpkg_root, release_key)
    broken = root / "etc/nesop-deb/trusted.gpg.d/new-release.asc"
    broken.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!\n-----END PGP PUBLIC KEY BLOCK-----\n")
    result = fast_dpkg(root, signed("v1.0.0", "--full"))
    assert result.returncode != 0
    assert f"{PACKAGE} preinst: error: {broken}: not an OpenPGP public key (" in result.stderr
    assert not (root / SHARE).exists()


def test_a_server_without_keys_still_takes_unsigned_updates(
    dpkg_root: Path, built: Callable[..., Built]
) -> None:
    root = server(dpkg_root, None)
    result = fast_dpkg(root, built("v1.0.0", "--full").deb)
    assert result.returncode == 0, result.stderr


# --- postinst: the manifest dpkg unpacked ---------------------------------------------------------


def test_postinst_refuses_an_unpacked_manifest_that_does_not_verify(
    signed: SignedBuild, release_key: Key, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = server(tmp_path / "root", release_key)
    subprocess.run(["dpkg-deb", "-x", str(signed("v1.0.0", "--full")), str(root)], check=True)
    monkeypatch.setenv("DPKG_ROOT", str(root))
    operations.check_installed_manifest(PACKAGE)  # as the package shipped it: fine
    manifest = root / SHARE / "update_manifest.json"
    data = json.loads(manifest.read_text())
    data["config"]["app"]["root"] = "/etc"
    manifest.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    result = subprocess.run(
        [sys.executable, "-I", "-m", "nesop_deb.hooks", "postinst", PACKAGE, "1.0.0", "configure"],
        capture_output=True, text=True, check=False, env={**os.environ, "DPKG_ROOT": str(root)},
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith(f"{PACKAGE} postinst: error: {manifest}: its signature is not valid")
    assert not (root / "opt/nesop-store").exists() and not (root / f"var/lib/{PACKAGE}").exists()
    (root / SHARE / "update_manifest.json.asc").unlink()
    with pytest.raises(RefusedError, match="is not signed, and this server only accepts signed updates"):
        operations.check_installed_manifest(PACKAGE)


# --- the APT hook -----------------------------------------------------------------------------------


def _evil_scripts(tree: Path) -> None:
    """Scripts of its own, running no runtime: what a hostile package brings."""
    for name in ("preinst", "postinst", "prerm", "postrm"):
        (tree / "DEBIAN" / name).write_text("#!/bin/sh\ntouch /tmp/owned\n")


def _no_manifest(tree: Path) -> None:
    _evil_scripts(tree)
    shutil.rmtree(tree / SHARE)
    (tree / "usr/share/doc" / PACKAGE / "notes").write_text("nothing to see\n")


EVASIONS: dict[str, list[Callable[[Path], None]]] = {
    "pre-depends-python3": [set_field("Pre-Depends", "python3")],
    "no-pre-depends": [set_field("Pre-Depends", "dpkg")],
    "own-scripts": [set_field("Pre-Depends", "python3"), _evil_scripts],
    "renamed": [set_field("Pre-Depends", "python3"), set_field("Package", "innocent"), _evil_scripts],
    "managed-name-only": [set_field("Pre-Depends", "python3"), _no_manifest],
}


@pytest.mark.parametrize("kind", EVASIONS)
def test_the_hook_checks_an_update_whatever_its_pre_depends_say(
    kind: str, built: Callable[..., Built], release_key: Key, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = server(tmp_path / "root", release_key)
    # this server manages the store: its manifest is installed
    (root / SHARE).mkdir(parents=True)
    _, installed = data_members(built("v1.0.0", "--full").deb)[f"{SHARE}/update_manifest.json"]
    (root / SHARE / "update_manifest.json").write_bytes(installed or b"")
    monkeypatch.setenv("DPKG_ROOT", str(root))

    def edit(tree: Path) -> None:
        for change in EVASIONS[kind]:
            change(tree)

    deb = repack(built("v1.0.1").deb, tmp_path / "in" / f"{PACKAGE}_1.0.1_all.deb", edit)
    assert apthook.is_update(deb, keyed=True)
    with pytest.raises((RefusedError, UsageError), match=r"is not signed|not a nesop-deb update package"):
        apthook.handle(deb, root)
    assert not (root / f"var/lib/{PACKAGE}/incoming").exists()


def test_the_hook_without_keys_still_hash_checks_an_update_that_hides_its_pre_depends(
    built: Callable[..., Built], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = server(tmp_path / "root", None)
    monkeypatch.setenv("DPKG_ROOT", str(root))

    def damage(tree: Path) -> None:
        set_field("Pre-Depends", "python3")(tree)
        with (tree / SHARE / "payload/server.py").open("a") as fh:
            fh.write("# a flipped bit\n")

    deb = repack(built("v1.0.1").deb, tmp_path / "in" / f"{PACKAGE}_1.0.1_all.deb", damage)
    with pytest.raises(RefusedError, match=r"server\.py: sha256 does not match the manifest \(damaged\)"):
        apthook.handle(deb, root)


def test_the_hook_accepts_a_signed_manifest_without_deb_asc_and_stages_it(
    signed: SignedBuild, release_key: Key, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = server(tmp_path / "root", release_key)
    monkeypatch.setenv("DPKG_ROOT", str(root))
    deb = alone(signed("v1.0.1"), tmp_path / "in")
    apthook.handle(deb, root)
    staged = root / f"var/lib/{PACKAGE}/incoming" / deb.name
    assert staged.read_bytes() == deb.read_bytes()
    assert not signing.signature_path(staged).exists()


def test_the_hook_refuses_what_preinst_would_even_with_a_good_deb_asc(
    built: Callable[..., Built], release_key: Key, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update signed as a whole but not its manifest (built before manifest signatures, or
    signed by hand): its preinst refuses it, so the hook does, before dpkg and before a
    downgrade's prerm has undone anything."""
    root = server(tmp_path / "root", release_key)
    monkeypatch.setenv("DPKG_ROOT", str(root))
    deb = alone(built("v1.0.1").deb, tmp_path / "in")
    release_key.sign(deb)
    with pytest.raises(RefusedError, match=f"the update manifest of {deb.name} is not signed"):
        apthook.handle(deb, root)
    assert not (root / f"var/lib/{PACKAGE}/incoming").exists()


def _setuid_payload(tree: Path) -> None:
    (tree / SHARE / "payload/server.py").chmod(0o4755)


def _extra_file(tree: Path) -> None:
    (tree / "etc/cron.d").mkdir(parents=True)
    (tree / "etc/cron.d/nesop").write_text("* * * * * root touch /tmp/owned\n")


def _config_script(tree: Path) -> None:
    (tree / "DEBIAN/config").write_text("#!/bin/sh\ntouch /tmp/owned\n")
    (tree / "DEBIAN/config").chmod(0o755)


def _other_postinst(tree: Path) -> None:
    postinst = tree / "DEBIAN/postinst"
    postinst.write_text(postinst.read_text().replace("def main() -> int:", "def main() -> int:\n    pass"))


SIGNED_MANIFEST_BUT: dict[str, tuple[Callable[[Path], None], str]] = {
    "another-postinst": (_other_postinst, "postinst: not the script nesop-deb writes"),
    "an-extra-file": (_extra_file, "etc: a member `nesop-deb build` does not write"),
    "a-config-script": (_config_script, "config: a control file `nesop-deb build` does not write"),
    "a-setuid-payload-file": (_setuid_payload, "payload/server.py: mode 4755 (setuid"),
}


@pytest.mark.parametrize("kind", SIGNED_MANIFEST_BUT)
def test_a_signed_manifest_vouches_for_nothing_else_in_the_package(
    kind: str, signed: SignedBuild, release_key: Key, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = server(tmp_path / "root", release_key)
    monkeypatch.setenv("DPKG_ROOT", str(root))
    edit, said = SIGNED_MANIFEST_BUT[kind]
    deb = repack(signed("v1.0.1"), tmp_path / "in" / f"{PACKAGE}_1.0.1_all.deb", edit)
    with pytest.raises(
        RefusedError, match="its manifest is signed, but it vouches only for the payload"
    ) as raised:
        apthook.handle(deb, root)
    assert said in str(raised.value)
    # the whole file's signature by a trusted key still vouches for all of it, as before
    release_key.sign(deb)
    apthook.handle(deb, root)
    assert signing.signature_path(root / f"var/lib/{PACKAGE}/incoming" / deb.name).is_file()


# --- nesop-update apply -----------------------------------------------------------------------------


def test_apply_installs_the_copy_it_checked_from_a_root_only_directory(
    built: Callable[..., Built], tmp_path: Path, env: dict[str, str]
) -> None:
    if signing.trusted_keyrings():
        pytest.skip("this machine requires signed updates")
    original = Path(shutil.copyfile(built("v1.0.1").deb, tmp_path / f"{PACKAGE}_1.0.1_all.deb"))
    checked = hashlib.sha256(original.read_bytes()).hexdigest()
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    record = tmp_path / "apt-get.record"
    # apt-get as a user racing it would see it: the file they own is swapped the moment the
    # check is done; apt must still get the bytes that were checked
    (fake / "apt-get").write_text(
        "#!/bin/sh\n"
        "for last; do :; done\n"
        f'printf "swapped" > "{original}"\n'
        f'{{ echo "$last"; stat -c "%a %u" "$(dirname "$last")"; sha256sum < "$last"; }} > "{record}"\n'
    )
    (fake / "apt-get").chmod(0o755)
    outcome = run_tool([NESOP_UPDATE, "apply", original], {**env, "PATH": f"{fake}:{env['PATH']}"})
    assert outcome.returncode == 0, outcome.stderr
    path, dir_mode, digest = record.read_text().splitlines()
    copy = Path(path)
    assert copy != original and copy.name == original.name
    assert copy.parent.parent == Path("/var/tmp") and copy.parent.name.startswith("nesop-update-apply-")
    assert dir_mode == f"700 {os.getuid()}"
    assert digest.split()[0] == checked
    assert not copy.parent.exists(), "the copy is removed once apt is done"
