"""What the benchmarks share: repository paths, statistics, formatting, goal verdicts."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Stat:
    """Median, min and max of repeated measurements."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        data = list(values)
        if not data:
            raise ValueError("no measurements")
        return cls(statistics.median(data), min(data), max(data), len(data))

    def seconds(self, digits: int = 3) -> str:
        return f"{self.median:.{digits}f} s ({self.low:.{digits}f}–{self.high:.{digits}f})"

    def millis(self) -> str:
        return f"{self.median * 1000:.0f} ms ({self.low * 1000:.0f}–{self.high * 1000:.0f})"


@dataclass(frozen=True)
class Goal:
    """One goal of the benchmark and whether this run met it."""

    name: str
    met: bool
    detail: str  # the numbers, and by how much it was met or missed

    def line(self) -> str:
        return f"- **{self.name}: {'met' if self.met else 'MISSED'}** — {self.detail}"


def size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    if n < 1024**3:
        return f"{n / 1024 / 1024:.1f} MiB"
    return f"{n / 1024**3:.2f} GiB"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> str:
    """A markdown table; ``align`` has one letter per column, l or r (default: first l, rest r)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def say(message: str) -> None:
    """Progress on stderr, with the wall-clock time, so a long run shows where it is."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
