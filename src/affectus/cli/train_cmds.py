"""Model commands: train, evaluate, params, demo."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from affectus.cli import TRUST_PICKLE_HELP, app
from affectus.errors import AffectusError

console = Console(stderr=True)


def _print_metrics(metrics: dict, family: str, title: str) -> None:
    table = Table(title=title)
    table.add_column("subset")
    rows: list[tuple[str, dict]] = []
    if family == "sims" and "d_test" in metrics:
        rows = [(k, metrics[k]) for k in ("d_test", "d_msc", "d_msi") if isinstance(metrics.get(k), dict)]
    else:
        rows = [("all", {k: v for k, v in metrics.items() if not isinstance(v, dict)})]
    keys: list[str] = []
    for _, m in rows:
        keys += [k for k in m if k not in keys]
    for k in keys:
        table.add_column(k, justify="right")
    for name, m in rows:
        table.add_row(name, *[_fmt(k, m.get(k)) for k in keys])
    Console().print(table)


def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "n":
        return str(int(value))
    return f"{value:.4f}" if key in ("mae", "corr") else f"{value:.2f}"


def _log(line: str) -> None:
    console.print(line, markup=False, highlight=False)


TrustOpt = typer.Option(False, "--trust-pickle", help=TRUST_PICKLE_HELP)


@app.command()
def train(
    data: str = typer.Option(..., "--data", help="MMSA pickle / .npz file (or synth:PRESET for simulated data)"),
    out: Path = typer.Option(..., "--out", help="run directory to write"),
    model: str = typer.Option("cmc", "--model", help="model name (see `affectus models`)"),
    variant: str = typer.Option("cmc", "--variant", help="CMC variant (see `affectus models`)"),
    preset: str | None = typer.Option(None, "--preset", help="dataset preset: sims, simsv2, mosi, mosei, mosi-utterance"),
    config: Path | None = typer.Option(None, "--config", help="YAML config: {model: {...}, train: {...}}"),
    set_: list[str] = typer.Option([], "--set", help="override a config key, e.g. --set model.layers=3"),
    seed: int | None = typer.Option(None, "--seed"),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda[:N]"),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run in --out"),
    quiet: bool = typer.Option(False, "--quiet", help="no per-epoch lines"),
    trust_pickle: bool = TrustOpt,
) -> None:
    """Train a model (CMC: both stages) and print the paper's metrics; writes OUT/metrics.json."""
    from affectus.data.load import open_data
    from affectus.training.config import parse_set, resolve_config
    from affectus.training.trainer import plan_for, train_run

    ds, p = open_data(data, preset, trust_pickle=trust_pickle)
    overrides = parse_set(set_)
    for key, value in (("train.seed", seed), ("train.device", device), ("train.threads", threads)):
        if value is not None:
            overrides[key] = value
    cfg = resolve_config(model, variant, p, config, overrides)
    plan = plan_for(ds, p)
    metrics = train_run(ds, cfg, out, plan, resume=resume, log=None if quiet else _log, data_source=data)
    name = f"{model}/{variant}" if model == "cmc" else model
    _print_metrics(metrics, plan.family, f"{name} on split '{plan.eval}'")
    console.print(f"wrote {out}/metrics.json")


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    data: str = typer.Option(..., "--data", help="MMSA pickle / .npz file"),
    split: str | None = typer.Option(None, "--split", help="split to score (default: the run's evaluation split)"),
    as_json: bool = typer.Option(False, "--json"),
    trust_pickle: bool = TrustOpt,
    predictions: Path | None = typer.Option(
        None, "--predictions", help="also write one CSV row per sample: id, label, verdict, probabilities"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the --predictions file if it exists"),
) -> None:
    """Score a trained run on a split of DATA."""
    from affectus.data.load import open_data
    from affectus.inference.predictor import load, predictions_csv
    from affectus.utils.io import refuse_overwrite, write_text_atomic

    if predictions is not None:
        refuse_overwrite(predictions, overwrite, "--predictions")  # before any work
    predictor = load(run_dir)
    recorded = predictor.info.get("config")
    preset = recorded.get("preset") if isinstance(recorded, dict) else None
    ds, _ = open_data(data, preset, trust_pickle=trust_pickle)
    name = split or predictor.info.get("metrics_split", "test")
    if name not in ds:
        raise AffectusError(f"{data}: no split '{name}' (has {', '.join(ds.splits)})")
    metrics = predictor.evaluate(ds[name])
    if predictions is not None:
        write_text_atomic(predictions, predictions_csv(ds[name], predictor.predict(ds[name])))
        Console(stderr=True).print(f"wrote {predictions} ({len(ds[name])} rows)", markup=False, highlight=False)
    if as_json:
        print(json.dumps({"split": name, **metrics}, indent=2, sort_keys=True))
    else:
        _print_metrics(metrics, predictor.family, f"{run_dir} on {name}")


@app.command()
def params(
    model: str = typer.Option("cmc", "--model"),
    preset: str = typer.Option(..., "--preset"),
    variant: str = typer.Option("cmc", "--variant"),
) -> None:
    """Print the model's parameter count without BERT (the paper's "Size" column)."""
    from affectus.data.presets import load_preset
    from affectus.models.registry import create_model, make_config, non_bert_parameter_count
    from affectus.training.config import resolve_config

    p = load_preset(preset)
    cfg = resolve_config(model, variant, p)
    values = dict(cfg.model)
    values["dims"] = dict(p.dims)
    m = create_model(model, make_config(model, values))
    print(non_bert_parameter_count(m))


@app.command("models")
def models_cmd() -> None:
    """List registered models and CMC variants."""
    from affectus.models.registry import get_model_entry, list_models
    from affectus.training.config import load_variants

    for name in list_models():
        print(f"{name:14s} {get_model_entry(name).description}")
    print("\nCMC variants (--variant):")
    for name, spec in load_variants().items():
        print(f"  {name:20s} {spec['description']}")
