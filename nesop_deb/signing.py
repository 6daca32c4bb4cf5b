"""Signed updates: OpenPGP signatures over a package's manifest and over the whole ``.deb``.

The builder signs with ``gpg`` (``nesop-deb build --sign KEYID``) twice: the manifest (embedded
in preinst as ``MANIFEST_SIG`` and shipped as ``update_manifest.json.asc``; the manifest binds
every payload file and migration by sha256) and the whole file (``X.deb.asc`` beside it).

A server requires signatures as soon as it has a trusted keyring — ``/etc/nesop-deb/trusted.gpg``
or any ``/etc/nesop-deb/trusted.gpg.d/*.gpg`` or ``*.asc``, like apt's own — and then ``gpgv``
(part of every Debian system, apt depends on it) must accept them: preinst refuses a manifest it
does not verify (``dpkg -i`` included), and the APT hook and ``nesop-update apply`` check before
dpkg runs. A key file that cannot be read is refused by name, never skipped: a server whose
operator meant to trust a key must not quietly trust none (or accept unsigned updates).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nesop_deb import proc
from nesop_deb.errors import CommandError, RefusedError, UsageError

log = logging.getLogger(__name__)

SUFFIX = ".asc"
KEYRING = "etc/nesop-deb/trusted.gpg"
KEYRING_DIR = "etc/nesop-deb/trusted.gpg.d"
KEY_SUFFIXES = (".gpg", ".asc")
# gpgv needs files: armoured keys dearmoured, a signature. They go in a fresh 0700 directory
# under a fixed, sticky, root-owned parent; never $TMPDIR, which `sudo -E` could hand over from
# a user who could then swap the directory (and its keyring) for their own.
PRIVATE_TMP = Path("/var/tmp")  # noqa: S108 - only ever a parent for mkdtemp (0700, unique)
_warned: set[Path] = set()  # each ignored file is named once per run, not once per check
_TRUST_HINT = "get the package from its builder again, or add their key to /etc/nesop-deb/trusted.gpg.d/"


def signature_path(deb: Path) -> Path:
    return deb.with_name(deb.name + SUFFIX)


def check_key(key_id: str) -> None:
    """Fail before building when the signing key is not in the developer's keyring."""
    result = proc.run(["gpg", "--batch", "--list-secret-keys", key_id], check=False)
    if result.returncode != 0:
        raise UsageError(
            f"--sign {key_id}: no such secret key in the gpg keyring",
            hint="list yours with `gpg --list-secret-keys`, or create one with `gpg --quick-gen-key`",
        )


def fingerprint(key_id: str) -> str:
    """The full fingerprint of the one secret key ``key_id`` names (a short id or a user id can
    name several, or a different key later: an apt repository records the fingerprint)."""
    check_key(key_id)
    listing = proc.run(["gpg", "--batch", "--with-colons", "--list-secret-keys", key_id]).out.splitlines()
    primaries = [
        (row[1], nxt.split(":")[9])
        for row, nxt in zip((line.split(":") for line in listing), listing[1:], strict=False)
        if row[0] == "sec" and nxt.startswith("fpr:")
    ]
    if len(primaries) != 1:
        raise UsageError(
            f"--sign {key_id}: names {len(primaries)} secret keys",
            hint="give the full fingerprint of one (gpg --list-secret-keys --with-colons)",
        )
    validity, fpr = primaries[0]
    if validity in ("e", "r"):
        raise UsageError(
            f"--sign {key_id}: the key {fpr} is {'expired' if validity == 'e' else 'revoked'}",
            hint="extend it (gpg --quick-set-expire) or create a new one (gpg --quick-gen-key)",
        )
    return fpr


def export_public(fpr: str) -> str:
    """The ASCII-armoured public key ``fpr`` (what a server puts in /etc/apt/keyrings/)."""
    armoured = proc.run(["gpg", "--batch", "--armor", "--export", fpr]).out
    if "-----BEGIN PGP PUBLIC KEY BLOCK-----" not in armoured:
        raise UsageError(f"{fpr}: gpg exported no public key", hint="check it with `gpg --list-keys`")
    return armoured


def verify_inline(signed: Path, key: str) -> str | None:
    """gpgv's signer of the clear-signed ``signed`` (an apt ``InRelease``) if the armoured public
    ``key`` made it, else ``None``. Nothing from any gpg home takes part."""
    binary = _binary_key(dearmour(key, signed), signed)
    with tempfile.TemporaryDirectory(prefix="nesop-deb-gpgv-", dir=PRIVATE_TMP) as tmp:
        ring = Path(tmp) / "key.gpg"
        ring.write_bytes(binary)
        result = proc.run(
            ["gpgv", "--homedir", tmp, "--status-fd", "1", "--keyring", ring, signed], check=False
        )
    good = [line for line in result.out.splitlines() if line.startswith("[GNUPG:] GOODSIG ")]
    return good[0].split(" ", 3)[3] if result.returncode == 0 and good else None


def _gpg_sign(key_id: str, output: str | Path, data: Path | None, stdin: bytes | None) -> bytes:
    argv: list[str | Path] = ["gpg", "--batch", "--yes", "--local-user", key_id, "--armor", "--detach-sign"]
    argv += ["--output", output] + ([data] if data is not None else [])
    try:
        result = proc.run(
            argv,
            stdin=stdin,
            hint="is the key in your gpg keyring (gpg --list-secret-keys)? is gpg installed?",
        )
    except CommandError as exc:
        raise UsageError(f"--sign {key_id}: signing failed: {exc}") from None
    return result.stdout


def sign(deb: Path, key_id: str) -> Path:
    """Write ``deb.asc``, a detached ASCII-armoured signature by ``key_id``."""
    sig = signature_path(deb)
    _gpg_sign(key_id, sig, deb, None)
    return sig


def sign_bytes(data: bytes, key_id: str) -> str:
    """A detached ASCII-armoured signature of ``data`` by ``key_id`` (the manifest's)."""
    armoured = _gpg_sign(key_id, "-", None, data).decode("ascii", "replace")
    if "-----BEGIN PGP SIGNATURE-----" not in armoured:
        raise UsageError(f"--sign {key_id}: gpg wrote no signature")
    return armoured


# --- the server's trusted keys -------------------------------------------------------------

_BLOCK = re.compile(
    r"-----BEGIN PGP PUBLIC KEY BLOCK-----[ \t]*\r?\n(.*?)-----END PGP PUBLIC KEY BLOCK-----", re.DOTALL
)
_PUBLIC_KEY_TAG = 6
_SECRET_KEY_TAG = 5


def _unreadable(path: Path, why: str) -> RefusedError:
    return RefusedError(
        f"{path}: not an OpenPGP public key ({why}); this server's trusted keys cannot be read",
        hint="export the key again (`gpg --export --armor KEYID > NAME.asc`) or remove the file; "
        "nothing was installed",
    )


def _crc24(data: bytes) -> int:
    """The armour checksum (RFC 4880 §6.1)."""
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def _block_bytes(body: str, path: Path) -> bytes:
    lines = [line.strip() for line in body.splitlines()]
    if "" in lines and all(":" in line for line in lines[: lines.index("")]):
        lines = lines[lines.index("") + 1 :]  # armour headers (Version:, Comment:) end at a blank line
    checksum = [line for line in lines if line.startswith("=")]
    data_lines = [line for line in lines if line and not line.startswith("=")]
    try:
        data = base64.b64decode("".join(data_lines), validate=True)
        crc = base64.b64decode(checksum[0][1:], validate=True) if checksum else None
    except (binascii.Error, ValueError):
        raise _unreadable(path, "its armour is not valid base64") from None
    if crc is not None and int.from_bytes(crc, "big") != _crc24(data):
        raise _unreadable(path, "its armour checksum does not match: the file is damaged")
    return data


def dearmour(text: str, path: Path) -> bytes:
    """The binary keys in an ASCII-armoured file (what ``gpg --dearmor`` writes)."""
    blocks = _BLOCK.findall(text)
    if not blocks and "-----BEGIN PGP PRIVATE KEY BLOCK-----" in text:
        raise _unreadable(path, "it holds a secret key; give this server only the public key")
    if not blocks:
        raise _unreadable(path, "no PGP PUBLIC KEY BLOCK in it")
    return b"".join(_block_bytes(body, path) for body in blocks)


def _packet_tag(data: bytes) -> int | None:
    if not data or not data[0] & 0x80:
        return None
    return data[0] & 0x3F if data[0] & 0x40 else (data[0] >> 2) & 0x0F


def _binary_key(data: bytes, path: Path) -> bytes:
    """Check that ``data`` holds public keys gpgv can read (OpenPGP packets, or a keybox)."""
    if not data:
        raise _unreadable(path, "the file is empty")
    if data[8:12] == b"KBXf":
        return data  # a gpg keybox (pubring.kbx copied over): gpgv reads those too
    tag = _packet_tag(data)
    if tag == _SECRET_KEY_TAG:
        raise _unreadable(path, "it holds a secret key; give this server only the public key")
    if tag != _PUBLIC_KEY_TAG:
        raise _unreadable(path, "it does not start with a public key packet")
    return data


def _key_files(root: Path) -> list[Path]:
    """The trusted key files, in apt's order; anything else in trusted.gpg.d is named, not read."""
    files = [root / KEYRING] if (root / KEYRING).is_file() else []
    directory = root / KEYRING_DIR
    if not directory.is_dir():
        return files
    for path in sorted(directory.iterdir()):
        if path.suffix in KEY_SUFFIXES and path.is_file():
            files.append(path)
        elif path not in _warned:
            _warned.add(path)
            # not refused: an editor's backup or a README must not stop every update; but said,
            # because a key saved under another name would otherwise look trusted and be ignored
            log.warning(
                "warning: ignoring %s: only *.gpg and *.asc files in %s are trusted keys", path, directory
            )
    return files


def trusted_keyrings(root: Path = Path("/")) -> list[Path]:
    """The server's trusted key files; empty when it requires no signatures."""
    return _key_files(root)


# gpgv's status words that say why a signature is not good, the most telling first
_REASONS = ("BADSIG", "EXPKEYSIG", "REVKEYSIG", "EXPSIG", "NO_PUBKEY", "ERRSIG", "NODATA")


@dataclass(frozen=True)
class Keyrings:
    """The trusted keys as gpgv reads them, in a private directory for one verification."""

    work: Path
    files: tuple[Path, ...]

    def check(self, signature: bytes, data: bytes | Path) -> tuple[str | None, str]:
        """(the signer or ``None`` if the signature is not good, and the signer or gpgv's reason)."""
        sig = self.work / "signature.asc"
        sig.write_bytes(signature)
        args = [arg for ring in self.files for arg in ("--keyring", str(ring))]
        signed = data if isinstance(data, Path) else "-"
        # --homedir: nothing from root's (or a sudo -E user's) ~/.gnupg takes part
        result = proc.run(
            ["gpgv", "--homedir", self.work, "--status-fd", "1", *args, sig, signed],
            stdin=None if isinstance(data, Path) else data,
            check=False,
        )
        status = result.out.splitlines()
        good = [line for line in status if line.startswith("[GNUPG:] GOODSIG ")]
        if result.returncode == 0 and good:
            signer = good[0].split(" ", 3)[3]
            return signer, signer
        said = {ln.split(" ")[1] for ln in status if ln.startswith("[GNUPG:] ") and " " in ln[9:]}
        return None, next((word for word in _REASONS if word in said), "no valid signature")


@contextmanager
def keyrings(root: Path = Path("/")) -> Iterator[Keyrings | None]:
    """The trusted keys, ready for gpgv; ``None`` when the server has none. A key file that
    cannot be read raises RefusedError naming it."""
    files = _key_files(root)
    if not files:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="nesop-deb-gpgv-", dir=PRIVATE_TMP) as tmp:
        work = Path(tmp)  # mkdtemp: 0700, ours
        rings: list[Path] = []
        for i, path in enumerate(files):
            try:
                raw = path.read_bytes()
            except OSError as exc:
                raise _unreadable(path, f"cannot read it: {exc.strerror or exc}") from None
            if raw.lstrip().startswith(b"-----BEGIN PGP"):
                # armoured (*.asc, or a *.gpg exported with --armor): gpgv reads only binary keys
                binary = _binary_key(dearmour(raw.decode("ascii", "replace"), path), path)
                ring = work / f"{i:03}-{path.stem}.gpg"
                ring.write_bytes(binary)
                ring.chmod(0o600)
                rings.append(ring)
            else:
                _binary_key(raw, path)
                rings.append(path)
        yield Keyrings(work, tuple(rings))


def verify(deb: Path, root: Path = Path("/")) -> str | None:
    """Check ``deb`` against its ``deb.asc``; None when the server requires no signature.

    Returns gpgv's description of the good signature; raises RefusedError otherwise.
    """
    with keyrings(root) as rings:
        if rings is None:
            return None
        sig = signature_path(deb)
        if not sig.is_file():
            raise RefusedError(
                f"{deb.name} is not signed, and this server only accepts signed updates",
                hint=f"build it with `nesop-deb build --sign KEYID` and copy {sig.name} beside it",
            )
        signer, detail = rings.check(sig.read_bytes(), deb)
    if signer is None:
        raise RefusedError(
            f"{deb.name}: the signature in {sig.name} is not valid for a trusted key ({detail})",
            hint=_TRUST_HINT,
        )
    return signer


def verify_manifest(raw: bytes, signature: str | None, whose: str, root: Path = Path("/")) -> str | None:
    """Check a manifest against its own signature; None when the server requires no signature.

    ``whose`` names the manifest in the one-line error ("the update manifest embedded in preinst").
    """
    with keyrings(root) as rings:
        if rings is None:
            return None
        if not signature:
            raise RefusedError(
                f"{whose} is not signed, and this server only accepts signed updates",
                hint="build the package with `nesop-deb build --sign KEYID`",
            )
        signer, detail = rings.check(signature.encode("ascii", "replace"), raw)
    if signer is None:
        raise RefusedError(
            f"{whose}: its signature is not valid for a trusted key ({detail}): it was changed after "
            "signing, or signed by a key this server does not trust",
            hint=_TRUST_HINT,
        )
    return signer
