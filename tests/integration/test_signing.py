"""Signed updates: `nesop-deb build --sign` and the server-side check against trusted keyrings."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nesop_deb import signing
from nesop_deb.errors import RefusedError

from .gpgkeys import Key, make_key

pytestmark = pytest.mark.integration


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[tuple[Key, Key]]:
    good = make_key(tmp_path / "gpg-good", "Release Signer <release@example.com>")
    other = make_key(tmp_path / "gpg-other", "Someone Else <else@example.com>")
    yield good, other
    good.close()
    other.close()


@pytest.fixture
def deb(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: demo\nVersion: 1.0\nArchitecture: all\nMaintainer: A <a@example.com>\nDescription: demo\n"
    )
    out = tmp_path / "demo_1.0_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", str(root), str(out)], check=True, capture_output=True
    )
    return out


def _sign(key: Key, deb: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GNUPGHOME", str(key.home))
    return signing.sign(deb, key.fingerprint)


def test_no_keyring_means_no_signature_required(deb: Path, tmp_path: Path) -> None:
    assert signing.verify(deb, tmp_path) is None


def test_good_signature_is_accepted(
    keys: tuple[Key, Key], deb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, _ = keys
    sig = _sign(good, deb, monkeypatch)
    assert sig.read_text().startswith("-----BEGIN PGP SIGNATURE-----")
    good.export(tmp_path / "etc/nesop-deb/trusted.gpg.d/release.gpg")
    assert "Release Signer" in (signing.verify(deb, tmp_path) or "")


def test_unsigned_package_is_refused_when_a_keyring_exists(
    keys: tuple[Key, Key], deb: Path, tmp_path: Path
) -> None:
    keys[0].export(tmp_path / "etc/nesop-deb/trusted.gpg")
    with pytest.raises(RefusedError, match="is not signed, and this server only accepts signed updates"):
        signing.verify(deb, tmp_path)


def test_signature_by_an_untrusted_key_is_refused(
    keys: tuple[Key, Key], deb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, other = keys
    _sign(other, deb, monkeypatch)
    good.export(tmp_path / "etc/nesop-deb/trusted.gpg.d/release.gpg")
    with pytest.raises(RefusedError, match="not valid for a trusted key"):
        signing.verify(deb, tmp_path)


def test_package_changed_after_signing_is_refused(
    keys: tuple[Key, Key], deb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, _ = keys
    _sign(good, deb, monkeypatch)
    good.export(tmp_path / "etc/nesop-deb/trusted.gpg")
    deb.write_bytes(deb.read_bytes() + b"\0")
    with pytest.raises(RefusedError, match="not valid for a trusted key"):
        signing.verify(deb, tmp_path)


def test_build_sign_writes_the_signature_beside_the_package(
    keys: tuple[Key, Key], tmp_path: Path, env: dict[str, str]
) -> None:
    from .helpers import MAKE_RELEASE_REPO

    good, other = keys
    repo = tmp_path / "store"
    subprocess.run([str(MAKE_RELEASE_REPO), str(repo)], check=True, capture_output=True, env=env)
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "v1.0.1"], check=True, env=env)
    out = tmp_path / "out"
    cli = [sys.executable, "-m", "nesop_deb.cli.build", "build", "-C", str(repo), "--output", str(out)]
    result = subprocess.run(
        [*cli, "--sign", good.fingerprint],
        capture_output=True,
        text=True,
        env={**env, "GNUPGHOME": str(good.home)},
    )
    assert result.returncode == 0, result.stderr
    deb = Path(result.stdout.strip().splitlines()[-1])
    assert signing.signature_path(deb).is_file()
    good.export(tmp_path / "etc/nesop-deb/trusted.gpg")
    assert signing.verify(deb, tmp_path) is not None

    elsewhere = tmp_path / "elsewhere"
    cli[cli.index(str(out))] = str(elsewhere)
    missing = subprocess.run(
        [*cli, "--sign", "nobody@example.com"], capture_output=True, text=True,
        env={**env, "GNUPGHOME": str(other.home)},
    )  # fmt: skip
    assert missing.returncode == 2
    assert missing.stderr == (
        "nesop-deb: error: --sign nobody@example.com: no such secret key in the gpg keyring; "
        "list yours with `gpg --list-secret-keys`, or create one with `gpg --quick-gen-key`\n"
    )
    assert not elsewhere.exists() or not any(elsewhere.iterdir()), "nothing is written without the key"


# --- the server's key files ------------------------------------------------------------------


def test_an_armoured_key_in_trusted_gpg_d_is_used(
    keys: tuple[Key, Key], deb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, _ = keys
    _sign(good, deb, monkeypatch)
    good.export(tmp_path / "etc/nesop-deb/trusted.gpg.d/release.asc", armour=True)
    assert "Release Signer" in (signing.verify(deb, tmp_path) or "")


def test_an_armoured_key_alone_makes_the_server_require_signatures(
    keys: tuple[Key, Key], deb: Path, tmp_path: Path
) -> None:
    keys[0].export(tmp_path / "etc/nesop-deb/trusted.gpg.d/release.asc", armour=True)
    with pytest.raises(RefusedError, match="is not signed, and this server only accepts signed updates"):
        signing.verify(deb, tmp_path)


def _flip_a_key_byte(text: str) -> str:
    lines = text.splitlines()
    i = next(
        n for n, line in enumerate(lines) if line and not line.startswith(("-", "=")) and ":" not in line
    )
    lines[i] = ("B" if lines[i][0] == "A" else "A") + lines[i][1:]
    return "\n".join(lines) + "\n"


BROKEN_KEYS: dict[str, tuple[Callable[[str, Key], str], str]] = {
    "damaged": (lambda armour, _k: _flip_a_key_byte(armour), "armour checksum does not match"),
    "truncated": (lambda armour, _k: armour[: len(armour) // 2], "no PGP PUBLIC KEY BLOCK"),
    "not-base64": (lambda armour, _k: armour.replace("\n\n", "\n\n!!!\n", 1), "not valid base64"),
    "a-signature": (lambda _a, k: k.sign_text("x"), "no PGP PUBLIC KEY BLOCK"),
    "a-secret-key": (lambda _a, k: k.export_secret_armour(), "holds a secret key"),
    "empty": (lambda _a, _k: "", "the file is empty"),
    "text": (lambda _a, _k: "release@example.com\n", "does not start with a public key packet"),
}


@pytest.mark.parametrize("kind", BROKEN_KEYS)
def test_a_key_file_that_cannot_be_read_is_refused_naming_it(
    kind: str, keys: tuple[Key, Key], deb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, _ = keys
    _sign(good, deb, monkeypatch)
    good.export(tmp_path / "etc/nesop-deb/trusted.gpg.d/release.gpg")  # a good key beside it
    armour = good.export(tmp_path / "armour.asc", armour=True).read_text()
    make, why = BROKEN_KEYS[kind]
    broken = tmp_path / "etc/nesop-deb/trusted.gpg.d/backup.asc"
    broken.write_text(make(armour, good))
    with pytest.raises(RefusedError) as raised:
        signing.verify(deb, tmp_path)
    message = str(raised.value)
    assert message.startswith(f"{broken}: not an OpenPGP public key ("), message
    assert why in message and "\n" not in message


def test_an_armoured_key_saved_as_gpg_is_read(
    keys: tuple[Key, Key], deb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, _ = keys
    _sign(good, deb, monkeypatch)
    good.export(tmp_path / "etc/nesop-deb/trusted.gpg", armour=True)  # `gpg --export --armor > x.gpg`
    assert "Release Signer" in (signing.verify(deb, tmp_path) or "")


def test_other_files_in_trusted_gpg_d_are_named_not_read(
    keys: tuple[Key, Key], deb: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ring_dir = tmp_path / "etc/nesop-deb/trusted.gpg.d"
    ring_dir.mkdir(parents=True)
    (ring_dir / "README").write_text("keys go here\n")
    keys[0].export(ring_dir / "release.key")  # a key, but under a name apt would not read either
    with caplog.at_level(logging.WARNING, logger="nesop_deb.signing"):
        assert signing.verify(deb, tmp_path) is None  # no trusted key: no signature required
    said = caplog.text
    assert f"ignoring {ring_dir / 'README'}" in said and f"ignoring {ring_dir / 'release.key'}" in said
    assert "only *.gpg and *.asc files" in said
