"""MCUR's recipe (docs/mcur.md): one stage under random missingness, task loss weighted per sample by
SUGR plus the MCB-CL contrastive term.

    L = mean_i [ exp(-s_i) * CE_i + s_i / 2 ]  +  lambda * MCB-CL(normalize(z), (class, combination))

- SUGR (sample-wise uncertainty-guided regularisation): s_i = log sigma_i^2 from the model's uncertainty
  head; exp(-s_i) is sample i's weight and s_i / 2 = log sigma_i keeps the weights from vanishing
  (Kendall & Gal's learned loss attenuation, in the classification form of Kendall et al. 2018). With
  `sugr: false` every weight is 1 and the regulariser is gone.
- MCB-CL: SupCon (Khosla et al., the L_out form) on the fused representation; positives of an anchor
  are the other samples of the batch with the same emotion class AND the same available-modality
  combination (code t + 2a + 4v).
- Random missingness: every training batch draws an availability mask (each modality absent with
  `missing_rate`, at least one kept), seeded by (seed, stage, epoch); the selection split gets one
  fixed mask drawn the same way from its own seed, so model selection scores the condition mix the
  model trains for, identically every epoch and for every model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from affectus.data.missing import random_availability, with_availability
from affectus.errors import AffectusError
from affectus.training.losses import supcon_loss
from affectus.training.recipes.base import RecipeContext, RecipeResult
from affectus.training.tasks import _SelectsBestState

_COMBINATION_CODE = torch.tensor([1, 2, 4])  # text, audio, vision bits: {l} = 1, ..., {l,a,v} = 7


@dataclass
class MCURRecipeConfig:
    missing_rate: float = 0.3  # per (sample, modality) in training; 0: complete data only
    contrast_weight: float = 0.1  # lambda on MCB-CL; 0: "w/o MCB-CL"
    contrast_tau: float = 0.1  # MCB-CL temperature
    sugr: bool = True  # False: "w/o SUGR", unweighted cross-entropy

    def validate(self) -> None:
        if not 0.0 <= self.missing_rate < 1.0:
            raise AffectusError(f"recipe.missing_rate = {self.missing_rate}: expected a value in [0, 1)")
        if not self.contrast_weight >= 0:
            raise AffectusError(f"recipe.contrast_weight = {self.contrast_weight}: expected >= 0")
        if not self.contrast_tau > 0:
            raise AffectusError(f"recipe.contrast_tau = {self.contrast_tau}: expected a temperature > 0")


def combination_labels(classes: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """MCB-CL's labels: one per (class, available-modality combination). (B,), (B, 3) bool -> (B,) int64.
    Two samples are positives exactly when these are equal."""
    combo = (available.long() * _COMBINATION_CODE.to(available.device)).sum(dim=1)  # (B,) in 1..7
    return classes.long() * 8 + combo


def mcb_cl(z: torch.Tensor, classes: torch.Tensor, available: torch.Tensor, tau: float) -> torch.Tensor:
    """Modality-combination- and category-based contrastive loss on the fused (B, fused) vectors."""
    return supcon_loss(F.normalize(z.float(), dim=-1), combination_labels(classes, available), temperature=tau,
                       form="out")


def sugr(ce: torch.Tensor, log_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample-wise uncertainty-weighted task loss: mean_i exp(-s_i) CE_i + s_i / 2, and the weights
    exp(-s_i) (B,). Minimised over s_i alone at exp(-s_i) = 1 / (2 CE_i): a sample the model keeps
    getting wrong is down-weighted, an easy one counts more, within the model's uncertainty bound."""
    weights = torch.exp(-log_var)  # (B,)
    return (weights * ce + 0.5 * log_var).mean(), weights


class MCURTask(_SelectsBestState):
    """Training loss above; selects the epoch with the lowest unweighted validation cross-entropy (the
    learned weights must not grade themselves: a model could lower its weighted loss by claiming
    uncertainty)."""

    name = "mcur"

    def __init__(self, val_batches, rc: MCURRecipeConfig) -> None:
        super().__init__(val_batches)
        self.rc = rc

    def loss(self, model, batch):
        parts = model.represent(batch)
        ce = F.cross_entropy(parts.logits.float(), batch.classes, reduction="none")  # (B,)
        if self.rc.sugr:
            task, weights = sugr(ce, parts.log_var.float())
        else:
            task, weights = ce.mean(), torch.ones_like(ce)
        total = task
        out = {"ce": ce.mean().detach(), "weight": weights.mean().detach()}  # read once per epoch
        if self.rc.contrast_weight > 0:
            contrast = mcb_cl(parts.z, batch.classes, parts.available, self.rc.contrast_tau)
            total = total + self.rc.contrast_weight * contrast
            out["mcbcl"] = contrast.detach()
        out["loss"] = total.detach()
        return total, out

    def validate(self, model) -> dict[str, float]:
        total, n = 0.0, 0
        device = next(model.parameters()).device
        for batch in self.val_batches():
            batch = batch.to(device)
            total += F.cross_entropy(model(batch).logits.float(), batch.classes, reduction="sum").item()
            n += len(batch)
        return {"loss": total / max(n, 1)}


class MCURRecipe:
    config_cls = MCURRecipeConfig

    def train(self, ctx: RecipeContext) -> RecipeResult:
        rc = ctx.recipe
        select = ctx.select_split
        if rc.missing_rate > 0:
            rng = np.random.default_rng([ctx.train.seed, 104729])  # the selection split's one fixed mask
            select = with_availability(select, random_availability(len(select), rc.missing_rate, rng))
        task = MCURTask(ctx.eval_batches(select), rc)
        loop = ctx.run_stage(1, task, ctx.optimizer(), missing_rate=rc.missing_rate)
        return RecipeResult(task.best_state, {"train": {"epochs": loop.epoch, "best_epoch": task.best_epoch,
                                                        "best_val_loss": task.best_loss, "history": loop.history}})
