"""SDRS's recipe (Zhao et al. 2025): one stage, the network (models/sdrs.py) trained with

  L = CE(shifted-text logits) + w_spec sum_m CE(specific logits_m) + w_rec sum_m MSE(recon_m, h_m)
      + w_orth sum_m mean_b cos^2(z_m^s, z_m^i) + w_adv sum_m CE(adversary(GRL(z_m^i)))

over the nonverbal modalities m. The adversary (a two-layer MLP) lives here, training only: it learns
to predict the label from the irrelevant part, and the gradient reversal makes the encoder remove what
it finds. The paper's losses and weights are not public; these are our choices (docs/baselines/sdrs.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from affectus.data.batches import Batch
from affectus.errors import SettingError
from affectus.models.sdrs import NONVERBAL
from affectus.training.recipes.base import RecipeContext, RecipeResult
from affectus.training.tasks import SupervisedTask


@dataclass
class SDRSRecipeConfig:
    specific_weight: float = 1.0  # ours: the specific part's own label loss, weighted as the main task
    # MMSA's MISA / MOSI (the nearest public disentangling baseline): recon_weight 1.0, diff_weight 0.1,
    # reverse_grad_weight 0.8 (here the adversary's loss weight; the reversal itself has scale 1)
    recon_weight: float = 1.0
    orth_weight: float = 0.1
    adv_weight: float = 0.8

    def validate(self) -> None:
        for key in ("specific_weight", "recon_weight", "orth_weight", "adv_weight"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise SettingError(f"recipe.{key}", value, "a finite weight >= 0")


class _Reverse(torch.autograd.Function):
    """Identity forward, negated gradient backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


def reverse_gradient(x: torch.Tensor) -> torch.Tensor:
    return _Reverse.apply(x)


def orthogonality(specific: torch.Tensor, irrelevant: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine between each sample's pooled specific and irrelevant parts: 0 when orthogonal."""
    return F.cosine_similarity(specific, irrelevant, dim=-1, eps=1e-8).pow(2).mean()


def masked_mse(a: torch.Tensor, b: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    valid = (~pad).unsqueeze(-1).to(a.dtype)
    return ((a - b).pow(2) * valid).sum() / (valid.sum() * a.shape[-1]).clamp(min=1)


def build_adversary(d: int, num_classes: int) -> nn.ModuleDict:
    return nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, num_classes)) for m in NONVERBAL})


class SDRSTask(SupervisedTask):
    """The loss in the module docstring; selects on the validation cross-entropy of the final logits."""

    def __init__(self, val_batches, rc: SDRSRecipeConfig, adversary: nn.ModuleDict) -> None:
        super().__init__(val_batches)
        self.rc = rc
        self.adversary = adversary

    def loss(self, model, batch: Batch):
        net = getattr(model, "model", model)
        p = net.disentangle_forward(batch)
        y = batch.classes
        rc = self.rc
        task = F.cross_entropy(p.logits, y)
        spec = sum(F.cross_entropy(p.specific_logits[m], y) for m in NONVERBAL)
        recon = sum(masked_mse(p.recon[m], p.origin[m], p.pads[m]) for m in NONVERBAL)
        orth = sum(orthogonality(p.specific[m], p.irrelevant[m]) for m in NONVERBAL)
        adv = sum(F.cross_entropy(self.adversary[m](reverse_gradient(p.irrelevant[m])), y) for m in NONVERBAL)
        total = (task + rc.specific_weight * spec + rc.recon_weight * recon + rc.orth_weight * orth
                 + rc.adv_weight * adv)
        parts = {"task": task.detach(), "specific": spec.detach(), "recon": recon.detach(), "orth": orth.detach(),
                 "adversary": adv.detach(), "loss": total.detach()}
        return total, parts

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "adversary": {k: v.clone() for k, v in self.adversary.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.adversary.load_state_dict(state["adversary"])


class _WithAdversary(nn.Module):
    """The network and the adversary as one module for the optimiser; forward and the saved state are
    the network's (the adversary is resumed with the task and never saved with the model)."""

    def __init__(self, model: nn.Module, adversary: nn.ModuleDict) -> None:
        super().__init__()
        self.model = model
        self.adversary = adversary

    def forward(self, batch: Batch):
        return self.model(batch)

    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)


class SDRSRecipe:
    config_cls = SDRSRecipeConfig

    def train(self, ctx: RecipeContext) -> RecipeResult:
        c = ctx.model.config
        adversary = build_adversary(c.d, c.num_classes).to(ctx.device)
        wrapped = _WithAdversary(ctx.model, adversary)
        task = SDRSTask(ctx.eval_batches(ctx.select_split), ctx.recipe, adversary)
        loop = ctx.run_stage(1, task, ctx.optimizer(wrapped), model=wrapped)
        return RecipeResult(task.best_state, {"train": {"epochs": loop.epoch, "best_epoch": task.best_epoch,
                                                        "best_val_loss": task.best_loss, "history": loop.history}})
