"""CUMDF's recipe: a teacher on complete data (stage 1), then a student on MRMS-dropped data (stage 2),
distilled from the frozen teacher with SRD (eq. 10) and the MACI-weighted per-modality distillation
(eqs. 11-16), plus L_reg (eq. 17) and the task loss (eq. 18), combined as eq. 19 with weights 0.1.

Settings are `CUMDFRecipeConfig` (the `recipe.*` section); the Table 3 ablations switch them and the
model's (configs/variants/cumdf.yaml). docs/cumdf.md gives every choice beside its equation.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from affectus.data.batches import Batch, iterate_batches
from affectus.data.missing import mrms
from affectus.data.types import MODALITIES, Split
from affectus.errors import AffectusError
from affectus.training.loop import logger
from affectus.training.recipes.base import RecipeContext, RecipeResult
from affectus.training.tasks import SelectsBestState

_CHOICES = {"maci_focus": ("under", "attribution"), "student_init": ("teacher", "fresh")}


@dataclass
class CUMDFRecipeConfig:
    drop_ratio: float = 0.2  # MRMS p of the student's training (and selection) data; Table 3 uses 0.2
    # eq. 19: L = lambda_1 L_reg + lambda_2 L_cou + lambda_3 L_SRD + L_task (appendix: all 0.1)
    lambda_reg: float = 0.1
    lambda_cou: float = 0.1
    lambda_srd: float = 0.1
    # eq. 17's coefficients lambda_Q^le, lambda_K^m, lambda_V^m (paper silent) on squared Frobenius norms
    reg_q: float = 1e-3
    reg_k: float = 1e-3
    reg_v: float = 1e-3
    maci: bool = True  # False: "w/o MACI", the per-modality distillation weighted 1/3 each
    # under: modality m's distillation weight is (1 - X_con_m) / 2, larger for modalities that contribute
    # less ("focus the student on under-optimized modalities"); attribution: X_con_m itself
    maci_focus: str = "under"
    mean_momentum: float = 0.9  # running training-set average of X~_m (eq. 12), per batch
    first_pass_weight: float = 1.0  # CE of the first-pass prediction that picks the label embedding
    score_weight: float = 1.0  # L1 on the sentiment score, when the label scheme has scores (MOSI's MAE)
    student_init: str = "teacher"  # teacher: the student starts from the teacher's weights; fresh: re-drawn
    teacher_epochs: int = 0  # 0: train.epochs

    def validate(self) -> None:
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise AffectusError(f"recipe.{key} = {getattr(self, key)!r}: expected one of {', '.join(allowed)}")
        if not 0.0 <= self.drop_ratio < 1.0:
            raise AffectusError(f"recipe.drop_ratio = {self.drop_ratio}: expected a value in [0, 1)")
        if not 0.0 <= self.mean_momentum < 1.0:
            raise AffectusError(f"recipe.mean_momentum = {self.mean_momentum}: expected a value in [0, 1)")
        weights = ("lambda_reg", "lambda_cou", "lambda_srd", "reg_q", "reg_k", "reg_v", "first_pass_weight",
                   "score_weight")
        for key in weights:
            if not getattr(self, key) >= 0:
                raise AffectusError(f"recipe.{key} = {getattr(self, key)}: expected a weight >= 0")
        if self.teacher_epochs < 0:
            raise AffectusError(f"recipe.teacher_epochs = {self.teacher_epochs}: expected >= 0 (0: train.epochs)")


# ------------------------------------------------------------------------------------------ MACI


def maci_attribution(delta: torch.Tensor) -> torch.Tensor:
    """Eq. 14 (and eq. 15's normalisation): per-sample attribution scores delta (N, 3) -> each modality's
    share of the summed |delta|, (3,), summing to 1; uniform when no modality changes any prediction."""
    totals = delta.abs().sum(0)  # (3,)
    whole = totals.sum()
    if whole <= 0:
        return torch.full_like(totals, 1.0 / totals.numel())
    return totals / whole


def distillation_weights(attribution: torch.Tensor, focus: str) -> torch.Tensor:
    """Eq. 16's re-weighting: the weight of each modality's distillation (3,), summing to 1."""
    if focus == "attribution":
        return attribution
    return (1.0 - attribution) / (attribution.numel() - 1)


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cos over the last axis (eq. 10's bracket); 0-vectors give distance 1, never NaN."""
    return 1.0 - F.cosine_similarity(student, teacher, dim=-1, eps=1e-8)


# ---------------------------------------------------------------------------------------- tasks


@dataclass
class TeacherTargets:
    """What the frozen teacher gives the student, per training sample (by dataset index)."""

    fused: torch.Tensor  # (N, 3d): H^t
    pooled: torch.Tensor  # (N, 3, d): each modality's X~^t averaged over its steps
    present: torch.Tensor  # (N, 3) bool


@torch.no_grad()
def teacher_targets(teacher: nn.Module, split: Split, batch_size: int, device: torch.device) -> TeacherTargets:
    teacher.eval()
    fused, pooled, present = [], [], []
    for batch in iterate_batches(split, batch_size, with_labels=False):
        p = teacher.parts(batch.to(device))
        fused.append(p.fused)
        pooled.append(p.pooled)
        present.append(p.present)
    return TeacherTargets(torch.cat(fused), torch.cat(pooled), torch.cat(present))


class _Distiller(nn.Module):
    """The student and its distillation connectors (W_s of eq. 10 and one per modality), trained together;
    the connectors are training-only and never part of the saved model."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student
        d = student.config.hidden
        # W_s (eq. 10), one d x d map applied to each of H's three pair blocks; the teacher side W_t is the identity
        self.fused_proj = nn.Linear(d, d)
        self.modal_proj = nn.ModuleList(nn.Linear(d, d) for _ in MODALITIES)
        for lin in (self.fused_proj, *self.modal_proj):  # start as the identity: the student starts as the teacher
            nn.init.eye_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, batch: Batch):
        return self.student(batch)


class CUMDFTask(SelectsBestState):
    """L_task + lambda_1 L_reg (teacher), plus lambda_2 L_cou + lambda_3 L_SRD with `targets` (student)."""

    def __init__(self, name: str, rc: CUMDFRecipeConfig, scheme, val_batches, targets: TeacherTargets | None = None,
                 distiller: _Distiller | None = None):
        super().__init__(val_batches)
        self.name = name
        self.rc = rc
        self.scheme = scheme
        self.targets = targets
        self.distiller = distiller  # its connectors are resumed with the task (the loop saves the student only)
        self.means: torch.Tensor | None = None  # (3, d) running training-set average of X~_m (eq. 12)

    def _task_loss(self, p, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 18 (cross-entropy), plus the first pass's CE and, for score labels, L1 on the score."""
        ce = F.cross_entropy(p.logits, batch.classes)
        loss = ce + self.rc.first_pass_weight * F.cross_entropy(p.first_logits, batch.classes)
        if self.scheme.scores:
            loss = loss + self.rc.score_weight * F.l1_loss(p.regression, batch.scores.float())
        return loss, {"ce": ce.item()}

    def _reg(self, model) -> torch.Tensor:
        """Eq. 17: squared Frobenius norms of W_Q^le, W_K^m, W_V^m."""
        w = model.attention_weights()
        coef = [self.rc.reg_q] + [self.rc.reg_k] * 3 + [self.rc.reg_v] * 3
        return sum(c * weight.pow(2).sum() for c, weight in zip(coef, w))

    def loss(self, model, batch: Batch):
        net = model.student if self.targets is not None else model
        p = net.parts(batch)
        task, parts = self._task_loss(p, batch)
        reg = self._reg(net)
        total = task + self.rc.lambda_reg * reg
        parts.update({"task": task.item(), "reg": reg.item()})
        if self.targets is not None:
            index = batch.index.cpu()
            ht = self.targets.fused[index].to(p.fused.device)  # (B, 3d)
            b = p.fused.shape[0]
            srd = cosine_distance(model.fused_proj(p.fused.view(b, 3, -1)).view(b, -1), ht).mean()  # eq. 10
            xt = self.targets.pooled[index].to(p.pooled.device)  # (B, 3, d)
            both = p.present & self.targets.present[index].to(p.present.device)  # (B, 3)
            per = torch.stack([cosine_distance(model.modal_proj[k](p.pooled[:, k]), xt[:, k])
                               for k in range(3)], 1)  # (B, 3)
            per_modality = (per * both).sum(0) / both.sum(0).clamp(min=1)  # (3,)
            attribution = self._attribute(net, p)
            weights = (distillation_weights(attribution, self.rc.maci_focus) if self.rc.maci
                       else torch.full_like(attribution, 1.0 / 3))
            cou = (weights.to(per_modality.device) * per_modality).sum()  # eq. 16, re-weighted distillation
            total = total + self.rc.lambda_cou * cou + self.rc.lambda_srd * srd
            parts.update({"srd": srd.item(), "cou": cou.item()})
            parts.update({f"attr_{m}": float(a) for m, a in zip(MODALITIES, attribution)})
        parts["loss"] = total.item()
        return total, parts

    @torch.no_grad()
    def _attribute(self, net, p) -> torch.Tensor:
        """MACI (eqs. 12-14): move the running average of each modality's representation, predict with
        each modality replaced by it, and score each modality by how far the prediction moves."""
        pooled, present = p.pooled.detach(), p.present  # (B, 3, d), (B, 3)
        batch_mean = (pooled * present.unsqueeze(-1)).sum(0) / present.sum(0).clamp(min=1).unsqueeze(-1)  # (3, d)
        if self.means is None:
            self.means = batch_mean
        else:
            has = present.any(0)[:, None]
            m = self.rc.mean_momentum
            self.means = torch.where(has, m * self.means.to(pooled.device) + (1 - m) * batch_mean, self.means)
        full, counterfactual = net.counterfactual_probs(p.encoded, self.means)  # (B, C), (3, B, C)
        # eq. 13 as a distance between distributions: half the L1 distance, in [0, 1]; 0 where m is absent
        delta = 0.5 * (full[None] - counterfactual).abs().sum(-1).transpose(0, 1) * present  # (B, 3)
        return maci_attribution(delta)

    def validate(self, model) -> dict[str, float]:
        net = getattr(model, "student", model)
        device = next(net.parameters()).device
        totals, n = {"loss": 0.0, "ce": 0.0}, 0
        for batch in self.val_batches():
            batch = batch.to(device)
            loss, parts = self._task_loss(net.parts(batch), batch)
            totals["loss"] += loss.item() * len(batch)
            totals["ce"] += parts["ce"] * len(batch)
            n += len(batch)
        return {k: v / max(n, 1) for k, v in totals.items()}

    def end_epoch(self, epoch: int, model, val: dict[str, float]) -> bool:
        return super().end_epoch(epoch, getattr(model, "student", model), val)

    def state_dict(self) -> dict[str, Any]:
        connectors = None
        if self.distiller is not None:
            connectors = {k: v.clone() for k, v in self.distiller.state_dict().items() if not k.startswith("student.")}
        return {**super().state_dict(), "means": self.means, "connectors": connectors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.means = state["means"]
        if self.distiller is not None:
            self.distiller.load_state_dict(state["connectors"], strict=False)


# --------------------------------------------------------------------------------------- recipe

# Passes without gradients (selection-split losses every epoch, the teacher's targets) run in batches of
# this many training batches: in eval mode every sample's outputs are independent of its batch, so the
# losses are the same (up to float rounding) in a quarter of the calls.
EVAL_BATCH_FACTOR = 4


def eval_batches(ctx: RecipeContext, split: Split):
    return lambda: iterate_batches(split, ctx.train.batch_size * EVAL_BATCH_FACTOR, scheme=ctx.scheme)


def fused_adam(ctx: RecipeContext, model: nn.Module | None = None) -> torch.optim.Optimizer:
    """`ctx.optimizer`'s Adam (its parameter groups, learning rates, decay) as torch's fused kernel where
    the device has one: CUMDF's hidden size of 300 makes the optimiser step the largest part of a step
    on CPU (~3x faster fused on 4.8M parameters); the update rule is the same."""
    base = ctx.optimizer(model)
    groups = [{k: v for k, v in g.items() if k in ("params", "lr", "weight_decay")} for g in base.param_groups]
    try:
        return torch.optim.Adam(groups, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return base


class CUMDFRecipe:
    config_cls = CUMDFRecipeConfig

    def train(self, ctx: RecipeContext) -> RecipeResult:
        rc, model, tc = ctx.recipe, ctx.model, ctx.train
        summary: dict[str, Any] = {}

        # ---- stage 1: the teacher, on complete data ----
        if ctx.saved is None or ctx.resumes(1):
            teacher_task = CUMDFTask("teacher", rc, ctx.scheme, eval_batches(ctx, ctx.select_split))
            teacher_ctx = ctx
            if rc.teacher_epochs:
                teacher_ctx = dataclasses.replace(ctx, train=dataclasses.replace(tc, epochs=rc.teacher_epochs))
            loop1 = teacher_ctx.run_stage(1, teacher_task, fused_adam(ctx))
            teacher_state = teacher_task.best_state
            teacher_summary = {"epochs": loop1.epoch, "best_epoch": teacher_task.best_epoch,
                               "best_val_loss": teacher_task.best_loss, "history": loop1.history}
            ctx.saved = None
        else:
            teacher_state, teacher_summary = ctx.saved["teacher_state"], ctx.saved["teacher_summary"]
        summary["teacher"] = teacher_summary
        logger.info(f"teacher done: best epoch {teacher_summary['best_epoch']}")

        teacher = copy.deepcopy(model)
        teacher.load_state_dict(teacher_state)
        teacher.requires_grad_(False)
        targets = teacher_targets(teacher, ctx.train_split, tc.batch_size * EVAL_BATCH_FACTOR, ctx.device)

        # ---- stage 2: the student, on MRMS-dropped data, distilled from the teacher ----
        resuming = ctx.resumes(2)
        if not resuming:
            if rc.student_init == "teacher":
                model.load_state_dict(teacher_state)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(tc.seed + 1)
                    model.load_state_dict(type(model)(model.config).to(ctx.device).state_dict())
        distiller = _Distiller(model).to(ctx.device)
        # the same drop for a seed; the selection split gets its own draw (the student is chosen on dropped data)
        dropped = mrms(ctx.train_split, rc.drop_ratio, tc.seed)
        dropped_select = mrms(ctx.select_split, rc.drop_ratio, tc.seed + 1)
        student_ctx = dataclasses.replace(ctx, train_split=dropped)
        student_task = CUMDFTask("student", rc, ctx.scheme, eval_batches(ctx, dropped_select), targets,
                                 distiller)
        extra = {"teacher_state": teacher_state, "teacher_summary": teacher_summary}
        loop2 = student_ctx.run_stage(2, student_task, fused_adam(ctx, distiller), model=distiller, extra=extra)
        history = loop2.history
        attribution = {m: history[-1].get(f"train_attr_{m}") for m in MODALITIES} if history else {}
        summary["student"] = {"epochs": loop2.epoch, "best_epoch": student_task.best_epoch,
                              "best_val_loss": student_task.best_loss, "drop_ratio": rc.drop_ratio,
                              "last_attribution": attribution, "history": history}
        return RecipeResult(student_task.best_state, summary)
