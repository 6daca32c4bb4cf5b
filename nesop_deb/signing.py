"""Signed updates: a detached OpenPGP signature ``X.deb.asc`` beside each package.

The builder signs with ``gpg`` (``nesop-deb build --sign KEYID``). A server requires signatures
as soon as it has a trusted keyring — ``/etc/nesop-deb/trusted.gpg`` or any
``/etc/nesop-deb/trusted.gpg.d/*.gpg``, like apt's own — and then ``gpgv`` (part of every Debian
system, apt depends on it) must accept the signature before anything is installed: in
``nesop-update apply`` and in the APT hook, so ``apt install ./X.deb`` is covered too.
"""

from __future__ import annotations

from pathlib import Path

from nesop_deb import proc
from nesop_deb.errors import CommandError, RefusedError, UsageError

SUFFIX = ".asc"


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


def sign(deb: Path, key_id: str) -> Path:
    """Write ``deb.asc``, a detached ASCII-armoured signature by ``key_id``."""
    sig = signature_path(deb)
    try:
        proc.run(
            [
                "gpg",
                "--batch",
                "--yes",
                "--local-user",
                key_id,
                "--armor",
                "--detach-sign",
                "--output",
                sig,
                deb,
            ],
            hint="is the key in your gpg keyring (gpg --list-secret-keys)? is gpg installed?",
        )
    except CommandError as exc:
        raise UsageError(f"--sign {key_id}: signing failed: {exc}") from None
    return sig


def trusted_keyrings(root: Path = Path("/")) -> list[Path]:
    etc = root / "etc/nesop-deb"
    rings = [etc / "trusted.gpg"] if (etc / "trusted.gpg").is_file() else []
    if (etc / "trusted.gpg.d").is_dir():
        rings += sorted(p for p in (etc / "trusted.gpg.d").glob("*.gpg") if p.is_file())
    return rings


def verify(deb: Path, root: Path = Path("/")) -> str | None:
    """Check ``deb`` against the trusted keyrings; None when the server requires no signature.

    Returns gpgv's description of the good signature; raises RefusedError otherwise.
    """
    rings = trusted_keyrings(root)
    if not rings:
        return None
    sig = signature_path(deb)
    if not sig.is_file():
        raise RefusedError(
            f"{deb.name} is not signed, and this server only accepts signed updates",
            hint=f"build it with `nesop-deb build --sign KEYID` and copy {sig.name} beside it",
        )
    keyring_args = [arg for ring in rings for arg in ("--keyring", str(ring))]
    result = proc.run(["gpgv", "--status-fd", "1", *keyring_args, sig, deb], check=False)
    good = [ln for ln in result.out.splitlines() if ln.startswith("[GNUPG:] GOODSIG ")]
    if result.returncode != 0 or not good:
        reason = next(
            (
                ln.split(" ", 2)[1]
                for ln in result.out.splitlines()
                if ln.startswith("[GNUPG:] ") and "SIG" in ln
            ),
            "no valid signature",
        )
        raise RefusedError(
            f"{deb.name}: the signature in {sig.name} is not valid for a trusted key ({reason})",
            hint="get the package from its builder again, or add their key to /etc/nesop-deb/trusted.gpg.d/",
        )
    return good[0].split(" ", 3)[3]
