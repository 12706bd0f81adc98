"""Model commands: train, evaluate, params, demo."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from affectus.cli import TRUST_PICKLE_HELP, app
from affectus.data.presets import preset_names_help
from affectus.errors import AffectusError
from affectus.models.registry import DEFAULT_MODEL
from affectus.training.job import CLIPS_DEFAULT_MODEL

console = Console(stderr=True)


def _print_metrics(metrics: dict, title: str, fits: dict | None = None, split: str = "") -> None:
    """The scores as a table. `fits` (checkpoints.split_fits for the scored split): an in-sample score gets
    the mark on its subset cell and one legend line; selection parts that chose on the split are named."""
    from affectus.runs.checkpoints import IN_SAMPLE_MARK, fits_legend

    fits = fits or {"in_sample": [], "selection": []}
    marked = fits["in_sample"] is None or bool(fits["in_sample"])
    table = Table(title=title, caption="\n".join(fits_legend(fits, split)) or None, caption_justify="left")
    table.add_column("subset")
    rows: list[tuple[str, dict]] = []
    if "d_test" in metrics:  # the scheme scored D_msc / D_msi subsets
        rows = [(k, metrics[k]) for k in ("d_test", "d_msc", "d_msi") if isinstance(metrics.get(k), dict)]
    else:
        rows = [("all", {k: v for k, v in metrics.items() if not isinstance(v, dict)})]
    keys: list[str] = []
    for _, m in rows:
        keys += [k for k in m if k not in keys]
    for k in keys:
        table.add_column(k, justify="right")
    for name, m in rows:
        table.add_row(f"{name} {IN_SAMPLE_MARK} in-sample" if marked else name, *[_fmt(k, m.get(k)) for k in keys])
    Console().print(table)


def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "n":
        return str(int(value))
    return f"{value:.4f}" if key in ("mae", "corr", "ece") else f"{value:.2f}"


@contextmanager
def epoch_display(quiet: bool):
    """How `train` shows its epochs: a rich progress bar on a terminal (stage, epoch, losses, ETA), plain
    epoch lines otherwise (logs, CI), nothing with --quiet. Yields the trainer's `on_epoch` observer."""
    from affectus.training.loop import EPOCH_LEGEND, training_log

    if quiet:
        with training_log():
            yield None
        return
    if not console.is_terminal:
        console.print(EPOCH_LEGEND, markup=False, highlight=False)
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[losses]}"))
    with Progress(*columns, console=console, transient=False) as bar, training_log():
        tasks: dict[str, Any] = {}

        def on_epoch(stage: str, record: dict[str, float], epochs: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=epochs, losses="")
            vals = " ".join(f"{k[4:]} {v:.3f}" for k, v in record.items() if k.startswith("val_"))
            best = " *" if record.get("improved") else ""
            bar.update(tasks[stage], completed=int(record["epoch"]),
                       losses=f"train {record.get('train_loss', float('nan')):.3f} | val {vals}{best}")

        yield on_epoch
        for task in tasks.values():  # early stopping ends a stage before its last epoch
            bar.update(task, total=bar.tasks[task].completed)


TrustOpt = typer.Option(False, "--trust-pickle", help=TRUST_PICKLE_HELP)


@app.command()
def train(
    data: str = typer.Option(..., "--data", help="MMSA pickle / .npz file (or synth:PRESET[?scale=S&seq_scale=Q] for simulated data)"),
    out: Path = typer.Option(..., "--out", help="run directory to write"),
    model: str | None = typer.Option(None, "--model", show_default=False, help=(
        f"model name (see `affectus models`; default: {CLIPS_DEFAULT_MODEL} for features made by extract-dataset, "
        f"else {DEFAULT_MODEL})")),
    variant: str | None = typer.Option(None, "--variant", help="the model's variant (default: its first; see `affectus models`)"),
    preset: str | None = typer.Option(None, "--preset", help=f"dataset preset: {preset_names_help()}"),
    config: Path | None = typer.Option(None, "--config", help="YAML config: {model: {...}, train: {...}}"),
    set_: list[str] = typer.Option([], "--set", help="override a config key, e.g. --set model.layers=3"),
    seed: int | None = typer.Option(None, "--seed"),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda[:N]"),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch"),
    resume: bool = typer.Option(False, "--resume", help="continue the interrupted run in --out (same model, config and data, else refused)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar or epoch lines (for logs: errors and the result only)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="train into a folder whose config.json / metrics.json "
                                                              "are not an affectus run's, replacing them"),
    trust_pickle: bool = TrustOpt,
) -> None:
    """Train a model (CMC: both stages) and print the paper's metrics; writes OUT/metrics.json."""
    from affectus.training.config import parse_set
    from affectus.training.job import prepare_training

    job = prepare_training(data, preset, model, variant, config, parse_set(set_), seed=seed, device=device,
                           threads=threads, trust_pickle=trust_pickle)
    cfg, plan = job.cfg, job.plan
    if job.model_reason:
        console.print(job.model_reason, markup=False, highlight=False)
    apply_threads(cfg.train.threads)
    with epoch_display(quiet) as on_epoch:
        metrics = job.run(out, resume=resume, on_epoch=on_epoch, overwrite=overwrite)
    # what the labels meant, said plainly: a wrong scheme trains happily and scores nonsense (after the run,
    # so a run that fails still ends in its one error line)
    console.print(f"label scheme {plan.scheme.describe()} ({plan.origin})", markup=False, highlight=False,
                  soft_wrap=True)
    from affectus.models.registry import display_name
    from affectus.runs.checkpoints import read_run, split_fits

    _print_metrics(metrics, f"{display_name(cfg.model_name, cfg.variant)} on split '{plan.eval}'",
                   split_fits(read_run(out), plan.eval), plan.eval)
    console.print(f"wrote {out}/metrics.json")


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    data: str | None = typer.Option(None, "--data", help="MMSA pickle / .npz file (default: the run's own data)"),
    split: str | None = typer.Option(None, "--split", help="split to score (default: the run's evaluation split)"),
    as_json: bool = typer.Option(False, "--json"),
    available: str | None = typer.Option(
        None, "--available", help="score with only these modalities present, e.g. text,audio or l,a (others zero-filled)"),
    subsets: str | None = typer.Option(
        None, "--subsets", help="MSC_FILE,MSI_FILE: the authors' D_msc / D_msi id files, scored instead of "
                                "the subsets computed from unimodal labels"),
    trust_pickle: bool = TrustOpt,
    predictions: Path | None = typer.Option(
        None, "--predictions", help="also write one CSV row per sample: id, label, verdict, probabilities"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the --predictions file if it exists"),
) -> None:
    """Score a trained run on a split of DATA."""
    from affectus.data.load import open_data
    from affectus.data.schemes import get_scheme
    from affectus.inference.predictor import load, predictions_csv
    from affectus.runs.checkpoints import in_sample_json
    from affectus.utils.io import refuse_overwrite, write_text_atomic

    if predictions is not None:
        refuse_overwrite(predictions, overwrite, "--predictions")  # before any work
    predictor = load(run_dir)
    recorded = predictor.info.get("config")
    preset = recorded.get("preset") if isinstance(recorded, dict) else None
    if data is None:
        data = (predictor.info.get("data") or {}).get("source")
        if not isinstance(data, str) or not data:
            raise AffectusError(f"{run_dir}: run.json records no data source; pass --data FILE")
    ds, _ = open_data(data, preset, trust_pickle=trust_pickle)
    if ds.scheme is not None and get_scheme(ds.scheme).spec() != predictor.scheme.spec():
        # the file says its class numbers mean other classes than the run's: scores would be nonsense
        raise AffectusError(f"{data}: its labels are {get_scheme(ds.scheme).describe()} (recorded in the file), "
                            f"but run {run_dir} predicts {predictor.scheme.describe()}")
    name = split or predictor.info.get("metrics_split", "test")
    if name not in ds:
        raise AffectusError(f"{data}: no split '{name}' (has {', '.join(ds.splits)})")
    files = None
    if subsets is not None:
        files = tuple(subsets.split(","))
        if len(files) != 2 or not all(files):
            raise AffectusError(f"--subsets {subsets!r}: expected MSC_FILE,MSI_FILE")
    metrics = predictor.evaluate(ds[name], available=available, subset_files=files)
    # ids and labels are the split's; the predictor removes the absent modalities itself
    pred = predictor.predict(ds[name], available=available)
    _add_ece(metrics, pred, predictor.scheme.to_classes(ds[name].labels))
    notes = _absent_notes(pred)
    if predictions is not None:
        write_text_atomic(predictions, predictions_csv(ds[name], pred, predictor.scheme))
        Console(stderr=True).print(f"wrote {predictions} ({len(ds[name])} rows)", markup=False, highlight=False)
    fits = _fits(predictor.info, data, name)
    if as_json:
        # `absent` always there (empty when nothing is): the keys do not depend on --available
        print(json.dumps({"split": name, "label_scheme": predictor.scheme.describe(), **metrics, **in_sample_json(fits),
                          "absent": notes}, indent=2, sort_keys=True))
    else:
        _print_metrics(metrics, f"{run_dir} on {name}" + (f" with {available} only" if available else ""), fits, name)
    for m, note in notes.items():
        Console(stderr=True).print(f"{m} absent: {note}", markup=False, highlight=False)


def _add_ece(metrics: dict, pred: Any, classes: Any) -> None:
    """The expected calibration error of the verdicts' probabilities (evaluation/metrics.py), beside
    accuracy: on D_test where the scheme scores subsets, else over all samples."""
    from affectus.evaluation.metrics import expected_calibration_error

    ece = expected_calibration_error(pred.probabilities, classes)
    target = metrics["d_test"] if isinstance(metrics.get("d_test"), dict) else metrics
    target["ece"] = ece


def _absent_notes(pred: Any) -> dict[str, str]:
    """{modality: what became of it} for each modality some scored sample lacks."""
    from affectus.data.types import MODALITIES
    from affectus.inference.predictor import LEFT_OUT, ZERO_FILLED

    if pred.available is None:
        return {}
    note = ZERO_FILLED if pred.zero_filled else LEFT_OUT
    return {m: note for k, m in enumerate(MODALITIES) if not pred.available[:, k].all()}


def _fits(info: dict, data: str, split: str) -> dict:
    """What the run fitted on split `split` of DATA (compared by content with the run's own data)."""
    from affectus.data.load import data_identity, source_id
    from affectus.runs.checkpoints import split_fits

    return split_fits(info, split, data_identity(source_id(data)))


@app.command()
def params(
    run_dir: Path | None = typer.Argument(None, help="a trained run directory: its model and config"),
    model: str | None = typer.Option(None, "--model", help=f"model name (default {DEFAULT_MODEL})"),
    preset: str | None = typer.Option(None, "--preset", help="dataset preset: its dims and published settings"),
    dims: str | None = typer.Option(None, "--dims", help="feature dims T,A,V (custom data; over a preset's)"),
    variant: str | None = typer.Option(None, "--variant"),
) -> None:
    """Print the model's parameter count without BERT (the paper's "Size" column): of a trained run
    (`params RUN`), or of a model built for a preset (`--preset`) or custom feature dims (`--dims T,A,V`)."""
    from affectus.models.registry import get_model_entry, size_from_config

    if run_dir is not None:
        if model or preset or dims or variant:
            raise AffectusError(f"params {run_dir}: the run fixes its model and dims; drop --model, --preset, "
                                f"--dims and --variant")
        from affectus.runs.checkpoints import read_run

        info = read_run(run_dir)
        if not isinstance(info.get("model_config"), dict) or not isinstance(info.get("model_name"), str):
            raise AffectusError(f"{run_dir}/run.json: lacks the model name or config")
        from affectus.inference.predictor import SHELL_ERRORS, check_config_sizes
        from affectus.models.registry import make_config

        where = f"{run_dir}/run.json: model_config"
        try:
            # a hand-edited config: its sizes bounded by the weights file (each value takes a byte or more)
            # before even an empty shell is built
            check_config_sizes(make_config(info["model_name"], info["model_config"]),
                               (Path(run_dir) / "model.safetensors").stat().st_size, where, "bytes of its weights file")
            print(size_from_config(info["model_name"], info["model_config"]))
        except SHELL_ERRORS as err:
            raise AffectusError(f"{where} does not build a {info['model_name']} model "
                                f"({type(err).__name__}: {' '.join(str(err).split())[:300]})") from None
        return
    if preset is None and dims is None:
        raise AffectusError("params: give a run directory, --preset NAME or --dims T,A,V")
    from affectus.data.presets import load_preset
    from affectus.training.config import resolve_config

    p = load_preset(preset) if preset is not None else None
    cfg = resolve_config(model or DEFAULT_MODEL, variant, p)
    values = dict(cfg.model)
    values["dims"] = _dims_option(dims) if dims is not None else dict(p.dims)
    can = get_model_entry(cfg.model_name).can(values)
    if p is not None and can.num_classes:  # as training builds it
        values["num_classes"] = p.scheme.num_classes
    if cfg.train.text_inputs != "file":  # the inputs re-encode the transcripts: the text width they make
        from affectus.features.text import encoded_dims

        values["dims"], views = encoded_dims(values["dims"], cfg.train.text_inputs, cfg.train.text_encoder)
        if views and can.text_views:
            values["text_views"] = [[name, width] for name, width in views]
    print(size_from_config(cfg.model_name, values))


def _dims_option(text: str) -> dict[str, int]:
    """--dims '768,33,709' -> {'text': 768, 'audio': 33, 'vision': 709}."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise AffectusError(f"--dims {text!r}: expected three positive integers T,A,V (text, audio, vision)")
    return dict(zip(("text", "audio", "vision"), map(int, parts)))


@app.command("models")
def models_cmd(
    name: str | None = typer.Argument(None, help="a model: list its config keys (model.*, train.*, recipe.*)"),
) -> None:
    """List registered models, their variants (--variant) and recipes; with NAME, that model's config keys."""
    from affectus.models.registry import get_model_entry, list_models

    if name is not None:
        _print_config_keys(name)
        return
    from affectus.models.registry import FAMILIES

    entries = [get_model_entry(model) for model in list_models()]
    for family, title in FAMILIES.items():
        members = [e for e in entries if e.family == family]
        if not members:
            continue
        print(f"# {title}")
        for entry in members:
            recipe = entry.recipe if isinstance(entry.recipe, str) else type(entry.recipe).__name__
            print(f"{entry.name:14s} {entry.description}  [recipe {recipe.rsplit(':', 1)[-1]}]")
            if entry.paper:
                print(f"  paper: {entry.paper}")
            variants = entry.get_variants()
            if len(variants) > 1:
                for vname, spec in variants.items():
                    print(f"  --variant {vname:20s} {spec.get('description', '')}")


def _print_config_keys(name: str) -> None:
    """Every key `--set` accepts for a model, with its default (after the model's shipped YAML)."""
    import dataclasses

    from affectus.training.config import resolve_config

    cfg = resolve_config(name)
    print(f"{cfg.model_name} (default variant {cfg.variant}); --set KEY=VALUE accepts:")
    sections = {"model": cfg.model, "train": dataclasses.asdict(cfg.train),
                "recipe": {} if cfg.recipe is None else dataclasses.asdict(cfg.recipe)}
    for section, values in sections.items():
        for key, value in values.items():
            print(f"  {section}.{key} = {json.dumps(value)}")


def apply_threads(threads: int) -> None:
    """The CLI's business, not the library's: torch's thread count is process-global."""
    if threads and threads > 0:
        import torch

        torch.set_num_threads(threads)
