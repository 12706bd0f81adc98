"""The typed output every model returns from `forward(batch)`."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, C) final prediction (3-class logits, or (B, 1) for regression models)
    modality_logits: torch.Tensor | None = None  # (B, 3, C): per-modality predictions, order text/audio/vision
    router_weights: torch.Tensor | None = None  # (B, 3): MCR weights (eq. 13), order text/audio/vision
    embeddings: torch.Tensor | None = None  # (B, 3, d): L2-normalised unimodal vectors h_k (eq. 4), before PFM
    regression: torch.Tensor | None = None  # (B,) a score output, for models that also regress
    # models with several experts per modality (CMC+ may read two text views): per expert, in the
    # model's expert order, its calibrated log-probabilities (B, K, C) and effective weight (B, K)
    expert_logits: torch.Tensor | None = None
    expert_weights: torch.Tensor | None = None
