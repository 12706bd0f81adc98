"""MCUR: Modality-aware Contrastive and Uncertainty-Regularised emotion recognition (docs/mcur.md).

The seed paper is a summary without equations or code; every choice below is ours and docs/mcur.md
says why, with the alternative we rejected. The network:

1. per modality k, the encoder CMC uses for f_k (`UnimodalEncoder`: BatchNorm -> Conv1d(k=1) -> pre-norm
   Transformer -> mean over the true length -> L2 norm) with masked padding, run on the samples
   that have modality k only: h_k (B, d);
2. an absent modality is replaced by a learned, L2-normalised "missing" vector m_k, so the fusion
   knows which combination it sees: h~_k = h_k if present else m_k;
3. fusion: z = MLP(sqrt(d) [h~_t; h~_a; h~_v]) (B, fused): the unit vectors' entries are ~1/sqrt(d), the
   factor gives the MLP inputs of unit scale (without it training crawled: the logits start near
   zero and stay there for many epochs); the classifier reads z (logits (B, C)); MCB-CL
   contrasts normalize(z); the SUGR head reads z and gives a per-sample log-variance s (B,),
   bounded to [-s_max, s_max] by s = s_max * tanh(raw / s_max).

`forward(batch)` -> ModelOutput(logits, embeddings=h~ (B, 3, d)); the recipe
(training/recipes/mcur.py) calls `represent(batch)` for z and s as well. Prediction never reads a
label: labels enter the loss only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import AffectusError
from affectus.models.layers import UnimodalEncoder
from affectus.models.output import ModelOutput
from affectus.models.registry import register_model


@dataclass
class MCURConfig:
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    d: int = 32  # unimodal width (CMC's)
    layers: int = 1  # Transformer layers per encoder
    heads: int = 4
    ff: int = 64
    attn_dropout: float = 0.1
    fused: int = 64  # width of the fused representation z
    output_dropout: float = 0.3  # before the classifier
    uncertainty_bound: float = 3.0  # s_max: per-sample weights exp(-s) stay in [e^-3, e^3]
    text_batchnorm: bool = False  # as CMC: BERT-like text states need none
    num_classes: int = 3

    def validate(self) -> None:
        if self.d % self.heads:
            raise AffectusError(f"mcur: model.d = {self.d} must be a multiple of model.heads = {self.heads}")
        if not self.uncertainty_bound > 0:
            raise AffectusError(f"mcur: model.uncertainty_bound = {self.uncertainty_bound}: expected > 0")


@dataclass
class MCURParts:
    """Everything the recipe's losses read from one forward pass."""

    logits: torch.Tensor  # (B, C)
    z: torch.Tensor  # (B, fused) the fused representation (MCB-CL contrasts its L2-normalised rows)
    log_var: torch.Tensor  # (B,) s_i, SUGR's per-sample log-variance; weight exp(-s_i)
    h: torch.Tensor  # (B, 3, d) unimodal vectors, absent ones replaced by the missing vectors
    available: torch.Tensor  # (B, 3) bool


class MCUR(nn.Module):
    def __init__(self, config: MCURConfig) -> None:
        super().__init__()
        missing = [m for m in MODALITIES if m not in config.dims]
        if missing:
            raise AffectusError(f"mcur config dims lack {', '.join(missing)}: expected text, audio, vision")
        config.validate()
        self.config = config
        self.encoders = nn.ModuleDict({
            m: UnimodalEncoder(int(config.dims[m]), d=config.d, layers=config.layers, heads=config.heads,
                               ff=config.ff, dropout=config.attn_dropout,
                               batchnorm=m != "text" or config.text_batchnorm, padding="masked")
            for m in MODALITIES
        })
        self.missing = nn.Parameter(torch.randn(len(MODALITIES), config.d) * 0.1)  # m_k, (3, d)
        self.fusion = nn.Sequential(nn.Linear(len(MODALITIES) * config.d, config.fused), nn.ReLU(),
                                    nn.Linear(config.fused, config.fused))
        self.dropout = nn.Dropout(config.output_dropout)
        self.classifier = nn.Linear(config.fused, config.num_classes)
        self.uncertainty = nn.Linear(config.fused, 1)

    def _encode(self, batch: Batch, available: torch.Tensor) -> torch.Tensor:
        """h~ (B, 3, d): each encoder runs on the samples that have its modality (absent inputs would
        only pollute BatchNorm's statistics); the others get the missing vector m_k."""
        b = len(batch)
        missing = F.normalize(self.missing, dim=-1)  # (3, d)
        rows = []
        for k, m in enumerate(MODALITIES):
            x = getattr(batch, m).float()  # (B, L, D)
            if x.dim() != 3 or x.shape[-1] != int(self.config.dims[m]):
                raise AffectusError(f"mcur expects {m} features (B, L, {self.config.dims[m]}), got {tuple(x.shape)}")
            present = available[:, k]  # (B,)
            h = missing[k].unsqueeze(0).repeat(b, 1)  # (B, d)
            if bool(present.any()):
                idx = torch.nonzero(present).squeeze(1)
                enc = self.encoders[m](x[idx], batch.lengths(m)[idx])  # (n_k, d)
                h = h.index_put((idx,), enc)  # out of place: autograd sees both sources
            rows.append(h)
        return torch.stack(rows, dim=1)  # (B, 3, d)

    def represent(self, batch: Batch) -> MCURParts:
        available = batch.availability().to(batch.index.device).bool()  # (B, 3)
        h = self._encode(batch, available)  # (B, 3, d)
        z = self.fusion(h.reshape(len(batch), -1) * self.config.d**0.5)  # (B, fused), unit-scale inputs
        logits = self.classifier(self.dropout(F.relu(z)))  # (B, C)
        bound = self.config.uncertainty_bound
        log_var = bound * torch.tanh(self.uncertainty(z).squeeze(-1) / bound)  # (B,) in (-s_max, s_max)
        return MCURParts(logits, z, log_var, h, available)

    def forward(self, batch: Batch) -> ModelOutput:
        parts = self.represent(batch)
        return ModelOutput(logits=parts.logits, embeddings=parts.h)


@register_model("mcur", MCURConfig, "MCUR: modality-combination contrastive learning + sample-wise uncertainty",
                recipe="affectus.training.recipes.mcur:MCURRecipe", variants="mcur.yaml")
def build(config: MCURConfig) -> MCUR:
    return MCUR(config)
