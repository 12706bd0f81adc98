"""`affectus demo`: CMC next to a late-fusion baseline on the conflict simulator.

Embedded default, nothing downloaded: a CH-SIMS-like simulated set (with unimodal labels, so
D_msc / D_msi exist) at small shapes, both models trained on CPU, their metrics side by side, and
CMC's router weights on samples where the text contradicts the multimodal label. The simulator is
a test bed: these numbers say the code behaves as designed, not how accurate CMC is on real data.
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
    out: Path | None = typer.Option(None, "--out", help="keep the two run directories here (default: a temp dir)"),
    seed: int = typer.Option(1111, "--seed"),
    threads: int = typer.Option(0, "--threads", help="CPU threads (0: torch's default)"),
) -> None:
    """Train CMC and a late-fusion baseline on simulated conflicting data; show how CMC's router shifts."""
    from affectus.cli.train_cmds import apply_threads
    from affectus.data.types import MODALITIES, to_classes
    from affectus.evaluation.schemes import get_scheme
    from affectus.evaluation.subsets import consistency_masks
    from affectus.inference.predictor import load
    from affectus.training.config import resolve_config
    from affectus.training.loop import training_log
    from affectus.training.trainer import DataPlan, train_run

    console = Console()
    err = Console(stderr=True)
    ds = demo_dataset(seed)
    plan = DataPlan("train", "valid", "test", get_scheme("sims"))
    root = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="affectus-demo-"))
    common = {**DEMO_TRAIN, "train.seed": seed, "train.threads": threads}
    results = {}
    apply_threads(threads)
    for model, extra in (("late_fusion", {}), ("cmc", DEMO_CMC)):
        cfg = resolve_config(model, None, None, None, {**common, **extra})
        err.print(f"[bold]training {model}[/bold] on {len(ds['train'])} simulated samples ...")
        with err.status(f"training {model}"), training_log():  # the spinner stands for the epoch lines
            results[model] = train_run(ds, cfg, root / model, plan, data_source="simulator (demo)")

    table = Table(title="Acc2 (non-positive vs positive) on the simulated test split")
    for col in ("model", "D_test", "D_msc", "D_msi", "F1 (D_test)"):
        table.add_column(col, justify="right")
    for model, m in results.items():
        table.add_row(model, *(f"{m[k]['acc2']:.2f}" for k in ("d_test", "d_msc", "d_msi")), f"{m['d_test']['f1']:.2f}")
    console.print(table)

    # Where does CMC's router look when text contradicts the multimodal label?
    test = ds["test"]
    pred = load(root / "cmc").predict(test)
    cls_m = to_classes(test.labels)
    text_wrong = to_classes(test.unimodal_labels["text"]) != cls_m
    msc, _ = consistency_masks(test.labels, test.unimodal_labels)
    weights = Table(title="CMC router weights (mean) by sample group, test split")
    for col in ("group", "n", *MODALITIES, "CMC correct (3-class)"):
        weights.add_column(col, justify="right")
    for name, mask in (("consistent (D_msc)", msc), ("text contradicts label", text_wrong)):
        w = pred.router_weights[mask].mean(0)
        acc = float((pred.classes[mask] == cls_m[mask]).mean() * 100)
        weights.add_row(name, str(int(mask.sum())), *(f"{x:.3f}" for x in w), f"{acc:.1f}%")
    console.print(weights)
    lf = load(root / "late_fusion").predict(test)
    console.print(
        f"On the {int(text_wrong.sum())} test samples whose text contradicts the label, 3-class accuracy: "
        f"CMC {np.mean(pred.classes[text_wrong] == cls_m[text_wrong]) * 100:.1f}%, "
        f"late fusion {np.mean(lf.classes[text_wrong] == cls_m[text_wrong]) * 100:.1f}%."
    )
    console.print(f"runs written to {root}  (simulated data: a test bed, not evidence about real-world accuracy)")
