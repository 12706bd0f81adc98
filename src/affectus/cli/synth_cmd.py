"""`affectus synth`: write a synthetic dataset with a real preset's shapes (see docs/simulator.md).

The file is an MMSA pickle (or, with --npz or an .npz name, the pickle-free affectus .npz), written
atomically; one summary line goes to stdout. Bad values end in one `error: ...` line (exit 2).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from affectus.cli import app
from affectus.data.presets import preset_names_help
from affectus.errors import AffectusError

_PROGRESS_MIN_VALUES = 20_000_000  # below ~80 MB of features generation takes well under a second


@app.command()
def synth(
    preset: Annotated[
        str, typer.Option("--preset", help=f"shapes and sizes of: {preset_names_help()}")
    ],
    out: Annotated[Path, typer.Option("--out", help="file to write (MMSA pickle; .npz with --npz)")],
    seed: Annotated[int, typer.Option("--seed", help="same seed, same bytes")] = 1111,
    scale: Annotated[float, typer.Option("--scale", help="multiply the real split sizes")] = 1.0,
    seq_scale: Annotated[float, typer.Option("--seq-scale", help="multiply the sequence lengths")] = 1.0,
    inconsistency: Annotated[
        float | None, typer.Option("--inconsistency", help="share of D_msi samples (default: the preset's)")
    ] = None,
    n_train: Annotated[int | None, typer.Option("--n-train", help="train size (overrides --scale)")] = None,
    n_valid: Annotated[int | None, typer.Option("--n-valid", help="valid size (overrides --scale)")] = None,
    n_test: Annotated[int | None, typer.Option("--n-test", help="test size; 0 leaves the split out")] = None,
    unimodal: Annotated[
        bool | None,
        typer.Option("--unimodal-labels/--no-unimodal-labels", help="write regression_labels_T/A/V"),
    ] = None,
    npz: Annotated[bool, typer.Option("--npz", help="write the pickle-free .npz form")] = False,
    max_gb: Annotated[float, typer.Option("--max-gb", help="refuse more feature data than this")] = 4.0,
    dims: Annotated[
        str | None, typer.Option("--dims", help="feature dims T,A,V instead of the preset's, e.g. 32,16,24")
    ] = None,
    seq_lens: Annotated[
        str | None, typer.Option("--seq-lens", help="sequence lengths T,A,V instead of the preset's")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace --out if it exists")] = False,
) -> None:
    """Generate a synthetic dataset whose modalities conflict at a controlled rate.

    The same data without a file: --data 'synth:PRESET?scale=0.1&seq_scale=0.25&seed=1111&inconsistency=0.5'
    in train, evaluate, experiment, sweep and report (any of the keys; docs/simulator.md)."""
    from affectus.data.mmsa import dataset_from_raw, write_pickle
    from affectus.data.npz import write_npz
    from affectus.data.presets import load_preset
    from affectus.data.synthetic import SynthConfig, check_size, generate, summarise, total_values
    from affectus.utils.io import refuse_overwrite

    refuse_overwrite(out, overwrite)  # before generating: a refusal costs nothing

    overrides: dict = {"seed": seed}
    for field, value in (
        ("inconsistency", inconsistency),
        ("n_train", n_train),
        ("n_valid", n_valid),
        ("n_test", n_test),
        ("with_unimodal_labels", unimodal),
    ):
        if value is not None:
            overrides[field] = value
    for field, text in (("dims", dims), ("seq_lens", seq_lens)):
        if text is not None:
            overrides[field] = _triple(field, text)
    if not max_gb > 0:
        raise AffectusError(f"synth: --max-gb must be > 0 (got {max_gb})")
    config = SynthConfig.from_preset(preset, scale=scale, seq_scale=seq_scale, **overrides)
    check_size(config, max_gb)

    start = time.perf_counter()
    total = total_values(config)
    if total >= _PROGRESS_MIN_VALUES:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

        # on stderr, so stdout carries only the summary line; transient: gone once done
        with Progress(
            "generating",
            BarColumn(),
            TaskProgressColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as bar:
            task = bar.add_task("synth", total=total)
            raw = generate(config, progress=lambda k: bar.advance(task, k))
    else:
        raw = generate(config)
    summary = summarise(raw, load_preset(preset).scheme)

    as_npz = npz or out.suffix == ".npz"
    if as_npz:
        write_npz(dataset_from_raw(raw, source=str(out)), out)
    else:
        write_pickle(raw, out)
    seconds = time.perf_counter() - start

    sizes = "/".join(f"{summary['sizes'].get(s, 0)}" for s in ("train", "valid", "test"))
    dims = "/".join(str(summary["dims"][m]) for m in ("text", "audio", "vision"))
    lens = "/".join(str(summary["seq_lens"][m]) for m in ("text", "audio", "vision"))
    subsets = (
        f"D_msc {summary['msc']} D_msi {summary['msi']}"
        if "msc" in summary
        else f"D_msi ~{config.inconsistency:.0%} (no unimodal labels written)"
    )
    print(
        f"wrote {out} ({'npz' if as_npz else 'pickle'}, {config.estimate_bytes() / 1e9:.2f} GB of features, "
        f"{seconds:.1f}s): synthetic {config.name} seed {config.seed}, train/valid/test {sizes}, "
        f"dims t/a/v {dims}, seq lens {lens}, {subsets}, audio -inf {summary['audio_neg_inf']}"
        + (f", classes {'/'.join(config.class_names)}" if config.class_names else "")
    )


def _triple(name: str, text: str) -> dict[str, int]:
    """'32,16,24' -> {'text': 32, 'audio': 16, 'vision': 24}."""
    parts = text.split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) < 1:
        raise AffectusError(f"synth: --{name.replace('_', '-')} {text!r}: expected three positive integers T,A,V")
    return dict(zip(("text", "audio", "vision"), values))
