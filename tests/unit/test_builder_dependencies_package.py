"""A package that changes the virtualenv: its wheels beside the payload, its control fields and file
name for one Python and architecture (or any, for pure wheels), and how it describes itself."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from debian.deb822 import Deb822

from nesop_deb.builder.package import deb_name, write_tree
from nesop_deb.builder.plan import BuildPlan, describe
from nesop_deb.manifest import Dependencies, WheelEntry
from nesop_deb.manifest import loads as manifest_loads
from tests.unit.test_builder_package import FILES, make_plan

COMPILED = "MarkupSafe-3.0.2-cp313-cp313-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
PURE = "itsdangerous-2.2.0-py3-none-any.whl"
WHEELS = {COMPILED: b"compiled", PURE: b"pure"}


def with_dependencies(
    architecture: str = "amd64", python: str = "3.13", shipped: tuple[str, ...] = (COMPILED, PURE)
) -> BuildPlan:
    plan = make_plan(FILES)
    entries = tuple(WheelEntry(f, hashlib.sha256(WHEELS[f]).hexdigest(), len(WHEELS[f])) for f in shipped)
    deps = Dependencies("markupsafe==3.0.2 --hash=sha256:...\n", entries, python, architecture)
    target = "amd64" if architecture == "all" else architecture
    config = {
        **plan.manifest.config,
        "dependencies": {
            "requirements": "requirements.txt",
            "venv": "venv",
            "python": python,
            "architecture": target,
        },
    }
    manifest = dataclasses.replace(plan.manifest, config=config, dependencies=deps)
    return dataclasses.replace(plan, manifest=manifest, wheels={f: WHEELS[f] for f in shipped})


def control(root: Path) -> Deb822:
    return Deb822((root / "DEBIAN/control").read_text())


def test_the_wheels_go_beside_the_payload(tmp_path: Path) -> None:
    plan = with_dependencies()
    write_tree(plan, tmp_path)
    wheels = tmp_path / "usr/share/shop-update/wheels"
    assert sorted(p.name for p in wheels.iterdir()) == [COMPILED, PURE]
    assert (wheels / COMPILED).read_bytes() == b"compiled"
    assert (wheels / PURE).stat().st_mode & 0o777 == 0o644
    assert f"usr/share/shop-update/wheels/{PURE}" in (tmp_path / "DEBIAN/md5sums").read_text()
    shipped = manifest_loads((tmp_path / "usr/share/shop-update/update_manifest.json").read_text())
    assert shipped.dependencies == plan.manifest.dependencies


def test_compiled_wheels_tie_the_package_to_one_python_and_architecture(tmp_path: Path) -> None:
    plan = with_dependencies("arm64", "3.11")
    write_tree(plan, tmp_path)
    ctl = control(tmp_path)
    assert ctl["Architecture"] == "arm64"
    assert ctl["Depends"] == "python3 (>= 3.11~), python3 (<< 3.12~)"
    assert ctl["Pre-Depends"].startswith("nesop-deb (>= ")
    assert ctl["Version"] == "1.0.1"  # the version is the release's: apt rolls back by it
    assert deb_name(plan) == "shop-update_1.0.1_py3.11_arm64.deb"
    epoch = dataclasses.replace(plan, manifest=dataclasses.replace(plan.manifest, version="2:1.0.1-3"))
    assert deb_name(epoch) == "shop-update_1.0.1-3_py3.11_arm64.deb"


def test_a_pure_set_is_a_package_for_every_architecture(tmp_path: Path) -> None:
    plan = with_dependencies("all", shipped=(PURE,))
    write_tree(plan, tmp_path)
    ctl = control(tmp_path)
    assert ctl["Architecture"] == "all" and "Depends" not in ctl
    assert deb_name(plan) == "shop-update_1.0.1_all.deb"


def test_a_package_whose_virtualenv_does_not_change_has_no_wheels(tmp_path: Path) -> None:
    plan = make_plan(FILES)
    write_tree(plan, tmp_path)
    assert not (tmp_path / "usr/share/shop-update/wheels").exists()
    assert "Depends" not in control(tmp_path) and control(tmp_path)["Architecture"] == "all"


def test_the_description_names_the_virtualenv_and_each_wheel(tmp_path: Path) -> None:
    lines = describe(with_dependencies().manifest)
    assert lines[0].endswith(", 1 migration(s), new virtualenv (2 wheel(s) shipped)")
    assert lines[-3:] == [
        "virtualenv from requirements.txt for Python 3.13 on amd64",
        "wheel MarkupSafe==3.0.2",
        "wheel itsdangerous==2.2.0",
    ]
    pure = describe(with_dependencies("all", shipped=()).manifest)
    assert pure[0].endswith("new virtualenv (0 wheel(s) shipped)")
    assert pure[-1] == "virtualenv from requirements.txt for Python 3.13, any architecture (pure Python)"
    write_tree(with_dependencies(), tmp_path)
    description = control(tmp_path)["Description"]
    assert " wheel MarkupSafe==3.0.2" in description.replace("\n", "\n ")
    assert all(len(line) <= 80 for line in description.splitlines())  # lintian's limit
