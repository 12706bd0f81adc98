"""A sweep worker: joins (or creates) the study, asks for trials while the budget lasts, trains each as an
ordinary run under OUT/trials/<number>/, and records its validation value."""

from __future__ import annotations

import dataclasses
import json
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from affectus.errors import AffectusError
from affectus.experiments.sweep.heartbeat import Heartbeat
from affectus.experiments.sweep.locks import StudyLock
from affectus.experiments.sweep.report import MetricError, build_report, validation_score
from affectus.experiments.sweep.spec import SweepSpec
from affectus.experiments.sweep.storage import normalise_storage_url, open_storage, redact
from affectus.utils.io import lock_dir, write_json_atomic


def _grid_sampler(space: dict[str, list[Any]], seed: int):
    import optuna

    class LockedGrid(optuna.samplers.GridSampler):
        """Optuna's grid; the workers' budget check under the lock decides when to stop, so
        `after_trial` must not call `study.stop()` (which raises outside `optimize`)."""

        def after_trial(self, study, trial, state, values) -> None:
            return None

    return LockedGrid(space, seed=seed)


@dataclasses.dataclass
class Worker:
    """One sweep process: its study and where its trials go. `create=False` only reads (--report)."""

    spec: SweepSpec
    out_dir: Path
    storage_url: str
    study_name: str
    heartbeat: int | None = 60
    log: Callable[[str], None] | None = print
    create: bool = True

    def __post_init__(self) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # we print our own line per trial
        self.storage_url = normalise_storage_url(self.storage_url)
        self.lock = StudyLock(self.storage_url)
        with self.lock.held():  # one creator at a time: tables, the study, its stored spec
            self.storage = open_storage(self.storage_url, self.heartbeat)
            names = optuna.get_all_study_names(self.storage)
            if not self.create and self.study_name not in names:
                raise AffectusError(f"no study '{self.study_name}' in {redact(self.storage_url)}")
            self.study = optuna.create_study(storage=self.storage, study_name=self.study_name,
                                             load_if_exists=True, direction=self.spec.direction,
                                             sampler=self._sampler(0))
            stored, mine = self.study.user_attrs.get("affectus_spec"), self.spec.fingerprint()
            if stored is None and self.create:
                self.study.set_user_attr("affectus_spec", mine)
            elif stored is not None and stored != mine:
                diff = ", ".join(sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k)))
                where = f"study '{self.study_name}' in {redact(self.storage_url)}"
                raise AffectusError(f"{where} was created from another spec ({diff} differ): "
                                    "use the same spec or another --study")

    def _sampler(self, next_number: int):
        import optuna

        if self.spec.sampler == "grid":
            # the same seed in every worker: trial k evaluates the k-th point of one shuffled grid
            return _grid_sampler(self.spec.space, self.spec.seed)  # type: ignore[arg-type]
        # a seed per trial number, so parallel workers do not draw the same start-up points
        return optuna.samplers.TPESampler(seed=self.spec.seed * 1_000_003 + next_number)

    def report(self, metric: str) -> dict[str, Any]:
        report = build_report(self.study, self.spec, metric, self.storage_url)
        write_json_atomic(self.out_dir / "sweep.json", report)
        return report

    def _failed_point(self) -> dict[str, Any] | None:
        """A point whose every trial failed (for --retry-failed), or None."""
        from optuna.trial import TrialState

        failed, covered = [], set()
        for t in self.study.get_trials(deepcopy=False):
            key = json.dumps(t.params, sort_keys=True)
            if t.state == TrialState.FAIL and t.params:
                failed.append((key, t.params))
            elif t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING):
                covered.add(key)
        return next((p for k, p in failed if k not in covered), None)

    def claim(self, retry_failed: bool = False):
        """Under the lock: a new trial with its parameters drawn, or None when the budget is spent."""
        with self.lock.held(), warnings.catch_warnings():
            # "heartbeat is supposed to be used with optimize": we beat ourselves (class Heartbeat)
            warnings.simplefilter("ignore", UserWarning)
            n = len(self.study.get_trials(deepcopy=False))
            if n < self.spec.budget():
                self.study.sampler = self._sampler(n)
                trial = self.study.ask()
            elif retry_failed and (point := self._failed_point()) is not None:
                self.study.enqueue_trial(point, user_attrs={"retry": True})
                trial = self.study.ask()
            else:
                return None
            if self.heartbeat is not None:
                # a first beat at once: a worker that dies before its heartbeat thread starts is still found
                self.storage.record_heartbeat(trial._trial_id)
            # draw now, still under the lock, so the trial's point is on record before it trains
            for key, dim in self.spec.space.items():
                if isinstance(dim, list):
                    trial.suggest_categorical(key, dim)
                elif dim.is_int:
                    trial.suggest_int(key, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
                else:
                    trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)
            return trial

    def _finish(self, trial, value: float | None, error: str | None) -> bool:
        """Tell the storage; False when the trial did not complete."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        try:
            if error is None:
                self.study.tell(trial, value)
                return True
            trial.set_user_attr("error", error)
            self.study.tell(trial, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            # another worker failed it already: our heartbeat stopped for longer than the grace period
            if self.log:
                self.log(f"[trial {trial.number}] was marked FAIL meanwhile (heartbeat lost); result dropped")
        return False

    def run(self, dataset, preset, plan, data_source: str | None = None, max_trials: int | None = None,
            retry_failed: bool = False) -> tuple[dict[str, Any], int]:
        """Claim and train trials until the budget is spent (or `max_trials` here). -> (report, failures)."""
        import optuna

        from affectus.training.config import resolve_config
        from affectus.training.loop import training_log
        from affectus.training.trainer import train_run
        from affectus.utils.threads import torch_threads

        # `metric: auto`: the label scheme's default objective (sentiment: its binary accuracy)
        metric = plan.scheme.objective if self.spec.metric == "auto" else self.spec.metric
        self.study.set_user_attr("affectus_metric", metric)  # for --report, which has no data to tell
        done = failures = 0
        while max_trials is None or done < max_trials:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)  # a killed worker's RUNNING trial -> FAIL
            trial = self.claim(retry_failed)
            if trial is None:
                break
            done += 1
            run_dir = (self.out_dir / "trials" / str(trial.number)).resolve()
            trial.set_user_attr("run_dir", str(run_dir))
            trial.set_user_attr("host", socket.gethostname())
            params = dict(trial.params)
            if self.log:
                self.log(f"[trial {trial.number}] {' '.join(f'{k}={v}' for k, v in params.items())}")
            beat = Heartbeat(self.storage, trial._trial_id, self.heartbeat)
            try:
                values = {**self.spec.overrides, **params}
                cfg = resolve_config(self.spec.model, self.spec.variant, preset, None, values)
                # the trial's own folder, locked: a worker of another storage numbering the same
                # trial, or a `train --out` aimed here, cannot write into it meanwhile
                with lock_dir(run_dir, "run directory"):
                    # train_run returns the evaluation split's scores: deliberately dropped
                    with torch_threads(cfg.train.threads), training_log(run_dir / "train.log"):
                        train_run(dataset, cfg, run_dir, plan, data_source=data_source)
                    value, select = validation_score(run_dir, metric)
                trial.set_user_attr("select_metrics", select)
            except BaseException as err:
                beat.stop()
                error = f"{type(err).__name__}: {(str(err) or '-').splitlines()[0]}"
                self._finish(trial, None, error)
                failures += 1
                if self.log:
                    self.log(f"[trial {trial.number}] FAILED: {error}")
                self.report(metric)
                # a wrong metric name fails every trial alike, and an interrupt means stop: end this worker
                if isinstance(err, MetricError) or not isinstance(err, Exception):
                    raise
                continue
            beat.stop()
            if self._finish(trial, value, None):
                if self.log:
                    self.log(f"[trial {trial.number}] validation {metric} = {value:.4f}")
            else:
                failures += 1
            self.report(metric)
        return self.report(metric), failures
