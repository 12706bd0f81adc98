"""Running an experiment: the directory lock, experiment.json, each pending run trained (or resumed) in this
process or in spawned workers, then condition scoring and aggregation."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from affectus.data.load import open_data, source_id
from affectus.errors import AffectusError
from affectus.experiments.runner.aggregate import aggregate
from affectus.experiments.runner.conditions import _score_conditions
from affectus.experiments.runner.plan import (
    _check_inputs,
    _check_out_dir,
    _needs_unimodal,
    cpu_cores,
    data_checksum,
)
from affectus.experiments.spec import ExperimentSpec, PlannedRun, expand, load_spec
from affectus.utils.io import lock_dir, write_json_atomic
from affectus.utils.threads import torch_threads

logger = logging.getLogger(__name__)


def _train_one(ds, plan, run_dir: Path, config: dict[str, Any], threads: int, data_source: str) -> float:
    """Train (or resume) one run; returns the seconds `train_run` took."""
    from affectus.training.config import ResolvedConfig
    from affectus.training.loop import training_log
    from affectus.training.trainer import train_run

    cfg = ResolvedConfig.from_dict(config)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))
    # the run directory's own lock (train_run takes the same one; nested, it is shared): a `train
    # --out` aimed at this folder from elsewhere cannot write into it meanwhile
    with lock_dir(run_dir, "run directory"):
        resume = (run_dir / "state.pt").exists()
        started = time.perf_counter()
        with torch_threads(cfg.train.threads), training_log(run_dir / "train.log"):
            train_run(ds, cfg, run_dir, plan, resume=resume, data_source=data_source)
        return time.perf_counter() - started


# Worker processes (local, spawned; or Ray's): each loads the data once, on its first run, then trains the
# runs it is handed. Keyed by what it loaded, so a Ray worker reused by another experiment loads afresh.
_WORKER: dict[str, Any] = {}


def _worker_run(data: str, preset_name: str | None, threads: int, trust_pickle: bool, run_id: str, run_dir: str,
                config: dict[str, Any]) -> tuple[str, float]:
    """One run in a worker process (an Executor task: module-level, so workers import it by reference)."""
    from affectus.training.trainer import plan_for
    from affectus.utils.threads import enable_flush_denormal

    key = (data, preset_name, threads, trust_pickle)
    if _WORKER.get("key") != key:
        enable_flush_denormal()  # before torch starts its threads: the flag reaches only threads made later
        import torch

        torch.set_num_threads(threads)
        ds, preset = open_data(data, preset_name, trust_pickle=trust_pickle)
        _WORKER.clear()
        _WORKER.update(key=key, ds=ds, plan=plan_for(ds, preset))
    try:
        seconds = _train_one(_WORKER["ds"], _WORKER["plan"], Path(run_dir), config, threads, data)
    except AffectusError as err:
        raise AffectusError(f"run {run_id}: {err}") from None
    return run_id, seconds


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
    trust_pickle: bool = False,
    ray: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) every run of `spec` into `out_dir`, then aggregate; returns a summary.

    data / preset / seeds override the spec's; overrides are --set values for every run; jobs > 1
    trains in that many spawned worker processes; `ray` ("local", or a cluster's address) runs each run as a
    Ray task instead (with "local", `jobs` is its CPU count); threads = torch threads per run (0: cores // jobs).
    Summary keys: name, out, runs, finished_before, resumed, trained, run_seconds {id: s},
    wall_seconds, groups (the rows `aggregate` returns).
    """
    from affectus.data.presets import load_preset

    started = time.perf_counter()
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
    ds = open_data(data, preset_obj, trust_pickle=trust_pickle)[0]
    # every run's inputs readable from this file (encoder installed, transcripts present): refused here, before
    # the experiment directory exists
    _check_inputs(ds, runs)
    # one writer per experiment directory: a second `affectus experiment` on OUT stops here, before
    # it reads or writes anything there (a crashed holder's lock is dropped by the kernel)
    with lock_dir(out, "experiment directory"):
        # handed over in a list the callee empties, so parallel workers do not run beside a copy kept alive here
        box = [ds]
        del ds
        return _run_locked(sp, runs, out, box, data, data_id, preset_name, preset_obj, jobs, threads, progress,
                           trust_pickle, overrides, started, ray)


def _run_locked(sp: ExperimentSpec, runs: list[PlannedRun], out: Path, box: list, data: str, data_id: str,
                preset_name: str | None, preset_obj, jobs: int, threads: int, progress: bool,
                trust_pickle: bool, overrides: dict[str, Any] | None, started: float,
                ray: str | None = None) -> dict[str, Any]:
    from affectus.training.trainer import plan_for

    ds = box.pop()
    checksum = data_checksum(data)
    _check_out_dir(out, runs, data_id, preset_name, checksum)

    plan = plan_for(ds, preset_obj)
    if not ds.has_unimodal_labels:
        bad = [r.id for r in runs if _needs_unimodal(r)]
        if bad:
            raise AffectusError(f"{data}: run {bad[0]} needs unimodal labels (cmc_gt or train.consistent_retention "
                                f"< 1), which this data lacks")
    write_json_atomic(out / "experiment.json", {
        "format": "affectus-experiment/1", "name": sp.name, "description": sp.description, "spec": sp.source,
        "data": data_id, "data_sha256": checksum, "preset": preset_name, "family": plan.family, "scheme": plan.scheme.spec(),
        "eval_split": plan.eval,
        "select_split": plan.select, "seeds": sorted({r.seed for r in runs}), "overrides": dict(overrides or {}),
        "grid": {k: list(v) for k, v in sp.grid.items()}, "report": sp.report.model_dump(),
        "mixed_inputs": sp.mixed_inputs,
        "runs": [r.to_dict() for r in runs],
    })

    finished = [r for r in runs if (out / "runs" / r.id / "run.json").exists()]
    pending = [r for r in runs if not (out / "runs" / r.id / "run.json").exists()]
    resumed = sum((out / "runs" / r.id / "state.pt").exists() for r in pending)
    per_run = max(1, cpu_cores() // jobs) if threads == 0 else threads
    logger.info(f"{sp.name}: {len(runs)} runs; {len(finished)} finished before, {resumed} to resume, "
                f"{len(pending) - resumed} to train ({jobs} job(s) x {per_run} thread(s))")
    run_seconds: dict[str, float] = {}
    if pending:
        if jobs == 1 and ray is None:
            _run_serial(pending, out, ds, plan, per_run, data, run_seconds, progress, len(finished), len(runs))
        else:
            del ds  # each worker loads its own copy
            from affectus.utils.executors import LocalExecutor, RayExecutor

            executor = (LocalExecutor(jobs) if ray is None else
                        RayExecutor(ray, num_cpus=jobs if ray == "local" else None))
            with executor:
                _run_parallel(executor, pending, out, (data, preset_name, per_run, trust_pickle), run_seconds,
                              progress, len(finished), len(runs))
            ds = None
    if sp.report.conditions or sp.report.drop_ratios or sp.report.missing_rates:
        if ds is None:
            ds = open_data(data, preset_obj, trust_pickle=trust_pickle)[0]
        _score_conditions(out, runs, ds[plan.eval], sp.report)
    groups = aggregate(out)
    return {"name": sp.name, "out": str(out), "runs": len(runs), "finished_before": len(finished),
            "resumed": resumed, "trained": len(pending), "run_seconds": run_seconds,
            "wall_seconds": time.perf_counter() - started, "groups": groups}


def _progress_bar(enabled: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

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


def _run_parallel(executor, pending, out, worker_args, run_seconds, progress, done, total) -> None:
    """The pending runs as tasks of `executor` (local processes or Ray). A run whose worker died (killed,
    out of memory, its node gone) is handed out once more and resumes from its last epoch (its state.pt),
    since every run saves its state as it trains; one that dies again stops the experiment with one line
    (re-run the command to resume it)."""
    tasks = [(*worker_args, r.id, str(out / "runs" / r.id), r.config.to_dict()) for r in pending]
    with _progress_bar(progress) as bar:
        task = bar.add_task(f"runs ({executor.describe})", total=total, completed=done)

        def on_done(_: int, result: tuple[str, float]) -> None:
            run_id, seconds = result
            run_seconds[run_id] = seconds
            bar.update(task, description=run_id)
            bar.advance(task)

        lost = executor.run(_worker_run, tasks, on_done)
        if lost:  # each again, from its saved state
            logger.warning(f"{len(lost)} run(s) lost with their worker process; running them again from their "
                           f"saved state: {', '.join(tasks[i][4] for i in lost)}")
            lost = executor.run(_worker_run, [tasks[i] for i in lost], on_done)
    if lost:
        raise AffectusError(f"{out}: a worker process died twice; finished runs are kept, re-run the same command "
                            f"to resume") from None
