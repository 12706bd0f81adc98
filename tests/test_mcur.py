"""MCUR: MCB-CL's positives by hand, SUGR's weights, training under missingness, the test-label firewall."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import affectus
from affectus.cli import main
from affectus.data.batches import iterate_batches
from affectus.data.missing import CONDITIONS, random_conditions, with_availability
from affectus.data.mmsa import dataset_from_raw, load_dataset, write_pickle
from affectus.data.synthetic import SynthConfig, generate
from affectus.models.mcur import MCUR, MCURConfig
from affectus.training.config import resolve_config
from affectus.training.recipes.mcur import UnimodalTask, combination_labels, mcb_cl, sugr

TINY = {"seq_lens": {"text": 4, "audio": 6, "vision": 5}, "dims": {"text": 12, "audio": 5, "vision": 7}}
FAST = ["--set", "train.epochs=2", "--set", "train.batch_size=16", "--threads", "1", "--quiet"]


def test_mcbcl_positives_share_class_and_combination_by_hand():
    classes = torch.tensor([0, 0, 0, 1])
    available = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    labels = combination_labels(classes, available)
    same = (labels[:, None] == labels[None, :]).int() - torch.eye(4, dtype=torch.int)
    # only samples 0 and 1 agree on both: 2 and 3 share one of the two only
    assert same.tolist() == [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    # the loss by hand: anchors 0 and 1 only, -log(exp(z01) / sum_{a != i} exp(z_ia)), mean over them
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    tau = 0.5
    sim = z @ z.T / tau
    expected = np.mean([-(sim[i, 1 - i] - torch.logsumexp(sim[i, [j for j in range(4) if j != i]], 0)).item()
                        for i in (0, 1)])
    assert mcb_cl(z, classes, available, tau).item() == pytest.approx(expected, rel=1e-6)
    # with every combination different, no anchor has a positive: 0
    assert mcb_cl(z, classes, torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=torch.bool),
                  tau).item() == 0.0


def test_sugr_weights_and_their_optimum():
    ce = torch.tensor([0.2, 1.0, 3.0])
    log_var = torch.tensor([0.0, math.log(2.0), -1.0])
    loss, weights = sugr(ce, log_var)
    assert weights.tolist() == pytest.approx([1.0, 0.5, math.e])
    assert loss.item() == pytest.approx(np.mean([0.2, 0.5 + 0.5 * math.log(2.0), 3 * math.e - 0.5]))
    # minimised over s alone at exp(-s) = 1 / (2 CE): the harder sample gets the smaller weight
    s = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([s], lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        sugr(ce, s)[0].backward()
        opt.step()
    assert torch.exp(-s).detach().tolist() == pytest.approx((1 / (2 * ce)).tolist(), rel=1e-3)


def test_mcur_ignores_absent_inputs_and_bounds_uncertainty():
    ds = dataset_from_raw(generate(SynthConfig(n_train=12, n_valid=4, n_test=4, seed=8, **TINY)))
    torch.manual_seed(0)
    model = MCUR(MCURConfig(dims=TINY["dims"], heads=2, uncertainty_bound=2.0)).eval()
    split = with_availability(ds["train"], ("text", "vision"))
    batch = next(iter(iterate_batches(split, 12)))
    noisy = next(iter(iterate_batches(split, 12)))
    noisy.audio = torch.randn_like(noisy.audio)  # garbage where audio is marked absent
    with torch.no_grad():
        a, b = model.represent(batch), model.represent(noisy)
    assert torch.equal(a.logits, b.logits)  # an absent modality's content never reaches the verdict
    assert torch.allclose(a.h[:, 1], torch.nn.functional.normalize(model.missing[1], dim=-1).expand(12, -1))
    assert ((a.log_var > 0.0) & (a.log_var < 2.0)).all()  # default floor 0: SUGR only attenuates
    # the verdict: the fused classifier plus the present modalities' heads (text and vision here)
    fused = model.classifier(torch.relu(a.z))
    torch.testing.assert_close(a.logits, fused + a.unimodal_logits[:, 0] + a.unimodal_logits[:, 2])
    sym = MCUR(MCURConfig(dims=TINY["dims"], heads=2, uncertainty_bound=2.0, uncertainty_floor=-2.0)).eval()
    sym.load_state_dict(model.state_dict())  # the first, symmetric reading: s = s_max tanh(raw / s_max)
    with torch.no_grad():
        raw = sym.uncertainty(sym.represent(batch).z).squeeze(-1)
        torch.testing.assert_close(sym.represent(batch).log_var, 2.0 * torch.tanh(raw / 2.0))
    for present in CONDITIONS:  # no NaN under any condition, forward and backward, training mode
        model.train()
        parts = model.represent(next(iter(iterate_batches(with_availability(ds["train"], present), 12))))
        (parts.logits.sum() + parts.log_var.sum()).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        absent = [k for k, m in enumerate(("text", "audio", "vision")) if m not in present]
        assert all(model.missing.grad[k].abs().sum() > 0 for k in absent)  # the missing vectors learn
        model.zero_grad()


def test_variants_and_recipe_settings():
    cfg = resolve_config("mcur")
    assert cfg.variant == "mcur" and cfg.recipe.sugr and cfg.recipe.pretrain
    assert (cfg.recipe.missing, cfg.recipe.select) == ("conditions", "conditions")
    assert cfg.model["unimodal_prior"] and cfg.model["uncertainty_floor"] == 0.0
    assert resolve_config("mcur", "wo_sugr").recipe.sugr is False
    assert resolve_config("mcur", "wo_mcbcl").recipe.contrast_weight == 0.0
    faithful = resolve_config("mcur", "faithful")
    assert (faithful.recipe.missing, faithful.recipe.missing_rate, faithful.recipe.select) == ("rate", 0.3, "mask")
    assert not faithful.recipe.pretrain and not faithful.model["unimodal_heads"]
    assert faithful.model["uncertainty_floor"] == -3.0
    from affectus.errors import AffectusError

    with pytest.raises(AffectusError, match="recipe.missing_rate"):
        resolve_config("mcur", overrides={"recipe.missing_rate": 1.0})
    with pytest.raises(AffectusError, match="recipe.missing"):
        resolve_config("mcur", overrides={"recipe.missing": "sometimes"})
    with pytest.raises(AffectusError, match="unimodal_prior needs"):
        MCURConfig(unimodal_heads=False).validate()


def test_training_masks_draw_the_7_conditions_uniformly():
    mask = random_conditions(7000, np.random.default_rng(0))
    codes = mask.astype(int) @ np.array([1, 2, 4])  # 1..7, one per condition
    counts = np.bincount(codes, minlength=8)
    assert counts[0] == 0 and (np.abs(counts[1:] - 1000) < 120).all()  # ~binomial sd 29


def test_pretraining_keeps_each_modality_at_its_own_best_epoch():
    torch.manual_seed(0)
    model = MCUR(MCURConfig(dims=TINY["dims"], heads=2))
    task = UnimodalTask(val_batches=None)
    snapshots = []
    epochs = [(1.0, 0.9, 0.8), (0.5, 0.95, 0.7), (0.6, 0.85, 0.9), (0.7, 0.9, 0.75)]  # text, audio, vision
    for epoch, ce in enumerate(epochs, start=1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # different weights every epoch
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        improved = task.end_epoch(epoch, model, {f"ce_{m}": c for m, c in zip(("text", "audio", "vision"), ce)})
        assert improved is (epoch < 4)  # epoch 4 beats no modality's best
    assert task.best_epoch == {"text": 2, "audio": 3, "vision": 2}
    task.handover(model)
    state = model.state_dict()
    for k, (m, epoch) in enumerate((("text", 2), ("audio", 3), ("vision", 2))):
        keys = [n for n in state if n.startswith((f"encoders.{m}.", f"unimodal.{k}."))]
        assert keys and all(torch.equal(state[n], snapshots[epoch - 1][n]) for n in keys)
    assert torch.equal(state["fusion.0.weight"], snapshots[-1]["fusion.0.weight"])  # the rest untouched


def test_test_labels_never_change_a_prediction(tmp_path):
    raw = generate(SynthConfig(n_train=40, n_valid=12, n_test=12, seed=9, **TINY))
    clean, poisoned = tmp_path / "clean.pkl", tmp_path / "poisoned.pkl"
    write_pickle(raw, clean)
    raw["test"]["regression_labels"] = -raw["test"]["regression_labels"]  # every test class flipped
    write_pickle(raw, poisoned)
    probs = []
    for path in (clean, poisoned):
        out = tmp_path / path.stem
        assert main(["train", "--data", str(path), "--model", "mcur", "--out", str(out), *FAST]) == 0
        probs.append(affectus.load(out).predict(load_dataset(clean)["test"], available="l,v").probabilities)
        info = json.loads((out / "run.json").read_text())
        assert info["stages"]["train"]["epochs"] == 2 and info["stages"]["pretrain"]["epochs"] == 2
    np.testing.assert_array_equal(probs[0], probs[1])
