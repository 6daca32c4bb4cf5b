#!/usr/bin/env python3
"""How long `nesop-deb build` takes for ONE changed file as the repository grows.

    bench/build_time.py [--sizes 100,1000,10000] [--runs 5] [--json PATH] [--work DIR]

For each size it generates (once) a git repository of that many tracked files, tagged v1.0.0,
then changes one file and tags v1.0.1. It times `nesop-deb build` of v1.0.1 (the update: one
file) `--runs` times as a subprocess, the way a developer runs it, and reports the median, min
and max, the ratio to the smallest repository's median, and the size of the update .deb next to
a `--full` package of the same release.

Goal: with 10,000 files a build takes at most 2x the time it takes with 100 files, because the
work should follow the change, not the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

GOAL_RATIO = 2.0
FIRST_COMMIT = 1704103200  # fixed dates and identity: the same repositories on every run
IDENTITY = {
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
}
CONFIG = """\
[app]
name = "bench-app"
root = "/opt/bench-app"
writable = ["data"]

[package]
maintainer = "Bench <bench@example.com>"

[files]
exclude = ["tests/**", "docs/**", "nesop-deb.toml", "**/*.pyc"]

[migrations]
dir = "migrations"
database = "sqlite:////opt/bench-app/data/app.db"
"""
CHANGED = "app/module_0000/file_0000.py"


@dataclass(frozen=True)
class Result:
    files: int
    runs: int
    median_s: float
    min_s: float
    max_s: float
    ratio: float  # median / median of the smallest repository
    update_deb_bytes: int
    full_deb_bytes: int
    full_build_s: float


def hermetic_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        IDENTITY,
        HOME=str(home),
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        LC_ALL="C.UTF-8",
        TZ="UTC",
    )
    env.pop("SOURCE_DATE_EPOCH", None)
    return env


def _content(i: int) -> bytes:
    """1-3 KiB of deterministic text: what a small source file weighs."""
    seed = hashlib.sha256(str(i).encode()).hexdigest()
    lines = [f"# file {i}\n"] + [f"VALUE_{n} = '{seed[n % 64 :]}{seed}'\n" for n in range(10 + i % 20)]
    return "".join(lines).encode()


def _path(i: int) -> str:
    # 50 files per directory, directories in two levels: a plausible tree rather than one flat dir
    return f"app/module_{i // 50:04}/file_{i % 50:04}.py"


def _git(repo: Path, env: dict[str, str], *args: str, when: int | None = None) -> None:
    if when is not None:
        env = {**env, "GIT_AUTHOR_DATE": f"{when} +0000", "GIT_COMMITTER_DATE": f"{when} +0000"}
    # no automatic gc in the background: it would race the explicit one and the timings
    result = subprocess.run(
        ["git", "-c", "gc.auto=0", "-C", str(repo), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed in {repo}: {result.stderr.strip()}")


def make_repo(path: Path, files: int, env: dict[str, str]) -> None:
    """``files`` tracked files (the config and one migration included); v1.0.0, then v1.0.1."""
    path.mkdir(parents=True)
    _git(path, env, "init", "--quiet", "--template=", "--initial-branch=main")
    (path / "nesop-deb.toml").write_text(CONFIG)
    (path / "migrations").mkdir()
    (path / "migrations/0001_initial.sql").write_text("CREATE TABLE item (id INTEGER PRIMARY KEY);\n")
    for i in range(files - 2):
        target = path / _path(i)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_content(i))
    _git(path, env, "add", "--all")
    _git(path, env, "commit", "--quiet", "--message", "1.0.0", when=FIRST_COMMIT)
    _git(path, env, "tag", "v1.0.0")
    with (path / CHANGED).open("ab") as fh:
        fh.write(b"FIXED = True\n")
    _git(path, env, "commit", "--quiet", "--all", "--message", "1.0.1", when=FIRST_COMMIT + 3600)
    _git(path, env, "tag", "v1.0.1")
    _git(path, env, "gc", "--quiet")  # packed, as a real repository's history mostly is


def time_build(
    nesop_deb: Path, repo: Path, out: Path, env: dict[str, str], *options: str
) -> tuple[float, Path]:
    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    result = subprocess.run(
        [str(nesop_deb), "build", "-C", str(repo), "--output", str(out), *options],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"nesop-deb build failed in {repo}:\n{result.stderr}")
    return elapsed, Path(result.stdout.splitlines()[-1])


def measure(nesop_deb: Path, sizes: list[int], runs: int, work: Path) -> list[Result]:
    env = hermetic_env(work / "home")
    (work / "home").mkdir(parents=True, exist_ok=True)
    repos = {}
    for n in sizes:
        repo = work / f"repo-{n}"
        if not (repo / ".git").exists():
            print(f"generating a repository of {n} files...", file=sys.stderr)
            make_repo(repo, n, env)
        repos[n] = repo
    results: list[Result] = []
    # warm up once (page cache, Python bytecode), then interleave the sizes run by run so a
    # slow moment of the machine does not land on one size only
    for n in sizes:
        time_build(nesop_deb, repos[n], work / "out", env)
    times: dict[int, list[float]] = {n: [] for n in sizes}
    debs: dict[int, Path] = {}
    for _ in range(runs):
        for n in sizes:
            elapsed, deb = time_build(nesop_deb, repos[n], work / f"out-{n}", env)
            times[n].append(elapsed)
            debs[n] = deb
    base = statistics.median(times[sizes[0]])
    for n in sizes:
        update_size = debs[n].stat().st_size
        full_s, full = time_build(nesop_deb, repos[n], work / f"full-{n}", env, "--full")
        results.append(
            Result(
                files=n,
                runs=runs,
                median_s=statistics.median(times[n]),
                min_s=min(times[n]),
                max_s=max(times[n]),
                ratio=statistics.median(times[n]) / base,
                update_deb_bytes=update_size,
                full_deb_bytes=full.stat().st_size,
                full_build_s=full_s,
            )
        )
    return results


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"


def markdown(results: list[Result]) -> str:
    smallest = results[0].files
    lines = [
        f"### `nesop-deb build`: one changed file (median of {results[0].runs} runs)",
        "",
        f"Goal: {results[-1].files:,} files at most {GOAL_RATIO:g}x the {smallest:,}-file time.",
        "",
        f"| files | median | min | max | vs {smallest:,} files | update .deb | --full .deb | --full build |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.files:,} | {r.median_s:.3f} s | {r.min_s:.3f} s | {r.max_s:.3f} s | {r.ratio:.2f}x "
            f"| {_size(r.update_deb_bytes)} | {_size(r.full_deb_bytes)} | {r.full_build_s:.2f} s |"
        )
    worst = max(results, key=lambda r: r.ratio)
    verdict = "met" if worst.ratio <= GOAL_RATIO else "MISSED"
    lines += ["", f"Goal {verdict}: the largest ratio is {worst.ratio:.2f}x ({worst.files:,} files)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", default="100,1000,10000", help="repository sizes in files (comma-separated)"
    )
    parser.add_argument("--runs", type=int, default=5, help="timed builds per size (default 5)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--work", type=Path, help="keep the generated repositories here (reused next time)")
    parser.add_argument(
        "--nesop-deb", type=Path, default=Path(sys.executable).parent / "nesop-deb", help="the CLI to time"
    )
    args = parser.parse_args(argv)
    sizes = sorted(int(s.replace("_", "").replace(",", "")) for s in args.sizes.split(","))
    if args.runs < 1 or not sizes or sizes[0] < 3:
        parser.error("need at least one run and sizes of at least 3 files")
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        results = measure(args.nesop_deb, sizes, args.runs, args.work.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="nesop-bench-") as tmp:
            results = measure(args.nesop_deb, sizes, args.runs, Path(tmp))
    print(markdown(results), end="")
    if args.json is not None:
        data = {
            "benchmark": "build_time",
            "goal": f"{sizes[-1]} files at most {GOAL_RATIO:g}x the {sizes[0]}-file time",
            "goal_ratio": GOAL_RATIO,
            "goal_met": all(r.ratio <= GOAL_RATIO for r in results),
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "system": platform.platform(),
            },
            "results": [asdict(r) for r in results],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
