"""One clip (or one transcript) through pretrained experts: each expert's verdict, and a combined one.

Text experts read the transcript: the one given, else the words the packaged offline recogniser
(features/asr.py, Moonshine) hears in the clip's audio. The face expert reads the clip's frames. Audio
itself (tone, pitch, loudness) is read by no pretrained expert: only a model trained on the user's own
labelled clips (`affectus extract-dataset`, then `affectus train`) makes audio count, and every answer
says so (`AUDIO_NOTE`).

Combining: experts answering the same class set (`Expert.task`: MELD's seven emotions, under which the
face model's FER names are mapped, e.g. happy -> joy) are combined by the plain mean of their
probabilities, each expert weighing the same; experts of different class sets (emotion vs sentiment) are
never mixed, each set gets its own combined verdict. The top-level `verdict` is given when exactly one
class set answered. An expert that could not answer (no words, no face) is listed with the reason and
left out of the combination; a clip no expert could answer is an error.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np

from affectus.errors import AffectusError
from affectus.pretrained.registry import EMOTIONS, Expert, canonical_emotion

AUDIO_NOTE = ("audio does not count in pretrained experts: text experts read the words (the transcript) and "
              "the face expert the frames, none reads the voice. A model trained on your own labelled clips "
              "(affectus extract-dataset, then affectus train) is what makes audio count.")
COMBINE_NOTE = "mean of the probabilities of the experts that answered this class set, each weighing the same"
AUDIO_ONLY = (".wav", ".mp3", ".flac", ".ogg")
CLIP_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".wav", ".mp3", ".flac", ".ogg")  # the service's


class PretrainedPredictor:
    """The experts named, loaded once; `__call__(clip, transcript)` -> one explained row."""

    def __init__(self, experts: list[Expert], asr: bool = True, max_duration_s: float | None = None) -> None:
        self.experts = experts
        self.models = {e.name: e.load() for e in experts}  # not built / not installed: one error line here
        from affectus.pretrained.text_experts import TextExpertModel

        for model in self.models.values():
            if isinstance(model, TextExpertModel):
                model.encoder  # noqa: B018 (built now: a missing [text] extra or a changed MiniLM is one line here)
        self.asr = asr
        self.max_duration_s = max_duration_s
        self._transcriber: Any = None
        self._decoder: Any = None
        self._lazy = threading.Lock()  # the service predicts in threads: one recogniser and decoder each
        # which class names each expert answers, mapped onto its class set's names
        self.classes: dict[str, tuple[str, ...]] = {}
        for e in experts:
            self.classes[e.name] = tuple(self.models[e.name].classes) if e.modality == "text" else e.classes()
        self.tasks = {e.name: _task(e, self.classes[e.name]) for e in experts}

    @property
    def text_experts(self) -> list[Expert]:
        return [e for e in self.experts if e.modality == "text"]

    def check_clip_extras(self, need_transcript: bool) -> None:
        """Before the first clip: the decoder (`[media]`) and, when words must be recognised, the recogniser
        (`[asr]`): a missing extra is one error line, not one per clip."""
        if importlib.util.find_spec("av") is None:
            raise AffectusError("reading a clip needs PyAV: pip install 'affectus[media]' (or give --transcript "
                                "without a clip)")
        if need_transcript and self.asr and self.text_experts:
            self.transcriber()

    def transcriber(self) -> Any:
        with self._lazy:
            if self._transcriber is None:
                from affectus.features.asr import MoonshineTranscriber

                self._transcriber = MoonshineTranscriber()  # AffectusError naming [asr] when not installed
            return self._transcriber

    def decoder(self) -> Any:
        with self._lazy:
            if self._decoder is None:
                from affectus.features.decode import DecodeConfig, Decoder

                cfg = DecodeConfig() if self.max_duration_s is None else DecodeConfig(max_duration_s=self.max_duration_s)
                self._decoder = Decoder(cfg)
            return self._decoder

    def _hear(self, path: Path) -> tuple[str | None, str | None]:
        """(transcript, None) or (None, why there are no words)."""
        from affectus.features.base import MediaError

        if not self.asr:
            return None, "no transcript (speech recognition turned off)"
        try:
            samples = self.decoder().audio(path)
        except MediaError as err:
            if err.reason == "no_audio":
                return None, "no transcript and no audio to recognise"
            raise  # a MediaError is one line already; its reason (too_long: 413 in the service) is kept
        words = self.transcriber()(samples, where=f"file {path}")
        if not words.strip():
            return None, "no transcript and speech recognition heard no words"
        return words, None

    def __call__(self, clip: str | Path | None, transcript: str | None = None) -> dict[str, Any]:
        given = transcript is not None and bool(transcript.strip())
        row: dict[str, Any] = {}
        path = None
        if clip is not None:
            path = Path(clip)
            if not path.is_file():
                raise AffectusError(f"file {path}: no such clip")
            row["id"] = path.name
        source, no_words = ("given", None) if given else (None, "no transcript given")
        if not given and path is not None and self.text_experts:
            transcript, no_words = self._hear(path)
            source = "asr" if transcript else None
        row["transcript"] = transcript if source else None
        row["transcript_source"] = source
        if source == "asr":
            from affectus.features.asr import MoonshineConfig

            row["asr"] = MoonshineConfig().to_dict()
        experts: dict[str, dict[str, Any]] = {}
        for e in self.experts:
            out: dict[str, Any] = {"modality": e.modality, "task": self.tasks[e.name]}
            if e.modality == "text":
                if source is None:
                    out["absent"] = no_words
                else:
                    p = self.models[e.name].predict_texts([transcript])[0]
                    out.update(_verdict(self.classes[e.name], p))
            else:
                out.update(self._face(e, path))
            experts[e.name] = out
        answered = [n for n, o in experts.items() if "verdict" in o]
        if not answered:
            reasons = "; ".join(f"{n}: {o['absent']}" for n, o in experts.items())
            hint = "give --transcript TEXT" if self.text_experts else "give a clip with a face"
            raise AffectusError(f"{row.get('id', 'input')}: no expert could answer ({reasons}); {hint}")
        combined = self._combine(experts)
        if len(combined) == 1:
            only = next(iter(combined.values()))
            row["verdict"], row["probabilities"] = only["verdict"], only["probabilities"]
        row["experts"] = experts
        row["combined"] = combined
        row["modalities_used"] = sorted({experts[n]["modality"] for n in answered})
        row["audio"] = AUDIO_NOTE
        return row

    def _face(self, e: Expert, path: Path | None) -> dict[str, Any]:
        from affectus.features.base import MediaError

        if path is None:
            return {"absent": "no clip (a transcript alone has no face)"}
        if path.suffix.lower() in AUDIO_ONLY:
            return {"absent": "an audio-only file has no frames"}
        try:
            if self.max_duration_s is not None:
                # the face model decodes with its own settings: the length limit (the service's --max-clip-s)
                # is checked here, from the container's stated duration, before it decodes anything
                self.decoder().probe(path)
            got = self.models[e.name].predict_clip(path)
        except MediaError as err:
            if err.reason == "no_video":
                return {"absent": "the clip has no video track"}
            raise
        stats = {"frames": int(got.get("frames", 0)), "faces": int(got.get("faces", 0))}
        if stats["faces"] == 0:
            return {"absent": "no face found in any frame", **stats}
        return {**_verdict(self.classes[e.name], np.asarray(got["probabilities"], np.float64)), **stats}

    def _combine(self, experts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for task in dict.fromkeys(self.tasks.values()):
            names = [n for n, o in experts.items() if o["task"] == task and "verdict" in o]
            if not names:
                continue
            classes = _task_classes(task, self.classes[names[0]])
            mean = np.mean([[experts[n]["probabilities"][c] for c in _named(self.classes[n], task)]
                            for n in names], axis=0)
            out[task] = {**_verdict(classes, mean), "experts": names, "how": COMBINE_NOTE}
        return out


def _task(e: Expert, classes: tuple[str, ...]) -> str:
    """The class set an expert answers: 'emotion' when its names map onto MELD's seven (face models spell
    them otherwise), else a set of its own, named after the expert."""
    if e.task == "emotion":
        return "emotion" if sorted(map(canonical_emotion, classes)) == sorted(EMOTIONS) else e.name
    return e.task


def _task_classes(task: str, classes: tuple[str, ...]) -> tuple[str, ...]:
    return EMOTIONS if task == "emotion" else classes


def _named(classes: tuple[str, ...], task: str) -> list[str]:
    """The expert's own class names in the order of its task's classes (for reading its probabilities)."""
    if task != "emotion":
        return list(classes)
    by_canon = {canonical_emotion(c): c for c in classes}
    return [by_canon[c] for c in EMOTIONS]


def _verdict(classes: tuple[str, ...], p: np.ndarray) -> dict[str, Any]:
    p = np.asarray(p, np.float64)
    return {"verdict": classes[int(np.argmax(p))], "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)}}
