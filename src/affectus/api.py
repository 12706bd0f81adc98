"""The one-call Python API: `affectus.train(...)` and `affectus.load(run_dir)`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from affectus.inference.predictor import Predictor, load


def train(
    data: str | Path,
    out: str | Path,
    model: str = "cmc",
    variant: str | None = None,
    preset: str | None = None,
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    seed: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    resume: bool = False,
    verbose: bool = False,
    trust_pickle: bool = False,
) -> Predictor:
    """Train `model` on `data` and write the run to `out`; returns the run's predictor.

    data: an MMSA pickle, an affectus .npz, or `synth:PRESET` (simulated data with that preset's shapes).
    variant: one of the model's variants (`affectus models`); None is its default (CMC: the full model).
    preset: a dataset preset (sims, simsv2, mosi, mosei, mosi-utterance) or a preset YAML path: label
        scheme, split roles and the published hyperparameters.
    config / overrides: a YAML file and {"model.layers": 3, "train.lr": 1e-3, "recipe.plgm": False, ...}.
    seed / device / threads: shortcuts for train.seed, train.device ("cpu", "cuda:0") and train.threads
        (torch CPU threads for this call; the caller's setting is restored afterwards).
    resume: continue an interrupted run in `out` (refused in one line if the model, config or data
        differ from what it started with; threads and device may change). trust_pickle: read a pickle with Python's own unpickler
        (runs any code in the file; see docs/security.md).

    Example: `p = affectus.train("synth:sims", "runs/cmc", overrides={"train.epochs": 5})`
    """
    from affectus.data.load import open_data, source_id
    from affectus.training.config import resolve_config
    from affectus.training.loop import training_log
    from affectus.training.trainer import plan_for, train_run
    from affectus.utils.threads import torch_threads

    ds, p = open_data(data, preset, trust_pickle=trust_pickle)
    extra = {k: v for k, v in (("train.seed", seed), ("train.device", device), ("train.threads", threads))
             if v is not None}
    cfg = resolve_config(model, variant, p, config, {**(overrides or {}), **extra})
    with torch_threads(cfg.train.threads), training_log(stream=sys.stdout if verbose else None):
        train_run(ds, cfg, out, plan_for(ds, p), resume=resume, data_source=source_id(data))
    return load(out, device=cfg.train.device)
