"""Self-MM's recipe (Yu et al. 2021): one stage with its own task, the multi-task loss with ULGM's label bank.

The model (`models/self_mm.py`) is the network; how it learns (ULGM's self-supervised unimodal labels,
eqs. 6-12) lives here, so loading a Self-MM run for inference imports none of it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.models.self_mm import HEADS
from affectus.training.recipes.base import RecipeContext
from affectus.training.recipes.supervised import SupervisedRecipe


class SelfMMRecipe(SupervisedRecipe):
    def make_task(self, ctx: RecipeContext) -> SelfMMTask:
        model = ctx.model
        scores = torch.as_tensor(ctx.train_split.labels, dtype=torch.float32)
        bound = model.config.label_bound or float(scores.abs().max().clamp(min=1e-6))
        return SelfMMTask(scores, model.feature_dims(), ctx.eval_batches(ctx.select_split), bound,
                          model.config.ce_weight)


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
        parts = {"l1_m": l1_m.detach(), "ce": ce.detach()}
        for k, m in enumerate(MODALITIES, start=1):
            # eq. 13: a modality whose generated label strays from y_m weighs more
            weight = torch.tanh((targets[k] - y_m).abs())
            l1_s = (weight * (out.scores[m] - targets[k]).abs()).mean()
            total = total + l1_s
            parts[f"l1_{m}"] = l1_s.detach()
        parts["loss"] = total.detach()
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
