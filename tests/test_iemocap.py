"""Categorical emotions: the iemocap presets, the categorical simulator story, class labels read from a
file, labels outside the classes refused, and a model trained end to end on synth:iemocap."""

from __future__ import annotations

import json

import numpy as np
import pytest

from affectus.data import synthetic
from affectus.data.load import open_data
from affectus.data.mmsa import dataset_from_raw, load_dataset, write_pickle
from affectus.data.presets import load_preset
from affectus.data.schemes import get_scheme
from affectus.data.synthetic import SynthConfig, consistent_mask, generate
from affectus.errors import AffectusError

SMALL = {"n_train": 60, "n_valid": 20, "n_test": 20, "seq_lens": {"text": 4, "audio": 5, "vision": 3}}
FAST = ["--set", "train.epochs=2", "--set", "train.batch_size=16", "--threads", "1", "--quiet"]


def test_presets_name_their_classes_in_order():
    four, six = load_preset("iemocap"), load_preset("iemocap6")
    assert four.scheme.class_names == ("happy", "sad", "angry", "neutral")  # CUMDF's Table 2 order
    assert six.scheme.class_names == ("happy", "sad", "neutral", "angry", "excited", "frustrated")
    assert [c for c, _ in four.scheme.columns] == ["Acc", "W-F1", "UAR", "F1 happy", "F1 sad", "F1 angry",
                                                  "F1 neutral"]
    assert four.scheme.label_keys[0] == "classification_labels"


def test_categorical_story_labels_and_conflicts():
    cfg = SynthConfig.from_preset("iemocap", with_unimodal_labels=True, **{**SMALL, "n_train": 3000})
    assert cfg.class_names == ("happy", "sad", "angry", "neutral") and cfg.class_probs is not None
    raw = generate(cfg)
    d = raw["train"]
    y = d["classification_labels"]
    assert y.dtype == np.int64 and set(np.unique(y)) == {0, 1, 2, 3}
    assert np.array_equal(d["regression_labels"], y.astype(np.float32))
    # the class prior follows IEMOCAP's counts (neutral and happy+excited the largest)
    share = np.bincount(y, minlength=4) / len(y)
    assert np.allclose(share, cfg.class_probs, atol=0.03)
    # the multimodal class is held by at least two modalities; about `inconsistency` of samples conflict
    uni = np.stack([d[f"regression_labels_{k}"].astype(np.int64) for k in "TAV"], 1)
    assert ((uni == y[:, None]).sum(1) >= 2).all()
    msi = ~consistent_mask(d, get_scheme({"name": "categorical", "classes": list(cfg.class_names)}))
    assert abs(msi.mean() - cfg.inconsistency) < 0.04
    text_wrong = uni[:, 0] != y
    assert abs(text_wrong.mean() - cfg.inconsistency * cfg.text_misleading) < 0.03
    # words carry the text modality's emotion, which misleads exactly where text contradicts
    angry_words = ("annoyed", "irritated", "cross", "furious", "enraged", "livid")
    said_angry = np.array([s.split()[-1] in angry_words for s in d["raw_text"]])
    assert np.array_equal(said_angry, uni[:, 0] == 2)
    assert d["annotations"][0] == cfg.class_names[y[0]].capitalize()
    # same seed, same bytes
    assert generate(cfg)["train"]["vision"].tobytes() == d["vision"].tobytes()


def test_class_labels_read_from_classification_labels_with_a_categorical_preset(tmp_path):
    raw = generate(SynthConfig.from_preset("iemocap", **SMALL))
    for split in raw.values():
        split.pop("regression_labels")
    path = tmp_path / "classes_only.pkl"
    write_pickle(raw, path)
    ds = load_dataset(path, "iemocap")
    assert np.array_equal(ds["train"].labels, raw["train"]["classification_labels"].astype(np.float32))
    with pytest.raises(AffectusError, match="key regression_labels: missing required key .*--preset iemocap"):
        load_dataset(path)
    with pytest.raises(AffectusError, match="missing required key"):
        dataset_from_raw({"train": {k: v for k, v in raw["train"].items() if k != "classification_labels"}},
                         label_keys=("classification_labels", "regression_labels"))


@pytest.mark.parametrize("command", ["inspect", "train"])
def test_labels_outside_the_classes_exit_2_naming_file_split_row_value(tmp_path, cli, command):
    raw = generate(SynthConfig.from_preset("iemocap", **SMALL))
    raw["valid"]["classification_labels"][7] = 4  # iemocap has classes 0..3
    path = tmp_path / "bad.pkl"
    write_pickle(raw, path)
    args = [command, path, "--preset", "iemocap"] if command == "inspect" else [
        "train", "--data", path, "--preset", "iemocap", "--model", "late_fusion", "--out", tmp_path / "r", *FAST]
    rc, out, err = cli(*args)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0] == (f"error: file {path} split valid row 7: label 4 is not one of the 4 classes 0..3 "
                        "(happy, sad, angry, neutral)")


@pytest.fixture
def small_iemocap(monkeypatch):
    """synth:iemocap at a test's size: the preset's shapes (300 / 74 / 1024 features, 20 steps), 96 samples."""
    from affectus.data import presets

    shipped = presets.load_preset

    def small(name: str):
        preset = shipped(name)
        sizes = {"train": 64, "valid": 16, "test": 16}
        return preset.model_copy(update={"synth": preset.synth.model_copy(update={"sizes": sizes})})

    monkeypatch.setattr(presets, "load_preset", small)


def test_synth_cli_writes_categorical_data(tmp_path, cli, small_iemocap):
    out = tmp_path / "iemocap.pkl"
    rc, stdout, _ = cli("synth", "--preset", "iemocap", "--out", out)
    assert rc == 0 and "classes happy/sad/angry/neutral" in stdout
    ds = load_dataset(out, "iemocap")
    assert ds.dims == {"text": 300, "audio": 74, "vision": 1024} and ds.seq_lens == {"text": 20, "audio": 20, "vision": 20}
    assert set(np.unique(ds["test"].labels)) <= {0.0, 1.0, 2.0, 3.0}
    rc, stdout, _ = cli("inspect", out, "--preset", "iemocap", "--json")
    counts = json.loads(stdout)["splits"]["test"]["classes"]
    assert list(counts) == ["happy", "sad", "angry", "neutral"] and sum(counts.values()) == 16
    assert counts == {c: int((ds["test"].labels == k).sum()) for k, c in enumerate(counts)}
    ds2, preset = open_data("synth:iemocap")
    assert preset.name == "iemocap" and np.array_equal(ds2["train"].labels, ds["train"].labels)


@pytest.mark.parametrize(("model", "extra"), [("late_fusion", []), ("mcur", []),
                                             ("cmc", ["--set", "model.layers=1", "--set", "model.heads=2"])])
def test_train_end_to_end_on_synth_iemocap_with_categorical_metrics(tmp_path, cli, small_iemocap, model, extra):
    """CMC too: its PLGM banks hold the scheme's 4 classes, not the 3 sentiment ones."""
    out = tmp_path / model
    rc, _, err = cli("train", "--data", "synth:iemocap", "--model", model, "--out", out, *FAST, *extra)
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test"
    keys = {"acc", "f1", "uar", "f1_happy", "f1_sad", "f1_angry", "f1_neutral"}
    assert keys <= set(metrics) and all(0 <= metrics[k] <= 100 for k in keys)
    info = json.loads((out / "run.json").read_text())
    assert info["scheme"] == {"name": "categorical", "classes": ["happy", "sad", "angry", "neutral"]}
    assert info["model_config"]["num_classes"] == 4
    rc, stdout, _ = cli("evaluate", out, "--data", "synth:iemocap", "--available", "a,v", "--json")
    assert rc == 0 and set(json.loads(stdout)) >= keys


# ------------------------------------------------------------------------------ scaled synth: sources

@pytest.mark.parametrize(("source", "name", "options", "identity"), [
    ("synth:iemocap", "iemocap", {}, "synth:iemocap"),
    ("synth:iemocap?scale=0.1&seq_scale=0.25", "iemocap", {"scale": 0.1, "seq_scale": 0.25},
     "synth:iemocap?scale=0.1&seq_scale=0.25"),
    # one identity per generated data: option order, spelling of numbers and defaults do not matter
    ("synth:iemocap?seq_scale=0.250&scale=1&seed=1111", "iemocap", {"seq_scale": 0.25, "scale": 1.0, "seed": 1111},
     "synth:iemocap?seq_scale=0.25"),
    ("synth:?seed=3&inconsistency=0.8", "", {"seed": 3, "inconsistency": 0.8}, "synth:?seed=3&inconsistency=0.8"),
])
def test_synth_source_options_parse_to_one_identity(source, name, options, identity):
    from affectus.data.load import data_identity, parse_synth, source_id

    assert parse_synth(source) == (name, options)
    assert source_id(source) == identity and data_identity(source) == {"source": identity, "sha256": None}


@pytest.mark.parametrize(("source", "message"), [
    ("synth:iemocap?", "nothing after '?'"),
    ("synth:iemocap?scal=0.1", "unknown option 'scal' (did you mean 'scale'?)"),
    ("synth:iemocap?scale=0", "scale='0': expected a number > 0"),
    ("synth:iemocap?seq_scale=nan", "seq_scale='nan': expected a number > 0"),
    ("synth:iemocap?scale=big", "scale='big': expected a number > 0"),
    ("synth:iemocap?seed=1.5", "seed='1.5': expected an integer >= 0"),
    ("synth:iemocap?inconsistency=2", "inconsistency='2': expected a number in [0, 1]"),
    ("synth:iemocap?scale", "expected key=value pairs"),
    ("synth:iemocap?scale=0.1&scale=0.2", "option 'scale' given twice"),
])
def test_bad_synth_source_is_one_line_exit_2(tmp_path, cli, source, message):
    rc, out, err = cli("train", "--data", source, "--model", "late_fusion", "--out", tmp_path / "r", *FAST)
    assert rc == 2 and out == "" and not (tmp_path / "r").exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: data source {source!r}: ") and message in lines[0]


def test_scaled_synth_source_trains_via_the_cli_and_is_recorded(tmp_path, cli):
    """The full preset at scale 0.02, sequences at 0.1: the scaled sizes, the same data as `affectus synth`
    with --scale / --seq-scale; `affectus experiment` trains on it, records the source and prints the
    per-class F1 of each availability condition (CUMDF Table 2's layout)."""
    source = "synth:iemocap?scale=0.02&seq_scale=0.1&seed=5"
    ds, preset = open_data(source)
    assert preset.name == "iemocap" and ds.source == source
    assert {k: len(v.labels) for k, v in ds.splits.items()} == {"train": 54, "valid": 16, "test": 19}
    assert ds.seq_lens == {"text": 2, "audio": 2, "vision": 2}
    same = synthetic.generate_dataset("iemocap", scale=0.02, seq_scale=0.1, seed=5)
    assert np.array_equal(same["test"].vision, ds["test"].vision)
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t2\npreset: iemocap\nseeds: 1\nruns: [{name: LF, model: late_fusion}]\n"
                    "report: {columns: conditions, conditions: [l, av, lav]}\n")
    out = tmp_path / "exp"
    rc, stdout, err = cli("experiment", spec, "--data", source, "--out", out, "--set", "train.epochs=1",
                          "--set", "train.batch_size=32", "--threads", "1")
    assert rc == 0, err
    assert json.loads((out / "experiment.json").read_text())["data"] == source
    info = json.loads((out / "runs" / "lf__seed=1" / "run.json").read_text())
    assert info["data"] == {"source": source, "sha256": None}
    assert "## Per-class F1 per availability condition" in stdout
    assert "| Condition | Run | F1 happy | F1 sad | F1 angry | F1 neutral | W-F1 |" in stdout
    scores = json.loads((out / "runs" / "lf__seed=1" / "conditions.json").read_text())
    row = next(line for line in stdout.splitlines() if line.startswith("| {a,v} | LF |"))
    cells = [scores["{a,v}"][f"f1_{c}"] for c in ("happy", "sad", "angry", "neutral")]
    # a class with neither samples nor predictions has no F1 (null in JSON), shown as "-"
    assert row.split(" | ")[2:6] == ["-" if v is None else f"{v:.2f}" for v in cells], row
    assert "## Router weight" not in stdout  # late fusion has no router
