"""MC-Teacher's recipe (Yuan et al. 2024): a mean teacher (Tarvainen & Valpola, NeurIPS 2017) whose
pseudo labels pass through a learned filter instead of a threshold.

- The teacher is the exponential moving average of the student's weights (and BatchNorm statistics),
  `torch.optim.swa_utils.AveragedModel` with `get_ema_multi_avg_fn` (decay `ema_decay`, warmed up as
  the mean teacher's code does), updated after every optimiser step; it never receives gradients.
- Every labeled batch: the supervised losses of the student (fusion, unimodal and bimodal heads, the
  score's L1 where the scheme has scores) on a perturbed view; the consistency cost between the student's
  and the teacher's class distributions, each on its own perturbed view; the filter network's
  cross-entropy, learning from labeled data when the teacher's prediction is right (the paper's learned
  filter of misleading instances, trained where the truth is known).
- With `recipe.unlabeled` (a features file, read through `affectus.data.load.open_data`; its labels are
  never read: its batches are built without labels), every labeled batch is paired with an unlabeled one:
  the consistency cost on it, and the teacher's pseudo label (class and score) for the student, each
  sample weighted by the filter's trust in it. Without the file, only the labeled terms train.
- The consistency and pseudo-label weights ramp up over the first `rampup_epochs` epochs (the mean
  teacher's sigmoid ramp-up exp(-5 (1 - t)^2)).
- Selection: the kept network's (`recipe.keep`, the teacher by default, as mean-teacher results are
  reported) fusion loss on the selection split; its weights are the run's model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from affectus.data.batches import Batch, iterate_batches
from affectus.data.load import is_synth, open_data
from affectus.data.types import MODALITIES, Split
from affectus.errors import AffectusError
from affectus.training.recipes.av_mc import TARGETS, unimodal_targets
from affectus.training.recipes.base import RecipeContext, RecipeResult
from affectus.training.tasks import SelectsBestState

KEEP = ("teacher", "student")


@dataclass
class MCTeacherRecipeConfig:
    # mean teacher: EMA decay of the teacher's weights (Tarvainen & Valpola use 0.99 during ramp-up, 0.999 after)
    ema_decay: float = 0.99
    consistency_weight: float = 1.0  # weight of the consistency cost (theirs: tuned per dataset; ours 1)
    rampup_epochs: int = 5  # epochs of the sigmoid ramp-up of the consistency and pseudo-label weights; 0: none
    pseudo_weight: float = 1.0  # the filter-weighted pseudo-label loss on unlabeled samples
    filter_weight: float = 1.0  # the filter network's cross-entropy on labeled batches
    # False: every pseudo label weighs 1 (a plain mean teacher with pseudo labels, the "w/o filter" ablation)
    use_filter: bool = True
    bimodal_weight: float = 1.0  # each bimodal head's cross-entropy on labeled batches (averaged over the 3)
    # the backbone's head weights, AV-MC V1's (ch-sims-v2 config_regression.py `__V1` / sims3l)
    weight_m: float = 1.0
    weight_t: float = 0.2
    weight_a: float = 0.8
    weight_v: float = 0.4
    score_weight: float = 1.0  # L1 on the fusion score, where the scheme has scores
    unimodal_targets: str = "data"  # data | multimodal, as AV-MC's recipe
    unlabeled: str = ""  # a features file (MMSA pickle / .npz / synth:NAME) of unlabeled clips; "" = none
    unlabeled_split: str = "train"  # the split of that file to use
    keep: str = "teacher"  # teacher | student: the network selected on the selection split and saved

    def validate(self) -> None:
        if not 0.0 <= self.ema_decay < 1.0:
            raise AffectusError(f"recipe.ema_decay = {self.ema_decay}: expected a value in [0, 1)")
        for key in ("consistency_weight", "pseudo_weight", "filter_weight", "bimodal_weight", "weight_m",
                    "weight_t", "weight_a", "weight_v", "score_weight"):
            if not getattr(self, key) >= 0:
                raise AffectusError(f"recipe.{key} = {getattr(self, key)}: expected a weight >= 0")
        if self.rampup_epochs < 0:
            raise AffectusError(f"recipe.rampup_epochs = {self.rampup_epochs}: expected >= 0")
        if self.unimodal_targets not in TARGETS:
            raise AffectusError(f"recipe.unimodal_targets = {self.unimodal_targets!r}: expected one of "
                                f"{', '.join(TARGETS)}")
        if self.keep not in KEEP:
            raise AffectusError(f"recipe.keep = {self.keep!r}: expected one of {', '.join(KEEP)}")
        # checked with the settings, so a wrong path fails before anything trains
        if self.unlabeled and not is_synth(self.unlabeled) and not Path(self.unlabeled).is_file():
            raise AffectusError(f"recipe.unlabeled = {self.unlabeled!r}: no such file (expected an MMSA pickle "
                                f"or an affectus .npz of unlabeled clips)")


def rampup(epoch: int, epochs: int) -> float:
    """The mean teacher's sigmoid ramp-up: exp(-5 (1 - t)^2), t = epoch / epochs in [0, 1]; 1 after."""
    if epochs <= 0 or epoch >= epochs:
        return 1.0
    t = max(epoch, 0) / epochs
    return math.exp(-5.0 * (1.0 - t) ** 2)


def ema_warmup(decay: float):
    """AveragedModel's EMA update (torch's `get_ema_multi_avg_fn`) with the mean teacher's warm-up: after
    n updates the decay is min(decay, 1 - 1 / (n + 1)), so the teacher is a true average of the early
    students rather than clinging to the random initial weights (Tarvainen & Valpola's official code)."""

    def update(ema: list[torch.Tensor], current: list[torch.Tensor], n_averaged) -> None:
        get_ema_multi_avg_fn(min(decay, 1.0 - 1.0 / (float(n_averaged) + 1.0)))(ema, current, n_averaged)

    return update


def consistency(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The mean teacher's consistency cost: squared distance between the two class distributions. (B,)"""
    return (student_logits.softmax(-1) - teacher_logits.softmax(-1)).pow(2).sum(-1)


def load_unlabeled(rc: MCTeacherRecipeConfig, like: Split, tc) -> Split | None:
    """The unlabeled split with the run's inputs applied (`train.text_inputs`: its transcripts re-encoded
    as the labeled data's were; `train.context`: its own neighbours' context columns), checked against the training features' sizes. Its labels are never read."""
    if not rc.unlabeled:
        return None
    from affectus.training.trainer import apply_run_inputs  # the one place a run's inputs are applied

    dataset, _ = open_data(rc.unlabeled)
    dataset = apply_run_inputs(dataset, tc)
    if rc.unlabeled_split not in dataset:
        raise AffectusError(f"recipe.unlabeled {rc.unlabeled}: no split {rc.unlabeled_split!r} (it has "
                            f"{', '.join(dataset.splits)}); set recipe.unlabeled_split")
    split = dataset[rc.unlabeled_split]
    for m in MODALITIES:
        want, got = like.features(m).shape[2], split.features(m).shape[2]
        if want != got:
            raise AffectusError(f"recipe.unlabeled {rc.unlabeled}: {m} features are {got}-d, the training data's "
                                f"{want}-d; the unlabeled clips need the same feature extractors")
    if len(split) < 2:
        raise AffectusError(f"recipe.unlabeled {rc.unlabeled}: split {rc.unlabeled_split!r} needs at least 2 clips")
    return split


class MCTeacherRecipe:
    config_cls = MCTeacherRecipeConfig

    def train(self, ctx: RecipeContext) -> RecipeResult:
        rc, tc, model = ctx.recipe, ctx.train, ctx.model
        unlabeled = load_unlabeled(rc, ctx.train_split, tc)
        teacher = AveragedModel(model, multi_avg_fn=ema_warmup(rc.ema_decay), use_buffers=True)
        teacher.requires_grad_(False)

        def unlabeled_batches(epoch: int, rnd: int) -> Iterator[Batch]:
            # its own stream, seeded by (seed, epoch, round): resumable, and the labeled shuffling is untouched
            rng = np.random.default_rng([tc.seed, 2, epoch, rnd])
            return iterate_batches(unlabeled, tc.batch_size, order=rng.permutation(len(unlabeled)),
                                   with_labels=False, drop_single=True)

        task = MCTeacherTask(rc, ctx.scheme, ctx.eval_batches(ctx.select_split),
                             unimodal_targets(ctx.train_split, ctx.scheme, rc.unimodal_targets), teacher,
                             unlabeled_batches if unlabeled is not None else None)
        loop = ctx.run_stage(1, task, ctx.optimizer())
        summary = {"epochs": loop.epoch, "best_epoch": task.best_epoch, "best_val_loss": task.best_loss,
                   "kept": rc.keep, "history": loop.history,
                   "unlabeled": None if unlabeled is None else {"source": rc.unlabeled, "split": rc.unlabeled_split,
                                                                "clips": len(unlabeled)}}
        # the unlabeled clips train the weights too: where they are one of the run's own splits, that split
        # is marked as seen (a score on it is in-sample); any other file is outside the run's data
        role = next((r for r, split in (("train", ctx.train_split), ("select", ctx.select_split))
                     if unlabeled is not None and same_clips(unlabeled, split)), None)
        return RecipeResult(task.best_state, {"train": summary},
                            fitted_on={"unlabeled_clips": role} if role else {})


def same_clips(a: Split, b: Split) -> bool:
    """Whether two splits hold the same feature arrays (the unlabeled file is one of the run's own splits)."""
    return all(a.features(m).shape == b.features(m).shape and np.array_equal(a.features(m), b.features(m))
               for m in MODALITIES)


class MCTeacherTask(SelectsBestState):
    def __init__(self, rc: MCTeacherRecipeConfig, scheme, val_batches, train_targets: torch.Tensor,
                 teacher: AveragedModel, unlabeled: Callable[[int, int], Iterator[Batch]] | None = None) -> None:
        super().__init__(val_batches)
        self.rc = rc
        self.scheme = scheme
        self.train_targets = train_targets  # (N, 3) unimodal heads' classes, by dataset index
        self.teacher = teacher
        self.unlabeled = unlabeled
        self.epoch = 0
        self.ramp = rampup(0, rc.rampup_epochs)
        self._stream: Iterator[Batch] | None = None
        self._round = 0

    # -- the loop's protocol ------------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.ramp = rampup(epoch - 1, self.rc.rampup_epochs)
        self._round = 0
        self._stream = self.unlabeled(epoch, 0) if self.unlabeled is not None else None

    def _next_unlabeled(self) -> Batch:
        """The next unlabeled batch, starting a fresh pass over the file when one ends."""
        for _ in range(2):
            batch = next(self._stream, None)
            if batch is not None:
                return batch
            self._round += 1
            self._stream = self.unlabeled(self.epoch, self._round)
        raise AffectusError("recipe.unlabeled: the unlabeled split gave no batch")

    def _supervised(self, out, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rc = self.rc
        uni = self.train_targets[batch.index.cpu()].to(batch.classes.device)  # (B, 3)
        loss_m = F.cross_entropy(out.logits, batch.classes)
        if self.scheme.scores and rc.score_weight > 0:
            loss_m = loss_m + rc.score_weight * F.l1_loss(out.score, batch.scores.float())
        heads = sum(w * F.cross_entropy(out.modality_logits[:, k], uni[:, k])
                    for k, w in enumerate((rc.weight_t, rc.weight_a, rc.weight_v)))
        bimodal = sum(F.cross_entropy(out.bimodal_logits[:, k], batch.classes)
                      for k in range(out.bimodal_logits.shape[1])) / out.bimodal_logits.shape[1]
        total = rc.weight_m * loss_m + heads + rc.bimodal_weight * bimodal
        return total, {"ce_m": loss_m.detach(), "heads": heads.detach(), "bimodal": bimodal.detach()}

    def _teacher(self, batch: Batch):
        net = self.teacher.module
        net.eval()  # its own noise on the inputs; no dropout, BatchNorm from its averaged statistics
        with torch.no_grad():
            return net.parts(batch, noise=True)

    def loss(self, model, batch: Batch):
        rc = self.rc
        student = model.parts(batch, noise=True)
        total, parts = self._supervised(student, batch)
        teacher = self._teacher(batch)
        cons = consistency(student.logits, teacher.logits).mean()
        # the filter learns where the teacher's prediction was right, from labeled samples only
        right = (teacher.logits.argmax(-1) == batch.classes).float()
        filt = F.binary_cross_entropy_with_logits(model.reliability_logit(teacher.bimodal_logits), right)
        total = total + self.ramp * rc.consistency_weight * cons + rc.filter_weight * filt
        parts.update({"cons": cons.detach(), "filter": filt.detach()})
        if self.unlabeled is not None:
            u_loss, u_parts = self.unlabeled_loss(model, self._next_unlabeled().to(batch.index.device))
            total = total + u_loss
            parts.update(u_parts)
        parts["loss"] = total.detach()
        return total, parts

    def unlabeled_loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Consistency on an unlabeled batch, and the teacher's pseudo labels weighted by the filter.
        `batch` carries no labels (built with with_labels=False): nothing here could read them."""
        rc = self.rc
        student = model.parts(batch, noise=True)
        teacher = self._teacher(batch)
        cons = consistency(student.logits, teacher.logits).mean()
        if rc.use_filter:
            trust = torch.sigmoid(model.reliability_logit(teacher.bimodal_logits)).detach()  # (B,) in (0, 1)
        else:
            trust = torch.ones_like(teacher.score)
        pseudo = F.cross_entropy(student.logits, teacher.logits.argmax(-1), reduction="none")
        if self.scheme.scores and rc.score_weight > 0:
            pseudo = pseudo + rc.score_weight * (student.score - teacher.score).abs()
        pseudo = (trust * pseudo).mean()
        loss = self.ramp * (rc.consistency_weight * cons + rc.pseudo_weight * pseudo)
        return loss, {"cons_u": cons.detach(), "pseudo_u": pseudo.detach(), "trust_u": trust.mean()}

    def after_step(self, model) -> None:
        self.teacher.update_parameters(model)  # EMA: teacher <- decay * teacher + (1 - decay) * student

    def kept(self, model):
        return self.teacher.module if self.rc.keep == "teacher" else model

    def validate(self, model) -> dict[str, float]:
        net = self.kept(model)
        net.eval()
        device = next(net.parameters()).device
        total = ce = 0.0
        correct = n = 0
        for batch in self.val_batches():
            batch = batch.to(device)
            out = net.parts(batch)
            batch_ce = F.cross_entropy(out.logits, batch.classes, reduction="sum").item()
            loss = batch_ce
            if self.scheme.scores and self.rc.score_weight > 0:
                loss += self.rc.score_weight * (out.score - batch.scores.float()).abs().sum().item()
            total += loss
            ce += batch_ce
            correct += int((out.logits.argmax(-1) == batch.classes).sum())
            n += len(batch)
        n = max(n, 1)
        return {"loss": total / n, "ce_m": ce / n, "acc": 100.0 * correct / n}

    def end_epoch(self, epoch: int, model, val: dict[str, float]) -> bool:
        return super().end_epoch(epoch, self.kept(model), val)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "teacher": copy.deepcopy(self.teacher.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.teacher.load_state_dict(state["teacher"])
