"""The runs a report covers, how they are named and grouped into rows, and the numbers drawn from them.

Inside an experiment (an `experiment.json` at DIR, or two levels up from a run folder), every run
takes its row name and grid values from the plan the runner wrote, and rows keep the spec's order,
exactly as `results.md` lists them. Elsewhere (a lone run, or a folder of runs made by hand) a row
is `model/variant`, and the axes are the config keys that vary between runs of one model/variant.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from affectus.errors import AffectusError
from affectus.evaluation.results import mean_std
from affectus.utils.names import slugify

# config keys that differ between seeds of one row without making it another row
IGNORED_KEYS = {"train.seed", "train.threads", "train.device"}


@dataclass
class Run:
    path: Path
    run_id: str  # path relative to the report's DIR, or the run folder's name
    info: dict[str, Any]  # run.json
    config: dict[str, Any] = field(default_factory=dict)  # flattened: 'model', 'variant', 'model.tau', ...
    row: str = ""  # the spec's row name (in an experiment), else 'model/variant'
    axes: dict[str, Any] = field(default_factory=dict)  # grid key -> this run's value
    order: int = 0  # position in the spec's plan (rows x grid points x seeds), else in run-id order
    group: str | None = None  # the runner's group id (row slug + grid values) inside an experiment

    @property
    def family(self) -> str:
        """The label scheme's name (runs before schemes recorded the family only)."""
        return self.scheme.name

    @property
    def scheme(self):
        from affectus.data.schemes import get_scheme

        return get_scheme(self.info.get("scheme") or self.info.get("family", "mosi"))

    @property
    def seed(self) -> Any:
        return self.config.get("train.seed")

    @property
    def inputs(self) -> str:
        """What the model read, short (run.json `text_inputs`): "file", or the encoder and its fingerprint."""
        from affectus.data.presets import inputs_label

        return inputs_label(self.info.get("text_inputs"), self.info.get("context"))

    @property
    def name(self) -> str:
        return f"{self.config.get('model')}/{self.config.get('variant')}"

    def metric(self, path: str) -> float | None:
        return metric_value(self.info.get("metrics") or {}, path)


@dataclass
class Row:
    """Runs that share a row name and the values of the chosen axes (they differ in the seed)."""

    label: str  # for tables and figure titles: 'CMC model.tau=0.05'
    stem: str  # for file names: the runner's group id where there is one, else the label as a slug
    row: str
    axes: dict[str, Any]
    runs: list[Run]


def find_runs(root: str | Path) -> tuple[list[Run], list[str], list[str]]:
    """(runs in report order, the axes, notes on run.json files that were skipped) at or below `root`."""
    root = Path(root)
    if not root.is_dir():
        raise AffectusError(f"{root}: not a directory")
    paths = [root / "run.json"] if (root / "run.json").is_file() else sorted(root.rglob("run.json"))
    runs, notes = [], []
    for meta in paths:
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:  # Recursion: too deep
            notes.append(f"{meta}: skipped, unreadable ({type(err).__name__})")
            continue
        if not isinstance(info, dict) or not str(info.get("format", "")).startswith("affectus-run/"):
            notes.append(f"{meta}: skipped, not an affectus run")
            continue
        rel = meta.parent.relative_to(root).as_posix()
        runs.append(Run(meta.parent, rel if rel != "." else meta.parent.resolve().name, info,
                        flatten_config(info)))
    if not runs:
        raise AffectusError(f"{root}: no finished runs (no run.json at or below it)")
    found = _experiment_plan(root)
    axes = _name_from_plan(runs, *found) if found is not None else _name_by_model(runs)
    return sorted(runs, key=lambda r: (r.order, r.run_id)), axes, notes


def _experiment_plan(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """(EXP, its experiment.json) for `root` = EXP or a run folder EXP/runs/ID (None: not in an experiment)."""
    for folder in (root, root.parent.parent) if root.parent.name == "runs" else (root,):
        path = folder / "experiment.json"
        if path.is_file():
            try:
                plan = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
                raise AffectusError(f"{path}: unreadable ({type(err).__name__})") from None
            if isinstance(plan, dict) and str(plan.get("format", "")).startswith("affectus-experiment/"):
                entries = plan.get("runs")
                if not isinstance(entries, list) or not all(
                        isinstance(p, dict) and {"dir", "row", "group"} <= set(p) for p in entries):
                    raise AffectusError(f"{path}: 'runs' is not a list of planned runs (dir, row, group)")
                return folder, plan
    return None


def _name_from_plan(runs: list[Run], exp_dir: Path, plan: dict[str, Any]) -> list[str]:
    """Row names, grid values and order from the plan; runs it does not list are named by model."""
    planned = {(exp_dir / str(p["dir"])).resolve(): (i, p) for i, p in enumerate(plan["runs"])}
    axes = list(plan.get("grid") or {})
    strays = []
    for r in runs:
        hit = planned.get(r.path.resolve())
        if hit is None:
            strays.append(r)
            continue
        r.order, p = hit
        r.row, r.group = str(p["row"]), str(p["group"])
        r.axes = {k: _hashable(p.get("grid", {}).get(k)) for k in axes if k in p.get("grid", {})}
    for r in strays:  # after the planned runs, in id order
        r.order, r.row = len(planned), r.name
    return axes


def _name_by_model(runs: list[Run]) -> list[str]:
    """Rows are model/variant; axes are the keys that vary between runs of one model/variant."""
    ordered = sorted(runs, key=lambda r: r.run_id)
    by_name: dict[str, list[Run]] = {}
    for r in ordered:
        by_name.setdefault(r.name, []).append(r)
    axes = sorted({k for same in by_name.values() for k in _varying(same)})
    for i, r in enumerate(ordered):
        r.order, r.row = i, r.name
        r.axes = {k: r.config[k] for k in axes if k in r.config}
    return axes


def _varying(runs: Sequence[Run]) -> set[str]:
    keys = {k for r in runs for k in r.config} - IGNORED_KEYS - {"model", "variant"}
    return {k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1}


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
            flat[f"{section}.{key}"] = _hashable(value)
    return flat


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def group_rows(runs: Sequence[Run], keys: Sequence[str]) -> list[Row]:
    """Rows of `runs` (already in report order): same row name and same values of `keys`."""
    rows: dict[tuple[str, str], Row] = {}
    for r in runs:
        axes = {k: r.axes[k] for k in keys if k in r.axes}
        key = (r.row, repr(sorted(axes.items())))
        if key not in rows:
            label = " ".join([r.row, *[f"{k}={short(v)}" for k, v in axes.items()]])
            rows[key] = Row(label, slugify(label), r.row, axes, [])
        rows[key].runs.append(r)
    for row in rows.values():
        groups = {r.group for r in row.runs}
        if len(groups) == 1 and None not in groups:
            row.stem = str(groups.pop())
    return list(rows.values())


# ============================================================================ numbers


def metric_value(metrics: dict[str, Any], path: str) -> float | None:
    node: Any = metrics
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is None and path.startswith("d_test."):
        node = metrics.get(path.split(".", 1)[1])  # flat metrics: a sims-family file without unimodal labels
    return float(node) if isinstance(node, (int, float)) and math.isfinite(node) else None


def least_squares_slope(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line y = slope * x + intercept (Figs. 4-5's fits)."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xa.size != ya.size or np.unique(xa).size < 2:
        raise ValueError("a slope needs at least two distinct x values")
    xm, ym = xa.mean(), ya.mean()
    slope = float(((xa - xm) * (ya - ym)).sum() / ((xa - xm) ** 2).sum())
    return slope, float(ym - slope * xm)


def curve_points(runs: Sequence[Run], x_key: str, metric: str) -> list[tuple[float, float, float, int]]:
    """[(x, mean, std, n)] over the runs' values of axis `x_key`, sorted by x; x values without the metric dropped."""
    by_x: dict[float, list[float | None]] = {}
    for r in runs:
        x = r.axes.get(x_key)
        if is_number(x):
            by_x.setdefault(float(x), []).append(r.metric(metric))
    out = []
    for x in sorted(by_x):
        mean, std, n = mean_std(by_x[x])
        if mean is not None:
            out.append((x, mean, std or 0.0, n))
    return out


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def fmt(mean: float | None, std: float | None = None, n: int = 1) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 and std is not None else f"{mean:.2f}"
