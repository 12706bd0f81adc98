"""AV-MC (models/av_mc.py, training/recipes/av_mc.py): the AV-Mixup module mixes in training and only
there, the mixed heads learn the mixed labels, the unimodal heads learn the data's unimodal labels, a
pinned fixed-seed run, and settings it cannot use refused before training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import affectus
from affectus.cli import main
from affectus.data.mmsa import load_dataset
from affectus.data.schemes import get_scheme
from affectus.models.av_mc import AVMCNet
from affectus.models.registry import create_model, make_config
from affectus.training.recipes.av_mc import AVMCRecipeConfig, AVMCTask, unimodal_targets
from conftest import TINY_BATCH_DIMS, tiny_batch

SIMS = get_scheme("sims")

FAST = ["--set", "train.epochs=2", "--set", "train.patience=1", "--set", "train.batch_size=32", "--threads", "1",
        "--quiet"]


def _model(**extra):
    return create_model("av_mc", make_config("av_mc", {"dims": dict(TINY_BATCH_DIMS), **extra}))


@pytest.mark.parametrize("modality", ["audio", "vision"])
def test_mixup_mixes_one_modality_in_training_and_its_heads_learn_the_mixed_labels(modality):
    torch.manual_seed(0)
    model = _model().train()
    batch = tiny_batch()
    out = model.mixup_forward(batch, modality)
    mix = out.mix
    assert mix is not None and out.mixed == modality
    assert 0.0 < mix.lam < 1.0
    assert sorted(mix.perm.tolist()) == list(range(len(batch))) and not torch.equal(mix.perm, torch.arange(4))
    pooled = AVMCNet.pool(batch)
    # the mixed modality's pooled inputs are lam * x + (1 - lam) * x[perm]; text and the other stay
    torch.testing.assert_close(out.inputs[modality], mix.lam * pooled[modality] + (1 - mix.lam) * pooled[modality][mix.perm])
    for m in ("text", "audio", "vision"):
        if m != modality:
            torch.testing.assert_close(out.inputs[m], pooled[m])
    # the losses: the mixed head and the fusion head learn the same mix of labels, the others their own
    uni = torch.tensor([[0, 2, 1], [1, 1, 1], [2, 0, 2], [2, 2, 0]])
    rc = AVMCRecipeConfig(score_weight=0.0)
    task = AVMCTask(rc, SIMS, list, uni, uni)
    got, _ = task.weighted_loss(out, batch, uni)
    y, lam, perm = batch.classes, mix.lam, mix.perm

    def mixed_ce(logits, target):
        return lam * F.cross_entropy(logits, target) + (1 - lam) * F.cross_entropy(logits, target[perm])

    want = rc.weight_m * mixed_ce(out.logits, y)
    for k, (m, w) in enumerate(zip(("text", "audio", "vision"), (rc.weight_t, rc.weight_a, rc.weight_v))):
        logits = out.modality_logits[:, k]
        want = want + w * (mixed_ce(logits, uni[:, k]) if m == modality else F.cross_entropy(logits, uni[:, k]))
    torch.testing.assert_close(got, want)


def test_mixup_is_off_at_evaluation_and_with_alpha_zero():
    batch = tiny_batch()
    model = _model().eval()
    out = model.mixup_forward(batch, "audio")
    assert out.mix is None and out.mixed is None
    torch.testing.assert_close(out.logits, model(batch).logits)
    off = _model(mixup_alpha=0.0).train()
    assert off.mixup_forward(batch, "vision").mix is None


def test_training_step_runs_the_plain_and_both_mixed_passes():
    torch.manual_seed(1)
    model = _model().train()
    batch = tiny_batch()
    uni = batch.classes[:, None].repeat(1, 3)
    task = AVMCTask(AVMCRecipeConfig(), SIMS, list, uni, uni)
    total, parts = task.loss(model, batch)
    assert {"plain", "mix_audio", "mix_vision"} <= set(parts)
    torch.testing.assert_close(total.detach(), parts["plain"] + parts["mix_audio"] + parts["mix_vision"])
    _, alone = AVMCTask(AVMCRecipeConfig(), SIMS, list, uni, uni).loss(_model(mixup_alpha=0.0).train(), batch)
    assert "mix_audio" not in alone


def test_unimodal_heads_learn_the_datas_unimodal_labels(sim_file):
    train = load_dataset(sim_file)["train"]
    own = unimodal_targets(train, SIMS, "data")
    multi = unimodal_targets(train, SIMS, "multimodal")
    want = np.stack([SIMS.to_classes(train.unimodal_labels[m]) for m in ("text", "audio", "vision")], 1)
    np.testing.assert_array_equal(own.numpy(), want)
    assert (multi == torch.from_numpy(SIMS.to_classes(train.labels))[:, None]).all()
    assert not torch.equal(own, multi)  # the simulation's unimodal labels differ from the multimodal one


# Printed by the test's own code (affectus.load(out).predict(...).probabilities[:4]) at this branch's
# commit that added it: `train --data <sim_file> --model av_mc` with FAST.
RECORDED = [[0.36666, 0.21866, 0.41468], [0.36565, 0.21816, 0.41619], [0.3624, 0.21952, 0.41808],
            [0.36429, 0.22104, 0.41467]]


def test_fixed_seed_run_matches_recorded_values(sim_file, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(sim_file), "--model", "av_mc", "--out", str(out), *FAST]) == 0
    got = affectus.load(out).predict(load_dataset(sim_file)["test"]).probabilities[:4]
    np.testing.assert_allclose(got, np.array(RECORDED), atol=2e-5)


@pytest.mark.parametrize("setting", ["model.mixup_alpha=-1", "recipe.unimodal_targets=both", "recipe.weight_a=-0.5"])
def test_a_setting_it_cannot_use_is_refused_before_training(sim_file, tmp_path, capsys, setting):
    out = tmp_path / "run"
    code = main(["train", "--data", str(sim_file), "--model", "av_mc", "--out", str(out), "--set", setting, *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and setting.split("=")[0] in err[0]
    assert not out.exists()
