"""Prediction latency at batch 1 from features (issue 9): CMC+ and faithful CMC at CMU-MOSI shapes. JSON out.

    python benchmarks/bench_latency.py [--calls 300] [--warmup 30] [--threads 1]

For each model a real run directory is written first: `train_run` on a tiny simulated set with CMU-MOSI's
shapes (text 50x768, audio 375x5, vision 500x20; 48 train / 16 valid samples, preset `mosi`), trained for a
token number of epochs, because latency does not depend on the weights, only on the network. Then, per
model, batch-1 calls from features are timed two ways, interleaved call by call (a busy moment slows all
alike):

  predictor   `affectus.load(run).predict({"text", "audio", "vision", "*_lengths"})`: the public road,
              with its input checks, the Split it builds, batching and the Prediction it returns;
  model       the loaded network's forward alone (`predictor.model(batch)`, eval mode, no_grad) on a
              ready Batch: the difference is the predictor's overhead.

Each sample's true lengths are drawn as bench_speed.py draws them (u ~ U(0.1, 1) of the padded length).
Reported: median and p99 in milliseconds over `--calls` calls after `--warmup` untimed ones.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench_speed.py: sleeping OpenMP workers on a shared CPU

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHAPES, percentiles, simulate

# model, variant, settings that make the tiny run quick (the network stays the model's default)
RUNS = {
    "cmc_plus": ("cmc", "cmc_plus", {"recipe.expert_epochs": 2, "recipe.router_steps": 5,
                                     "recipe.consensus_fit": "select"}),
    "cmc_faithful": ("cmc", None, {"train.epochs": 1}),
}


def tiny_dataset(seed: int):
    """48 train / 16 valid samples with CMU-MOSI's shapes and scores in [-3, 3]."""
    from affectus.data.types import MERDataset, Split

    splits = {}
    for name, n in (("train", 48), ("valid", 16)):
        d = simulate(n, seed + len(splits))
        labels = np.random.default_rng(seed).uniform(-3, 3, n).astype(np.float32)
        splits[name] = Split(name=name, labels=labels, ids=[f"{name}{i}" for i in range(n)],
                             **{m: d[m] for m in SHAPES}, **{f"{m}_lengths": d[f"{m}_lengths"] for m in SHAPES})
    return MERDataset(splits, source="<bench_latency>")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: a serving worker per core)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from affectus.data.batches import Batch
    from affectus.data.presets import load_preset
    from affectus.inference.predictor import load
    from affectus.training.config import resolve_config
    from affectus.training.loop import training_log
    from affectus.training.trainer import plan_for, train_run
    from affectus.utils.threads import enable_flush_denormal

    enable_flush_denormal()  # as the CLI does
    torch.set_num_threads(args.threads)
    preset = load_preset("mosi")
    ds = tiny_dataset(args.seed)
    plan = plan_for(ds, preset)
    root = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    predictors = {}
    for key, (model, variant, sets) in RUNS.items():
        cfg = resolve_config(model, variant, preset, None, {"train.seed": 1, **sets})
        with training_log():  # epoch lines kept off the console
            train_run(ds, cfg, root / key, plan)
        predictors[key] = load(root / key)

    # one sample per call, cycling over 32 drawn samples (lengths vary as in bench_speed.py)
    data = simulate(32, args.seed + 7)
    samples = []
    for i in range(32):
        arrays = {m: data[m][i : i + 1] for m in SHAPES}
        arrays.update({f"{m}_lengths": data[f"{m}_lengths"][i : i + 1] for m in SHAPES})
        t = torch.from_numpy
        batch = Batch(index=torch.zeros(1, dtype=torch.long), **{k: t(np.ascontiguousarray(v)) for k, v in arrays.items()})
        samples.append((arrays, batch))

    calls = {(key, road): [] for key in predictors for road in ("predictor", "model")}
    for i in range(args.warmup + args.calls):
        arrays, batch = samples[i % len(samples)]
        for key, predictor in predictors.items():
            for road in ("predictor", "model"):
                t0 = time.perf_counter()
                if road == "predictor":
                    predictor.predict(arrays)
                else:
                    with torch.no_grad():
                        predictor.model(batch)
                ms = 1000 * (time.perf_counter() - t0)
                if i >= args.warmup:
                    calls[(key, road)].append(ms)

    latency = {key: {road: percentiles(calls[(key, road)]) for road in ("predictor", "model")} for key in predictors}
    for roads in latency.values():
        roads["predictor_overhead_p50_ms"] = round(roads["predictor"]["p50_ms"] - roads["model"]["p50_ms"], 3)
    print(json.dumps({
        "benchmark": "prediction latency at batch 1 from features, CMU-MOSI shapes",
        "device": f"cpu ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "shapes": {m: list(s) for m, s in SHAPES.items()},
        "warmup_calls": args.warmup,
        "models": {key: {"model": RUNS[key][0], "variant": RUNS[key][1] or "default",
                         "model_config": predictors[key].info["model_config"]} for key in predictors},
        "latency": latency,
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
