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
   bounded to (s_min, s_max) = (0, 3) by a tanh (s_min = -s_max: s = s_max * tanh(raw / s_max));
4. per-modality heads u_k(h_k) (B, 3, C) (`unimodal_heads`, trained in the recipe's stage 0), and the
   verdict logits = classifier(z) + sum of u_k over the present modalities (`unimodal_prior`): the
   fused path corrects what each present modality says alone.

`forward(batch)` -> ModelOutput(logits, embeddings=h~ (B, 3, d)); the recipe
(training/recipes/mcur.py) calls `represent(batch)` for z, s and the heads' logits as well. Prediction never reads a
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
from affectus.models.layers import UnimodalEncoder, check_dims
from affectus.models.output import ModelOutput
from affectus.models.registry import Capabilities, register_model


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
    uncertainty_bound: float = 3.0  # s_max: per-sample weights exp(-s) stay in [e^-s_max, e^-s_min]
    # s_min: the lower end of s. 0 (ours): SUGR only attenuates, weights in [e^-3, 1]; -s_max (the
    # first, symmetric reading, variant `faithful`): easy samples can weigh up to e^3 (docs/mcur.md)
    uncertainty_floor: float = 0.0
    unimodal_heads: bool = True  # a linear classifier per modality on h_k (trained in the recipe's stage 0)
    # the verdict adds the present modalities' head logits to the fused classifier's (a product of
    # experts: the fused path learns a correction to what each modality says on its own)
    unimodal_prior: bool = True
    text_batchnorm: bool = False  # as CMC: BERT-like text states need none
    num_classes: int = 3

    def validate(self) -> None:
        if self.d % self.heads:
            raise AffectusError(f"mcur: model.d = {self.d} must be a multiple of model.heads = {self.heads}")
        if self.unimodal_prior and not self.unimodal_heads:
            raise AffectusError("mcur: model.unimodal_prior needs model.unimodal_heads = true")
        if not self.uncertainty_bound > 0:
            raise AffectusError(f"mcur: model.uncertainty_bound = {self.uncertainty_bound}: expected > 0")
        if not -self.uncertainty_bound <= self.uncertainty_floor < self.uncertainty_bound:
            raise AffectusError(f"mcur: model.uncertainty_floor = {self.uncertainty_floor}: expected a value in "
                                f"[-uncertainty_bound, uncertainty_bound) = [{-self.uncertainty_bound}, "
                                f"{self.uncertainty_bound})")


@dataclass
class MCURParts:
    """Everything the recipe's losses read from one forward pass."""

    logits: torch.Tensor  # (B, C)
    z: torch.Tensor  # (B, fused) the fused representation (MCB-CL contrasts its L2-normalised rows)
    log_var: torch.Tensor  # (B,) s_i, SUGR's per-sample log-variance; weight exp(-s_i)
    h: torch.Tensor  # (B, 3, d) unimodal vectors, absent ones replaced by the missing vectors
    available: torch.Tensor  # (B, 3) bool
    unimodal_logits: torch.Tensor | None = None  # (B, 3, C) per-modality heads on h_k (absent rows: unused)


class MCUR(nn.Module):
    def __init__(self, config: MCURConfig) -> None:
        super().__init__()
        check_dims("mcur", config.dims)
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
        # auxiliary per-modality classifiers: training signal for each encoder on its own (docs/mcur.md)
        self.unimodal = (nn.ModuleList(nn.Linear(config.d, config.num_classes) for _ in MODALITIES)
                         if config.unimodal_heads else None)

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
        # s in (s_min, s_max): centre c and half-width r of the range, s = c + r tanh((raw - c) / r); with
        # s_min = -s_max this is s_max tanh(raw / s_max); raw = c maps to c, as raw = 0 did there
        lo, hi = self.config.uncertainty_floor, self.config.uncertainty_bound
        c, r = (hi + lo) / 2, (hi - lo) / 2
        log_var = c + r * torch.tanh((self.uncertainty(z).squeeze(-1) - c) / r)  # (B,)
        uni = None
        if self.unimodal is not None:
            uni = torch.stack([head(self.dropout(h[:, k] * self.config.d**0.5))
                               for k, head in enumerate(self.unimodal)], dim=1)  # (B, 3, C)
            if self.config.unimodal_prior:  # absent modalities' heads read m_k: left out
                logits = logits + (uni * available.unsqueeze(-1).to(uni.dtype)).sum(dim=1)  # (B, C)
        return MCURParts(logits, z, log_var, h, available, uni)

    def forward(self, batch: Batch) -> ModelOutput:
        parts = self.represent(batch)
        return ModelOutput(logits=parts.logits, embeddings=parts.h)


@register_model("mcur", MCURConfig, "MCUR: modality-combination contrastive learning + sample-wise uncertainty",
                recipe="affectus.training.recipes.mcur:MCURRecipe", variants="mcur.yaml", family="seed",
                paper="MCUR: modality-combination contrast and sample-wise uncertainty (the seeds' MCUR paper)",
                capabilities=lambda c: Capabilities(unimodal_heads=c.unimodal_heads, extra_forward=("represent",),
                                                    idle_when_complete=("missing",), excludes_absent=True))  # vectors for absent modalities
def build(config: MCURConfig) -> MCUR:
    return MCUR(config)
