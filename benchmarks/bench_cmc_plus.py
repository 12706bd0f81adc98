"""CMC+ against the strong simple baselines (issue 9), through affectus's own trainer. JSON out.

    python benchmarks/bench_cmc_plus.py sim  [--mislead 0.5] [--seeds 5] [--models cmc_plus,logreg,late_fusion]
    python benchmarks/bench_cmc_plus.py mosi [--seeds 5] [--models cmc_plus,logreg,minilm_probe]
    python benchmarks/bench_cmc_plus.py sim --models cmc_plus --variants cmc_plus,global_router,...  (ablation)

Each row is a model (or a CMC+ variant); prints one JSON object (mean +- std over seeds, per-seed numbers,
paired differences against logistic regression) and a markdown table on stderr.

sim: the conflict simulator, `sims` preset shapes and split sizes with sequences x0.25, inconsistency 0.5,
  `--mislead` = text_misleading (1/3: the preset default, text contradicts the clip's label in about 1/6
  of the clips; 0.5: in about a quarter). Data seed = model seed = 1..seeds. train trains, valid selects,
  test is reported (D_test / D_msi / D_msc Acc2, CH-SIMS rule). Test labels score only; the D_msi mask
  comes from test's unimodal labels at scoring time. Also the router's text share and the 3-class accuracy
  on test clips whose text contradicts the label vs the others.

mosi: the shared CMU-MOSI utterance set (train + valid; valid is the reported split). Every model is
  scored by 5-fold cross-fitting over valid, folds grouped by video: for fold f, the model trains on
  train, selects (early stopping, C, the CMC+ consensus) on valid minus f, and predicts f; the score is
  over all of valid's held-out predictions. So no reported prediction comes from anything that saw its
  label. (`--protocol preset`: valid both selects and is reported, as the mosi-utterance preset runs.)

Every row trains through affectus's own trainer (`train_run`) and reads the preset's inputs (on mosi: the
MiniLM transcript vectors next to the file's text-CNN feature, as CMC+ does). Baselines are the registered
`linear` model (logistic regression on the standardised concatenated pooled inputs, C in {0.001 .. 10} chosen
on the selection rows), fitted on the Acc2 truth (variant linear_acc2, the stronger target for it):
`logreg` on every input; `logreg_file` on the file's features alone (train.text_inputs=file: what `logreg`
read before presets declared their inputs); `minilm_probe` on the transcript view alone (variant
linear_text); and `late_fusion` (MMSA's LF-DNN), `cmc` (faithful).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MOSI = ROOT.parent / "shared" / "data" / "mosi-utterance" / "mosi_utterance_trainval.pkl"


# the baseline rows, as registered models (MODEL/VARIANT@overrides, see `parse_row`)
ALIASES = {
    "logreg": "linear/linear_acc2@recipe.max_iter=3000",
    "logreg_file": "linear/linear_acc2@recipe.max_iter=3000,train.text_inputs=file",
    "minilm_probe": "linear/linear_text@recipe.target=acc2,recipe.max_iter=3000",
}


def train_model(ds, plan, preset, model: str, variant: str | None, seed: int, sets: dict):
    """Train through affectus's trainer; returns the run's predictor and its prediction on the eval split."""
    from affectus.inference.predictor import load
    from affectus.training.config import resolve_config
    from affectus.training.trainer import train_run

    cfg = resolve_config(model, variant, preset, None, {"train.seed": seed, **sets})
    with tempfile.TemporaryDirectory(prefix="bench-cmcplus-") as d:
        t0 = time.perf_counter()
        train_run(ds, cfg, Path(d) / "run", plan)
        seconds = time.perf_counter() - t0
        predictor = load(Path(d) / "run")
        split = ds[plan.eval]  # the predictor re-encodes its transcripts if the run did
        pred = predictor.predict(split)
        stages = predictor.info["stages"]
    return pred, seconds, stages


def logits_of(pred) -> np.ndarray:
    return np.log(np.clip(pred.probabilities, 1e-12, None))


# ------------------------------------------------------------------------------------------ sim

def run_sim(args, model: str, seed: int) -> dict:
    from affectus.data.presets import load_preset
    from affectus.data.synthetic import generate_dataset
    from affectus.data.types import to_classes
    from affectus.evaluation.metrics import compute_metrics
    from affectus.training.trainer import plan_for

    ds = generate_dataset("sims", seq_scale=args.seq_scale, seed=seed, inconsistency=0.5, text_misleading=args.mislead)
    preset = load_preset("sims")
    plan = plan_for(ds, preset)
    test = ds[plan.eval]
    out: dict = {}
    name, variant, sets = parse_row(model)
    pred, seconds, _ = train_model(ds, plan, preset, name, variant, seed, {"train.threads": args.threads, **sets})
    logits, weights = logits_of(pred), pred.router_weights
    m = compute_metrics(plan.scheme, logits=logits, scores=test.labels, unimodal_scores=test.unimodal_labels)
    out["final"] = {"d_test_acc2": m["d_test"]["acc2"], "d_msi_acc2": m["d_msi"]["acc2"],
                    "d_msc_acc2": m["d_msc"]["acc2"], "d_test_f1": m["d_test"]["f1"]}
    y = to_classes(test.labels)
    contra = to_classes(test.unimodal_labels["text"]) != y
    verdict = logits.argmax(1)
    out["groups"] = {g: {"n": int(rows.sum()), "acc3": round(100 * float((verdict[rows] == y[rows]).mean()), 2),
                         "text_share": None if weights is None else round(float(weights[rows, 0].mean()), 3)}
                     for g, rows in (("text_contradicts", contra), ("text_agrees", ~contra))}
    out["seconds"] = round(seconds, 1)
    return out


# ----------------------------------------------------------------------------------------- mosi

def video_folds(ids, k: int, seed: int) -> list[np.ndarray]:
    videos = np.array([i.rsplit("_", 1)[0] for i in ids])
    names = np.random.default_rng(seed).permutation(sorted(set(videos)))
    return [np.flatnonzero(np.isin(videos, part)) for part in np.array_split(names, k)]


def run_mosi(args, model: str, seed: int, cache: dict) -> dict:
    from affectus.data.load import open_data
    from affectus.data.types import MERDataset
    from affectus.evaluation.metrics import compute_metrics
    from affectus.training.trainer import DataPlan

    if "ds" not in cache:
        cache["ds"], cache["preset"] = open_data(args.mosi_data, "mosi-utterance")
    ds, preset = cache["ds"], cache["preset"]
    scheme = preset.scheme
    valid = ds["valid"]
    if args.protocol == "preset":
        parts = [(np.arange(len(valid)), np.arange(len(valid)))]
    else:  # the folds depend on the seed too, so seeds differ in the split as well as the model
        parts = [(np.setdiff1d(np.arange(len(valid)), f), f) for f in video_folds(valid.ids, args.folds, seed)]
    logits = np.zeros((len(valid), 3), np.float32)
    seconds = 0.0
    choices: list[dict] = []
    for sel_rows, eval_rows in parts:
        fold = MERDataset(splits={"train": ds["train"], "select": valid.subset(sel_rows, "select"),
                                  "eval": valid.subset(eval_rows, "eval")}, source=ds.source)
        plan = DataPlan("train", "select", "eval", scheme)
        name, variant, sets = parse_row(model)
        pred, s, stages = train_model(fold, plan, preset, name, variant, seed, {"train.threads": args.threads, **sets})
        logits[eval_rows], seconds = logits_of(pred), seconds + s
        fallback = stages.get("consensus", {}).get("fallback")
        if fallback is not None:  # CMC+'s choice per fold: lambda and the expert it leans on
            choices.append({"shrink": fallback.get("shrink"), "expert": fallback.get("expert"),
                            "weights": stages["consensus"].get("mean_weights"),
                            "alone_acc": {k: v["acc"] for k, v in fallback.get("experts_heldout", {}).items()}})
    m = compute_metrics(scheme, logits=logits, scores=valid.labels)
    final = {k: m[k] for k in ("has0_acc2", "has0_f1", "non0_acc2", "acc3")}
    # a diagnostic for a class-prior shift between valid and unseen videos: Has0 accuracy at balanced classes
    # (the mean of the two recalls; train is 49% non-negative, valid 59%)
    truth, guess = np.asarray(valid.labels) >= 0, logits[:, 2] > logits[:, 0]
    final["has0_bacc"] = 50.0 * float((guess[truth]).mean() + (~guess[~truth]).mean())
    return {"final": final, "seconds": round(seconds, 1), **({"fallback": choices} if choices else {})}


def parse_row(spec: str) -> tuple[str, str | None, dict]:
    """"MODEL[/VARIANT][@key=value,key=value]" (or an ALIASES name) -> (model, variant, config overrides)."""
    from affectus.training.config import parse_set

    head, _, sets = ALIASES.get(spec, spec).partition("@")
    name, _, variant = head.partition("/")
    return name, variant or None, parse_set(sets.split(",")) if sets else {}


# ----------------------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", choices=("sim", "mosi"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--models", default=None, help="semicolon list: cmc_plus, logreg, logreg_file, minilm_probe, "
                                                     "late_fusion, cmc, or MODEL[/VARIANT][@key=value,...]")
    ap.add_argument("--variants", default=None, help="cmc_plus variants to run as extra rows (ablation)")
    ap.add_argument("--mislead", type=float, default=1 / 3)
    ap.add_argument("--seq-scale", type=float, default=0.25)
    ap.add_argument("--protocol", default="crossfit", choices=("crossfit", "preset"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mosi-data", "--mosi", default=str(MOSI),
                    help="mosi: the shared set's pickle (default: shared/ beside the checkout)")
    ap.add_argument("--reuse", action="append", default=[], metavar="LOG",
                    help="the stderr of an earlier run with the same data and protocol: its per-seed result lines "
                         "are taken as they are instead of rerunning that model and seed (an interrupted or "
                         "split benchmark)")
    ap.add_argument("--also", action="append", default=[], metavar="JSON",
                    help="add the rows of an earlier result of the same data, protocol and seeds (not rerun), e.g. "
                         "to pair rows run in two processes")
    args = ap.parse_args()
    import torch

    from affectus.utils.threads import enable_flush_denormal

    torch.set_num_threads(args.threads)
    enable_flush_denormal()
    default = "cmc_plus,logreg,late_fusion" if args.data == "sim" else "cmc_plus,logreg,minilm_probe"
    models = [m for m in (default.replace(",", ";") if args.models is None else args.models).split(";") if m]
    models += [f"cmc_plus/{v}" for v in (args.variants or "").split(",") if v]
    cache: dict = {}
    rows = {}
    done = {}
    for path in args.reuse:
        for line in Path(path).read_text().splitlines():
            if line.startswith("{") and '"seed"' in line:
                r = json.loads(line)
                done[(r.pop("model"), r["seed"])] = r
    t_all = time.perf_counter()
    for model in models:
        runs = []
        for seed in range(1, args.seeds + 1):
            if (model, seed) in done:
                r = done[(model, seed)]
            else:
                r = run_sim(args, model, seed) if args.data == "sim" else run_mosi(args, model, seed, cache)
            r["seed"] = seed
            runs.append(r)
            print(json.dumps({"model": model, **r}), file=sys.stderr, flush=True)
        keys = list(runs[0]["final"])
        agg = {k: {"mean": round(statistics.mean(r["final"][k] for r in runs), 2),
                   "std": round(statistics.stdev(r["final"][k] for r in runs), 2) if len(runs) > 1 else 0.0}
               for k in keys}
        rows[model] = {"mean_std": agg, "runs": runs}
        if args.data == "sim":
            rows[model]["groups"] = {g: {k: _mean([r["groups"][g][k] for r in runs]) for k in ("acc3", "text_share")}
                                     for g in ("text_contradicts", "text_agrees")}
    for path in args.also:
        earlier = json.loads(Path(path).read_text())
        if (earlier["data"], earlier["seeds"], earlier.get("protocol")) != (args.data, args.seeds, result_protocol(args)):
            raise SystemExit(f"error: {path} is not a {args.data} result with {args.seeds} seeds under the same protocol")
        rows.update({m: {k: v for k, v in r.items() if not k.startswith("minus_")} for m, r in earlier["rows"].items()
                     if m not in rows})
    for base in ("logreg", "minilm_probe"):  # paired differences (same data and folds per seed)
        if base in rows:
            for model, row in rows.items():
                if model != base:
                    row[f"minus_{base}"] = {k: _paired(row["runs"], rows[base]["runs"], k) for k in row["mean_std"]
                                            if k in rows[base]["mean_std"]}
    result = {"bench": "cmc_plus", "data": args.data, "argv": sys.argv[1:], "seeds": args.seeds,
              "protocol": result_protocol(args), "also": args.also, "reused": args.reuse,
              "mislead": args.mislead if args.data == "sim" else None, "rows": rows,
              "wall_s": round(time.perf_counter() - t_all, 1)}
    print(json.dumps(result, indent=1))
    _table(rows, file=sys.stderr)


def result_protocol(args) -> str:
    return args.protocol if args.data == "mosi" else "train/valid/test"


def _mean(values):
    values = [v for v in values if v is not None]
    return round(statistics.mean(values), 3) if values else None


def _paired(runs, base, key) -> dict:
    diffs = [r["final"][key] - b["final"][key] for r, b in zip(runs, base)]
    return {"mean": round(statistics.mean(diffs), 2),
            "std": round(statistics.stdev(diffs), 2) if len(diffs) > 1 else 0.0,
            "per_seed": [round(d, 2) for d in diffs]}


def _table(rows, file) -> None:
    keys = list(next(iter(rows.values()))["mean_std"])
    print("| model | " + " | ".join(keys) + " | paired vs logreg (first two) | paired vs minilm_probe (first two) |",
          file=file)
    print("|---" * (len(keys) + 3) + "|", file=file)
    for model, row in rows.items():
        cells = [f"{row['mean_std'][k]['mean']:.2f} ± {row['mean_std'][k]['std']:.2f}" if k in row["mean_std"] else ""
                 for k in keys]
        diffs = []
        for base in ("logreg", "minilm_probe"):
            paired = row.get(f"minus_{base}")
            diffs.append(", ".join(f"{paired[k]['mean']:+.2f} ± {paired[k]['std']:.2f}" for k in keys[:2] if k in paired)
                         if paired else "")
        print(f"| {model} | " + " | ".join(cells) + f" | {diffs[0]} | {diffs[1]} |", file=file)


if __name__ == "__main__":
    main()
