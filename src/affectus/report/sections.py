"""The report's sections, each a list of blocks (see page.py) built from the runs.

A section that cannot apply to the runs' models (a temperature curve when no run has a PFM
temperature, PLGM flips or router weights when no run has them) returns None and is left out. A
section that applies but lacks an input (the router weights without --data) says so in one note.
Everything read here is evaluation output: test labels are used for scoring and display only.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from affectus.report import plots
from affectus.report.page import Block, Cell, Page, Text, heading, note, table
from affectus.report.runs import (
    Run,
    curve_points,
    fmt,
    group_rows,
    is_number,
    least_squares_slope,
    mean_std,
    metric_value,
    short,
)
from affectus.runs.checkpoints import IN_SAMPLE_MARK, split_fits
from affectus.utils.names import slugify

TAU, RETENTION = "model.tau", "train.consistent_retention"
# grid axes with a paper figure of their own: (file prefix, section title); other numeric axes get a plain curve
CURVES = {TAU: ("temperature", "Temperature of PFM (Table VIII)"),
          RETENTION: ("retention", "Retention of D_msc training samples (Figs. 4-5)")}

# Columns come from each run's label scheme (data/schemes.py): the table results.md and the sweep use.
MAX_CURVE_ROWS = 12  # more rows than this: the per-run curves are in TensorBoard


# ============================================================================ what a run has


# what each label scheme's name stands for in a heading (data/schemes.py): the name alone reads as a dataset
# (a scheme without an entry is named by its own `describe()`: "categorical: angry, happy, neutral, sad")
SCHEME_RULES = {"sims": "sentiment, CH-SIMS rule (positive vs non-positive)",
                "mosi": "sentiment, MOSI rule (negative vs non-negative)"}


def _scheme_key(run: Run) -> str:
    import json

    return json.dumps(run.scheme.spec(), sort_keys=True)

def declares(run: Run, section: str) -> bool:
    """The run's model lists `section` among its report sections (models/registry.py); a model no longer
    registered is judged by what its run holds."""
    from affectus.errors import AffectusError
    from affectus.models.registry import get_model_entry

    try:
        return section in get_model_entry(str(run.info.get("model_name"))).report_sections
    except AffectusError:
        return True


def has_plgm(run: Run) -> bool:
    """PLGM ran: stage 1 counted its flips, or the run saved its pseudo labels."""
    stage1 = (run.info.get("stages") or {}).get("stage1")
    ran = (isinstance(stage1, dict) and "flips" in stage1) or (run.path / "pseudo_labels.csv").is_file()
    return ran and declares(run, "plgm_flips")


def has_router(run: Run) -> bool:
    """The model weighs its modalities with a router (MCR) whose weights the predictor returns: its registry
    entry declares one for the run's config (`Capabilities.router`)."""
    from affectus.errors import AffectusError
    from affectus.models.registry import get_model_entry

    config = run.info.get("model_config")
    if not isinstance(config, dict):  # a run that does not record its model (nothing can load it)
        return False
    try:
        routes = get_model_entry(str(run.info.get("model_name"))).can(config).router
    except (AffectusError, TypeError, ValueError):  # a model no longer registered (nothing can load it)
        return False
    return routes and declares(run, "router")


def _preferred(runs: list[Run]) -> list[Run]:
    """Runs in the order a single-run section picks from: full training data first, then the spec's order."""
    return sorted(runs, key=lambda r: (r.config.get(RETENTION, 1.0) != 1.0, r.order, r.run_id))


def _title(run: Run, axes: list[str]) -> tuple[str, str]:
    """(label for headings and figure titles, stem for file names) of one run: its row, and its seed."""
    row = group_rows([run], axes)[0]
    return f"{row.label}, seed {run.seed}", f"{row.stem}__seed={run.seed}" if run.group else row.stem


# ============================================================================ tables


def overview(runs: list[Run], axes: list[str], skipped: list[str]) -> list[Block]:
    rows = []
    for r in runs:
        epochs = "+".join(str(s.get("epochs", len(s.get("history") or []))) for s in
                          (r.info.get("stages") or {}).values() if isinstance(s, dict))
        rows.append([r.run_id, r.row, r.name, r.seed, *[short(r.axes.get(k, "–")) for k in axes],
                     r.info.get("metrics_split", "?"), epochs or "?"])
    header = ["run", "row", "model/variant", "seed", *axes, "scored on", "epochs"]
    return [table(header, rows, left=3, fold=f"{len(runs)} runs" if len(runs) > 12 else None),
            *[note(s) for s in skipped]]


def results(runs: list[Run], axes: list[str]) -> list[Block]:
    blocks: list[Block] = [note("mean ± sample std over the runs of each row (rows differ in everything but the "
                                "seed); n = runs. Accuracies and F1 in percent.")]
    # one table per scheme: categorical runs with other classes have other columns (one F1 per class)
    for key in sorted({_scheme_key(r) for r in runs}):
        fam_runs = [r for r in runs if _scheme_key(r) == key]
        family = fam_runs[0].family
        rows = group_rows(fam_runs, axes)
        cols = [(p, name) for name, p in fam_runs[0].scheme.columns
                if any(r.metric(p) is not None for r in fam_runs)]
        # the best mean per column, highlighted where the rows differ (lower is better only for MAE)
        means = {p: [mean_std([r.metric(p) for r in row.runs])[0] for row in rows] for p, _ in cols}
        best = {}
        for p, vals in means.items():
            present = [v for v in vals if v is not None]
            if len(set(present)) > 1:
                top = (min if p == "mae" else max)(present)
                if present.count(top) == 1:  # a tie for best is no best: nothing is highlighted
                    best[p] = top
        lines = []
        degenerate: list[str] = []
        marked: list[str] = []  # footnotes of the rows marked in-sample
        selected: list[str] = []
        for row in rows:
            # a run that predicted one class everywhere (run.json "degenerate"): its scores are that class's share
            single = sum(bool(r.info.get("degenerate")) for r in row.runs)
            label = row.row if not single else f"{row.row} ⚠"
            if single:
                degenerate.append(f"⚠ {row.row}: {single} of {len(row.runs)} run(s) predicted a single class on a "
                                  f"scored split (see their run.json 'warnings')")
            fitted, chose = _fits(row.runs)  # parts fitted / selections made on the split the row is scored on
            if fitted:
                label += f" {IN_SAMPLE_MARK}"
                marked.append(f"{IN_SAMPLE_MARK} in-sample: {row.label}: {fitted}; its scores there are not held out")
            if chose:
                selected.append(f"{row.label}: {chose}")
            inputs = ", ".join(sorted({r.inputs for r in row.runs}))
            cells: list[Any] = [label, *[short(row.axes.get(k, "–")) for k in axes], inputs, len(row.runs)]
            for p, _ in cols:
                mean, std, n = mean_std([r.metric(p) for r in row.runs])
                cells.append(Cell(fmt(mean, std, n), best=mean is not None and p in best and mean == best[p]))
            lines.append(cells)
        splits = sorted({str(r.info.get("metrics_split", "?")) for r in fam_runs})
        kinds = sorted({r.inputs for r in fam_runs})
        mixed = [note(f"≠ these rows read different inputs ({', '.join(kinds)}): compare only rows with the same "
                      f"inputs")] if len(kinds) > 1 else []
        presets = {(r.info.get("config") or {}).get("preset") for r in fam_runs if isinstance(r.info.get("config"), dict)}
        # a scheme's name is a dataset family's: say what it means, and that custom data only follows its rule
        what = SCHEME_RULES.get(family)
        named = f"label scheme {family}: {what}" if what else f"label scheme {fam_runs[0].scheme.describe()}"
        from affectus.data.schemes import RECORDED_ORIGIN

        recorded = all(r.info.get("scheme_origin") == RECORDED_ORIGIN for r in fam_runs)
        origin = "" if not presets <= {None} else ("; recorded in the data file" if recorded
                                                   else "; inferred from the labels (no preset)")
        blocks += [heading(named + origin
                           + f" (scored on {', '.join(splits)})"), *mixed,
                   table(["row", *axes, "inputs", "n", *[name for _, name in cols]], lines, left=2 + len(axes)),
                   *[note(text) for text in degenerate]]
        blocks += [note(text) for text in marked]
        if selected:
            blocks.append(note("selection on the scored split (the field's norm; not marked): " + "; ".join(selected)))
    return blocks


def _fits(runs: list[Run]) -> tuple[str, str]:
    """(what the runs fitted on the split they are scored on, e.g. "consensus, temperatures fitted on split
    'valid'"; the selection parts that chose there, e.g. "early_stopping on 'valid'"), '' where none."""
    fitted: dict[str, list[str]] = {}  # split -> parts
    chose: dict[str, list[str]] = {}
    for r in runs:
        split = str(r.info.get("metrics_split", "?"))
        fits = split_fits(r.info, split)
        parts = ["unknown (run.json records no fits)"] if fits["in_sample"] is None else fits["in_sample"]
        for into, found in ((fitted, parts), (chose, fits["selection"])):
            into.setdefault(split, [])
            into[split] += [p for p in found if p not in into[split]]
    return ("; ".join(f"{', '.join(p)} fitted on split '{s}'" for s, p in fitted.items() if p),
            "; ".join(f"{', '.join(p)} on '{s}'" for s, p in chose.items() if p))


# ============================================================================ missing modalities


def _conditions(run: Run) -> dict[str, Any]:
    """RUN/conditions.json (the runner's scores under availability conditions / drop ratios / missing rates)."""
    return _run_json(run, "conditions.json")


def _router_shift(run: Run) -> dict[str, Any]:
    """RUN/router_conditions.json's weights: {condition: {modality: mean router weight}}; {} without a router."""
    weights = _run_json(run, "router_conditions.json").get("weights")
    return weights if isinstance(weights, dict) else {}


def _run_json(run: Run, name: str) -> dict[str, Any]:
    """A JSON object the runner wrote into the run directory; {} when absent or unreadable."""
    path = run.path / name
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # Recursion: nested too deeply
        return {}
    return data if isinstance(data, dict) else {}


def missing_modalities(page: Page, runs: list[Run], axes: list[str]) -> list[Block] | None:
    """The condition table (headline F1 per availability condition, mean ± std over seeds) and the F1 curves
    against the MRMS drop ratio p and the random missing rate r; None when no run was scored that way."""
    scored = [r for r in runs if _conditions(r)]
    if not scored:
        return None
    blocks: list[Block] = [note("each run scored on its evaluation split with modalities removed (zeros, length 0; "
                                "the same masks for every model): headline F1, mean ± std over seeds")]
    for family in sorted({r.family for r in scored}):
        fam = [r for r in scored if r.family == family]
        f1 = fam[0].scheme.f1_key
        keys = list(dict.fromkeys(k for r in fam for k in _conditions(r)))
        fixed = sorted((k for k in keys if k.startswith("{")), key=_condition_order)
        rows = group_rows(fam, axes)

        def value(run: Run, key: str, f1: str = f1) -> float | None:
            return metric_value(_conditions(run).get(key) or {}, f1)

        if fixed:
            lines = []
            for row in rows:
                # scored on the evaluation split: in-sample where the row fitted parts there (the Results footnote)
                cells: list[Any] = [row.row + (f" {IN_SAMPLE_MARK}" if _fits(row.runs)[0] else ""), len(row.runs)]
                for k in fixed:
                    mean, std, n = mean_std([value(r, k) for r in row.runs])
                    cells.append(fmt(mean, std, n))
                per_run = [[value(r, k) for k in fixed] for r in row.runs]
                avg = [float(np.mean(v)) for v in per_run if all(x is not None for x in v)]
                cells.append(fmt(*mean_std(avg)))
                lines.append(cells)
            blocks += [heading(f"F1 per availability condition ({family}; l = text, a = audio, v = vision)"),
                       table(["row", "n", *fixed, "average"], lines, left=1)]
            blocks += _router_shift_table(rows, fixed, family)
        for prefix, label in (("p=", "MRMS drop ratio p"), ("r=", "random missing rate r")):
            points = sorted({float(k[2:]) for k in keys if k.startswith(prefix)})
            if len(points) < 2:
                continue
            panel = plots.Panel(f"{f1} vs {label}", f"{f1} (%)")
            for row in rows:
                xs, means, stds = [], [], []
                for x in points:
                    mean, std, _ = mean_std([value(r, f"{prefix}{x:g}") for r in row.runs])
                    if mean is not None:
                        xs.append(x)
                        means.append(mean)
                        stds.append(std or 0.0)
                if xs:
                    panel.series.append(plots.Series(row.row, xs, means, stds))
            name = f"missing_{prefix[0]}_{family}"
            blocks.append(page.figure(name, plots.curves([panel], label, f"{family}: F1 against {label}"),
                                      f"{family}: mean ± std over seeds against {label}"))
    return blocks


def _condition_order(name: str) -> int:
    """Position of '{l,a}' among the 7 conditions ({l}, {a}, {v}, {l,a}, {l,v}, {a,v}, {l,a,v}): the runner
    writes conditions.json with sorted keys, tables list them in CUMDF's order."""
    from affectus.data.missing import CONDITIONS, condition_name

    order = [condition_name(c) for c in CONDITIONS]
    return order.index(name) if name in order else len(order)


def _router_shift_table(rows: list[Any], conditions: list[str], family: str) -> list[Block]:
    """For rows whose model has a router: the mean weight per modality under each availability condition
    (mean ± std over seeds); empty when no row has one."""
    from affectus.data.types import MODALITIES

    lines = []
    for row in rows:
        shifts = [_router_shift(r) for r in row.runs]
        if not any(shifts):
            continue
        for cond in conditions:
            cells: list[Any] = [row.row, cond]
            for m in MODALITIES:
                vals = [(s.get(cond) or {}).get(m) for s in shifts]
                cells.append(fmt(*mean_std([float(v) for v in vals if is_number(v)])))
            cells.append(sum(cond in s for s in shifts))
            lines.append(cells)
    if not lines:
        return []
    return [heading(f"Router weight per availability condition ({family})"),
            note("mean router weight of each modality over the scored split, mean ± std over seeds; an absent "
                 "modality's weight is what the router still gives its zero-filled input (0 for a router that "
                 "masks absent modalities, e.g. CMC-avail)"),
            table(["row", "condition", *MODALITIES, "n"], lines, left=2)]


# ============================================================================ curves over a grid axis


def curve_axes(runs: list[Run], axes: list[str]) -> list[str]:
    """The axes worth a curve: at least two numeric values among the runs."""
    return [k for k in axes if len({float(r.axes[k]) for r in runs if is_number(r.axes.get(k))}) > 1]


def curve(page: Page, runs: list[Run], axes: list[str], x_key: str) -> list[Block]:
    """Metric vs one grid axis, one line per row (and other grid point); least-squares fits for retention."""
    fit = x_key == RETENTION
    prefix = CURVES[x_key][0] if x_key in CURVES else f"curve_{slugify(x_key)}"
    other = [k for k in axes if k != x_key]
    blocks: list[Block] = []
    if fit:
        blocks.append(note("slope: least-squares fit of the mean metric (percentage points) against the retention "
                           "rate (0-1), i.e. the change predicted from keeping none to keeping all D_msc samples."))
    for family in sorted({r.family for r in runs}):
        fam_runs = [r for r in runs if r.family == family and is_number(r.axes.get(x_key))]
        if not fam_runs:
            continue
        metrics = [(p, n) for n, p in fam_runs[0].scheme.slope_keys
                   if any(r.metric(p) is not None for r in fam_runs)]
        panels = [plots.Panel(name, f"{name} (%)") for _, name in metrics]
        slope_rows: list[list[Any]] = []
        tables: list[Block] = []  # one Table VIII-like table per line
        for row in group_rows(fam_runs, other):
            by_metric = {p: curve_points(row.runs, x_key, p) for p, _ in metrics}
            slopes: list[str] = []
            for panel, (p, _) in zip(panels, metrics):
                pts = by_metric[p]
                if not pts:
                    slopes.append("–")
                    continue
                xs, means, stds, _ns = (list(v) for v in zip(*pts))
                line = least_squares_slope(xs, means) if fit and len(set(xs)) >= 2 else None
                slopes.append("–" if line is None else f"{line[0]:+.2f}")
                panel.series.append(plots.Series(row.label, xs, means, stds, line))
            slope_rows.append([row.label, *slopes])
            tables += [heading(f"{row.label} ({family})"), _curve_table(x_key, by_metric, metrics)]
        # per family: slopes first (the numbers the paper quotes), then the figure, then the tables
        if fit and slope_rows:
            blocks += [heading(f"Slopes ({family} family)"),
                       table(["row", *[f"{n} slope" for _, n in metrics]], slope_rows)]
        if any(p.series for p in panels):
            png = plots.curves([p for p in panels if p.series], x_key, f"{family}: metric vs {x_key} (mean ± std)")
            blocks.append(page.figure(f"{prefix}_{family}", png, f"{family} family: mean ± std over seeds against "
                                                                 f"{x_key}"))
        blocks += tables
    return blocks


def _curve_table(x_key: str, by_metric: dict[str, list[tuple[float, float, float, int]]],
                 metrics: list[tuple[str, str]]) -> Block:
    """Table VIII's layout: one row per x value, one column per metric, the best mean in bold."""
    xs = sorted({x for pts in by_metric.values() for x, *_ in pts})
    best = {p: max(m for _, m, _, _ in pts) for p, pts in by_metric.items() if len({m for _, m, _, _ in pts}) > 1}
    rows = []
    for x in xs:
        cells: list[Any] = [short(x)]
        for p, _ in metrics:
            hit = [(m, s, n) for xx, m, s, n in by_metric[p] if xx == x]
            cells.append(Cell(fmt(*hit[0]) if hit else "–", best=bool(hit) and p in best and hit[0][0] == best[p]))
        rows.append(cells)
    return table([x_key, *[n for _, n in metrics]], rows)


# ============================================================================ per-epoch histories


def training(page: Page, runs: list[Run], axes: list[str]) -> list[Block] | None:
    """Per row and stage: the training losses and the validation numbers of every epoch, one line per seed."""
    blocks: list[Block] = [note("per-epoch training losses (train_*) and validation numbers (val_*) from "
                                "run.json, one line per seed; every run's curves are also in TensorBoard.")]
    rows = [row for row in group_rows(runs, axes) if any(_histories(r) for r in row.runs)]
    if not rows:
        return None
    for row in rows[:MAX_CURVE_ROWS]:
        stages: dict[str, list[list[dict[str, Any]]]] = {}
        for r in row.runs:
            for stage, history in _histories(r).items():
                stages.setdefault(stage, []).append(history)
        png = plots.training_curves(stages, row.label)
        blocks.append(page.figure(f"training_{row.stem}", png, f"{row.label}: training and validation "
                                                               f"({len(row.runs)} run(s))"))
    if len(rows) > MAX_CURVE_ROWS:
        blocks.append(note(f"{len(rows) - MAX_CURVE_ROWS} more rows not drawn: see TensorBoard"))
    return blocks


def _histories(run: Run) -> dict[str, list[dict[str, Any]]]:
    return {stage: s["history"] for stage, s in (run.info.get("stages") or {}).items()
            if isinstance(s, dict) and s.get("history")}


# ============================================================================ PLGM (Fig. 6)


def flips(page: Page, runs: list[Run], axes: list[str], dataset: Any, max_samples: int) -> list[Block] | None:
    from affectus.data.types import MODALITIES

    with_plgm = [r for r in runs if has_plgm(r)]
    if not with_plgm:
        return None
    blocks: list[Block] = []
    counted = [r for r in with_plgm if "flips" in ((r.info.get("stages") or {}).get("stage1") or {})]
    if len(counted) > 1:
        rows = [[r.row, r.seed, *[r.info["stages"]["stage1"]["flips"].get(m, "–") for m in MODALITIES]]
                for r in counted]
        blocks += [heading("Flipped pseudo labels per run (the labels handed to stage 2)"),
                   table(["row", "seed", *MODALITIES], rows)]
    run = next((r for r in _preferred(with_plgm) if (r.path / "pseudo_labels.csv").is_file()), None)
    if run is None:
        return blocks + [note("no run kept pseudo_labels.csv, so no per-sample flips")]
    with open(run.path / "pseudo_labels.csv", newline="", encoding="utf-8") as f:
        from affectus.utils.csv_cells import text_cell  # ids are written spreadsheet-safe

        samples = [{**s, "id": text_cell(s.get("id") or "")} for s in csv.DictReader(f)]
    label, stem = _title(run, axes)
    truth = _unimodal_truth(run, dataset)  # id -> {modality: class}, when the data has unimodal labels
    blocks.append(heading(f"{label}: {len(samples)} training samples"))
    if truth is None:
        blocks.append(note("with --data holding unimodal labels (CH-SIMS family), flips are also checked "
                           "against the dataset's own unimodal labels"))
    names = [run.scheme.short(c) for c in range(run.scheme.num_classes)]
    count_rows = []
    for m in MODALITIES:
        flipped_m = [s for s in samples if s.get(f"flipped_{m}") == "1"]
        moved = [(int(s[f"initial_{m}"]), int(s[f"label_{m}"])) for s in flipped_m]
        directions = ", ".join(f"{names[a]}→{names[b]}: {moved.count((a, b))}"
                               for a in range(len(names)) for b in range(len(names)) if a != b and (a, b) in moved)
        row = [m, len(moved), f"{100 * len(moved) / max(len(samples), 1):.1f}", directions or "–"]
        if truth is not None:
            known = [s for s in flipped_m if s["id"] in truth]
            agree = sum(truth[s["id"]][m] == int(s[f"label_{m}"]) for s in known)
            row.append(f"{agree} of {len(known)}" if known else "–")
        count_rows.append(row)
    blocks.append(table(["modality", "flipped", "% of train", "initial → final",
                         *(["final = dataset's label"] if truth is not None else [])], count_rows))
    flipped = [s for s in samples if s.get("flipped_text") == "1"]
    if flipped:
        rows = []
        for s in flipped[:max_samples]:
            soft = " / ".join(f"{names[c]} {float(s[f'soft_text_{c}']):.2f}" for c in range(len(names)))
            known = truth.get(s["id"]) if truth is not None else None
            rows.append([s["id"], f"{names[int(s['initial_text'])]} → {names[int(s['label_text'])]}", soft,
                         *([names[known["text"]] if known else "–"] if truth is not None else []),
                         Cell(s.get("raw_text") or "", prose=True)])
        blocks += [heading(f"Text labels PLGM flipped (first {len(rows)} of {len(flipped)})"),
                   table(["id", "multimodal → text", "final soft label",
                          *(["dataset's text label"] if truth is not None else []), "raw text"], rows)]
    else:
        blocks.append(note("PLGM flipped no text label in this run"))
    history = _flip_history(run.path / "bank.safetensors")
    if history is None:
        blocks.append(note("no per-epoch flip counts (bank.safetensors is missing or lacks flip_history)"))
    elif history.shape[0] > 0:
        png = plots.flip_history(history, MODALITIES, f"{label}: labels differing from the multimodal label")
        blocks.append(page.figure(f"flips_{stem}", png, "flipped pseudo labels after each stage-1 epoch"))
    return blocks


def _unimodal_truth(run: Run, dataset: Any) -> dict[str, dict[str, int]] | None:
    """id -> {modality: class} of the run's training split, from the data's unimodal labels (or None)."""
    from affectus.data.types import MODALITIES

    name = str((run.info.get("plan") or {}).get("train", "train"))
    if dataset is None or name not in dataset or dataset[name].unimodal_labels is None:
        return None
    split = dataset[name]
    classes = {m: run.scheme.to_classes(np.asarray(split.unimodal_labels[m])) for m in MODALITIES}
    return {str(sid): {m: int(classes[m][i]) for m in MODALITIES} for i, sid in enumerate(split.ids)}


def _flip_history(path: Path) -> np.ndarray | None:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
    except (OSError, ValueError, SafetensorError):  # a damaged bank file only costs this plot
        return None
    hist = tensors.get("flip_history")
    return None if hist is None else np.asarray(hist).reshape(-1, 3)


# ============================================================================ MCR router (Fig. 7)


def router(page: Page, runs: list[Run], axes: list[str], dataset: Any, max_samples: int) -> list[Block] | None:
    """Fig. 7: predict the run's evaluation split, show the router weights of D_msi samples."""
    with_router = [r for r in runs if has_router(r)]
    if not with_router:
        return None
    if dataset is None:
        return [note("needs the data to predict with: affectus report DIR --data FILE")]
    run = next((r for r in _preferred(with_router) if (r.path / "model.safetensors").is_file()), None)
    if run is None:
        return [note("no run with a router kept its weights (model.safetensors)")]
    split, problem = _scored_split(run, dataset)
    if split is None:
        return [note(problem)]
    from affectus.inference.predictor import load

    pred = load(run.path).predict(split)
    if pred.router_weights is None or pred.modality_classes is None:
        return [note(f"{run.row} returned no router weights")]
    return _router_blocks(page, run, _title(run, axes), split, pred, max_samples)


def _scored_split(run: Run, dataset: Any) -> tuple[Any, str]:
    """The split of `dataset` that `run` was scored on, or None and why the data cannot give it."""
    split_name = str(run.info.get("metrics_split", "test"))
    if split_name not in dataset:
        return None, f"the data has no '{split_name}' split (the split {run.run_id} was scored on)"
    if dict(dataset.dims) != dict(run.info.get("dims") or {}):
        return None, f"the data's feature dims {dataset.dims} are not the run's {run.info.get('dims')}"
    return dataset[split_name], ""


def _router_blocks(page: Page, run: Run, title: tuple[str, str], split: Any, pred: Any,
                   max_samples: int) -> list[Block]:
    from affectus.data.types import MODALITIES

    label, stem = title
    scheme = run.scheme
    names = [scheme.short(c) for c in range(scheme.num_classes)]
    truth = scheme.to_classes(split.labels)
    uni = split.unimodal_labels
    blocks: list[Block] = [heading(f"{label} ({run.run_id}) on split '{split.name}'")]
    if uni is not None:
        msc, msi = scheme.consistency_masks(split.labels, uni)
        subsets = {"D_msc": msc, "D_msi": msi}
        rows_idx, what = np.flatnonzero(msi)[:max_samples], "D_msi"
    else:
        subsets = {"all": np.ones(len(split), dtype=bool)}
        rows_idx, what = np.arange(min(len(split), max_samples)), "first"
        blocks.append(note("the data has no unimodal labels, so no D_msi: showing the split's first samples"))
    summary = []
    for sub, mask in subsets.items():
        if mask.any():
            w = pred.router_weights[mask].mean(0)
            acc = [100 * float((c[mask] == truth[mask]).mean()) for c in
                   (pred.classes, *[pred.modality_classes[:, k] for k in range(3)])]
            summary.append([sub, int(mask.sum()), *[f"{v:.3f}" for v in w], *[f"{a:.1f}" for a in acc]])
    blocks.append(table(["subset", "n", *[f"mean w_{m}" for m in MODALITIES], "final Acc3",
                         *[f"{m} own Acc3" for m in MODALITIES]], summary))
    if len(rows_idx) == 0:
        return blocks + [note(f"no {what} samples in this split")]

    def describe(i: int) -> str:
        own = " ".join(f"{m[0].upper()}:{names[int(pred.modality_classes[i, k])]}" for k, m in enumerate(MODALITIES))
        uni_truth = "" if uni is None else " (" + " ".join(
            f"{m[0].upper()}:{names[int(scheme.to_classes(np.asarray(uni[m][i:i + 1]))[0])]}" for m in MODALITIES) + ")"
        return f"truth {names[truth[i]]}{uni_truth} | pred {names[pred.classes[i]]} | own {own}"

    notes = [describe(int(i)) for i in rows_idx]
    ok = [bool(pred.classes[i] == truth[i]) for i in rows_idx]
    png = plots.router_weights(pred.router_weights[rows_idx], [split.ids[i][-18:] for i in rows_idx], notes, ok,
                               MODALITIES, f"{label}: router weights, {what} samples (red: wrong verdict)")
    blocks.append(page.figure(f"router_{stem}", png, f"MCR weights of {len(rows_idx)} {what} samples"))
    rows = [[split.ids[i], Cell(text, wrong=not good), " / ".join(f"{v:.2f}" for v in pred.router_weights[i]),
             Cell(split.raw_text[i] if split.raw_text else "", prose=True)]
            for i, text, good in zip(rows_idx, notes, ok)]
    blocks.append(table(["id", "labels (T/A/V = text/audio/vision)", "weights T / A / V", "raw text"], rows,
                        left=2))
    return blocks


# ============================================================================ confusion matrices


MAX_CONFUSION_ROWS = 8  # rows of an experiment shown as matrices; more are in each run's own report


def confusion(runs: list[Run], axes: list[str], dataset: Any) -> list[Block] | None:
    """Categorical schemes (MELD, IEMOCAP, emotions from clips): truth x prediction counts on the split each
    row was scored on, for the row's first run with weights. Needs the data to predict with (run folders keep
    metrics, not predictions). Per-class F1 is in the results table already (the scheme's columns)."""
    from affectus.data.schemes import CategoricalScheme

    cat = [r for r in runs if isinstance(r.scheme, CategoricalScheme)]
    if not cat:
        return None
    if dataset is None:
        return [note("needs the data to predict with: affectus report DIR --data FILE")]
    from affectus.inference.predictor import load

    blocks: list[Block] = [note("counts; rows: the true class, columns: the predicted class; the diagonal is right. "
                                "One run per row (its first seed with weights).")]
    rows = group_rows(cat, axes)
    for row in rows[:MAX_CONFUSION_ROWS]:
        run = next((r for r in _preferred(row.runs) if (r.path / "model.safetensors").is_file()), None)
        if run is None:
            blocks.append(note(f"{row.label}: no run kept its weights (model.safetensors)"))
            continue
        split, problem = _scored_split(run, dataset)
        if split is None:
            blocks.append(note(f"{row.label}: {problem}"))
            continue
        scheme = run.scheme
        truth = scheme.to_classes(split.labels)
        pred = np.asarray(load(run.path).predict(split).classes)
        k = scheme.num_classes
        counts = np.zeros((k, k), dtype=np.int64)
        np.add.at(counts, (truth, pred), 1)
        names = list(scheme.class_names)
        lines = [[Cell(name), *[Cell(str(int(v)), best=(i == j and v > 0)) for j, v in enumerate(counts[i])],
                  int(counts[i].sum())] for i, name in enumerate(names)]
        lines.append(["predicted", *[int(v) for v in counts.sum(0)], int(counts.sum())])
        blocks += [heading(f"{row.label} ({run.run_id}) on split '{split.name}'"),
                   table(["true \\ predicted", *names, "n"], lines)]
    if len(rows) > MAX_CONFUSION_ROWS:
        blocks.append(note(f"{len(rows) - MAX_CONFUSION_ROWS} more row(s) not shown: run `affectus report` on a run "
                           f"folder for its matrix"))
    return blocks


# ============================================================================ TensorBoard


def tensorboard(runs: list[Run], root: Path) -> list[Block]:
    from affectus.evaluation.tensorboard import write_tensorboard

    written, problems = 0, []
    for r in runs:
        try:
            written += write_tensorboard(r.path) is not None
        except (OSError, ValueError) as err:
            problems.append(f"{r.run_id}: {type(err).__name__}: {err}")
    logdir = root if len(runs) > 1 else root / "tensorboard"
    return [Text("paragraph", f"Per-epoch scalars of {written} run(s) are in RUN/tensorboard/ (written during training, "
                      f"or now from run.json for runs trained without them). Open them with"),
            Text("command", f"tensorboard --logdir {logdir}"), *[note(p) for p in problems]]
