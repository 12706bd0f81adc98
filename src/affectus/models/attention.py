"""Multi-head self-attention for the unimodal encoders, with a fast CPU dropout kernel.

Two kernels compute the function of `nn.MultiheadAttention` (self-attention, batch first, one fused
qkv projection with its parameter shapes and initialisation):

* "torch": `F.scaled_dot_product_attention` (SDPA) in every mode, with its own dropout in training;
* "fast" (default): the same SDPA call without dropout (eval, or dropout 0: SDPA's fused CPU kernel
  never builds the (L, L) matrix), and in training with dropout `_DropoutAttention`, which SDPA's
  slow CPU dropout path made worth writing (~2x faster on MOSI shapes, docs/model.md): attention in
  cache-sized slices, a written-out backward pass, and cheaper dropout masks (`keep_mask`). It also
  lets a compacted padding token (one token standing for n identical time steps, see
  `UnimodalEncoder`) escape dropout, which SDPA cannot. Its backward uses the private
  `torch._softmax_backward_data`; where a torch build lacks it, "fast" falls back to "torch".
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

AttentionKernel = Literal["fast", "torch"]
KERNELS = ("fast", "torch")

# Attention with dropout runs over slices of about this many (L, L) scores (4 MB: stays in cache).
_ATTN_CHUNK_ELEMS = 1 << 20


def fast_kernel_available() -> bool:
    """Whether this torch has the private function `_DropoutAttention.backward` relies on."""
    return hasattr(torch, "_softmax_backward_data")


def keep_mask(shape: tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """Inverted-dropout multipliers: 0 with probability p', else 1 / (1 - p'); p' = p rounded to 1/32768.

    Four 15-bit draws per 64-bit random integer, and a float mask (multiplying by it is ~10x faster
    than `masked_fill` on CPU): together ~2x cheaper than `F.dropout`, which matters for (B*H, L, L)
    attention masks. Uses the default generator, so `torch.manual_seed` still makes runs repeatable."""
    n = math.prod(shape)
    threshold = round(p * 32768)
    raw = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_()  # uniform over [0, 2^63)
    draws = raw.view(torch.int16)[:n].view(shape).bitwise_and_(0x7FFF)  # each 15 uniform bits
    return (draws >= threshold).to(torch.float32).mul_(32768.0 / (32768 - threshold))


class _DropoutAttention(torch.autograd.Function):
    """(softmax(q kᵀ + bias) ∘ keep) v, q pre-scaled: q, k, v (N, L, hd) with N = B*H.

    The function of `nn.MultiheadAttention`'s dropout path, computed in slices of the N axis so that
    each (L, L) intermediate is reused while it is still in cache, with the backward pass written out
    (autograd's would make extra passes over the (L, L) tensors).

    The four products of an (L, L) matrix with an (L, hd) one (hd = 8 at MOSI's d = 32, 4 heads) are
    computed transposed, as (hd, L) @ (L, L): MKL's batched GEMM is ~5x faster with the narrow operand
    on the left than with a narrow output on the right (measured on AMD EPYC, 1 thread; docs/model.md).
    The same sums, grouped by the library; results agree to float rounding.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, keep):  # bias (N, 1, L) or None; keep (N, L, L) multipliers
        n, steps, _ = q.shape
        chunk = max(1, _ATTN_CHUNK_ELEMS // (steps * steps)) if q.device.type == "cpu" else n
        out_t = torch.empty(v.shape[0], v.shape[2], steps, dtype=v.dtype, device=v.device)  # (N, hd, L)
        v_t = v.transpose(1, 2).contiguous()  # (N, hd, L)
        saved = []
        for s in range(0, n, chunk):
            sl = slice(s, s + chunk)
            if bias is None:
                scores = torch.bmm(q[sl], k[sl].transpose(1, 2))  # (n', L, L)
            else:
                scores = torch.baddbmm(bias[sl], q[sl], k[sl].transpose(1, 2))
            p = torch.softmax(scores, dim=-1)
            dropped = p * keep[sl]
            saved += [p, dropped]
            torch.bmm(v_t[sl], dropped.transpose(1, 2), out=out_t[sl])  # (out)ᵀ = vᵀ droppedᵀ
        ctx.save_for_backward(q, k, v_t, keep, *saved)
        ctx.chunk = chunk
        return out_t.transpose(1, 2)

    @staticmethod
    def backward(ctx, dout):
        q, k, v_t, keep, *saved = ctx.saved_tensors
        n, steps, hd = q.shape
        dout = dout.contiguous()
        dout_t = dout.transpose(1, 2).contiguous()  # (N, hd, L)
        q_t, k_t = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
        grads_t = torch.empty(3, n, hd, steps, dtype=q.dtype, device=q.device)  # dqᵀ, dkᵀ, dvᵀ
        for i, s in enumerate(range(0, n, ctx.chunk)):
            sl, p, dropped = slice(s, s + ctx.chunk), saved[2 * i], saved[2 * i + 1]
            torch.bmm(dout_t[sl], dropped, out=grads_t[2, sl])  # dvᵀ = doutᵀ dropped
            dp = torch.bmm(dout[sl], v_t[sl]).mul_(keep[sl])  # (n', L, L)
            ds = torch._softmax_backward_data(dp, p, -1, p.dtype)
            torch.bmm(k_t[sl], ds.transpose(1, 2), out=grads_t[0, sl])  # dqᵀ = kᵀ dsᵀ
            torch.bmm(q_t[sl], ds, out=grads_t[1, sl])  # dkᵀ = qᵀ ds
        dq, dk, dv = grads_t.transpose(2, 3).unbind(0)
        return dq, dk, dv, None, None


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (`in_proj`: d -> 3d, as PyTorch's).

    forward(x (B, L, d), bias (B, 1, 1, L) | None, multi_rows) -> (B, L, d). `bias` is added to the
    attention logits of every query for each key (log multiplicity; -inf masks a key). `multi_rows`
    (batch idx, time idx) are tokens that stand for many identical time steps: the fast kernel never
    drops their attention weights (see `UnimodalEncoder`); "torch" has no way to, so it needs none
    (`exempts_rows` is False and the encoder does not compact while this layer drops).
    """

    def __init__(self, d: int, heads: int, dropout: float, kernel: AttentionKernel = "fast") -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"d={d} is not divisible by heads={heads}")
        if kernel not in KERNELS:
            raise ValueError(f"attention kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        self.heads = heads
        self.dropout = dropout
        self.kernel = kernel
        self.in_proj = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)
        # nn.MultiheadAttention's initialisation.
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    @property
    def exempts_rows(self) -> bool:
        """Whether a training step with dropout runs the fast kernel (checked per call: a torch without
        the private function falls back to SDPA)."""
        return self.kernel == "fast" and fast_kernel_available()

    def forward(
        self,
        x: torch.Tensor,  # (B, L, d)
        bias: torch.Tensor | None,  # (B, 1, 1, L) additive key bias: log(multiplicity), -inf = absent
        multi_rows: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        b, steps, d = x.shape
        h, hd = self.heads, d // self.heads
        qkv = self.in_proj(x).view(b, steps, 3, h, hd).permute(2, 0, 3, 1, 4)  # (3, B, H, L, hd)
        p = self.dropout if self.training else 0.0
        if p > 0 and self.exempts_rows:
            q, k, v = qkv.reshape(3, b * h, steps, hd).unbind(0)  # each (B*H, L, hd), contiguous
            keep = keep_mask((b * h, steps, steps), p, x.device)
            if multi_rows is not None:
                # A many-copies token neither loses its weight as a key nor its attention as a query:
                # the reference drops each copy independently, which averages out (layers._dropout).
                bi, ti = multi_rows
                keep4 = keep.view(b, h, steps, steps)
                keep4[bi, :, ti, :] = 1.0
                keep4[bi, :, :, ti] = 1.0
            bias3 = None if bias is None else bias.expand(b, h, 1, steps).reshape(b * h, 1, steps)
            # The hand-written kernel runs in float32 with autocast off: under AMP its float32 dropout
            # multipliers would meet bf16/fp16 probabilities in one bmm (a dtype error). A no-op without AMP.
            with torch.autocast(x.device.type, enabled=False):
                out = _DropoutAttention.apply((q * hd**-0.5).float(), k.float(), v.float(),
                                              None if bias3 is None else bias3.float(), keep)
            out = out.to(q.dtype).reshape(b, h, steps, hd)
        else:
            q, k, v = qkv.unbind(0)  # each (B, H, L, hd)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)  # (B, H, L, hd)
        return self.out_proj(out.transpose(1, 2).reshape(b, steps, d))
