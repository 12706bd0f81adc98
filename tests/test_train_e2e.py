"""End-to-end runs of `affectus train` / `evaluate` / the Python API on tiny simulated data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from affectus.cli import main
from affectus.data.mmsa import write_pickle
from affectus.data.synthetic import generate
from affectus.training.config import load_variants
from conftest import tiny_sim_config

FAST = ["--set", "train.epochs=2", "--set", "train.patience=1", "--set", "model.layers=1", "--set", "model.heads=2",
        "--set", "train.batch_size=32", "--threads", "1", "--quiet"]


# CMC's own variants; one that selects another model (cmc_plus) is that model's to test (test_cmc_plus.py)
@pytest.mark.slow
@pytest.mark.parametrize("variant", [v for v, spec in load_variants().items() if not spec.get("model")])
def test_every_variant_trains_end_to_end(sim_file: Path, tmp_path: Path, variant: str, capsys) -> None:
    out = tmp_path / variant
    assert main(["train", "--data", str(sim_file), "--variant", variant, "--out", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for subset in ("d_test", "d_msc", "d_msi"):
        assert 0.0 <= metrics[subset]["acc2"] <= 100.0
    info = json.loads((out / "run.json").read_text())
    assert info["variant"] == variant and info["format"] == "affectus-run/1"
    assert not (out / "state.pt").exists()
    weights = load_file(str(out / "model.safetensors"))
    assert any(k.startswith("router.") for k in weights)
    assert (out / "pseudo_labels.csv").exists()
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(sim_file), "--split", "test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == "test"


def test_evaluate_reproduces_training_metrics(sim_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "--data", str(sim_file), "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(sim_file), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "metrics.json").read_text())
    assert got["d_test"]["acc2"] == pytest.approx(saved["d_test"]["acc2"])
    assert got["d_msi"]["f1"] == pytest.approx(saved["d_msi"]["f1"])


def test_test_labels_never_reach_training(tmp_path: Path) -> None:
    """Poison the test labels: the trained weights must not change by a single bit."""
    raw = generate(tiny_sim_config())
    clean, poisoned = tmp_path / "clean.pkl", tmp_path / "poisoned.pkl"
    write_pickle(raw, clean)
    rng = np.random.default_rng(0)
    raw["test"]["regression_labels"] = rng.uniform(-1, 1, len(raw["test"]["regression_labels"])).astype(np.float32)
    for key in ("regression_labels_T", "regression_labels_A", "regression_labels_V"):
        raw["test"][key] = -raw["test"][key]
    write_pickle(raw, poisoned)
    for name, path in (("a", clean), ("b", poisoned)):
        assert main(["train", "--data", str(path), "--out", str(tmp_path / name), *FAST]) == 0
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert ma != mb  # the scores did see the poisoned labels: evaluation reads them, training does not


def test_test_labels_never_choose_the_label_scheme(tmp_path: Path) -> None:
    """Without a preset the label scheme is inferred, and it steers training (SupCon's binarisation): test
    labels stretched beyond [-1, 1] must not turn a CH-SIMS-like file into a MOSI-like one."""
    raw = generate(tiny_sim_config())
    for split in raw.values():
        for key in ("regression_labels_T", "regression_labels_A", "regression_labels_V"):
            split.pop(key)
    clean, poisoned = tmp_path / "clean.pkl", tmp_path / "poisoned.pkl"
    write_pickle(raw, clean)
    raw["test"]["regression_labels"] = (raw["test"]["regression_labels"] * 3).astype(np.float32)
    write_pickle(raw, poisoned)
    for name, path in (("a", clean), ("b", poisoned)):
        assert main(["train", "--data", str(path), "--out", str(tmp_path / name), *FAST]) == 0
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])
    assert json.loads((tmp_path / "b" / "run.json").read_text())["scheme"] == {"name": "sims"}


def test_interrupted_run_resumes_to_the_same_weights(sim_file: Path, tmp_path: Path, monkeypatch) -> None:
    args = ["--set", "train.epochs=3", "--set", "train.patience=3", "--set", "model.layers=1", "--set",
            "model.heads=2", "--set", "train.batch_size=32", "--threads", "1", "--quiet"]
    assert main(["train", "--data", str(sim_file), "--out", str(tmp_path / "full"), *args]) == 0

    from affectus.training.recipes.cmc import tasks

    original = tasks.Stage2Task.start_epoch
    calls = {"n": 0}

    def interrupt(self, epoch):
        calls["n"] += 1
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(tasks.Stage2Task, "start_epoch", interrupt)
    out = tmp_path / "cut"
    assert main(["train", "--data", str(sim_file), "--out", str(out), *args]) == 130
    assert (out / "state.pt").exists() and not (out / "run.json").exists()
    monkeypatch.setattr(tasks.Stage2Task, "start_epoch", original)
    # re-running without --resume refuses and loses nothing
    assert main(["train", "--data", str(sim_file), "--out", str(out), *args]) == 2
    assert (out / "state.pt").exists()
    assert main(["train", "--data", str(sim_file), "--out", str(out), "--resume", *args]) == 0
    wa = load_file(str(tmp_path / "full" / "model.safetensors"))
    wb = load_file(str(out / "model.safetensors"))
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])


def test_python_api_train_load_predict(sim_file: Path, tmp_path: Path) -> None:
    import affectus
    from affectus.data.mmsa import load_dataset

    overrides = {"train.epochs": 2, "train.patience": 1, "model.layers": 1, "model.heads": 2, "train.threads": 1}
    predictor = affectus.train(sim_file, tmp_path / "api", overrides=overrides)
    test = load_dataset(sim_file)["test"]
    pred = predictor.predict(test)
    n = len(test)
    assert pred.classes.shape == (n,) and pred.probabilities.shape == (n, 3)
    np.testing.assert_allclose(pred.probabilities.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(pred.router_weights.sum(1), 1.0, rtol=1e-5)
    assert pred.modality_classes.shape == (n, 3)
    again = affectus.load(tmp_path / "api").predict({"text": test.text, "audio": test.audio, "vision": test.vision,
                                                     "audio_lengths": test.audio_lengths,
                                                     "vision_lengths": test.vision_lengths})
    np.testing.assert_allclose(again.probabilities, pred.probabilities, atol=1e-6)
    explained = pred.explain(0)
    assert explained["verdict"] in ("negative", "neutral", "positive")
    assert set(explained["modalities"]) == {"text", "audio", "vision"}


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--variant", "nope"], "unknown variant 'nope'"),
        (["--set", "model.nonsense=1"], "model.nonsense"),
        (["--set", "train.epochs=abc"], "train.epochs"),
        (["--set", "recipe.selection=sometimes"], "recipe.selection"),
        (["--preset", "mosi"], "preset mosi expects"),
    ],
)
def test_bad_training_requests_fail_in_one_line(sim_file: Path, tmp_path: Path, capsys, extra, needle) -> None:
    rc = main(["train", "--data", str(sim_file), "--out", str(tmp_path / "x"), *extra, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]


def test_cmc_gt_needs_unimodal_labels(tmp_path: Path, capsys) -> None:
    path = tmp_path / "nouni.pkl"
    write_pickle(generate(tiny_sim_config(with_unimodal_labels=False)), path)
    rc = main(["train", "--data", str(path), "--variant", "cmc_gt", "--out", str(tmp_path / "gt"), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "unimodal labels" in err[0]


def test_bert_text_path_trains_and_reloads_without_the_bert_directory(tmp_path: Path) -> None:
    """Text through a (tiny, randomly initialised) BERT, fine-tuned; the run reloads on its own."""
    transformers = pytest.importorskip("transformers")
    import shutil

    bert_dir = tmp_path / "tiny-bert"
    config = transformers.BertConfig(vocab_size=128, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16)
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(bert_dir)
    data = tmp_path / "bert.pkl"
    write_pickle(generate(tiny_sim_config(with_text_bert=True)), data)
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--out", str(out), "--set", "model.text_input=bert",
               "--set", f"model.bert_path={bert_dir}", *FAST])
    assert rc == 0
    assert (out / "bert_config.json").exists()
    weights = load_file(str(out / "model.safetensors"))
    assert any(k.startswith("branches.text.bert.") for k in weights)  # BERT lives in the text branch
    shutil.rmtree(bert_dir)
    import affectus
    from affectus.data.mmsa import load_dataset

    pred = affectus.load(out).predict(load_dataset(data)["test"])
    assert pred.probabilities.shape[1] == 3


def test_consistent_retention_keeps_every_inconsistent_sample() -> None:
    from affectus.data.mmsa import dataset_from_raw
    from affectus.data.schemes import get_scheme
    from affectus.errors import AffectusError
    from affectus.training.trainer import retain_consistent

    sims = get_scheme("sims")
    train = dataset_from_raw(generate(tiny_sim_config(n_train=200)))["train"]
    msc, msi = sims.consistency_masks(train.labels, train.unimodal_labels)
    kept = retain_consistent(train, 0.25, seed=1, scheme=sims)
    kmsc, kmsi = sims.consistency_masks(kept.labels, kept.unimodal_labels)
    assert int(kmsi.sum()) == int(msi.sum())
    assert int(kmsc.sum()) == round(0.25 * int(msc.sum()))
    assert set(kept.ids) <= set(train.ids)
    assert retain_consistent(train, 0.25, seed=1, scheme=sims).ids == kept.ids  # deterministic by seed
    assert len(retain_consistent(train, 0.0, seed=1, scheme=sims)) == int(msi.sum())
    no_uni = dataset_from_raw(generate(tiny_sim_config(with_unimodal_labels=False)))["train"]
    with pytest.raises(AffectusError, match="unimodal labels"):
        retain_consistent(no_uni, 0.5, seed=1, scheme=sims)
