"""Media extraction: decoders, extractors, and `affectus extract-dataset` on a dataset made on the fly.

The clips (tests/media_clips.py) are 1-2 s of the scikit-image astronaut's face with espeak-ng speech,
muxed by ffmpeg; tests that need them skip with the missing tool's name. One extraction of the whole
folder (module fixture) serves most tests; the kill-and-resume test runs a second, parallel one.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from affectus.data.mmsa import load_dataset
from affectus.errors import AffectusError
from affectus.features.asr import MoonshineConfig
from affectus.features.audio import LibrosaConfig, OpenSmileConfig
from affectus.features.base import MediaError
from affectus.features.dataset import MediaConfig, read_label_csv
from affectus.features.decode import DecodeConfig
from affectus.features.vision import HaarFaceConfig
from media_clips import GOOD, ClipSpec, face_frames, make_clip, make_dataset, missing_tools

SRC = Path(__file__).resolve().parents[1] / "src"
HEADER = "video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode\n"
ANNOTATED = "video_id,clip_id,text,label,mode,annotation\n"

# every way a clip can fail, and the reason the report must give
BAD = {
    "noface": "no_face",
    "mute": "no_audio",
    "empty": "empty",
    "corrupt": "corrupt",
    "truncated": "corrupt",
    "missing": "missing",
}
N_CLIPS = len(GOOD) + len(BAD)

needs_media = pytest.mark.skipif(
    bool(missing_tools()), reason=f"media tools missing: {', '.join(missing_tools())}"
)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 good clips (train 2, valid 1, test 1) + 6 bad train clips, one per way of failing (BAD)."""
    if missing_tools():
        pytest.skip(f"media tools missing: {', '.join(missing_tools())}")
    root = tmp_path_factory.mktemp("clips")
    specs = GOOD + [
        ClipSpec("v9", "noface", "Nobody is here.", 0.2, "train", face=False),
        ClipSpec("v9", "mute", "A silent film.", 0.2, "train", audio=False),
    ]
    make_dataset(root, specs)
    (root / "Raw" / "v9" / "empty.mp4").write_bytes(b"")
    (root / "Raw" / "v9" / "corrupt.mp4").write_bytes(b"\x00\x00\x00 not a video " * 40)
    whole = (root / "Raw" / "v1" / "0001.mp4").read_bytes()
    (root / "Raw" / "v9" / "truncated.mp4").write_bytes(whole[: len(whole) // 2])  # a copy cut short
    with open(root / "label.csv", "a", encoding="utf-8") as f:
        f.writelines(
            f"v9,{clip},A broken clip.,0.2,0.2,0.2,0.2,Positive,train\n"
            for clip in ("empty", "corrupt", "truncated", "missing")
        )
    return root


@pytest.fixture(scope="module")
def extracted(media_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One serial `extract-dataset` run (--on-fail skip) over the whole folder."""
    from affectus.cli import main

    out = tmp_path_factory.mktemp("out") / "tiny.npz"
    rc = main(["extract-dataset", str(media_root), "--out", str(out), "--workers", "1"])
    assert rc == 0
    return {
        "out": out,
        "work": out.with_name("tiny.npz.work"),
        "report": out.with_name("tiny.npz.failures.json"),
        "meta": out.with_name("tiny.npz.extract.json"),
    }


# ------------------------------------------------------------------------------------------ configs, label.csv


def test_configs_round_trip_through_json(tmp_path: Path) -> None:
    cfg = MediaConfig(audio=LibrosaConfig(f0_method="yin"), decode=DecodeConfig(fps=5.0))
    again = MediaConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.media_digest() == cfg.media_digest()
    assert MediaConfig().media_digest() != cfg.media_digest()  # a changed setting never reuses the cache
    with_asr = MediaConfig(asr=MoonshineConfig())
    assert MediaConfig.from_dict(json.loads(json.dumps(with_asr.to_dict()))) == with_asr
    assert with_asr.media_digest() == MediaConfig().media_digest()  # text side: the audio/vision cache still serves
    assert MediaConfig.from_dict({k: v for k, v in MediaConfig().to_dict().items() if k != "asr"}).asr is None
    with pytest.raises(AffectusError, match="bad MoonshineConfig"):
        MediaConfig.from_dict({"asr": {"kind": "moonshine", "model": "tiny-xx"}})
    HaarFaceConfig(min_neighbors=3).save(tmp_path / "v.json")
    assert HaarFaceConfig.load(tmp_path / "v.json").min_neighbors == 3
    (tmp_path / "bad.json").write_text('{"kind": "haar_face", "min_neighbours": 3}')
    with pytest.raises(AffectusError, match=r"bad.json: unknown HaarFaceConfig key\(s\): min_neighbours"):
        HaarFaceConfig.load(tmp_path / "bad.json")
    with pytest.raises(AffectusError, match="config kind 'librosa', expected 'opensmile'"):
        OpenSmileConfig.from_dict({"kind": "librosa"})


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("video_id,clip_id,label,mode\nv1,1,0.5,train\n", r"label.csv: missing column\(s\) text"),
        (
            HEADER + "v1,1,a,0.5,0,0,0,x,train\nv1,1,b,0.1,0,0,0,x,test\n",
            "line 3: duplicate clip video_id=v1 clip_id=1",
        ),
        (HEADER + "v1,1,a,4.5,0,0,0,x,train\n", r"line 2: label 4.5 outside \[-3, 3\]"),
        (HEADER + "v1,1,a,high,0,0,0,x,train\n", "line 2: label 'high' is not a number"),
        (HEADER + "v1,1,a,0.5,0,0,0,x,dev\n", "line 2: mode 'dev' is not one of train, valid, test"),
        (HEADER + "../..,1,a,0.5,0,0,0,x,train\n", "video_id '../..' is not a plain file name"),
        (
            "video_id,clip_id,text,label,mode,label_T\nv1,1,a,0.5,train,0\n",
            "has label_T but not label_A, label_V",
        ),
        (HEADER, "no clips"),
        # emotion classes in annotation (label empty: read as class names)
        (ANNOTATED + "v1,1,a,,train,happy\nv1,2,b,,train,\n", "line 3: annotation is empty: every clip needs its class name"),
        (ANNOTATED + "v1,1,a,,train,Happy\nv1,2,b,,train,happy \n", r"annotation names one class only \(happy\)"),
        (ANNOTATED + "v1,1,a,,train,happy\nv1,2,b,,train,very happy\n", "line 3: annotation 'very happy' holds ' '"),
        (ANNOTATED + "v1,1,a,,train,happy\nv1,2,b,,train,sad</b>\n", "line 3: annotation 'sad</b>' holds '<'"),
        (ANNOTATED + "v1,1,a,,train,happy\nv1,2,b,,train,2\n", "line 3: annotation '2' does not start with a letter"),
        (ANNOTATED + "v1,1,a,,train,happy\nv1,2,b,,train," + "x" * 41 + "\n", "is longer than 40 characters"),
        ("video_id,clip_id,text,label,mode\nv1,1,a,,train\n", "line 2: label '' is not a number .*annotation column"),
        (HEADER + "v1,1,a,4,0,0,0,x,train\n", r"label 4 outside \[-3, 3\] \(emotion classes\? .*--labels annotation"),
    ],
)
def test_bad_label_csv_is_one_error_line(tmp_path: Path, cli, csv_text: str, message: str) -> None:
    (tmp_path / "label.csv").write_text(csv_text, encoding="utf-8")
    rc, out, err = cli("extract-dataset", tmp_path, "--out", tmp_path / "x.npz", "--workers", "1")
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert __import__("re").search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["label.csv"]  # nothing written, not even a work folder


def test_labels_option_errors_write_nothing(tmp_path: Path, cli) -> None:
    (tmp_path / "label.csv").write_text("video_id,clip_id,text,label,mode\nv1,1,a,0.5,train\n", encoding="utf-8")
    rc, _, err = cli("extract-dataset", tmp_path, "--out", tmp_path / "x.npz", "--labels", "annotation")
    assert rc == 2 and err.strip().endswith("--labels annotation, but there is no annotation column "
                                            "(has: video_id, clip_id, text, label, mode)"), err
    rc, _, err = cli("extract-dataset", tmp_path, "--out", tmp_path / "x.npz", "--labels", "emotion")
    assert rc == 2 and err.strip() == "error: --labels must be one of auto, label, annotation, not 'emotion'"
    (tmp_path / "label.csv").write_text(ANNOTATED + "v1,1,a,,train,happy\nv1,2,b,,test,sad\n", encoding="utf-8")
    rc, _, err = cli("extract-dataset", tmp_path, "--out", tmp_path / "x.pkl")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "a categorical dataset (happy, sad) records its class names in an affectus .npz" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["label.csv"]


def test_label_csv_annotation_classes_sorted_and_auto_detected(tmp_path: Path) -> None:
    """Names are lower-cased and sorted into class numbers; `auto` reads them when `label` is empty or absent;
    label_T/A/V (sentiment) are not kept with classes; scores stay sentiment, without a warning."""
    from affectus.features.dataset import read_clip_labels

    path = tmp_path / "label.csv"
    path.write_text("video_id,clip_id,text,mode,annotation,label_T,label_A,label_V\n"
                    "v1,1,a,train,Sad,0,0,0\nv1,2,b,train,happy,0,0,0\nv1,3,c,test,ANGRY,0,0,0\nv1,4,d,test,sad,0,0,0\n")
    got = read_clip_labels(path)
    assert got.classes == ("angry", "happy", "sad")
    assert got.warning.endswith("no train clip of class angry; a model trained on this file never learns it "
                                "(it is still scored)")
    assert [r.label for r in got.rows] == [2.0, 1.0, 0.0, 2.0] and all(r.unimodal is None for r in got.rows)
    path.write_text(HEADER + "v1,1,a,0.5,0,0,0,Positive,train\nv1,2,b,-1.2,0,0,0,Negative,test\n")
    got = read_clip_labels(path)  # CH-SIMS's own file: scores in label, sentiment words in annotation
    assert got.classes is None and got.warning is None and [r.label for r in got.rows] == [0.5, -1.2]
    assert read_clip_labels(path, "annotation").classes == ("negative", "positive")  # asked for: its words
    path.write_text(HEADER + "v1,1,a,2,0,0,0,x,train\nv1,2,b,0,0,0,0,y,test\n")
    assert "look like class indices" in read_clip_labels(path).warning


def test_missing_folder_and_bad_options(tmp_path: Path, cli) -> None:
    rc, _, err = cli("extract-dataset", tmp_path / "nope", "--out", tmp_path / "x.npz")
    assert rc == 2 and "no such folder" in err
    (tmp_path / "label.csv").write_text(HEADER + "v1,1,a,0.5,0,0,0,x,train\n")
    rc, _, err = cli("extract-dataset", tmp_path, "--out", tmp_path / "x.npz", "--on-fail", "drop")
    assert rc == 2 and "--on-fail must be one of skip, zero" in err
    rc, _, err = cli("extract-dataset", tmp_path, "--out", tmp_path / "x.npz", "--audio", "praat")
    assert rc == 2 and "--audio must be one of opensmile, librosa" in err


def test_missing_media_packages_are_one_clear_error(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "opensmile" else real(name, *a)
    )
    (tmp_path / "label.csv").write_text(HEADER + "v1,1,a,0.5,0,0,0,x,train\n")
    rc, _, err = cli("extract-dataset", tmp_path, "--out", tmp_path / "x.npz", "--workers", "1")
    assert (
        rc == 2
        and err.strip()
        == "error: extract-dataset needs opensmile: pip install 'affectus[clips]' (docs/media.md)"
    )


def test_label_csv_keeps_ids_as_text(tmp_path: Path) -> None:
    (tmp_path / "label.csv").write_text("\ufeff" + HEADER + "video_0001,0007,你好,-0.2,0,-0.4,0.2,x,Valid\n")
    (row,) = read_label_csv(tmp_path / "label.csv")
    assert (
        row.id == "video_0001$_$0007" and row.mode == "valid" and row.text == "你好"
    )  # BOM and case handled
    assert row.unimodal == {"text": 0.0, "audio": -0.4, "vision": 0.2}


# ------------------------------------------------------------------------------------------ extractors


@needs_media
def test_decode_rates_and_limits(media_root: Path) -> None:
    from affectus.features.decode import Decoder

    clip = media_root / "Raw" / "v1" / "0001.mp4"
    dec = Decoder(DecodeConfig(sample_rate=16000, fps=10.0))
    info = dec.probe(clip)
    samples = dec.audio(clip)
    assert samples.dtype == np.float32 and samples.ndim == 1 and 0.05 < np.abs(samples).max() <= 1.0
    assert abs(samples.size / 16000 - info["duration_s"]) < 0.15  # 16 kHz mono for the whole clip
    n10 = len(list(dec.frames(clip)))
    n5 = len(list(Decoder(DecodeConfig(fps=5.0)).frames(clip)))
    assert n10 == pytest.approx(info["duration_s"] * 10, abs=1.5)
    assert n5 == pytest.approx(n10 / 2, abs=1)
    with pytest.raises(MediaError) as err:
        Decoder(DecodeConfig(max_duration_s=0.5)).audio(clip)
    assert err.value.reason == "too_long"
    with pytest.raises(MediaError) as err:
        dec.audio(media_root / "Raw" / "v9" / "mute.mp4")
    assert err.value.reason == "no_audio"


@needs_media
def test_audio_extractors_shapes_and_values(media_root: Path) -> None:
    from affectus.features.audio import LibrosaExtractor, OpenSmileExtractor
    from affectus.features.decode import Decoder

    samples = Decoder().audio(media_root / "Raw" / "v1" / "0001.mp4")
    seconds = samples.size / 16000
    smile = OpenSmileExtractor()(samples)
    assert smile.shape[1] == 25 and smile.shape[0] == pytest.approx(seconds * 100, abs=10)  # 10 ms hop
    assert np.isfinite(smile).all() and smile[:, 0].max() > 0  # loudness of real speech
    lib = LibrosaExtractor()(samples)  # pyin: unvoiced frames get log-F0 0
    assert lib.shape[1] == 33 and lib.shape[0] == pytest.approx(seconds * 16000 / 512, abs=2)
    voiced = lib[:, 0][lib[:, 0] != 0]  # log F0 of espeak's voice, inside the search range
    assert 0 < voiced.size < lib.shape[0]  # speech has voiced frames, the pauses have none
    assert voiced.size > 0 and np.log(65) - 1e-3 <= voiced.min() and voiced.max() <= np.log(600) + 1e-3
    with pytest.raises(MediaError):
        OpenSmileExtractor()(np.zeros(100, np.float32))  # too short to describe


@pytest.mark.skipif(any(m in missing_tools() for m in ("cv2", "skimage")), reason="needs cv2 and skimage")
def test_face_features_mark_frames_without_a_face() -> None:
    from affectus.features.vision import HaarFaceExtractor

    x = HaarFaceExtractor()
    face, blank = face_frames(1)[0], face_frames(1, face=False)[0]
    vec = x.frame(face)
    assert vec is not None and vec.shape == (x.dim,) == (152,)
    assert 0.2 < vec[0] < 0.8 and 0.2 < vec[1] < 0.8 and 0.1 < vec[2] < 0.9  # the face box lies in the frame
    assert x.frame(blank) is None
    v = x([(0.0, face), (0.1, blank), (0.2, face)])
    assert v.face.tolist() == [True, False, True]
    assert not v.features[1].any() and v.face_frames.shape == (2, 152)


# ------------------------------------------------------------------------------------------ extract-dataset


@needs_media
def test_extract_dataset_writes_a_file_inspect_reads(
    extracted: dict[str, Path], media_root: Path, cli
) -> None:
    ds = load_dataset(extracted["out"])  # what inspect / train / evaluate read
    assert {k: len(s) for k, s in ds.splits.items()} == {"train": 2, "valid": 1, "test": 1}
    assert ds.dims == {"text": 384, "audio": 25, "vision": 152}  # MiniLM sentence embeddings of the transcripts
    train = ds.splits["train"]
    assert train.ids == ["v1$_$0001", "v1$_$0002"]
    assert train.raw_text == [GOOD[0].text, GOOD[1].text]
    assert train.labels.tolist() == pytest.approx([0.8, -0.8])
    assert train.unimodal_labels is not None and train.unimodal_labels["audio"].tolist() == pytest.approx(
        [0.8, -0.8]
    )
    for s in ds.splits.values():
        for m in ("text", "audio", "vision"):
            lengths = s.lengths(m)
            assert (lengths > 0).all()
            steps = np.arange(s.features(m).shape[1])[None, :]
            assert not s.features(m)[steps >= lengths[:, None]].any()  # zeros only after the true length
    meta = json.loads(extracted["meta"].read_text())
    assert meta["extractors"]["audio"]["kind"] == "opensmile"
    assert meta["text_features"]["text_encoder"]["encoder"] == "minilm"  # recorded: a run re-encodes the same way
    stats = meta["clips"]["v1$_$0001"]
    assert stats["face_frames"] == stats["frames"] > 0
    assert train.vision_lengths[0] == stats["face_frames"]
    assert meta["clips"]["v9$_$noface"]["face_frames"] == 0 and meta["clips"]["v9$_$noface"]["frames"] > 0
    rc, out, _ = cli("inspect", extracted["out"], "--json")
    assert rc == 0 and json.loads(out)["splits"]["train"]["n"] == 2


@needs_media
def test_every_failed_clip_is_reported_with_its_reason(extracted: dict[str, Path]) -> None:
    report = json.loads(extracted["report"].read_text())
    assert report["clips"] == N_CLIPS and report["failed_clips"] == len(BAD) and report["on_fail"] == "skip"
    reasons = {f["clip_id"]: f["reason"] for f in report["failures"]}
    assert reasons == BAD
    assert all(
        f["action"] == "skipped" and f["path"].endswith(f"{f['clip_id']}.mp4") for f in report["failures"]
    )
    modality = {f["clip_id"]: f["modality"] for f in report["failures"]}
    assert modality == {
        "noface": "vision",
        "mute": "audio",
        "empty": "clip",
        "corrupt": "clip",
        "truncated": "clip",
        "missing": "clip",
    }


@needs_media
def test_on_fail_zero_keeps_failed_clips_with_empty_modalities(
    extracted: dict[str, Path], media_root: Path, cli, tmp_path: Path
) -> None:
    out = tmp_path / "zero.pkl"  # the MMSA pickle form this time
    rc, stdout, err = cli(
        "extract-dataset",
        media_root,
        "--out",
        out,
        "--on-fail",
        "zero",
        "--work-dir",
        extracted["work"],
        "--workers",
        "1",
    )
    assert rc == 0, err
    assert f"(0 extracted, {N_CLIPS} resumed" in stdout  # same configs and files: nothing is extracted twice
    train = load_dataset(out).splits["train"]
    assert len(train) == 2 + len(BAD)
    row = {i.split("$_$")[1]: k for k, i in enumerate(train.ids)}
    a, v, t = train.audio_lengths, train.vision_lengths, train.text_lengths
    assert v[row["noface"]] == 0 and a[row["noface"]] > 0
    assert a[row["mute"]] == 0 and v[row["mute"]] > 0
    for clip in ("empty", "corrupt", "truncated", "missing"):
        assert a[row[clip]] == 0 and v[row[clip]] == 0 and t[row[clip]] > 0  # the transcript still counts
        assert not train.audio[row[clip]].any() and not train.vision[row[clip]].any()
    report = json.loads((tmp_path / "zero.pkl.failures.json").read_text())
    assert {f["action"] for f in report["failures"]} == {"zero_filled"}


@pytest.mark.slow
@needs_media
def test_killed_run_resumes_and_matches_a_clean_run(
    extracted: dict[str, Path], media_root: Path, cli, tmp_path: Path
) -> None:
    """SIGKILL a serial run after two clips are saved; the parallel rerun keeps them and ends identical."""
    out, work = tmp_path / "again.npz", tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "affectus", "extract-dataset", str(media_root), "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--work-dir", str(work), "--workers", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    try:
        while len(list(work.rglob("*.npz"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = len(list(work.rglob("*.npz")))
    assert 2 <= saved < N_CLIPS and not out.exists()
    rc, stdout, err = cli("extract-dataset", media_root, "--out", out, "--work-dir", work, "--workers", "2")
    assert rc == 0, err
    assert f"({N_CLIPS - saved} extracted, {saved} resumed" in stdout
    with np.load(out, allow_pickle=False) as fresh, np.load(extracted["out"], allow_pickle=False) as ref:
        assert sorted(fresh.files) == sorted(ref.files)
        for key in ref.files:
            if key != "__meta__":  # the meta names the source file
                assert np.array_equal(fresh[key], ref[key]), key


@needs_media
def test_config_of_an_earlier_dataset_extracts_the_same_way(
    extracted: dict[str, Path], media_root: Path, cli, tmp_path: Path
) -> None:
    """--config FILE.extract.json reuses every cached clip (same digest); a different setting does not."""
    args = ["extract-dataset", media_root, "--work-dir", extracted["work"], "--workers", "1"]
    rc, stdout, err = cli(*args, "--out", tmp_path / "same.npz", "--config", extracted["meta"])
    assert rc == 0, err
    assert f"(0 extracted, {N_CLIPS} resumed" in stdout
    (tmp_path / "bad.json").write_text('{"decode": {"fps": -1}}')
    rc, _, err = cli(*args, "--out", tmp_path / "x.npz", "--config", tmp_path / "bad.json")
    assert rc == 2 and "bad.json: bad DecodeConfig" in err
    rc, _, err = cli(*args, "--out", tmp_path / "x.npz", "--asr", "whisper")
    assert rc == 2 and "--asr must be none or one of moonshine, not 'whisper'" in err
    (tmp_path / "junk.json").write_text("{not json")
    rc, _, err = cli(*args, "--out", tmp_path / "x.npz", "--config", tmp_path / "junk.json")
    assert rc == 2 and "junk.json: not a readable JSON config" in err


@pytest.fixture(scope="module")
def clip_run(extracted: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A late-fusion run trained (1 epoch) on the extracted test bed: it records the extractors."""
    from affectus.cli import main

    run = tmp_path_factory.mktemp("cliprun") / "run"
    assert main(["train", "--data", str(extracted["out"]), "--model", "late_fusion", "--out", str(run),
                 "--set", "train.epochs=1", "--set", "train.batch_size=2", "--quiet"]) == 0
    return run


def test_predict_a_clip_the_run_never_saw(clip_run: Path, tmp_path: Path, cli) -> None:
    """extract-dataset -> train -> `affectus predict RUN clip.mp4`: the run's recorded extractors are applied
    to a new clip; the JSON holds the verdict, each modality's call and weight, the transcript and the
    frame / face counts. A clip without a face predicts from the modalities it has."""
    run = clip_run
    assert json.loads((run / "run.json").read_text())["extraction"]["extractors"]["audio"]["kind"] == "opensmile"
    clip = tmp_path / "new.mp4"
    make_clip(ClipSpec("v7", "new", "A lovely, happy surprise.", 0.7, "test"), clip)
    rc, out, err = cli("predict", run, clip, "--json", "--transcript", "A lovely, happy surprise.")
    assert rc == 0, err
    got = json.loads(out)
    assert got["verdict"] in ("negative", "neutral", "positive") and set(got["modalities"]) == {"text", "audio", "vision"}
    assert got["transcript"] == "A lovely, happy surprise." and got["stats"]["face_frames"] > 0
    assert got["transcript_source"] == "given" and "thumbnails" not in got  # images only in the service
    assert got["followed"] in (None, "text", "audio", "vision")
    faceless = tmp_path / "faceless.mp4"
    make_clip(ClipSpec("v7", "faceless", "Nobody here.", 0.0, "test", face=False), faceless)
    rc, out, err = cli("predict", run, faceless, "--json", "--no-asr")
    assert rc == 0, err
    got = json.loads(out)
    # no face, no transcript (speech recognition turned off): audio alone, and the text's absence said
    assert set(got["absent"]) == {"vision", "text"} and "absent" not in got["modalities"]["audio"]
    assert got["modalities"]["text"]["absent"].startswith("no transcript (speech recognition turned off)")
    assert got["stats"]["face_frames"] == 0 and any(f["reason"] == "no_face" for f in got["failures"])
    assert got["transcript"] is None and got["transcript_source"] is None


def test_predict_several_clips_in_one_call(clip_run: Path, media_root: Path, tmp_path: Path, cli) -> None:
    """`affectus predict RUN a.mp4 b.mp4 ...`: one JSON line per clip in the given order; a clip that fails
    gets its own `error:` line and an {"id", "error"} line in its place, the others are still predicted,
    and the exit code is 2 at the end."""
    raw = media_root / "Raw"
    clips = [raw / "v1" / "0001.mp4", raw / "v9" / "corrupt.mp4", tmp_path / "gone.mp4", raw / "v9" / "noface.mp4"]
    rc, out, err = cli("predict", clip_run, *clips, "--json", "--no-asr")
    assert rc == 2
    lines = [json.loads(line) for line in out.splitlines()]
    assert [row["id"] for row in lines] == ["0001.mp4", "corrupt.mp4", "gone.mp4", "noface.mp4"]
    def present(row: dict) -> set[str]:
        return {m for m, v in row["modalities"].items() if "absent" not in v}

    assert lines[0]["stats"]["face_frames"] > 0 and present(lines[0]) == {"audio", "vision"}
    assert "not a readable media file" in lines[1]["error"] and "no such clip" in lines[2]["error"]
    assert present(lines[3]) == {"audio"} and "absent" in lines[3]["modalities"]["text"] and "error" not in lines[3]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and "corrupt.mp4" in errors[0] and "gone.mp4" in errors[1]
    assert errors[2] == "error: 2 of 4 clip(s) failed"
    # all good: exit 0, one line each; a features file among clips, or --transcript for several: one error line
    rc, out, err = cli("predict", clip_run, clips[0], clips[3], "--json", "--no-asr")
    assert rc == 0 and len(out.splitlines()) == 2, err
    rc, _, err = cli("predict", clip_run, clips[0], tmp_path / "feats.npz")
    assert rc == 2 and err.splitlines()[0].startswith("error: predict: ") and "feats.npz" in err
    rc, _, err = cli("predict", clip_run, clips[0], clips[3], "--transcript", "hello")
    assert rc == 2 and "--transcript is for one clip, got 2 clips" in err


@pytest.mark.slow
def test_serve_predicts_an_uploaded_clip(clip_run: Path, media_root: Path, tmp_path: Path) -> None:
    """POST /predict with a clip the run never saw: the same fields as `affectus predict RUN clip.mp4`, plus
    up to 4 face thumbnails (64 px JPEGs of the detected face); a clip without a face has none."""
    pytest.importorskip("fastapi")
    import base64

    import cv2
    from fastapi.testclient import TestClient

    from affectus.inference.service import Limits, create_app

    run = clip_run
    clip = tmp_path / "upload.mp4"
    make_clip(ClipSpec("v8", "up", "What a wonderful day.", 0.7, "test"), clip)
    # a loopback base URL: the service refuses Host headers off its allow-list; `with` stops its clip workers
    with TestClient(create_app(run), base_url="http://localhost") as client:
        r = client.post("/predict", files={"file": ("upload.mp4", clip.read_bytes())},
                        data={"transcript": "What a wonderful day."})
        noface = client.post("/predict", files={"file": ("noface.mp4", (media_root / "Raw" / "v9" / "noface.mp4").read_bytes())})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"][0]
    assert got["transcript"] == "What a wonderful day." and got["stats"]["face_frames"] > 0
    assert set(got["modalities"]) == {"text", "audio", "vision"}
    thumbs = got["thumbnails"]
    assert 1 <= len(thumbs) <= min(4, got["stats"]["face_frames"])
    for url in thumbs:
        head, b64 = url.split(",", 1)
        assert head == "data:image/jpeg;base64"
        img = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (64, 64, 3) and img.std() > 10  # a real picture, not a flat fill
    assert noface.status_code == 200, noface.text
    assert noface.json()["predictions"][0]["thumbnails"] == []
    with TestClient(create_app(run, Limits(max_clip_s=0.1)), base_url="http://localhost") as short:
        r = short.post("/predict", files={"file": ("upload.mp4", clip.read_bytes())})
    assert r.status_code == 413 and "longer than" in r.json()["error"]


# ------------------------------------------------------------------------------------------ a new extractor


# ------------------------------------------------------------------------------------------ emotion classes

EMOTIONS = ("angry", "happy", "neutral", "sad")  # sorted: the documented class order
# (video_id, clip_id, mode, annotation, the test bed's clip it shows): each split has all four emotions;
# the faceless and mute clips are kept with --on-fail zero
EMOTION_ROWS = [("e1", "1", "train", "Happy", "v1/0001"), ("e1", "2", "train", "sad", "v1/0002"),
                ("e1", "3", "train", "angry", "v9/noface"), ("e1", "4", "train", "neutral", "v9/mute"),
                ("e2", "1", "valid", "happy", "v2/0001"), ("e2", "2", "valid", "sad", "v3/0001"),
                ("e2", "3", "valid", "angry", "v1/0002"), ("e2", "4", "valid", "neutral", "v1/0001"),
                ("e3", "1", "test", "happy", "v3/0001"), ("e3", "2", "test", "sad", "v2/0001"),
                ("e3", "3", "test", "angry", "v1/0001"), ("e3", "4", "test", "neutral", "v1/0002")]
TEXTS = {f"{s.video_id}/{s.clip_id}": s.text for s in GOOD} | {"v9/noface": "Nobody is here.", "v9/mute": "A silent film."}


@pytest.fixture(scope="module")
def emotion_work(media_root: Path, extracted: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared extraction's work folder in which each EMOTION_ROWS clip holds the result of the
    test-bed clip it links to: the emotion folders below are extracted without decoding a clip again (a
    saved result is used when the clip file's size and time match: the link's target's do)."""
    import shutil

    work = tmp_path_factory.mktemp("emotion_work") / "work"
    shutil.copytree(extracted["work"], work)
    for digest in (d for d in work.iterdir() if d.is_dir()):
        for video, clip, _, _, source in EMOTION_ROWS:
            (digest / video).mkdir(exist_ok=True)
            shutil.copy(digest / f"{source}.npz", digest / video / f"{clip}.npz")
    return work


def emotion_folder(media_root: Path, where: Path, label: bool = False) -> Path:
    """A clip folder of EMOTION_ROWS (clips linked to the test bed's) whose annotation column names
    emotions; `label`: the label column holds the class numbers a user might have typed (0 happy, 1 sad, ...)."""
    typed = {"happy": 0, "sad": 1, "angry": 2, "neutral": 3}
    with_rows = []
    for video, clip, mode, name, source in EMOTION_ROWS:
        link = where / "Raw" / video / f"{clip}.mp4"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(media_root / "Raw" / f"{source}.mp4")
        with_rows.append([video, clip, TEXTS[source], typed[name.lower()] if label else "", name, mode])
    with open(where / "label.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "clip_id", "text", "label", "annotation", "mode"])
        w.writerows(with_rows)
    return where


def extract_emotions(root: Path, work: Path, out: Path, *more: str) -> list[str]:
    return ["extract-dataset", str(root), "--out", str(out), "--work-dir", str(work), "--on-fail", "zero",
            "--text-encoder", "hashed", "--workers", "1", *more]


@pytest.fixture(scope="module")
def emotion_npz(media_root: Path, emotion_work: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """extract-dataset of a folder whose annotation holds happy / sad / angry / neutral and whose label is
    empty: categorical without being asked."""
    from affectus.cli import main

    tmp = tmp_path_factory.mktemp("emotions")
    out = tmp / "emotions.npz"
    assert main(extract_emotions(emotion_folder(media_root, tmp / "clips"), emotion_work, out)) == 0
    return out


@needs_media
def test_annotation_names_make_a_categorical_dataset(emotion_npz: Path, cli, tmp_path: Path) -> None:
    """The classes are the names found, sorted; the .npz records them, and train / evaluate read them from it:
    the JSON has accuracy, weighted F1, UAR and each emotion's F1."""
    ds = load_dataset(emotion_npz)
    assert ds.scheme == {"name": "categorical", "classes": list(EMOTIONS)}
    names = {i: EMOTIONS[int(y)] for s in ds.splits.values() for i, y in zip(s.ids, s.labels)}
    assert names == {f"{v}$_${c}": n.lower() for v, c, _, n, _ in EMOTION_ROWS}  # "Happy" is happy
    assert ds["train"].unimodal_labels is None
    record = json.loads(emotion_npz.with_name("emotions.npz.extract.json").read_text())
    assert record["labels"] == {"column": "annotation", "scheme": ds.scheme}
    rc, out, _ = cli("inspect", emotion_npz, "--json")
    assert rc == 0 and json.loads(out)["splits"]["test"]["classes"] == {n: 1 for n in EMOTIONS}
    rc, out, _ = cli("inspect", emotion_npz)
    assert rc == 0 and "label scheme categorical: angry, happy, neutral, sad (recorded in the file)" in out
    run = tmp_path / "run"
    rc, _, err = cli("train", "--data", emotion_npz, "--model", "late_fusion", "--out", run, "--set", "train.epochs=1",
                     "--set", "train.batch_size=4", "--threads", "1", "--quiet")
    assert rc == 0, err
    assert "label scheme categorical: angry, happy, neutral, sad (recorded in the file)" in err
    rc, out, err = cli("evaluate", run, "--json")
    assert rc == 0, err
    got = json.loads(out)
    assert got["split"] == "test"  # all four emotions are in it (EMOTION_ROWS)
    for key in ("acc", "f1", "uar", *(f"f1_{n}" for n in EMOTIONS)):
        assert isinstance(got[key], float) and 0 <= got[key] <= 100, key
    assert got["label_scheme"] == "categorical: angry, happy, neutral, sad"
    rc, _, err = cli("report", run, "--no-tensorboard")
    assert rc == 0, err
    page = (run / "report" / "report.html").read_text(encoding="utf-8")
    assert "label scheme categorical: angry, happy, neutral, sad; recorded in the data file" in page
    assert "F1 neutral" in page


@needs_media
def test_class_numbers_in_label_warn_and_annotation_fixes_it(
    media_root: Path, emotion_work: Path, emotion_npz: Path, cli, tmp_path: Path
) -> None:
    """Class numbers typed into `label` (0 happy, 1 sad, ...) are read as sentiment, with one warning line
    naming --labels annotation (and again when training on that file); with --labels annotation, the same
    folder gives the categorical file of the auto case."""
    root = emotion_folder(media_root, tmp_path / "typed", label=True)
    rc, out, err = cli(*extract_emotions(root, emotion_work, tmp_path / "sentiment.npz"))
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "look like class indices" in warnings[0], err
    assert "pass --labels annotation" in warnings[0] and "labels sentiment scores" in out
    assert load_dataset(tmp_path / "sentiment.npz").scheme is None
    rc, _, err = cli("train", "--data", tmp_path / "sentiment.npz", "--model", "late_fusion", "--out", tmp_path / "run",
                     "--set", "train.epochs=1", "--threads", "1", "--quiet")
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "look like class indices" in warnings[0] and "--labels annotation" in warnings[0]
    assert "label scheme 3-class sentiment, Acc2 Has0/Non0 (MOSI rule) (inferred from the labels" in err
    rc, out, err = cli(*extract_emotions(root, emotion_work, tmp_path / "classes.npz", "--labels", "annotation"))
    assert rc == 0 and "warning" not in err, err
    assert "labels categorical: angry, happy, neutral, sad (annotation column)" in out
    again, auto = load_dataset(tmp_path / "classes.npz"), load_dataset(emotion_npz)
    assert again.scheme == auto.scheme
    for name, split in auto.splits.items():
        assert split.labels.tolist() == again[name].labels.tolist()
    # the sentiment run scored on the emotion file: the file says what its numbers mean, so it is refused
    rc, _, err = cli("evaluate", tmp_path / "run", "--data", emotion_npz, "--json")
    assert rc == 2 and err.strip().endswith("its labels are categorical: angry, happy, neutral, sad (recorded in the "
                                            "file), but run " + str(tmp_path / "run") + " predicts 3-class sentiment, "
                                            "Acc2 Has0/Non0 (MOSI rule)"), err


@needs_media
@pytest.mark.slow
def test_an_audio_extractor_added_in_one_place_extracts_a_dataset(media_root: Path, tmp_path: Path, cli) -> None:
    """docs/architecture.md, "Which one file to add": an audio extractor is a config dataclass and a class
    registered with `@register_audio`; `--audio NAME`, the cache check, media.json and the dataset's dims
    follow without another edit. Registered here, inside the test file."""
    import dataclasses

    from affectus.features.audio import AUDIO_EXTRACTORS, register_audio
    from affectus.features.base import ExtractorConfig

    @dataclasses.dataclass(frozen=True)
    class EnergyConfig(ExtractorConfig):
        kind: str = "test_energy"
        frame: int = 160  # samples: 10 ms at 16 kHz

        def rows_per_second(self, sample_rate: int) -> float:
            return sample_rate / self.frame

        def known_dim(self) -> int | None:
            return 2

    @register_audio(EnergyConfig, "RMS energy and zero-crossing rate per frame, 2-d")
    class EnergyExtractor:
        def __init__(self, config: EnergyConfig, sample_rate: int = 16000) -> None:
            self.config, self.dim = config, 2

        def __call__(self, samples: np.ndarray) -> np.ndarray:
            n = samples.size // self.config.frame
            if n == 0:
                raise MediaError("no_audio", "shorter than one frame")
            frames = samples[: n * self.config.frame].reshape(n, self.config.frame).astype(np.float32)
            rms = np.sqrt((frames ** 2).mean(axis=1))
            zcr = (np.diff(np.sign(frames), axis=1) != 0).mean(axis=1)
            return np.stack([rms, zcr], axis=1).astype(np.float32)  # (T, 2)

    try:
        out = tmp_path / "energy.npz"
        rc, _, err = cli("extract-dataset", media_root, "--out", out, "--audio", "test_energy", "--workers", "1",
                         "--text-encoder", "hashed")
        assert rc == 0, err
        ds = load_dataset(out)
        assert ds.dims["audio"] == 2
        train = ds.splits["train"]
        assert (train.audio_lengths > 50).all()  # 1-2 s of speech at 100 rows per second
        assert train.features("audio")[0, : train.audio_lengths[0], 0].max() > 0  # the speech has energy
        meta = json.loads(out.with_name("energy.npz.extract.json").read_text())
        assert meta["extractors"]["audio"] == {"kind": "test_energy", "frame": 160}
    finally:
        AUDIO_EXTRACTORS.pop("test_energy", None)


@pytest.mark.slow
def test_predict_clips_as_one_conversation(extracted: dict[str, Path], media_root: Path, tmp_path: Path, cli) -> None:
    """issue 19 item 3: `predict RUN a.mp4 b.mp4 c.mp4 --conversation` predicts the clips as one video in the
    given order; a run trained with causal context reads only the clips before each one, so the first
    verdicts do not change when a clip is added, and a single clip is a conversation of one."""
    run = tmp_path / "ctx"
    rc, _, err = cli("train", "--data", extracted["out"], "--model", "late_fusion", "--out", run, "--set",
                     "train.epochs=1", "--set", "train.batch_size=2", "--set", "train.context=1", "--set",
                     "train.context_causal=true", "--quiet")
    assert rc == 0, err
    raw = media_root / "Raw"
    clips = [raw / "v1" / "0001.mp4", raw / "v9" / "noface.mp4", raw / "v9" / "mute.mp4"]

    def rows(*args):
        rc, out, err = cli("predict", run, *args, "--json")
        assert rc == 0, err
        return [json.loads(line) for line in out.splitlines()]

    three = rows(*clips, "--conversation")
    two = rows(*clips[:2], "--conversation")
    alone = rows(clips[0])
    assert [(r["id"], r["position"], r["conversation"]) for r in three] == [
        ("0001.mp4", 0, 3), ("noface.mp4", 1, 3), ("mute.mp4", 2, 3)]
    for a, b in [*zip(two, three), (alone[0], three[0])]:
        assert max(abs(a["probabilities"][k] - b["probabilities"][k]) for k in a["probabilities"]) < 1e-5
    rc, _, err = cli("predict", run, extracted["out"], "--conversation")
    assert rc == 2 and "--conversation is for clips" in err
