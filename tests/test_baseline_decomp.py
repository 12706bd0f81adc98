"""The decomposition baselines of issue 18: DMD (Li et al., CVPR 2023) and SDRS (Zhao et al., TAFFC 2025).

Each: padding is ignored (both declare `sequence_masks`), a fixed-seed run is pinned, the property its
design rests on is checked (DMD: the decoupled homogeneous and heterogeneous parts separate and the
reconstruction from both approaches the input; SDRS: the sentiment-specific part predicts the label
while the sentiment-irrelevant part is pushed away from it), and a setting it cannot use ends in one
`error:` line and exit 2 before anything trains.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import affectus
from affectus.cli import main
from affectus.data.mmsa import load_dataset
from affectus.data.types import MODALITIES
from affectus.models.registry import create_model, make_config
from affectus.training.recipes.dmd import (
    EDGES,
    DMDRecipeConfig,
    DMDTask,
    build_units,
    edge_prior,
    margin_loss,
    masked_mse,
)
from affectus.training.recipes.sdrs import SDRSRecipeConfig, SDRSTask, build_adversary, reverse_gradient
from conftest import TINY_BATCH_DIMS, tiny_batch

SMALL = {"dmd": {"d": 8, "heads": 2, "layers": 1, "mem_layers": 1}, "sdrs": {"d": 8, "heads": 2, "layers": 1}}


def _build(name: str, **extra):
    return create_model(name, make_config(name, {"dims": dict(TINY_BATCH_DIMS), **SMALL[name], **extra}))


def _learnable_batch(b: int = 24, seed: int = 0):
    """A batch whose label is readable from every modality (the sign of a feature's mean), with lengths."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.arange(b) % 3
    sign = (classes.float() - 1.0)[:, None, None]  # -1, 0, +1
    batch = tiny_batch(4)
    text = torch.randn(b, 5, TINY_BATCH_DIMS["text"], generator=g) * 0.3 + sign
    audio = torch.randn(b, 7, TINY_BATCH_DIMS["audio"], generator=g) * 0.3 + sign
    vision = torch.randn(b, 3, TINY_BATCH_DIMS["vision"], generator=g) * 0.3 + sign
    lengths = lambda hi: torch.randint(1, hi + 1, (b,), generator=g)
    return type(batch)(text=text, audio=audio, vision=vision, text_lengths=lengths(5), audio_lengths=lengths(7),
                       vision_lengths=lengths(3), index=torch.arange(b), scores=(classes.float() - 1.0) * 2,
                       classes=classes)


# ------------------------------------------------------------------------------------ padding


@pytest.mark.parametrize("name", ["dmd", "sdrs"])
def test_padding_content_never_matters(name: str) -> None:
    """Both declare `sequence_masks` (length bucketing may cut their padding): values beyond a sample's
    length must not change its prediction."""
    torch.manual_seed(0)
    model = _build(name).eval()
    batch = tiny_batch()
    before = model(batch).logits
    batch.text[1, 3:] = 1e3  # beyond text_lengths[1] = 3
    batch.audio[1, 2:] = -1e3  # beyond audio_lengths[1] = 2
    batch.vision[3, 1:] = 7.0  # beyond vision_lengths[3] = 1
    torch.testing.assert_close(model(batch).logits, before)


# ------------------------------------------------------------------------------ pinned runs

FAST = ["--set", "train.epochs=2", "--set", "train.patience=1", "--set", "train.batch_size=32", "--threads", "1",
        "--quiet"]
# Printed at commit 3915ddf by training these runs on `sim_file` (tiny_sim_config) with FAST and SMALL and
# reading the first four test probabilities through `affectus.load(out).predict` (the same code as below).
RECORDED = {
    "dmd": ([[0.47741, 0.19505, 0.32753], [0.4855, 0.17258, 0.34192], [0.48017, 0.16989, 0.34994],
             [0.49747, 0.18052, 0.32201]], {"acc2": 66.66666666666666, "f1": 53.333333333333336}),
    "sdrs": ([[0.54159, 0.26978, 0.18863], [0.1374, 0.34967, 0.51293], [0.14697, 0.19925, 0.65377],
              [0.2455, 0.20914, 0.54535]], {"acc2": 75.0, "f1": 75.71428571428571}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECORDED))
def test_fixed_seed_run_matches_recorded_values(sim_file, tmp_path, name):
    out = tmp_path / "run"
    small = [a for k, v in SMALL[name].items() for a in ("--set", f"model.{k}={v}")]
    assert main([str(a) for a in ["train", "--data", sim_file, "--model", name, "--out", out, *FAST, *small]]) == 0
    probs, metrics = RECORDED[name]
    got = affectus.load(out).predict(load_dataset(sim_file)["test"]).probabilities[:4]
    np.testing.assert_allclose(got, np.array(probs), atol=2e-5)
    saved = json.loads((out / "metrics.json").read_text())["d_test"]
    for key, value in metrics.items():
        assert saved[key] == pytest.approx(value)


# ------------------------------------------------------------------------------------- DMD


def _dmd_separation(model, batch) -> tuple[float, float]:
    """(mean cosine of s_m and c_m over the valid steps, reconstruction MSE), summed over modalities."""
    with torch.no_grad():
        p = model.decoupled_forward(batch)
        cos = [F.cosine_similarity(p.specific[m], p.shared[m], dim=-1)[~p.pads[m]].mean() for m in MODALITIES]
        recon = [masked_mse(p.recon[m], p.origin[m], p.pads[m]) for m in MODALITIES]
    return float(sum(cos) / 3), float(sum(recon))


def _dmd_trained(rc: DMDRecipeConfig, steps: int = 30) -> tuple[tuple[float, float], tuple[float, float]]:
    """Train a small DMD whose private encoders start equal to the shared one (s_m == c_m, cosine 1) with
    its own loss; (cosine, reconstruction MSE) before and after."""
    torch.manual_seed(0)
    model = _build("dmd")
    with torch.no_grad():
        for m in MODALITIES:
            model.encoder_s[m].weight.copy_(model.encoder_c.weight)
    batch = _learnable_batch()
    before = _dmd_separation(model.eval(), batch)
    units = build_units(model, rc)
    task = DMDTask(lambda: [batch], rc, units, ordinal=True)
    opt = torch.optim.Adam([*model.parameters(), *units.parameters()], lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        task.loss(model, batch)[0].backward()
        opt.step()
    return before, _dmd_separation(model.eval(), batch)


@pytest.mark.slow
def test_dmd_decoupled_homogeneous_and_heterogeneous_parts_separate() -> None:
    """The orthogonality term (with the margin term, `similarity_weight`) drives s_m and c_m apart from
    identical; without it they stay alike. The authors weigh it 0.1 * 0.1, so 30 steps see it only
    amplified (similarity_weight 10, i.e. 1.0 in all)."""
    (cos0, _), (cos_on, _) = _dmd_trained(DMDRecipeConfig(similarity_weight=10.0))
    _, (cos_off, _) = _dmd_trained(DMDRecipeConfig(similarity_weight=0.0))
    assert cos0 == pytest.approx(1.0, abs=1e-5)
    assert cos_on < 0.2 and cos_off > 0.5, (cos_on, cos_off)


@pytest.mark.slow
def test_dmd_reconstruction_from_both_parts_approximates_the_input() -> None:
    """At the authors' weights the decoder learns to rebuild the projected input from [s_m; c_m]; with the
    decoupling losses off (variant wo_decoupling_losses) nothing keeps the two parts a decomposition."""
    (_, recon0), (_, recon_on) = _dmd_trained(DMDRecipeConfig())
    _, (_, recon_off) = _dmd_trained(DMDRecipeConfig(decouple_weight=0.0))
    assert recon_on < 0.5 * recon0 < recon_off, (recon0, recon_on, recon_off)


def test_dmd_edge_priors_favour_the_authors_edges() -> None:
    """run.py's priors: softmax over the six edges of a one-hot on the strong ones, temperature 0.25."""
    names = [(MODALITIES[j], MODALITIES[k]) for j, k in EDGES]
    homo = edge_prior((("text", "audio"), ("text", "vision")), 0.25)
    assert float(homo.sum()) == pytest.approx(1.0)
    strong = math.exp(4.0) / (2 * math.exp(4.0) + 4)  # e^(1/0.25) against e^0 for the four others
    assert float(homo[names.index(("text", "audio"))]) == pytest.approx(strong, rel=1e-5)
    assert float(homo[names.index(("audio", "text"))]) == pytest.approx(1 / (2 * math.exp(4.0) + 4), rel=1e-5)


def test_dmd_graph_edges_are_a_distribution_per_sample_and_learn() -> None:
    torch.manual_seed(0)
    model = _build("dmd")
    rc = DMDRecipeConfig()
    units = build_units(model, rc)
    p = model.decoupled_forward(tiny_batch())
    for unit, logits, reprs in ((units["homo"], p.homo_logits, p.homo_repr),
                                (units["hetero"], p.hetero_logits, p.hetero_repr)):
        edges = unit.edges(logits, reprs)
        assert edges.shape == (6, 4)
        torch.testing.assert_close(edges.sum(0), torch.ones(4))
        losses = unit.losses(logits, reprs, include_repr=True)
        (losses["logit"] + losses["repr"] + losses["reg"]).backward(retain_graph=True)  # both read one pass
        assert unit.w_edge.weight.grad is not None and unit.w_edge.weight.grad.abs().sum() > 0


def test_dmd_margin_loss_by_hand() -> None:
    """HingeLoss.py on three vectors: anchor 0 and 1 share a label, 2 differs by 2 (margin 0.3)."""
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    ids = torch.tensor([0.0, 0.0, 2.0])
    # anchor 0: pos 1 (cos 0), neg 2 (cos 1): max(0, 0.3 - 0 + 1) = 1.3; anchor 1: pos 0 (0), neg 2 (0): 0.3;
    # anchor 2 has no positive
    assert float(margin_loss(feats, ids, 0.15, ordinal=True)) == pytest.approx((1.3 + 0.3) / 2)
    assert float(margin_loss(feats, ids, 0.15, ordinal=False)) == pytest.approx((1.15 + 0.15) / 2)


def test_dmd_margin_loss_matches_a_loop_over_anchors() -> None:
    """The vectorised loss against the authors' per-anchor loop (HingeLoss.py), on random labels."""
    torch.manual_seed(0)
    feats = torch.randn(30, 6)
    ids = torch.randint(-2, 3, (10,)).float().repeat_interleave(3)
    unit = F.normalize(feats, dim=-1)
    cos = unit @ unit.t()
    per_anchor = []
    for i in range(30):
        others = [j for j in range(30) if j != i]
        pos = [j for j in others if ids[j] == ids[i]]
        neg = [j for j in others if ids[j] != ids[i]]
        if pos and neg:
            terms = [max(0.0, 0.15 * abs(float(ids[i] - ids[n])) - float(cos[i, p]) + float(cos[i, n]))
                     for p in pos for n in neg]
            per_anchor.append(sum(terms) / len(terms))
    expected = sum(per_anchor) / len(per_anchor)
    assert float(margin_loss(feats, ids, 0.15, ordinal=True)) == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------ SDRS


def _sdrs_run(rc: SDRSRecipeConfig, steps: int = 80):
    """Train a small SDRS whose irrelevant head starts equal to its specific head (the two parts start
    identical); returns (model, batch, adversary, first parts, last parts)."""
    torch.manual_seed(0)
    model = _build("sdrs")
    with torch.no_grad():
        for m in ("audio", "vision"):
            model.to_irrelevant[m].load_state_dict(model.to_specific[m].state_dict())
    batch = _learnable_batch()
    adversary = build_adversary(model.config.d, 3)
    task = SDRSTask(lambda: [batch], rc, adversary)
    opt = torch.optim.Adam([*model.parameters(), *adversary.parameters()], lr=3e-3)
    model.train()
    first = last = None
    for _ in range(steps):
        opt.zero_grad()
        loss, parts = task.loss(model, batch)
        loss.backward()
        opt.step()
        first = first or {k: float(v) for k, v in parts.items()}
        last = {k: float(v) for k, v in parts.items()}
    return model, batch, first, last


@pytest.mark.slow
def test_sdrs_specific_part_predicts_the_label_and_the_irrelevant_part_is_pushed_away() -> None:
    model, batch, first, last = _sdrs_run(SDRSRecipeConfig())
    assert first["orth"] == pytest.approx(2.0, abs=1e-4)  # cos^2 = 1 for each of audio and vision
    assert last["orth"] < 0.2, last  # the orthogonality term separated the parts
    assert last["specific"] < 0.5 * first["specific"], (first, last)  # the specific parts learned the label
    with torch.no_grad():
        p = model.eval().disentangle_forward(batch)
        for m in ("audio", "vision"):
            acc = (p.specific_logits[m].argmax(-1) == batch.classes).float().mean()
            assert acc > 0.8, (m, float(acc))


@pytest.mark.slow
def test_sdrs_orthogonality_and_adversary_are_each_active() -> None:
    """From identical parts, each push-away term separates them on its own; with both off (the specific
    head and the reconstruction alone) the parts stay alike. Mean cos^2 summed over audio and vision."""
    steps = 50
    off = _sdrs_run(SDRSRecipeConfig(orth_weight=0.0, adv_weight=0.0), steps)[3]["orth"]
    orth_only = _sdrs_run(SDRSRecipeConfig(adv_weight=0.0), steps)[3]["orth"]
    adv_only = _sdrs_run(SDRSRecipeConfig(orth_weight=0.0), steps)[3]["orth"]
    assert off > 1.0 and orth_only < 0.75 and adv_only < 0.9, (off, orth_only, adv_only)


def test_sdrs_adversary_reverses_its_gradient_into_the_encoder() -> None:
    """The adversary learns to read the label from the irrelevant part; the encoder gets the negated
    gradient (it removes what the adversary finds)."""
    x = torch.randn(5, 4, requires_grad=True)
    w = torch.randn(4)
    (reverse_gradient(x) @ w).sum().backward()
    torch.testing.assert_close(x.grad, -w.expand(5, 4))
    # in the task: the adversary's loss moves the irrelevant head against the adversary's own descent
    torch.manual_seed(0)
    model = _build("sdrs").eval()  # no dropout: the two passes below must see the same network
    batch = _learnable_batch()
    adversary = build_adversary(model.config.d, 3)
    only_adv = SDRSTask(lambda: [batch], SDRSRecipeConfig(specific_weight=0, recon_weight=0, orth_weight=0,
                                                          adv_weight=1.0), adversary)
    loss, _ = only_adv.loss(model, batch)  # the irrelevant head reaches no other term at these weights
    grads = torch.autograd.grad(loss, [model.to_irrelevant["audio"].weight])
    p = model.disentangle_forward(batch)
    plain = F.cross_entropy(adversary["audio"](p.irrelevant["audio"]), batch.classes)
    (direct,) = torch.autograd.grad(plain, [model.to_irrelevant["audio"].weight])
    torch.testing.assert_close(grads[0], -direct)


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("name", "setting", "message"), [
    ("dmd", "model.kernel_text=4", "model.kernel_text = 4: expected an odd kernel size"),
    ("dmd", "model.heads=3", "model.heads = 3: expected a divisor of model.d = 50"),
    ("dmd", "recipe.gd_alpha=0", "recipe.gd_alpha = 0"),
    ("sdrs", "recipe.orth_weight=-1", "recipe.orth_weight = -1.0: expected a finite weight >= 0"),
    ("sdrs", "model.heads=3", "model.heads = 3: expected a divisor of model.d = 128"),
])
def test_a_setting_the_model_cannot_use_is_refused_before_training(sim_file, tmp_path, capsys, name, setting, message):
    out = tmp_path / "run"
    code = main(["train", "--data", str(sim_file), "--model", name, "--set", setting, "--out", str(out), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


# ---------------------------------------------------------------------------------- resume


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dmd", "sdrs"])
def test_interrupted_run_resumes_to_the_same_weights(sim_file, tmp_path, monkeypatch, name):
    """The training-only parts (DMD's GD-Units, SDRS's adversary) are not in the model's state: they are
    resumed with the task, so a run cut after two epochs ends with the uninterrupted run's weights."""
    from safetensors.numpy import load_file

    from affectus.training.recipes.dmd import DMDTask
    from affectus.training.recipes.sdrs import SDRSTask

    task_cls = {"dmd": DMDTask, "sdrs": SDRSTask}[name]
    small = [a for k, v in SMALL[name].items() for a in ("--set", f"model.{k}={v}")]
    args = ["--data", str(sim_file), "--model", name, "--set", "train.epochs=3", "--set", "train.patience=3",
            "--set", "train.batch_size=16", "--threads", "1", "--quiet", *small]
    assert main(["train", "--out", str(tmp_path / "full"), *args]) == 0

    def interrupt(self, epoch):
        if epoch == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(task_cls, "start_epoch", interrupt)
    out = tmp_path / "cut"
    assert main(["train", "--out", str(out), *args]) == 130
    monkeypatch.undo()
    assert main(["train", "--out", str(out), "--resume", *args]) == 0
    wa = load_file(str(tmp_path / "full" / "model.safetensors"))
    wb = load_file(str(out / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])
    runs = [json.loads((d / "run.json").read_text())["stages"]["train"] for d in (tmp_path / "full", out)]
    histories = [[{k: v for k, v in h.items() if k != "seconds"} for h in r["history"]] for r in runs]
    assert len(histories[0]) == 3 and histories[0] == histories[1]
