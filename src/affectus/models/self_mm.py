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

Training (`SelfMMTask`, from `make_task`): the multimodal L1 loss on the score, plus the 3-class
cross-entropy (our addition), plus per modality an L1 loss against the label the Unimodal Label
Generation Module (ULGM, sec. 3.3) generates, weighted by tanh(|y_s - y_m|) (eq. 13). ULGM keeps,
per training sample (keyed by `batch.index`), the last hidden vector of each head and each modality's
generated label; class centres are the means of the stored vectors of positive / negative samples
(eq. 6); the label moves by the relative distances to the centres (eqs. 7-11) with momentum (eq. 12).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import AffectusError, SettingError
from affectus.models.late_fusion import masked_mean
from affectus.models.output import ModelOutput
from affectus.models.registry import check_model_config, register_model
from affectus.models.tfn import LSTMSubNet, check_dims, check_features

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


    def make_task(self, train_split, select_split, val_batches, train_cfg) -> SelfMMTask:
        """Self-MM brings its own training task: the multi-task loss with ULGM's label bank."""
        scores = torch.as_tensor(train_split.labels, dtype=torch.float32)
        bound = self.config.label_bound or float(scores.abs().max().clamp(min=1e-6))
        return SelfMMTask(scores, self.feature_dims(), val_batches, bound, self.config.ce_weight)


class SelfMMTask:
    """Multi-task training with ULGM (Self-MM sec. 3.3-3.4); selects on the validation multimodal loss
    (L1 + ce_weight * CE). Banks live on the CPU, indexed by the training split's sample index."""

    name = "train"

    def __init__(self, scores: torch.Tensor, feature_dims: dict[str, int], val_batches: Callable[[], Iterable[Batch]],
                 bound: float, ce_weight: float) -> None:
        n = scores.shape[0]
        self.val_batches = val_batches
        self.bound = bound
        self.ce_weight = ce_weight
        self.epoch = 0
        # generated labels, one row per head; the fusion row is the multimodal label and never moves
        self.labels = scores[None, :].repeat(len(HEADS), 1)  # (4, N)
        self.features = {h: torch.zeros(n, feature_dims[h]) for h in HEADS}  # head -> (N, dim)
        self.centres = {h: torch.zeros(2, feature_dims[h]) for h in HEADS}  # head -> (pos, neg) (2, dim)
        self.best_loss = float("inf")
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    # -- the loop's protocol -------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def loss(self, model, batch: Batch):
        out = model.multitask_forward(batch)
        index = batch.index.cpu()
        dev = out.logits.device
        targets = self.labels[:, index].to(dev)  # (4, B), the labels before this batch moves them
        y_m = targets[0]
        l1_m = (out.scores["fusion"] - y_m).abs().mean()
        ce = F.cross_entropy(out.logits, batch.classes)
        total = l1_m + self.ce_weight * ce
        parts = {"l1_m": l1_m.item(), "ce": ce.item()}
        for k, m in enumerate(MODALITIES, start=1):
            # eq. 13: a modality whose generated label strays from y_m weighs more
            weight = torch.tanh((targets[k] - y_m).abs())
            l1_s = (weight * (out.scores[m] - targets[k]).abs()).mean()
            total = total + l1_s
            parts[f"l1_{m}"] = l1_s.item()
        parts["loss"] = total.item()
        self._ulgm_step({h: f.detach().float().cpu() for h, f in out.features.items()}, index)
        return total, parts

    def after_step(self, model) -> None:
        pass

    def validate(self, model) -> dict[str, float]:
        l1 = ce = 0.0
        n = 0
        for batch in self.val_batches():
            batch = batch.to(next(model.parameters()).device)
            out = model(batch)
            l1 += (out.regression - batch.scores.float()).abs().sum().item()
            ce += F.cross_entropy(out.logits, batch.classes, reduction="sum").item()
            n += len(batch)
        l1, ce = l1 / max(n, 1), ce / max(n, 1)
        return {"loss": l1 + self.ce_weight * ce, "l1": l1, "ce": ce}

    def end_epoch(self, epoch: int, model, val: dict[str, float]) -> bool:
        if val["loss"] < self.best_loss:
            self.best_loss = val["loss"]
            self.best_epoch = epoch
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "labels": self.labels.clone(),
            "features": {h: f.clone() for h, f in self.features.items()},
            "centres": {h: c.clone() for h, c in self.centres.items()},
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.labels = state["labels"].clone()
        self.features = {h: f.clone() for h, f in state["features"].items()}
        self.centres = {h: c.clone() for h, c in state["centres"].items()}
        self.best_loss = state["best_loss"]
        self.best_epoch = state["best_epoch"]
        self.best_state = copy.copy(state["best_state"])

    # -- ULGM ---------------------------------------------------------------------------------
    def _ulgm_step(self, feats: dict[str, torch.Tensor], index: torch.Tensor) -> None:
        # As MMSA: labels move from the second epoch on (the centres need one pass of features first),
        # using the centres of the previous batch; then this batch's vectors enter the bank.
        if self.epoch > 1:
            self._update_labels(feats, index)
        for h in HEADS:
            self.features[h][index] = feats[h]
        self._update_centres()

    def _update_centres(self) -> None:
        """Eq. 6: per head, mean stored vector of the samples whose (own) label is > 0 / < 0 (zeros
        excluded, MMSA's excludeZero). An empty class keeps its previous centre instead of NaN."""
        for k, h in enumerate(HEADS):
            for row, mask in enumerate((self.labels[k] > 0, self.labels[k] < 0)):
                if bool(mask.any()):
                    self.centres[h][row] = self.features[h][mask].mean(dim=0)

    def _relative_distance(self, head: str, f: torch.Tensor) -> torch.Tensor:
        """Eqs. 7-9: (d_neg - d_pos) / d_pos, positive when f sits nearer the positive centre. (B,)"""
        pos, neg = self.centres[head]
        d_p = torch.linalg.vector_norm(f - pos, dim=-1)
        d_n = torch.linalg.vector_norm(f - neg, dim=-1)
        return (d_n - d_p) / (d_p + 1e-8)

    def _update_labels(self, feats: dict[str, torch.Tensor], index: torch.Tensor) -> None:
        y_m = self.labels[0, index]
        delta_f = self._relative_distance("fusion", feats["fusion"])
        n = self.epoch
        for k, m in enumerate(MODALITIES, start=1):
            delta_s = self._relative_distance(m, feats[m])
            alpha = delta_s / (delta_f + 1e-8)
            # eq. 11: the mean of the ratio form (alpha * y_m) and the difference form (y_m + delta_s - delta_f)
            new = (0.5 * alpha * y_m + 0.5 * (y_m + delta_s - delta_f)).clamp(-self.bound, self.bound)
            # eq. 12: momentum over epochs, older labels weigh (n - 1) / (n + 1)
            self.labels[k, index] = (n - 1) / (n + 1) * self.labels[k, index] + 2 / (n + 1) * new


@register_model("self_mm", SelfMMConfig, "Self-MM: multi-task with self-supervised unimodal labels (Yu et al. 2021)",
                recipe="affectus.training.recipes.supervised:SelfMMRecipe")
def build(config: SelfMMConfig) -> SelfMM:
    return SelfMM(config)
