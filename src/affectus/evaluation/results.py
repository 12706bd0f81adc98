"""Aggregating results over seeds: the one mean ± std convention of every table, report and benchmark.

Mean and **sample** standard deviation (ddof = 1) over the seeds that produced a value, as MMSA and the
papers report; with one value there is no spread to estimate, so the std is None (shown without ±).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std or None for fewer than two values, n) over the values that are not None / NaN."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return None, None, 0
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None), int(arr.size)


def format_mean_std(mean: float | None, std: float | None, digits: int = 2) -> str:
    """'80.12 ± 1.03', '80.12' for one seed, '-' for none."""
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"
