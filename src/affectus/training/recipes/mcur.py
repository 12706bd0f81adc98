"""MCUR's recipe (docs/mcur.md): stage 0 pretrains each encoder with its own head, each kept at its own
best epoch and then frozen (`pretrain`); stage 1 trains the rest under random missingness, task loss
weighted per sample by SUGR plus the MCB-CL contrastive term (`pretrain: false`: stage 1 alone, on the
whole network, as the first reading did).

    L = mean_i [ exp(-s_i) * CE_i + s_i / 2 ]  +  lambda * MCB-CL(normalize(z), (class, combination))

- SUGR (sample-wise uncertainty-guided regularisation): s_i = log sigma_i^2 from the model's uncertainty
  head; exp(-s_i) is sample i's weight and s_i / 2 = log sigma_i keeps the weights from vanishing
  (Kendall & Gal's learned loss attenuation, in the classification form of Kendall et al. 2018). With
  `sugr: false` every weight is 1 and the regulariser is gone.
- MCB-CL: SupCon (Khosla et al., the L_out form) on the fused representation; positives of an anchor
  are the other samples of the batch with the same emotion class AND the same available-modality
  combination (code t + 2a + 4v).
- Random missingness: every training batch draws an availability mask, seeded by (seed, stage, epoch):
  one of the 7 conditions per sample, uniformly (`missing: conditions`), or each modality absent with
  `missing_rate`, at least one kept (`missing: rate`).
- Selection: the mean over the 7 conditions of the unweighted cross-entropy on the selection split
  (`select: conditions`), or the cross-entropy under one fixed mask drawn at `missing_rate` from the
  run's seed (`select: mask`); either way identical every epoch and for every model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from affectus.data.missing import random_availability, random_conditions, usable_conditions, with_availability
from affectus.data.types import MODALITIES
from affectus.errors import AffectusError
from affectus.training.losses import supcon_loss
from affectus.training.recipes.base import FrozenPart, RecipeContext, RecipeResult
from affectus.training.tasks import SelectsBestPerModality, SelectsBestState, mean_ce_over_sets

_COMBINATION_CODE = torch.tensor([1, 2, 4])  # text, audio, vision bits: {l} = 1, ..., {l,a,v} = 7


MISSING_KINDS = ("conditions", "rate")
SELECT_KINDS = ("conditions", "mask")


@dataclass
class MCURRecipeConfig:
    # training masks: "conditions", each sample one of the 7 conditions drawn uniformly (the evaluation's
    # weighting); "rate", each (sample, modality) absent with `missing_rate`, at least one kept
    missing: str = "conditions"
    missing_rate: float = 0.3  # for missing = "rate"; 0: complete data only
    # model selection on the selection split: "conditions", the mean over the 7 conditions of the
    # unweighted cross-entropy; "mask", the cross-entropy under one fixed random mask at `missing_rate`
    select: str = "conditions"
    contrast_weight: float = 0.1  # lambda on MCB-CL; 0: "w/o MCB-CL"
    contrast_tau: float = 0.1  # MCB-CL temperature
    sugr: bool = True  # False: "w/o SUGR", unweighted cross-entropy
    # stage 0: each encoder with its own head on complete data, each kept at its own best epoch, then
    # frozen for the MCUR stage (needs model.unimodal_heads); False: one stage trains everything
    pretrain: bool = True

    def validate(self) -> None:
        if self.missing not in MISSING_KINDS:
            raise AffectusError(f"recipe.missing = {self.missing!r}: expected one of {', '.join(MISSING_KINDS)}")
        if self.select not in SELECT_KINDS:
            raise AffectusError(f"recipe.select = {self.select!r}: expected one of {', '.join(SELECT_KINDS)}")
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


class MCURTask(SelectsBestState):
    """Training loss above; selects the epoch with the lowest unweighted validation cross-entropy (the
    learned weights must not grade themselves: a model could lower its weighted loss by claiming
    uncertainty), averaged over the selection sets (the 7 conditions, or the one fixed mask)."""

    name = "mcur"

    def __init__(self, val_sets: list, rc: MCURRecipeConfig) -> None:
        super().__init__(val_sets[0])
        self.val_sets = val_sets
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
        return mean_ce_over_sets(model, self.val_sets)  # each set weighs the same, whatever its size


class UnimodalTask(SelectsBestPerModality):
    """Stage 0 (`recipe.pretrain`): every encoder with its own linear head, on complete data; the loss is
    the sum of the three cross-entropies, and each modality keeps the weights (encoder + head) of the
    epoch with its own lowest selection-split cross-entropy. Why per modality: the modalities learn at
    different speeds (a strong or train-leaky one overfits in a couple of epochs, a weak one is still
    learning), and one stopping epoch for the whole network leaves the weak ones untrained, which is
    what the single-non-text conditions then see. Training stops when no modality improved for
    `train.patience` epochs."""

    name = "uni"

    def __init__(self, val_batches) -> None:
        super().__init__(val_batches, MODALITIES)

    def branch(self, model, modality: str) -> torch.nn.Module:
        return _branch(model, MODALITIES.index(modality))

    @staticmethod
    def _ce(model, batch) -> list[torch.Tensor]:
        """Per modality, the summed cross-entropy of its head over the samples that have it (a file may
        lack a modality for some samples: the head would read the missing vector there)."""
        parts = model.represent(batch)
        uni, present = parts.unimodal_logits.float(), parts.available  # (B, 3, C), (B, 3)
        return [F.cross_entropy(uni[present[:, k], k], batch.classes[present[:, k]], reduction="sum")
                for k in range(len(MODALITIES))]

    def loss(self, model, batch):
        counts = batch.availability().to(batch.index.device).sum(dim=0).clamp(min=1)  # (3,)
        ce = [c / counts[k] for k, c in enumerate(self._ce(model, batch))]
        total = ce[0] + ce[1] + ce[2]
        return total, {"loss": total.detach(), **{f"ce_{m}": c.detach() for m, c in zip(MODALITIES, ce)}}

    def validate(self, model) -> dict[str, float]:
        device = next(model.parameters()).device
        sums, counts = torch.zeros(len(MODALITIES)), torch.zeros(len(MODALITIES))
        for batch in self.val_batches():
            batch = batch.to(device)
            sums += torch.tensor([c.item() for c in self._ce(model, batch)])
            counts += batch.availability().sum(dim=0).float().cpu()
        ce = (sums / counts.clamp(min=1)).tolist()
        return {"loss": float(np.sum(ce)), **{f"ce_{m}": c for m, c in zip(MODALITIES, ce)}}


def _branch(model, k: int) -> torch.nn.ModuleDict:
    """Modality k's encoder and head, as one module (what stage 0 trains and keeps)."""
    return torch.nn.ModuleDict({"encoder": model.encoders[MODALITIES[k]], "head": model.unimodal[k]})


class MCURRecipe:
    config_cls = MCURRecipeConfig

    def train(self, ctx: RecipeContext) -> RecipeResult:
        rc, model = ctx.recipe, ctx.model
        summary: dict = {}
        stage = 1
        if rc.pretrain:
            if not ctx.can.unimodal_heads:
                raise AffectusError("mcur: recipe.pretrain needs model.unimodal_heads = true")
            if ctx.saved is None or ctx.resumes(0):
                uni = UnimodalTask(ctx.eval_batches(ctx.select_split))
                loop0 = ctx.run_stage(0, uni, ctx.optimizer())
                uni.handover(model)
                summary["pretrain"] = uni.summary(loop0)
                ctx.saved = None
            else:
                summary["pretrain"] = ctx.saved["pretrain_summary"]
            model.encoders.requires_grad_(False)
            model.unimodal.requires_grad_(False)
        select = ctx.select_split
        if rc.select == "conditions":  # every condition the model is evaluated under, equally weighted
            # (those the file can realise: a text-only file has no {a}, {v} or {a,v} to select on)
            val_sets = [ctx.eval_batches(with_availability(select, c)) for c in usable_conditions(select)]
        else:
            if rc.missing_rate > 0:
                rng = np.random.default_rng([ctx.train.seed, 104729])  # the selection split's one fixed mask
                select = with_availability(select, random_availability(len(select), rc.missing_rate, rng))
            val_sets = [ctx.eval_batches(select)]
        task = MCURTask(val_sets, rc)
        sampler = random_conditions if rc.missing == "conditions" else None
        wrapped = FrozenPart(model, "encoders") if rc.pretrain else None
        extra = {"pretrain_summary": summary["pretrain"]} if rc.pretrain else None
        loop = ctx.run_stage(stage, task, ctx.optimizer(), model=wrapped, extra=extra, missing_rate=rc.missing_rate,
                             availability=sampler)
        model.requires_grad_(True)
        summary["train"] = {"epochs": loop.epoch, "best_epoch": task.best_epoch, "best_val_loss": task.best_loss,
                            "history": loop.history}
        return RecipeResult(task.best_state, summary)
