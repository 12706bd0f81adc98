"""A plain re-implementation of CMC in the field's usual PyTorch idiom: the speed reference.

Per modality: (audio / vision) BatchNorm1d over the feature axis -> Conv1d(k=1, no bias) ->
`nn.TransformerEncoder` of pre-norm `nn.TransformerEncoderLayer`s (no mask, no positional
encoding, no final LayerNorm) -> mean over all time steps (padding included) -> L2 norm; then the
residual heads, PFM and the router exactly as `affectus.models.cmc.CMC.forward`. Parameter names
follow PyTorch's modules, so `reference_to_cmc_state` maps a state dict onto `CMC`.

This file is deliberately not optimised: `benchmarks/bench_speed.py` measures our encoder
against it, and checks that both compute the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from affectus.models.layers import convert_torch_encoder_state

MODALITIES = ("text", "audio", "vision")


class PlainEncoder(nn.Module):
    def __init__(self, in_dim: int, d: int, layers: int, heads: int, batchnorm: bool, dropout: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_dim) if batchnorm else None
        self.proj = nn.Conv1d(in_dim, d, kernel_size=1, bias=False)
        layer = nn.TransformerEncoderLayer(
            d,
            heads,
            dim_feedforward=128,
            dropout=dropout,
            activation="relu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # (B, D, L)
        if self.bn is not None:
            x = self.bn(x)
        x = self.proj(x).transpose(1, 2)  # (B, L, d)
        x = self.transformer(x)  # (B, L, d)
        return F.normalize(x.mean(dim=1), dim=-1)  # (B, d)


class PlainHead(nn.Module):
    def __init__(self, d: int, dropout: float, num_classes: int = 3):
        super().__init__()
        self.proj1 = nn.Linear(d, d)
        self.proj2 = nn.Linear(d, d)
        self.out = nn.Linear(d, num_classes)
        self.dropout = dropout

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h2 = self.proj2(F.dropout(F.relu(self.proj1(h)), self.dropout, self.training)) + h
        return self.out(h2)


class PlainRouter(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.linear = nn.Linear(d, 3)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(h), dim=-1)


class PlainCMC(nn.Module):
    def __init__(
        self,
        dims: dict[str, int],
        layers: int,
        heads: int,
        output_dropout: float,
        tau: float = 0.07,
        attn_dropout: float = 0.1,
        d: int = 32,
    ):
        super().__init__()
        self.tau = tau
        self.encoders = nn.ModuleDict(
            {m: PlainEncoder(dims[m], d, layers, heads, m != "text", attn_dropout) for m in MODALITIES}
        )
        self.heads = nn.ModuleDict({m: PlainHead(d, output_dropout) for m in MODALITIES})
        self.router = PlainRouter(d)

    def forward(self, text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor):
        feats = {"text": text, "audio": audio, "vision": vision}
        h = torch.stack([self.encoders[m](feats[m]) for m in MODALITIES], dim=1)  # (B, 3, d)
        s = torch.softmax(h @ h.transpose(1, 2) / self.tau, dim=-1)  # (B, 3, 3)
        hf = s @ h  # (B, 3, d)
        logits = torch.stack([self.heads[m](hf[:, k]) for k, m in enumerate(MODALITIES)], dim=1)  # (B, 3, C)
        w = self.router(hf.sum(dim=1))  # (B, 3)
        return (w.unsqueeze(-1) * logits).sum(dim=1), logits, w, h


def reference_to_cmc_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a `PlainCMC` state dict to `CMC`'s parameter names (`encoders.k` / `heads.k` live in
    CMC's `branches.k`)."""
    out = {}
    for name, value in convert_torch_encoder_state(state).items():
        first, _, rest = name.partition(".")
        if first in ("encoders", "heads"):  # encoders.audio.x -> branches.audio.encoder.x
            modality, _, rest = rest.partition(".")
            name = f"branches.{modality}.{first[:-1]}.{rest}"
        out[name] = value
    return out
