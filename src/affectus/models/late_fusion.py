"""Late fusion baseline, in the shape of MMSA's LF-DNN: one small network per modality, fused at the end.

Per modality: length-aware mean pooling of the (B, L, D) features over the true length, BatchNorm
over the feature axis (raw MMSA features have wildly different scales: COVAREP audio vs BERT text),
then a two-layer MLP to a hidden vector and a linear head to 3-class logits. The final logits come
from one learned linear layer over the concatenated hidden vectors. The per-modality logits are
returned too, so a task can train or inspect each branch.

Text is read from `batch.text` (pre-extracted features, e.g. MMSA's 768-d BERT features); this model
has no BERT of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import AffectusError
from affectus.models.layers import check_dims
from affectus.models.output import ModelOutput
from affectus.models.registry import Capabilities, check_model_config, register_model


@dataclass
class LateFusionConfig:
    # Feature size per modality; the default is CMU-MOSI's (BERT 768, COVAREP 5, Facet 20) and is
    # normally replaced by the dataset's `dims`.
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    hidden: int = 64
    dropout: float = 0.2
    num_classes: int = 3

    def validate(self) -> None:
        check_model_config(self, sizes=("hidden",))


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over the first `lengths[b]` steps of x[b]. x (B, L, D), lengths (B,) -> (B, D).

    Lengths are clamped to [1, L]: a zero length (an empty clip) then averages the first step
    instead of dividing by zero, and a length beyond L cannot index padding that is not there.
    """
    steps = x.shape[1]
    lengths = lengths.to(x.device).long().clamp(min=1, max=steps)
    mask = torch.arange(steps, device=x.device)[None, :] < lengths[:, None]  # (B, L)
    summed = (x * mask.unsqueeze(-1).to(x.dtype)).sum(dim=1)  # (B, D)
    return summed / lengths.unsqueeze(-1).to(x.dtype)


class ModalityBranch(nn.Module):
    """Pooled features (B, D) -> hidden vector (B, hidden) and 3-class logits (B, C)."""

    def __init__(self, dim: int, hidden: int, dropout: float, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim)
        self.mlp = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.head = nn.Linear(hidden, num_classes)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        # BatchNorm cannot estimate batch statistics from a single sample in training mode (the last
        # mini-batch of an epoch can hold one); use the running statistics for that batch instead.
        if self.training and x.shape[0] == 1:
            n = self.norm
            return F.batch_norm(x, n.running_mean, n.running_var, n.weight, n.bias, False, 0.0, n.eps)
        return self.norm(x)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.mlp(self._normalise(pooled))  # (B, hidden)
        return hidden, self.head(hidden)  # (B, hidden), (B, C)


class LateFusion(nn.Module):
    def __init__(self, config: LateFusionConfig) -> None:
        super().__init__()
        check_dims("late_fusion", config.dims)
        self.config = config
        self.branches = nn.ModuleDict(
            {
                m: ModalityBranch(int(config.dims[m]), config.hidden, config.dropout, config.num_classes)
                for m in MODALITIES
            }
        )
        self.fusion = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(len(MODALITIES) * config.hidden, config.num_classes),
        )

    def forward(self, batch: Batch) -> ModelOutput:
        hiddens, logits = [], []
        for m in MODALITIES:
            x = getattr(batch, m)  # (B, L, D)
            expected = self.config.dims[m]
            if x.dim() != 3 or x.shape[-1] != expected:
                raise AffectusError(
                    f"late_fusion expects {m} features (B, L, {expected}), got {tuple(x.shape)}"
                )
            h, lg = self.branches[m](masked_mean(x.float(), batch.lengths(m)))
            hiddens.append(h)
            logits.append(lg)
        fused = self.fusion(torch.cat(hiddens, dim=-1))  # (B, C)
        return ModelOutput(logits=fused, modality_logits=torch.stack(logits, dim=1))  # (B, 3, C)


@register_model("late_fusion", LateFusionConfig, "LF-DNN style late fusion baseline",
                capabilities=Capabilities(unimodal_heads=True),
                paper="LF-DNN as in MMSA (Yu et al., ACL 2020, CH-SIMS)")
def build(config: LateFusionConfig) -> LateFusion:
    return LateFusion(config)
