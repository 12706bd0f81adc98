"""Run an experiment spec: every run in its own directory, resumable, then mean +- std tables.

    OUT/experiment.json        the expanded, resolved plan (what `affectus report` reads)
    OUT/runs/<id>/             one `train_run` directory per run (run.json marks it finished)
    OUT/results.csv            one line per finished run + mean and std lines per group
    OUT/results.md             the paper-style table(s)

Re-running the same command is the resume: finished runs are skipped, interrupted ones (state.pt)
continue with `train_run(..., resume=True)` (bit-identical to an uninterrupted run), the rest train.
Results are computed from the finished run directories alone, so an interrupted-and-resumed
experiment writes the same results files as an uninterrupted one.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from affectus.data.load import open_data, source_id
from affectus.errors import AffectusError
from affectus.evaluation.results import format_mean_std, mean_std
from affectus.evaluation.schemes import get_scheme
from affectus.experiments.spec import ExperimentSpec, PlannedRun, expand, load_spec
from affectus.utils.io import write_json_atomic, write_text_atomic
from affectus.utils.threads import torch_threads

Log = Callable[[str], None]


def cpu_cores() -> int:
    """Cores this process may use (the affinity mask, not the machine's count, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _comparable(config: dict[str, Any]) -> str:
    """A config as JSON, without what does not change results (threads: set per worker)."""
    d = json.loads(json.dumps(config))
    d.get("train", {}).pop("threads", None)
    return json.dumps(d, sort_keys=True)


def _check_out_dir(out: Path, runs: list[PlannedRun], data: str, preset: str | None) -> None:
    """Refuse to mix results: a run folder made from another config, or an OUT made from other data."""
    previous = out / "experiment.json"
    if previous.exists():
        old = json.loads(previous.read_text(encoding="utf-8"))
        if (old.get("data"), old.get("preset")) != (data, preset):
            raise AffectusError(f"{out}: holds an experiment on data {old.get('data')} (preset {old.get('preset')}), "
                                f"not {data} (preset {preset}); choose another --out")
    for run in runs:
        stored = out / "runs" / run.id / "config.json"
        if stored.exists():
            old_cfg = json.loads(stored.read_text(encoding="utf-8"))
            if _comparable(old_cfg) != _comparable(run.config.to_dict()):
                raise AffectusError(f"{stored.parent}: was trained with another configuration than the spec now "
                                    f"gives run '{run.id}'; choose another --out or delete that folder")


def _needs_unimodal(run: PlannedRun) -> bool:
    """Whether a run needs unimodal labels: data retention (Figs. 4-5), or its recipe says so (CMC-GT)."""
    from affectus.models.registry import get_model_entry

    recipe = get_model_entry(run.config.model_name).get_recipe()
    asks = getattr(recipe, "needs_unimodal_labels", None)
    return run.config.train.consistent_retention < 1.0 or bool(asks and asks(run.config.recipe))


# ------------------------------------------------------------------------------------ one run


def _train_one(ds, plan, run_dir: Path, config: dict[str, Any], threads: int, data_source: str) -> float:
    """Train (or resume) one run; returns the seconds `train_run` took."""
    from affectus.training.config import ResolvedConfig
    from affectus.training.loop import training_log
    from affectus.training.trainer import train_run

    cfg = ResolvedConfig.from_dict(config)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))
    resume = (run_dir / "state.pt").exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with torch_threads(cfg.train.threads), training_log(run_dir / "train.log"):
        train_run(ds, cfg, run_dir, plan, resume=resume, data_source=data_source)
    return time.perf_counter() - started


# Worker processes (spawn): each loads the data once, then trains the runs it is handed.
_WORKER: dict[str, Any] = {}


def _worker_init(data: str, preset_name: str | None, threads: int, trust_pickle: bool = False) -> None:
    from affectus.training.plgm import enable_flush_denormal
    from affectus.training.trainer import plan_for

    enable_flush_denormal()  # before torch starts its threads: the flag reaches only threads made later
    import torch

    torch.set_num_threads(threads)
    ds, preset = open_data(data, preset_name, trust_pickle=trust_pickle)
    _WORKER.update(ds=ds, plan=plan_for(ds, preset), data=data, threads=threads)


def _worker_run(run_id: str, run_dir: str, config: dict[str, Any]) -> tuple[str, float]:
    try:
        seconds = _train_one(_WORKER["ds"], _WORKER["plan"], Path(run_dir), config, _WORKER["threads"], _WORKER["data"])
    except AffectusError as err:
        raise AffectusError(f"run {run_id}: {err}") from None
    return run_id, seconds


# -------------------------------------------------------------------------------------- the runner


def run_experiment(
    spec: str | Path | dict[str, Any] | ExperimentSpec,
    out_dir: str | Path,
    data: str | None = None,
    preset: str | None = None,
    seeds: int | list[int] | None = None,
    jobs: int = 1,
    overrides: dict[str, Any] | None = None,
    threads: int = 0,
    progress: bool = True,
    log: Log | None = None,
    trust_pickle: bool = False,
) -> dict[str, Any]:
    """Run (or resume) every run of `spec` into `out_dir`, then aggregate; returns a summary.

    data / preset / seeds override the spec's; overrides are --set values for every run; jobs > 1
    trains in that many spawned worker processes; threads = torch threads per run (0: cores // jobs).
    Summary keys: name, out, runs, finished_before, resumed, trained, run_seconds {id: s},
    wall_seconds, groups (the rows `aggregate` returns).
    """
    from affectus.data.presets import load_preset
    from affectus.training.trainer import plan_for

    started = time.perf_counter()
    say = log or (lambda _line: None)
    sp = load_spec(spec)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise AffectusError(f"--jobs {jobs}: expected a positive integer")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise AffectusError(f"--threads {threads}: expected a non-negative integer (0: cores // jobs)")
    preset_name = preset or sp.preset
    preset_obj = load_preset(preset_name) if preset_name else None
    runs = expand(sp, preset_obj, seeds, overrides)  # every config resolved: nothing has run yet
    data = data or sp.data
    if not data:
        raise AffectusError(f"{sp.source}: no data: give --data FILE (or `data:` in the spec)")
    data_id = source_id(data)
    out = Path(out_dir)
    _check_out_dir(out, runs, data_id, preset_name)

    ds = open_data(data, preset_obj, trust_pickle=trust_pickle)[0]
    plan = plan_for(ds, preset_obj)
    if not ds.has_unimodal_labels:
        bad = [r.id for r in runs if _needs_unimodal(r)]
        if bad:
            raise AffectusError(f"{data}: run {bad[0]} needs unimodal labels (cmc_gt or train.consistent_retention "
                                f"< 1), which this data lacks")
    write_json_atomic(out / "experiment.json", {
        "format": "affectus-experiment/1", "name": sp.name, "description": sp.description, "spec": sp.source,
        "data": data_id, "preset": preset_name, "family": plan.family, "scheme": plan.scheme.spec(),
        "eval_split": plan.eval,
        "select_split": plan.select, "seeds": sorted({r.seed for r in runs}), "overrides": dict(overrides or {}),
        "grid": {k: list(v) for k, v in sp.grid.items()}, "report": dataclasses.asdict(sp.report),
        "runs": [r.to_dict() for r in runs],
    })

    finished = [r for r in runs if (out / "runs" / r.id / "run.json").exists()]
    pending = [r for r in runs if not (out / "runs" / r.id / "run.json").exists()]
    resumed = sum((out / "runs" / r.id / "state.pt").exists() for r in pending)
    per_run = max(1, cpu_cores() // jobs) if threads == 0 else threads
    say(f"{sp.name}: {len(runs)} runs; {len(finished)} finished before, {resumed} to resume, "
        f"{len(pending) - resumed} to train ({jobs} job(s) x {per_run} thread(s))")
    run_seconds: dict[str, float] = {}
    if pending:
        if jobs == 1:
            _run_serial(pending, out, ds, plan, per_run, data, run_seconds, progress, len(finished), len(runs))
        else:
            del ds  # each worker loads its own copy
            _run_parallel(pending, out, (data, preset_name, per_run, trust_pickle), jobs, run_seconds, progress,
                          len(finished), len(runs))
    groups = aggregate(out)
    return {"name": sp.name, "out": str(out), "runs": len(runs), "finished_before": len(finished),
            "resumed": resumed, "trained": len(pending), "run_seconds": run_seconds,
            "wall_seconds": time.perf_counter() - started, "groups": groups}


def _progress_bar(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), disable=not enabled)


def _run_serial(pending, out, ds, plan, threads, data, run_seconds, progress, done, total) -> None:
    with _progress_bar(progress) as bar:
        task = bar.add_task("runs", total=total, completed=done)
        for run in pending:
            bar.update(task, description=run.id)
            try:
                run_seconds[run.id] = _train_one(ds, plan, out / "runs" / run.id, run.config.to_dict(), threads, data)
            except AffectusError as err:
                raise AffectusError(f"run {run.id}: {err}") from None
            bar.advance(task)


def _run_parallel(pending, out, init_args, jobs, run_seconds, progress, done, total) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    # spawn, not fork: a forked child would inherit torch's thread pools and locks mid-use
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=ctx, initializer=_worker_init,
                               initargs=init_args)
    try:
        with _progress_bar(progress) as bar:
            task = bar.add_task(f"runs ({jobs} jobs)", total=total, completed=done)
            futures = [pool.submit(_worker_run, r.id, str(out / "runs" / r.id), r.config.to_dict()) for r in pending]
            for fut in as_completed(futures):
                run_id, seconds = fut.result()
                run_seconds[run_id] = seconds
                bar.update(task, description=run_id)
                bar.advance(task)
    except BrokenProcessPool:
        raise AffectusError(f"{out}: a worker process died; finished runs are kept, re-run the same command to "
                            f"resume") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------- results

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
    exp = json.loads(plan_path.read_text(encoding="utf-8"))
    runs: list[dict[str, Any]] = []
    for planned in exp["runs"]:
        info_path = out / planned["dir"] / "run.json"
        if info_path.exists():
            info = json.loads(info_path.read_text(encoding="utf-8"))
            values = _flatten(info.get("metrics", {}))
            values.update(_flatten(info.get("select_metrics", {}), "select."))
            runs.append({**planned, "values": values, "family": info.get("family"),
                         "params": parameter_count(info["model_name"], info["model_config"]),
                         # one class predicted for every sample of the reported split (trainer's check)
                         "degenerate": exp["eval_split"] in (info.get("degenerate") or {})})
    groups: dict[str, dict[str, Any]] = {}
    for planned in exp["runs"]:
        g = groups.setdefault(planned["group"], {"group": planned["group"], "row": planned["row"],
                                                 "model": planned["model"], "variant": planned["variant"],
                                                 "grid": planned["grid"], "planned": 0, "runs": []})
        g["planned"] += 1
    for run in runs:
        groups[run["group"]]["runs"].append(run)
    metric_keys = sorted({k for r in runs for k in r["values"]}, key=lambda k: (k.startswith("select."), k))
    rows: list[dict[str, Any]] = []
    for g in groups.values():
        done = g.pop("runs")
        mean, std = {}, {}
        for key in metric_keys:
            mean[key], std[key], _ = mean_std(r["values"].get(key) for r in done)
        rows.append({**g, "n_seeds": len(done), "seeds": [r["seed"] for r in done],
                     "family": done[0]["family"] if done else None, "params": done[0]["params"] if done else None,
                     "n_degenerate": sum(r["degenerate"] for r in done), "mean": mean, "std": std})
    write_text_atomic(out / "results.csv", _csv(exp, runs, rows, metric_keys))
    write_text_atomic(out / "results.md", _markdown(exp, rows, len(runs)))
    return rows


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
    w.writerow(["kind", "group", "row", "model", "variant", *grid_keys, "seed", "n_seeds", "params", *metric_keys])
    for r in runs:
        w.writerow(["run", r["group"], r["row"], r["model"], r["variant"], *[_num(r["grid"][k]) for k in grid_keys],
                    r["seed"], "", _num(r["params"]), *[_num(r["values"].get(k)) for k in metric_keys]])
    for g in rows:
        for kind in ("mean", "std"):
            w.writerow([kind, g["group"], g["row"], g["model"], g["variant"], *[_num(g["grid"][k]) for k in grid_keys],
                        "", g["n_seeds"], _num(g["params"]), *[_num(g[kind][k], 6) for k in metric_keys]])
    return buf.getvalue()


def _markdown(exp: dict[str, Any], rows: list[dict], n_finished: int) -> str:
    scheme = get_scheme(exp.get("scheme") or exp.get("family") or "sims")  # older experiments: the family name
    report = exp.get("report") or {}
    grid_keys = list(exp.get("grid", {}))
    columns = scheme.modality_columns if report.get("columns") == "modalities" else scheme.columns
    lines = [f"# {exp['name']}", ""]
    if exp.get("description"):
        lines += [exp["description"], ""]
    lines += [f"Data `{exp['data']}`" + (f" (preset {exp['preset']})" if exp.get("preset") else "")
              + f", scored on split `{exp['eval_split']}`, label scheme `{scheme.name}`. Cells: mean ± sample std "
              f"over seeds (percent); Params: non-BERT parameters.", ""]
    total = len(exp["runs"])
    if n_finished < total:
        lines += [f"**{n_finished} of {total} runs finished**: re-run the same command to complete the experiment.", ""]
    header = ["Run", *grid_keys, *[c for c, _ in columns], "Params", "Seeds"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for g in rows:
        cells = [g["row"] + (" ⚠" if g.get("n_degenerate") else ""), *[_num(g["grid"][k]) for k in grid_keys],
                 *[format_mean_std(g["mean"].get(key), g["std"].get(key)) for _, key in columns],
                 f"{g['params']:,}" if g["params"] is not None else "-", str(g["n_seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    flagged = [g for g in rows if g.get("n_degenerate")]
    if flagged:
        lines += ["", f"⚠ degenerate: the model predicted one class for every sample of split `{exp['eval_split']}` "
                      "(its scores there are that class's share; see the run's run.json `warnings`) in "
                  + "; ".join(f"{g['row']}{_grid_text(g, grid_keys)}: {g['n_degenerate']} of {g['n_seeds']} seeds"
                              for g in flagged) + "."]
    if report.get("slope_over"):
        lines += ["", *_slopes(rows, report["slope_over"], grid_keys, scheme.slope_keys)]
    return "\n".join(lines) + "\n"


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
