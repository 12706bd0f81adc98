"""Run an experiment spec: every run in its own directory, resumable, then mean +- std tables.

    OUT/experiment.json        the expanded, resolved plan (what `affectus report` reads)
    OUT/runs/<id>/             one `train_run` directory per run (run.json marks it finished)
    OUT/results.csv            one line per finished run + mean and std lines per group
    OUT/results.md             the paper-style table(s)

Re-running the same command is the resume: finished runs are skipped, interrupted ones (state.pt)
continue with `train_run(..., resume=True)` (bit-identical to an uninterrupted run), the rest train.
Results are computed from the finished run directories alone, so an interrupted-and-resumed
experiment writes the same results files as an uninterrupted one.

One module per job: plan.py (the directory and inputs checked before anything trains), run.py (training the
runs, serially or in workers), conditions.py (scoring runs under availability conditions), aggregate.py
(per-run values to group rows), tables.py (results.csv and results.md).
"""

from __future__ import annotations

from affectus.experiments.runner.aggregate import aggregate, parameter_count
from affectus.experiments.runner.conditions import CONDITIONS_FILE, ROUTER_FILE, condition_keys
from affectus.experiments.runner.plan import cpu_cores, data_checksum
from affectus.experiments.runner.run import run_experiment

__all__ = ["CONDITIONS_FILE", "ROUTER_FILE", "aggregate", "condition_keys", "cpu_cores", "data_checksum", "parameter_count",
           "run_experiment"]
