"""MMIN's recipe (docs/baselines/mmin.md), two stages as the official code runs them (AIM3-RUC/MMIN, master):

Stage 0, `pretrain` (train_baseline.py --model=utt_fusion, scripts/CAP_utt_fusion.sh): the three modality
encoders and a classifier of their own on the concatenated utterance vectors, trained with cross-entropy on
full-modality data; the epoch with the lowest selection-split cross-entropy is kept. The encoders then
(a) initialise MMIN's encoders and (b) are copied, frozen, as the "teacher" that gives the imagination its
targets. The classifier is training-only and is not part of the saved model.

Stage 1 (train_miss.py --model=mmin, scripts/CAP_mmin.sh): every training sample gets one of the six
incomplete conditions {a}, {v}, {l}, {a,v}, {a,l}, {v,l}, drawn uniformly per sample and per epoch (the
official `multimodal_miss` dataset; `missing: seven` adds the full condition), and

    L = ce_weight * CE(logits, y)
      + mse_weight * MSE(h', teacher(x reversed))          forward imagination
      + cycle_weight * MSE(CRA_back(h'), stopgrad(x))       backward imagination (cycle)

where "x reversed" is the sample with its available modalities zeroed and its missing ones present: the
target of h' is the teacher's vector of each missing modality (and its response to a zero input at the
available ones), exactly the official `T_embds`. Adam with beta1 0.5, each network's gradient norm clipped
to 1.0, learning rate constant for the first half of the epochs and decayed linearly to near zero over the
second (the `linear` policy, niter = niter_decay). The epoch kept is the one with the lowest mean
cross-entropy over the selection split under each training condition (the official code keeps the epoch
with the best validation UAR over the six conditions).

IF-MMIN (training/recipes/if_mmin.py) runs the same two stages with other weights: its stage 0 adds CMD
between the modalities' invariant features, its stage 1 an invariance loss and no cycle.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from affectus.data.batches import Batch
from affectus.data.missing import CONDITIONS, usable_conditions, with_availability
from affectus.data.types import MODALITIES
from affectus.errors import AffectusError
from affectus.models.mmin import fc_classifier, kaiming_init
from affectus.training.recipes.base import RecipeContext, RecipeResult
from affectus.training.tasks import SelectsBestState, mean_ce_over_sets

logger = logging.getLogger("affectus.training")

MISSING_KINDS = ("six", "seven")
INCOMPLETE = tuple(c for c in CONDITIONS if len(c) < len(MODALITIES))  # the six of MMIN's protocol


@dataclass
class MMINRecipeConfig:
    # stage 0: the utterance-level fusion model on full-modality data (CAP_utt_fusion.sh); False: none,
    # which leaves the imagination without targets (needs mse_weight = invariant_weight = 0)
    pretrain: bool = True
    pretrain_epochs: int = 0  # 0: train.epochs (CAP_utt_fusion.sh: niter 10 + niter_decay 10 = 20)
    pretrain_dropout: float = 0.3  # the pretraining classifier's dropout_rate (CAP_utt_fusion.sh)
    pretrain_beta1: float = 0.9  # Adam beta1 of stage 0 (CAP_utt_fusion.sh --beta1=0.9)
    pretrain_clip: float = 0.5  # per-network gradient norm bound of stage 0 (utt_fusion_model.py)
    cmd_weight: float = 0.0  # CMD between the invariant features in stage 0 (IF-MMIN only)
    cmd_moments: int = 5  # K of CMD (IF-MMIN utt_shared_model.py)
    ce_weight: float = 1.0  # CAP_mmin.sh --ce_weight=1.0
    mse_weight: float = 4.0  # forward imagination (CAP_mmin.sh --mse_weight=4.0)
    cycle_weight: float = 2.0  # backward imagination (CAP_mmin.sh --cycle_weight=2.0)
    invariant_weight: float = 0.0  # IF-MMIN's invariance loss
    beta1: float = 0.5  # Adam beta1 of stage 1 (opts/get_opts.py default; CAP_mmin.sh does not set it)
    clip: float = 1.0  # per-network gradient norm bound of stage 1 (mmin_model.py); 0: none
    lr_decay: bool = True  # the `linear` policy: constant for the first half of the epochs, then linear decay
    # stage 1's training conditions: "six", one of the six incomplete conditions per sample (MMIN's
    # multimodal_miss dataset); "seven", the full condition as well (every condition evaluation scores)
    missing: str = "six"

    def validate(self) -> None:
        if self.missing not in MISSING_KINDS:
            raise AffectusError(f"recipe.missing = {self.missing!r}: expected one of {', '.join(MISSING_KINDS)}")
        for key in ("cmd_weight", "ce_weight", "mse_weight", "cycle_weight", "invariant_weight", "clip",
                    "pretrain_clip"):
            if not getattr(self, key) >= 0:
                raise AffectusError(f"recipe.{key} = {getattr(self, key)}: expected a value >= 0")
        for key in ("beta1", "pretrain_beta1"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise AffectusError(f"recipe.{key} = {getattr(self, key)}: expected a value in [0, 1)")
        if not 0.0 <= self.pretrain_dropout < 1.0:
            raise AffectusError(f"recipe.pretrain_dropout = {self.pretrain_dropout}: expected a dropout rate in [0, 1)")
        if self.pretrain_epochs < 0:
            raise AffectusError(f"recipe.pretrain_epochs = {self.pretrain_epochs}: expected >= 0 (0: train.epochs)")
        if self.cmd_moments < 1:
            raise AffectusError(f"recipe.cmd_moments = {self.cmd_moments}: expected >= 1")
        if not self.pretrain:
            needs = [k for k in ("mse_weight", "invariant_weight", "cmd_weight") if getattr(self, k) > 0]
            if needs:
                raise AffectusError(f"recipe.pretrain = false leaves the imagination without its pretrained teacher: "
                                    f"set {', '.join(f'recipe.{k}' for k in needs)} to 0 as well")


# ------------------------------------------------------------------------------------------ losses


def cmd(x: torch.Tensor, y: torch.Tensor, moments: int) -> torch.Tensor:
    """Central moment discrepancy (Zellinger et al., ICLR 2017) between two batches of vectors (N, d), as
    IF-MMIN uses it (without the paper's 1/|b-a|^k scaling): ||E x - E y|| + sum_{k=2..K} ||c_k(x) - c_k(y)||,
    c_k the k-th central moment per coordinate."""
    mx, my = x.mean(0), y.mean(0)
    cx, cy = x - mx, y - my
    total = (mx - my).norm()
    for k in range(2, moments + 1):
        total = total + (cx.pow(k).mean(0) - cy.pow(k).mean(0)).norm()
    return total


def lr_factor(epoch: int, epochs: int) -> float:
    """The official `linear` policy with niter = ceil(epochs / 2), niter_decay = the rest: epoch e (1-based)
    trains at 1 - max(0, e - niter) / (niter_decay + 1) of the base rate."""
    niter = (epochs + 1) // 2
    return 1.0 - max(0, epoch - niter) / float(epochs - niter + 1)


class ClippedAdam(torch.optim.Adam):
    """Adam that bounds each parameter group's gradient norm before its step: the official code clips
    every network (each encoder, each CRA, the classifier) separately, so each is a group here."""

    def __init__(self, groups: list[list[nn.Parameter]], lr: float, beta1: float, clip: float) -> None:
        super().__init__([{"params": g} for g in groups if g], lr=lr, betas=(beta1, 0.999))
        self.clip = clip

    @torch.no_grad()
    def step(self, closure=None):
        if self.clip > 0:
            for group in self.param_groups:
                torch.nn.utils.clip_grad_norm_(group["params"], self.clip)
        return super().step(closure)


def network_groups(*modules: nn.Module | None) -> list[list[nn.Parameter]]:
    """One parameter group per network: each modality encoder, then each further module given."""
    groups = []
    for module in modules:
        if module is None:
            continue
        nets = getattr(module, "nets", None)
        children = list(nets.values()) if isinstance(nets, nn.ModuleDict) else [module]
        groups += [[p for p in child.parameters() if p.requires_grad] for child in children]
    return groups


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# ------------------------------------------------------------------------------------------ stage 0


class Pretrainer(nn.Module):
    """Stage 0's network: the model's encoders (and IF-MMIN's shared encoder) with a classifier of its own
    on [h_t; h_a; h_v] (and, for IF-MMIN, [S(h_t); S(h_a); S(h_v)] beside it, as utt_shared_model.py)."""

    def __init__(self, model: nn.Module, dropout: float) -> None:
        super().__init__()
        self.model = model
        c = model.config
        width = len(MODALITIES) * c.embd * (2 if model.shared is not None else 1)
        self.head = fc_classifier(width, c.cls_layers, c.num_classes, dropout)
        self.head.apply(kaiming_init)  # as the official utt_fusion / utt_shared classifier

    def parts(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> (logits (B, C), h (B, 3, E), S(h) (B, 3, E) or None)."""
        h = self.model.encoders(batch)
        inv = self.model.shared(h) if self.model.shared is not None else None
        joint = h.flatten(1) if inv is None else torch.cat([h.flatten(1), inv.flatten(1)], dim=-1)
        return self.head(joint), h, inv

    def forward(self, batch: Batch):
        return self.parts(batch)[0]


class PretrainTask(SelectsBestState):
    name = "pretrain"

    def __init__(self, val_batches, rc: MMINRecipeConfig, optimizer, lr: float, epochs: int, pre: Pretrainer) -> None:
        super().__init__(val_batches)
        self.rc, self.optimizer, self.lr, self.epochs, self.pre = rc, optimizer, lr, epochs, pre

    def start_epoch(self, epoch: int) -> None:
        if self.rc.lr_decay:
            set_lr(self.optimizer, self.lr * lr_factor(epoch, self.epochs))

    def loss(self, model, batch: Batch):
        logits, _, inv = model.parts(batch)
        ce = F.cross_entropy(logits.float(), batch.classes)
        total, out = ce, {"ce": ce.detach()}
        if inv is not None and self.rc.cmd_weight > 0:
            pairs = ((0, 1), (0, 2), (1, 2))
            d = sum(cmd(inv[:, i].float(), inv[:, j].float(), self.rc.cmd_moments) for i, j in pairs) / len(pairs)
            total = total + self.rc.cmd_weight * d
            out["cmd"] = d.detach()
        out["loss"] = total.detach()
        return total, out

    def validate(self, model) -> dict[str, float]:
        device = next(model.parameters()).device
        total, n = 0.0, 0
        for batch in self.val_batches():
            batch = batch.to(device)
            total += F.cross_entropy(model(batch).float(), batch.classes, reduction="sum").item()
            n += len(batch)
        return {"loss": total / max(n, 1)}

    def state_dict(self) -> dict[str, Any]:  # the head is not in the model: it resumes with the task
        return {**super().state_dict(), "head": {k: v.clone() for k, v in self.pre.head.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.pre.head.load_state_dict(state["head"])


# ------------------------------------------------------------------------------------------ stage 1


class Teacher(nn.Module):
    """The frozen pretrained encoders (and shared encoder): the imagination's targets."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoders = copy.deepcopy(model.encoders)
        self.shared = copy.deepcopy(model.shared)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # always in evaluation mode (the official teacher's .eval())
        return super().train(False)


def condition_table(kind: str) -> np.ndarray:
    conditions = INCOMPLETE if kind == "six" else CONDITIONS
    return np.array([[m in c for m in MODALITIES] for c in conditions])  # (6 or 7, 3)


class ImagineTask(SelectsBestState):
    """Stage 1's loss under the drawn missing conditions; selection as the module docstring says."""

    name = "mmin"

    def __init__(self, val_sets: list, rc: MMINRecipeConfig, teacher: Teacher | None, optimizer, lr: float,
                 epochs: int, seed: int) -> None:
        super().__init__(val_sets[0])
        self.val_sets, self.rc, self.teacher = val_sets, rc, teacher
        self.optimizer, self.lr, self.epochs, self.seed = optimizer, lr, epochs, seed
        self.table = condition_table(rc.missing)
        self.rng = np.random.default_rng([seed, 1, 0])

    def start_epoch(self, epoch: int) -> None:
        # the conditions of an epoch come from (seed, epoch): the same draws on a resume
        self.rng = np.random.default_rng([self.seed, 1, epoch, 0x4D4D494E])
        if self.rc.lr_decay:
            set_lr(self.optimizer, self.lr * lr_factor(epoch, self.epochs))

    def draw(self, batch: Batch) -> torch.Tensor:
        """(B, 3) bool: each sample's training condition, within what its file has (a sample left with
        nothing keeps what it has, as the generic modality dropout does)."""
        drawn = torch.from_numpy(self.table[self.rng.integers(0, len(self.table), size=len(batch))])
        have = batch.availability().cpu()
        kept = drawn & have
        empty = ~kept.any(dim=1)
        kept[empty] = have[empty]
        return kept.to(batch.index.device)

    def loss(self, model, batch: Batch):
        have = batch.availability()
        kept = self.draw(batch)
        parts = model.represent(batch.with_available(kept))
        ce = F.cross_entropy(parts.logits.float(), batch.classes)
        total = self.rc.ce_weight * ce
        out = {"ce": ce.detach()}
        if self.teacher is not None and (self.rc.mse_weight > 0 or self.rc.invariant_weight > 0):
            with torch.no_grad():
                # the official `*_reverse` inputs: the missing modalities present, the available ones zeroed
                target = self.teacher.encoders(batch, have & ~kept).flatten(1)  # (B, 3E)
                full = self.teacher.encoders(batch, have) if self.rc.invariant_weight > 0 else None
            if self.rc.mse_weight > 0:
                mse = F.mse_loss(parts.imagined.float(), target.float())
                total = total + self.rc.mse_weight * mse
                out["imagine"] = mse.detach()
            if self.rc.invariant_weight > 0:
                with torch.no_grad():
                    inv_target = self.teacher.shared(full).flatten(1)
                inv = F.mse_loss(parts.invariant.float(), inv_target.float())
                total = total + self.rc.invariant_weight * inv
                out["invariant"] = inv.detach()
        if self.rc.cycle_weight > 0 and parts.cycle is not None:
            cyc = F.mse_loss(parts.cycle.float(), parts.feats.detach().float())
            total = total + self.rc.cycle_weight * cyc
            out["cycle"] = cyc.detach()
        out["loss"] = total.detach()
        return total, out

    def validate(self, model) -> dict[str, float]:
        return mean_ce_over_sets(model, self.val_sets)  # each condition weighs the same


# ------------------------------------------------------------------------------------------ recipe


class MMINRecipe:
    config_cls = MMINRecipeConfig

    def train(self, ctx: RecipeContext) -> RecipeResult:
        rc, model, tc = ctx.recipe, ctx.model, ctx.train
        if rc.invariant_weight > 0 and model.shared is None:
            raise AffectusError("recipe.invariant_weight > 0 needs model.invariant = true (IF-MMIN's shared encoder)")
        if rc.cmd_weight > 0 and model.shared is None:
            raise AffectusError("recipe.cmd_weight > 0 needs model.invariant = true (IF-MMIN's shared encoder)")
        summary: dict[str, Any] = {}
        teacher = None
        if rc.pretrain:
            if ctx.saved is None or ctx.resumes(0):
                pre = Pretrainer(model, rc.pretrain_dropout).to(ctx.device)
                epochs0 = rc.pretrain_epochs or tc.epochs
                opt0 = ClippedAdam(network_groups(model.encoders, model.shared, pre.head), tc.lr, rc.pretrain_beta1,
                                   rc.pretrain_clip)
                task0 = PretrainTask(ctx.eval_batches(ctx.select_split), rc, opt0, tc.lr, epochs0, pre)
                ctx0 = ctx if epochs0 == tc.epochs else _with_epochs(ctx, epochs0)
                loop0 = ctx0.run_stage(0, task0, opt0, model=pre)
                pre.load_state_dict(task0.best_state)  # the encoders of the best pretraining epoch
                summary["pretrain"] = {"epochs": loop0.epoch, "best_epoch": task0.best_epoch,
                                       "best_val_loss": task0.best_loss, "history": loop0.history}
                teacher = Teacher(model)
                teacher_state = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
                ctx.saved = None
            else:  # resuming stage 1: the teacher was saved with it
                summary["pretrain"] = ctx.saved["pretrain_summary"]
                teacher_state = ctx.saved["teacher"]
                teacher = Teacher(model)
                teacher.load_state_dict(teacher_state)
            logger.info(f"{model.name}: pretraining done, best epoch {summary['pretrain']['best_epoch']}")
        select = ctx.select_split
        conditions = [cond for cond in usable_conditions(select)
                      if rc.missing == "seven" or len(cond) < len(MODALITIES)] or list(usable_conditions(select))
        val_sets = [ctx.eval_batches(with_availability(select, cond)) for cond in conditions]
        params = network_groups(model.encoders, model.cra, model.cra_back, model.shared, model.classifier)
        optimizer = ClippedAdam(params, tc.lr, rc.beta1, rc.clip)
        task = ImagineTask(val_sets, rc, teacher, optimizer, tc.lr, tc.epochs, tc.seed)
        task.name = model.name  # the stage's name in the epoch lines: mmin or if_mmin
        extra = {"teacher": teacher_state, "pretrain_summary": summary["pretrain"]} if rc.pretrain else None
        loop = ctx.run_stage(1, task, optimizer, extra=extra)
        summary["train"] = {"epochs": loop.epoch, "best_epoch": task.best_epoch, "best_val_loss": task.best_loss,
                            "conditions": ["".join(m[0] for m in cond) for cond in conditions],
                            "history": loop.history}
        return RecipeResult(task.best_state, summary)


def _with_epochs(ctx: RecipeContext, epochs: int) -> RecipeContext:
    return dataclasses.replace(ctx, train=dataclasses.replace(ctx.train, epochs=epochs))
