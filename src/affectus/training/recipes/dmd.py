"""DMD's recipe (Li et al., CVPR 2023): one stage, the network (models/dmd.py) trained together with two
graph distillation units (GD-Units, paper sec. 3.2), which exist only here: the authors' test path
builds the network alone, and so does loading a DMD run.

The loss, as the authors' `trains/singleTask/DMD.py`:
  L = L_task + 0.05 (L_logit^homo + L_reg^homo) + 0.05 (L_logit^hetero + L_repr^hetero + L_reg^hetero)
      + 0.1 (L_cycle + L_recon + 0.1 (L_margin + L_ort))
L_task sums the cross-entropy of all eight heads (fused, homogeneous fusion, three homogeneous, three
heterogeneous). A GD-Unit (`GraphDistillation`) embeds each modality's (logits, representation) pair,
scores every directed edge j -> k from the two embeddings, softmaxes the six edges per sample (scaled
by 1/8) and weighs each student k's distance to its (detached) teacher j by edge + prior; L_reg keeps
the batch-mean edges near the prior. docs/baselines/dmd.md lists each setting and what we change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import SettingError
from affectus.training.recipes.base import RecipeContext, RecipeResult
from affectus.training.tasks import SupervisedTask

# Directed edges teacher -> student in a fixed order; the priors (the authors' run.py) name their strong
# edges: HomoGD text -> audio and text -> vision, HeteroGD also vision -> audio (their Fig. / README).
EDGES = tuple((j, k) for k in range(3) for j in range(3) if j != k)  # (teacher, student) index pairs
HOMO_PRIOR_EDGES = (("text", "audio"), ("text", "vision"))
HETERO_PRIOR_EDGES = (("text", "audio"), ("text", "vision"), ("vision", "audio"))


@dataclass
class DMDRecipeConfig:
    homo_gd: bool = True  # False: "w/o HomoGD"
    hetero_gd: bool = True  # False: "w/o HeteroGD"
    gd_weight: float = 0.05  # DMD.py: 0.05 * (each GD unit's losses)
    decouple_weight: float = 0.1  # DMD.py: 0.1 * (L_cycle + L_recon + 0.1 (L_margin + L_ort))
    similarity_weight: float = 0.1  # DMD.py: the inner 0.1 on L_margin + L_ort
    gd_size_homo: int = 64  # run.py gd_size_low
    gd_size_hetero: int = 32  # run.py gd_size_high
    gd_reg: float = 10.0  # run.py gd_reg
    gd_alpha: float = 0.125  # run.py alpha = 1/8: edge logits are scaled before the softmax
    prior_temperature: float = 0.25  # run.py: gd_prior = softmax(one-hot of the strong edges, 0.25)
    logit_weight: float = 1.0  # run.py w_losses[0]
    repr_weight: float = 10.0  # run.py w_losses[1]; DMD.py adds the repr term of HeteroGD only
    margin: float = 0.15  # HingeLoss.py: margin 0.15 * |y_i - y_j| (0.15 for categorical labels)
    grad_clip: float = 0.6  # config.json grad_clip: clip every gradient element to [-0.6, 0.6]; 0 = off

    def validate(self) -> None:
        for key in ("gd_weight", "decouple_weight", "similarity_weight", "gd_reg", "logit_weight", "repr_weight",
                    "margin", "grad_clip"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise SettingError(f"recipe.{key}", value, "a finite weight >= 0")
        for key in ("gd_alpha", "prior_temperature"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise SettingError(f"recipe.{key}", value, "a positive number")
        for key in ("gd_size_homo", "gd_size_hetero"):
            if not 1 <= getattr(self, key) <= 65536:
                raise SettingError(f"recipe.{key}", getattr(self, key), "a positive integer")


def edge_prior(strong: tuple[tuple[str, str], ...], temperature: float) -> torch.Tensor:
    """(6,) softmax over the edges of a one-hot on the strong (teacher, student) edges, / temperature."""
    names = [(MODALITIES[j], MODALITIES[k]) for j, k in EDGES]
    hot = torch.tensor([1.0 if e in strong else 0.0 for e in names])
    return torch.softmax(hot / temperature, dim=0)


class GraphDistillation(nn.Module):
    """A GD-Unit: edge weights from the modalities' (logits, representations) and the distillation losses.

    `repr_metric`: "l1" (HomoGD, whose repr term DMD.py leaves out of the sum) or "cosine" (HeteroGD:
    max(0, cos) between a student's and its teacher's representations, pushing the heterogeneous
    spaces apart, as the authors' min_cosine with target -1)."""

    def __init__(self, num_classes: int, hidden: int, size: int, prior: torch.Tensor, rc: DMDRecipeConfig,
                 repr_metric: str) -> None:
        super().__init__()
        self.w_logit = nn.Linear(num_classes, size)
        self.w_repr = nn.Linear(hidden, size)
        self.w_edge = nn.Linear(4 * size, 1)
        self.register_buffer("prior", prior)
        self.rc = rc
        self.repr_metric = repr_metric

    def edges(self, logits: torch.Tensor, reprs: torch.Tensor) -> torch.Tensor:
        """logits (3, B, C), reprs (3, B, H) -> edge weights (6, B), in `EDGES` order, summing to 1 per sample."""
        z = torch.cat([self.w_logit(logits), self.w_repr(reprs)], dim=-1)  # (3, B, 2 size)
        scores = torch.cat([self.w_edge(torch.cat([z[k], z[j]], dim=-1)) for j, k in EDGES], dim=1)  # (B, 6)
        return torch.softmax(scores * self.rc.gd_alpha, dim=1).t()

    def losses(self, logits: torch.Tensor, reprs: torch.Tensor, include_repr: bool) -> dict[str, torch.Tensor]:
        edges = self.edges(logits, reprs)  # (6, B)
        reg = (edges.mean(1) - self.prior).pow(2).sum() * self.rc.gd_reg
        # the logit distance between distributions: L1 between log-probabilities (a logit's free shift
        # would make an L1 on raw C-class logits meaningless; the authors' heads output one score)
        logp = F.log_softmax(logits, dim=-1)
        logit_loss = logits.new_zeros(())
        repr_loss = logits.new_zeros(())
        for x, (j, k) in enumerate(EDGES):
            w = edges[x] + self.prior[x]  # (B,)
            logit_loss = logit_loss + (w * (logp[k] - logp[j].detach()).abs().sum(-1)).mean()
            if include_repr:
                if self.repr_metric == "cosine":
                    dist = F.cosine_similarity(reprs[k], reprs[j].detach(), dim=-1, eps=1e-8).clamp(min=0)
                else:
                    dist = (reprs[k] - reprs[j].detach()).abs().sum(-1)
                repr_loss = repr_loss + (w * dist).mean()
        return {"reg": reg, "logit": self.rc.logit_weight * logit_loss, "repr": self.rc.repr_weight * repr_loss,
                "edges": edges.detach().mean(1)}


def masked_mse(a: torch.Tensor, b: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over the valid steps (pad (B, L) True at padding). (B, L, d) -> ()."""
    valid = (~pad).unsqueeze(-1).to(a.dtype)
    return ((a - b).pow(2) * valid).sum() / (valid.sum() * a.shape[-1]).clamp(min=1)


def orthogonality(s: torch.Tensor, c: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """The authors' CosineEmbeddingLoss(s, c, -1): max(0, cos(s_t, c_t)) averaged over the valid steps."""
    cos = F.cosine_similarity(s, c, dim=-1, eps=1e-8).clamp(min=0)  # (B, L)
    valid = (~pad).to(cos.dtype)
    return (cos * valid).sum() / valid.sum().clamp(min=1)


def margin_loss(feats: torch.Tensor, ids: torch.Tensor, scale: float, ordinal: bool) -> torch.Tensor:
    """HingeLoss.py, vectorised: for each anchor i, every positive p (same label) and negative n,
    max(0, margin(i, n) - cos(i, p) + cos(i, n)), averaged per anchor, then over the anchors that have
    both; margin = scale * |y_i - y_n| for ordinal labels (scores), `scale` for categorical ones.
    feats (N, d), ids (N,)."""
    n = feats.shape[0]
    unit = F.normalize(feats, dim=-1, eps=1e-8)
    cos = unit @ unit.t()  # (N, N)
    eye = torch.eye(n, dtype=torch.bool, device=feats.device)
    same = (ids[:, None] == ids[None, :]) & ~eye  # positives
    diff = ids[:, None] != ids[None, :]  # negatives
    margin = scale * (ids[:, None] - ids[None, :]).abs() if ordinal else torch.full_like(cos, scale)
    counts = same.sum(1) * diff.sum(1)  # (anchor): positive-negative pairs
    has = counts > 0
    if not bool(has.any()):
        return feats.new_zeros(())
    # One (anchor, positive, negative) tensor, the pair masks folded in as infinities (a masked entry is
    # -inf before the clamp, so it adds 0 and passes no gradient): a third of the broadcasts of masking
    # after, which matters at N = 3 x batch (192^3 entries for a batch of 64).
    negative = torch.where(diff, margin + cos, float("-inf"))  # (N, N): margin(i, n) + cos(i, n)
    positive = torch.where(same, cos, float("inf"))  # (N, N): cos(i, p)
    hinge = (negative[:, None, :] - positive[:, :, None]).clamp_(min=0).sum(dim=(1, 2))  # (N,)
    return (hinge[has] / counts[has]).mean()


class DMDTask(SupervisedTask):
    """DMD's training loss (module docstring); selects on the validation cross-entropy of the fused
    head, as every supervised baseline (the authors select on the validation L1 of their score)."""

    def __init__(self, val_batches, rc: DMDRecipeConfig, units: nn.ModuleDict, ordinal: bool) -> None:
        super().__init__(val_batches)
        self.rc = rc
        self.units = units  # the GD-Units: trained with the model, resumed with the task, never saved
        self.ordinal = ordinal

    def loss(self, model, batch: Batch):
        net = getattr(model, "model", model)
        p = net.decoupled_forward(batch)
        y = batch.classes
        task = F.cross_entropy(p.logits, y) + F.cross_entropy(p.logits_c, y)
        for k in range(3):
            task = task + F.cross_entropy(p.homo_logits[k], y) + F.cross_entropy(p.hetero_logits[k], y)
        recon = sum(masked_mse(p.recon[m], p.origin[m], p.pads[m]) for m in MODALITIES)
        cycle = sum(masked_mse(p.specific[m], p.specific_cycle[m], p.pads[m]) for m in MODALITIES)
        ort = sum(orthogonality(p.specific[m], p.shared[m], p.pads[m]) for m in MODALITIES)
        ids = batch.scores.float() if self.ordinal and batch.scores is not None else y.float()
        feats = torch.stack([p.shared_sim[m] for m in MODALITIES], dim=1).reshape(-1, p.shared_sim["text"].shape[-1])
        margin = margin_loss(feats, ids.repeat_interleave(3), self.rc.margin, self.ordinal)
        rc = self.rc
        total = task + rc.decouple_weight * (cycle + recon + rc.similarity_weight * (margin + ort))
        parts = {"task": task.detach(), "recon": recon.detach(), "cycle": cycle.detach(), "ort": ort.detach(),
                 "margin": margin.detach()}
        if rc.homo_gd:
            homo = self.units["homo"].losses(p.homo_logits, p.homo_repr, include_repr=False)
            total = total + rc.gd_weight * (homo["logit"] + homo["reg"])
            parts["gd_homo"] = (homo["logit"] + homo["reg"]).detach()
        if rc.hetero_gd:
            hetero = self.units["hetero"].losses(p.hetero_logits, p.hetero_repr, include_repr=True)
            total = total + rc.gd_weight * (hetero["logit"] + hetero["repr"] + hetero["reg"])
            parts["gd_hetero"] = (hetero["logit"] + hetero["repr"] + hetero["reg"]).detach()
        parts["loss"] = total.detach()
        return total, parts

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "units": {k: v.clone() for k, v in self.units.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.units.load_state_dict(state["units"])


class _WithUnits(nn.Module):
    """The network and the GD-Units as one module, so one optimiser trains both; forward and the saved
    state are the network's (the loop saves `ctx.model`; the units are resumed with the task)."""

    def __init__(self, model: nn.Module, units: nn.ModuleDict) -> None:
        super().__init__()
        self.model = model
        self.units = units

    def forward(self, batch: Batch):
        return self.model(batch)

    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)


def clip_gradient_values(module: nn.Module, limit: float) -> list:
    """The authors' clip_grad_value_(params, 0.6) after every backward, as a hook per parameter (the
    generic loop steps right after backward); the handles, to remove the hooks after training."""
    return [p.register_hook(lambda g: g.clamp(-limit, limit)) for p in module.parameters() if p.requires_grad]


def build_units(model: nn.Module, rc: DMDRecipeConfig) -> nn.ModuleDict:
    c = model.config
    return nn.ModuleDict({
        "homo": GraphDistillation(c.num_classes, c.d, rc.gd_size_homo,
                                  edge_prior(HOMO_PRIOR_EDGES, rc.prior_temperature), rc, "l1"),
        "hetero": GraphDistillation(c.num_classes, 2 * c.d, rc.gd_size_hetero,
                                    edge_prior(HETERO_PRIOR_EDGES, rc.prior_temperature), rc, "cosine"),
    })


class DMDRecipe:
    config_cls = DMDRecipeConfig

    def train(self, ctx: RecipeContext) -> RecipeResult:
        rc = ctx.recipe
        units = build_units(ctx.model, rc).to(ctx.device)
        wrapped = _WithUnits(ctx.model, units)
        task = DMDTask(ctx.eval_batches(ctx.select_split), rc, units, ordinal=bool(ctx.scheme.scores))
        hooks = clip_gradient_values(wrapped, rc.grad_clip) if rc.grad_clip > 0 else []
        try:
            loop = ctx.run_stage(1, task, ctx.optimizer(wrapped), model=wrapped)
        finally:
            for h in hooks:
                h.remove()
        return RecipeResult(task.best_state, {"train": {"epochs": loop.epoch, "best_epoch": task.best_epoch,
                                                        "best_val_loss": task.best_loss, "history": loop.history}})
