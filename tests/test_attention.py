"""The encoders' self-attention against nn.MultiheadAttention: both kernels, eval outputs and training
dropout rates; the fast kernel's pieces; its fallback to SDPA where torch lacks the private function."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from affectus.models import attention, layers
from affectus.models.attention import SelfAttention
from affectus.models.layers import UnimodalEncoder

D, HEADS = 16, 2


@pytest.fixture(params=["fast", "torch", "fallback"])
def kernel(request, monkeypatch) -> str:
    """The kernel under test; "fallback" is "fast" on a torch without `_softmax_backward_data`."""
    if request.param == "fallback":
        monkeypatch.delattr(torch, "_softmax_backward_data")
        assert not attention.fast_kernel_available()
        return "fast"
    return request.param


def _pair(kernel: str, dropout: float) -> tuple[nn.MultiheadAttention, SelfAttention]:
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(D, HEADS, dropout=dropout, batch_first=True)
    ours = SelfAttention(D, HEADS, dropout, kernel)
    with torch.no_grad():
        ours.in_proj.weight.copy_(ref.in_proj_weight)
        ours.in_proj.bias.copy_(torch.randn(3 * D))
        ref.in_proj_bias.copy_(ours.in_proj.bias)
        ours.out_proj.load_state_dict(ref.out_proj.state_dict())
    return ref, ours


def test_eval_output_equals_multihead_attention(kernel):
    ref, ours = _pair(kernel, dropout=0.3)
    ref.eval(), ours.eval()
    x = torch.randn(5, 11, D)
    absent = torch.zeros(5, 11, dtype=torch.bool)
    absent[1, 7:] = True
    absent[3, 2:] = True
    bias = torch.zeros(5, 1, 1, 11).masked_fill(absent[:, None, None, :], float("-inf"))
    with torch.no_grad():
        expected = ref(x, x, x, need_weights=False)[0]
        assert torch.allclose(ours(x, None), expected, atol=1e-5)
        masked = ref(x, x, x, key_padding_mask=absent, need_weights=False)[0]
        assert torch.allclose(ours(x, bias), masked, atol=1e-5)


def _dropped_weights(module: nn.Module, steps: int, batch: int) -> torch.Tensor:
    """Attention weights after dropout, read from the output: with the value and output projections
    set to the identity and one-hot inputs (token j = e_j, d = L), output[b, i, j] is query i's
    weight on key j in the head owning coordinate j, times 1 / (1 - p) where kept, 0 where dropped."""
    x = torch.eye(steps).expand(batch, steps, steps)
    with torch.no_grad():
        if isinstance(module, nn.MultiheadAttention):
            module.in_proj_weight[2 * D :].copy_(torch.eye(D))
            module.in_proj_bias[2 * D :].zero_()
            return module(x, x, x, need_weights=False)[0]
        module.in_proj.weight[2 * D :].copy_(torch.eye(D))
        module.in_proj.bias[2 * D :].zero_()
        return module(x, None)


@torch.no_grad()
def test_training_dropout_rate_equals_multihead_attention(kernel):
    p = 0.25  # a multiple of 1/32768: the fast kernel's masks use it unrounded
    ref, ours = _pair(kernel, dropout=p)
    for m in (ref, ours):
        m.out_proj.weight.copy_(torch.eye(D))
        m.out_proj.bias.zero_()
    batch = 200
    expected = _dropped_weights(ours.eval(), D, batch)  # no dropout: the softmax weights, all > 0
    assert (expected > 0).all()
    torch.manual_seed(1)
    got_ref = _dropped_weights(ref.train(), D, batch)
    got = _dropped_weights(ours.train(), D, batch)
    n = got.numel()  # 51,200 weights: the dropped fraction has a standard deviation of ~0.002
    tolerance = 5 * np.sqrt(p * (1 - p) / n)
    rate_ref, rate = (got_ref == 0).float().mean().item(), (got == 0).float().mean().item()
    assert abs(rate_ref - p) < tolerance and abs(rate - p) < tolerance
    assert abs(rate - rate_ref) < 2 * tolerance
    # the kept weights are scaled by 1 / (1 - p), as nn.MultiheadAttention's
    for out in (got, got_ref):
        kept = out != 0
        assert torch.allclose(out[kept], expected[kept] / (1 - p), atol=1e-5)


def test_fallback_runs_sdpa_with_dropout(monkeypatch):
    """Without the private function the fast kernel is not used (its backward would fail), SDPA drops
    instead, and the encoder stops compacting padding while attention drops (SDPA cannot spare it)."""
    monkeypatch.delattr(torch, "_softmax_backward_data")
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("dropout_p", 0.0))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    enc = UnimodalEncoder(5, 8, 1, HEADS, 16, dropout=0.2).train()
    x = torch.randn(4, 9, 5)
    x[:, 5:] = 0.0  # identical trailing rows: compacted in eval
    assert not enc._can_spare_padding_token()
    out = enc(x)
    out.sum().backward()
    assert calls == [0.2] and all(torch.isfinite(p.grad).all() for p in enc.parameters())
    enc.eval()
    assert enc._can_spare_padding_token()
    with torch.no_grad():
        enc(x)
    assert calls[-1] == 0.0


def test_bad_kernel_is_refused():
    with pytest.raises(ValueError, match="attention kernel"):
        SelfAttention(D, HEADS, 0.1, "flash")


# -- the fast kernel's pieces ------------------------------------------------------------------------
def test_dropout_attention_matches_autograd(monkeypatch):
    monkeypatch.setattr(attention, "_ATTN_CHUNK_ELEMS", 60)  # several slices along B*H
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 7, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    bias = torch.zeros(6, 1, 7, dtype=torch.float64)
    bias[::2, :, 5:] = float("-inf")
    bias[1, :, 3] = np.log(4.0)
    keep = (torch.rand(6, 7, 7, generator=g) > 0.3).double() / 0.7
    out = attention._DropoutAttention.apply(q, k, v, bias, keep)
    expected = (torch.softmax(q @ k.transpose(1, 2) + bias, dim=-1) * keep) @ v
    assert torch.allclose(out, expected, atol=1e-12)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    expected_grads = torch.autograd.grad((expected * w).sum(), (q, k, v))
    for a, b in zip(grads, expected_grads):
        assert torch.allclose(a, b, atol=1e-10)


def test_keep_mask_is_inverted_dropout_and_seeded():
    torch.manual_seed(3)
    keep = attention.keep_mask((200, 300), 0.1, torch.device("cpu"))
    torch.manual_seed(3)
    assert torch.equal(keep, attention.keep_mask((200, 300), 0.1, torch.device("cpu")))
    p = round(0.1 * 32768) / 32768
    values = keep.unique()
    assert values.tolist()[0] == 0.0 and torch.allclose(values[1:], torch.tensor([1 / (1 - p)]))
    assert abs((keep == 0).float().mean().item() - 0.1) < 0.005
    rows = (torch.tensor([0, 2]), torch.tensor([1, 0]))
    x = torch.ones(3, 4, 5)
    y = layers._dropout(x, 0.5, rows)
    assert torch.equal(y[rows], x[rows])  # many-copies tokens keep their expectation


def test_fast_kernel_trains_under_autocast():
    """Mixed precision (bf16 autocast on CPU, the same code path as CUDA AMP): forward and backward of the
    dropout kernel run, and the gradients are finite."""
    from affectus.models.cmc import CMC, CMCConfig
    from conftest import TINY_BATCH_DIMS, tiny_batch

    torch.manual_seed(0)
    model = CMC(CMCConfig(dims=dict(TINY_BATCH_DIMS), d=8, heads=2, ff=16, layers=1, attention="fast")).train()
    batch = tiny_batch(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
        loss = torch.nn.functional.cross_entropy(out.logits.float(), batch.classes)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
