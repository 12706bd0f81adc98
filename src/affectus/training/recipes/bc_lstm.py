"""bc-LSTM's recipe (docs/baselines/bc_lstm.md): the hierarchical framework's two levels trained in turn, as
the authors' lstm.py does (`--unimodal True`, then the multimodal network on the saved unimodal features).

- stage 0 (`unimodal`): every modality's contextual LSTM with its own softmax classifier; the loss is the
  sum of the three cross-entropies over the samples that have the modality, and each modality keeps the
  weights of the epoch with its own lowest selection-split cross-entropy (the authors train and early-stop
  each modality in a run of its own). A modality the training split lacks (MELD's audio and vision) is
  not trained; its features are zero at the fusion input anyway.
- stage 1 (`fusion`): level 1 frozen (weights and dropout), the fusion bc-LSTM trained on the verdict's
  cross-entropy, the epoch with the lowest selection-split cross-entropy kept.

Optimiser: Adadelta (lr 1.0, rho 0.95: Keras' defaults), the authors' `optimizer='adadelta'`;
`recipe.optimizer = adam` uses `train.lr` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from affectus.data.types import MODALITIES
from affectus.errors import AffectusError
from affectus.training.recipes.base import FrozenPart, RecipeContext, RecipeResult
from affectus.training.tasks import SelectsBestPerModality, SupervisedTask

OPTIMIZERS = ("adadelta", "adam")


@dataclass
class BCLSTMRecipeConfig:
    optimizer: str = "adadelta"  # lstm.py: model.compile(optimizer='adadelta'); adam: train.lr
    adadelta_lr: float = 1.0  # Keras' Adadelta default
    adadelta_rho: float = 0.95  # Keras' Adadelta default
    unimodal: bool = True  # False: one stage trains both levels on the verdict's loss (not the paper's)

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise AffectusError(f"recipe.optimizer = {self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
        if not self.adadelta_lr > 0:
            raise AffectusError(f"recipe.adadelta_lr = {self.adadelta_lr}: expected > 0")
        if not 0.0 < self.adadelta_rho < 1.0:
            raise AffectusError(f"recipe.adadelta_rho = {self.adadelta_rho}: expected a value in (0, 1)")


class UnimodalTask(SelectsBestPerModality):
    """Stage 0: each modality's level-1 network on its own classifier; per-modality best epochs."""

    name = "unimodal"

    def __init__(self, val_batches, trained: tuple[str, ...]) -> None:
        super().__init__(val_batches, trained)  # the modalities the training split has

    def branch(self, model, modality: str) -> torch.nn.Module:
        return model.unimodal[modality]

    def _ce(self, model, batch) -> dict[str, tuple[torch.Tensor, int]]:
        """Per trained modality: the summed cross-entropy of its classifier over the samples that have it, and
        how many they are."""
        uni = model(batch).modality_logits.float()  # (B, 3, C)
        have = batch.availability().to(uni.device)
        out = {}
        for k, m in enumerate(MODALITIES):
            if m in self.modalities:
                rows = have[:, k] & (batch.lengths(m).to(uni.device) > 0)
                out[m] = (F.cross_entropy(uni[rows, k], batch.classes[rows], reduction="sum"), int(rows.sum()))
        return out

    def loss(self, model, batch):
        ce = {m: total / max(n, 1) for m, (total, n) in self._ce(model, batch).items()}
        loss = sum(ce.values())
        return loss, {"loss": loss.detach(), **{f"ce_{m}": c.detach() for m, c in ce.items()}}

    @torch.no_grad()
    def validate(self, model) -> dict[str, float]:
        device = next(model.parameters()).device
        sums = {m: 0.0 for m in self.modalities}
        counts = {m: 0 for m in self.modalities}
        for batch in self.val_batches():
            for m, (total, n) in self._ce(model, batch.to(device)).items():
                sums[m] += float(total)
                counts[m] += n
        ce = {m: sums[m] / counts[m] if counts[m] else float("inf") for m in self.modalities}
        return {"loss": float(np.sum([c for c in ce.values() if np.isfinite(c)])), **{f"ce_{m}": c for m, c in ce.items()}}


def trained_modalities(split) -> tuple[str, ...]:
    """The modalities at least one training sample has (length > 0, not marked absent)."""
    out = []
    for k, m in enumerate(MODALITIES):
        has = np.asarray(split.lengths(m)) > 0
        if split.available is not None:
            has &= np.asarray(split.available, dtype=bool)[:, k]
        if has.any():
            out.append(m)
    return tuple(out)


class FusionTask(SupervisedTask):
    """Stage 1: the verdict's cross-entropy, level 1 frozen; the best selection-split epoch kept."""

    name = "fusion"


class BCLSTMRecipe:
    config_cls = BCLSTMRecipeConfig

    def _optimizer(self, ctx: RecipeContext, params) -> torch.optim.Optimizer:
        rc = ctx.recipe
        if rc.optimizer == "adam":
            return torch.optim.Adam(params, lr=ctx.train.lr)
        return torch.optim.Adadelta(params, lr=rc.adadelta_lr, rho=rc.adadelta_rho)

    def train(self, ctx: RecipeContext) -> RecipeResult:
        rc, model = ctx.recipe, ctx.model
        summary: dict = {}
        if rc.unimodal:
            if ctx.saved is None or ctx.resumes(0):
                uni = UnimodalTask(ctx.eval_batches(ctx.select_split), trained_modalities(ctx.train_split))
                loop0 = ctx.run_stage(0, uni, self._optimizer(ctx, model.unimodal.parameters()))
                uni.handover(model)
                summary["unimodal"] = uni.summary(loop0)
                ctx.saved = None
            else:
                summary["unimodal"] = ctx.saved["unimodal_summary"]
            model.unimodal.requires_grad_(False)
        task = FusionTask(ctx.eval_batches(ctx.select_split))
        params = [p for p in model.parameters() if p.requires_grad]
        wrapped = FrozenPart(model, "unimodal") if rc.unimodal else None
        extra = {"unimodal_summary": summary["unimodal"]} if rc.unimodal else None
        loop = ctx.run_stage(1, task, self._optimizer(ctx, params), model=wrapped, extra=extra)
        model.requires_grad_(True)
        summary["fusion"] = {"epochs": loop.epoch, "best_epoch": task.best_epoch, "best_val_loss": task.best_loss,
                             "history": loop.history}
        return RecipeResult(task.best_state, summary)
