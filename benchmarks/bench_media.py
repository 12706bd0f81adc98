"""Media road speed (issue 11): extraction throughput per extractor on a ~10 s clip, prediction latency
(p50 / p99) for a clip and for features at batch 1, and the service's requests/s at 50 clients.

    python benchmarks/bench_media.py [--rounds 3] [--latency-calls 200]

Makes its own test-bed clips (tests/media_clips.py: scikit-image's face, espeak-ng speech, ffmpeg), builds
a tiny dataset with `extract-dataset`, trains a late-fusion run on it (1 epoch: the numbers time the road,
not the model's quality), and prints one JSON object. One torch / OpenCV thread: "per core".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import percentiles


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-calls", type=int, default=200)
    args = ap.parse_args()

    import cv2
    import numpy as np
    import torch

    from media_clips import GOOD, ClipSpec, make_clip, make_dataset, missing_tools

    if missing_tools():
        raise SystemExit(f"missing tools: {', '.join(missing_tools())} (bash .ci/apt.sh)")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from affectus.cli import main as cli
    from affectus.inference.extract.audio import (
        LibrosaConfig,
        LibrosaExtractor,
        OpenSmileConfig,
        OpenSmileExtractor,
    )
    from affectus.inference.extract.clip import predict_clip
    from affectus.inference.extract.decode import DecodeConfig, Decoder
    from affectus.inference.extract.vision import HaarFaceConfig, HaarFaceExtractor
    from affectus.inference.predictor import load

    root = Path(tempfile.mkdtemp(prefix="bench-media-"))
    long_text = " ".join(["I really enjoyed this film, the story was warm and the acting was wonderful."] * 3)
    clip = root / "long.mp4"
    make_clip(ClipSpec("b", "long", long_text, 0.8, "test"), clip)
    decoder = Decoder(DecodeConfig())
    duration = decoder.probe(clip)["duration_s"]

    def timed(fn) -> float:
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    samples = decoder.audio(clip)
    opensmile, librosa_x = OpenSmileExtractor(OpenSmileConfig(), 16000), LibrosaExtractor(LibrosaConfig(), 16000)
    haar = HaarFaceExtractor(HaarFaceConfig())
    seconds = {
        "decode_audio": timed(lambda: decoder.audio(clip)),
        "opensmile_egemaps": timed(lambda: opensmile(samples)),
        "librosa_33": timed(lambda: librosa_x(samples)),
        "decode_frames_and_haar_faces": timed(lambda: haar(decoder.frames(clip))),
    }
    extraction = {k: {"seconds": round(v, 3), "clips_per_s_per_core": round(1 / v, 2)} for k, v in seconds.items()}

    data_root = make_dataset(root / "ds", GOOD)
    feats = root / "ds.npz"
    assert cli(["extract-dataset", str(data_root), "--out", str(feats), "--workers", "1"]) == 0
    run = root / "run"
    assert cli(["train", "--data", str(feats), "--model", "late_fusion", "--out", str(run), "--set", "train.epochs=1",
                "--set", "train.batch_size=2", "--threads", "1", "--quiet"]) == 0
    predictor = load(run)
    one = {m: np.random.default_rng(0).standard_normal((1, 10, d)).astype(np.float32) for m, d in predictor.dims.items()}
    ms = []
    for _ in range(args.latency_calls):
        t0 = time.perf_counter()
        predictor.predict(one)
        ms.append(1000 * (time.perf_counter() - t0))
    clip_ms = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        predict_clip(predictor, clip, long_text)
        clip_ms.append(1000 * (time.perf_counter() - t0))
    print(json.dumps({
        "clip_seconds": round(duration, 2), "threads": 1, "rounds": args.rounds,
        "extraction": extraction,
        "latency_features_batch1": percentiles(ms),
        "latency_clip_end_to_end": percentiles(clip_ms),
        "note": "service requests/s at 50 clients: tests/test_load.py (python -m pytest tests/test_load.py -s)",
    }, indent=2))


if __name__ == "__main__":
    main()
