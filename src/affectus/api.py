"""The one-call Python API: `affectus.train(...)` and `affectus.load(run_dir)`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from affectus.inference.predictor import Predictor, load


def train(
    data: str | Path,
    out: str | Path,
    model: str = "cmc",
    variant: str = "cmc",
    preset: str | None = None,
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    verbose: bool = False,
    trust_pickle: bool = False,
) -> Predictor:
    """Train on an MMSA file (or `synth:PRESET`), write the run to `out`, return its predictor.

    Example: `p = affectus.train("mosi.pkl", "runs/cmc", preset="mosi", overrides={"train.seed": 1})`
    """
    from affectus.data.load import open_data
    from affectus.training.config import resolve_config
    from affectus.training.trainer import plan_for, train_run

    ds, p = open_data(data, preset, trust_pickle=trust_pickle)
    cfg = resolve_config(model, variant, p, config, overrides)
    train_run(ds, cfg, out, plan_for(ds, p), resume=resume, log=print if verbose else None, data_source=str(data))
    return load(out)
