"""Wall time of the Table V experiment (7 rows x 2 seeds = 14 CMC runs) and the runner's overhead.

    python benchmarks/bench_table5.py            # at most ~35 min on 2 CPU cores (see the size below)
    python benchmarks/bench_table5.py --quick    # 1-3 minutes: smaller data, 3 epochs per stage

Data: the simulator with CH-SIMS's feature widths (text 768, audio 33, vision 709) and its preset
(Table III: 5 layers, 4 heads), shrunk so the whole table fits in an hour on 2 cores:
  full   scale 0.25, seq_scale 0.25: 342 / 114 / 114 samples, sequences 10 / 100 / 14; at most 30
         epochs per stage with the paper's patience 10, so <= 60 epochs per run. An epoch (train +
         validation) took ~2 s with 1 thread on a shared 2-core machine: <= 14 x 60 x 2.2 s ~ 31 min;
  quick  scale 0.1,  seq_scale 0.1:  137 / 46 / 46 samples, sequences 4 / 40 / 6; 3 epochs per stage
         (patience 2).
Runs go one at a time (--jobs 1) with `--threads` torch threads, default 1: on a 2-core machine
shared with other processes, 2 intra-op threads made an epoch 4-8x slower than 1 (threads that
spin-wait for a core another process holds); on an idle machine try --threads 2.

Prints one JSON object: wall_seconds (the `run_experiment` call, data loading and aggregation
included), runs_per_hour, sum_run_seconds (time inside `train_run`), overhead = (wall - sum of
run times) / wall (target < 0.05), peak_rss_mb (this process; children too when --jobs > 1), the
size used, and the D_test / D_msc / D_msi Acc2 means of every row (simulated data: a smoke check of
the pipeline, not evidence about real-world accuracy).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from affectus.data.mmsa import write_pickle
from affectus.data.synthetic import SynthConfig, generate
from affectus.experiments.runner import run_experiment

SIZES = {
    "full": {"scale": 0.25, "seq_scale": 0.25, "overrides": {"train.epochs": 30, "train.patience": 10}},
    "quick": {"scale": 0.1, "seq_scale": 0.1, "overrides": {"train.epochs": 3, "train.patience": 2}},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few-minute version")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--out", type=Path, default=None, help="experiment directory (default: a temp dir)")
    args = parser.parse_args()
    size = SIZES["quick" if args.quick else "full"]

    with tempfile.TemporaryDirectory(prefix="bench_table5_") as tmp:
        config = SynthConfig.from_preset("sims", scale=size["scale"], seq_scale=size["seq_scale"])
        data = Path(tmp) / "sims_sim.pkl"
        write_pickle(generate(config), data)
        out = args.out or Path(tmp) / "exp"
        started = time.perf_counter()
        summary = run_experiment("table5_ablation", out, data=str(data), preset="sims", seeds=2, jobs=args.jobs,
                                 overrides=size["overrides"], threads=args.threads, progress=False)
        wall = time.perf_counter() - started

    run_sum = sum(summary["run_seconds"].values())
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    scale_kb = 1024 if sys.platform == "darwin" else 1  # ru_maxrss: bytes on macOS, KiB on Linux
    result = {
        "benchmark": "table5_ablation",
        "mode": "quick" if args.quick else "full",
        "runs": summary["runs"],
        "trained": summary["trained"],
        "wall_seconds": round(wall, 2),
        "runs_per_hour": round(summary["trained"] / wall * 3600, 2),
        "sum_run_seconds": round(run_sum, 2),
        "mean_run_seconds": round(run_sum / max(1, summary["trained"]), 2),
        "overhead": round((wall - run_sum) / wall, 4) if args.jobs == 1 else None,
        "peak_rss_mb": round(rss_kb / 1024 / scale_kb, 1),
        "peak_rss_children_mb": round(child_kb / 1024 / scale_kb, 1),
        "size": {"splits": config.sizes, "seq_lens": config.seq_lens, "dims": config.dims, "preset": "sims",
                 **size["overrides"]},
        "threads": args.threads,
        "jobs": args.jobs,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "acc2_means": {g["row"]: {k: round(g["mean"][f"{k}.acc2"], 2) for k in ("d_test", "d_msc", "d_msi")
                                  if g["mean"].get(f"{k}.acc2") is not None} for g in summary["groups"]},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":  # required: --jobs > 1 spawns workers that re-import this file
    sys.exit(main())
