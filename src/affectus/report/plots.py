"""The report's figures, drawn with matplotlib into PNG bytes (no files, no global pyplot state).

matplotlib (a dependency) is imported lazily and drawn on the Agg canvas, so importing affectus
costs no matplotlib import and a headless server needs no display. Each function takes plain
numbers and returns PNG bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODALITY_COLORS = {"text": "#4C72B0", "audio": "#DD8452", "vision": "#55A868"}


def _figure(width: float, height: float) -> Any:
    # a bare Figure on the Agg canvas: thread-safe, nothing left open in pyplot's registry
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@dataclass
class Series:
    """One line: points (x, mean, std) and optionally a fitted line y = slope * x + intercept."""

    label: str
    x: Sequence[float]
    mean: Sequence[float]
    std: Sequence[float]
    fit: tuple[float, float] | None = None


@dataclass
class Panel:
    title: str
    ylabel: str
    series: list[Series] = field(default_factory=list)


def curves(panels: list[Panel], xlabel: str, title: str) -> bytes:
    """Side-by-side panels of mean +- std curves (Table VIII as a curve; Figs. 4-5 with their fits)."""
    fig = _figure(4.2 * len(panels) + 0.6, 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        for k, s in enumerate(panel.series):
            color = f"C{k % 10}"
            ax.errorbar(s.x, s.mean, yerr=s.std, fmt="o" if s.fit else "o-", color=color, capsize=3,
                        markersize=4, label=None if s.fit else s.label)
            if s.fit is not None:
                xs = np.linspace(min(s.x), max(s.x), 50)
                ax.plot(xs, s.fit[0] * xs + s.fit[1], "--", color=color, label=f"{s.label} (slope {s.fit[0]:+.2f})")
        ax.set_title(panel.title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _png(fig)


def training_curves(stages: dict[str, list[list[dict[str, Any]]]], title: str) -> bytes:
    """Rows = stages; left: training losses, right: validation losses; one thin line per seed.

    stages: stage name -> one history (list of per-epoch dicts) per run.
    """
    fig = _figure(10.0, 2.8 * len(stages) + 0.4)
    axes = fig.subplots(len(stages), 2, squeeze=False)
    for row, (stage, histories) in enumerate(stages.items()):
        for col, prefix in enumerate(("train_", "val_")):
            ax = axes[row][col]
            keys = sorted({k for h in histories for e in h for k in e if k.startswith(prefix)})
            for k, key in enumerate(keys):
                for j, history in enumerate(histories):
                    pts = [(e.get("epoch", i + 1), e[key]) for i, e in enumerate(history)
                           if isinstance(e.get(key), (int, float))]
                    if pts:
                        xs, ys = zip(*pts)
                        ax.plot(xs, ys, color=f"C{k % 10}", alpha=0.85 if len(histories) == 1 else 0.5,
                                linewidth=1.2, label=key if j == 0 else None, marker="." if len(xs) < 30 else None)
            ax.set_title(f"{stage}: {'training' if col == 0 else 'validation'}")
            ax.set_xlabel("epoch")
            _integer_ticks(ax)
            ax.grid(alpha=0.3)
            if keys:
                ax.legend(fontsize=7)
    fig.suptitle(title)
    return _png(fig)


def flip_history(counts: np.ndarray, modalities: Sequence[str], title: str) -> bytes:
    """Per-epoch number of training samples whose pseudo label differs from the initial label."""
    fig = _figure(6.0, 3.2)
    ax = fig.subplots()
    epochs = np.arange(1, counts.shape[0] + 1)
    for k, m in enumerate(modalities):
        ax.plot(epochs, counts[:, k], marker="o", markersize=3, color=MODALITY_COLORS.get(m), label=m)
    ax.set_xlabel("stage-1 epoch")
    _integer_ticks(ax)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, max(1, int(counts.max(initial=0)) * 1.1))
    ax.set_ylabel("flipped labels")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def router_weights(weights: np.ndarray, names: Sequence[str], notes: Sequence[str], correct: Sequence[bool],
                   modalities: Sequence[str], title: str) -> bytes:
    """Fig. 7 as a chart: one horizontal stacked bar per sample (the three router weights, summing
    to 1), the sample's truth / verdict / per-modality predictions written beside it.

    weights: (N, 3); names: y-axis labels; notes: text drawn right of each bar; correct: verdict right?
    """
    n = weights.shape[0]
    fig = _figure(11.0, 0.3 * n + 1.3)
    # bars on the left, their notes in a text-only axis on the right (text outside an axis would be clipped)
    ax, side = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1.0, 1.0]})
    y = np.arange(n)[::-1]  # first sample on top
    left = np.zeros(n)
    for k, m in enumerate(modalities):
        ax.barh(y, weights[:, k], left=left, color=MODALITY_COLORS.get(m), label=f"{m} weight", height=0.75)
        left += weights[:, k]
    for yi, note, ok in zip(y, notes, correct):
        side.text(0.0, yi, note, va="center", fontsize=7, family="monospace", color="black" if ok else "#B00020")
    side.axis("off")
    ax.set_yticks(y, names, fontsize=7)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlim(0, 1)
    ax.set_xlabel("router weight (MCR)")
    fig.suptitle(title, fontsize=10)
    fig.legend(loc="outside lower center", ncols=len(modalities), fontsize=7)
    return _png(fig)
