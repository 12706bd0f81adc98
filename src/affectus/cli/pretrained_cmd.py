"""`affectus pretrained`: the pretrained experts (list, build), and `predict --pretrained`'s clip loop.

`affectus pretrained` lists each expert: modality, classes, training data, licence of its weights, the
scores measured when it was built (read from its expert.json), whether it is built / installed, and the
command that builds it. `affectus pretrained build NAME --data PATH` fits a text expert from the user's copy
of its data into $AFFECTUS_HOME/pretrained/NAME (docs/pretrained.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from affectus.cli import app
from affectus.errors import AffectusError

pretrained_app = typer.Typer(help="Pretrained experts: an emotion from one clip or transcript, no labels needed "
                                  "(docs/pretrained.md).", no_args_is_help=False)
app.add_typer(pretrained_app, name="pretrained")


def _listing() -> list[dict]:
    from affectus.pretrained.registry import EXPERTS

    rows = []
    for e in EXPERTS.values():
        status = e.status()
        rows.append({"name": e.name, "modality": e.modality, "classes": list(e.classes()), "data": e.data,
                     "licence": status.get("licence") or e.licence, "score": e.score_name,
                     "scores": status.get("scores"), "state": status["state"], "build": e.build_hint,
                     **({"folder": status["folder"]} if "folder" in status else {})})
    return rows


def _score_text(row: dict) -> str:
    s = row["scores"]
    if not s:
        return "-"
    if "weighted_f1" in s:
        return f"dev weighted F1 {s['weighted_f1']:.2f} (selection split)"
    if "acc2_has0" in s:
        return f"valid Acc2 {s['acc2_has0']:.2f} / {s['acc2_non0']:.2f} (Has0/Non0, selection split)"
    if s.get("source_accuracy"):
        return f"source accuracy {s['source_accuracy']}"
    return json.dumps(s)


@pretrained_app.callback(invoke_without_command=True)
def pretrained(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per expert, one per line")] = False,
) -> None:
    """List the pretrained experts: data, licence, measured scores, built or not, and how to build each."""
    if ctx.invoked_subcommand is not None:
        return
    rows = _listing()
    if as_json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return
    table = Table(title="pretrained experts (affectus predict --pretrained NAME CLIP)", show_lines=True)
    for col in ("name", "modality", "classes", "data / licence", "measured", "state / how to build"):
        table.add_column(col, overflow="fold")
    for r in rows:
        cells = (r["name"], r["modality"], ", ".join(r["classes"]) or "-", f"{r['data']}\nlicence: {r['licence']}",
                 _score_text(r), f"{r['state']}\n{r['build']}")
        table.add_row(*map(escape, cells))  # 'affectus[media]' is text, not rich markup
    Console(width=max(Console().width, 140)).print(table)


@pretrained_app.command("build")
def build(
    name: Annotated[str, typer.Argument(metavar="NAME", help="the expert to build (meld-emotion, mosi-sentiment)")],
    data: Annotated[Path, typer.Option("--data", help="your copy of the expert's data: MELD's folder (train and "
                                                      "dev CSVs) or the MOSI pickle")],
) -> None:
    """Fit a text expert from your copy of its data into $AFFECTUS_HOME/pretrained/NAME and print its scores."""
    from affectus.pretrained.registry import get_expert
    from affectus.pretrained.text_experts import build_text_expert

    expert = get_expert(name)
    if expert.modality != "text":
        raise AffectusError(f"pretrained {name}: not built from data; {expert.build_hint}")
    record = build_text_expert(expert, data)
    folder = expert.folder()
    print(f"built {name} in {folder}")
    print(f"{expert.score_name}: {json.dumps(record['scores'], ensure_ascii=False)}")
    print(f"setting: C={record['fit']['C']} class_weight={record['fit']['class_weight']} "
          f"(chosen on {record['fit']['selected_on']})")


def predict_pretrained(names: list[str], inputs: list[str], transcript: str | None, as_json: bool, asr: bool) -> None:
    """`affectus predict --pretrained NAME [CLIP...]`: each clip (or the transcript alone) through the experts."""
    from affectus.pretrained.clips import CLIP_SUFFIXES, PretrainedPredictor
    from affectus.pretrained.registry import parse_names

    experts = parse_names(names)
    bad = [d for d in inputs if Path(d).suffix.lower() not in CLIP_SUFFIXES]
    if bad:
        raise AffectusError(f"predict --pretrained: {bad[0]}: expected clips ({', '.join(CLIP_SUFFIXES)}); "
                            "pretrained experts read clips or a --transcript, not features files")
    if not inputs and transcript is None:
        raise AffectusError("predict --pretrained: give one or more clips, or --transcript TEXT")
    if transcript is not None and len(inputs) > 1:
        raise AffectusError(f"predict: --transcript is for one clip, got {len(inputs)} clips")
    if transcript is not None and not transcript.strip():
        raise AffectusError("predict: --transcript is empty")
    predictor = PretrainedPredictor(experts, asr=asr)
    if inputs:
        predictor.check_clip_extras(need_transcript=transcript is None)
    from affectus.cli.predict_cmd import print_each

    print_each(inputs or [None], lambda clip: predictor(clip, transcript), as_json, single_raises=True)
