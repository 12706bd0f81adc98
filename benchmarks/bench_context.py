"""Context on real data: each model with and without `train.context` on the shared CMU-MOSI utterance set.

    python benchmarks/bench_context.py [--models late_fusion,linear,cmc_plus] [--context 2] [--causal]
                                       [--seeds 3] [--set key=value ...] [--out DIR]

Trains every model with `train.context=0` and `train.context=N` (preset mosi-utterance: MiniLM transcript
vectors beside the file's text feature; the set's ids give each utterance's video), seeds 1..S, and prints
one JSON object: per run the valid Has0-Acc2 / F1 (the preset's eval split; the set has no test split) and
run.json's train_seconds, per model and setting the mean +- std, and per model the training-time ratio
with / without context (mean train_seconds; the transcripts are encoded once per process, outside it).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MosiUtterance, mean_std, mosi_utterance_args

KEYS = ("has0_acc2", "has0_f1", "non0_acc2", "acc3")


def main() -> None:
    ap = mosi_utterance_args(__doc__, seeds=3, threads=1)
    ap.add_argument("--models", default="late_fusion,linear")
    ap.add_argument("--context", type=int, default=2)
    ap.add_argument("--causal", action="store_true")
    args = ap.parse_args()

    from affectus.training.config import parse_set

    mosi = MosiUtterance(args.data)
    plan = mosi.plan
    root = Path(args.out or tempfile.mkdtemp(prefix="bench-context-"))
    settings = {"without": {"train.context": 0},
                "with": {"train.context": args.context, "train.context_causal": args.causal}}
    runs: list[dict] = []
    for model in args.models.split(","):
        for label, ctx in settings.items():
            for seed in range(1, args.seeds + 1):
                overrides = {**parse_set(args.sets), **ctx, "train.seed": seed, "train.threads": args.threads}
                if not ctx["train.context"]:
                    overrides.pop("train.context_causal", None)
                out = root / f"{model}-{label}-seed{seed}"
                m = mosi.train(mosi.config(model, None, overrides), out, args.threads)
                info = json.loads((out / "run.json").read_text())
                runs.append({"model": model, "context": label, "seed": seed,
                             "train_seconds": info["train_seconds"], **{k: round(m[k], 2) for k in KEYS}})

    summary = {}
    for model in args.models.split(","):
        per = {label: [r for r in runs if r["model"] == model and r["context"] == label] for label in settings}
        summary[model] = {label: {k: mean_std([r[k] for r in rows]) for k in (*KEYS, "train_seconds")} for label, rows in per.items()}
        t = {label: summary[model][label]["train_seconds"]["mean"] for label in settings}
        summary[model]["time_ratio_with_over_without"] = round(t["with"] / t["without"], 2) if t["without"] else None
    print(json.dumps({"data": args.data, "split": plan.eval, "context": args.context, "causal": args.causal,
                      "seeds": args.seeds, "overrides": args.sets, "runs": runs, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
