"""MulT: Multimodal Transformer (Tsai et al., ACL 2019, "Multimodal Transformer for Unaligned
Multimodal Language Sequences"), in the shape of the authors' code and MMSA's `MULT.py`, kept small.

1. Temporal Conv1d projects each modality to a common width d (paper sec. 3.1, eq. 3).
2. Six crossmodal transformers, one per (target <- source) pair: the target's sequence queries the
   source's (sec. 3.2, eqs. 4-6). Pre-LayerNorm blocks: x = x + CM(LN x, LN y); x = x + FF(LN x).
3. Per target modality the two crossmodal outputs are concatenated (2d) and read by a self-attention
   transformer (the "memory", sec. 3.3); its last step is the modality's summary.
4. The three summaries (6d) pass a residual Linear-ReLU-Linear block and a linear head -> 3 logits.

Inputs are scaled by sqrt(d) and get sinusoidal positions inside every transformer (as the authors).
Differences, all about padding in unaligned data: keys beyond a sequence's true length are masked
out of attention; the summary is the last *valid* step (MulT takes the last padded step); no
future (causal) mask, since it has no meaning across unaligned streams; padded input steps are zeroed
before the convolution, which uses "same" padding so lengths carry through (odd kernel sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import AffectusError
from affectus.models.layers import check_dims
from affectus.models.output import ModelOutput
from affectus.models.registry import check_model_config, register_model
from affectus.models.tfn import check_features


@dataclass
class MulTConfig:
    # Input feature size per modality (default: CMU-MOSI's 768 / 5 / 20); set from data.
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    # Kept small (MMSA MOSI: d 50, 10 heads, 4 levels; MOSEI: d 30, 6 heads): d 32, 4 heads, 2 layers.
    d: int = 32
    heads: int = 4
    layers: int = 2  # per crossmodal transformer
    mem_layers: int = 2  # per self-attention "memory" transformer (width 2d)
    # Dropouts: the authors' defaults (Multimodal-Transformer main.py), no text dropout.
    attn_dropout: float = 0.1
    relu_dropout: float = 0.1
    res_dropout: float = 0.1
    embed_dropout: float = 0.25
    out_dropout: float = 0.0
    # Conv1d kernel per modality (authors: 1; MMSA tunes 5 for MOSI); odd, "same" padding.
    kernel_text: int = 1
    kernel_audio: int = 1
    kernel_vision: int = 1
    num_classes: int = 3

    def validate(self) -> None:
        check_model_config(self, sizes=("d", "heads", "layers", "mem_layers", "kernel_text", "kernel_audio",
                                        "kernel_vision"))


def sinusoidal_positions(steps: int, d: int, device: torch.device) -> torch.Tensor:
    """(steps, d) sine / cosine position codes (Vaswani et al. 2017), positions starting at 1 as MulT."""
    pos = torch.arange(1, steps + 1, device=device, dtype=torch.float32)[:, None]
    half = d // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / max(half - 1, 1))
    codes = torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], dim=1)  # (steps, 2 * half)
    return F.pad(codes, (0, d - 2 * half))  # odd d: one zero column


class TransformerBlock(nn.Module):
    """Pre-LN block; with a `source` sequence the attention is crossmodal (queries from x, keys/values
    from the source), without it plain self-attention."""

    def __init__(self, d: int, heads: int, cross: bool, attn_dropout: float, relu_dropout: float,
                 res_dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(d)
        self.norm_kv = nn.LayerNorm(d) if cross else None
        self.attn = nn.MultiheadAttention(d, heads, dropout=attn_dropout, batch_first=True)
        self.norm_ff = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Dropout(relu_dropout), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(res_dropout)

    def forward(self, x: torch.Tensor, source: torch.Tensor | None, source_pad: torch.Tensor) -> torch.Tensor:
        q = self.norm_q(x)
        kv = q if source is None or self.norm_kv is None else self.norm_kv(source)
        a, _ = self.attn(q, kv, kv, key_padding_mask=source_pad, need_weights=False)  # (B, Lx, d)
        x = x + self.drop(a)
        return x + self.drop(self.ff(self.norm_ff(x)))


class Transformer(nn.Module):
    """A stack of `TransformerBlock`s with input scaling, positions and a final LayerNorm (as MulT's
    TransformerEncoder). x (B, Lx, d), source (B, Ly, d) or None; *_pad (B, L) True at padding."""

    def __init__(self, d: int, heads: int, layers: int, cross: bool, cfg: MulTConfig) -> None:
        super().__init__()
        self.d = d
        self.embed_dropout = cfg.embed_dropout
        self.blocks = nn.ModuleList(
            TransformerBlock(d, heads, cross, cfg.attn_dropout, cfg.relu_dropout, cfg.res_dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = math.sqrt(self.d) * x + sinusoidal_positions(x.shape[1], self.d, x.device)
        return F.dropout(x, self.embed_dropout, self.training)

    def forward(self, x: torch.Tensor, x_pad: torch.Tensor, source: torch.Tensor | None = None,
                source_pad: torch.Tensor | None = None) -> torch.Tensor:
        x = self._embed(x)
        src = None if source is None else self._embed(source)
        pad = x_pad if source is None else source_pad
        for block in self.blocks:
            x = block(x, src, pad)
        return self.norm(x)


def _pair(target: str, source: str) -> str:
    return f"{target}_from_{source}"


class MulT(nn.Module):
    def __init__(self, config: MulTConfig) -> None:
        super().__init__()
        check_dims("mult", config.dims)
        c = config
        kernels = {"text": c.kernel_text, "audio": c.kernel_audio, "vision": c.kernel_vision}
        if any(k < 1 or k % 2 == 0 for k in kernels.values()):
            raise AffectusError(f"mult kernel sizes must be odd and positive, got {kernels}")
        if c.d % c.heads != 0:
            raise AffectusError(f"mult d = {c.d} must be divisible by heads = {c.heads}")
        self.config = c
        self.proj = nn.ModuleDict(
            {m: nn.Conv1d(int(c.dims[m]), c.d, kernels[m], padding=kernels[m] // 2, bias=False) for m in MODALITIES}
        )
        self.crossmodal = nn.ModuleDict(
            {_pair(t, s): Transformer(c.d, c.heads, c.layers, True, c) for t in MODALITIES for s in MODALITIES if s != t}
        )
        self.memory = nn.ModuleDict({m: Transformer(2 * c.d, c.heads, c.mem_layers, False, c) for m in MODALITIES})
        width = 6 * c.d
        self.proj1 = nn.Linear(width, width)
        self.proj2 = nn.Linear(width, width)
        self.head = nn.Linear(width, c.num_classes)

    def forward(self, batch: Batch) -> ModelOutput:
        check_features("mult", batch, self.config.dims)
        seqs, pads, last = {}, {}, {}
        for m in MODALITIES:
            x = getattr(batch, m).float()  # (B, L, D)
            steps = x.shape[1]
            lengths = batch.lengths(m).to(x.device).long().clamp(min=1, max=steps)
            pads[m] = torch.arange(steps, device=x.device)[None, :] >= lengths[:, None]  # (B, L)
            x = x.masked_fill(pads[m][..., None], 0.0)  # the conv must not see padding values
            seqs[m] = self.proj[m](x.transpose(1, 2)).transpose(1, 2)  # (B, L, d)
            last[m] = lengths - 1
        summaries = []
        for t in MODALITIES:
            crossed = [self.crossmodal[_pair(t, s)](seqs[t], pads[t], seqs[s], pads[s]) for s in MODALITIES if s != t]
            h = self.memory[t](torch.cat(crossed, dim=-1), pads[t])  # (B, Lt, 2d)
            summaries.append(h[torch.arange(h.shape[0], device=h.device), last[t]])  # last valid step: (B, 2d)
        hs = torch.cat(summaries, dim=-1)  # (B, 6d)
        hs = hs + self.proj2(F.dropout(F.relu(self.proj1(hs)), self.config.out_dropout, self.training))
        return ModelOutput(logits=self.head(hs))  # (B, C)


@register_model("mult", MulTConfig, "MulT: crossmodal transformers on unaligned sequences (Tsai et al. 2019)",
                paper="Tsai et al., Multimodal Transformer for Unaligned Multimodal Language Sequences, ACL 2019")
def build(config: MulTConfig) -> MulT:
    return MulT(config)
