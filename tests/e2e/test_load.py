"""Writes under load: a client writes through the app's API every few milliseconds during an
update, a failed update and a rollback; every write the app acknowledged is in the database."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import store
from .conftest import ContainerFactory
from .testbed import Container

WRITER = Path(__file__).with_name("loadwriter.py")


@contextmanager
def writing(box: Container, work: Path) -> Iterator[Path]:
    """Run the writer in the container's network for the duration of the block."""
    acks, stop = work / "acks.txt", work / "stop"
    stop.unlink(missing_ok=True)
    url = "http://127.0.0.1:5000/api/register"
    netns = ["nsenter", "--target", str(box.pid), "--net", "--"] if box.private_network else []
    writer = subprocess.Popen(
        [*netns, sys.executable, str(WRITER), url, str(acks), str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        yield acks
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=60)
    stats = json.loads(out)
    assert stats["sent"] > 50, f"the writer barely ran: {stats}"


def _acknowledged(acks: Path) -> set[str]:
    return set(acks.read_text().split()) if acks.exists() else set()


def test_no_acknowledged_write_is_lost(
    new_container: ContainerFactory, toolchain_deb: Path, example_repo: store.ExampleRepo, tmp_path: Path
) -> None:
    box = new_container()
    store.install_toolchain(box, toolchain_deb)
    store.deploy_by_hand(box, example_repo, "v1.0.4")
    repo = example_repo

    with writing(box, tmp_path) as acks:
        assert store.apt_install(box, repo.build("v1.0.5")).returncode == 0  # with a migration
        assert store.apt_install(box, repo.build("v1.0.6")).returncode == 0
        broken = repo.build("broken/migration", "--version", "1.0.7", "--since", "v1.0.6")
        assert store.apt_install(box, broken).returncode != 0  # fails, restored
        box.run(
            ["apt-get", "install", "-y", "-q", "--allow-downgrades", f"{store.PACKAGE}=1.0.5"], timeout=300
        )
        written_during = _acknowledged(acks)

    assert store.dpkg_status(box) == ("ii", "1.0.5")
    assert len(written_during) > 50
    missing = _acknowledged(acks) - store.customer_emails(box)
    assert missing == set(), f"{len(missing)} acknowledged writes were lost"
