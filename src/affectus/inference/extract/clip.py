"""One clip to an explained verdict: extract it exactly as the run's training data was extracted, predict.

The run records the extractors of its features file (`run.json` "extraction", from `FILE.extract.json`),
so the clip goes through the same decoder, audio and face extractors and the same text encoder. A modality
the clip does not yield (no audio track, no face in any frame, no transcript) is absent: zeros, length 0,
marked in the availability mask, and left out of the explanation; it is never filled with a guess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from affectus.data.types import MODALITIES, Split
from affectus.errors import AffectusError


def predict_clip(predictor: Any, path: str | Path, transcript: str | None = None) -> dict[str, Any]:
    """{id, verdict, probabilities, acc2, modalities, followed, transcript, stats, failures} for one clip."""
    from affectus.inference.extract.dataset import MediaConfig, MediaPipeline, check_modules
    from affectus.inference.extract.hashed_text import HashedWordsExtractor

    path = Path(path)
    record = predictor.info.get("extraction")
    if not isinstance(record, dict) or not isinstance(record.get("extractors"), dict):
        raise AffectusError(f"{predictor.run_dir}: the run was not trained on features from `affectus "
                            f"extract-dataset`, so it does not know how to extract a clip; predict a features file")
    if not path.is_file():
        raise AffectusError(f"file {path}: no such clip")
    config = MediaConfig.from_dict(record["extractors"], source=f"{predictor.run_dir}/run.json")
    check_modules(config)
    result = MediaPipeline(config)(path)
    feats: dict[str, np.ndarray | None] = {"audio": result["audio"], "vision": result["vision"], "text": None}
    if transcript is not None and transcript.strip():
        text_inputs = record.get("text_features")
        if isinstance(text_inputs, dict):
            from affectus.inference.extract.text import text_encoder_from_record

            encoder = text_encoder_from_record(text_inputs["text_encoder"])
            feats["text"] = encoder.sentence_embeddings([transcript], where=f"transcript of {path}")  # (1, D)
        else:
            feats["text"] = HashedWordsExtractor(config.text)(transcript)
    arrays: dict[str, np.ndarray] = {}
    present = np.zeros((1, 3), dtype=bool)
    for k, m in enumerate(MODALITIES):
        dim = predictor.dims[m]
        f = feats[m]
        if f is not None and f.shape[0] > 0:
            if f.shape[1] != dim:
                raise AffectusError(f"{path}: {m} features of width {f.shape[1]}, the run expects {dim}")
            arrays[m] = f.astype(np.float32)[None]  # (1, L, D)
            present[0, k] = True
        else:
            arrays[m] = np.zeros((1, 1, dim), np.float32)  # absent: zeros, length 0
    if not present.any():
        raise AffectusError(f"{path}: no modality could be extracted ({'; '.join(f['detail'] for f in result['failures'])})")
    lengths = {f"{m}_lengths": np.array([arrays[m].shape[1] if present[0, k] else 0]) for k, m in enumerate(MODALITIES)}
    split = Split(name="clip", **arrays, **lengths, labels=np.zeros(1, np.float32), ids=[path.stem],
                  raw_text=[transcript or ""], available=present)
    pred = predictor.predict(split)
    return {"id": path.name, **pred.explain(0), "transcript": transcript,
            "stats": result["stats"], "failures": result["failures"]}
