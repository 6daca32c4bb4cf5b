"""Fetching the wheels of a pinned set for the servers: pip's command line, what the builder checks
in what pip fetched, and pip's failures turned into one line. Only the subprocess seam is faked: a
``pip`` that writes the wheels it is given into ``--dest``, or fails as pip does."""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nesop_deb import proc
from nesop_deb.builder import wheels
from nesop_deb.builder.requirements import Requirements, parse
from nesop_deb.builder.wheels import Target, Wheel
from nesop_deb.errors import BuildError

COMPILED = "MarkupSafe-3.0.2-cp313-cp313-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
PURE = "itsdangerous-2.2.0-py3-none-any.whl"
DATA = {COMPILED: b"compiled wheel", PURE: b"pure wheel"}
TARGET = Target("3.13", "amd64")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def requirements(**extra: str) -> Requirements:
    lines = {
        "markupsafe": f"MarkupSafe==3.0.2 --hash=sha256:{sha(DATA[COMPILED])} --hash=sha256:{'0' * 64}",
        "itsdangerous": f"itsdangerous==2.2.0 --hash=sha256:{sha(DATA[PURE])}",
        **extra,
    }
    return parse("".join(f"{line}\n" for line in lines.values() if line), "requirements.txt")


@dataclass
class FakePip:
    """pip as the seam sees it: ``--version`` answers (unless ``no_pip``), ``download`` writes
    ``files`` into ``--dest`` or fails with ``stderr``."""

    files: Mapping[str, bytes] = field(default_factory=lambda: dict(DATA))
    stderr: str = ""
    no_pip: frozenset[str] = frozenset()
    calls: list[list[str]] = field(default_factory=list)

    def __call__(
        self,
        argv: list[str],
        cwd: Path | None,
        env: Mapping[str, str] | None,
        stdin: bytes | None,
        timeout: float | None,
    ) -> proc.Result:
        self.calls.append(argv)
        if argv[0] in self.no_pip:
            return proc.Result(argv, 1, b"", f"{argv[0]}: No module named pip\n".encode())
        if argv[1:] == ["-m", "pip", "--version"]:
            return proc.Result(argv, 0, b"pip 25.0\n", b"")
        assert argv[1:4] == ["-m", "pip", "download"], argv
        if self.stderr:
            return proc.Result(argv, 1, b"", self.stderr.encode())
        dest = Path(argv[argv.index("--dest") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (dest / name).write_bytes(data)
        return proc.Result(argv, 0, b"", b"")


@pytest.fixture
def pip(monkeypatch: pytest.MonkeyPatch) -> FakePip:
    fake = FakePip()
    monkeypatch.setattr(proc, "executor", fake)
    return fake


# --- the target ------------------------------------------------------------------------------


def test_the_platforms_are_manylinux_up_to_debian_12s_glibc_newest_first() -> None:
    amd64 = Target("3.11", "amd64").platforms()
    assert amd64[0] == "manylinux_2_36_x86_64" and "manylinux_2_37_x86_64" not in amd64
    assert amd64.index("manylinux_2_28_x86_64") < amd64.index("manylinux_2_17_x86_64")
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(amd64)
    assert amd64[-1] == "manylinux1_x86_64"
    arm64 = Target("3.13", "arm64").platforms()
    assert "manylinux2014_aarch64" in arm64 and "manylinux_2_36_aarch64" in arm64
    assert not any("x86_64" in p or "manylinux1_" in p or "manylinux2010" in p for p in arm64)


def test_pip_fetches_binaries_for_the_target_in_hash_checking_mode() -> None:
    args = wheels.download_args(TARGET, Path("/s/req.txt"), Path("/s/wheels"))
    assert args[0] == "download"
    for pair in (
        ["--python-version", "3.13"],
        ["--implementation", "cp"],
        ["--abi", "cp313"],
        ["--abi", "abi3"],
        ["--abi", "none"],
        ["--dest", "/s/wheels"],
        ["--requirement", "/s/req.txt"],
    ):
        assert any(args[i : i + 2] == pair for i in range(len(args))), pair
    assert "--only-binary=:all:" in args and "--require-hashes" in args
    assert "--no-deps" not in args  # the dependencies are fetched too: that proves the set complete
    assert not any(a.startswith("--no-binary") for a in args)


@pytest.mark.parametrize(
    ("file", "pure"),
    [
        (PURE, True),
        ("six-1.17.0-py2.py3-none-any.whl", True),
        (COMPILED, False),
        ("bcrypt-5.0.0-cp39-abi3-manylinux_2_34_x86_64.whl", False),
        ("cmeel-1.0-py3-none-manylinux_2_28_x86_64.whl", False),
    ],
)
def test_a_wheel_is_pure_when_it_is_for_any_abi_and_platform(file: str, pure: bool) -> None:
    assert Wheel(file, b"").pure is pure


# --- fetching --------------------------------------------------------------------------------


def test_the_whole_set_is_fetched_and_matched_to_its_pins(pip: FakePip) -> None:
    fetched = wheels.fetch(requirements(), TARGET)
    assert {name: w.file for name, w in fetched.items()} == {"markupsafe": COMPILED, "itsdangerous": PURE}
    assert fetched["markupsafe"].data == DATA[COMPILED]
    download = pip.calls[-1]
    listing = Path(download[download.index("--requirement") + 1])
    assert not listing.exists()  # the scratch directory is gone


def test_an_empty_set_runs_no_pip(pip: FakePip) -> None:
    assert wheels.fetch(Requirements("requirements.txt", ()), TARGET) == {}
    assert pip.calls == []


def test_pip_is_the_system_python3s_when_the_builders_interpreter_has_none(
    pip: FakePip, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", "/opt/venvs/nesop-deb/bin/python3")
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/python3")
    pip.no_pip = frozenset({"/opt/venvs/nesop-deb/bin/python3"})
    wheels.fetch(requirements(), TARGET)
    assert pip.calls[-1][:4] == ["/usr/bin/python3", "-m", "pip", "download"]
    pip.no_pip = frozenset({"/opt/venvs/nesop-deb/bin/python3", "/usr/bin/python3"})
    with pytest.raises(BuildError, match="fetching the wheels needs pip") as err:
        wheels.fetch(requirements(), TARGET)
    assert "apt-get install python3-pip" in (err.value.hint or "")


def test_a_wheel_whose_hash_is_not_pinned_is_refused(pip: FakePip) -> None:
    pip.files = {**DATA, COMPILED: b"another build"}
    with pytest.raises(BuildError, match=f"{COMPILED} .sha256 {sha(b'another build')}. is not among the"):
        wheels.fetch(requirements(), TARGET)


def test_a_wheel_of_another_version_than_pinned_is_refused(pip: FakePip) -> None:
    # 2.2 is 2.2.0 (PEP 440): the server matches wheels to pins the same way
    reqs = requirements(itsdangerous=f"itsdangerous==2.2 --hash=sha256:{sha(DATA[PURE])}")
    assert wheels.fetch(reqs, TARGET)["itsdangerous"].file == PURE
    reqs = requirements(itsdangerous=f"itsdangerous==2.1 --hash=sha256:{sha(DATA[PURE])}")
    with pytest.raises(
        BuildError, match=r"line 2 pins itsdangerous==2\.1, but its wheel .* is version 2\.2\.0"
    ) as e:
        wheels.fetch(reqs, TARGET)
    assert "pip fetched another version" in (e.value.hint or "")


def test_a_pin_without_a_wheel_and_a_wheel_without_a_pin_are_refused(pip: FakePip) -> None:
    pip.files = {COMPILED: DATA[COMPILED]}
    with pytest.raises(
        BuildError, match=re.escape("pip fetched no wheel of itsdangerous==2.2.0 for Python 3.13 on amd64")
    ):
        wheels.fetch(requirements(), TARGET)
    pip.files = {**DATA, "six-1.17.0-py2.py3-none-any.whl": b"six"}
    with pytest.raises(
        BuildError, match=re.escape("pip fetched six-1.17.0-py2.py3-none-any.whl, which requirements.txt")
    ):
        wheels.fetch(requirements(), TARGET)


# --- pip's failures, as one line -------------------------------------------------------------

NO_MATCH = """\
ERROR: Could not find a version that satisfies the requirement markupsafe==2.1.5 (from versions: 3.0.0)
ERROR: No matching distribution found for markupsafe==2.1.5
"""
UNPINNED = """\
ERROR: In --require-hashes mode, all requirements must have their versions pinned with ==. These do not:
    MarkupSafe>=2.0 from https://files.example/markupsafe-3.0.4-cp313-cp313-manylinux2014_x86_64.whl \
(from jinja2==3.1.6->-r /tmp/x/requirements.txt (line 1))
"""
MISMATCH = f"""\
ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE. If you have updated ...
    markupsafe==3.0.2 from https://files.example/p/{COMPILED} (from -r /tmp/x/requirements.txt (line 1)):
        Expected sha256 {"1" * 64}
        Expected     or {"2" * 64}
             Got        {"3" * 64}

"""


@pytest.mark.parametrize(
    ("stderr", "message", "hint"),
    [
        (
            NO_MATCH,
            "no wheel of markupsafe==2.1.5 for Python 3.13 on amd64 (CPython cp313, manylinux glibc <= 2.36"
            " x86_64) on the index pip uses",
            "pin a version that publishes one",
        ),
        (
            UNPINNED,
            "requirements.txt does not pin MarkupSafe>=2.0 (needed by jinja2==3.1.6): the set must hold"
            " every package it installs",
            "pip-compile --generate-hashes",
        ),
        (
            MISMATCH,
            f"the wheel of markupsafe==3.0.2 for Python 3.13 on amd64 ({COMPILED}, sha256 {'3' * 64}) is not"
            " among the hashes requirements.txt pins",
            "hashes taken on the build machine cover its own wheels only",
        ),
        (
            "WARNING: Retrying\nERROR: Could not install: disk full\n",
            "fetching the wheels of requirements.txt for Python 3.13 on amd64 failed: ERROR: Could not"
            " install: disk full",
            "-v",
        ),
    ],
    ids=["no-wheel", "unpinned-dependency", "hash-mismatch", "other"],
)
def test_pip_failures_become_one_line_naming_the_requirement(
    pip: FakePip, stderr: str, message: str, hint: str
) -> None:
    pip.stderr = stderr
    with pytest.raises(BuildError) as err:
        wheels.fetch(requirements(), TARGET)
    assert err.value.message == message
    assert hint in (err.value.hint or "")
    assert "\n" not in str(err.value)


# --- what ships ------------------------------------------------------------------------------


def fetched() -> dict[str, Wheel]:
    return {"markupsafe": Wheel(COMPILED, DATA[COMPILED]), "itsdangerous": Wheel(PURE, DATA[PURE])}


def test_a_full_package_ships_every_wheel() -> None:
    reqs = requirements()
    deps, data = wheels.select("the text", "requirements.txt", reqs, None, TARGET, fetched())
    assert [w.file for w in deps.wheels] == [COMPILED, PURE]
    assert deps.wheels[0].sha256 == sha(DATA[COMPILED]) and deps.wheels[0].size == len(DATA[COMPILED])
    assert data == DATA
    assert (deps.requirements, deps.requirements_file, deps.python, deps.architecture) == (
        "the text",
        "requirements.txt",
        "3.13",
        "amd64",
    )


def test_an_update_ships_the_new_pins_and_keeps_the_sets_architecture() -> None:
    base = requirements(itsdangerous=f"itsdangerous==2.1.2 --hash=sha256:{'9' * 64}")
    deps, data = wheels.select("t", "requirements.txt", requirements(), base, TARGET, fetched())
    assert [w.file for w in deps.wheels] == [PURE] and list(data) == [PURE]
    assert deps.architecture == "amd64"  # the compiled wheel the server has already is still needed


def test_a_pure_set_is_for_every_architecture() -> None:
    reqs = requirements(markupsafe="")
    deps, _ = wheels.select(
        "t", "requirements.txt", reqs, None, TARGET, {"itsdangerous": fetched()["itsdangerous"]}
    )
    assert deps.architecture == "all" and deps.python == "3.13"
