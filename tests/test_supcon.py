"""SupCon (eq. 8): hand-computed values for both forms, a naive reference loop, edge cases, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from affectus.data.schemes import get_scheme
from affectus.training.losses import supcon_loss

# Four 2-d unit vectors, labels [0, 0, 0, 1], tau = 1:
#   f0 = (1, 0), f1 = (0, 1), f2 = (1, 0), f3 = (-1, 0)
#   similarities: s01 = 0, s02 = 1, s03 = -1, s12 = 0, s13 = 0, s23 = -1
#   anchor 0: P = {1, 2}, A = {1, 2, 3}: den = e^0 + e^1 + e^-1 = 4.0861613
#       in:  -log((e^0 + e^1) / den) = log(4.0861613 / 3.7182818) = 0.0943443
#       out: -(log(e^0 / den) + log(e^1 / den)) / 2 = log(den) - 1/2 = 0.9076059
#   anchor 1: P = {0, 2}, A = {0, 2, 3}: den = 3 e^0 = 3
#       in:  -log(2 / 3) = 0.4054651;  out: log 3 = 1.0986123
#   anchor 2: like anchor 0 (s20 = 1, s21 = 0, s23 = -1)
#   anchor 3: no positive -> left out of the mean
FEATS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
LABELS = torch.tensor([0, 0, 0, 1])
DEN0 = 1 + math.e + math.exp(-1)
IN_0 = math.log(DEN0 / (1 + math.e))
OUT_0 = math.log(DEN0) - 0.5
EXPECTED_IN = (2 * IN_0 + math.log(3 / 2)) / 3  # = 0.1980512
EXPECTED_OUT = (2 * OUT_0 + math.log(3)) / 3  # = 0.9712747


def naive_supcon(features: torch.Tensor, labels: torch.Tensor, tau: float, form: str) -> float:
    """Direct loops over anchors, in float64, written from the formulas (authors' 'in', Khosla's L_out)."""
    f = features.double()
    losses = []
    for i in range(len(f)):
        pos = [j for j in range(len(f)) if j != i and labels[j] == labels[i]]
        if not pos:
            continue
        den = sum(math.exp(float(f[i] @ f[a]) / tau) for a in range(len(f)) if a != i)
        if form == "in":
            losses.append(-math.log(sum(math.exp(float(f[i] @ f[p]) / tau) for p in pos) / den))
        else:
            losses.append(-sum(math.log(math.exp(float(f[i] @ f[p]) / tau) / den) for p in pos) / len(pos))
    return sum(losses) / len(losses) if losses else 0.0


def test_hand_computed_values():
    assert EXPECTED_IN == pytest.approx(0.1980512, abs=1e-7)
    assert EXPECTED_OUT == pytest.approx(0.9712747, abs=1e-7)
    assert supcon_loss(FEATS, LABELS, temperature=1.0, form="in").item() == pytest.approx(EXPECTED_IN, abs=1e-6)
    assert supcon_loss(FEATS, LABELS, temperature=1.0, form="out").item() == pytest.approx(EXPECTED_OUT, abs=1e-6)
    assert supcon_loss(FEATS, LABELS, temperature=1.0).item() == pytest.approx(EXPECTED_IN, abs=1e-6)  # default 'in'


def test_one_positive_per_anchor_forms_agree():
    # with a single positive per anchor the two forms coincide:
    # anchor 0 (f0 = (1,0), P = {1} with s = 0, other s = 1): log(1 + e) = 1.3132617; anchor 1: log 2
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    expected = (math.log(1 + math.e) + math.log(2)) / 2  # = 1.0032044
    for form in ("in", "out"):
        assert supcon_loss(feats, labels, temperature=1.0, form=form).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("form", ["in", "out"])
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_matches_naive_loop(form, tau):
    gen = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(24, 8, generator=gen), dim=-1)
    labels = torch.randint(0, 2, (24,), generator=gen)
    labels[0] = 5  # an anchor with no positive
    got = supcon_loss(feats, labels, temperature=tau, form=form).item()
    assert got == pytest.approx(naive_supcon(feats, labels, tau, form), rel=1e-5, abs=1e-6)


def test_base_temperature_factor():
    plain = supcon_loss(FEATS, LABELS, temperature=0.5, form="out")
    scaled = supcon_loss(FEATS, LABELS, temperature=0.5, form="out", base_temperature=0.07)
    assert scaled.item() == pytest.approx(plain.item() * 0.5 / 0.07, rel=1e-6)


@pytest.mark.parametrize("form", ["in", "out"])
@pytest.mark.parametrize(
    "feats, labels",
    [
        (F.normalize(torch.randn(1, 4), dim=-1), torch.tensor([1])),  # a single sample
        (F.normalize(torch.randn(5, 4), dim=-1), torch.zeros(5, dtype=torch.long)),  # a single class
        (F.normalize(torch.randn(3, 4), dim=-1), torch.tensor([0, 1, 2])),  # no positive pair at all
        (F.normalize(torch.ones(4, 4), dim=-1), torch.tensor([0, 0, 1, 1])),  # collapsed features
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)),  # empty
    ],
)
def test_edge_cases_finite_with_finite_gradient(form, feats, labels):
    x = feats.clone().requires_grad_(True)
    loss = supcon_loss(x, labels, form=form)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    if labels.numel() < 2 or len(set(labels.tolist())) == labels.numel():
        assert loss.item() == 0.0


@pytest.mark.parametrize("form", ["in", "out"])
def test_stable_at_small_temperature(form):
    # at tau = 0.005 exp(s / tau) reaches e^200 and overflows float32 in a naive implementation
    gen = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(16, 8, generator=gen), dim=-1).requires_grad_(True)
    labels = torch.randint(0, 2, (16,), generator=gen)
    loss = supcon_loss(x, labels, temperature=0.005, form=form)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert loss.item() == pytest.approx(naive_supcon(x.detach(), labels, 0.005, form), rel=1e-4)


def test_gradient_matches_float64_autograd():
    gen = torch.Generator().manual_seed(2)
    x = F.normalize(torch.randn(6, 3, generator=gen, dtype=torch.float64), dim=-1).requires_grad_(True)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    assert torch.autograd.gradcheck(lambda f: supcon_loss(f, labels, temperature=0.3, form="in"), (x,))
    assert torch.autograd.gradcheck(lambda f: supcon_loss(f, labels, temperature=0.3, form="out"), (x,))


def test_bad_arguments():
    with pytest.raises(ValueError):
        supcon_loss(FEATS, LABELS, form="mean")
    with pytest.raises(ValueError):
        supcon_loss(FEATS, LABELS[:3])
    with pytest.raises(ValueError):
        supcon_loss(FEATS[None], LABELS)


def test_scheme_supcon_labels():
    classes = torch.tensor([0, 1, 2, 1, 0])
    assert get_scheme("sims").supcon_labels(classes).tolist() == [0, 0, 1, 0, 0]  # positive vs non-positive
    assert get_scheme("mosi").supcon_labels(classes).tolist() == [0, 1, 1, 1, 0]  # non-negative vs negative
    assert get_scheme("sims").supcon_labels(classes).dtype == torch.int64
    # categorical emotions: positives share the class itself
    assert get_scheme({"name": "categorical", "classes": ["a", "b", "c"]}).supcon_labels(classes).tolist() == [0, 1, 2, 1, 0]
