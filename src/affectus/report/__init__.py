"""`affectus report`: one self-contained HTML page (plus PNGs) for a run or an experiment.

DIR is a finished run directory (it holds run.json) or an experiment directory holding runs
anywhere below it (found by globbing for run.json). Inside an experiment, rows are the spec's rows,
named and ordered as in `results.md` (runs.py). Sections, each left out when it cannot apply to
the runs' models (sections.py):

- runs and results: mean +- std over seeds per row;
- a curve per numeric grid axis: temperature (Table VIII) for model.tau, retention (Figs. 4-5,
  with least-squares slopes) for train.consistent_retention;
- training curves: the per-epoch histories of every stage;
- PLGM label flips (Fig. 6), MCR router weights on D_msi samples (Fig. 7, needs `data=` to predict);
- confusion matrices for categorical schemes (per-class F1 is in the results table; needs `data=`);
- TensorBoard event files (see evaluation/tensorboard.py).

The page is rendered by a Jinja2 template with autoescaping (page.py, templates/report.html).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from affectus.report import sections
from affectus.report.page import Page
from affectus.report.runs import find_runs, least_squares_slope, mean_std
from affectus.utils.io import write_bytes_atomic, write_text_atomic

log = logging.getLogger(__name__)


def build_report(root: str | Path, data: Any = None, out: str | Path | None = None, tensorboard: bool = True,
                 max_samples: int = 30, trust_pickle: bool = False) -> Path:
    """Write OUT/report.html (default DIR/report/) and its PNGs; returns the HTML path.

    data: a dataset file (str / Path, or 'synth:PRESET'), a loaded `MERDataset`, or None (the router
    section then says it needs --data). tensorboard: also write each run's event files when it has
    none. Raises AffectusError when DIR holds no finished run.
    """
    root = Path(root)
    runs, axes, skipped = find_runs(root)
    out_dir = Path(out) if out is not None else root / "report"
    if isinstance(data, (str, Path)):
        from affectus.data.load import open_data

        dataset = open_data(data, trust_pickle=trust_pickle)[0]
    else:
        dataset = data

    page = Page()
    page.section("Runs", sections.overview(runs, axes, skipped))
    page.section("Results", sections.results(runs, axes))
    for key in sections.curve_axes(runs, axes):
        title = sections.CURVES[key][1] if key in sections.CURVES else f"Metrics against {key}"
        page.section(title, sections.curve(page, runs, axes, key))
    optional = [("Missing modalities (CUMDF Tables 1-2, drop-ratio figure)", sections.missing_modalities(page, runs, axes)),
                ("Training curves", sections.training(page, runs, axes)),
                ("PLGM pseudo-label flips (Fig. 6)", sections.flips(page, runs, axes, dataset, max_samples)),
                ("MCR router weights on D_msi samples (Fig. 7)",
                 sections.router(page, runs, axes, dataset, max_samples)),
                ("Confusion matrices", sections.confusion(runs, axes, dataset))]
    for title, blocks in optional:
        if blocks is not None:
            page.section(title, blocks)
    if tensorboard:
        page.section("TensorBoard", sections.tensorboard(runs, root))

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"{root.resolve()} · {len(runs)} run(s) · made {when} · affectus report"
    for name, png in page.figures.items():
        write_bytes_atomic(out_dir / name, png)
    path = out_dir / "report.html"
    write_text_atomic(path, page.render(f"affectus report: {root.resolve().name}", subtitle))
    # debug, not info: the CLI prints its own "wrote" line, and one is enough
    log.debug("wrote %s (%d figures, %d runs)", path, len(page.figures), len(runs))
    return path


__all__ = ["build_report", "find_runs", "least_squares_slope", "mean_std"]
