"""TransM's recipe (Wang et al. 2020): one stage, classification plus its translation losses

    L = CE + w_f sum_m MSE(X^_m, X_m) + w_b sum_m MSE(X^_S(m), X_S)

(the paper trains the translations and the classifier end to end; the weights, and MSE as the distance,
are ours: docs/baselines/transm.md).

Its treatment of missing modalities (`missing: conditions`, the default): the comparisons that list
TransM as a missing-modality method (CUMDF Tables 1-2, after MMIN's protocol) train it on samples with
modalities removed. Each training batch draws one of the 7 availability conditions per sample (uniform,
seeded by (seed, epoch)); the model sees the reduced batch, imagining each absent modality by translation,
while the translation losses compare its translations with the real features of the complete batch, so
the imagination is what learns. `missing: none` trains on complete data only (the paper's own setting).
Selection: the mean cross-entropy over the 7 conditions on the selection split (`none`: complete data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from affectus.data.batches import Batch
from affectus.data.missing import random_conditions, usable_conditions, with_availability
from affectus.data.types import MODALITIES
from affectus.errors import SettingError
from affectus.training.recipes.base import RecipeContext, RecipeResult
from affectus.training.recipes.mctn import masked_mse
from affectus.training.tasks import SelectsBestState

MISSING_KINDS = ("conditions", "none")


@dataclass
class TransMRecipeConfig:
    forward_weight: float = 0.1  # w_f: forward translations (source -> each target); ours
    backward_weight: float = 0.1  # w_b: backward translations (each target -> source); ours
    missing: str = "conditions"  # conditions: train under random availability conditions; none: complete data

    def validate(self) -> None:
        if self.missing not in MISSING_KINDS:
            raise SettingError("recipe.missing", self.missing, f"one of {', '.join(MISSING_KINDS)}")
        for key in ("forward_weight", "backward_weight"):
            if not getattr(self, key) >= 0:
                raise SettingError(f"recipe.{key}", getattr(self, key), "a weight >= 0")


def _has(batch: Batch) -> torch.Tensor:
    """(B, 3) bool: the modality is present with at least one valid step."""
    lengths = torch.stack([batch.lengths(m) > 0 for m in MODALITIES], dim=1).to(batch.index.device)
    return batch.availability().to(batch.index.device) & lengths


class TransMTask(SelectsBestState):
    name = "train"

    def __init__(self, val_sets: list, rc: TransMRecipeConfig, seed: int) -> None:
        super().__init__(val_sets[0])
        self.val_sets = val_sets
        self.rc = rc
        self.seed = seed
        self.rng = np.random.default_rng([seed, 0x7E, 0])

    def start_epoch(self, epoch: int) -> None:
        # the masks of an epoch depend on (seed, epoch) only, so a resumed run draws the same ones
        self.rng = np.random.default_rng([self.seed, 0x7E, epoch])

    def reduce(self, batch: Batch) -> Batch:
        """The batch the model sees: one random availability condition per sample (`missing: conditions`).
        A sample the condition would leave empty (its file lacks the kept modalities) keeps what it has."""
        if self.rc.missing == "none":
            return batch
        drawn = torch.from_numpy(random_conditions(len(batch), self.rng)).to(batch.index.device)
        have = _has(batch)
        empty = ~(drawn & have).any(dim=1)
        drawn[empty] = have[empty]
        return batch.with_available(drawn)

    def loss(self, model, batch: Batch):
        cfg = model.config
        p = model.translate(self.reduce(batch))
        ce = F.cross_entropy(p.logits, batch.classes)
        have = _has(batch).to(p.logits.device)
        source = model.resample(batch, cfg.source)
        has_source = have[:, MODALITIES.index(cfg.source)]
        fwd = sum(masked_mse(p.translated[m], model.resample(batch, m), have[:, MODALITIES.index(m)])
                  for m in cfg.targets)
        bwd = sum(masked_mse(p.back[m], source, has_source) for m in cfg.targets)
        total = ce + self.rc.forward_weight * fwd + self.rc.backward_weight * bwd
        return total, {"loss": total.detach(), "ce": ce.detach(), "forward": fwd.detach(), "backward": bwd.detach()}

    def validate(self, model) -> dict[str, float]:
        device = next(model.parameters()).device
        losses = []
        for val in self.val_sets:
            total, n = 0.0, 0
            for batch in val():
                batch = batch.to(device)
                total += F.cross_entropy(model(batch).logits, batch.classes, reduction="sum").item()
                n += len(batch)
            losses.append(total / max(n, 1))
        return {"loss": float(np.mean(losses))}


class TransMRecipe:
    config_cls = TransMRecipeConfig

    def train(self, ctx: RecipeContext) -> RecipeResult:
        rc, select = ctx.recipe, ctx.select_split
        if rc.missing == "conditions":  # every condition it is evaluated under, equally weighted
            val_sets = [ctx.eval_batches(with_availability(select, c)) for c in usable_conditions(select)]
        else:
            val_sets = [ctx.eval_batches(select)]
        task = TransMTask(val_sets, rc, ctx.train.seed)
        loop = ctx.run_stage(1, task, ctx.optimizer())
        return RecipeResult(task.best_state, {"train": {"epochs": loop.epoch, "best_epoch": task.best_epoch,
                                                        "best_val_loss": task.best_loss, "history": loop.history}})
