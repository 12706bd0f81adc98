"""The glue every door that trains shares (`affectus train`, `affectus.train`): open the data, fold the
seed / device / threads shortcuts into the overrides, resolve the config and plan the splits, all before
anything is written. Threads are left to the door: the CLI sets them for its process, the API borrows
them for one call (docs/architecture.md, "Library calls leave process-global torch state alone")."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectus.models.registry import DEFAULT_MODEL

_log = logging.getLogger(__name__)


@dataclass
class TrainingJob:
    dataset: Any  # MERDataset
    preset: Any  # Preset | None
    cfg: Any  # ResolvedConfig
    plan: Any  # DataPlan
    source: str  # the data source as run.json records it
    # why this model, when the caller named none and the data chose it (said in `train`'s output)
    model_reason: str | None = None

    def run(self, out: str | Path, resume: bool = False, **kwargs: Any) -> dict[str, Any]:
        """Train into `out` (`train_run`'s keywords: on_epoch, overwrite); returns the metrics."""
        from affectus.training.trainer import train_run

        return train_run(self.dataset, self.cfg, out, self.plan, resume=resume, data_source=self.source, **kwargs)


# The default for features made from the user's own clips: on small labelled sets CMC+ trains in seconds
# where faithful CMC takes minutes, and scores above it (benchmarks/README.md, docs/cmc_plus.md).
CLIPS_DEFAULT_MODEL = "cmc_plus"


def default_model(data: str | Path, preset: Any = None) -> tuple[str, str | None]:
    """The model trained when none is named, and why when it is not DEFAULT_MODEL: the preset's
    `default_model` (chosen by a benchmark on its dataset, e.g. MELD's), CMC+ for a features file made by
    `affectus extract-dataset` (its FILE.extract.json), faithful CMC for the paper's data."""
    from affectus.data.load import extraction_record

    if preset is not None and preset.default_model:
        row = ", ".join(f"{k}={v}" for k, v in preset.default_settings.items())
        return preset.default_model, (f"model {preset.default_model}: preset {preset.name}'s default"
                                      + (f" ({row})" if row else "") + "; --model NAME trains another")
    if extraction_record(data) is None:
        return DEFAULT_MODEL, None
    return CLIPS_DEFAULT_MODEL, (f"model {CLIPS_DEFAULT_MODEL}: the default for features made by extract-dataset "
                                 f"(small labelled sets; --model {DEFAULT_MODEL} trains the paper's model)")


def prepare_training(data: str | Path, preset: str | None = None, model: str | None = None,
                     variant: str | None = None, config: str | Path | None = None, overrides: Any = None, *,
                     seed: int | None = None, device: str | None = None, threads: int | None = None,
                     trust_pickle: bool = False) -> TrainingJob:
    """A checked training job; `overrides` is {key: value} (or --set's parsed list), the shortcuts win.
    `model` None: `default_model(data)`."""
    from affectus.data.load import open_data, source_id
    from affectus.training.config import resolve_config
    from affectus.training.trainer import plan_for

    dataset, p = open_data(data, preset, trust_pickle=trust_pickle)
    reason = None
    chosen = model is None  # the data chose the model: a preset's default comes with its default settings
    if model is None:
        model, reason = default_model(data, p)
    shortcuts = {k: v for k, v in (("train.seed", seed), ("train.device", device), ("train.threads", threads))
                 if v is not None}
    cfg = resolve_config(model, variant, p, config, {**(overrides or {}), **shortcuts}, preset_default=chosen)
    plan = plan_for(dataset, p)
    warn_class_indices(dataset, plan, str(data))
    return TrainingJob(dataset, p, cfg, plan, source_id(data), reason)


def warn_class_indices(dataset: Any, plan: Any, source: str) -> None:
    """One warning line when a sentiment scheme reads labels that look like class indices (0/1/2 for
    happy/sad/angry: `looks_like_class_indices`), naming the fix. Train and selection labels only:
    the test labels are for evaluation alone."""
    import numpy as np

    from affectus.data.schemes import looks_like_class_indices

    if not plan.scheme.scores:
        return
    seen = np.concatenate([dataset[plan.train].labels, dataset[plan.select].labels])
    if looks_like_class_indices(seen):
        values = ", ".join(f"{v:g}" for v in np.unique(seen)[:6])
        _log.warning("warning: %s: the labels (%s) look like class indices, but are read as %s (< 0 negative, "
                     "0 neutral, > 0 positive); for emotion classes, put their names in label.csv's annotation "
                     "column and run extract-dataset again with --labels annotation (docs/media.md)",
                     source, values, plan.scheme.describe())
