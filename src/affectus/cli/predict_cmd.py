"""`affectus predict RUN DATA`: an explained verdict for every sample of a features file.

For each sample: the verdict and class probabilities, the label scheme's Acc2 call (and the score where
the model regresses), each present modality's own prediction and router weight, which modality the
consensus followed, and the transcript. A clip (mp4, webm, wav, ...) is extracted with the extractors the
run's training features were made with (recorded in run.json), plus frame and face counts; a clip without
a transcript is transcribed offline (`--no-asr`: not, and its text is marked absent).

Several clips in one call (`affectus predict RUN a.mp4 b.webm ...`) share one load of the run and of the
extractors. `--conversation` predicts them as one conversation or video, in the order given, so a run
trained with context (`train.context`) reads each with its neighbours. `--utterances FILE` (one utterance
per line, `-` for standard input) does the same for bare text, for runs that encode transcripts themselves
(the `meld` preset). A clip that fails does not stop the others: it gets an `error:` line on stderr (and, with
--json, a `{"id": ..., "error": ...}` line in its place on stdout), and the command exits 2 at the end.
"""

from __future__ import annotations

import json
import sys
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
    run_dir: Annotated[str | None, typer.Argument(
        metavar="RUN", help="a finished run directory (with --pretrained: none, give the clips)")] = None,
    data: Annotated[list[str] | None, typer.Argument(
        metavar="DATA...", help="a features file (MMSA pickle / .npz), synth:PRESET, or one or more clips")] = None,
    split: Annotated[str | None, typer.Option("--split", help="the split to predict (default: the run's evaluation split)")] = None,
    available: Annotated[str | None, typer.Option(
        "--available", help="predict with only these modalities present, e.g. text,audio or l,a")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per sample, one per line")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many samples in the table (not JSON)")] = 20,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help=TRUST_PICKLE_HELP)] = False,
    transcript: Annotated[str | None, typer.Option(
        "--transcript", help="the transcript of a single clip (without it: offline speech recognition, the "
                             "run's recorded recogniser or the packaged one)")] = None,
    pretrained: Annotated[list[str] | None, typer.Option(
        "--pretrained", help="a pretrained expert instead of a run (repeatable, or a,b): `affectus predict "
                             "--pretrained meld-emotion CLIP...` (`affectus pretrained` lists them)")] = None,
    asr: Annotated[bool, typer.Option(
        "--asr/--no-asr", help="transcribe clips given without a transcript (default); --no-asr leaves their "
                               "text absent, as the output says")] = True,
    conversation: Annotated[bool, typer.Option(
        "--conversation", help="the clips are one conversation (or video) in the order given: a run trained with "
                               "context reads each with its neighbours")] = False,
    utterances: Annotated[str | None, typer.Option(
        "--utterances", metavar="FILE", help="one conversation's utterances, one per line ('-': standard input), "
                                             "for runs that encode transcripts themselves (e.g. --preset meld)")] = None,
) -> None:
    """Explained verdicts for the samples of DATA: verdict, probabilities, each modality's call and weight."""
    if pretrained:
        from affectus.cli.pretrained_cmd import predict_pretrained

        ignored = [o for o, v in (("--split", split), ("--available", available), ("--trust-pickle", trust_pickle)) if v]
        if ignored:
            raise AffectusError(f"predict --pretrained: {ignored[0]} is for runs on features files; pretrained "
                                "experts read clips or a --transcript")
        predict_pretrained(pretrained, [d for d in (run_dir, *(data or [])) if d is not None], transcript,
                           as_json, asr)
        return
    if run_dir is None:  # with --pretrained: no run; the first argument was then a clip
        raise AffectusError("predict: give RUN (a finished run directory) and DATA, or --pretrained NAME with "
                            "clips or --transcript (`affectus pretrained`)")
    run_dir, data = Path(run_dir), data or []
    from affectus.data.load import data_identity, open_data, source_id
    from affectus.inference.predictor import load
    from affectus.runs.checkpoints import fits_legend, in_sample_json, split_fits

    if utterances is not None:
        if data:
            raise AffectusError("predict: give either DATA or --utterances, not both")
        _predict_utterances(load(run_dir), utterances, as_json)
        return
    if not data:
        raise AffectusError("predict: give DATA (a features file or clips) or --utterances FILE")
    clips = [d for d in data if Path(d).suffix.lower() in _CLIP_SUFFIXES]
    if (clips and len(clips) != len(data)) or (not clips and len(data) > 1):
        other = next(d for d in data if d not in clips) if clips else data[1]
        raise AffectusError(f"predict: {other}: give one features file, or clips only ({', '.join(_CLIP_SUFFIXES)})")
    if transcript is not None and len(clips) > 1:
        raise AffectusError(f"predict: --transcript is for one clip, got {len(clips)} clips")
    if conversation and not clips:
        raise AffectusError("predict: --conversation is for clips (a features file's groups are its own)")
    predictor = load(run_dir)
    if clips:
        if conversation:
            from affectus.features.clip import ClipPredictor

            for row in ClipPredictor(predictor, asr=asr).conversation(clips, [transcript] if transcript else None):
                _print_row(row, as_json)
            return
        _predict_clips(predictor, clips, transcript, as_json, asr)
        return
    source = data[0]
    recorded = predictor.info.get("config")
    preset = recorded.get("preset") if isinstance(recorded, dict) else None
    ds, _ = open_data(source, preset, trust_pickle=trust_pickle)
    name = split or predictor.info.get("metrics_split", "test")
    if name not in ds:
        raise AffectusError(f"{source}: no split '{name}' (has {', '.join(ds.splits)})")
    samples = ds[name]
    pred = predictor.predict(samples, available=available)
    # a split the run fitted parts on (its consensus, say): every row says so, the table in its legend
    fits = split_fits(predictor.info, name, data_identity(source_id(source)))
    marks = in_sample_json(fits)
    rows = []
    for i, sample_id in enumerate(samples.ids):
        row = {"id": sample_id, **pred.explain(i), **marks}
        if samples.raw_text is not None:
            row["transcript"] = samples.raw_text[i]
        rows.append(row)
    if as_json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return
    table = Table(title=f"{run_dir} on {source} ({name}, {len(rows)} samples)",
                  caption="\n".join(fits_legend(fits, name)) or None, caption_justify="left")
    for col in ("id", "verdict", "p", "followed", "modalities (prediction @ weight)", "transcript"):
        table.add_column(col)
    for row in rows[:limit]:
        mods = " ".join(f"{m[0]}:{v['prediction'][:3]}" + ("" if v["weight"] is None else f"@{v['weight']:.2f}")
                        + ("(0-filled)" if "absent" in v else "")
                        for m, v in (row.get("modalities") or {}).items())
        table.add_row(row["id"], row["verdict"], f"{row['probabilities'][row['verdict']]:.2f}",
                      str(row.get("followed") or "-"), mods, (row.get("transcript") or "")[:40])
    Console().print(table)
    _print_absent(rows)


def _print_absent(rows: list[dict]) -> None:
    """One line per absent modality and what became of it (zero-filled into the verdict, or left out):
    the table's modalities column alone does not say why a modality is there or not."""
    seen: dict[str, str] = {}
    for row in rows:
        for m, note in (row.get("absent") or {}).items():
            seen.setdefault(f"{m} absent: {note}", m)
    for line in seen:
        Console(stderr=True).print(line, markup=False, highlight=False)


def _print_row(row: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(row, ensure_ascii=False), flush=True)
    else:
        Console().print_json(json.dumps(row, ensure_ascii=False))


def _predict_utterances(predictor: object, source: str, as_json: bool) -> None:
    """A conversation's utterances, one per line of `source` (blank lines skipped), one row each."""
    from affectus.utils.io import read_text_file

    text = sys.stdin.read() if source == "-" else read_text_file(Path(source), what="--utterances")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise AffectusError(f"--utterances {source}: no utterances (one per line)")
    split = predictor.utterances(lines)
    pred = predictor.predict(split)
    for i, words in enumerate(lines):
        _print_row({"id": split.ids[i], "position": i, "conversation": len(lines), **pred.explain(i),
                    "transcript": words}, as_json)


def _predict_clips(predictor: object, clips: list[str], transcript: str | None, as_json: bool, asr: bool = True) -> None:
    """Every clip predicted in order; a failing clip is reported and skipped, exit 2 at the end if any failed."""
    from affectus.features.clip import ClipPredictor

    explain = ClipPredictor(predictor, asr=asr)  # one load of the extractors (and text encoder) for all clips
    print_each(clips, lambda clip: explain(clip, transcript), as_json)


def print_each(inputs: list, predict_one, as_json: bool, single_raises: bool = False) -> None:
    """One row per input, in order (`predict_one(input) -> row`). An input that fails does not stop the
    others: an `error:` line on stderr (and, with --json, an {"id", "path", "error"} line in its place), then
    exit 2 after the last one. `single_raises`: one input's failure is just its own error line."""
    failed = 0
    for item in inputs:
        try:
            row = predict_one(item)
        except AffectusError as err:
            if single_raises and len(inputs) <= 1:
                raise  # one input: its one error line is the whole story
            failed += 1
            print(f"error: {err}", file=sys.stderr, flush=True)
            if as_json:
                print(json.dumps({"id": Path(item).name, "path": item, "error": str(err)}, ensure_ascii=False))
            continue
        _print_row(row, as_json)
    if failed:
        print(f"error: {failed} of {len(inputs)} clip(s) failed", file=sys.stderr)
        raise typer.Exit(2)
