"""The field's baselines (EF-LSTM, TFN, MulT, Self-MM) and every registered model on tiny data.

Layers: every model in the registry runs forward/backward and trains every parameter it should;
the baselines ignore padding; EF-LSTM's resampling and Self-MM's ULGM checked by hand; one CLI run
per baseline; an interrupted Self-MM run resumes to the same weights.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from affectus.cli import main
from affectus.data.mmsa import write_pickle
from affectus.data.synthetic import SynthConfig, generate
from affectus.models.ef_lstm import align_to_steps
from affectus.models.registry import (
    create_model,
    get_model_entry,
    list_models,
    make_config,
    non_bert_parameter_count,
)
from affectus.training.recipes.self_mm import SelfMMTask
from conftest import TINY_BATCH_DIMS, model_needs, tiny_batch

DIMS = TINY_BATCH_DIMS
BASELINES = ("ef_lstm", "tfn", "mult", "self_mm")

# Small widths so the registry-wide test stays fast; a model not listed is built at its defaults.
TINY = {
    "cmc": {"d": 8, "layers": 1, "heads": 2, "ff": 16},
    "late_fusion": {"hidden": 8},
    "ef_lstm": {"hidden": 8, "layers": 2},
    "tfn": {"text_hidden": 8, "audio_hidden": 4, "vision_hidden": 4, "text_out": 4, "post_fusion_dim": 8},
    "mult": {"d": 8, "heads": 2, "layers": 1, "mem_layers": 1},
    "self_mm": {"text_encoder": "lstm", "text_hidden": 8},
    "mcur": {"d": 8, "heads": 2, "ff": 16, "fused": 8},
    "av_mc": {"text_hidden": 8, "post_text_dim": 4, "post_audio_dim": 4, "post_vision_dim": 4, "post_fusion_dim": 4},
    "mc_teacher": {"text_hidden": 8, "post_text_dim": 4, "post_audio_dim": 4, "post_vision_dim": 4,
                   "post_fusion_dim": 4, "bimodal_dim": 4, "filter_hidden": 4},
    "emt_dlfr": {"d": 8, "heads": 2, "layers": 2, "audio_out": 4, "vision_out": 4, "post_fusion_dim": 8},
    "sfttr": {"d": 16, "encoder_heads": 2, "encoder_layers": 1, "encoder_ff": 16, "heads": 2, "layers": 1, "cross_ff": 8},
    "cubemlp": {"d_common": 8, "rnn_layers": 1, "time_len": 6, "d_hiddens": [[4, 3, 8], [2, 3, 4]],
                "d_outs": [[4, 3, 8], [2, 3, 4]]},
    "mctn": {"steps": 3, "hidden": 4, "reg_hidden": 4},
    "transm": {"steps": 3, "d": 8, "heads": 2, "layers": 1, "ff": 16},
    "dmd": {"d": 8, "heads": 2, "layers": 1, "mem_layers": 1},
    "sdrs": {"d": 8, "heads": 2, "layers": 1},
    "mmin": {"embd": 8, "text_channels": 4, "ae_layers": [16, 8, 4], "n_blocks": 2, "cls_layers": [8]},
    "if_mmin": {"embd": 8, "text_channels": 4, "ae_layers": [16, 8, 4], "n_blocks": 2, "cls_layers": [8]},
    "triaged_msa": {"d": 8, "heads": 2, "ff": 16},
    "mse_adapter": {"audio_hidden": 4, "vision_hidden": 4, "mixer_dim": 8, "msf_hidden": 8},
    # the authors' dropout of 0.9 can drop a tiny layer's every unit in one batch: a milder one here
    "bc_lstm": {"hidden": 8, "unimodal_dense": 4, "fusion_hidden": 8, "fusion_dense": 8, "unimodal_dropout": 0.3,
                "fusion_dropout": 0.3},
    "mmmu_ba": {"hidden": 8, "dense": 4},
}
# Extra forward passes whose outputs a training task uses besides `forward` (cmc's stage 1, Self-MM's
# unimodal heads) and the parameters a batch with every modality leaves idle (MCUR's missing-modality
# vectors) are declared on each model's registry entry (`Capabilities`), so the backward test reaches
# what training reaches without a list per model here.



def _build(name: str, **extra):
    return create_model(name, make_config(name, {"dims": dict(DIMS), **TINY.get(name, {}), **model_needs(name), **extra}))


def _tensors(obj) -> list[torch.Tensor]:
    """Every tensor in a model output (dataclass, dict or tensor)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if dataclasses.is_dataclass(obj):
        return [t for f in dataclasses.fields(obj) for t in _tensors(getattr(obj, f.name))]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    return []


@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = _build(name).train()
    can = get_model_entry(name).can(TINY.get(name, {}))
    batch = tiny_batch(sequences=can.utterance_context is not None)  # a model reading its video gets one
    out = model(batch)
    assert out.logits.shape == (4, 3)
    if out.modality_logits is not None:
        assert out.modality_logits.shape == (4, 3, 3)
    if out.regression is not None:
        assert out.regression.shape == (4,)
    outputs = _tensors(out)
    for method in can.extra_forward:
        outputs += _tensors(getattr(model, method)(batch))
    # a fixed random projection of every float output: reaches whatever influences any output
    g = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=g)).sum() for t in outputs if t.is_floating_point())
    loss.backward()
    unused = set(can.idle_when_complete)
    for pname, p in model.named_parameters():
        if not p.requires_grad or pname in unused:
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: {pname} gets no gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} gets a zero gradient"
    assert non_bert_parameter_count(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, extra", [(n, {}) for n in BASELINES] + [("self_mm", {"text_encoder": "mean"})])
def test_baselines_ignore_padding(name: str, extra: dict) -> None:
    torch.manual_seed(0)
    model = _build(name, **extra).eval()
    batch = tiny_batch()
    before = model(batch)
    batch.text[1, 3:] = 1e3  # beyond text_lengths[1] = 3
    batch.audio[1, 2:] = -1e3  # beyond audio_lengths[1] = 2
    batch.vision[3, 1:] = 7.0  # beyond vision_lengths[3] = 1
    after = model(batch)
    torch.testing.assert_close(after.logits, before.logits)
    if before.regression is not None:
        torch.testing.assert_close(after.regression, before.regression)


def test_align_to_steps_by_hand() -> None:
    x = torch.arange(6, dtype=torch.float32).reshape(1, 6, 1)  # source values 0..5
    # 6 valid source steps onto 3 target steps: means of [0, 1], [2, 3], [4, 5]; one padded target step
    out = align_to_steps(x, torch.tensor([6]), torch.tensor([3]), steps=4)
    assert out.squeeze().tolist() == [0.5, 2.5, 4.5, 0.0]
    # 2 valid source steps onto 3 target steps: segments [0, 1), [0, 2), [1, 2)
    out = align_to_steps(x, torch.tensor([2]), torch.tensor([3]), steps=3)
    assert out.squeeze().tolist() == [0.0, 0.5, 1.0]
    # equal lengths: the identity
    torch.testing.assert_close(align_to_steps(x, torch.tensor([6]), torch.tensor([6]), steps=6), x)


def test_ulgm_labels_move_from_epoch_two_within_bounds() -> None:
    torch.manual_seed(0)
    model = _build("self_mm").train()
    batch = tiny_batch()
    task = SelfMMTask(batch.scores.clone(), model.feature_dims(), lambda: [batch], bound=2.0, ce_weight=1.0)
    task.start_epoch(1)
    loss, parts = task.loss(model, batch)
    assert torch.isfinite(loss) and set(parts) >= {"loss", "l1_m", "ce", "l1_text", "l1_audio", "l1_vision"}
    assert torch.equal(task.labels, batch.scores[None].repeat(4, 1))  # epoch 1 only fills the bank
    assert task.features["audio"].abs().sum() > 0
    task.start_epoch(2)
    task.loss(model, batch)
    assert torch.equal(task.labels[0], batch.scores)  # the multimodal label never moves
    assert not torch.equal(task.labels[1:], batch.scores[None].repeat(3, 1))
    assert task.labels.abs().max() <= 2.0
    # resume state round-trips
    other = SelfMMTask(batch.scores.clone(), model.feature_dims(), lambda: [batch], bound=2.0, ce_weight=1.0)
    other.load_state_dict(task.state_dict())
    assert torch.equal(other.labels, task.labels) and other.epoch == 2
    assert torch.equal(other.centres["fusion"], task.centres["fusion"])


# ---- end to end through the CLI ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory) -> Path:
    cfg = SynthConfig(n_train=40, n_valid=12, n_test=12, seq_lens={"text": 4, "audio": 6, "vision": 5},
                      dims={"text": 12, "audio": 5, "vision": 7}, seed=3)
    path = tmp_path_factory.mktemp("sim") / "tiny.pkl"
    write_pickle(generate(cfg), path)
    return path


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_trains_end_to_end(sim_file: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    args = ["train", "--data", str(sim_file), "--model", name, "--out", str(out), "--set", "train.epochs=2",
            "--set", "train.batch_size=16", "--threads", "1", "--quiet"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["acc2"] <= 100.0
    if name == "self_mm":
        assert metrics["mae"] is not None  # the regression output is scored too


def test_self_mm_interrupted_run_resumes_to_the_same_weights(sim_file: Path, tmp_path: Path, monkeypatch) -> None:
    args = ["--data", str(sim_file), "--model", "self_mm", "--set", "train.epochs=3", "--set", "train.patience=3",
            "--set", "train.batch_size=16", "--threads", "1", "--quiet"]
    assert main(["train", "--out", str(tmp_path / "full"), *args]) == 0

    original = SelfMMTask.start_epoch

    def interrupt(self, epoch):
        if epoch == 3:  # after two epochs, so the resumed epoch moves labels from a restored bank
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(SelfMMTask, "start_epoch", interrupt)
    out = tmp_path / "cut"
    assert main(["train", "--out", str(out), *args]) == 130
    assert (out / "state.pt").exists() and not (out / "run.json").exists()
    monkeypatch.setattr(SelfMMTask, "start_epoch", original)
    assert main(["train", "--out", str(out), "--resume", *args]) == 0
    wa = load_file(str(tmp_path / "full" / "model.safetensors"))
    wb = load_file(str(out / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])
    # every epoch's losses too (the kept weights may come from an epoch before the interruption)
    runs = [json.loads((d / "run.json").read_text())["stages"]["train"] for d in (tmp_path / "full", out)]
    histories = [[{k: v for k, v in h.items() if k != "seconds"} for h in r["history"]] for r in runs]
    assert len(histories[0]) == 3 and histories[0] == histories[1]
