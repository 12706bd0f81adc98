"""One clip to an explained verdict: extract it exactly as the run's training data was extracted, predict.

The run records the extractors of its features file (`run.json` "extraction", from `FILE.extract.json`),
so the clip goes through the same decoder, audio and face extractors and the same text encoder. A modality
the clip does not yield (no audio track, no face in any frame, no transcript) is absent: zeros, length 0,
marked in the availability mask, and left out of the explanation; it is never filled with a guess.

A clip without a transcript is transcribed by speech recognition by default (`asr=True`): with the
recogniser the run's extraction recorded (`asr`), else the packaged one (`MoonshineConfig()`), and the
row says `"transcript_source": "asr"` and which recogniser (`"asr"`). Text that is still absent is never
dropped silently: the row's `modalities` has `"text": {"absent": REASON}` (no recogniser installed, no
audio to recognise, no words heard, or recognition turned off), and a missing recogniser is also one
warning line, once per `ClipPredictor`.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np

from affectus.data.types import MODALITIES, Split
from affectus.errors import AffectusError
from affectus.features.base import MediaError

_log = logging.getLogger(__name__)
NO_RECOGNISER = "no transcript and no speech recogniser installed"


class ClipPredictor:
    """The run's extractors, built once, and `__call__(path, transcript)` -> one clip's explained verdict.

    `thumbnails` > 0 adds up to that many face crops (`thumbnail_px` square JPEGs as data URLs), spread
    over the clip's face frames, so a person can see which face the vision features describe.
    `max_duration_s` lowers the decoder's length limit (the service's --max-clip-s); it is enforced
    while decoding, so a clip whose container states no duration is stopped there too. A clip over the
    limit is refused whole (`MediaError` "too_long"), never predicted from the part that fitted.
    `asr` (default True): a clip given without a transcript is transcribed (module docstring); False
    leaves its text absent, and the row says so.
    """

    def __init__(self, predictor: Any, thumbnails: int = 0, thumbnail_px: int = 64,
                 max_duration_s: float | None = None, asr: bool = True) -> None:
        import dataclasses

        from affectus.features.dataset import MediaConfig, MediaPipeline, check_modules

        record = self.check_run(predictor)
        self.predictor = predictor
        self.config = MediaConfig.from_dict(record["extractors"], source=f"{predictor.run_dir}/run.json")
        if max_duration_s is not None and max_duration_s < self.config.decode.max_duration_s:
            self.config = dataclasses.replace(
                self.config, decode=dataclasses.replace(self.config.decode, max_duration_s=max_duration_s))
        check_modules(self.config)
        # speech recognition for clips without a transcript: the run's recorded recogniser, else the
        # packaged one; None (with the reason text is absent) when turned off or not installed
        self.asr_recorded = self.config.asr is not None
        self._no_text = "no transcript (speech recognition turned off)"
        if not asr:
            self.config = dataclasses.replace(self.config, asr=None)
        elif importlib.util.find_spec("moonshine_cpp") is None:
            self.config = dataclasses.replace(self.config, asr=None)
            self._no_text = NO_RECOGNISER
        elif self.config.asr is None:
            from affectus.features.asr import MoonshineConfig

            self.config = dataclasses.replace(self.config, asr=MoonshineConfig())
        self.pipeline = MediaPipeline(self.config)
        self.thumbnails, self.thumbnail_px = thumbnails, thumbnail_px
        self._text_record = record.get("text_features")
        self._encoder: Any = None
        self._warned = False

    @staticmethod
    def check_run(predictor: Any) -> dict[str, Any]:
        """The run's extraction record; an `AffectusError` when the run cannot take clips."""
        record = predictor.info.get("extraction")
        if not isinstance(record, dict) or not isinstance(record.get("extractors"), dict):
            raise AffectusError(f"{predictor.run_dir}: the run was not trained on features from `affectus "
                                f"extract-dataset`, so it does not know how to extract a clip; predict a features file")
        return record

    def _text(self, transcript: str, where: str) -> np.ndarray:
        """(L, D) text features of the transcript, made as the run's training text was."""
        if not isinstance(self._text_record, dict):
            from affectus.features.hashed_text import HashedWordsExtractor

            return HashedWordsExtractor(self.config.text)(transcript)
        if self._encoder is None:
            from affectus.features.text import text_encoder_from_record

            self._encoder = text_encoder_from_record(self._text_record["text_encoder"])
        return self._encoder.sentence_embeddings([transcript], where=where)  # (1, D)

    def __call__(self, path: str | Path, transcript: str | None = None) -> dict[str, Any]:
        """{id, verdict, probabilities, acc2, modalities, followed, transcript, transcript_source, stats,
        failures[, thumbnails]} for one clip."""
        return self._predict([self._extract(Path(path), transcript)])[0]

    def conversation(self, paths: list[str | Path], transcripts: list[str | None] | None = None) -> list[dict[str, Any]]:
        """The clips of one conversation or video, in the order said: one row each, as `__call__` gives,
        predicted together as one group (positions 0..n-1), so a run trained with context
        (`train.context`) reads each clip with its neighbours; a causal run with the clips before it only.
        Each row adds `position` and `conversation` (how many clips). A clip that cannot be extracted
        stops the whole conversation (its neighbours would read a different context without it)."""
        transcripts = transcripts or [None] * len(paths)
        if len(transcripts) != len(paths):
            raise AffectusError(f"conversation: {len(transcripts)} transcripts for {len(paths)} clips")
        items = [self._extract(Path(p), t) for p, t in zip(paths, transcripts)]
        rows = self._predict(items)
        for i, row in enumerate(rows):
            row.update(position=i, conversation=len(rows))
        return rows

    def _extract(self, path: Path, transcript: str | None) -> dict[str, Any]:
        """One clip's features (each modality (L, D) or None when absent), its transcript and why text is absent."""
        if not path.is_file():
            raise AffectusError(f"file {path}: no such clip")
        given = transcript is not None and bool(transcript.strip())
        # speech recognition only where no transcript was given, and only if the run's extraction had it
        result = self.pipeline(path, thumbnails=self.thumbnails, transcribe=not given)
        too_long = next((f for f in result["failures"] if f["reason"] == "too_long"), None)
        if too_long is not None:
            raise MediaError("too_long", too_long["detail"])
        if not given and result.get("transcript"):
            transcript, source = result["transcript"], "asr"
        else:
            source = "given" if given else None
        absent = None  # why the clip has no text, said in the row
        if source is None:
            if "transcript" not in result:
                absent = self._no_text
                if absent == NO_RECOGNISER and not self._warned:
                    self._warned = True  # one line per predictor (a `predict` call, a service worker)
                    _log.warning("warning: %s: clips without one are predicted without text "
                                 "(pip install 'affectus[asr]' for speech recognition)", NO_RECOGNISER)
            elif "audio_s" not in result["stats"]:  # set once the audio track decoded
                absent = "no transcript and no audio to recognise"
            elif any(f["modality"] == "text" for f in result["failures"]):
                absent = "no transcript and speech recognition failed (see failures)"
            else:
                absent = "no transcript and speech recognition heard no words"
        feats: dict[str, np.ndarray | None] = {"audio": result["audio"], "vision": result["vision"], "text": None}
        if source is not None:
            feats["text"] = self._text(transcript, where=f"transcript of {path}")
        dims = self.predictor.file_dims  # before any context columns: the run adds those itself
        for m in MODALITIES:
            f = feats[m]
            if f is not None and f.shape[0] > 0:
                if f.shape[1] != dims[m]:
                    raise AffectusError(f"{path}: {m} features of width {f.shape[1]}, the run expects {dims[m]}")
            else:
                feats[m] = None
        if all(feats[m] is None for m in MODALITIES):
            raise AffectusError(f"{path}: no modality could be extracted "
                                f"({'; '.join(f['detail'] for f in result['failures'])})")
        return {"path": path, "feats": feats, "transcript": transcript if source else None, "source": source,
                "absent": absent, "result": result}

    def _predict(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows for extracted clips, predicted in one Split (padded per modality; an absent modality is
        zeros with length 0, marked in the availability mask)."""
        predictor = self.predictor
        dims = predictor.file_dims
        n = len(items)
        present = np.array([[it["feats"][m] is not None for m in MODALITIES] for it in items], dtype=bool)
        arrays: dict[str, np.ndarray] = {}
        lengths: dict[str, np.ndarray] = {}
        for k, m in enumerate(MODALITIES):
            steps = [it["feats"][m].shape[0] if present[i, k] else 0 for i, it in enumerate(items)]
            a = np.zeros((n, max(1, *steps), dims[m]), np.float32)
            for i, it in enumerate(items):
                if present[i, k]:
                    a[i, :steps[i]] = it["feats"][m]
            arrays[m], lengths[f"{m}_lengths"] = a, np.asarray(steps, np.int64)
        # one group, in the order given: a run trained with context reads each clip's neighbours (a single
        # clip is a conversation of one: its context is empty, as at the start of any conversation)
        split = Split(name="clip", **arrays, **lengths, labels=np.zeros(n, np.float32),
                      ids=[it["path"].stem for it in items], raw_text=[it["transcript"] or "" for it in items],
                      available=present, groups=["conversation"] * n, positions=np.arange(n, dtype=np.int64))
        pred = predictor.predict(split)
        rows = []
        for i, it in enumerate(items):
            result, source, absent = it["result"], it["source"], it["absent"]
            row = {"id": it["path"].name, **pred.explain(i), "transcript": it["transcript"],
                   "transcript_source": source, "stats": result["stats"], "failures": result["failures"]}
            if source == "asr":
                row["asr"] = {**self.config.asr.to_dict(), "recorded_by_run": self.asr_recorded}
            if absent is not None:
                # why the text is absent; a zero-filling model's own note (its zeros entered the verdict) stays
                text = row.setdefault("modalities", {}).setdefault("text", {})
                text["absent"] = f"{absent}; {text['absent']}" if "absent" in text else absent
                row.setdefault("absent", {})["text"] = text["absent"]
            if self.thumbnails:
                row["thumbnails"] = [_jpeg_data_url(t) for t in result["thumbnails"]]
            rows.append(row)
        return rows


def predict_clip(predictor: Any, path: str | Path, transcript: str | None = None, thumbnails: int = 0) -> dict[str, Any]:
    """One clip's explained verdict (`ClipPredictor`; build one of those to predict many clips)."""
    return ClipPredictor(predictor, thumbnails=thumbnails)(path, transcript)


def _jpeg_data_url(rgb: np.ndarray) -> str:
    """(S, S, 3) uint8 RGB -> 'data:image/jpeg;base64,...' (a few kB at 64 px)."""
    import base64

    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise AffectusError("could not encode a face thumbnail as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")
