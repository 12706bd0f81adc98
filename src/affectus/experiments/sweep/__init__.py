"""Hyperparameter sweeps with Optuna: a validated YAML spec, one study shared by any number of workers.

Each trial is an ordinary training run (`train_run`) written to OUT/trials/<trial number>/. Its
objective value is read from that run's `run.json` "select_metrics" (the selection / validation
split) and from nothing else: the evaluation split's scores ("metrics") are read once, for the best
trial, when the report is written, and never decide anything (ARCHITECTURE.md: test labels are
read only by evaluation; the authors' grid search chose by test accuracy, we do not).

Workers: every `affectus sweep` process with the same storage and study name joins one study.
A trial is created under a lock (a file lock beside a SQLite file, an advisory lock in PostgreSQL)
and only while the study holds fewer trials than its budget, so no grid point is evaluated twice
and no surplus trial appears; with the grid sampler, Optuna maps trial number k to grid point k
(the grid is shuffled by the study's seed, the same in every worker). A heartbeat thread keeps
the running trial alive in the storage; a killed worker's trial is marked FAIL by the next worker
that looks (Optuna's stale-trial check) and is never retried silently.

One module per job: spec.py (the spec), storage.py (URLs, masking, opening the storage), locks.py (the
directory's study and the trial-creation lock), heartbeat.py, report.py (objective and report), worker.py.
"""

from __future__ import annotations

from affectus.experiments.sweep.heartbeat import Heartbeat
from affectus.experiments.sweep.locks import CLAIM_FILE, StudyLock, claim_out_dir
from affectus.experiments.sweep.report import (
    REPORT_FORMAT,
    MetricError,
    build_report,
    lookup,
    validation_in_sample,
    validation_score,
)
from affectus.experiments.sweep.spec import (
    LOCAL_KEYS,
    MAX_GRID_POINTS,
    SAMPLERS,
    Range,
    SweepSpec,
    check_config_keys,
    list_shipped_specs,
    load_spec,
    parse_spec,
    with_sampler,
)
from affectus.experiments.sweep.storage import (
    check_storage_url,
    normalise_storage_url,
    open_storage,
    redact,
    storage_errors,
)
from affectus.experiments.sweep.worker import Worker

__all__ = ["CLAIM_FILE", "LOCAL_KEYS", "MAX_GRID_POINTS", "REPORT_FORMAT", "SAMPLERS", "Heartbeat",
           "MetricError", "Range", "StudyLock", "SweepSpec", "Worker", "build_report", "check_config_keys",
           "check_storage_url", "claim_out_dir", "list_shipped_specs", "load_spec", "lookup",
           "normalise_storage_url", "open_storage", "parse_spec", "redact", "storage_errors",
           "validation_in_sample", "validation_score", "with_sampler"]
