"""Self-MM (Yu et al., AAAI 2021, "Learning Modality-Specific Representations with Self-Supervised
Multi-Task Learning for Multimodal Sentiment Analysis"), after MMSA's `models/multiTask/SELF_MM.py`
and `trains/multiTask/SELF_MM.py`.

Model: text / audio / vision representations -> four heads, each two Linear+ReLU layers and a scalar
output: the multimodal head on the concatenation [F_t; F_a; F_v], one unimodal head per modality.
Audio and vision: an LSTM packed by true length, final state -> dropout -> Linear (MMSA's AuViSubNet).
Text: MMSA fine-tunes BERT and takes [CLS]; here text is the precomputed `batch.text` features, either
mean-pooled over the true text length (`text_encoder="mean"`, the default: no trainable text encoder,
like a frozen BERT) or read by a small LSTM (`"lstm"`). One addition: a 3-class head on the
multimodal hidden layer, so the logits every metric of the toolkit reads are meaningful; the
multimodal score is returned as `ModelOutput.regression`.

Training (`SelfMMTask` in training/recipes/self_mm.py): the multimodal L1 loss on the score, plus the 3-class
cross-entropy (our addition), plus per modality an L1 loss against the label the Unimodal Label
Generation Module (ULGM, sec. 3.3) generates, weighted by tanh(|y_s - y_m|) (eq. 13). ULGM keeps,
per training sample (keyed by `batch.index`), the last hidden vector of each head and each modality's
generated label; class centres are the means of the stored vectors of positive / negative samples
(eq. 6); the label moves by the relative distances to the centres (eqs. 7-11) with momentum (eq. 12).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import AffectusError, SettingError
from affectus.models.late_fusion import masked_mean
from affectus.models.layers import check_dims
from affectus.models.output import ModelOutput
from affectus.models.registry import Capabilities, check_model_config, register_model
from affectus.models.tfn import LSTMSubNet, check_features

HEADS = ("fusion", "text", "audio", "vision")  # ULGM's bank order: the multimodal head first


@dataclass
class SelfMMConfig:
    # Input feature size per modality (default: CMU-MOSI's 768 / 5 / 20); set from data.
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    text_encoder: str = "mean"  # mean | lstm (MMSA: fine-tuned BERT [CLS]; see the module docstring)
    text_hidden: int = 64  # lstm only: LSTM width and output size
    # MMSA config_regression.json, self_mm / mosi:
    audio_hidden: int = 16  # a_lstm_hidden_size
    vision_hidden: int = 32  # v_lstm_hidden_size
    audio_out: int = 16
    vision_out: int = 32
    post_fusion_dim: int = 128
    post_text_dim: int = 32
    post_audio_dim: int = 16
    post_vision_dim: int = 32
    post_fusion_dropout: float = 0.0
    post_text_dropout: float = 0.1
    post_audio_dropout: float = 0.1
    post_vision_dropout: float = 0.0
    # ULGM / loss
    label_bound: float = 0.0  # H: generated labels are clamped to [-H, H]; 0 = max |score| in the training split
    ce_weight: float = 1.0  # weight of the 3-class cross-entropy (our addition)
    num_classes: int = 3

    def validate(self) -> None:
        check_model_config(self, sizes=("text_hidden", "audio_hidden", "vision_hidden", "audio_out", "vision_out",
                                        "post_fusion_dim", "post_text_dim", "post_audio_dim", "post_vision_dim"))
        if self.text_encoder not in ("mean", "lstm"):
            raise SettingError("model.text_encoder", self.text_encoder, "mean or lstm")


@dataclass
class SelfMMOutput:
    """Everything the multi-task loss needs: scores (B,) and last hidden vectors (B, post_dim) per head."""

    logits: torch.Tensor  # (B, C)
    scores: dict[str, torch.Tensor]  # head -> (B,)
    features: dict[str, torch.Tensor]  # head -> (B, post_dim)


class ScoreHead(nn.Module):
    """dropout -> Linear+ReLU -> Linear+ReLU -> Linear to a scalar. Returns (hidden after the first
    layer, which ULGM stores as MMSA does, hidden after the second, score)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.layer1 = nn.Linear(dim, hidden)
        self.layer2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h1 = F.relu(self.layer1(self.drop(x)))
        h2 = F.relu(self.layer2(h1))
        return h1, h2, self.out(h2).squeeze(-1)


class SelfMM(nn.Module):
    def __init__(self, config: SelfMMConfig) -> None:
        super().__init__()
        check_dims("self_mm", config.dims)
        if config.text_encoder not in ("mean", "lstm"):
            raise AffectusError(f"self_mm text_encoder must be 'mean' or 'lstm', got {config.text_encoder!r}")
        c = config
        self.config = c
        dims = {m: int(c.dims[m]) for m in MODALITIES}
        self.text_net = LSTMSubNet(dims["text"], c.text_hidden, c.text_hidden, 0.0) if c.text_encoder == "lstm" else None
        text_out = c.text_hidden if self.text_net is not None else dims["text"]
        self.audio_net = LSTMSubNet(dims["audio"], c.audio_hidden, c.audio_out, 0.0)  # MMSA a_lstm_dropout 0
        self.vision_net = LSTMSubNet(dims["vision"], c.vision_hidden, c.vision_out, 0.0)
        self.heads = nn.ModuleDict({
            "fusion": ScoreHead(text_out + c.audio_out + c.vision_out, c.post_fusion_dim, c.post_fusion_dropout),
            "text": ScoreHead(text_out, c.post_text_dim, c.post_text_dropout),
            "audio": ScoreHead(c.audio_out, c.post_audio_dim, c.post_audio_dropout),
            "vision": ScoreHead(c.vision_out, c.post_vision_dim, c.post_vision_dropout),
        })
        self.classifier = nn.Linear(c.post_fusion_dim, c.num_classes)

    def feature_dims(self) -> dict[str, int]:
        c = self.config
        return {"fusion": c.post_fusion_dim, "text": c.post_text_dim, "audio": c.post_audio_dim,
                "vision": c.post_vision_dim}

    def multitask_forward(self, batch: Batch) -> SelfMMOutput:
        check_features("self_mm", batch, self.config.dims)
        text = batch.text.float()
        if self.text_net is None:
            f_t = masked_mean(text, batch.text_lengths)  # (B, Dt)
        else:
            f_t = self.text_net(text, batch.text_lengths)  # (B, text_hidden)
        f_a = self.audio_net(batch.audio.float(), batch.audio_lengths)  # (B, audio_out)
        f_v = self.vision_net(batch.vision.float(), batch.vision_lengths)  # (B, vision_out)
        inputs = {"fusion": torch.cat([f_t, f_a, f_v], dim=-1), "text": f_t, "audio": f_a, "vision": f_v}
        scores, features, logits = {}, {}, None
        for name in HEADS:
            h1, h2, scores[name] = self.heads[name](inputs[name])
            features[name] = h1
            if name == "fusion":
                logits = self.classifier(h2)  # (B, C)
        return SelfMMOutput(logits=logits, scores=scores, features=features)

    def forward(self, batch: Batch) -> ModelOutput:
        out = self.multitask_forward(batch)
        return ModelOutput(logits=out.logits, regression=out.scores["fusion"])


@register_model("self_mm", SelfMMConfig, "Self-MM: multi-task with self-supervised unimodal labels (Yu et al. 2021)",
                recipe="affectus.training.recipes.self_mm:SelfMMRecipe",
                capabilities=Capabilities(extra_forward=("multitask_forward",)),
                paper="Yu et al., Learning Modality-Specific Representations with Self-Supervised Multi-Task Learning, AAAI 2021")
def build(config: SelfMMConfig) -> SelfMM:
    return SelfMM(config)
