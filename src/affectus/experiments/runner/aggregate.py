"""Aggregation: the finished run directories alone give the per-run values, the mean and std per group,
and results.csv / results.md (so a resumed experiment writes the same files as an uninterrupted one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from affectus.data.presets import inputs_label
from affectus.data.schemes import get_scheme
from affectus.errors import AffectusError
from affectus.evaluation.results import mean_std
from affectus.experiments.runner.conditions import CONDITIONS_FILE, ROUTER_FILE
from affectus.experiments.runner.tables import _csv, _markdown, _union
from affectus.runs.checkpoints import split_fits
from affectus.utils.io import read_json_file, write_text_atomic


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, float | None]:
    """{'d_test': {'acc2': 80.1}} -> {'d_test.acc2': 80.1}; numbers and None only."""
    out: dict[str, float | None] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            out[f"{prefix}{k}"] = v
    return out


_PARAMS_CACHE: dict[str, int | None] = {}


def parameter_count(model_name: str, model_config: dict[str, Any]) -> int | None:
    """Non-BERT parameters of the model a run trained (the paper's "Size"), rebuilt from its config."""
    key = json.dumps([model_name, model_config], sort_keys=True)
    if key not in _PARAMS_CACHE:
        from affectus.models.registry import size_from_config

        try:
            _PARAMS_CACHE[key] = size_from_config(model_name, model_config)
        except (AffectusError, TypeError, ValueError):
            _PARAMS_CACHE[key] = None
    return _PARAMS_CACHE[key]


def aggregate(out_dir: str | Path) -> list[dict[str, Any]]:
    """Read the finished runs of OUT, write OUT/results.csv and OUT/results.md, return one row per group.

    A group is a table row at one grid point; its row holds mean and std (over its finished seeds)
    of every flattened metric (`d_test.acc2`, `modalities.audio.acc2`, `select.d_test.acc2`, ...),
    the number of seeds and the model's non-BERT parameter count."""
    out = Path(out_dir)
    plan_path = out / "experiment.json"
    if not plan_path.exists():
        raise AffectusError(f"{out}: no experiment.json; run `affectus experiment SPEC --out {out}` first")
    exp = read_json_file(plan_path, "experiment plan")
    runs: list[dict[str, Any]] = []
    for planned in exp["runs"]:
        info_path = out / planned["dir"] / "run.json"
        if info_path.exists():
            info = read_json_file(info_path, "run file")
            values = _flatten(info.get("metrics", {}))
            values.update(_flatten(info.get("select_metrics", {}), "select."))
            values.update(_condition_values(out / planned["dir"], exp))
            values.update(_router_values(out / planned["dir"], exp))
            # the recipe's wall time (run.json train_seconds): a table compares it only as a ratio to another
            # row of the same experiment, trained on the same machine in the same session
            values["train_seconds"] = info.get("train_seconds")
            runs.append({**planned, "values": values, "family": info.get("family"),
                         # what the model read (run.json text_inputs): "file", or the encoder, short
                         "inputs": inputs_label(info.get("text_inputs"), info.get("context")),
                         "params": parameter_count(info["model_name"], info["model_config"]),
                         # one class predicted for every sample of the reported split (trainer's check)
                         "degenerate": exp["eval_split"] in (info.get("degenerate") or {}),
                         # parts fitted on the scored split (None: the run does not record its fits), and
                         # the selection parts that chose on it (early stopping where it also selects)
                         **split_fits(info, exp["eval_split"])})
    groups: dict[str, dict[str, Any]] = {}
    for planned in exp["runs"]:
        g = groups.setdefault(planned["group"], {"group": planned["group"], "row": planned["row"],
                                                 "model": planned["model"], "variant": planned["variant"],
                                                 "grid": planned["grid"], "planned": 0, "runs": []})
        g["planned"] += 1
    for run in runs:
        groups[run["group"]]["runs"].append(run)
    _check_inputs_match(out, exp, runs)
    metric_keys = sorted({k for r in runs for k in r["values"]}, key=lambda k: (k.startswith("select."), k))
    rows: list[dict[str, Any]] = []
    for g in groups.values():
        done = g.pop("runs")
        mean, std = {}, {}
        for key in metric_keys:
            mean[key], std[key], _ = mean_std(r["values"].get(key) for r in done)
        rows.append({**g, "n_seeds": len(done), "seeds": [r["seed"] for r in done],
                     "inputs": ", ".join(sorted({r["inputs"] for r in done})),
                     "family": done[0]["family"] if done else None, "params": done[0]["params"] if done else None,
                     "n_degenerate": sum(r["degenerate"] for r in done), "mean": mean, "std": std,
                     "in_sample": _union(r["in_sample"] for r in done),
                     "selection": _union(r["selection"] for r in done)})
    write_text_atomic(out / "results.csv", _csv(exp, runs, rows, metric_keys))
    write_text_atomic(out / "results.md", _markdown(exp, rows, len(runs)))
    return rows


def _check_inputs_match(out: Path, exp: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """The finished runs read one set of inputs, unless the spec allows mixing (`mixed_inputs: true`). The
    spec's configs were checked before training; this catches what only the runs know (an encoder whose
    files changed between runs gives another fingerprint)."""
    seen = {r["inputs"]: r for r in reversed(runs)}
    if len(seen) > 1 and not exp.get("mixed_inputs"):
        (a, ra), (b, rb) = list(seen.items())[-2:]
        raise AffectusError(f"{out}: run {ra['id']} read inputs {a}, run {rb['id']} read {b}; one table compares "
                            f"models on one set of inputs (rerun them on the same inputs, or set `mixed_inputs: "
                            f"true` in the spec to put both in one table, marked)")


def _condition_values(run_dir: Path, exp: dict[str, Any]) -> dict[str, float | None]:
    """A run's condition scores, flattened as cond.{l,a}.has0_f1, plus cond.avg_f1: the mean headline F1
    over the spec's availability conditions (CUMDF's "average over the 7 conditions")."""
    path = run_dir / CONDITIONS_FILE
    report = exp.get("report") or {}
    if not path.exists() or not (report.get("conditions") or report.get("drop_ratios") or report.get("missing_rates")):
        return {}
    scores = read_json_file(path, "condition scores")
    out = _flatten({k: v for k, v in scores.items() if isinstance(v, dict)}, "cond.")
    f1 = get_scheme(exp.get("scheme") or exp.get("family") or "sims").f1_key
    from affectus.data.missing import condition_name, parse_available

    conds = [condition_name(parse_available(c)) for c in report.get("conditions", [])]
    vals = [out.get(f"cond.{c}.{f1}") for c in conds]
    if conds and all(v is not None for v in vals):
        out["cond.avg_f1"] = float(np.mean(vals))
    rates = sorted(report.get("missing_rates", []))
    points = [out.get(f"cond.r={r:g}.{f1}") for r in rates]
    if len(rates) >= 2 and all(v is not None for v in points):
        # area under F1(r) over the rates given, divided by their span: a mean F1 across missing rates
        out["cond.auc_f1"] = float(np.trapezoid(points, rates) / (rates[-1] - rates[0]))
    return out


def _router_values(run_dir: Path, exp: dict[str, Any]) -> dict[str, float | None]:
    """A run's mean router weights per availability condition of the spec, flattened as router.{l,a}.text
    (none for a model without a router, or before the runner scored the conditions)."""
    path = run_dir / ROUTER_FILE
    if not path.exists() or not (exp.get("report") or {}).get("conditions"):
        return {}
    weights = read_json_file(path, "router weights")
    weights = weights.get("weights") if isinstance(weights, dict) else None
    return _flatten(weights, "router.") if isinstance(weights, dict) else {}
