"""Quality on real data: CMC (several seeds) vs a logistic-regression early-fusion baseline on the
shared CMU-MOSI utterance set (train -> valid; the set has no test split, see its README).

    python benchmarks/bench_mosi_utterance.py [--seeds 5] [--variant cmc] [--set key=value ...] [--out DIR]

Prints one JSON object: per-seed and mean +- std valid Has0-Acc2 / F1 (and Non0, Acc3) for CMC,
and the baseline's numbers: the registered `linear` model fitted on the Acc2 truth (variant linear_acc2;
C chosen on valid, as the set's README does), trained by the same trainer on the same inputs as the
model's runs (the preset's inputs: MiniLM transcript vectors + the file's text feature, unless --set
train.text_inputs=... says otherwise).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MosiUtterance, mean_std, mosi_utterance_args

KEYS = ("has0_acc2", "has0_f1", "non0_acc2", "non0_f1", "acc3")


def main() -> None:
    ap = mosi_utterance_args(__doc__, seeds=5, threads=2)
    ap.add_argument("--variant", default=None, help="the model's variant (default: its default)")
    ap.add_argument("--model", default="cmc")
    args = ap.parse_args()

    from affectus.training.config import parse_set

    mosi = MosiUtterance(args.data)
    plan = mosi.plan
    root = Path(args.out or tempfile.mkdtemp(prefix="bench-mosi-utt-"))
    runs = []
    for seed in range(1, args.seeds + 1):
        overrides = {**parse_set(args.sets), "train.seed": seed, "train.threads": args.threads}
        cfg = mosi.config(args.model, args.variant, overrides)
        t0 = time.perf_counter()
        m = mosi.train(cfg, root / f"seed{seed}", args.threads)
        runs.append({"seed": seed, "seconds": round(time.perf_counter() - t0, 1), **{k: m[k] for k in KEYS}})

    def agg(rows):
        return {k: mean_std([r[k] for r in rows]) for k in KEYS}

    # the baseline reads what the model's runs read (text inputs and encoder), seed 0 (lbfgs is deterministic)
    inputs = {"train.text_inputs": cfg.train.text_inputs, "train.text_encoder": cfg.train.text_encoder}
    base_cfg = mosi.config("linear", "linear_acc2", {**inputs, "train.seed": 0})
    base = mosi.train(base_cfg, root / "logreg", args.threads)
    stage = json.loads((root / "logreg" / "run.json").read_text())["stages"]["linear"]
    print(json.dumps({
        "data": args.data, "split": plan.eval, "model": args.model, "variant": args.variant, "overrides": args.sets,
        "seeds": args.seeds, "runs": runs, "mean_std": agg(runs),
        "logreg_baseline": {"C": stage["C"], "text_inputs": base_cfg.train.text_inputs,
                            **{k: round(base[k], 2) for k in KEYS if k in base}},
    }, indent=2))


if __name__ == "__main__":
    main()
