"""The one-call Python API: `affectus.train(...)` and `affectus.load(run_dir)`."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from affectus.errors import AffectusError
from affectus.inference.predictor import Predictor, load


def train(
    data: str | Path,
    out: str | Path,
    model: str | None = None,
    variant: str | None = None,
    preset: str | None = None,
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    seed: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    verbose: bool = False,
    trust_pickle: bool = False,
) -> Predictor:
    """Train `model` on `data` and write the run to `out`; returns the run's predictor.

    data: an MMSA pickle, an affectus .npz, or `synth:PRESET` (simulated data with that preset's shapes).
    model: a registered model (`affectus models`); None: CMC+ for features made by `affectus
        extract-dataset`, else faithful CMC (`DEFAULT_MODEL`).
    variant: one of the model's variants (`affectus models`); None is its default (CMC: the full model).
    preset: a dataset preset (`affectus.data.presets.list_presets()`) or a preset YAML path: label
        scheme, split roles and the published hyperparameters.
    config / overrides: a YAML file and {"model.layers": 3, "train.lr": 1e-3, "recipe.plgm": False, ...}.
    seed / device / threads: shortcuts for train.seed, train.device ("cpu", "cuda:0") and train.threads
        (torch CPU threads for this call; the caller's setting is restored afterwards).
    resume: continue an interrupted run in `out` (refused in one line if the model, config or data
        differ from what it started with; threads and device may change). overwrite: train into a folder
        whose config.json / metrics.json are not an affectus run's, replacing them. trust_pickle: read a pickle with Python's own unpickler
        (runs any code in the file; see docs/security.md).

    Example: `p = affectus.train("synth:sims", "runs/cmc", overrides={"train.epochs": 5})`
    """
    from affectus.training.job import prepare_training
    from affectus.training.loop import training_log
    from affectus.utils.threads import torch_threads

    job = prepare_training(data, preset, model, variant, config, overrides, seed=seed, device=device,
                           threads=threads, trust_pickle=trust_pickle)
    try:
        with torch_threads(job.cfg.train.threads), training_log(stream=sys.stdout if verbose else None):
            job.run(out, resume=resume, overwrite=overwrite)
    except AffectusError as err:
        err.args = (api_message(str(err)),)
        raise
    return load(out, device=job.cfg.train.device)


# the CLI flags that the training code's messages name -> this function's arguments
_ARGUMENTS = {"--out": "out", "--resume": "resume=True", "--overwrite": "overwrite=True"}


def api_message(message: str) -> str:
    """A training error as a Python caller reads it: "choose another out", not "choose another --out"."""
    return re.sub(r"--(out|resume|overwrite)\b", lambda m: _ARGUMENTS[m.group(0)], message)
