"""Data commands: `inspect` (what is in a feature file) and `convert` (pickle -> safe .npz).

`synth` lives in `synth_cmd.py`. Both commands go through `load_dataset`, so whatever `inspect`
accepts, training accepts too, and every bad file ends in one `error: ...` line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from affectus.cli import app
from affectus.data.mmsa import file_format, load_dataset, sha256_file
from affectus.data.npz import write_npz
from affectus.data.presets import load_preset, preset_names_help
from affectus.data.schemes import infer_scheme
from affectus.data.types import MODALITIES, MERDataset, group_summary
from affectus.errors import AffectusError
from affectus.utils.io import refuse_overwrite

DataArg = Annotated[Path, typer.Argument(help="MMSA pickle or affectus .npz", show_default=False)]
PresetOpt = Annotated[
    str | None, typer.Option("--preset", help=f"check feature dims against this preset: {preset_names_help()}")
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-pickle", help="unpickle without the numpy-only restriction (runs code from the file)"
    ),
]

OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="replace --out if it exists")]


def _stats(values: np.ndarray) -> dict[str, float]:
    v = values.astype(np.float64)
    return {"min": float(v.min()), "mean": float(v.mean()), "max": float(v.max())}


def _label_stats(labels: np.ndarray) -> dict[str, Any]:
    return {
        **_stats(labels),
        "std": float(labels.astype(np.float64).std()),
        "negative": int((labels < 0).sum()),
        "zero": int((labels == 0).sum()),
        "positive": int((labels > 0).sum()),
    }


def summarise(dataset: MERDataset, path: Path, preset: str | None = None) -> dict[str, Any]:
    """Everything `inspect` reports, as one JSON-ready dict (keys are stable: scripts read them).
    With a categorical preset, or a file that records its classes (extract-dataset --labels annotation),
    each split also counts its samples per class (`classes`); `scheme` is the file's recorded scheme."""
    from affectus.data.schemes import get_scheme

    scheme = load_preset(preset).scheme if preset else None
    if scheme is None and dataset.scheme is not None:
        scheme = get_scheme(dataset.scheme)
    named = scheme is not None and not scheme.scores  # labels are class indices
    splits: dict[str, Any] = {}
    for name, s in dataset.splits.items():
        d_msc = d_msi = None
        if s.unimodal_labels is not None:
            # without a preset, the scheme unimodal labels imply (the CH-SIMS family's)
            uni_scheme = scheme or infer_scheme(s.labels, s.labels[:0], unimodal=True)
            mask = uni_scheme.consistency_masks(s.labels, s.unimodal_labels)[0]
            d_msc, d_msi = int(mask.sum()), int((~mask).sum())
        splits[name] = {
            "n": len(s),
            "dims": {m: int(s.features(m).shape[2]) for m in MODALITIES},
            "seq_lens": {m: int(s.features(m).shape[1]) for m in MODALITIES},
            # true (unpadded) lengths; "zero" counts samples with nothing in that modality
            "lengths": {
                m: {**_stats(s.lengths(m)), "zero": int((s.lengths(m) == 0).sum())} for m in MODALITIES
            },
            "labels": _label_stats(s.labels),
            "unimodal_labels": None
            if s.unimodal_labels is None
            else {m: _label_stats(v) for m, v in s.unimodal_labels.items()},
            "d_msc": d_msc,
            "d_msi": d_msi,
            # groups (videos, dialogues) and their mean number of samples; None: the file has no grouping
            "groups": group_summary(s.groups),
            "speakers": None if s.speakers is None else len(set(s.speakers)),  # distinct speakers
            # samples that have each modality (None: every modality of every sample is present)
            "available": None
            if s.available is None
            else {m: int(s.available[:, k].sum()) for k, m in enumerate(MODALITIES)},
        }
        if named:
            counts = np.bincount(scheme.to_classes(s.labels), minlength=scheme.num_classes)
            splits[name]["classes"] = {c: int(k) for c, k in zip(scheme.class_names, counts)}
    return {
        "file": str(path),
        "format": file_format(path),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "preset": preset,
        "scheme": dataset.scheme,  # recorded in the file (None: a reader infers it, or a preset says it)
        "dims": dataset.dims,
        "seq_lens": dataset.seq_lens,
        "has_text_bert": all(s.text_bert is not None for s in dataset.splits.values()),
        "has_raw_text": all(s.raw_text is not None for s in dataset.splits.values()),
        "has_unimodal_labels": dataset.has_unimodal_labels,
        "sanitised": {f"{sp}/{key}": n for (sp, key), n in sorted(dataset.sanitised.items())},
        "splits": splits,
        "preset_notes": load_preset(preset).notes(dataset) if preset else [],
    }


def _print_human(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)  # created here so it writes to the current sys.stdout
    console.print(f"[bold]{info['file']}[/bold]  ({info['format']}, {info['bytes']:,} bytes)")
    console.print(f"sha256 {info['sha256']}")

    t = Table(title="splits")
    for col in ("split", "N", "groups", "mean group", "label min/mean/max", "neg/zero/pos", "D_msc/D_msi"):
        t.add_column(col, justify="left" if col == "split" else "right")
    for name, s in info["splits"].items():
        lab = s["labels"]
        subsets = "-" if s["d_msc"] is None else f"{s['d_msc']}/{s['d_msi']}"
        g = s["groups"]
        t.add_row(
            name,
            f"{s['n']:,}",
            "-" if g is None else f"{g['groups']:,}",
            "-" if g is None else f"{g['mean_length']:.1f}",
            f"{lab['min']:.3g}/{lab['mean']:.3g}/{lab['max']:.3g}",
            f"{lab['negative']}/{lab['zero']}/{lab['positive']}",
            subsets,
        )
    console.print(t)

    # L: padded length; length: true lengths (min/mean/max); len=0: samples empty in that modality;
    # sanitised: non-finite values set to 0 on load
    t = Table(title="modalities")
    for col in ("split", "modality", "dim", "L", "length", "len=0", "present", "sanitised"):
        t.add_column(col, justify="left" if col in ("split", "modality") else "right")
    for name, s in info["splits"].items():
        for m in MODALITIES:
            ln = s["lengths"][m]
            t.add_row(
                name,
                m,
                str(s["dims"][m]),
                str(s["seq_lens"][m]),
                f"{ln['min']:.0f}/{ln['mean']:.1f}/{ln['max']:.0f}",
                str(ln["zero"]),
                str(s["n"] if s["available"] is None else s["available"][m]),
                str(info["sanitised"].get(f"{name}/{m}", 0)),
            )
    console.print(t)

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    console.print(
        f"text_bert: {yes(info['has_text_bert'])}   raw_text: {yes(info['has_raw_text'])}   "
        f"unimodal labels: {yes(info['has_unimodal_labels'])}"
    )
    if info["scheme"]:
        from affectus.data.schemes import get_scheme

        counts = {name: s.get("classes") for name, s in info["splits"].items()}
        console.print(f"label scheme {get_scheme(info['scheme']).describe()} (recorded in the file); per split: "
                      + "; ".join(f"{name} " + ", ".join(f"{c} {k}" for c, k in (cl or {}).items())
                                  for name, cl in counts.items()))
    if info["preset"]:
        console.print(f"preset {info['preset']}: feature dims match")
        for note in info["preset_notes"]:
            console.print(f"  note: {note}")


@app.command("inspect")
def inspect_cmd(
    data: DataArg,
    preset: PresetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of tables")] = False,
    trust_pickle: TrustOpt = False,
) -> None:
    """Validate a feature file and report splits, dims, lengths, labels, D_msc/D_msi and its sha256."""
    dataset = load_dataset(data, preset, trust_pickle=trust_pickle)
    info = summarise(dataset, data, preset)
    if as_json:
        print(json.dumps(info, sort_keys=False))
    else:
        _print_human(info)


@app.command("convert")
def convert_cmd(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="the .npz to write", show_default=False)],
    preset: PresetOpt = None,
    trust_pickle: TrustOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Validate a feature file and write it as a pickle-free .npz (safe to load from anywhere)."""
    if out.exists() and data.exists() and out.resolve() == data.resolve():
        raise AffectusError(f"file {out}: --out is the input file; choose another path")
    refuse_overwrite(out, overwrite)
    dataset = load_dataset(data, preset, trust_pickle=trust_pickle)
    write_npz(dataset, out)
    sizes = ", ".join(f"{name} {len(s)}" for name, s in dataset.splits.items())
    cleaned = sum(dataset.sanitised.values())
    print(f"wrote {out} ({sizes}; {cleaned} non-finite feature values set to 0; sha256 {sha256_file(out)})")
