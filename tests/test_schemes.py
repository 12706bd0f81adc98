"""Label schemes (data/schemes.py): the shipped ones (categorical metrics by hand, the paper's columns, the
scheme inferred from the train and selection splits only), and a label scheme of one's own: registered inside
this file with its own bins, named by a preset written here (found through $AFFECTUS_PRESETS), then simulated,
trained, evaluated and reported through the CLI without any change under src/ (docs/architecture.md, "Add a
label scheme")."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from affectus.data import schemes
from affectus.data.mmsa import dataset_from_raw, load_dataset
from affectus.data.presets import PRESETS_ENV, list_presets, load_preset
from affectus.data.schemes import Acc2Rule, SentimentScheme, get_scheme, infer_scheme, register_scheme
from affectus.data.synthetic import SynthConfig, generate
from affectus.errors import AffectusError
from affectus.evaluation.metrics import compute_metrics
from affectus.training.trainer import plan_for

FIVE = ("strongly negative", "negative", "neutral", "positive", "strongly positive")
FAST = ["--set", "train.epochs=2", "--set", "train.patience=1", "--set", "train.batch_size=16", "--threads", "1",
        "--quiet"]


@dataclass(frozen=True)
class FiveBins(SentimentScheme):
    """Scores in [-3, 3] binned into 5 classes: (< -1.5), [-1.5, 0), 0, (0, 1.5], (> 1.5)."""

    def to_classes(self, labels: np.ndarray) -> np.ndarray:
        y = np.asarray(labels, dtype=np.float64)
        return np.select([y < -1.5, y < 0, y == 0, y <= 1.5], [0, 1, 2, 3], 4).astype(np.int64)


@register_scheme("sentiment5")
def _sentiment5() -> FiveBins:
    return FiveBins(
        name="sentiment5", class_names=FIVE, short_names=("--", "-", "0", "+", "++"), objective="acc5",
        f1_key="has0_f1", binary_names=("negative", "non-negative"),
        acc2_rules=(Acc2Rule("has0_", positive=(2, 3, 4)),), logit_sides=((0, 1), (3, 4)),
        columns=(("Has0 Acc2", "has0_acc2"), ("Has0 F1", "has0_f1"), ("Acc5", "acc5"), ("MAE", "mae")),
        modality_columns=schemes.modality_columns((("Acc5", "acc5"),)),
        slope_keys=(("Acc5", "acc5"),),
        synth_story=(("label_steps", (0.5,)), ("neutral_rate", 0.1), ("positive_rate", 0.5)),
    )


PRESET = """\
name: sentiment5
description: "a test's dataset: MOSI-like scores in [-3, 3], scored in five bins"
label_range: [-3.0, 3.0]
scheme: sentiment5
dims: {text: 12, audio: 5, vision: 7}
seq_lens: {text: 4, audio: 6, vision: 5}
unimodal_labels: true
splits: {train: train, select: valid, eval: test}
settings:
  cmc: {model.layers: 1, model.heads: 2, model.output_dropout: 0.1}
"""


@pytest.fixture
def presets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "sentiment5.yaml").write_text(PRESET)
    monkeypatch.setenv(PRESETS_ENV, str(folder))
    return folder


def test_the_scheme_owns_its_bins_acc2_rule_and_consistency():
    s = get_scheme("sentiment5")
    labels = np.array([-2.4, -0.5, 0.0, 0.5, 2.5, 1.0])
    assert s.to_classes(labels).tolist() == [0, 1, 2, 3, 4, 3]
    # the Acc2 rule on classes (SupCon's labels too) and on logits (best of --/- against best of +/++)
    assert s.binary_targets(s.to_classes(labels)).tolist() == [0, 0, 1, 1, 1, 1]
    logits = np.eye(5)[[0, 1, 3, 4, 2, 1]]
    assert s.binary(logits).tolist() == [False, False, True, True, False, False]
    m = compute_metrics(s, logits=logits, scores=labels)
    assert list(m) == ["has0_acc2", "has0_f1", "acc5"]
    assert m["acc5"] == pytest.approx(100 * 2 / 6)  # rows 0 and 1 only
    assert m["has0_acc2"] == pytest.approx(100 * 4 / 6)  # rows 0 to 3
    # D_msc by the scheme's own classes: 0.5 and 2.0 share a sign but not a bin
    uni = {"text": np.array([0.5, 2.0]), "audio": np.array([0.5, 1.0]), "vision": np.array([1.5, 0.5])}
    msc, _ = s.consistency_masks(np.array([0.5, 1.0]), uni)
    assert msc.tolist() == [True, False]
    assert get_scheme("sims").consistency_masks(np.array([0.5, 1.0]), uni)[0].tolist() == [True, True]


def test_a_preset_dir_adds_a_preset_by_name(presets_dir: Path):
    assert "sentiment5" in list_presets() and "sims" in list_presets()
    preset = load_preset("sentiment5")
    assert preset.scheme.name == "sentiment5" and preset.scheme.num_classes == 5


def test_train_evaluate_report_a_registered_scheme_through_the_cli(presets_dir: Path, tmp_path: Path, cli):
    data = tmp_path / "five.pkl"
    # the simulator tells the scheme's own score story (label steps of 0.5) from `synth_story`
    rc, stdout, err = cli("synth", "--preset", "sentiment5", "--n-train", 64, "--n-valid", 24, "--n-test", 24,
                          "--seed", 5, "--out", data)
    assert rc == 0, err
    ds = load_dataset(data, "sentiment5")
    labels = np.concatenate([s.labels for s in ds.splits.values()])
    assert np.allclose(labels * 2, np.round(labels * 2)) and labels.min() >= -3 and labels.max() <= 3
    # the summary's D_msc counts use the scheme's bins
    five = get_scheme("sentiment5")
    msc = sum(int(five.consistency_masks(s.labels, s.unimodal_labels)[0].sum()) for s in ds.splits.values())
    assert f"D_msc {msc} " in stdout

    run = tmp_path / "run"
    rc, _, err = cli("train", "--data", data, "--preset", "sentiment5", "--model", "late_fusion", "--out", run, *FAST)
    assert rc == 0, err
    info = json.loads((run / "run.json").read_text())
    assert info["scheme"] == {"name": "sentiment5"} and info["model_config"]["num_classes"] == 5
    metrics = json.loads((run / "metrics.json").read_text())
    keys = {"has0_acc2", "has0_f1", "acc5"}
    assert keys <= set(metrics) and all(0 <= metrics[k] <= 100 for k in keys)
    assert "acc3" not in metrics and "non0_acc2" not in metrics

    rc, stdout, err = cli("evaluate", run, "--data", data, "--json")  # the recorded preset is found by name
    assert rc == 0, err
    evaluated = json.loads(stdout)
    assert keys <= set(evaluated) and evaluated["acc5"] == pytest.approx(metrics["acc5"])

    rc, _, err = cli("report", run, "--data", data, "--no-tensorboard")
    assert rc == 0, err
    page = (run / "report" / "report.html").read_text()
    assert "Acc5" in page and "Has0 Acc2" in page


# ----------------------------------------------------------------------------- the shipped schemes

TINY = {"seq_lens": {"text": 4, "audio": 6, "vision": 5}, "dims": {"text": 12, "audio": 5, "vision": 7}}


def test_categorical_scheme_metrics_by_hand():
    s = get_scheme({"name": "categorical", "classes": ["happy", "sad", "angry", "neutral"]})
    truth = np.array([0, 0, 1, 2, 3, 3])
    pred = np.array([0, 1, 1, 2, 3, 0])
    m = compute_metrics(s, logits=np.eye(4)[pred], scores=truth.astype(np.float32))
    assert m["acc"] == pytest.approx(100 * 4 / 6)
    # recalls: happy 1/2, sad 1, angry 1, neutral 1/2 -> UAR 0.75
    assert m["uar"] == pytest.approx(75.0)
    # F1: happy P 1/2 R 1/2 -> 0.5; sad P 1/2 R 1 -> 2/3; angry 1; neutral P 1 R 1/2 -> 2/3
    assert m["f1_happy"] == pytest.approx(50.0) and m["f1_sad"] == pytest.approx(200 / 3)
    assert m["f1_angry"] == pytest.approx(100.0) and m["f1_neutral"] == pytest.approx(200 / 3)
    weighted = (2 * 0.5 + 1 * 2 / 3 + 1 * 1 + 2 * 2 / 3) / 6 * 100
    assert m["f1"] == pytest.approx(weighted)
    with pytest.raises(AffectusError, match="split train row 2: label 7 is not one of the 4 classes"):
        s.check_labels(np.array([0, 1, 7]), "file f split train")


def test_sentiment_schemes_keep_the_paper_columns():
    assert [c for c, _ in get_scheme("sims").columns][:2] == ["D_test Acc2", "D_test F1"]
    assert get_scheme("mosei").name == "mosi" and get_scheme("mosi").objective == "has0_acc2"


def test_scheme_is_inferred_from_train_and_selection_splits_only():
    raw = generate(SynthConfig(n_train=20, n_valid=8, n_test=8, seed=1, **TINY))
    for split in raw.values():  # drop unimodal labels so the label range decides
        for key in ("regression_labels_T", "regression_labels_A", "regression_labels_V"):
            split.pop(key)
    clean = dataset_from_raw(raw)
    raw["test"]["regression_labels"] = (raw["test"]["regression_labels"] * 3).astype(np.float32)  # poisoned
    poisoned = dataset_from_raw(raw)
    assert plan_for(clean).scheme.name == plan_for(poisoned).scheme.name == "sims"
    assert infer_scheme(np.array([-2.0, 1.0]), np.array([0.5]), False).name == "mosi"


# ----------------------------------------------------------------------------- a scheme recorded in the file


def _categorical_file(tmp_path: Path, classes: list[str] | None = None) -> Path:
    from affectus.data.npz import write_npz

    raw = generate(SynthConfig(n_train=16, n_valid=8, n_test=8, seed=2, **TINY))
    for split in raw.values():  # class numbers 0..2, whole and non-negative
        split["regression_labels"] = (np.arange(len(split["id"])) % 3).astype(np.float32)
        for key in ("regression_labels_T", "regression_labels_A", "regression_labels_V"):
            split.pop(key, None)
    ds = dataset_from_raw(raw, source="emotions")
    ds.scheme = None if classes is None else {"name": "categorical", "classes": classes}
    write_npz(ds, tmp_path / "emotions.npz")
    return tmp_path / "emotions.npz"


def test_a_recorded_scheme_is_read_back_and_trained_on(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """The .npz says what its class numbers mean: plan_for takes its scheme (no guessing, no warning), a
    preset that reads them otherwise is one clear error; without the record the labels look like class
    indices under a sentiment scheme, and training warns once with the fix."""
    from affectus.data.presets import load_preset
    from affectus.training.job import prepare_training

    path = _categorical_file(tmp_path, ["angry", "happy", "sad"])
    ds = load_dataset(path)
    assert ds.scheme == {"name": "categorical", "classes": ["angry", "happy", "sad"]}
    plan = plan_for(ds)
    assert plan.scheme.describe() == "categorical: angry, happy, sad" and plan.origin == "recorded in the file"
    with pytest.raises(AffectusError, match=r"its labels are categorical: angry, happy, sad \(recorded in the file\), "
                                            r"but preset meld reads them as categorical: neutral, joy"):
        plan_for(ds, load_preset("meld"))
    with caplog.at_level("WARNING", logger="affectus"):
        prepare_training(str(path), model="late_fusion")
    assert not [r for r in caplog.records if "class indices" in r.getMessage()]

    (tmp_path / "bare").mkdir()
    bare = _categorical_file(tmp_path / "bare")  # the same labels, no record
    assert load_dataset(bare).scheme is None
    plan = plan_for(load_dataset(bare))
    assert plan.scheme.name == "mosi" and plan.origin.startswith("inferred from the labels")
    with caplog.at_level("WARNING", logger="affectus"):
        prepare_training(str(bare), model="late_fusion")
    lines = [r.getMessage() for r in caplog.records if "class indices" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "--labels annotation" in lines[0]


def test_a_malformed_recorded_scheme_is_refused(tmp_path: Path):
    path = _categorical_file(tmp_path, ["angry", "happy"])
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["__meta__"]))
    assert meta["version"] == 3  # a version-2 reader would read the class numbers as sentiment: it refuses 3
    for bad, message, version in [
            ({"name": "categorical", "classes": ["one"]}, "at least 2 distinct class names", 3),
            (["angry", "happy"], "'scheme' must be an object with a name", 3),
            (meta["scheme"], "version 2 cannot record a scheme", 2)]:
        arrays["__meta__"] = np.array(json.dumps({**meta, "scheme": bad, "version": version}))
        np.savez(tmp_path / "bad.npz", **arrays)
        with pytest.raises(AffectusError, match=message):
            load_dataset(tmp_path / "bad.npz")


def test_schemes_describe_themselves_plainly():
    assert get_scheme("mosi").describe().startswith("3-class sentiment, Acc2 Has0/Non0")
    assert get_scheme("sims").describe().startswith("3-class sentiment, Acc2 positive/non-positive")
    assert get_scheme({"name": "categorical", "classes": ["b", "a"]}).describe() == "categorical: b, a"
    assert schemes.looks_like_class_indices(np.array([0, 1, 2, 1.0]))
    assert not schemes.looks_like_class_indices(np.array([0, 1, -1]))  # a negative: sentiment
    assert not schemes.looks_like_class_indices(np.array([0.4, 1.0]))  # a fraction: averaged ratings
    assert not schemes.looks_like_class_indices(np.array([1.0, 1.0]))  # one value says nothing
    assert schemes.class_name_problem("very_happy") is None and schemes.class_name_problem("fröhlich") is None
    assert "holds ' '" in schemes.class_name_problem("very happy")
