"""A server with a trusted keyring accepts only updates signed by a trusted key, through
`apt install ./x.deb` (the APT hook checks before dpkg runs) and `nesop-update apply`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from nesop_deb.signing import signature_path
from tests.integration.gpgkeys import make_key

from . import store
from .conftest import ContainerFactory


def test_only_updates_signed_by_a_trusted_key_are_applied(
    new_container: ContainerFactory, toolchain_deb: Path, example_repo: store.ExampleRepo, tmp_path: Path
) -> None:
    trusted = make_key(tmp_path / "gpg-trusted", "Release Signer <release@example.com>")
    stranger = make_key(tmp_path / "gpg-stranger", "Stranger <stranger@example.com>")
    try:
        box = new_container()
        store.install_toolchain(box, toolchain_deb)
        store.deploy_by_hand(box, example_repo, "v1.0.0")
        trusted.export(box.path("/etc/nesop-deb/trusted.gpg.d/release.gpg"))
        unsigned = example_repo.build("v1.0.1")
        pid = box.service_main_pid(store.UNIT)

        result = store.apt_install(box, unsigned)
        assert result.returncode != 0
        assert "is not signed, and this server only accepts signed updates" in result.stdout + result.stderr
        assert store.dpkg_status(box)[0] == "not-installed"
        assert box.service_main_pid(store.UNIT) == pid

        def signed_by(key_home: Path, fingerprint: str, name: str) -> Path:
            deb = tmp_path / name / unsigned.name
            deb.parent.mkdir()
            shutil.copyfile(unsigned, deb)
            subprocess.run(
                ["gpg", "--batch", "--local-user", fingerprint, "--armor", "--detach-sign", "-o",
                 str(signature_path(deb)), str(deb)],
                env={"GNUPGHOME": str(key_home), "PATH": "/usr/bin:/bin"}, check=True, capture_output=True,
            )  # fmt: skip
            box.copy_in(signature_path(deb), f"/var/tmp/{signature_path(deb).name}")
            return deb

        wrong = signed_by(stranger.home, stranger.fingerprint, "wrong")
        result = store.apt_install(box, wrong)
        assert result.returncode != 0
        assert "is not valid for a trusted key" in result.stdout + result.stderr
        assert box.service_main_pid(store.UNIT) == pid

        good = signed_by(trusted.home, trusted.fingerprint, "good")
        box.copy_in(good, f"/var/tmp/{good.name}")
        out = box.run(["nesop-update", "apply", f"/var/tmp/{good.name}"], timeout=300).stdout
        assert "good signature: Release Signer <release@example.com>" in out
        assert store.dpkg_status(box) == ("ii", "1.0.1")
        assert box.path(f"/var/lib/{store.PACKAGE}/repo/{good.name}.asc").is_file()
    finally:
        trusted.close()
        stranger.close()
