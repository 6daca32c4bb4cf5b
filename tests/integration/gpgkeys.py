"""Throw-away OpenPGP keys for signing tests: a private GNUPGHOME per key, ed25519, no passphrase."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Key:
    home: Path
    fingerprint: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "GNUPGHOME": str(self.home)}

    def export(self, dest: Path, *, armour: bool = False) -> Path:
        """The public key as a binary keyring (what /etc/nesop-deb/trusted.gpg.d holds), or
        ASCII-armoured (a ``*.asc`` there)."""
        data = subprocess.run(
            ["gpg", "--batch", *(["--armor"] if armour else []), "--export", self.fingerprint],
            env=self.env,
            capture_output=True,
            check=True,
        ).stdout
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        return dest

    def sign(self, path: Path) -> Path:
        """``path.asc``: a detached armoured signature, as `nesop-deb build --sign` writes one."""
        sig = path.with_name(path.name + ".asc")
        subprocess.run(
            ["gpg", "--batch", "--yes", "--local-user", self.fingerprint, "--armor", "--detach-sign",
             "--output", str(sig), str(path)],
            env=self.env, capture_output=True, check=True,
        )  # fmt: skip
        return sig

    def sign_text(self, text: str) -> str:
        """An armoured detached signature of ``text`` (not a key: for broken-keyring tests)."""
        return subprocess.run(
            ["gpg", "--batch", "--local-user", self.fingerprint, "--armor", "--detach-sign"],
            env=self.env, input=text.encode(), capture_output=True, check=True,
        ).stdout.decode()  # fmt: skip

    def export_secret_armour(self) -> str:
        return subprocess.run(
            ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--armor",
             "--export-secret-keys", self.fingerprint],
            env=self.env, capture_output=True, check=True,
        ).stdout.decode()  # fmt: skip

    def close(self) -> None:
        subprocess.run(["gpgconf", "--kill", "all"], env=self.env, capture_output=True, check=False)


def make_key(home: Path, uid: str) -> Key:
    home.mkdir(parents=True, mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"],
        env=env,
        capture_output=True,
        check=True,
    )
    listing = subprocess.run(
        ["gpg", "--batch", "--with-colons", "--list-secret-keys"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    return Key(home, fpr)
