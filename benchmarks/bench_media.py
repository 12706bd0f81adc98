"""Media road speed (issues 11, 20): extraction throughput per extractor on a ~10 s clip, prediction latency
(p50 / p99) for a clip and for features at batch 1, and a clip's real-time factor through `affectus predict`.

    python benchmarks/bench_media.py [--rounds 3] [--latency-calls 200] [--out FILE.json]

Real-time factor (`clip_realtime`): seconds of work per second of video for one clip through the path
`affectus predict RUN clip.mp4` takes once the run and extractors are loaded (`ClipPredictor`), with
the run's recorded extractors (new default: faces searched every 10th frame, tracked in between) and, in
the same run as the reference, the old every-frame face search (`detect_every=1`); both with audio and
vision side by side. Also: the same clip without a transcript (speech recognition), and one whole
`affectus predict` command in a fresh process (imports and loading included).

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
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()

    import dataclasses
    import os
    import subprocess

    import cv2
    import numpy as np
    import torch

    from media_clips import GOOD, ClipSpec, make_clip, make_dataset, missing_tools

    if missing_tools():
        raise SystemExit(f"missing tools: {', '.join(missing_tools())} (bash .ci/apt.sh)")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from affectus.cli import main as cli
    from affectus.features.audio import (
        LibrosaConfig,
        LibrosaExtractor,
        OpenSmileConfig,
        OpenSmileExtractor,
    )
    from affectus.features.clip import ClipPredictor, predict_clip
    from affectus.features.dataset import MediaPipeline
    from affectus.features.decode import DecodeConfig, Decoder
    from affectus.features.vision import HaarFaceConfig, HaarFaceExtractor
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
    haar = HaarFaceExtractor(HaarFaceConfig(detect_every=1))
    tracked = HaarFaceExtractor(HaarFaceConfig())
    seconds = {
        "decode_audio": timed(lambda: decoder.audio(clip)),
        "opensmile_egemaps": timed(lambda: opensmile(samples)),
        "librosa_33": timed(lambda: librosa_x(samples)),
        "decode_frames_and_haar_faces": timed(lambda: haar(decoder.frames(clip))),
        "decode_frames_and_haar_faces_tracked": timed(lambda: tracked(decoder.frames(clip))),
    }
    extraction = {k: {"seconds": round(v, 3), "clips_per_s_per_core": round(1 / v, 2)} for k, v in seconds.items()}
    # tracked vs every-frame features on this clip (docs/media.md states the tolerance the tests hold)
    every, track = haar(decoder.frames(clip)), tracked(decoder.frames(clip))
    both = every.face & track.face
    diff = np.abs(track.features[both] - every.features[both])
    tolerance = {
        "frames": int(every.face.size), "face_frames_every_frame": int(every.face.sum()),
        "face_frames_tracked": int(track.face.sum()), "same_face_mask": bool((every.face == track.face).all()),
        "box_within_5pct_of_frame": round(float((diff[:, :4].max(axis=1) <= 0.05).mean()), 3),
        "mean_abs_diff_all_values": round(float(diff.mean()), 4),
        "mean_abs_value_every_frame": round(float(np.abs(every.features[both]).mean()), 4),
        "largest_clip_mean_diff": round(float(np.abs(track.features[both].mean(0) - every.features[both].mean(0)).max()), 4),
    }

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

    # real-time factor: ClipPredictor built once (as `affectus predict` and the service's workers do)
    new = ClipPredictor(predictor)
    old = ClipPredictor(predictor)
    old.config = dataclasses.replace(old.config, vision=dataclasses.replace(old.config.vision, detect_every=1))
    old.pipeline = MediaPipeline(old.config)
    new(clip, long_text), old(clip, long_text)  # warm-up: text encoder, first thread
    per_clip = {"new_config": [], "old_config_every_frame": []}
    for _ in range(args.rounds):  # interleaved, so both see the same load of a shared machine
        for name, explain in (("new_config", new), ("old_config_every_frame", old)):
            t0 = time.perf_counter()
            explain(clip, long_text)
            per_clip[name].append(time.perf_counter() - t0)
    medians = {k: statistics.median(v) for k, v in per_clip.items()}
    t0 = time.perf_counter()
    heard = new(clip)  # no transcript: the packaged (or recorded) speech recogniser, as by default
    asr_s = time.perf_counter() - t0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "affectus", "predict", str(run), str(clip), "--json", "--transcript", long_text]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    cli_s = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr
    realtime = {
        "clip_seconds": round(duration, 2),
        "seconds_per_clip_median": {k: round(v, 3) for k, v in medians.items()},
        "rounds": {k: [round(x, 3) for x in v] for k, v in per_clip.items()},
        "realtime_factor": {k: round(v / duration, 4) for k, v in medians.items()},
        "speedup_new_vs_old": round(medians["old_config_every_frame"] / medians["new_config"], 2),
        "target_realtime_factor": 0.1,
        "target_met": medians["new_config"] / duration <= 0.1,
        "without_transcript_asr": {"seconds": round(asr_s, 3), "realtime_factor": round(asr_s / duration, 4),
                                   "transcript_source": heard["transcript_source"], "transcript": heard["transcript"]},
        "affectus_predict_cli_fresh_process": {"seconds": round(cli_s, 3), "realtime_factor": round(cli_s / duration, 4)},
    }
    result = {
        "clip_seconds": round(duration, 2), "threads": 1, "rounds": args.rounds,
        "extraction": extraction,
        "latency_features_batch1": percentiles(ms),
        "latency_clip_end_to_end": percentiles(clip_ms),
        "clip_realtime": realtime,
        "vision_tracked_vs_every_frame": tolerance,
        "note": "latency_clip_end_to_end builds the extractors on every call (predict_clip); clip_realtime does not",
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
