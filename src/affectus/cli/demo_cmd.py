"""`affectus demo`: faithful CMC, CMC+ and a late-fusion baseline on the conflict simulator.

Embedded default, nothing downloaded: a CH-SIMS-like simulated set (with unimodal labels, so
D_msc / D_msi exist) at small shapes where the text contradicts the clip's label in about a quarter
of the clips, the three models trained on CPU, their metrics side by side, and each consensus model's
router weights and accuracy on consistent samples and on samples whose text contradicts the label.
Whatever the numbers are, they are the ones printed. The simulator is a test bed: these numbers say
what the methods do with conflicting modalities, not how accurate they are on real data.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from affectus.cli import app

DEMO_SYNTH = dict(
    name="demo", n_train=800, n_valid=200, n_test=400,
    seq_lens={"text": 12, "audio": 24, "vision": 16}, dims={"text": 64, "audio": 16, "vision": 32},
    inconsistency=0.5, text_misleading=0.5,
)
DEMO_TRAIN = {"train.epochs": 40, "train.patience": 6}
DEMO_CMC = {"model.layers": 1, "model.heads": 2, "model.output_dropout": 0.1}


def demo_dataset(seed: int = 1111):
    from affectus.data.mmsa import dataset_from_raw
    from affectus.data.synthetic import SynthConfig, generate

    return dataset_from_raw(generate(SynthConfig(seed=seed, **DEMO_SYNTH)), source="simulator (demo)")


@app.command()
def demo(
    out: Path | None = typer.Option(None, "--out", help="keep the three run directories here (default: a temp dir, deleted at the end)"),
    seed: int = typer.Option(1111, "--seed"),
    threads: int = typer.Option(0, "--threads", help="CPU threads (0: torch's default)"),
) -> None:
    """Train faithful CMC, CMC+ and late fusion on simulated conflicting data; show their router weights
    and accuracy on consistent clips and on clips whose text contradicts the label."""
    if out is not None:
        _demo(Path(out), seed, threads, keep=True)
        return
    # nothing left behind in the temp directory: the runs go with it (--out keeps them)
    with tempfile.TemporaryDirectory(prefix="affectus-demo-") as tmp:
        _demo(Path(tmp), seed, threads, keep=False)


def _demo(root: Path, seed: int, threads: int, keep: bool) -> None:
    from affectus.cli.train_cmds import apply_threads
    from affectus.data.schemes import get_scheme
    from affectus.data.types import MODALITIES
    from affectus.inference.predictor import load
    from affectus.training.config import resolve_config
    from affectus.training.loop import training_log
    from affectus.training.trainer import DataPlan, train_run

    console = Console()
    err = Console(stderr=True)
    ds = demo_dataset(seed)
    plan = DataPlan("train", "valid", "test", get_scheme("sims"))
    common = {**DEMO_TRAIN, "train.seed": seed, "train.threads": threads}
    results = {}
    apply_threads(threads)
    for model, variant, extra in (("late_fusion", None, {}), ("cmc", None, DEMO_CMC), ("cmc", "cmc_plus", {})):
        cfg = resolve_config(model, variant, None, None, {**common, **extra})
        name = cfg.model_name
        err.print(f"[bold]training {name}[/bold] on {len(ds['train'])} simulated samples ...")
        with err.status(f"training {name}"), training_log():  # the spinner stands for the epoch lines
            results[name] = train_run(ds, cfg, root / name, plan, data_source="simulator (demo)")

    table = Table(title="Acc2 (non-positive vs positive) on the simulated test split")
    for col in ("model", "D_test", "D_msc", "D_msi", "F1 (D_test)"):
        table.add_column(col, justify="right")
    for model, m in results.items():
        table.add_row(model, *(f"{m[k]['acc2']:.2f}" for k in ("d_test", "d_msc", "d_msi")), f"{m['d_test']['f1']:.2f}")
    console.print(table)

    # Where do the routers look when text contradicts the multimodal label, and who gets those clips right?
    test = ds["test"]
    scheme = plan.scheme
    cls_m = scheme.to_classes(test.labels)
    text_wrong = scheme.to_classes(test.unimodal_labels["text"]) != cls_m
    msc, _ = scheme.consistency_masks(test.labels, test.unimodal_labels)
    groups = (("consistent", msc), ("text contra", text_wrong))
    preds = {model: load(root / model).predict(test) for model in results}
    weights = Table(title="Router weights (mean share) and 3-class accuracy on test: consistent (D_msc) clips vs clips whose text contradicts the label")
    for col in ("model", "group", "n", *MODALITIES, "acc3"):
        weights.add_column(col, justify="right")
    for model, pred in preds.items():
        for name, mask in groups:
            w = pred.router_weights[mask].mean(0) if pred.router_weights is not None else None
            acc = float((pred.classes[mask] == cls_m[mask]).mean() * 100)
            cells = [f"{x:.3f}" for x in w] if w is not None else ["-"] * len(MODALITIES)
            weights.add_row(model, name, str(int(mask.sum())), *cells, f"{acc:.1f}%")
    console.print(weights)
    console.print(
        f"On the {int(text_wrong.sum())} test samples whose text contradicts the label, 3-class accuracy: "
        + ", ".join(f"{model} {np.mean(p.classes[text_wrong] == cls_m[text_wrong]) * 100:.1f}%"
                    for model, p in preds.items()) + "."
    )
    # the shares are printed, not interpreted: on this simulator they barely move between the two groups
    # (the consensus wins by letting agreeing experts outvote the text in log-probability space)
    where = f"runs written to {root}" if keep else "runs deleted with their temp folder (--out DIR keeps them)"
    console.print(f"{where}  (simulated data: a test bed, not evidence about real-world accuracy)")
