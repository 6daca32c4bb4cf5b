#!/usr/bin/env python3
"""`make bench`: run the benchmarks and write docs/benchmarks.md (tables, goals, a PNG plot).

    bench/run.py [--only outage,size,build,scaling,venv,deps,requests,fleet,postgresql] [--runs 5]
                 [--scaling-runs 3] [--venv-runs 5] [--requests-rounds 4] [--fleet-runs 3] [--pg-runs 3]
                 [--assets 10,100,1024] [--db 1,50,500] [--pg-db 10,1024]
                 [--output docs/benchmarks.md] [--toolchain DEB] [--deps-toolchain DEB]
    bench/run.py --from-results build/bench/results.pickle   # the report again, nothing measured
    bench/run.py --only fleet --keep OLD.pickle --work build/bench-fleet   # one benchmark again,
                                                                          # the others' results kept

Every number is compared with a baseline measured in the same run on the same machine: a bare
`systemctl restart` of the same app in the same container, a `--full` package and a debdelta
of the same release, the smallest repository. Runs as root (containers); the Debian roots (the
host's release, and Debian 13 for the dependency, requests and fleet benchmarks) are built once and
cached (tests/e2e/baseroot.py), debdelta is installed with apt-get if missing.
The benchmark states whether each goal is met; nothing here fails on a slow result.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pickle
import shutil
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP))

from bench import (  # noqa: E402
    buildtime,
    deps,
    fleet,
    outage,
    pgoutage,
    releases,
    report,
    scaling,
    size,
    traffic,
    venv_build,
)
from bench.common import say  # noqa: E402
from tests.e2e.fleet import FLEET_NEEDS, missing_fleet_prerequisites  # noqa: E402
from tests.e2e.testbed import host_suite, missing_prerequisites  # noqa: E402

# rollback times come with the outage runs; deps: the updates that change the app's virtualenv;
# requests: clients' requests during updates, with and without the app's socket unit; fleet: a
# five-host rollout with Ansible against the same rollout on one host; postgresql: a migrating
# update's outage as the database grows, on PostgreSQL and on SQLite
BENCHMARKS = ("outage", "size", "build", "scaling", "venv", "deps", "requests", "fleet", "postgresql")
# what each benchmark fills in report.Results (--keep replaces just these)
FIELDS: dict[str, tuple[str, ...]] = {
    "outage": ("outage",),
    "size": ("size",),
    "build": ("build",),
    "scaling": ("scaling",),
    "venv": ("venv", "venv_note"),
    "deps": ("deps",),
    "requests": ("requests",),
    "fleet": ("fleet",),
    "postgresql": ("postgresql",),
}
# the options the report reads from the run's arguments rather than from a benchmark's results
OPTIONS: dict[str, tuple[str, ...]] = {
    "outage": ("runs",),
    "scaling": ("scaling_runs", "assets", "db"),
    "postgresql": ("pg_runs", "pg_db"),
}


def _ints(text: str) -> list[int]:
    values = sorted({int(v.replace("_", "")) for v in text.split(",") if v.strip()})
    if not values or values[0] <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}")
    return values


def _only(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    aliases = {"rollback": "outage", "dependencies": "deps", "rollout": "fleet", "pg": "postgresql"}
    names = [aliases.get(n, n) for n in names]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}"
        )
    return [n for n in BENCHMARKS if n in names]


def default_toolchain() -> Path | None:
    configured = os.environ.get("NESOP_DEB_TOOLCHAIN_DEB")
    if configured and Path(configured).is_file():
        return Path(configured)
    found = sorted(glob.glob(str(TOP / "dist" / "nesop-deb_*.deb")))
    return Path(found[-1]) if found else None


def default_deps_toolchain() -> Path | None:
    """The toolchain package for the dependency benchmark's Debian release: `make package
    SUITE=trixie` (NESOP_DEB_TOOLCHAIN_DEB_TRIXIE), or plain `make package` on a Debian 13 host."""
    suite = deps.SUITE
    configured = os.environ.get(f"NESOP_DEB_TOOLCHAIN_DEB_{suite.upper()}")
    if configured and Path(configured).is_file():
        return Path(configured)
    if host_suite() == suite:
        return default_toolchain()
    found = sorted(glob.glob(str(TOP / "dist" / suite / "nesop-deb_*.deb")))
    return Path(found[-1]) if found else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=TOP / "docs" / "benchmarks.md", help="the report to write")
    p.add_argument(
        "--only", type=_only, default=list(BENCHMARKS), help=f"benchmarks to run: {','.join(BENCHMARKS)}"
    )
    p.add_argument("--runs", type=int, default=5, help="runs of each outage/rollback measurement (5)")
    p.add_argument("--scaling-runs", type=int, default=3, help="runs of each app shape when scaling (3)")
    p.add_argument("--assets", type=_ints, default=[10, 100, 1024], help="extra assets in MiB (10,100,1024)")
    p.add_argument("--db", type=_ints, default=[1, 50, 500], help="database sizes in MiB (1,50,500)")
    p.add_argument(
        "--pg-db",
        type=_ints,
        default=list(pgoutage.SIZES_MIB),
        help="database sizes in MiB of the PostgreSQL benchmark (10,1024)",
    )
    p.add_argument("--pg-runs", type=int, default=3, help="runs of each database size, per engine (3)")
    p.add_argument("--asset-mib", type=int, default=size.ASSETS_MIB, help="assets in the size benchmark (24)")
    p.add_argument("--build-sizes", type=_ints, default=[100, 1000, 10000], help="repository sizes (files)")
    p.add_argument("--build-runs", type=int, default=5, help="timed builds per repository size (5)")
    p.add_argument(
        "--venv-runs", type=int, default=5, help="timed virtualenv builds per installer and app (5)"
    )
    p.add_argument(
        "--requests-rounds",
        type=int,
        default=4,
        help="rounds of the requests benchmark's operations, per variant (4: 24 updates and rollbacks each)",
    )
    p.add_argument(
        "--fleet-runs",
        type=int,
        default=3,
        help="runs of the fleet benchmark (3: each a one-host and a five-host rollout and their rollbacks)",
    )
    p.add_argument(
        "--toolchain",
        type=Path,
        default=default_toolchain(),
        help="the nesop-deb toolchain .deb (host's release)",
    )
    p.add_argument(
        "--deps-toolchain",
        type=Path,
        default=default_deps_toolchain(),
        help=f"the toolchain .deb for Debian {deps.SUITE} (`make package SUITE={deps.SUITE}`), for deps, "
        "requests and fleet",
    )
    p.add_argument("--work", type=Path, default=TOP / "build" / "bench", help="scratch directory (emptied)")
    p.add_argument(
        "--from-results",
        type=Path,
        metavar="PICKLE",
        help="measure nothing: write the report again from a run's results.pickle (in its --work)",
    )
    p.add_argument(
        "--keep",
        type=Path,
        metavar="PICKLE",
        help="start from an earlier run's results.pickle (a copy outside --work, which is emptied): "
        "the benchmarks of --only replace theirs, the others' results stay as they were",
    )
    args = p.parse_args(argv)
    counts = (
        args.runs,
        args.scaling_runs,
        args.build_runs,
        args.venv_runs,
        args.requests_rounds,
        args.fleet_runs,
        args.pg_runs,
    )
    if min(counts) < 1:
        p.error("every run count must be at least 1")
    if args.keep is not None:
        if not args.keep.is_file():
            p.error(f"--keep {args.keep}: no such file (an earlier run's results.pickle)")
        if args.keep.resolve().is_relative_to(args.work.resolve()):
            p.error(
                f"--keep {args.keep} is inside --work {args.work}, which is emptied first: copy it elsewhere"
            )
    return args


_DROPPED = ("timeline", "log")


def _plain(value: Any) -> Any:
    """Results as JSON-friendly data (timelines dropped: they are in the plot; update.log text)."""
    if is_dataclass(value) and not isinstance(value, type):
        data = asdict(value)
        return {k: _plain(v) for k, v in data.items() if k not in _DROPPED}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if k not in _DROPPED}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def load(path: Path) -> report.Results:
    with path.open("rb") as fh:
        results = pickle.load(fh)  # our own file, written by main() below
    if not isinstance(results, report.Results):
        raise SystemExit(f"{path}: not the results of a benchmark run")
    return results


def rewrite(args: argparse.Namespace) -> int:
    """The report again from a finished run's results (e.g. after a change to its text)."""
    results = load(args.from_results)
    report.write(results, args.output)
    say(f"wrote {args.output} from {args.from_results}")
    return 0


def keep(earlier: report.Results, now: report.Results, names: list[str]) -> report.Results:
    """The earlier run's results with the benchmarks ``names`` as this run measured them; the
    report says when they were measured again."""
    for name in names:
        for attr in FIELDS[name]:
            setattr(earlier, attr, getattr(now, attr))
        for option in OPTIONS.get(name, ()):
            setattr(earlier.args, option, getattr(now.args, option))
    later = [r for r in getattr(earlier, "remeasured", []) if not set(r.names) <= set(names)]
    later.append(report.Remeasured(tuple(names), now.started, now.total_s, dict(now.timings)))
    earlier.remeasured = later
    return earlier


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_results is not None:
        return rewrite(args)
    started = time.time()
    clock = time.monotonic()
    needs_server = {"outage", "scaling", "postgresql"} & set(args.only)
    on_trixie = {"deps", "requests", "fleet"} & set(args.only)
    if needs_server or on_trixie:
        problems = missing_prerequisites()
        if problems:
            raise SystemExit(f"bench: cannot run containers: {'; '.join(problems)}")
    if "fleet" in args.only:
        problems = missing_fleet_prerequisites()
        if problems:
            raise SystemExit(f"bench: cannot run a fleet: {'; '.join(problems)} ({FLEET_NEEDS})")
    earlier = load(args.keep) if args.keep is not None else None
    if needs_server and (args.toolchain is None or not args.toolchain.is_file()):
        raise SystemExit("bench: no toolchain package; run `make package` or pass --toolchain")
    if on_trixie and (args.deps_toolchain is None or not args.deps_toolchain.is_file()):
        raise SystemExit(
            f"bench: no toolchain package for Debian {deps.SUITE}; run `make package SUITE={deps.SUITE}` "
            "or pass --deps-toolchain"
        )
    work: Path = args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)

    results = report.Results(args=args, started=started, work=work)
    timings: dict[str, float] = {}
    if {"outage", "scaling"} & set(args.only):
        say("building the example store's history and its packages")
        packages = releases.build(work / "server", args.toolchain)
        if "outage" in args.only:
            t = time.monotonic()
            results.outage = outage.measure(packages, args.runs)
            timings["outage and rollback"] = time.monotonic() - t
        if "scaling" in args.only:
            t = time.monotonic()
            results.scaling = scaling.measure(
                packages, work / "scaling", args.assets, args.db, args.scaling_runs
            )
            timings["scaling"] = time.monotonic() - t
    if "postgresql" in args.only:
        say("a migrating update on PostgreSQL and SQLite as the database grows: bench/pgoutage.py")
        t = time.monotonic()
        pg_packages = pgoutage.build(work / "postgresql", args.toolchain)
        results.postgresql = pgoutage.measure(pg_packages, args.pg_db, args.pg_runs)
        timings["PostgreSQL"] = time.monotonic() - t
    if "size" in args.only:
        t = time.monotonic()
        results.size = size.measure(work / "size", args.asset_mib)
        timings["size"] = time.monotonic() - t
    if "build" in args.only:
        say("build time: bench/build_time.py")
        t = time.monotonic()
        results.build = buildtime.measure(work / "build", args.build_sizes, args.build_runs)
        timings["build time"] = time.monotonic() - t
    if "venv" in args.only:
        say("virtualenv build: bench/venv_build.py")
        t = time.monotonic()
        try:
            results.venv = venv_build.measure(work / "venv", args.venv_runs)
        except venv_build.Unavailable as e:
            results.venv_note = str(e)
        timings["virtualenv build"] = time.monotonic() - t
    if "deps" in args.only:
        say("dependencies: bench/deps.py")
        t = time.monotonic()
        debs = deps.build(work / "deps", args.deps_toolchain)
        results.deps = deps.measure(debs, args.runs)
        timings["dependencies"] = time.monotonic() - t
    if "requests" in args.only:
        say("requests during an update: bench/traffic.py")
        t = time.monotonic()
        rounds = args.requests_rounds
        results.requests = traffic.measure(
            traffic.build(work / "requests", args.deps_toolchain, rounds), rounds
        )
        timings["requests during an update"] = time.monotonic() - t
    if "fleet" in args.only:
        say("a fleet rollout: bench/fleet.py")
        t = time.monotonic()
        fleet_debs = fleet.build(work / "fleet", args.deps_toolchain)
        results.fleet = fleet.measure(fleet_debs, work / "fleet", args.fleet_runs)
        timings["fleet rollout"] = time.monotonic() - t

    results.timings = timings
    results.total_s = elapsed = time.monotonic() - clock
    if earlier is not None:
        results = keep(earlier, results, args.only)
    output: Path = args.output
    text = report.write(results, output)
    with (work / "results.pickle").open("wb") as fh:
        pickle.dump(results, fh)
    (work / "results.json").write_text(
        json.dumps(_plain({k: v for k, v in vars(results).items() if k != "args"}), indent=2, default=str)
    )
    print(text)
    say(f"wrote {output} in {elapsed / 60:.1f} min (raw results: {work / 'results.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
