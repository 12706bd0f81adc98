"""A tiny labelled video dataset, made on the fly: a test bed, not data to learn emotions from.

Faces: the astronaut photograph that ships inside scikit-image (`skimage.data.astronaut()`, public
domain, NASA), cropped to the head and moved a few pixels per frame. Speech: `espeak-ng` saying a
sentence of known sentiment. Muxed with `ffmpeg` (H.264 + AAC in .mp4). Nothing is downloaded.

`missing_tools()` names what is absent so tests can skip with a reason.
"""

from __future__ import annotations

import csv
import importlib.util
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIDE = 160  # px, square frames
FPS = 10


def missing_tools() -> list[str]:
    missing = [t for t in ("ffmpeg", "espeak-ng") if shutil.which(t) is None]
    missing += [m for m in ("av", "cv2", "opensmile", "skimage") if importlib.util.find_spec(m) is None]
    return missing


@dataclass(frozen=True)
class ClipSpec:
    video_id: str
    clip_id: str
    text: str
    label: float
    mode: str
    face: bool = True  # False: a flat grey picture, no face anywhere
    audio: bool = True  # False: a video track only


def speak(text: str, wav: Path) -> float:
    """espeak-ng -> 22.05 kHz mono wav; returns its duration in seconds."""
    subprocess.run(["espeak-ng", "-s", "175", "-w", str(wav), text], check=True, capture_output=True)
    with wave.open(str(wav)) as w:
        return w.getnframes() / w.getframerate()


def face_frames(n: int, face: bool = True) -> np.ndarray:
    """(n, SIDE, SIDE, 3) uint8: the astronaut's head, drifting sideways (or a flat grey picture)."""
    import cv2
    import skimage.data

    head = cv2.resize(skimage.data.astronaut()[:320, 96:416], (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    if not face:
        return np.full((n, SIDE, SIDE, 3), 110, np.uint8)
    return np.stack([np.roll(head, int(6 * np.sin(i / 3)), axis=1) for i in range(n)])


def make_clip(spec: ClipSpec, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    wav = out.with_suffix(".wav")
    seconds = speak(spec.text, wav)
    frames = face_frames(max(1, int(np.ceil(seconds * FPS))), spec.face)
    cmd = ["ffmpeg", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    cmd += ["-s", f"{SIDE}x{SIDE}", "-r", str(FPS), "-i", "-"]
    if spec.audio:
        cmd += ["-i", str(wav), "-c:a", "aac"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(out)]
    subprocess.run(cmd, input=frames.tobytes(), check=True, capture_output=True)
    wav.unlink()


def write_label_csv(root: Path, specs: list[ClipSpec]) -> None:
    """CH-SIMS's label.csv columns; unimodal labels equal the multimodal one here."""
    with open(root / "label.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            ["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"]
        )
        for s in specs:
            kind = "Positive" if s.label > 0 else "Negative" if s.label < 0 else "Neutral"
            w.writerow([s.video_id, s.clip_id, s.text, s.label, s.label, s.label, s.label, kind, s.mode])


def make_dataset(root: Path, specs: list[ClipSpec]) -> Path:
    """root/label.csv + root/Raw/<video_id>/<clip_id>.mp4 for every spec."""
    for s in specs:
        make_clip(s, root / "Raw" / s.video_id / f"{s.clip_id}.mp4")
    write_label_csv(root, specs)
    return root


GOOD = [
    ClipSpec("v1", "0001", "I love this, it is wonderful.", 0.8, "train"),
    ClipSpec("v1", "0002", "I hate this, it is awful.", -0.8, "train"),
    ClipSpec("v2", "0001", "What a great and happy day.", 0.6, "valid"),
    ClipSpec("v3", "0001", "This is sad and terrible.", -0.6, "test"),
]


def media_run(root: Path, asr: bool = False) -> Path:
    """A run that predicts clips, made in seconds without extracting any: random features of the widths
    the default extractors give (openSMILE 25, Haar faces 152, hashed words 64) plus the `FILE.extract.json`
    that records those extractors, trained for one epoch (late fusion). Its verdicts mean nothing; it
    carries the extraction record, so `predict` / `serve` put a clip through the real extractors (with
    `asr`, speech recognition too, for clips given without a transcript)."""
    import json

    from affectus.cli import main
    from affectus.data.mmsa import dataset_from_raw
    from affectus.data.npz import write_npz
    from affectus.data.synthetic import SynthConfig, generate
    from affectus.features.asr import MoonshineConfig
    from affectus.features.dataset import MediaConfig

    root.mkdir(parents=True, exist_ok=True)
    raw = generate(SynthConfig(n_train=24, n_valid=8, n_test=8, seed=3, seq_lens={"text": 6, "audio": 20, "vision": 8},
                               dims={"text": 64, "audio": 25, "vision": 152}))
    feats = root / "media.npz"
    write_npz(dataset_from_raw(raw), feats)
    record = {"extractors": MediaConfig(text_encoder="hashed", asr=MoonshineConfig() if asr else None).to_dict(), "text_features": "hashed words"}
    (root / "media.npz.extract.json").write_text(json.dumps(record), encoding="utf-8")
    run = root / "run"
    assert main(["train", "--data", str(feats), "--model", "late_fusion", "--out", str(run), "--set", "train.epochs=1",
                 "--set", "train.batch_size=8", "--threads", "1", "--quiet"]) == 0
    return run
