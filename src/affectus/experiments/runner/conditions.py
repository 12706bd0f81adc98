"""Condition scoring: every finished run evaluated under the spec's availability conditions, drop ratios and
missing rates, written beside it (conditions.json, router_conditions.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from affectus.experiments.spec import PlannedRun
from affectus.utils.io import read_json_file, write_json_atomic

CONDITIONS_FILE = "conditions.json"


# {"weights": {condition: {modality: mean router weight}}}, or {"weights": null} for a model without a router
ROUTER_FILE = "router_conditions.json"


def condition_keys(report: Any) -> list[str]:
    """The names a run's conditions.json uses: '{l,a}' per availability condition, 'p=0.2' per drop ratio."""
    from affectus.data.missing import condition_name, parse_available

    return ([condition_name(parse_available(c)) for c in report.get("conditions", [])]
            + [f"p={p:g}" for p in report.get("drop_ratios", [])]
            + [f"r={r:g}" for r in report.get("missing_rates", [])])


def _score_conditions(out: Path, runs: list[PlannedRun], split, report) -> None:
    """Score every finished run on the evaluation split under each availability condition and MRMS drop
    ratio of the spec (prediction only; the masks are the same for every model: conditions are fixed,
    drop ratios seeded by the run's seed). Results go to RUN/conditions.json; a re-run fills in what is new.
    A model whose output has router weights (CMC, CMC-avail, CMC+) also gets the mean weight per modality
    under each availability condition in RUN/router_conditions.json (how its router shifts with availability)."""
    from affectus.data.missing import (
        mrms,
        parse_available,
        random_availability,
        with_availability,
    )
    from affectus.evaluation.evaluate import router_weights_by_condition
    from affectus.inference.predictor import load

    kinds = [*report.conditions, *(("p", p) for p in report.drop_ratios), *(("r", r) for r in report.missing_rates)]
    wanted = dict(zip(condition_keys(report.model_dump()), kinds))
    available = {k: parse_available(v) for k, v in wanted.items() if isinstance(v, str)}
    for run in runs:
        run_dir = out / "runs" / run.id
        if not (run_dir / "run.json").exists():
            continue
        path, router_path = run_dir / CONDITIONS_FILE, run_dir / ROUTER_FILE
        have = read_json_file(path, "condition scores") if path.exists() else {}
        todo = {k: v for k, v in wanted.items() if k not in have}
        router = read_json_file(router_path, "router weights") if router_path.exists() else {}
        weights = router.get("weights", {}) if isinstance(router, dict) else {}
        router_todo = [] if weights is None else [v for k, v in available.items() if k not in weights]
        if not todo and not router_todo:
            continue
        predictor = load(run_dir)
        for key, what in todo.items():
            if isinstance(what, str):
                have[key] = predictor.evaluate(split, available=available[key])
            elif what[0] == "p":
                have[key] = predictor.evaluate(mrms(split, float(what[1]), seed=run.seed))
            else:  # the same masks for every model of a seed: the generator depends on the seed and r only
                rng = np.random.default_rng([run.seed, int(round(what[1] * 1000)), 4241])
                have[key] = predictor.evaluate(with_availability(split, random_availability(len(split), what[1], rng)))
        if todo:
            write_json_atomic(path, have)
        if router_todo:
            # the split as the run reads it (a run that re-encoded transcripts re-encodes this one too)
            shift = router_weights_by_condition(predictor.model, predictor.reads(split), device=predictor.device,
                                                conditions=router_todo)
            write_json_atomic(router_path, {"weights": {**weights, **shift} if shift else None})
