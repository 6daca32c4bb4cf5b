"""A server with a trusted keyring accepts only updates signed by a trusted key, through
`apt install ./x.deb` (the APT hook checks before dpkg runs), `nesop-update apply`, and plain
`dpkg -i` (preinst checks the manifest's own signature before anything changes)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nesop_deb.signing import signature_path
from tests.integration.gpgkeys import Key, make_key

from . import store
from .conftest import ContainerFactory
from .doctor import doctor


def signed_build(
    example_repo: store.ExampleRepo, ref: str, key: Key, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """`nesop-deb build --sign` of ``ref`` (its manifest signed inside, and ``.deb.asc`` beside)."""
    monkeypatch.setenv("GNUPGHOME", str(key.home))
    return example_repo.build(ref, "--sign", key.fingerprint, name=f"{ref}-signed-{key.fingerprint[:16]}")


def test_only_updates_signed_by_a_trusted_key_are_applied(
    new_container: ContainerFactory,
    toolchain_deb: Path,
    example_repo: store.ExampleRepo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
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

        wrong = tmp_path / "wrong" / unsigned.name
        wrong.parent.mkdir()
        shutil.copyfile(unsigned, wrong)
        subprocess.run(
            ["gpg", "--batch", "--local-user", stranger.fingerprint, "--armor", "--detach-sign", "-o",
             str(signature_path(wrong)), str(wrong)],
            env={"GNUPGHOME": str(stranger.home), "PATH": "/usr/bin:/bin"}, check=True, capture_output=True,
        )  # fmt: skip
        box.copy_in(signature_path(wrong), f"/var/tmp/{signature_path(wrong).name}")
        result = store.apt_install(box, wrong)
        assert result.returncode != 0
        assert "is not valid for a trusted key" in result.stdout + result.stderr
        assert box.service_main_pid(store.UNIT) == pid

        good = signed_build(example_repo, "v1.0.1", trusted, monkeypatch)
        box.copy_in(good, f"/var/tmp/{good.name}")
        box.copy_in(signature_path(good), f"/var/tmp/{signature_path(good).name}")
        out = box.run(["nesop-update", "apply", f"/var/tmp/{good.name}"], timeout=300).stdout
        assert "good signature: Release Signer <release@example.com>" in out
        assert store.dpkg_status(box) == ("ii", "1.0.1")
        assert box.path(f"/var/lib/{store.PACKAGE}/repo/{good.name}.asc").is_file()
    finally:
        trusted.close()
        stranger.close()


def _claims_another_base(manifest: dict[str, Any]) -> None:
    manifest["bases"] = [*manifest["bases"], "0.9"]


def test_dpkg_i_of_an_update_its_trusted_key_did_not_sign_is_refused_by_preinst(
    new_container: ContainerFactory,
    toolchain_deb: Path,
    example_repo: store.ExampleRepo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`dpkg -i` skips apt's hook: preinst is the check it cannot skip. An unsigned update, and a
    signed one whose manifest was changed afterwards, change nothing. (Signed updates go in with
    apt and no .deb.asc, the manifest's own signature is enough for the hook, and back again.)"""
    trusted = make_key(tmp_path / "gpg-trusted", "Release Signer <release@example.com>")
    try:
        box = new_container()
        store.install_toolchain(box, toolchain_deb)
        store.deploy_by_hand(box, example_repo, "v1.0.0")
        trusted.export(box.path("/etc/nesop-deb/trusted.gpg.d/release.asc"), armour=True)
        built = signed_build(example_repo, "v1.0.1", trusted, monkeypatch)
        first = tmp_path / "alone" / built.name
        first.parent.mkdir()
        shutil.copyfile(built, first)  # without its .deb.asc
        store.apt_install(box, first, check=True)
        assert store.dpkg_status(box) == ("ii", "1.0.1")

        signed = signed_build(example_repo, "v1.0.2", trusted, monkeypatch)
        (tmp_path / "changed").mkdir()
        changed = doctor(signed, tmp_path / "changed" / signed.name, _claims_another_base)
        pid = box.service_main_pid(store.UNIT)
        before = store.snapshot(box)
        for deb, said in [
            (example_repo.build("v1.0.2"), "the update manifest embedded in preinst is not signed"),
            (
                changed,
                "the update manifest embedded in preinst: its signature is not valid for a trusted key",
            ),
        ]:
            box.copy_in(deb, "/var/tmp/update.deb")
            result = box.run(["dpkg", "-i", "/var/tmp/update.deb"], check=False, timeout=300)
            output = result.stdout + result.stderr
            assert result.returncode != 0, output
            assert f"{store.PACKAGE} preinst: error: {said}" in output, output
            assert store.dpkg_status(box) == ("ii", "1.0.1")
            assert box.service_main_pid(store.UNIT) == pid
            assert store.snapshot(box) == before

        # what was signed still goes forward, and back from the local repository
        store.apt_install(box, signed, check=True)
        assert store.dpkg_status(box) == ("ii", "1.0.2")
        box.run(
            ["apt-get", "-y", "-q", "install", "--allow-downgrades", f"{store.PACKAGE}=1.0.1"], timeout=300
        )
        assert store.dpkg_status(box) == ("ii", "1.0.1")
        store.assert_tree(box, example_repo, "v1.0.1")
    finally:
        trusted.close()
