"""The objective and the report: a trial's value read from its run's validation scores only, and
sweep.json / the summary built from the study (the evaluation split read once, for the best trial)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from affectus.errors import AffectusError
from affectus.experiments.sweep.spec import SweepSpec, _number
from affectus.experiments.sweep.storage import redact

REPORT_FORMAT = "affectus-sweep/1"


_MISSING = object()


class MetricError(AffectusError):
    """The objective's metric is not among the validation scores: every trial would fail alike."""


def lookup(metrics: dict[str, Any], path: str) -> Any:
    """`d_test.acc2` -> metrics["d_test"]["acc2"]; _MISSING when absent."""
    node: Any = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def validation_in_sample(run_dir: str | None) -> list[str] | None:
    """The parts a trial's run fitted on its selection split: its validation value is in-sample for them."""
    from affectus.runs.checkpoints import in_sample_parts, read_run

    if not run_dir or not (Path(run_dir) / "run.json").is_file():
        return []
    info = read_run(run_dir)
    return in_sample_parts(info, str(info.get("select_split")))


def validation_score(run_dir: Path, metric: str) -> tuple[float, dict[str, Any]]:
    """The objective: `metric` in run.json "select_metrics" (validation). The test scores are not read."""
    from affectus.runs.checkpoints import read_run

    select = read_run(run_dir).get("select_metrics")
    if not isinstance(select, dict):
        raise AffectusError(f"{run_dir}/run.json: no select_metrics (a run from an older affectus?)")
    value = lookup(select, metric)
    if value is _MISSING:
        have = ", ".join(sorted(k for k in select if not isinstance(select[k], dict)))
        raise MetricError(f"objective.metric '{metric}': not among the validation metrics ({have})")
    if not _number(value) or not math.isfinite(value):
        raise AffectusError(f"objective.metric '{metric}': validation value {value!r} is not a finite number")
    return float(value), select


def _test_report(run_dir: str | None, metric: str) -> dict[str, Any]:
    """The chosen trial's evaluation-split scores, read here for the report and nowhere else."""
    from affectus.runs.checkpoints import in_sample_json, read_run, split_fits

    if not run_dir or not (Path(run_dir) / "run.json").is_file():
        return {"metrics": None, "note": "the trial's run.json is not reachable from this machine"}
    info = read_run(run_dir)
    value = lookup(info.get("metrics") or {}, metric)
    split = info.get("metrics_split")
    # a preset that reports its selection split (mosi-utterance): the trial was chosen on this very score,
    # and whatever the run fitted there (run.json `fitted_on`) makes it in-sample too
    return {"split": split, "metric": metric, "value": None if value is _MISSING else value,
            "metrics": info.get("metrics"), "chose_trial": split == info.get("select_split"),
            **in_sample_json(split_fits(info, str(split)))}


def build_report(study, spec: SweepSpec, metric: str, storage_url: str) -> dict[str, Any]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    lost = "no heartbeat: the worker was killed or lost"
    rows = [{"number": t.number, "state": t.state.name, "params": t.params, "validation": t.value,
             "run_dir": t.user_attrs.get("run_dir"), "host": t.user_attrs.get("host"),
             "error": t.user_attrs.get("error") or (lost if t.state == TrialState.FAIL else None)}
            for t in trials]
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = None
    if done:
        # the best validation value; ties go to the lowest trial number, so the choice is deterministic
        sign = -1.0 if spec.direction == "maximize" else 1.0
        top = min(done, key=lambda t: (sign * t.value, t.number))
        run_dir = top.user_attrs.get("run_dir")
        best = {"trial": top.number, "params": top.params, "validation": top.value,
                "validation_metrics": top.user_attrs.get("select_metrics"), "run_dir": run_dir,
                "validation_in_sample": validation_in_sample(run_dir), "test": _test_report(run_dir, metric)}
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return {"format": REPORT_FORMAT, "study": study.study_name, "storage": redact(storage_url),
            "objective": {"metric": metric, "direction": spec.direction, "scored_on": "select_metrics"},
            "sampler": spec.sampler, "budget": spec.budget(), "counts": counts, "best": best, "trials": rows}
