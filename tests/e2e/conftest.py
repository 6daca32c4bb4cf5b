"""Fixtures for end-to-end tests in booted Debian containers (13 by default; 12 where asked).

Policy: a machine that cannot run containers skips these tests with the
reason, except in CI (CI=true), where a silently skipped end-to-end suite
would pass without having tested anything, so there they fail.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, Protocol

import pytest

from . import reliability, store
from .fleet import FLEET_NEEDS, FLEET_PACKAGES, Fleet, missing_fleet_prerequisites
from .testbed import (
    BASE_PACKAGES,
    SUITES,
    Backend,
    Container,
    TestbedError,
    base_root_key,
    build_base_root,
    cache_dir_from_env,
    default_suite,
    host_suite,
    missing_prerequisites,
)

HERE = Path(__file__).resolve().parent

NEEDS = (
    "e2e: needs root and systemd-nspawn, mmdebstrap, nsenter "
    "(apt-get install systemd-container mmdebstrap util-linux)"
)


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@dataclasses.dataclass
class _Timings:
    base_root_seconds: float | None = None
    base_root_built: bool = False
    boots: list[float] = dataclasses.field(default_factory=list)
    backends: set[str] = dataclasses.field(default_factory=set)


_TIMINGS = _Timings()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end tests in a booted systemd-nspawn container (root)")
    config.addinivalue_line("markers", "fault(kind, step, ends_as=...): a cell of the fault matrix")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    reliability.record(item, outcome.get_result())  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reliability.finish()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the items of the whole session, not only this directory.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.e2e)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _TIMINGS.base_root_seconds is None:
        return
    how = "built" if _TIMINGS.base_root_built else "cached"
    line = f"e2e test bed: base root {how} in {_TIMINGS.base_root_seconds:.1f} s"
    if _TIMINGS.boots:
        line += (
            f"; {len(_TIMINGS.boots)} boots, mean {statistics.mean(_TIMINGS.boots):.2f} s, "
            f"max {max(_TIMINGS.boots):.2f} s; file system: {', '.join(sorted(_TIMINGS.backends))}"
        )
    terminalreporter.write_line(line)


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turned into an interrupt so pytest runs the fixtures' teardown (which
    # stops containers and unmounts) instead of dying with mounts left.
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def testbed_host() -> Iterator[None]:
    """This machine can run containers (else skip, or fail in CI)."""
    problems = missing_prerequisites()
    if problems:
        unavailable(f"{NEEDS}: {'; '.join(problems)}")
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        yield
    finally:
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def suite(request: pytest.FixtureRequest) -> str:
    """The Debian release a test runs on: the default one (NESOP_TESTBED_SUITE, else trixie),
    or each one a test asks for with ``@pytest.mark.parametrize("suite", [...], indirect=True)``."""
    return str(getattr(request, "param", None) or default_suite())


@pytest.fixture(scope="session")
def base_roots(testbed_host: None) -> Callable[[str], Path]:
    """The cached root of a Debian release (built on first use, about 30 s each)."""
    roots: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in roots:
            cache_dir = cache_dir_from_env()
            built = not (cache_dir / base_root_key(BASE_PACKAGES, name)).exists()
            _TIMINGS.base_root_built = _TIMINGS.base_root_built or built
            started = time.monotonic()
            try:
                roots[name] = build_base_root(cache_dir, BASE_PACKAGES, suite=name)
            except TestbedError as error:
                unavailable(f"e2e: could not build the Debian {SUITES[name]} root in {cache_dir}: {error}")
            _TIMINGS.base_root_seconds = (_TIMINGS.base_root_seconds or 0) + time.monotonic() - started
        return roots[name]

    return get


@pytest.fixture
def base_root(base_roots: Callable[[str], Path], suite: str) -> Path:
    """The cached root of the test's Debian release."""
    return base_roots(suite)


class ContainerFactory(Protocol):
    def __call__(self, *, boot: bool = True, backend: Backend | None = None) -> Container: ...


@pytest.fixture
def new_container(base_root: Path, tmp_path: Path) -> Iterator[ContainerFactory]:
    """Make containers (booted unless boot=False); all are stopped at teardown.

    For scenarios that need files in place before the first boot, or more
    than one machine.
    """
    made: list[Container] = []

    def make(*, boot: bool = True, backend: Backend | None = None) -> Container:
        box = Container(base_root, tmp_path / f"container-{len(made)}", backend=backend)
        made.append(box)
        if boot:
            try:
                box.boot()
            except TestbedError as error:
                # A fresh container that does not boot is this machine's
                # problem, not the code under test's.
                unavailable(f"e2e: systemd-nspawn could not boot a container: {error}")
            _record(box)
        return box

    try:
        yield make
    finally:
        errors: list[str] = []
        for box in made:
            try:
                box.stop()
            except Exception as error:  # keep stopping the others
                errors.append(f"{box.name}: {error}")
        if errors:
            raise TestbedError("could not stop containers:\n" + "\n".join(errors))


@pytest.fixture
def container(new_container: ContainerFactory) -> Container:
    """A freshly booted Debian container, stopped after the test."""
    return new_container()


@pytest.fixture
def server(new_container: ContainerFactory, toolchain_deb: Path) -> Container:
    """A booted container with the nesop-deb toolchain installed, and no app yet."""
    box = new_container()
    store.install_toolchain(box, toolchain_deb)
    return box


def _record(box: Container) -> None:
    if box.boot_seconds is not None:
        _TIMINGS.boots.append(box.boot_seconds)
    if box.backend is not None:
        _TIMINGS.backends.add(box.backend)


@pytest.fixture(scope="session")
def fleet_roots(testbed_host: None) -> Callable[[str], Path]:
    """The cached fleet root of a Debian release (`FLEET_PACKAGES`: with openssh-server), built on
    first use; skips (fails in CI) without ip, ssh, ssh-keygen or ansible-playbook."""
    problems = missing_fleet_prerequisites()
    if problems:
        unavailable(f"e2e fleet: needs {FLEET_NEEDS}: {'; '.join(problems)}")
    roots: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in roots:
            cache_dir = cache_dir_from_env()
            try:
                roots[name] = build_base_root(cache_dir, FLEET_PACKAGES, suite=name)
            except TestbedError as error:
                unavailable(
                    f"e2e: could not build the Debian {SUITES[name]} fleet root in {cache_dir}: {error}"
                )
        return roots[name]

    return get


@pytest.fixture(scope="session")
def fleet_root(fleet_roots: Callable[[str], Path]) -> Path:
    """The cached fleet root of the default Debian release."""
    return fleet_roots(default_suite())


class FleetFactory(Protocol):
    def __call__(self, size: int | None = None, *, suites: Sequence[str] | None = None) -> Fleet: ...


@pytest.fixture
def new_fleet(fleet_roots: Callable[[str], Path], tmp_path: Path) -> Iterator[FleetFactory]:
    """Make started fleets: `size` hosts (default 5) on the default release, or one host per entry
    of `suites` (e.g. ["trixie", "bookworm"]); all are stopped at teardown."""
    made: list[Fleet] = []

    def make(size: int | None = None, *, suites: Sequence[str] | None = None) -> Fleet:
        releases = list(suites) if suites is not None else [default_suite()] * (size or 5)
        fleet = Fleet([fleet_roots(name) for name in releases], tmp_path / f"fleet-{len(made)}", size)
        made.append(fleet)
        try:
            fleet.start()
        except TestbedError as error:
            unavailable(f"e2e: could not start a fleet: {error}")
        return fleet

    try:
        yield make
    finally:
        errors: list[str] = []
        for fleet in made:
            try:
                fleet.stop()
            except TestbedError as error:
                errors.append(str(error))
        if errors:
            raise TestbedError("\n".join(errors))


@pytest.fixture(scope="session")
def toolchain_debs(testbed_host: None) -> Callable[[str], Path]:
    """The nesop-deb toolchain package for a Debian release: NESOP_DEB_TOOLCHAIN_DEB_<SUITE>
    (`make package SUITE=…`), else for the host's own release NESOP_DEB_TOOLCHAIN_DEB (`make
    package`); built here into dist/<suite>/ if missing."""
    from .store import REPO_TOP

    debs: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name in debs:
            return debs[name]
        variables = [f"NESOP_DEB_TOOLCHAIN_DEB_{name.upper()}"]
        if name == host_suite():
            variables.append("NESOP_DEB_TOOLCHAIN_DEB")
        for variable in variables:
            configured = os.environ.get(variable)
            if configured and Path(configured).is_file():
                debs[name] = Path(configured)
                return debs[name]
        import subprocess

        args = [str(REPO_TOP / "dist" / name), name]
        result = subprocess.run(
            [str(REPO_TOP / "scripts" / "build-toolchain-package"), *args],
            cwd=REPO_TOP,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(
                f"could not build the toolchain package for {name}: {result.stderr[-2000:]}", pytrace=False
            )
        debs[name] = Path(REPO_TOP / result.stdout.strip().splitlines()[-1])
        return debs[name]

    return get


@pytest.fixture
def toolchain_deb(toolchain_debs: Callable[[str], Path], suite: str) -> Path:
    """The toolchain package for the test's Debian release."""
    return toolchain_debs(suite)


@pytest.fixture(scope="session")
def example_repo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The example store's git history (tags v1.0.0..v1.0.6, broken/* branches)."""
    from .store import ExampleRepo

    return ExampleRepo.create(tmp_path_factory.mktemp("example"))
