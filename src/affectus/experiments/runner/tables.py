"""The results files' text: results.csv and the paper-style Markdown tables (condition, router and slope
tables included)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np

from affectus.data.schemes import get_scheme
from affectus.evaluation.results import format_mean_std
from affectus.experiments.runner.conditions import condition_keys
from affectus.runs.checkpoints import IN_SAMPLE_MARK


def _union(parts_per_run) -> list[str] | None:
    """The parts any run fitted on the scored split, in first-seen order (None: some run does not say)."""
    out: list[str] = []
    for parts in parts_per_run:
        if parts is None:
            return None
        out += [p for p in parts if p not in out]
    return out


def _num(x: Any, digits: int | None = None) -> str:
    if x is None:
        return ""
    if isinstance(x, float) and digits is not None:
        return repr(round(x, digits))
    return repr(x) if isinstance(x, float) else str(x)


def _csv(exp: dict[str, Any], runs: list[dict], rows: list[dict], metric_keys: list[str]) -> str:
    grid_keys = list(exp.get("grid", {}))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    # in_sample: the parts fitted on the scored split, '+'-joined ('unknown' for a run that does not record them)
    w.writerow(["kind", "group", "row", "model", "variant", "inputs", *grid_keys, "seed", "n_seeds", "params",
                *metric_keys, "in_sample"])
    for r in runs:
        w.writerow(["run", r["group"], r["row"], r["model"], r["variant"], r["inputs"],
                    *[_num(r["grid"][k]) for k in grid_keys], r["seed"], "", _num(r["params"]),
                    *[_num(r["values"].get(k)) for k in metric_keys], _parts(r["in_sample"])])
    for g in rows:
        for kind in ("mean", "std"):
            w.writerow([kind, g["group"], g["row"], g["model"], g["variant"], g["inputs"],
                        *[_num(g["grid"][k]) for k in grid_keys], "", g["n_seeds"], _num(g["params"]),
                        *[_num(g[kind][k], 6) for k in metric_keys], _parts(g["in_sample"])])
    return buf.getvalue()


def _ratio(seconds: float | None, base: float) -> str:
    if seconds is None:
        return "-"
    ratio = seconds / base
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"  # 0.0034, not 0.00


def _parts(parts: list[str] | None) -> str:
    return "unknown" if parts is None else "+".join(parts)


def _markdown(exp: dict[str, Any], rows: list[dict], n_finished: int) -> str:
    scheme = get_scheme(exp.get("scheme") or exp.get("family") or "sims")  # older experiments: the family name
    report = exp.get("report") or {}
    grid_keys = list(exp.get("grid", {}))
    if report.get("columns") == "conditions":
        columns = [(f"{k} F1", f"cond.{k}.{scheme.f1_key}") for k in condition_keys(report)]
        if report.get("conditions"):
            columns.append(("Avg F1", "cond.avg_f1"))
        if len(report.get("missing_rates", [])) >= 2:
            columns.append(("AUC F1", "cond.auc_f1"))
    else:
        columns = scheme.modality_columns if report.get("columns") == "modalities" else scheme.columns
    # a column no row has a value for (e.g. MAE without a regression output) is left out
    columns = [(title, key) for title, key in columns if any(g["mean"].get(key) is not None for g in rows)] or columns
    lines = [f"# {exp['name']}", ""]
    if exp.get("description"):
        lines += [exp["description"], ""]
    lines += [f"Data `{exp['data']}`" + (f" (preset {exp['preset']})" if exp.get("preset") else "")
              + f", scored on split `{exp['eval_split']}`, label scheme {scheme.describe()}. Cells: mean ± sample std "
              f"over seeds (percent); Inputs: what the model read (`file`: the file's features as they are; else "
              f"the text inputs, encoder and its fingerprint); Params: non-BERT parameters.", ""]
    chose = _union(g["selection"] for g in rows)
    if chose:
        lines += [f"Split `{exp['eval_split']}` also selects: {', '.join(chose)} chose on it (the field's norm; "
                  + "not marked).", ""]
    total = len(exp["runs"])
    if n_finished < total:
        lines += [f"**{n_finished} of {total} runs finished**: re-run the same command to complete the experiment.", ""]
    finished = [g for g in rows if g["n_seeds"]]
    first_inputs = finished[0]["inputs"] if finished else ""
    mixed = len({g["inputs"] for g in finished}) > 1
    if mixed:
        lines += [("**Mixed inputs** (`mixed_inputs: true`): rows marked ≠ read other inputs than the first row "
                   f"(`{first_inputs}`); compare only rows with the same Inputs."), ""]
    # training time as a ratio to the first row's, measured in this experiment (this machine, this session)
    base = next((g["mean"].get("train_seconds") for g in finished), None)
    time_title = f"Time ×{finished[0]['row']}" if base else None
    header = ["Run", *grid_keys, *[c for c, _ in columns], "Inputs", "Params", *([time_title] if base else []),
              "Seeds"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for g in rows:
        marks = ((" ⚠" if g.get("n_degenerate") else "") + (f" {IN_SAMPLE_MARK}" if g.get("in_sample") != [] else "")
                 + (" ≠" if mixed and g["inputs"] != first_inputs and g["n_seeds"] else ""))
        cells = [g["row"] + marks, *[_num(g["grid"][k]) for k in grid_keys],
                 *[format_mean_std(g["mean"].get(key), g["std"].get(key)) for _, key in columns],
                 f"`{g['inputs']}`" if g["inputs"] else "-",
                 f"{g['params']:,}" if g["params"] is not None else "-",
                 *([_ratio(g["mean"].get("train_seconds"), base)] if base else []), str(g["n_seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    flagged = [g for g in rows if g.get("n_degenerate")]
    if flagged:
        lines += ["", f"⚠ degenerate: the model predicted one class for every sample of split `{exp['eval_split']}` "
                      "(its scores there are that class's share; see the run's run.json `warnings`) in "
                  + "; ".join(f"{g['row']}{_grid_text(g, grid_keys)}: {g['n_degenerate']} of {g['n_seeds']} seeds"
                              for g in flagged) + "."]
    in_sample = [g for g in rows if g.get("in_sample") != []]
    if in_sample:
        lines += ["", f"{IN_SAMPLE_MARK} in-sample: scored on split `{exp['eval_split']}`, which these rows fitted "
                      "parts on (their scores there are not held out): "
                  + "; ".join(f"{g['row']}{_grid_text(g, grid_keys)}: "
                              + ("unknown (run.json records no fits)" if g["in_sample"] is None
                                 else ", ".join(g["in_sample"])) for g in in_sample) + "."]
    if report.get("slope_over"):
        lines += ["", *_slopes(rows, report["slope_over"], grid_keys, scheme.slope_keys)]
    conditions = [k for k in condition_keys(report) if k.startswith("{")]
    if conditions:
        lines += _per_class_by_condition(rows, conditions, scheme, grid_keys)
        lines += _router_by_condition(rows, conditions, grid_keys)
    return "\n".join(lines) + "\n"


def _per_class_by_condition(rows: list[dict], conditions: list[str], scheme, grid_keys: list[str]) -> list[str]:
    """CUMDF Table 2's layout for a scheme with per-class F1 (categorical): per availability condition and
    row, each class's F1 and the weighted F1 (mean ± std over seeds)."""
    per_class = [(title, key) for title, key in scheme.columns if key.startswith("f1_")]
    if not per_class:
        return []
    columns = [*per_class, ("W-F1", scheme.f1_key)]
    lines = ["", "## Per-class F1 per availability condition (l = text, a = audio, v = vision)", "",
             "| " + " | ".join(["Condition", "Run", *grid_keys, *[t for t, _ in columns]]) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(grid_keys) + len(columns))) + "|"]
    for cond in conditions:
        for g in rows:
            cells = [cond, g["row"], *[_num(g["grid"][k]) for k in grid_keys],
                     *[format_mean_std(g["mean"].get(f"cond.{cond}.{key}"), g["std"].get(f"cond.{cond}.{key}"))
                       for _, key in columns]]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _router_by_condition(rows: list[dict], conditions: list[str], grid_keys: list[str]) -> list[str]:
    """Rows whose model has a router: its mean weight per modality under each availability condition."""
    from affectus.data.types import MODALITIES

    routed = [g for g in rows if any(k.startswith("router.") and v is not None for k, v in g["mean"].items())]
    if not routed:
        return []
    lines = ["", "## Router weight per availability condition", "",
             ("Mean router weight of each modality over the scored split (mean ± std over seeds). An absent "
              "modality's weight is what the router still gives its zero-filled input: 0 for a router that masks "
              "absent modalities (CMC-avail), not for faithful CMC."), "",
             "| " + " | ".join(["Run", *grid_keys, "Condition", *MODALITIES]) + " |",
             "|" + "|".join(["---"] * (2 + len(grid_keys)) + ["---:"] * len(MODALITIES)) + "|"]
    for g in routed:
        for cond in conditions:
            cells = [g["row"], *[_num(g["grid"][k]) for k in grid_keys], cond,
                     *[format_mean_std(g["mean"].get(f"router.{cond}.{m}"), g["std"].get(f"router.{cond}.{m}"))
                       for m in MODALITIES]]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _grid_text(g: dict[str, Any], grid_keys: list[str]) -> str:
    if not grid_keys:
        return ""
    return " (" + ", ".join(f"{k}={_num(g['grid'][k])}" for k in grid_keys) + ")"


def _slopes(rows: list[dict], x_key: str, grid_keys: list[str], keys) -> list[str]:
    """Least-squares slope of the seed-mean accuracy against a grid key, per row (paper sec. V-C)."""
    others = [k for k in grid_keys if k != x_key]
    series: dict[tuple, list[dict]] = {}
    for g in rows:
        series.setdefault((g["row"], *[json.dumps(g["grid"][k]) for k in others]), []).append(g)
    lines = [f"## Slope of accuracy vs `{x_key}` (least squares over the seed means; accuracy points per unit)", "",
             "| " + " | ".join(["Run", *others, *[f"{name} slope" for name, _ in keys], "Points"]) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(others) + len(keys) + 1)) + "|"]
    for (row, *other_vals), gs in series.items():
        cells = [row, *other_vals]
        for _, key in keys:
            pts = [(float(g["grid"][x_key]), g["mean"].get(key)) for g in gs if g["mean"].get(key) is not None]
            xs = {x for x, _ in pts}
            slope = float(np.polyfit([x for x, _ in pts], [y for _, y in pts], 1)[0]) if len(xs) >= 2 else None
            cells.append("-" if slope is None else f"{slope:.2f}")
        cells.append(str(len(gs)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines
