"""MELD, 7 emotions: frozen vs fine-tuned transcript encoder, with and without context, a few models.

    python benchmarks/bench_meld.py [--data DIR_OR_NPZ] [--models linear,late_fusion,cmc_plus]
                                    [--finetune late_fusion] [--layers 1] [--ft-epochs 3] [--context 2]
                                    [--seeds 3] [--ft-seeds 1] [--seed-offset 0] [--no-context-runs | --context-only]
                                    [--encoder minilm|DIR] [--cache DIR] [--text-context K [--text-context-causal]]
                                    [--class-weights none|balanced|sqrt] [--json FILE] [--set key=value ...]

Data: MELD's train and dev transcripts (`../shared/data/meld`, imported as `affectus import meld` does; its
test split is held out and never read). The field reports weighted F1 on test; we report it on **dev**, which
here is evaluation only: every run selects (early stopping, the linear model's C, CMC+'s consensus) on a
selection split of 10% of train's dialogues (`--select-share`, chosen by a hash of the dialogue id), trains on
the other 90%, and dev's labels are read by scoring alone.

Every model reads the preset `meld`'s inputs (frozen MiniLM sentence vectors of the transcripts), or those of
`--encoder DIR` (a local BERT-family / sentence-transformers folder, e.g. all-mpnet-base-v2, docs/text.md; its
rows' encoder column reads "mpnet-frozen"). `--cache DIR` keeps the frozen sentence vectors on disk between
processes (keyed by the encoder's record, fingerprint included, and the transcripts), so a larger encoder is
run over the transcripts once. `--text-context K` reads each utterance with its K neighbours through the
encoder's input (train.text_context; "+textctxK[causal]" in the encoder column); `--class-weights` sets
train.class_weights ("+cw-NAME"). Settings:
`frozen` (train.text_encoder_finetune=0) and, for the `--finetune` models, `finetune-N` (the last `--layers`
MiniLM layers fine-tuned at train.bert_lr, `--ft-epochs` epochs, length-bucketed batches); each with
train.context=0 and train.context=K. Seeds 1..S (`--ft-seeds` for the fine-tuned runs, which cost minutes
each on CPU). Prints one JSON object (also written to `--json` after every run, so a cut run keeps what it
finished): per run dev weighted F1 / accuracy / UAR / per-class F1 and run.json's train_seconds; per model
and setting the mean +- std; the training-time ratios fine-tuned / frozen and context / none (train_seconds:
the transcripts are encoded once per process, outside it; `encode_seconds` says how long that took).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "meld"
KEYS = ("f1", "acc", "uar")
TARGET_TEST_F1 = 60.0  # issue 19: weighted F1 on MELD's held-out test split


def selection_split(dataset, share: float, seed_text: str = "meld-select"):
    """train -> train (the rest) + select (`share` of its dialogues, by a hash of the dialogue id); dev stays."""
    from affectus.data.types import MERDataset

    train = dataset["train"]
    groups = np.asarray(train.groups, dtype=object)
    unique = sorted(set(train.groups))
    picked = {g for g in unique
              if int(hashlib.sha256(f"{seed_text}:{g}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share}
    is_select = np.array([g in picked for g in groups])
    splits = {"train": train.subset(np.flatnonzero(~is_select), "train"),
              "select": train.subset(np.flatnonzero(is_select), "select"),
              "valid": dataset["valid"]}
    return MERDataset(splits=splits, source=dataset.source, sanitised=dict(dataset.sanitised))


def summarise(runs: list[dict], settings: list[tuple[str, str, int]]) -> dict:
    """Per (model, encoder, context): mean +- std over seeds; time ratios; the best setting on dev."""

    def mean_std(rows: list[dict], key: str) -> dict[str, float]:
        values = [r[key] for r in rows]
        return {"mean": round(statistics.mean(values), 2),
                "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0, "n": len(values)}

    summary: dict = {}
    for m, enc, ctx in settings:
        rows = [r for r in runs if (r["model"], r["encoder"], r["context"]) == (m, enc, ctx)]
        if rows:
            summary[f"{m} {enc} context={ctx}"] = {k: mean_std(rows, k) for k in (*KEYS, "train_seconds")}

    def ratio(a: str, b: str) -> float | None:
        if a in summary and b in summary and summary[b]["train_seconds"]["mean"]:
            return round(summary[a]["train_seconds"]["mean"] / summary[b]["train_seconds"]["mean"], 2)
        return None

    ratios = {}
    for m, enc, ctx in settings:
        if enc != "frozen":
            ratios[f"{m} context={ctx}: {enc} / frozen"] = ratio(f"{m} {enc} context={ctx}", f"{m} frozen context={ctx}")
        if ctx:
            ratios[f"{m} {enc}: context={ctx} / context=0"] = ratio(f"{m} {enc} context={ctx}", f"{m} {enc} context=0")
    best = max(summary.items(), key=lambda kv: kv[1]["f1"]["mean"]) if summary else None
    return {"summary": summary, "time_ratios": ratios,
            "best_on_dev": None if best is None else {
                "setting": best[0], "dev_weighted_f1": best[1]["f1"]["mean"],
                "issue_target_test_weighted_f1": TARGET_TEST_F1,
                "short_of_target_by": round(TARGET_TEST_F1 - best[1]["f1"]["mean"], 2)}}


def merge(paths: list[str]) -> dict:
    """Several runs' JSON (e.g. seeds or settings added by a later, shorter run) as one: every run, the summary
    over all of them, and each file's own time ratios (training times compare only within one process: the
    machine's load differs between runs)."""
    runs, per_file, seen = [], {}, set()
    for path in paths:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        for r in d["runs"]:
            key = (r["model"], r["encoder"], r["context"], r["seed"])
            if key not in seen:  # a setting and seed run twice (a repeat in another file) counts once
                seen.add(key)
                runs.append({**r, "file": Path(path).name})
        per_file[Path(path).name] = {"time_ratios": d.get("time_ratios"), "encode_seconds": d.get("encode_seconds"),
                                     "finetune": d.get("finetune"), "seeds": d.get("seeds")}
    settings = list(dict.fromkeys((r["model"], r["encoder"], r["context"]) for r in runs))
    out = summarise(runs, settings)
    out.pop("time_ratios")
    return {"merged": [Path(p).name for p in paths], "runs": runs, **out, "per_file": per_file}


def table(merged: dict) -> str:
    """The merged summary as a markdown table (dev weighted F1 first, as the field reports it)."""
    lines = ["| model | encoder | context | dev weighted F1 | acc | UAR | seeds | train s (mean) |",
             "|---|---|---|---|---|---|---|---|"]

    def cell(row: dict, k: str) -> str:
        return f"{row[k]['mean']:.2f}" + (f" ± {row[k]['std']:.2f}" if row[k]["n"] > 1 else "")

    for name, row in merged["summary"].items():
        model, enc, ctx = name.split(" ")
        lines.append(f"| {model} | {enc} | {ctx.split('=')[1]} | {cell(row, 'f1')} | {cell(row, 'acc')} | "
                     f"{cell(row, 'uar')} | "
                     f"{row['f1']['n']} | {row['train_seconds']['mean']:.0f} |")
    return "\n".join(lines)


def load_sentence_cache(folder: str | None) -> int:
    """Fill the toolkit's in-process sentence cache from `folder` (written by `save_sentence_cache`); the count read.
    Entries are keyed as the toolkit keys them (the encoder's record, fingerprint included, and a hash of the
    transcripts), so a changed encoder or file misses and is encoded again."""
    if not folder or not Path(folder).is_dir():
        return 0
    from affectus.features import text

    n = 0
    for f in sorted(Path(folder).glob("*.npz")):
        with np.load(f, allow_pickle=False) as z:
            text._SENTENCE_CACHE[(str(z["record"]), str(z["texts"]))] = z["vectors"]
            n += 1
    return n


def save_sentence_cache(folder: str | None) -> None:
    if not folder:
        return
    from affectus.features import text
    from affectus.utils.io import atomic_path

    Path(folder).mkdir(parents=True, exist_ok=True)
    for (record, texts), vectors in text._SENTENCE_CACHE.items():
        f = Path(folder) / f"{hashlib.sha256((record + texts).encode()).hexdigest()[:24]}.npz"
        if not f.exists():
            with atomic_path(f) as tmp, open(tmp, "wb") as fh:  # a handle: savez would append .npz to a name
                np.savez(fh, record=np.array(record), texts=np.array(texts), vectors=vectors)


def write_json(path: str | None, obj: dict) -> None:
    if path:
        from affectus.utils.io import write_json_atomic

        write_json_atomic(path, obj)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA), help="MELD's folder (train/dev CSVs) or an imported .npz")
    ap.add_argument("--models", default="linear,late_fusion,cmc_plus")
    ap.add_argument("--finetune", default="late_fusion", help="models also run with the encoder fine-tuned")
    ap.add_argument("--layers", type=int, default=1, help="MiniLM's last layers fine-tuned")
    ap.add_argument("--ft-epochs", type=int, default=3)
    ap.add_argument("--context", type=int, default=2)
    ap.add_argument("--no-context-runs", action="store_true", help="only train.context=0 (a shorter run)")
    ap.add_argument("--context-only", action="store_true", help="only train.context=K (a shorter run)")
    ap.add_argument("--seed-offset", type=int, default=0, help="seeds offset+1 .. offset+S (to add seeds later)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ft-seeds", type=int, default=1)
    ap.add_argument("--select-share", type=float, default=0.1)
    ap.add_argument("--encoder", default="minilm",
                    help="train.text_encoder: minilm (packaged) or a local BERT-family / sentence-transformers folder")
    ap.add_argument("--text-context", type=int, default=0,
                    help="train.text_context: neighbours read through the encoder's input (0: off)")
    ap.add_argument("--text-context-causal", action="store_true", help="with --text-context: preceding ones only")
    ap.add_argument("--text-context-tokens", type=int, default=128, help="train.text_context_tokens")
    ap.add_argument("--class-weights", default="none", help="train.class_weights: none, balanced or sqrt")
    ap.add_argument("--cache", default=None,
                    help="a folder keeping the frozen sentence vectors between processes (a larger encoder on CPU "
                         "takes many minutes per encoding)")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--json", default=None, help="also write the JSON here after every run")
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--merge", nargs="+", default=None, help="print the summary over these JSON outputs instead")
    ap.add_argument("--table", action="store_true", help="with --merge: a markdown table instead of JSON")
    args = ap.parse_args()
    if args.merge:
        merged = merge(args.merge)
        print(table(merged) if args.table else json.dumps(merged, indent=2))
        return

    from affectus.data.meld import import_meld
    from affectus.data.mmsa import load_dataset
    from affectus.data.presets import load_preset
    from affectus.features.text import apply_text_inputs, text_context_record
    from affectus.features.text_finetune import add_text_tokens
    from affectus.training.config import parse_set, resolve_config
    from affectus.training.trainer import DataPlan, train_run
    from affectus.utils.threads import enable_flush_denormal, torch_threads

    enable_flush_denormal()
    preset = load_preset("meld")
    data = Path(args.data)
    full = import_meld(data) if data.is_dir() else load_dataset(str(data), preset=preset)
    if "test" in full:  # never read: MELD's test split is held out
        full.splits.pop("test")
    ds = selection_split(full, args.select_share)
    plan = DataPlan("train", "select", "valid", preset.scheme)
    root = Path(args.out or tempfile.mkdtemp(prefix="bench-meld-"))

    # the transcripts encoded once for the process (cached by features/text*.py), timed here
    encode_seconds = {}
    with torch_threads(args.threads):
        started = time.perf_counter()
        loaded = load_sentence_cache(args.cache)
        text_context = text_context_record(args.text_context, args.text_context_causal)
        _, _, _, encoder = apply_text_inputs(ds, "sentence", args.encoder, text_context,
                                             args.text_context_tokens if text_context else None)
        encode_seconds["sentence_vectors"] = round(time.perf_counter() - started, 1)
        encode_seconds["sentence_vectors_from_cache"] = loaded
        save_sentence_cache(args.cache)
        if args.finetune:
            started = time.perf_counter()
            add_text_tokens(ds, encoder, encoder.hf_config.num_hidden_layers - args.layers)
            encode_seconds[f"lower_{encoder.hf_config.num_hidden_layers - args.layers}_layers"] = round(
                time.perf_counter() - started, 1)

    models = args.models.split(",")
    tuned = [m for m in args.finetune.split(",") if m]
    # the encoder column names a non-default encoder: "mpnet-frozen" (MiniLM's rows stay "frozen" / "finetune-N")
    label = "" if args.encoder == "minilm" else f"{encoder.hf_config.model_type}-"
    frozen, ft = f"{label}frozen", f"{label}finetune-{args.layers}"
    if text_context:  # "frozen+textctx1causal": the neighbours in the encoder's input
        frozen += f"+textctx{args.text_context}{'causal' if args.text_context_causal else ''}"
    if args.class_weights != "none":  # "frozen+cw-sqrt": the loss weighs the rare classes up
        frozen, ft = f"{frozen}+cw-{args.class_weights}", f"{ft}+cw-{args.class_weights}"
    settings = [(m, enc, ctx) for m in models for enc in (frozen, *([ft] if m in tuned else []))
                for ctx in ((0,) if args.no_context_runs else (args.context,) if args.context_only else (0, args.context))]
    runs: list[dict] = []
    result: dict = {}

    for m, enc, ctx in settings:
        seeds = args.ft_seeds if enc != frozen else args.seeds
        for seed in range(args.seed_offset + 1, args.seed_offset + seeds + 1):
            overrides = {**parse_set(args.sets), "train.context": ctx, "train.seed": seed, "train.threads": args.threads,
                         "train.text_encoder": args.encoder, "train.class_weights": args.class_weights}
            if text_context:
                overrides.update({"train.text_context": args.text_context, "train.context_causal": args.text_context_causal,
                                  "train.text_context_tokens": args.text_context_tokens})
            if enc != frozen:
                overrides.update({"train.text_encoder_finetune": args.layers, "train.epochs": args.ft_epochs,
                                  "train.patience": args.ft_epochs, "train.bucket": True})
            cfg = resolve_config(m, None, preset, None, overrides)
            out = root / f"{m}-{enc}-ctx{ctx}-seed{seed}"
            with torch_threads(args.threads):  # train_run leaves torch's thread count to its caller
                metrics = train_run(ds, cfg, out, plan, data_source=str(data))
            info = json.loads((out / "run.json").read_text())
            runs.append({"model": m, "encoder": enc, "context": ctx, "seed": seed,
                         "train_seconds": info["train_seconds"],
                         **{k: round(metrics[k], 2) for k in KEYS},
                         "per_class_f1": {k[3:]: round(v, 2) for k, v in metrics.items() if k.startswith("f1_")},
                         "select_f1": round(info["select_metrics"]["f1"], 2)})
            result = {"data": str(data), "reported_split": "dev (MELD's dev: evaluation only)",
                      "selection": f"{args.select_share:.0%} of train's dialogues", "train_rows": len(ds["train"]),
                      "select_rows": len(ds["select"]), "dev_rows": len(ds["valid"]), "context": args.context,
                      "finetune": {"models": tuned, "layers": args.layers, "epochs": args.ft_epochs,
                                   "bucket": True, "bert_lr": cfg.train.bert_lr, "seeds": args.ft_seeds},
                      "seeds": args.seeds, "overrides": args.sets, "text_encoder": encoder.record(), "threads": args.threads,
                      "encode_seconds": encode_seconds, "runs": runs, **summarise(runs, settings)}
            write_json(args.json, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
