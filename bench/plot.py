"""The /health timeline plot: up and down over time, an update next to a bare restart."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bench.server import OpResult

# matplotlib is in requirements/bench.txt, which `make bench` installs. It is imported only when
# a plot is drawn, so the report's other code (and its unit tests) runs without it; `make lint`
# type-checks bench/ without it too, so a missing matplotlib must not fail mypy (it is Any then).
if TYPE_CHECKING:
    from matplotlib.axes import Axes  # type: ignore[import-not-found, unused-ignore]

UP, DOWN = "#2e7d32", "#c62828"
BEFORE = 0.05  # seconds shown before the first failed probe in the zoomed panels
# journal events marked in the zoomed panels, and which side of its line each label goes
EVENTS = (
    ("at_stopped", "Stopped", "right"),
    ("at_started", "Started", "left"),
    ("at_listening", "listening", "center"),
)


def _spans(op: OpResult, shift: float = 0.0) -> list[tuple[float, float, bool]]:
    """(start, end, up) runs of equal probe results; each probe lasts until the next one."""
    spans: list[tuple[float, float, bool]] = []
    samples = op.timeline
    for i, s in enumerate(samples):
        end = samples[i + 1].t if i + 1 < len(samples) else s.t + 0.002
        if spans and spans[-1][2] == s.ok:
            spans[-1] = (spans[-1][0], end - shift, s.ok)
        else:
            spans.append((s.t - shift, end - shift, s.ok))
    return spans


def _draw(ax: Axes, op: OpResult, left: float, right: float, shift: float = 0.0) -> None:
    for start, end, ok in _spans(op, shift):
        ax.axvspan(start, end, ymin=0.2, ymax=0.7, color=UP if ok else DOWN, linewidth=0)
    ax.set_xlim(left, right)
    ax.set_yticks([])
    ax.spines[["left", "right", "top"]].set_visible(False)


def health_timeline(rows: list[tuple[str, OpResult]], out: Path) -> Path:
    """One row per operation: the whole command on the left; on the right the outage, aligned
    at the first failed probe, with systemd's and the app's journal events marked."""
    from matplotlib.figure import Figure  # type: ignore[import-not-found, unused-ignore]

    fig = Figure(figsize=(12, 1.2 * len(rows) + 1.2))
    axes = fig.subplots(len(rows), 2, squeeze=False, gridspec_kw={"width_ratios": [1, 1]})
    longest = max(op.timeline[-1].t for _, op in rows if op.timeline)
    widest = max((op.outage.seconds for _, op in rows if op.outage), default=0.2)
    for (label, op), (whole, zoom) in zip(rows, axes, strict=True):
        _draw(whole, op, min(0.0, op.timeline[0].t if op.timeline else 0.0), longest)
        whole.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
        if op.outage is None:
            zoom.set_axis_off()
            continue
        shift = op.outage.start
        _draw(zoom, op, -BEFORE, widest + 0.1, shift)
        zoom.annotate(
            f"down {op.outage.seconds * 1000:.0f} ms",
            xy=(op.outage.seconds / 2, 0.78),
            xycoords=("data", "axes fraction"),
            ha="center",
            fontsize=9,
        )
        for key, name, side in EVENTS:
            if key in op.service:
                x = op.service[key] - shift
                zoom.axvline(x, ymin=0.1, ymax=0.75, color="black", linewidth=0.8, linestyle=":")
                zoom.annotate(name, xy=(x, 0.02), xycoords=("data", "axes fraction"), fontsize=7, ha=side)
    axes[-1][0].set_xlabel("seconds since the command started")
    axes[-1][1].set_xlabel("seconds since the first failed probe (dotted: the container's journal)")
    axes[0][0].set_title("/health seen from the host, every ~2 ms (green: 2xx, red: no 2xx)", fontsize=10)
    axes[0][1].set_title("the outage, zoomed", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
