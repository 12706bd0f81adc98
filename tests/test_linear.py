"""Logistic regression as a registered model (models/linear.py, training/recipes/linear.py): what it
fits, where it chooses C, how it pools, absent modalities, its views (the transcript probe) and variants."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import affectus
from affectus.data.batches import make_batch
from affectus.data.mmsa import write_pickle
from affectus.data.schemes import get_scheme
from affectus.data.types import MERDataset, Split
from affectus.errors import AffectusError
from affectus.models.linear import Linear, LinearConfig
from affectus.training.config import resolve_config
from affectus.training.trainer import DataPlan, train_run
from test_cmc_plus import _mosi_like


def _split(name: str, n: int, seed: int) -> Split:
    """Scores in {-1, -0.5, 0, 0.5, 1}; the valid steps carry the score plus noise, padding carries junk
    (100) that length-aware pooling must ignore."""
    rng = np.random.default_rng(seed)
    scores = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=n).astype(np.float32)

    def feats(steps: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
        lengths = rng.integers(1, steps + 1, size=n)
        x = scores[:, None, None] + 0.3 * rng.normal(size=(n, steps, dim))
        x[np.arange(steps)[None, :] >= lengths[:, None]] = 100.0
        return x.astype(np.float32), lengths.astype(np.int64)

    (t, tl), (a, al), (v, vl) = feats(4, 3), feats(5, 2), feats(3, 2)
    return Split(name=name, text=t, audio=a, vision=v, text_lengths=tl, audio_lengths=al, vision_lengths=vl,
                 labels=scores, ids=[f"{name}{i}" for i in range(n)])


@pytest.fixture(scope="module")
def data() -> MERDataset:
    return MERDataset(splits={"train": _split("train", 120, 1), "valid": _split("valid", 40, 2),
                              "test": _split("test", 40, 3)}, source="<memory>")


def _train(ds: MERDataset, out: Path, variant: str | None = None, **sets):
    cfg = resolve_config("linear", variant, None, None, {"recipe.Cs": [0.01, 1.0], **sets})
    metrics = train_run(ds, cfg, out, DataPlan("train", "valid", "test", get_scheme("mosi")))
    return metrics, json.loads((out / "run.json").read_text())


def test_learns_and_chooses_C_on_the_selection_split(data, tmp_path):
    metrics, info = _train(data, tmp_path / "run")
    fit = info["stages"]["linear"]
    assert fit["selected_on"] == "valid" and fit["C"] in (0.01, 1.0) and set(fit["selection"]) == {"0.01", "1.0"}
    # which split each fitted part saw
    assert info["fitted_on"] == {"weights": "train", "scaler": "train", "C": "valid"}
    assert "C" in info["selection_parts"]
    assert fit["views"] == ["text", "audio", "vision"] and fit["features"] == 3 + 2 + 2
    assert metrics["has0_acc2"] > 80 and metrics["acc3"] > 60
    # a run folder like any other: predict needs nothing but it, and imports no scikit-learn (test_predictor)
    pred = affectus.load(tmp_path / "run").predict(data["test"])
    assert pred.probabilities.shape == (40, 3)


def test_is_sklearns_pipeline_on_the_pooled_inputs(data, tmp_path):
    """Early fusion of pooled, standardised inputs: the run predicts what StandardScaler + LogisticRegression
    fitted on the length-aware means of train predict, with the C the run chose."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _, info = _train(data, tmp_path / "run")

    def pooled(split: Split) -> np.ndarray:
        parts = []
        for m in ("text", "audio", "vision"):
            x, lengths = split.features(m).astype(np.float64), split.lengths(m)
            mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
            parts.append((x * mask[..., None]).sum(1) / lengths[:, None])
        return np.concatenate(parts, 1)

    ref = make_pipeline(StandardScaler(), LogisticRegression(C=info["stages"]["linear"]["C"], max_iter=2000))
    ref.fit(pooled(data["train"]), get_scheme("mosi").to_classes(data["train"].labels))
    got = affectus.load(tmp_path / "run").predict(data["test"]).probabilities
    np.testing.assert_allclose(got, ref.predict_proba(pooled(data["test"])), atol=1e-5)


def test_test_labels_never_reach_the_fit(data, tmp_path):
    _, a = _train(data, tmp_path / "a")
    shuffled = data["test"].subset(np.arange(40))
    shuffled.labels = shuffled.labels[::-1].copy()
    other = MERDataset(splits={"train": data["train"], "valid": data["valid"], "test": shuffled}, source="<memory>")
    _, b = _train(other, tmp_path / "b")
    assert a["stages"] == b["stages"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_absent_modality_reads_as_the_training_mean():
    """An absent modality's standardised inputs are 0 (the training mean), whatever its zero fill: the
    verdict of a sample without audio does not move when its audio values change."""
    torch.manual_seed(0)
    model = Linear(LinearConfig(dims={"text": 3, "audio": 2, "vision": 2})).eval()
    g = torch.Generator().manual_seed(1)
    model.set_fit(torch.randn(7, generator=g), torch.rand(7, generator=g) + 0.5, torch.randn(3, 7, generator=g),
                  torch.randn(3, generator=g))
    batch = make_batch(_split("x", 4, 5), np.arange(4))
    no_audio = batch.with_available(torch.tensor([[True, False, True]] * 4))
    out = model(no_audio).logits
    noisy = no_audio.with_available(torch.ones(4, 3, dtype=torch.bool))
    noisy.audio += 50.0
    noisy.available = no_audio.available
    torch.testing.assert_close(model(noisy).logits, out)
    # and equals the logits with the audio columns set to the training mean
    filled = batch.audio.clone()
    filled[:] = model.mean[3:5]
    same = make_batch(_split("x", 4, 5), np.arange(4))
    same.audio, same.audio_lengths = filled, torch.ones(4, dtype=torch.long)
    torch.testing.assert_close(model(same).logits, out)


def test_acc2_variant_fits_the_acc2_truth_and_never_predicts_neutral(data, tmp_path):
    _, info = _train(data, tmp_path / "run", "linear_acc2")
    assert info["stages"]["linear"]["target"] == "acc2"
    pred = affectus.load(tmp_path / "run").predict(data["test"])
    assert (pred.classes != 1).all() and pred.probabilities[:, 1].max() < 1e-6
    with pytest.raises(AffectusError, match="Acc2 rule"):
        cfg = resolve_config("linear", "linear_acc2")
        train_run(data, cfg, tmp_path / "cat", DataPlan("train", "valid", "test", get_scheme(
            {"name": "categorical", "classes": ["a", "b", "c", "d", "e"]})))


def test_views_name_the_blocks_and_a_missing_view_is_refused():
    cfg = LinearConfig(dims={"text": 6, "audio": 2, "vision": 2}, text_views=[["transcript", 4], ["file", 2]])
    assert Linear(cfg).names == ["text:transcript", "text:file", "audio", "vision"]
    cfg.views = ["text:transcript"]
    assert Linear(cfg).weight.shape == (3, 4)
    with pytest.raises(AffectusError, match="sentence\\+file"):
        Linear(LinearConfig(dims={"text": 6, "audio": 2, "vision": 2}, views=["text:transcript"]))


def test_linear_text_probe_reads_the_transcript_view_alone(tmp_path, cli):
    """--variant linear_text on text inputs sentence+file: weights over the transcript vector's columns only;
    changing the file's text feature, the audio or the vision leaves every prediction as it was."""
    from affectus.data.mmsa import load_dataset
    from test_text_encoder import _write_tiny_bert

    bert = _write_tiny_bert(tmp_path / "bert", positions=64)
    write_pickle(_mosi_like(1, {"train": 40, "valid": 16}), tmp_path / "d.pkl")
    code, _, err = cli("train", "--data", tmp_path / "d.pkl", "--preset", "mosi-utterance", "--model", "linear",
                       "--variant", "linear_text", "--set", f"train.text_encoder={bert}", "--out", tmp_path / "run",
                       "--quiet")
    assert code == 0, err
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["stages"]["linear"]["views"] == ["text:transcript"] and info["stages"]["linear"]["features"] == 16
    assert info["text_inputs"]["text"] == "sentence+file"
    predictor = affectus.load(tmp_path / "run")
    valid = load_dataset(tmp_path / "d.pkl")["valid"]
    before = predictor.predict(valid).probabilities
    valid.text[:] += 3.0
    valid.audio[:] *= -1
    valid.vision[:] = 0
    np.testing.assert_array_equal(predictor.predict(valid).probabilities, before)
    # on the file's features alone there is no transcript view: one line, exit 2
    code, _, err = cli("train", "--data", tmp_path / "d.pkl", "--preset", "mosi-utterance", "--model", "linear",
                       "--variant", "linear_text", "--set", "train.text_inputs=file", "--out", tmp_path / "file",
                       "--quiet")
    assert code == 2 and "text:transcript" in err and len(err.strip().splitlines()) == 1


def test_models_lists_linear_and_its_variants(cli):
    code, out, _ = cli("models")
    assert code == 0
    assert "\nlinear " in out and "--variant linear_text" in out and "--variant linear_acc2" in out


def test_served_like_any_model(tmp_path, cli):
    """`affectus serve` answers /predict for a linear run (its weights need no scikit-learn)."""
    from fastapi.testclient import TestClient

    from affectus.data.mmsa import dataset_from_raw
    from affectus.data.npz import write_npz
    from affectus.data.synthetic import SynthConfig, generate
    from affectus.inference.service import create_app

    raw = generate(SynthConfig(n_train=40, n_valid=12, n_test=12, seed=2, seq_lens={"text": 4, "audio": 6, "vision": 5},
                               dims={"text": 12, "audio": 5, "vision": 7}))
    write_pickle(raw, tmp_path / "d.pkl")
    write_npz(dataset_from_raw(raw), tmp_path / "d.npz")
    code, _, err = cli("train", "--data", tmp_path / "d.pkl", "--model", "linear", "--out", tmp_path / "run", "--quiet")
    assert code == 0, err
    # the service accepts loopback Host headers only (TestClient's default is "testserver")
    with TestClient(create_app(tmp_path / "run"), base_url="http://localhost") as client:
        assert client.get("/health").json()["model"] == "linear"
        r = client.post("/predict", files={"file": ("d.npz", (tmp_path / "d.npz").read_bytes())})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 64 and preds[0]["verdict"] in preds[0]["probabilities"]
