"""Fixtures of the integration tier: a hermetic environment, synthetic repositories, the example store."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .helpers import MAKE_RELEASE_REPO, Outcome, Repo, build, config_at, hermetic_env

REQUIRED_TOOLS = ("git", "dpkg-deb", "lintian", "make")

SHOP_CONFIG = """\
[app]
name = "shop"
root = "/srv/shop"
user = "shop"
service = "shop.service"
writable = ["data"]

[package]
maintainer = "Shop Ops <ops@shop.example>"

[files]
exclude = ["tests/**", "docs/**", "nesop-deb.toml", "**/*.pyc"]
config = ["config.py"]

[migrations]
dir = "migrations"
database = "sqlite:////srv/shop/data/shop.db"
"""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if not missing or os.environ.get("CI") == "true":  # in CI a skipped tier would pass untested: fail
        return
    here = Path(__file__).resolve().parent
    reason = f"integration tests need {', '.join(missing)} (apt-get install git dpkg-dev lintian make)"
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The hermetic environment; also applied to this process, for in-process CLI runs."""
    home = tmp_path / "home"
    home.mkdir()
    environment = hermetic_env(home)
    for key in list(os.environ):
        if key not in environment:
            monkeypatch.delenv(key)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    return environment


@pytest.fixture
def make_repo(tmp_path: Path, env: dict[str, str]) -> Callable[..., Repo]:
    """A new repository; with ``config=True`` it holds the shop's nesop-deb.toml."""
    counter = iter(range(1000))

    def make(name: str | None = None, config: str | None = SHOP_CONFIG) -> Repo:
        repo = Repo.create(tmp_path / (name or f"repo{next(counter)}"), env)
        if config is not None:
            repo.write("nesop-deb.toml", config)
        return repo

    return make


@pytest.fixture(scope="session")
def session_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("home")
    return hermetic_env(home)


@pytest.fixture(scope="session")
def example_repo(tmp_path_factory: pytest.TempPathFactory, session_env: dict[str, str]) -> Repo:
    """The NESOP Store's release history (v1.0.0..v1.0.6 and the broken/* branches), made once."""
    if not MAKE_RELEASE_REPO.exists():
        pytest.fail(f"{MAKE_RELEASE_REPO} is missing", pytrace=False)
    dest = tmp_path_factory.mktemp("example") / "nesop-store"
    subprocess.run([MAKE_RELEASE_REPO, dest], env=session_env, check=True, capture_output=True)
    return Repo(dest, session_env)


@pytest.fixture(scope="session")
def example_checkout(example_repo: Repo, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A worktree of the example repository at a ref (one per ref, shared: do not modify it)."""
    made: dict[str, Path] = {}
    base = tmp_path_factory.mktemp("checkouts")

    def checkout(ref: str) -> Path:
        if ref not in made:
            path = base / ref.replace("/", "_")
            example_repo.git("worktree", "add", "--quiet", "--detach", str(path), ref)
            made[ref] = path
        return made[ref]

    return checkout


@dataclass(frozen=True)
class Built:
    tag: str
    app: Path
    output: Path
    outcome: Outcome
    package: str
    version: str
    config: dict[str, Any]

    @property
    def deb(self) -> Path:
        return self.output / f"{self.package}_{self.version}_all.deb"


@pytest.fixture(scope="session")
def built(
    example_repo: Repo,
    example_checkout: Callable[[str], Path],
    session_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., Built]:
    """Build a release once per session and per option set."""
    cache: dict[tuple[str, ...], Built] = {}

    def get(tag: str, *options: str) -> Built:
        key = (tag, *options)
        if key not in cache:
            app = example_checkout(tag)
            output = tmp_path_factory.mktemp("out")
            outcome = build(app, output, session_env, *options)
            assert outcome.returncode == 0, outcome.stderr
            cfg = config_at(example_repo, tag)
            package = cfg.get("package", {}).get("name", f"{cfg['app']['name']}-update")
            version = options[options.index("--version") + 1] if "--version" in options else tag[1:]
            written = Path(outcome.last_line).parent  # a --full package goes into output/full
            cache[key] = Built(tag, app, written, outcome, package, version, cfg)
        return cache[key]

    return get
