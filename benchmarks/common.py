"""Helpers the benchmark scripts share, in one place: MOSI-shaped simulated data and batches, the CMC+ router
loss, latency percentiles, the shared CMU-MOSI utterance set's arguments and runs, mean +- std. Scripts put benchmarks/ on sys.path and `from common import ...`."""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch and the models load only where batches are built (not in bench_service's client)
    import torch

    from affectus.data.batches import Batch
    from affectus.models.cmc_plus import CMCPlus
    from affectus.training.recipes.cmc_plus import CMCPlusRecipeConfig

SHAPES = {"text": (50, 768), "audio": (375, 5), "vision": (500, 20)}  # CMU-MOSI (MMSA unaligned)
MOSI_UTTERANCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mosi-utterance" / "mosi_utterance_trainval.pkl"


def mosi_utterance_args(doc: str | None, seeds: int, threads: int) -> argparse.ArgumentParser:
    """The arguments every benchmark on the shared CMU-MOSI utterance set takes (a script adds its own)."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--data", default=str(MOSI_UTTERANCE))
    ap.add_argument("--seeds", type=int, default=seeds)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="key=value, every run")
    ap.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=threads)
    return ap


class MosiUtterance:
    """The shared set under the mosi-utterance preset, loaded once; `train` runs one model on it."""

    def __init__(self, data: str) -> None:
        from affectus.data.mmsa import load_dataset
        from affectus.data.presets import load_preset
        from affectus.training.trainer import plan_for
        from affectus.utils.threads import enable_flush_denormal

        enable_flush_denormal()
        # the recipes import scikit-learn inside the timed training (run.json train_seconds): imported here, so
        # the first run of a process does not pay a one-off second or more that later runs do not
        import sklearn.linear_model  # noqa: F401
        import sklearn.preprocessing  # noqa: F401

        self.data = data
        self.preset = load_preset("mosi-utterance")
        self.ds = load_dataset(data, preset=self.preset)
        self.plan = plan_for(self.ds, self.preset)

    def config(self, model: str, variant: str | None, overrides: dict[str, Any]) -> Any:
        from affectus.training.config import resolve_config

        return resolve_config(model, variant, self.preset, None, overrides)

    def train(self, cfg: Any, out: Path, threads: int) -> dict[str, Any]:
        """The run's metrics on the preset's eval split (valid: the set has no test split)."""
        from affectus.training.trainer import train_run
        from affectus.utils.threads import torch_threads

        with torch_threads(threads):  # train_run leaves torch's thread count to its caller
            return train_run(self.ds, cfg, out, self.plan, data_source=self.data)


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.mean(values), 2),
            "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0}


def simulate(n: int, seed: int, shapes: dict[str, tuple[int, int]] = SHAPES) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    u = rng.uniform(0.1, 1.0, size=n)
    data: dict[str, np.ndarray] = {}
    for m, (steps, dim) in shapes.items():
        lengths = np.clip(np.rint(u * rng.uniform(0.95, 1.05, size=n) * steps), 1, steps).astype(np.int64)
        x = rng.standard_normal((n, steps, dim), dtype=np.float32)
        if m != "text":
            x[np.arange(steps)[None, :] >= lengths[:, None]] = 0.0
        data[m], data[f"{m}_lengths"] = x, lengths
    data["classes"] = rng.integers(0, 3, size=n)
    return data


def make_batch(data: dict[str, np.ndarray], rows: np.ndarray, cut: bool) -> Batch:
    """A Batch of `rows`; `cut` trims every modality to the batch's longest true length."""
    import torch

    from affectus.data.batches import Batch

    t = torch.from_numpy
    parts = {}
    for m in SHAPES:
        lengths = data[f"{m}_lengths"][rows]
        width = int(lengths.max()) if cut else data[m].shape[1]
        parts[m] = t(np.ascontiguousarray(data[m][rows, :width]))
        parts[f"{m}_lengths"] = t(lengths)
    return Batch(index=t(rows.astype(np.int64)), classes=t(data["classes"][rows]), **parts)


def cmc_plus_loss(model: CMCPlus, batch: Batch, rc: CMCPlusRecipeConfig) -> torch.Tensor:
    """The recipe's router loss (`CMCPlusRecipe._fit_router`) on the verdict of a forward through the
    whole model: CE + the MOSI Acc2 rule as a BCE on logit_pos - logit_neg + L2 on the evidence MLP."""
    import torch.nn.functional as F

    from affectus.data.schemes import get_scheme

    out = model(batch)
    y = batch.classes
    binary = get_scheme("mosi").binary_targets(y)  # the Acc2 rule (Has0: non-negative)
    logits = out.logits.float()
    loss = F.cross_entropy(logits, y)
    loss = loss + rc.acc2_loss * F.binary_cross_entropy_with_logits(logits[:, 2] - logits[:, 0], binary.float())
    if model.router.mlp is not None:
        loss = loss + rc.router_weight_decay * sum((p**2).sum() for p in model.router.mlp.parameters())
    return loss


def percentiles(ms: list[float], digits: int = 3) -> dict[str, float]:
    """Median, 99th percentile and maximum of latencies in ms (NaN when none), and how many there were."""
    if not ms:
        return {"p50_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan, "calls": 0}
    ordered = sorted(ms)
    return {"p50_ms": round(statistics.median(ordered), digits),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], digits),
            "max_ms": round(ordered[-1], digits), "calls": len(ordered)}
