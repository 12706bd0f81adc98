"""TFN: Tensor Fusion Network (Zadeh et al., EMNLP 2017, "Tensor Fusion Network for Multimodal
Sentiment Analysis"), in the shape of MMSA's `models/singleTask/TFN.py`.

Per modality a sub-network gives a vector: audio and vision are mean-pooled over their true length
(MMSA feeds TFN time-averaged features) and go through BatchNorm -> dropout -> three Linear+ReLU
layers (the paper's "Audio/Visual Embedding Subnetworks"); text runs through an LSTM (packed by the
true text length; MMSA runs it over the padding too) whose final hidden state is projected to
`text_out` (the "Language Embedding Subnetwork"). Fusion (paper eq. 1) is the 3-fold outer product
of [h_a; 1] (x) [h_v; 1] (x) [h_t; 1], flattened: the appended 1 keeps every unimodal and bimodal term
alongside the trimodal ones. Two Linear+ReLU layers and a linear head give 3-class logits (MMSA
regresses one score through a scaled sigmoid instead).

The small helpers at the bottom (`check_features`, `lstm_last_hidden`, `batchnorm_any_batch`) are
shared by the other LSTM baselines (EF-LSTM, Self-MM).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import AffectusError
from affectus.models.late_fusion import masked_mean
from affectus.models.layers import check_dims
from affectus.models.output import ModelOutput
from affectus.models.registry import check_model_config, register_model


@dataclass
class TFNConfig:
    # Input feature size per modality (default: CMU-MOSI's BERT 768 / COVAREP 5 / Facet 20); set from data.
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    # MMSA config_regression.json, tfn / mosi: hidden_dims [128, 32, 128] (text, audio, vision),
    # text_out 32, post_fusion_dim 64, dropouts [0.3, 0.3, 0.3, 0.5] (audio, vision, text, post-fusion).
    text_hidden: int = 128
    audio_hidden: int = 32
    vision_hidden: int = 128
    text_out: int = 32
    post_fusion_dim: int = 64
    audio_dropout: float = 0.3
    vision_dropout: float = 0.3
    text_dropout: float = 0.3
    post_fusion_dropout: float = 0.5
    num_classes: int = 3

    def validate(self) -> None:
        check_model_config(self, sizes=("text_hidden", "audio_hidden", "vision_hidden", "text_out", "post_fusion_dim"))


class PooledSubNet(nn.Module):
    """Audio / vision embedding sub-network: (B, D) pooled features -> (B, hidden)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim)  # raw COVAREP / Facet features have very different scales
        self.drop = nn.Dropout(dropout)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.drop(batchnorm_any_batch(self.norm, x)))


class LSTMSubNet(nn.Module):
    """Sequence sub-network: (B, L, D) + lengths -> final LSTM state -> dropout -> Linear -> (B, out)."""

    def __init__(self, dim: int, hidden: int, out: int, dropout: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.proj(self.drop(lstm_last_hidden(self.lstm, x, lengths)))


class TFN(nn.Module):
    def __init__(self, config: TFNConfig) -> None:
        super().__init__()
        check_dims("tfn", config.dims)
        c = config
        self.config = c
        self.audio_net = PooledSubNet(int(c.dims["audio"]), c.audio_hidden, c.audio_dropout)
        self.vision_net = PooledSubNet(int(c.dims["vision"]), c.vision_hidden, c.vision_dropout)
        self.text_net = LSTMSubNet(int(c.dims["text"]), c.text_hidden, c.text_out, c.text_dropout)
        fused = (c.audio_hidden + 1) * (c.vision_hidden + 1) * (c.text_out + 1)  # eq. 1: size of z^m
        self.post_fusion = nn.Sequential(
            nn.Dropout(c.post_fusion_dropout),
            nn.Linear(fused, c.post_fusion_dim),
            nn.ReLU(),
            nn.Linear(c.post_fusion_dim, c.post_fusion_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(c.post_fusion_dim, c.num_classes)

    def forward(self, batch: Batch) -> ModelOutput:
        check_features("tfn", batch, self.config.dims)
        h_a = self.audio_net(masked_mean(batch.audio.float(), batch.audio_lengths))  # (B, Ha)
        h_v = self.vision_net(masked_mean(batch.vision.float(), batch.vision_lengths))  # (B, Hv)
        h_t = self.text_net(batch.text.float(), batch.text_lengths)  # (B, To)
        ones = h_a.new_ones(h_a.shape[0], 1)
        z_a, z_v, z_t = (torch.cat([ones, h], dim=1) for h in (h_a, h_v, h_t))
        # eq. 1: outer product of the three [h; 1] vectors, flattened: (B, (Ha+1)(Hv+1)(To+1))
        z = torch.einsum("ba,bv,bt->bavt", z_a, z_v, z_t).flatten(1)
        return ModelOutput(logits=self.head(self.post_fusion(z)))  # (B, C)


@register_model("tfn", TFNConfig, "TFN: tensor fusion of [h;1] outer products (Zadeh et al. 2017)",
                paper="Zadeh et al., Tensor Fusion Network for Multimodal Sentiment Analysis, EMNLP 2017")
def build(config: TFNConfig) -> TFN:
    return TFN(config)


# ---- helpers shared by the LSTM baselines -----------------------------------------------------------


def check_features(model: str, batch: Batch, dims: dict[str, int]) -> None:
    """One-line error when a modality's features are not (B, L, dims[m])."""
    for m in MODALITIES:
        x = getattr(batch, m)
        if x.dim() != 3 or x.shape[-1] != dims[m]:
            raise AffectusError(f"{model} expects {m} features (B, L, {dims[m]}), got {tuple(x.shape)}")


def lstm_last_hidden(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Top-layer hidden state of a (unidirectional) LSTM after each sample's true length.

    x (B, L, D), lengths (B,) -> (B, H). Packing keeps the padding out of the recurrence; lengths are
    clamped to [1, L] so an empty clip reads its first (padding) step instead of failing.
    """
    lengths = lengths.detach().to("cpu", torch.int64).clamp(min=1, max=x.shape[1])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    _, (h, _) = lstm(packed)  # h (layers, B, H), already back in batch order
    return h[-1]


def batchnorm_any_batch(norm: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm that also takes a single row in training mode (using the running statistics then),
    since batch statistics cannot be estimated from one sample."""
    if norm.training and x.shape[0] == 1:
        return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
    return norm(x)
