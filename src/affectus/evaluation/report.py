"""`affectus report`: one self-contained HTML page (plus PNGs) for a run or an experiment.

DIR is a finished run directory (it holds run.json) or an experiment directory holding runs
anywhere below it (found by globbing for run.json, so nothing here depends on the runner's layout).
Grid values are read from each run's own resolved config, never from a results.csv. Sections:

- results: mean +- std over seeds per row (runs that differ only in train.seed form one row);
- temperature (Table VIII): metric vs model.tau, when runs vary it;
- retention (Figs. 4-5): metric vs train.consistent_retention with least-squares slopes;
- training curves: the per-epoch histories of both stages;
- PLGM label flips (Fig. 6): from pseudo_labels.csv and the bank's flip_history;
- MCR router weights on D_msi samples (Fig. 7): needs the data (`data=`) to predict;
- TensorBoard logs written per run (see tensorboard.py).

A section whose inputs are missing is replaced by a one-line note; it never fails the report.
Everything read here is evaluation output: test labels are used for scoring and display only.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from affectus.errors import AffectusError
from affectus.utils.io import write_bytes_atomic, write_text_atomic

# config keys that differ between seeds of one row without making it another row
IGNORED_KEYS = {"train.seed", "train.threads", "train.device"}
TAU, RETENTION = "model.tau", "train.consistent_retention"

# (path into run.json "metrics", column name); 'd_test.x' falls back to a flat 'x' (no unimodal labels)
TABLE_METRICS = {
    "sims": [("d_test.acc2", "D_test Acc2"), ("d_test.f1", "D_test F1"), ("d_msc.acc2", "D_msc Acc2"),
             ("d_msc.f1", "D_msc F1"), ("d_msi.acc2", "D_msi Acc2"), ("d_msi.f1", "D_msi F1"),
             ("acc3", "Acc3"), ("mae", "MAE"), ("corr", "Corr")],
    "mosi": [("has0_acc2", "Has0 Acc2"), ("has0_f1", "Has0 F1"), ("non0_acc2", "Non0 Acc2"),
             ("non0_f1", "Non0 F1"), ("acc3", "Acc3"), ("mae", "MAE"), ("corr", "Corr")],
}
# what the curves plot: the paper's Acc2 per subset (CH-SIMS family) or Has0 / Non0 Acc2 (MOSI family)
CURVE_METRICS = {
    "sims": [("d_test.acc2", "D_test Acc2"), ("d_msc.acc2", "D_msc Acc2"), ("d_msi.acc2", "D_msi Acc2")],
    "mosi": [("has0_acc2", "Has0 Acc2"), ("has0_f1", "Has0 F1"), ("non0_acc2", "Non0 Acc2"), ("non0_f1", "Non0 F1")],
}


# ============================================================================ runs and their numbers


@dataclass
class Run:
    path: Path
    run_id: str  # path relative to the report's DIR ('.'-free), or the run dir's name
    info: dict[str, Any]  # run.json
    config: dict[str, Any] = field(default_factory=dict)  # flattened: 'model', 'variant', 'model.tau', ...

    @property
    def family(self) -> str:
        return str(self.info.get("family", "mosi"))

    @property
    def seed(self) -> Any:
        return self.config.get("train.seed")

    @property
    def name(self) -> str:
        return f"{self.config.get('model')}/{self.config.get('variant')}"

    def metric(self, path: str) -> float | None:
        return metric_value(self.info.get("metrics") or {}, path)


def find_runs(root: str | Path) -> tuple[list[Run], list[str]]:
    """Finished runs at or below `root` (sorted by id) and notes on run.json files that were skipped."""
    root = Path(root)
    if not root.is_dir():
        raise AffectusError(f"{root}: not a directory")
    paths = [root / "run.json"] if (root / "run.json").is_file() else sorted(root.rglob("run.json"))
    runs, notes = [], []
    for meta in paths:
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            notes.append(f"{meta}: skipped, unreadable ({type(err).__name__})")
            continue
        if not isinstance(info, dict) or not str(info.get("format", "")).startswith("affectus-run/"):
            notes.append(f"{meta}: skipped, not an affectus run")
            continue
        rel = meta.parent.relative_to(root).as_posix()
        run = Run(meta.parent, rel if rel != "." else meta.parent.resolve().name, info)
        run.config = flatten_config(info)
        runs.append(run)
    if not runs:
        raise AffectusError(f"{root}: no finished runs (no run.json at or below it)")
    return runs, notes


def flatten_config(info: dict[str, Any]) -> dict[str, Any]:
    """The run's resolved config as {'model': name, 'variant': v, 'model.tau': 0.07, 'train.seed': 1, ...}."""
    cfg = info.get("config") or {}
    flat: dict[str, Any] = {"model": info.get("model_name", cfg.get("model_name")),
                            "variant": info.get("variant", cfg.get("variant"))}
    if cfg.get("preset"):
        flat["preset"] = cfg["preset"]
    source = (info.get("data") or {}).get("source")
    if source:
        flat["data"] = Path(str(source)).name
    for section in ("model", "train"):
        for key, value in (cfg.get(section) or {}).items():
            flat[f"{section}.{key}"] = tuple(value) if isinstance(value, list) else value
    return flat


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys whose value differs between runs (the experiment's grid axes), seeds excluded."""
    keys = sorted({k for r in runs for k in r.config} - IGNORED_KEYS)
    return [k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1]


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> dict[str, list[Run]]:
    """Rows: runs with equal values for `keys` (other than model / variant, which always name a row)."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        parts = [r.name] + [f"{k}={_short(r.config.get(k))}" for k in keys if k not in ("model", "variant")]
        groups.setdefault(" ".join(parts), []).append(r)
    return groups


def metric_value(metrics: dict[str, Any], path: str) -> float | None:
    node: Any = metrics
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is None and path.startswith("d_test."):
        node = metrics.get(path.split(".", 1)[1])  # flat metrics: a sims-family file without unimodal labels
    return float(node) if isinstance(node, (int, float)) and math.isfinite(node) else None


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std (ddof 1; 0 for one value), n) over the values that exist."""
    vals = np.array([v for v in values if v is not None], dtype=float)
    if vals.size == 0:
        return None, None, 0
    return float(vals.mean()), float(vals.std(ddof=1)) if vals.size > 1 else 0.0, int(vals.size)


def least_squares_slope(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line y = slope * x + intercept (Figs. 4-5's fits)."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xa.size != ya.size or np.unique(xa).size < 2:
        raise ValueError("a slope needs at least two distinct x values")
    xm, ym = xa.mean(), ya.mean()
    slope = float(((xa - xm) * (ya - ym)).sum() / ((xa - xm) ** 2).sum())
    return slope, float(ym - slope * xm)


def curve_points(runs: Sequence[Run], x_key: str, metric: str) -> list[tuple[float, float, float, int]]:
    """[(x, mean, std, n)] over the runs' values of `x_key`, sorted by x; x values without the metric dropped."""
    by_x: dict[float, list[float | None]] = {}
    for r in runs:
        x = r.config.get(x_key)
        if isinstance(x, (int, float)):
            by_x.setdefault(float(x), []).append(r.metric(metric))
    out = []
    for x in sorted(by_x):
        mean, std, n = mean_std(by_x[x])
        if mean is not None:
            out.append((x, mean, std or 0.0, n))
    return out


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _fmt(mean: float | None, std: float | None = None, n: int = 1) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 and std is not None else f"{mean:.2f}"


# ============================================================================ the page


class Page:
    """Collects sections (HTML) and figures (PNG bytes written beside the page and embedded in it)."""

    def __init__(self) -> None:
        self.sections: list[tuple[str, str]] = []
        self.figures: dict[str, bytes] = {}

    def section(self, title: str, body: str) -> None:
        self.sections.append((title, body))

    def figure(self, name: str, png: bytes | None, caption: str) -> str:
        if png is None:
            return ""
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:120] + ".png"
        self.figures[name] = png
        data = base64.b64encode(png).decode("ascii")
        return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(caption)} <span class=note>({html.escape(name)})</span></figcaption></figure>")

    def render(self, title: str, subtitle: str) -> str:
        toc = "".join(f'<li><a href="#s{i}">{html.escape(t)}</a></li>' for i, (t, _) in enumerate(self.sections))
        body = "".join(f'<section id="s{i}"><h2>{html.escape(t)}</h2>{b}</section>'
                       for i, (t, b) in enumerate(self.sections))
        return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
                f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><p class=note>{subtitle}</p>"
                f"<ul class=toc>{toc}</ul>{body}</body></html>\n")


_CSS = """body{font-family:system-ui,sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}th,td{border:1px solid #ccc;padding:.25em .55em;
text-align:right;vertical-align:top}th{background:#f3f3f3}td.l,th.l{text-align:left}td.text{text-align:left;max-width:38em}
figure{margin:1em 0}img{max-width:100%}figcaption,.note{color:#666;font-size:.85em}b.best{color:#0a6}
.wrong{color:#b00020}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}.toc{columns:2}"""


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1, raw: bool = False) -> str:
    """An HTML table; the first `left` columns left-aligned; cells escaped unless `raw`."""
    def cell(i: int, v: Any, tag: str) -> str:
        text = str(v) if raw and tag == "td" else html.escape(str(v))
        cls = " class=l" if i < left else (" class=text" if isinstance(v, _Text) else "")
        return f"<{tag}{cls}>{text}</{tag}>"

    head = "".join(cell(i, h, "th") for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell(i, v, "td") for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class _Text(str):
    """A table cell holding free text (left-aligned, wrapped)."""


def note(text: str) -> str:
    return f"<p class=note>{html.escape(text)}</p>"


# ============================================================================ building it


def build_report(root: str | Path, data: Any = None, out: str | Path | None = None, tensorboard: bool = True,
                 max_samples: int = 30, log: Callable[[str], None] | None = None, trust_pickle: bool = False) -> Path:
    """Write OUT/report.html (default DIR/report/) and its PNGs; returns the HTML path.

    data: a dataset file (str / Path, or 'synth:PRESET'), a loaded `MERDataset`, or None (the router
    section then says it needs --data). Raises AffectusError when DIR holds no finished run.
    """
    from affectus.evaluation import plots

    root = Path(root)
    runs, skipped = find_runs(root)
    out_dir = Path(out) if out is not None else root / "report"
    if isinstance(data, (str, Path)):
        from affectus.data.load import open_data

        dataset = open_data(data, trust_pickle=trust_pickle)[0]
    else:
        dataset = data
    keys = varying_keys(runs)
    can_plot = plots.available()
    page = Page()

    _overview(page, runs, keys, skipped)
    _results(page, runs, keys)
    for x_key, title in ((TAU, "Temperature of PFM (Table VIII)"), (RETENTION, "Retention of D_msc training samples (Figs. 4-5)")):
        if x_key in keys:
            page.section(title, curve_section(page, runs, keys, x_key, can_plot))
        else:
            page.section(title, note(f"skipped: the runs do not vary {x_key}"))
    page.section("Training curves", training_section(page, runs, keys, can_plot))
    page.section("PLGM pseudo-label flips (Fig. 6)", flips_section(page, runs, dataset, can_plot, max_samples))
    page.section("MCR router weights on D_msi samples (Fig. 7)", router_section(page, runs, dataset, can_plot, max_samples))
    page.section("TensorBoard", _tensorboard(runs, root, tensorboard))
    if not can_plot:
        page.sections.insert(0, ("Figures", note("matplotlib is not installed: tables only (pip install matplotlib)")))

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = html.escape(f"{root.resolve()} · {len(runs)} run(s) · made {when} · affectus report")
    for name, png in page.figures.items():
        write_bytes_atomic(out_dir / name, png)
    path = out_dir / "report.html"
    write_text_atomic(path, page.render(f"affectus report: {root.resolve().name}", subtitle))
    if log:
        log(f"wrote {path} ({len(page.figures)} figures, {len(runs)} runs)")
    return path


def _overview(page: Page, runs: list[Run], keys: list[str], skipped: list[str]) -> None:
    header = ["run", "model/variant", "seed", *[k for k in keys if k not in ("model", "variant")], "scored on",
              "epochs"]
    rows = []
    for r in runs:
        epochs = "+".join(str(s.get("epochs", len(s.get("history") or []))) for s in
                          (r.info.get("stages") or {}).values() if isinstance(s, dict))
        rows.append([r.run_id, r.name, r.seed, *[_short(r.config.get(k)) for k in keys if k not in ("model", "variant")],
                     r.info.get("metrics_split", "?"), epochs or "?"])
    body = table(header, rows, left=2)
    if len(runs) > 12:
        body = f"<details><summary>{len(runs)} runs</summary>{body}</details>"
    page.section("Runs", body + "".join(note(s) for s in skipped))


def _results(page: Page, runs: list[Run], keys: list[str]) -> None:
    parts = [note("mean ± sample std over the runs of each row (rows differ in everything but the seed); "
                  "n = runs. Accuracies and F1 in percent.")]
    for family in sorted({r.family for r in runs}):
        fam_runs = [r for r in runs if r.family == family]
        groups = group_runs(fam_runs, keys)
        cols = [(p, name) for p, name in TABLE_METRICS.get(family, TABLE_METRICS["mosi"])
                if any(r.metric(p) is not None for r in fam_runs)]
        # the best mean per column, highlighted where the rows differ (lower is better only for MAE)
        means = {p: [mean_std([r.metric(p) for r in g])[0] for g in groups.values()] for p, _ in cols}
        best = {p: (min if p == "mae" else max)(v for v in vals if v is not None)
                for p, vals in means.items() if len({v for v in vals if v is not None}) > 1}
        rows = []
        for label, group in groups.items():
            cells: list[Any] = [label, len(group)]
            for p, _ in cols:
                mean, std, n = mean_std([r.metric(p) for r in group])
                text = html.escape(_fmt(mean, std, n))
                top = mean is not None and p in best and mean == best[p]
                cells.append(f"<b class=best>{text}</b>" if top else text)
            rows.append(cells)
        splits = sorted({str(r.info.get("metrics_split", "?")) for r in fam_runs})
        parts.append(f"<h3>{html.escape(family)} family (scored on {html.escape(', '.join(splits))})</h3>")
        parts.append(table(["row", "n", *[name for _, name in cols]], rows, raw=True))
    page.section("Results", "".join(parts))


def _tensorboard(runs: list[Run], root: Path, enabled: bool) -> str:
    if not enabled:
        return note("skipped (--no-tensorboard)")
    from affectus.evaluation.tensorboard import write_tensorboard

    written, problems = 0, []
    for r in runs:
        try:
            written += write_tensorboard(r.path) is not None
        except (OSError, ValueError) as err:
            problems.append(f"{r.run_id}: {type(err).__name__}: {err}")
    logdir = root if len(runs) > 1 else root / "tensorboard"
    return (f"<p>Scalar logs of every epoch's history written for {written} run(s) into "
            f"<code>RUN/tensorboard/</code>. Open them with</p><pre>tensorboard --logdir {html.escape(str(logdir))}</pre>"
            + "".join(note(p) for p in problems))


# ============================================================================ sections


def curve_section(page: Page, runs: list[Run], keys: list[str], x_key: str, can_plot: bool) -> str:
    """Metric vs one grid axis, one line per other grid point; with least-squares fits for retention."""
    from affectus.evaluation import plots

    fit = x_key == RETENTION
    other = [k for k in keys if k != x_key]
    parts: list[str] = []
    if fit:
        parts.append(note("slope: least-squares fit of the mean metric (percentage points) against the retention "
                          "rate (0-1), i.e. the change predicted from keeping none to keeping all D_msc samples."))
    for family in sorted({r.family for r in runs}):
        fam_runs = [r for r in runs if r.family == family and isinstance(r.config.get(x_key), (int, float))]
        metrics = [(p, n) for p, n in CURVE_METRICS.get(family, CURVE_METRICS["mosi"])
                   if any(r.metric(p) is not None for r in fam_runs)]
        panels = [plots.Panel(name, f"{name} (%)") for _, name in metrics]
        slope_rows: list[list[Any]] = []
        tables: list[str] = []  # one Table VIII-like table per line
        for label, group in group_runs(fam_runs, other).items():
            by_metric = {p: curve_points(group, x_key, p) for p, _ in metrics}
            slopes: list[str] = []
            for panel, (p, _) in zip(panels, metrics):
                pts = by_metric[p]
                if not pts:
                    slopes.append("–")
                    continue
                xs, means, stds, _ns = (list(v) for v in zip(*pts))
                line = least_squares_slope(xs, means) if fit and len(set(xs)) >= 2 else None
                slopes.append("–" if line is None else f"{line[0]:+.2f}")
                panel.series.append(plots.Series(label, xs, means, stds, line))
            slope_rows.append([label, *slopes])
            tables.append(f"<h3>{html.escape(label)} ({html.escape(family)})</h3>" + _curve_table(x_key, by_metric, metrics))
        # per family: slopes first (the numbers the paper quotes), then the figure, then the tables
        if fit and slope_rows:
            parts.append(f"<h3>Slopes ({html.escape(family)} family)</h3>"
                         + table(["row", *[f"{n} slope" for _, n in metrics]], slope_rows))
        if can_plot and any(p.series for p in panels):
            png = plots.curves([p for p in panels if p.series], x_key, f"{family}: metric vs {x_key} (mean ± std)")
            parts.append(page.figure(f"{'retention' if fit else 'temperature'}_{family}", png,
                                     f"{family} family: mean ± std over seeds against {x_key}"))
        parts.extend(tables)
    return "".join(parts) or note(f"no run has a numeric {x_key}")


def _curve_table(x_key: str, by_metric: dict[str, list[tuple[float, float, float, int]]],
                 metrics: list[tuple[str, str]]) -> str:
    """Table VIII's layout: one row per x value, one column per metric, the best mean in bold."""
    xs = sorted({x for pts in by_metric.values() for x, *_ in pts})
    best = {p: max(m for _, m, _, _ in pts) for p, pts in by_metric.items() if len({m for _, m, _, _ in pts}) > 1}
    rows = []
    for x in xs:
        cells: list[Any] = [_short(x)]
        for p, _ in metrics:
            hit = [(m, s, n) for xx, m, s, n in by_metric[p] if xx == x]
            text = html.escape(_fmt(*hit[0])) if hit else "–"
            cells.append(f"<b class=best>{text}</b>" if hit and p in best and hit[0][0] == best[p] else text)
        rows.append(cells)
    return table([x_key, *[n for _, n in metrics]], rows, raw=True)


MAX_CURVE_ROWS = 12  # more rows than this: the per-run curves are in TensorBoard


def training_section(page: Page, runs: list[Run], keys: list[str], can_plot: bool) -> str:
    from affectus.evaluation import plots

    if not can_plot:
        return note("skipped: needs matplotlib")
    parts: list[str] = [note("losses per epoch from run.json; one line per seed. Stage 1 validates each "
                             "modality's EMA model (val_ce_*), stage 2 the total loss (val_loss).")]
    groups = group_runs(runs, keys)
    for i, (label, group) in enumerate(groups.items()):
        if i == MAX_CURVE_ROWS:
            parts.append(note(f"{len(groups) - i} more rows not drawn: see TensorBoard"))
            break
        stages: dict[str, list[list[dict[str, Any]]]] = {}
        for r in group:
            for stage, summary in (r.info.get("stages") or {}).items():
                if isinstance(summary, dict) and summary.get("history"):
                    stages.setdefault(stage, []).append(summary["history"])
        if stages:
            parts.append(page.figure(f"training_{label}", plots.training_curves(stages, label),
                                     f"{label}: training and validation losses ({len(group)} run(s))"))
    return "".join(parts) if len(parts) > 1 else note("skipped: no run has a per-epoch history")


def _preferred(runs: list[Run]) -> list[Run]:
    """Runs in the order a single-run section picks from: the full model at full retention first."""
    return sorted(runs, key=lambda r: (r.config.get("variant") != "cmc", r.config.get(RETENTION, 1.0) != 1.0, r.run_id))


def flips_section(page: Page, runs: list[Run], dataset: Any, can_plot: bool, max_samples: int) -> str:
    import csv

    from affectus.data.types import MODALITIES
    from affectus.evaluation import plots

    parts: list[str] = []
    counted = [r for r in runs if isinstance((r.info.get("stages") or {}).get("stage1"), dict)
               and "flips" in r.info["stages"]["stage1"]]
    if len(counted) > 1:
        rows = [[r.run_id, r.name, *[r.info["stages"]["stage1"]["flips"].get(m, "–") for m in MODALITIES]]
                for r in counted]
        parts.append("<h3>Flipped pseudo labels per run (the labels handed to stage 2)</h3>"
                     + table(["run", "model/variant", *MODALITIES], rows, left=2))
    run = next((r for r in _preferred(runs) if (r.path / "pseudo_labels.csv").is_file()), None)
    if run is None:
        return "".join(parts) + note("skipped: no run has pseudo_labels.csv (PLGM is CMC's stage 1)")
    with open(run.path / "pseudo_labels.csv", newline="", encoding="utf-8") as f:
        samples = list(csv.DictReader(f))
    truth = _unimodal_truth(run, dataset)  # id -> {modality: class}, when the data has unimodal labels
    parts.append(f"<h3>Run {html.escape(run.run_id)}: {len(samples)} training samples</h3>")
    if truth is None:
        parts.append(note("with --data holding unimodal labels (CH-SIMS family), flips are also checked "
                          "against the dataset's own unimodal labels"))
    names = plots.CLASS_SHORT
    count_rows = []
    for m in MODALITIES:
        flipped_m = [s for s in samples if s.get(f"flipped_{m}") == "1"]
        moved = [(int(s[f"initial_{m}"]), int(s[f"label_{m}"])) for s in flipped_m]
        directions = ", ".join(f"{names[a]}→{names[b]}: {moved.count((a, b))}"
                               for a in range(3) for b in range(3) if a != b and (a, b) in moved)
        row = [m, len(moved), f"{100 * len(moved) / max(len(samples), 1):.1f}", directions or "–"]
        if truth is not None:
            known = [s for s in flipped_m if s["id"] in truth]
            agree = sum(truth[s["id"]][m] == int(s[f"label_{m}"]) for s in known)
            row.append(f"{agree} of {len(known)}" if known else "–")
        count_rows.append(row)
    parts.append(table(["modality", "flipped", "% of train", "initial → final",
                        *(["final = dataset's label"] if truth is not None else [])], count_rows, left=1))
    flipped = [s for s in samples if s.get("flipped_text") == "1"]
    if flipped:
        rows = []
        for s in flipped[:max_samples]:
            soft = " / ".join(f"{names[c]} {float(s[f'soft_text_{c}']):.2f}" for c in range(3))
            known = truth.get(s["id"]) if truth is not None else None
            rows.append([s["id"], f"{names[int(s['initial_text'])]} → {names[int(s['label_text'])]}", soft,
                         *([names[known["text"]] if known else "–"] if truth is not None else []),
                         _Text(s.get("raw_text") or "")])
        parts.append(f"<h3>Text labels PLGM flipped (first {len(rows)} of {len(flipped)})</h3>"
                     + table(["id", "multimodal → text", "final soft label",
                              *(["dataset's text label"] if truth is not None else []), "raw text"], rows, left=1))
    else:
        parts.append(note("PLGM flipped no text label in this run"))
    bank = run.path / "bank.safetensors"
    history = _flip_history(bank) if bank.is_file() else None
    if history is not None and history.shape[0] > 0 and can_plot:
        png = plots.flip_history(history, MODALITIES, f"{run.run_id}: labels differing from the multimodal label")
        parts.append(page.figure(f"flips_{run.run_id}", png, "flipped pseudo labels after each stage-1 epoch"))
    elif history is None:
        parts.append(note("no per-epoch flip counts (bank.safetensors lacks flip_history)"))
    return "".join(parts)


def _unimodal_truth(run: Run, dataset: Any) -> dict[str, dict[str, int]] | None:
    """id -> {modality: class} of the run's training split, from the data's unimodal labels (or None)."""
    from affectus.data.types import MODALITIES, to_classes

    name = str((run.info.get("plan") or {}).get("train", "train"))
    if dataset is None or name not in dataset or dataset[name].unimodal_labels is None:
        return None
    split = dataset[name]
    classes = {m: to_classes(np.asarray(split.unimodal_labels[m])) for m in MODALITIES}
    return {str(sid): {m: int(classes[m][i]) for m in MODALITIES} for i, sid in enumerate(split.ids)}


def _flip_history(path: Path) -> np.ndarray | None:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, ValueError, SafetensorError):  # a damaged bank file only costs this plot
        return None
    hist = tensors.get("flip_history")
    return None if hist is None else np.asarray(hist).reshape(-1, 3)


def router_section(page: Page, runs: list[Run], dataset: Any, can_plot: bool, max_samples: int) -> str:
    """Fig. 7: predict the run's evaluation split, show the router weights of D_msi samples."""
    if dataset is None:
        return note("skipped: needs the data to predict with (affectus report DIR --data FILE)")
    run = next((r for r in _preferred(runs) if r.config.get("model.use_router", True) is not False
                and (r.path / "model.safetensors").is_file()), None)
    if run is None:
        return note("skipped: no run with a router (MCR) and saved weights")
    split_name = str(run.info.get("metrics_split", "test"))
    if split_name not in dataset:
        return note(f"skipped: the data has no '{split_name}' split (the split {run.run_id} was scored on)")
    if dict(dataset.dims) != dict(run.info.get("dims") or {}):
        return note(f"skipped: the data's feature dims {dataset.dims} are not the run's {run.info.get('dims')}")
    from affectus.inference.predictor import load

    split = dataset[split_name]
    pred = load(run.path).predict(split)
    if pred.router_weights is None or pred.modality_classes is None:
        return note(f"skipped: {run.name} has no router weights")
    return _router_body(page, run, split, pred, can_plot, max_samples)


def _router_body(page: Page, run: Run, split: Any, pred: Any, can_plot: bool, max_samples: int) -> str:
    from affectus.data.types import MODALITIES, to_classes
    from affectus.evaluation import plots
    from affectus.evaluation.subsets import consistency_masks

    names = plots.CLASS_SHORT
    truth = to_classes(split.labels)
    uni = split.unimodal_labels
    parts = [f"<h3>Run {html.escape(run.run_id)} on split '{html.escape(split.name)}'</h3>"]
    if uni is not None:
        msc, msi = consistency_masks(split.labels, uni)
        subsets = {"D_msc": msc, "D_msi": msi}
        rows_idx, what = np.flatnonzero(msi)[:max_samples], "D_msi"
    else:
        subsets = {"all": np.ones(len(split), dtype=bool)}
        rows_idx, what = np.arange(min(len(split), max_samples)), "first"
        parts.append(note("the data has no unimodal labels, so no D_msi: showing the split's first samples"))
    summary = []
    for sub, mask in subsets.items():
        if mask.any():
            w = pred.router_weights[mask].mean(0)
            acc = [100 * float((c[mask] == truth[mask]).mean()) for c in
                   (pred.classes, *[pred.modality_classes[:, k] for k in range(3)])]
            summary.append([sub, int(mask.sum()), *[f"{v:.3f}" for v in w], *[f"{a:.1f}" for a in acc]])
    parts.append(table(["subset", "n", *[f"mean w_{m}" for m in MODALITIES], "final Acc3",
                        *[f"{m} own Acc3" for m in MODALITIES]], summary))
    if len(rows_idx) == 0:
        return "".join(parts) + note(f"no {what} samples in this split")

    def label(i: int) -> str:
        own = " ".join(f"{m[0].upper()}:{names[int(pred.modality_classes[i, k])]}" for k, m in enumerate(MODALITIES))
        uni_truth = "" if uni is None else " (" + " ".join(
            f"{m[0].upper()}:{names[int(to_classes(np.asarray(uni[m][i:i + 1]))[0])]}" for m in MODALITIES) + ")"
        return f"truth {names[truth[i]]}{uni_truth} | pred {names[pred.classes[i]]} | own {own}"

    notes_ = [label(int(i)) for i in rows_idx]
    ok = [bool(pred.classes[i] == truth[i]) for i in rows_idx]
    if can_plot:
        png = plots.router_weights(pred.router_weights[rows_idx], [split.ids[i][-18:] for i in rows_idx], notes_, ok,
                                   MODALITIES, f"{run.run_id}: router weights, {what} samples (red: wrong verdict)")
        parts.append(page.figure(f"router_{run.run_id}", png, f"MCR weights of {len(rows_idx)} {what} samples"))
    rows = []
    for i, n_, good in zip(rows_idx, notes_, ok):
        w = " / ".join(f"{v:.2f}" for v in pred.router_weights[i])
        text = split.raw_text[i] if split.raw_text else ""
        cls = "" if good else " class=wrong"
        rows.append([html.escape(split.ids[i]), f"<span{cls}>{html.escape(n_)}</span>", w,
                     _Text(html.escape(text))])
    parts.append(table(["id", "labels (T/A/V = text/audio/vision)", "weights T / A / V", "raw text"], rows, left=2,
                       raw=True))
    return "".join(parts)
