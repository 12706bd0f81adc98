"""`affectus predict RUN DATA`: an explained verdict for every sample of a features file.

For each sample: the verdict and class probabilities, the label scheme's Acc2 call (and the score where
the model regresses), each present modality's own prediction and router weight, which modality the
consensus followed, and the transcript. A clip (mp4, webm, wav, ...) is extracted with the extractors the
run's training features were made with (recorded in run.json), plus frame and face counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from affectus.cli import TRUST_PICKLE_HELP, app
from affectus.errors import AffectusError

_CLIP_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".wav", ".mp3", ".flac")


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="a finished run directory")],
    data: Annotated[str, typer.Argument(metavar="DATA", help="a features file (MMSA pickle / .npz) or synth:PRESET")],
    split: Annotated[str | None, typer.Option("--split", help="the split to predict (default: the run's evaluation split)")] = None,
    available: Annotated[str | None, typer.Option(
        "--available", help="predict with only these modalities present, e.g. text,audio or l,a")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per sample, one per line")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many samples in the table (not JSON)")] = 20,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help=TRUST_PICKLE_HELP)] = False,
    transcript: Annotated[str | None, typer.Option(
        "--transcript", help="a clip's transcript (speech recognition is not built yet: without it, text is absent)")] = None,
) -> None:
    """Explained verdicts for the samples of DATA: verdict, probabilities, each modality's call and weight."""
    from affectus.data.load import open_data
    from affectus.inference.predictor import load

    predictor = load(run_dir)
    if Path(data).suffix.lower() in _CLIP_SUFFIXES:
        from affectus.inference.extract.clip import predict_clip

        row = predict_clip(predictor, data, transcript)
        if as_json:
            print(json.dumps(row, ensure_ascii=False))
        else:
            Console().print_json(json.dumps(row, ensure_ascii=False))
        return
    recorded = predictor.info.get("config")
    preset = recorded.get("preset") if isinstance(recorded, dict) else None
    ds, _ = open_data(data, preset, trust_pickle=trust_pickle)
    name = split or predictor.info.get("metrics_split", "test")
    if name not in ds:
        raise AffectusError(f"{data}: no split '{name}' (has {', '.join(ds.splits)})")
    samples = ds[name]
    pred = predictor.predict(samples, available=available)
    rows = []
    for i, sample_id in enumerate(samples.ids):
        row = {"id": sample_id, **pred.explain(i)}
        if samples.raw_text is not None:
            row["transcript"] = samples.raw_text[i]
        rows.append(row)
    if as_json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return
    table = Table(title=f"{run_dir} on {data} ({name}, {len(rows)} samples)")
    for col in ("id", "verdict", "p", "followed", "modalities (prediction @ weight)", "transcript"):
        table.add_column(col)
    for row in rows[:limit]:
        mods = " ".join(f"{m[0]}:{v['prediction'][:3]}" + ("" if v["weight"] is None else f"@{v['weight']:.2f}")
                        for m, v in (row.get("modalities") or {}).items())
        table.add_row(row["id"], row["verdict"], f"{row['probabilities'][row['verdict']]:.2f}",
                      str(row.get("followed") or "-"), mods, (row.get("transcript") or "")[:40])
    Console().print(table)
