"""The late-fusion baseline: shapes, forward/backward, every parameter trained, padding ignored."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from affectus.errors import AffectusError
from affectus.models import registry
from affectus.models.late_fusion import LateFusion, LateFusionConfig, build, masked_mean
from conftest import TINY_BATCH_DIMS, tiny_batch

DIMS = TINY_BATCH_DIMS


def test_masked_mean_by_hand():
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [50.0], [60.0]]])  # (2, 3, 1)
    out = masked_mean(x, torch.tensor([2, 0]))
    assert out.squeeze(-1).tolist() == [2.0, 2.0]  # (1 + 3) / 2; length 0 -> first step


def test_forward_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = build(LateFusionConfig(dims=DIMS, hidden=8))
    batch = tiny_batch()
    out = model(batch)
    assert out.logits.shape == (4, 3)
    assert out.modality_logits.shape == (4, 3, 3)
    # The final loss alone does not reach the per-modality heads: train them too, as a task would.
    loss = F.cross_entropy(out.logits, batch.classes) + sum(
        F.cross_entropy(out.modality_logits[:, k], batch.classes) for k in range(3)
    )
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_padding_does_not_change_the_output():
    model = LateFusion(LateFusionConfig(dims=DIMS, hidden=8)).eval()
    batch = tiny_batch()
    before = model(batch).logits
    batch.text[1, 3:] = 1e3  # beyond text_lengths[1] = 3
    batch.audio[1, 2:] = -1e3  # beyond audio_lengths[1] = 2
    assert torch.allclose(model(batch).logits, before)


def test_single_sample_batch_trains():
    # A batch of one is where batch statistics (BatchNorm) would break: one optimiser step on it must give
    # finite gradients everywhere and move the loss on that sample down.
    torch.manual_seed(0)
    model = LateFusion(LateFusionConfig(dims=DIMS, hidden=8, dropout=0.0)).train()
    batch = tiny_batch(b=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(batch)
    assert out.logits.shape == (1, 3) and torch.isfinite(out.logits).all()
    before = F.cross_entropy(out.logits, batch.classes)
    before.backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fusion.parameters())
    opt.step()
    after = F.cross_entropy(model(batch).logits, batch.classes)
    assert after < before


def test_wrong_feature_size_is_a_clear_error():
    model = LateFusion(LateFusionConfig(dims={**DIMS, "audio": 5}))
    with pytest.raises(AffectusError, match="audio"):
        model(tiny_batch())
    with pytest.raises(AffectusError, match="vision"):
        LateFusion(LateFusionConfig(dims={"text": 6, "audio": 3}))


def test_registered():
    # Read the registry table directly: `list_models()` also imports the other model modules.
    entry = registry._REGISTRY["late_fusion"]
    assert entry.config_cls is LateFusionConfig and entry.build is build
    assert isinstance(entry.build(LateFusionConfig(dims=DIMS)), LateFusion)
