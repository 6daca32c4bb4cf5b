"""[dependencies]: the builder fetches the pinned set's wheels from PyPI for the servers' Python and
architecture, ships the ones a server at the base does not have, and names the target in the
package. Real git, real pip (small wheels: MarkupSafe, compiled; itsdangerous and packaging, pure),
packages read with dpkg-deb; expectations from git and from the wheels' own hashes."""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nesop_deb import debfile

from .conftest import SHOP_CONFIG
from .helpers import (
    NESOP_DEB,
    Outcome,
    Repo,
    build,
    control_fields,
    data_members,
    git_show,
    package_manifest,
    run_tool,
)

pytestmark = pytest.mark.integration

PACKAGE = "shop-update"
# the sha256 of the manylinux wheels PyPI has for CPython 3.11 and 3.13 on x86_64 and aarch64
MARKUPSAFE_302 = (
    "a123e330ef0853c6e822384873bef7507557d8e4a082961e1defa947aa59ba84",  # cp311 x86_64
    "2cb8438c3cbb25e220c2ab33bb226559e7afb3baec11c4f218ffa7308603c832",  # cp311 aarch64
    "15ab75ef81add55874e7ab7055e9c397312385bd9ced94920f2802310c930396",  # cp313 x86_64
    "569511d3b58c8791ab4c2e1285575265991e6d8f8700c7be0e88f86cb0672094",  # cp313 aarch64
)
MARKUPSAFE_303 = (
    "0bf2a864d67e76e5c9a34dc26ec616a66b9888e25e7b9460e1c76d3293bd9dbf",  # cp311 x86_64
    "ccfcd093f13f0f0b7fdd0f198b90053bf7b2f02a3927a30e63f3ccc9df56b676",  # cp313 x86_64
)
MARKUPSAFE_215 = ("b91c037585eba9095565a3556f611e3cbfaa42ca1e865f7b8015fe5c7336d5a5",)  # cp311 x86_64 only
ITSDANGEROUS_220 = ("c6242fc49e35958c8b15141343aa660db5fc54d4f13a1db01a3f5891b98700ef",)
PACKAGING_242 = ("09abb1bccd265c01f4a3aa3f7a7db064b36514d2cba19a2f694fe6150451a759",)


def pin(name: str, version: str, hashes: tuple[str, ...]) -> str:
    """A requirement as pip-compile --generate-hashes writes it."""
    return f"{name}=={version} \\\n" + " \\\n".join(f"    --hash=sha256:{h}" for h in hashes) + "\n"


SET_302 = (
    "# pinned by pip-compile\n"
    + pin("markupsafe", "3.0.2", MARKUPSAFE_302)
    + pin("itsdangerous", "2.2.0", ITSDANGEROUS_220)
)
SET_303 = SET_302.replace(
    pin("markupsafe", "3.0.2", MARKUPSAFE_302), pin("markupsafe", "3.0.3", MARKUPSAFE_303)
)
PURE_SET = pin("itsdangerous", "2.2.0", ITSDANGEROUS_220) + pin("packaging", "24.2", PACKAGING_242)
DEPS_CONFIG = SHOP_CONFIG + '\n[dependencies]\nrequirements = "requirements.txt"\npython = "3.13"\n'


@pytest.fixture(scope="session")
def pip_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One pip cache for the tests of this module: each wheel comes from PyPI once."""
    return tmp_path_factory.mktemp("pip-cache")


@pytest.fixture
def deps_env(env: dict[str, str], pip_cache: Path) -> dict[str, str]:
    return {**env, "PIP_CACHE_DIR": str(pip_cache)}


def shop(repo: Repo, requirements: str = SET_302, config: str = DEPS_CONFIG) -> Repo:
    """v1.0.0 of a small app with a pinned requirements.txt."""
    repo.write("nesop-deb.toml", config)
    repo.write("server.py", "print('v1')\n")
    repo.write("config.py", "DEBUG = False\n")
    repo.write("migrations/0001_init.sql", "CREATE TABLE product (id INTEGER PRIMARY KEY);\n")
    repo.write("requirements.txt", requirements)
    repo.commit("Shop 1.0.0", tag="v1.0.0")
    return repo


def release(repo: Repo, tag: str, requirements: str | None = None, config: str | None = None) -> None:
    repo.write("server.py", f"print({tag!r})\n")
    if requirements is not None:
        repo.write("requirements.txt", requirements)
    if config is not None:
        repo.write("nesop-deb.toml", config)
    repo.commit(f"Release {tag}", tag=tag)


def built(repo: Repo, out: Path, env: dict[str, str], *options: str) -> Path:
    outcome = build(repo.path, out, env, *options)
    assert outcome.returncode == 0, outcome.stderr
    return Path(outcome.last_line)


def wheels_in(deb: Path, package: str = PACKAGE) -> dict[str, bytes]:
    prefix = f"usr/share/{package}/wheels/"
    return {
        n[len(prefix) :]: c or b""
        for n, (i, c) in data_members(deb).items()
        if n.startswith(prefix) and i.isfile()
    }


def dependencies(deb: Path) -> Any:
    manifest, _ = package_manifest(deb, PACKAGE)
    return manifest.get("dependencies")


def check_shipped(deb: Path, pinned: dict[str, tuple[str, ...]]) -> dict[str, bytes]:
    """The wheels in ``deb`` are those its manifest lists, byte for byte, each a pinned file."""
    shipped = wheels_in(deb)
    entries = {w["file"]: w for w in dependencies(deb)["wheels"]}
    assert sorted(shipped) == sorted(entries)
    for name, data in shipped.items():
        digest = hashlib.sha256(data).hexdigest()
        assert entries[name]["sha256"] == digest and entries[name]["size"] == len(data)
        project = name.split("-")[0].lower()
        assert digest in pinned[project], name
    return shipped


PINNED = {
    "markupsafe": MARKUPSAFE_302 + MARKUPSAFE_303 + MARKUPSAFE_215,
    "itsdangerous": ITSDANGEROUS_220,
    "packaging": PACKAGING_242,
}


def test_a_full_package_ships_every_wheel_for_the_target(
    make_repo: Callable[..., Repo], tmp_path: Path, deps_env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))
    deb = built(repo, tmp_path / "out", deps_env, "--full")
    assert deb == tmp_path / "out/full/shop-update_1.0.0_py3.13_amd64.deb"
    shipped = check_shipped(deb, PINNED)
    assert sorted(shipped) == [
        "MarkupSafe-3.0.2-cp313-cp313-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "itsdangerous-2.2.0-py3-none-any.whl",
    ]
    deps = dependencies(deb)
    assert deps["requirements"] == git_show(repo, "v1.0.0", "requirements.txt").decode()
    assert (deps["requirements_file"], deps["python"], deps["architecture"]) == (
        "requirements.txt",
        "3.13",
        "amd64",
    )
    fields = control_fields(deb)
    assert (fields["Architecture"], fields["Version"]) == ("amd64", "1.0.0")
    assert fields["Depends"] == "python3 (>= 3.13~), python3 (<< 3.14~)"
    assert f"usr/share/{PACKAGE}/payload/requirements.txt" in data_members(deb)  # still an app file
    verify = run_tool([NESOP_DEB, "verify", deb], deps_env)
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout == f"{deb}: ok (4 payload files, 1 migrations, 2 wheels match the manifest)\n"
    inspect = run_tool([NESOP_DEB, "inspect", deb], deps_env)
    assert (
        "virtualenv: new, from requirements.txt for Python 3.13 on amd64\nwheels:     2 shipped\n"
        in inspect.stdout
    )
    lintian = subprocess.run(
        ["lintian", "--pedantic", "--fail-on", "error", str(deb)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert lintian.returncode == 0, lintian.stdout + lintian.stderr
    assert [line for line in lintian.stdout.splitlines() if line.startswith(("E:", "W:"))] == []
    again = built(repo, tmp_path / "again", deps_env, "--full")
    assert again.read_bytes() == deb.read_bytes()  # reproducible: the same wheels, the same bytes


def test_an_update_that_upgrades_one_pin_ships_only_its_wheel(
    make_repo: Callable[..., Repo], tmp_path: Path, deps_env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))
    release(repo, "v1.0.1", SET_303)
    deb = built(repo, tmp_path / "out", deps_env)
    assert deb.name == "shop-update_1.0.1_py3.13_amd64.deb"
    shipped = check_shipped(deb, PINNED)
    assert list(shipped) == [
        "markupsafe-3.0.3-cp313-cp313-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl"
    ]
    deps = dependencies(deb)
    assert deps["requirements"] == SET_303 and deps["architecture"] == "amd64"
    manifest, _ = package_manifest(deb, PACKAGE)
    assert [f["path"] for f in manifest["files"]] == ["requirements.txt", "server.py"]


def test_all_wheels_ships_every_wheel_for_a_server_whose_venv_was_made_by_hand(
    make_repo: Callable[..., Repo], tmp_path: Path, deps_env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))
    release(repo, "v1.0.1")  # the requirements did not change: an update alone ships no wheel
    deb = built(repo, tmp_path / "out", deps_env, "--all-wheels")
    assert sorted(w.split("-")[0] for w in wheels_in(deb)) == sorted(
        w.split("-")[0] for w in wheels_in(built(repo, tmp_path / "full", deps_env, "--full"))
    )
    assert dependencies(deb) is not None and dependencies(deb)["requirements"] == SET_302


def test_with_python_the_base_counts_as_built_for_the_same_servers(
    make_repo: Callable[..., Repo], tmp_path: Path, deps_env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))  # its config names Python 3.13
    release(repo, "v1.0.1", SET_303)
    deb = built(repo, tmp_path / "out", deps_env, "--python", "3.11")
    assert deb.name == "shop-update_1.0.1_py3.11_amd64.deb"
    assert [w.split("-")[:3] for w in wheels_in(deb)] == [["markupsafe", "3.0.3", "cp311"]]


def test_a_virtualenv_tracked_in_git_never_ships(
    make_repo: Callable[..., Repo], tmp_path: Path, deps_env: dict[str, str]
) -> None:
    repo = make_repo("app")
    repo.write("venv/bin/activate", "# made by hand\n")
    repo.write("venv/lib/python3.13/site-packages/x.py", "X = 1\n")
    shop(repo)
    full = build(repo.path, tmp_path / "full", deps_env, "--full")
    assert full.returncode == 0, full.stderr
    assert "venv/ is in the repository (2 files): it never ships" in full.stderr
    manifest, _ = package_manifest(Path(full.last_line), PACKAGE)
    assert not [f for f in manifest["files"] if f["path"].startswith("venv")]
    repo.git("rm", "-r", "-q", "--cached", "venv")  # untracked in the next release: no deletion either
    release(repo, "v1.0.1", SET_303)
    manifest, _ = package_manifest(built(repo, tmp_path / "out", deps_env), PACKAGE)
    assert [f["path"] for f in manifest["files"]] == ["requirements.txt", "server.py"]


def test_unchanged_requirements_change_no_virtualenv(
    make_repo: Callable[..., Repo], tmp_path: Path, deps_env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))
    release(repo, "v1.0.1")
    deb = built(repo, tmp_path / "out", deps_env)
    assert deb.name == "shop-update_1.0.1_all.deb"
    assert dependencies(deb) is None and wheels_in(deb) == {}
    assert control_fields(deb)["Architecture"] == "all" and "Depends" not in control_fields(deb)
    manifest, _ = package_manifest(deb, PACKAGE)
    assert manifest["config"]["dependencies"]["python"] == "3.13"  # the settings still travel


def test_a_pure_set_ships_its_wheels_in_a_package_for_every_architecture(
    make_repo: Callable[..., Repo], tmp_path: Path, deps_env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"), PURE_SET)
    deb = built(repo, tmp_path / "out", deps_env, "--full")
    assert deb.name == "shop-update_1.0.0_all.deb"
    assert sorted(check_shipped(deb, PINNED)) == [
        "itsdangerous-2.2.0-py3-none-any.whl",
        "packaging-24.2-py3-none-any.whl",
    ]
    assert (dependencies(deb)["architecture"], dependencies(deb)["python"]) == ("all", "3.13")
    assert control_fields(deb)["Architecture"] == "all" and "Depends" not in control_fields(deb)


MARKUPSAFE_WHEEL = "MarkupSafe-3.0.2-{python}-{python}-manylinux_2_17_{machine}.manylinux2014_{machine}.whl"


@pytest.mark.parametrize(
    ("options", "name", "wheel"),
    [
        ((), "py3.13_amd64", MARKUPSAFE_WHEEL.format(python="cp313", machine="x86_64")),
        (("--python", "3.11"), "py3.11_amd64", MARKUPSAFE_WHEEL.format(python="cp311", machine="x86_64")),
        (("--arch", "arm64"), "py3.13_arm64", MARKUPSAFE_WHEEL.format(python="cp313", machine="aarch64")),
    ],
    ids=["config", "python-3.11", "arm64"],
)
def test_the_wheels_are_the_targets_not_the_build_machines(
    make_repo: Callable[..., Repo],
    tmp_path: Path,
    deps_env: dict[str, str],
    options: tuple[str, ...],
    name: str,
    wheel: str,
) -> None:
    repo = shop(make_repo("app"))
    deb = built(repo, tmp_path / "out", deps_env, "--full", *options)
    assert deb.name == f"shop-update_1.0.0_{name}.deb"
    assert wheel in check_shipped(deb, PINNED)
    python, arch = name[2:].split("_")
    manifest, _ = package_manifest(deb, PACKAGE)
    assert (manifest["dependencies"]["python"], manifest["dependencies"]["architecture"]) == (python, arch)
    assert manifest["config"]["dependencies"]["python"] == python  # the settings it was built with
    assert control_fields(deb)["Architecture"] == arch


def test_a_base_without_dependencies_gets_every_wheel(
    make_repo: Callable[..., Repo], tmp_path: Path, deps_env: dict[str, str]
) -> None:
    """requirements.txt was in the app before; the release that adds [dependencies] ships it all."""
    repo = shop(make_repo("app"), config=SHOP_CONFIG)
    release(repo, "v1.0.1", config=DEPS_CONFIG)
    deb = built(repo, tmp_path / "out", deps_env)
    assert len(check_shipped(deb, PINNED)) == 2
    release(repo, "v1.0.2", config=DEPS_CONFIG.replace('"3.13"', '"3.11"'))  # another target: all again
    deb = built(repo, tmp_path / "out", deps_env)
    assert sorted(check_shipped(deb, PINNED))[0].startswith("MarkupSafe-3.0.2-cp311-cp311-")
    assert len(wheels_in(deb)) == 2


# --- refused: one line, exit 2, nothing written ----------------------------------------------


def refused(outcome: Outcome, out: Path) -> str:
    assert outcome.returncode == 2, outcome
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nesop-deb: error: "), outcome.stderr
    assert outcome.stdout == "" and not out.exists()
    return lines[0]


def test_an_unpinned_line_is_refused(
    make_repo: Callable[..., Repo], tmp_path: Path, deps_env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))
    release(repo, "v1.0.1", SET_302 + "packaging>=24\n")
    line = refused(build(repo.path, tmp_path / "out", deps_env), tmp_path / "out")
    assert "requirements.txt: 1 line(s) the builder cannot take: line 9 'packaging>=24': a range" in line
    assert "pip-compile --generate-hashes" in line


@pytest.mark.parametrize(
    ("requirements", "named"),
    [
        (
            pin("markupsafe", "99.0.0", MARKUPSAFE_302),
            "no wheel of markupsafe==99.0.0 for Python 3.13 on amd64",
        ),
        (
            pin("markupsafe", "2.1.5", MARKUPSAFE_215),
            "no wheel of markupsafe==2.1.5 for Python 3.13 on amd64",
        ),
        (
            pin("markupsafe", "3.0.2", MARKUPSAFE_302[:1]),
            "the wheel of markupsafe==3.0.2 for Python 3.13 on amd64 (MarkupSafe-3.0.2-cp313-cp313-",
        ),
    ],
    ids=["no-such-version", "no-wheel-for-python-3.13", "hash-of-another-wheel"],
)
def test_a_set_without_a_wheel_for_the_target_is_refused(
    make_repo: Callable[..., Repo], tmp_path: Path, deps_env: dict[str, str], requirements: str, named: str
) -> None:
    repo = shop(make_repo("app"))
    release(repo, "v1.0.1", requirements)
    line = refused(build(repo.path, tmp_path / "out", deps_env), tmp_path / "out")
    assert named in line


def test_markupsafe_2_1_5_has_a_wheel_for_python_3_11(
    make_repo: Callable[..., Repo], tmp_path: Path, deps_env: dict[str, str]
) -> None:
    """The release refused above for 3.13 builds for 3.11: the target decides, not the set."""
    repo = shop(make_repo("app"))
    release(repo, "v1.0.1", pin("markupsafe", "2.1.5", MARKUPSAFE_215))
    deb = built(repo, tmp_path / "out", deps_env, "--python", "3.11")
    assert list(check_shipped(deb, PINNED)) == [
        "MarkupSafe-2.1.5-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
    ]


def test_a_dependency_the_set_does_not_pin_is_refused(
    make_repo: Callable[..., Repo], tmp_path: Path, deps_env: dict[str, str]
) -> None:
    jinja2 = pin("jinja2", "3.1.6", ("85ece4451f492d0c13c5dd7c13a64681a86afae63a5f347908daf103ce6d2f67",))
    repo = shop(make_repo("app"))
    release(repo, "v1.0.1", jinja2)  # jinja2 needs MarkupSafe, which this set does not pin
    line = refused(build(repo.path, tmp_path / "out", deps_env), tmp_path / "out")
    assert "requirements.txt does not pin MarkupSafe>=2.0 (needed by jinja2==3.1.6)" in line


def test_init_writes_the_section_commented_out_and_uncommented_it_builds(
    make_repo: Callable[..., Repo], tmp_path: Path, deps_env: dict[str, str]
) -> None:
    repo = make_repo("myshop", config=None)
    repo.write("app.py", "print('shop')\n")
    repo.write("requirements.txt", SET_302)
    outcome = run_tool(
        [NESOP_DEB, "init", "-C", repo.path, "--maintainer", "Ann <ann@example.com>"], deps_env
    )
    assert outcome.returncode == 0, outcome.stderr
    assert "  requirements requirements.txt: [dependencies], commented out\n" in outcome.stdout
    assert "  - [dependencies]: to ship the packages of requirements.txt" in outcome.stdout
    config = repo.path / "nesop-deb.toml"
    text = config.read_text()
    start = text.index("# [dependencies]")
    config.write_text(text[:start] + re.sub(r"(?m)^# ", "", text[start:]))  # what the checklist says
    repo.commit("Package with nesop-deb", tag="v1.0.0")
    deb = built(repo, tmp_path / "out", deps_env, "--full")
    assert deb.name == "myshop-update_1.0.0_py3.13_amd64.deb"
    assert len(wheels_in(deb, "myshop-update")) == 2


def test_verify_checks_the_wheels_and_the_shape_check_takes_them(
    make_repo: Callable[..., Repo], tmp_path: Path, deps_env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"), PURE_SET)
    deb = built(repo, tmp_path / "out", deps_env, "--full")
    assert debfile.shape_problems(debfile.open_update(deb)) == []  # wheels/ is what the builder writes
    damaged = tmp_path / "damaged" / deb.name
    damaged.parent.mkdir()
    work = tmp_path / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(work)], check=True)
    wheel = work / f"usr/share/{PACKAGE}/wheels/packaging-24.2-py3-none-any.whl"
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    (wheel.parent / "extra-1.0-py3-none-any.whl").write_bytes(b"not in the manifest")
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", str(work), str(damaged)], check=True, capture_output=True
    )
    outcome = run_tool([NESOP_DEB, "verify", damaged], deps_env)
    assert outcome.returncode == 1
    assert outcome.stderr.splitlines()[:2] == [
        f"{damaged}: wheel packaging-24.2-py3-none-any.whl: sha256 does not match the manifest (damaged)",
        f"{damaged}: wheel extra-1.0-py3-none-any.whl: in the package but not in the manifest",
    ]


def test_a_moved_virtualenv_is_a_change_that_needs_no_new_wheel(
    make_repo: Callable[..., Repo], tmp_path: Path, deps_env: dict[str, str]
) -> None:
    repo = shop(make_repo("app"))
    release(repo, "v1.0.1", config=DEPS_CONFIG + 'venv = "env"\n')
    deb = built(repo, tmp_path / "out", deps_env)
    assert deb.name == "shop-update_1.0.1_py3.13_amd64.deb"  # the set still needs its compiled wheel
    assert dependencies(deb)["wheels"] == [] and wheels_in(deb) == {}
