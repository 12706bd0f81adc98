"""AV-MC's recipe (Liu et al. 2022): one stage whose every step runs the network three times, as the
authors' trainer (`trains/multiTask/V1.py` of github.com/thuiar/ch-sims-v2) does:

  L = L(plain batch) + L(batch with audio mixed) + L(batch with vision mixed)

each L the weighted sum of the four heads' losses (weights M, T, A, V). Under a mix, the mixed modality's
head and the fusion head learn the mix of the two samples' labels (lam * loss(y) + (1 - lam) * loss(y[perm]),
their `mixup_criterion`); the other heads learn their own labels. Selection: the same weighted loss of
the plain batch on the selection split (their KeyEval 'Loss').

Heads are classifiers here (cross-entropy; a mixed target is the mixed one-hot, which is the same sum),
plus L1 on the fusion score where the label scheme has scores (their M loss). Unimodal heads learn the
data's own unimodal labels where it has them (CH-SIMS / v2, as the authors'), else the multimodal label
(MMSA's practice for MOSI, which has none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES, Split
from affectus.errors import AffectusError
from affectus.models.av_mc import MIXED, AVMCOutput, Mix
from affectus.training.recipes.base import RecipeContext, RecipeResult
from affectus.training.tasks import SelectsBestState

TARGETS = ("data", "multimodal")


@dataclass
class AVMCRecipeConfig:
    # loss weights per head, ch-sims-v2 config/config_regression.py `__V1` / sims3l: M 1.0, T 0.2, A 0.8, V 0.4
    weight_m: float = 1.0
    weight_t: float = 0.2
    weight_a: float = 0.8
    weight_v: float = 0.4
    score_weight: float = 1.0  # L1 on the fusion score, where the scheme has scores (their M loss is L1)
    # data: the unimodal heads learn the data's unimodal labels where it has them, else the multimodal label;
    # multimodal: always the multimodal label
    unimodal_targets: str = "data"

    def validate(self) -> None:
        for key in ("weight_m", "weight_t", "weight_a", "weight_v", "score_weight"):
            if not getattr(self, key) >= 0:
                raise AffectusError(f"recipe.{key} = {getattr(self, key)}: expected a weight >= 0")
        if self.unimodal_targets not in TARGETS:
            raise AffectusError(f"recipe.unimodal_targets = {self.unimodal_targets!r}: expected one of "
                                f"{', '.join(TARGETS)}")

    def head_weights(self) -> tuple[float, float, float]:
        """The weights of the text / audio / vision heads."""
        return self.weight_t, self.weight_a, self.weight_v


def unimodal_targets(split: Split, scheme, source: str) -> torch.Tensor:
    """(N, 3) classes each unimodal head learns, text / audio / vision: the split's unimodal labels
    (source "data", where the split has them) or its multimodal class repeated."""
    if source == "data" and split.unimodal_labels is not None:
        return torch.from_numpy(np.stack([scheme.to_classes(split.unimodal_labels[m]) for m in MODALITIES], 1)).long()
    return torch.from_numpy(scheme.to_classes(split.labels)).long()[:, None].repeat(1, len(MODALITIES))


def soft_ce(logits: torch.Tensor, target: torch.Tensor, num_classes: int, mix: Mix | None) -> torch.Tensor:
    """Cross-entropy with class targets (B,); under `mix`, with the mixed one-hot targets, which equals
    lam * CE(y) + (1 - lam) * CE(y[perm]) (the authors' mixup_criterion)."""
    if mix is None:
        return F.cross_entropy(logits, target)
    return F.cross_entropy(logits, mix.apply(F.one_hot(target, num_classes).float()))


def mixed_l1(score: torch.Tensor, target: torch.Tensor, mix: Mix | None) -> torch.Tensor:
    if mix is None:
        return F.l1_loss(score, target)
    return mix.lam * F.l1_loss(score, target) + (1 - mix.lam) * F.l1_loss(score, target[mix.perm])


class AVMCRecipe:
    config_cls = AVMCRecipeConfig

    def train(self, ctx: RecipeContext) -> RecipeResult:
        rc = ctx.recipe
        task = AVMCTask(rc, ctx.scheme, ctx.eval_batches(ctx.select_split),
                        unimodal_targets(ctx.train_split, ctx.scheme, rc.unimodal_targets),
                        unimodal_targets(ctx.select_split, ctx.scheme, rc.unimodal_targets))
        loop = ctx.run_stage(1, task, ctx.optimizer())
        uses = rc.unimodal_targets == "data" and ctx.train_split.unimodal_labels is not None
        return RecipeResult(task.best_state, {"train": {
            "epochs": loop.epoch, "best_epoch": task.best_epoch, "best_val_loss": task.best_loss,
            "unimodal_targets": "the data's unimodal labels" if uses else "the multimodal label",
            "history": loop.history}})


class AVMCTask(SelectsBestState):
    def __init__(self, rc: AVMCRecipeConfig, scheme, val_batches, train_targets: torch.Tensor,
                 select_targets: torch.Tensor) -> None:
        super().__init__(val_batches)
        self.rc = rc
        self.scheme = scheme
        self.train_targets = train_targets  # (N_train, 3), by dataset index
        self.select_targets = select_targets

    def weighted_loss(self, out: AVMCOutput, batch: Batch, uni: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The four heads' weighted losses for one pass; `out.mix` mixes the fusion head's and the mixed
        modality's targets. uni (B, 3): the unimodal heads' classes."""
        rc, c = self.rc, self.scheme.num_classes
        mix = out.mix
        loss_m = soft_ce(out.logits, batch.classes, c, mix)
        if self.scheme.scores and rc.score_weight > 0:
            loss_m = loss_m + rc.score_weight * mixed_l1(out.score, batch.scores.float(), mix)
        total = rc.weight_m * loss_m
        parts = {"m": loss_m.detach()}
        for k, (m, weight) in enumerate(zip(MODALITIES, rc.head_weights())):
            head = soft_ce(out.modality_logits[:, k], uni[:, k], c, mix if m == out.mixed else None)
            total = total + weight * head
            parts[m] = head.detach()
        return total, parts

    def loss(self, model, batch: Batch):
        uni = self.train_targets[batch.index.cpu()].to(batch.classes.device)
        total, parts = self.weighted_loss(model.represent(batch), batch, uni)
        record = {"plain": total.detach(), **{f"ce_{k}": v for k, v in parts.items()}}
        if model.mixup.alpha > 0:  # alpha 0: the module is off and the mixed passes would repeat the plain one
            for m in MIXED:
                mixed, _ = self.weighted_loss(model.mixup_forward(batch, m), batch, uni)
                total = total + mixed
                record[f"mix_{m}"] = mixed.detach()
        record["loss"] = total.detach()
        return total, record

    def validate(self, model) -> dict[str, float]:
        device = next(model.parameters()).device
        sums: dict[str, float] = {}
        n = 0
        for batch in self.val_batches():
            batch = batch.to(device)
            uni = self.select_targets[batch.index.cpu()].to(device)
            total, parts = self.weighted_loss(model.represent(batch), batch, uni)
            for key, value in {"loss": total, **{f"ce_{k}": v for k, v in parts.items()}}.items():
                sums[key] = sums.get(key, 0.0) + float(value) * len(batch)
            n += len(batch)
        return {k: v / max(n, 1) for k, v in sums.items()}
