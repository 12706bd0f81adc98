"""Training time of the missing-modality models against CMC's, in one process (issue 10: a CUMDF run takes
no more than 3x a CMC run's wall time).

    python benchmarks/bench_missing_time.py [--seeds 2] [--threads 1] [--models cmc,cumdf,mcur,cmc:cmc_avail]

Trains each model on the shared CMU-MOSI utterance set (train -> valid, preset mosi-utterance, default
settings), interleaved seed by seed so that a busy machine slows all of them alike, and prints one JSON
object: per-run wall seconds (train_run, evaluation included), epochs per stage, peak RSS, and each
model's median wall time as a ratio to CMC's.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mosi-utterance" / "mosi_utterance_trainval.pkl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="cmc,cumdf,mcur,cmc:cmc_avail", help="model[:variant],...; cmc first")
    args = ap.parse_args()

    from affectus.data.load import open_data
    from affectus.training.config import resolve_config
    from affectus.training.loop import training_log
    from affectus.training.trainer import plan_for, train_run
    from affectus.utils.threads import enable_flush_denormal, torch_threads

    enable_flush_denormal()  # as the CLI does
    ds, preset = open_data(args.data, "mosi-utterance")
    plan = plan_for(ds, preset)
    root = Path(tempfile.mkdtemp(prefix="bench-missing-"))
    specs = [m.split(":") for m in args.models.split(",")]
    runs = []
    for seed in range(1, args.seeds + 1):
        for spec in specs:
            model, variant = spec[0], (spec[1] if len(spec) > 1 else None)
            cfg = resolve_config(model, variant, preset, None, {"train.seed": seed})
            out = root / f"{model}-{cfg.variant}-{seed}"
            t0 = time.perf_counter()
            with torch_threads(args.threads), training_log():
                metrics = train_run(ds, cfg, out, plan, data_source=args.data)
            info = json.loads((out / "run.json").read_text())
            runs.append({"model": model, "variant": cfg.variant, "seed": seed,
                         "seconds": round(time.perf_counter() - t0, 2),
                         "epochs": {k: v.get("epochs") for k, v in info["stages"].items()},
                         "has0_f1": metrics.get("has0_f1")})
    label = [f"{r['model']}:{r['variant']}" for r in runs]
    median = {k: statistics.median(r["seconds"] for r, lab in zip(runs, label) if lab == k) for k in dict.fromkeys(label)}
    base = median[label[0]]
    print(json.dumps({
        "data": args.data, "threads": args.threads, "seeds": args.seeds, "runs": runs,
        "median_seconds": median, "ratio_to_first": {k: round(v / base, 2) for k, v in median.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
