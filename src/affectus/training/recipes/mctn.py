"""MCTN's recipe (Pham et al. 2019): one stage, its own coupled translation-prediction loss
(configs/hierarchical_mctn.yaml)

    L = L_task + w_1 MSE(X^_T1, X_T1) + w_c MSE(X^_S, X_S) + w_2 MSE(X^_T2, X_T2) + l2 ||W_head||^2

with every translation weight 0.1 and the head's L2 factor 0.01 (the authors' Keras kernel regulariser).
L_task is the cross-entropy on the classes (the authors: MAE on the score, weight 1).

MCTN's own treatment of missing modalities: it trains on complete data (the targets are what the
translations learn to produce) and predicts from the source alone, so nothing is dropped in training.
A sample whose file lacks a modality leaves that modality's translation term out (and a sample without
the source is left out of every term); a training split without the source at all is refused before
anything is written (the model declares it: `Capabilities.needs_in_training`). Selection: the cross-entropy of the source-only prediction on the selection split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import AffectusError
from affectus.training.recipes.base import RecipeContext
from affectus.training.recipes.supervised import SupervisedRecipe
from affectus.training.tasks import SupervisedTask


@dataclass
class MCTNRecipeConfig:
    translation_weight: float = 0.1  # translation1.loss_weight (level 1, S -> T1)
    cycle_weight: float = 0.1  # translation1.cycle_loss_weight (T1^ -> S)
    translation2_weight: float = 0.1  # translation2.loss_weight (level 2, E1 -> T2)
    l2_factor: float = 0.01  # regression.l2_factor on the prediction layer's weights

    def validate(self) -> None:
        for key in ("translation_weight", "cycle_weight", "translation2_weight", "l2_factor"):
            if not getattr(self, key) >= 0:
                raise AffectusError(f"recipe.{key} = {getattr(self, key)}: expected a weight >= 0")


def masked_mse(pred: torch.Tensor, target: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the samples where `present` (B,) holds; 0 when none does."""
    per = (pred - target).pow(2).flatten(1).mean(dim=1)  # (B,)
    w = present.to(per.dtype)
    return (per * w).sum() / w.sum().clamp(min=1.0)


class MCTNTask(SupervisedTask):
    """The joint loss above; selects on the selection split's cross-entropy (SupervisedTask.validate)."""

    def __init__(self, val_batches, rc: MCTNRecipeConfig) -> None:
        super().__init__(val_batches)
        self.rc = rc

    def loss(self, model, batch: Batch):
        cfg = model.config
        p = model.translate(batch)
        have = batch.availability().to(p.logits.device) & torch.stack(
            [batch.lengths(m).to(p.logits.device) > 0 for m in MODALITIES], dim=1)  # (B, 3)
        k_s = MODALITIES.index(cfg.source)
        has_s = have[:, k_s]
        t1, t2 = cfg.targets
        ce_all = F.cross_entropy(p.logits, batch.classes, reduction="none")
        w = has_s.to(ce_all.dtype)
        ce = (ce_all * w).sum() / w.sum().clamp(min=1.0)
        trans1 = masked_mse(p.translated, model.resample(batch, t1), has_s & have[:, MODALITIES.index(t1)])
        cycle = masked_mse(p.cycled, p.source, has_s)
        trans2 = masked_mse(p.translated2, model.resample(batch, t2), has_s & have[:, MODALITIES.index(t2)])
        l2 = model.head.weight.pow(2).sum()
        rc = self.rc
        total = (ce + rc.translation_weight * trans1 + rc.cycle_weight * cycle + rc.translation2_weight * trans2
                 + rc.l2_factor * l2)
        return total, {"loss": total.detach(), "ce": ce.detach(), "translation": trans1.detach(),
                       "cycle": cycle.detach(), "translation2": trans2.detach()}


class MCTNRecipe(SupervisedRecipe):
    config_cls = MCTNRecipeConfig

    def make_task(self, ctx: RecipeContext) -> MCTNTask:
        return MCTNTask(ctx.eval_batches(ctx.select_split), ctx.recipe)
