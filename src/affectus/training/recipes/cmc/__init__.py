"""CMC's recipe (paper sec. III-D): stage 1, unimodal pretraining on PLGM pseudo labels; the hand-over of
each modality's best EMA weights and the pseudo labels; stage 2, multimodal finetuning.

The settings of both stages are `CMCRecipeConfig` (the `recipe.*` config section); the variants of
Tables V and VII switch them (configs/variants/cmc.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from affectus.data.types import MODALITIES
from affectus.errors import AffectusError, SettingError
from affectus.training.loop import logger
from affectus.training.recipes.base import FrozenPart, RecipeContext, RecipeResult
from affectus.training.recipes.cmc.tasks import Stage1Task, Stage2Task

_CHOICES = {
    "momentum_form": ("code", "paper"),
    "supcon_form": ("in", "out"),
    "selection": ("faithful", "fixed"),
    "stage2_loss": ("multi", "single"),
    "unimodal_labels": ("pseudo", "ground_truth"),
    "stage2_select": ("total", "multimodal"),
}


@dataclass
class CMCRecipeConfig:
    # PLGM (eqs. 19-30)
    plgm: bool = True  # False: pseudo labels stay the multimodal label ("w/o PLGM")
    unimodal_labels: str = "pseudo"  # pseudo | ground_truth ("CMC-GT": stage 1 on the dataset's unimodal labels)
    label_momentum: list[float] = field(default_factory=lambda: [0.8, 0.99, 0.99])
    label_gamma: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    ema_momentum: list[float] = field(default_factory=lambda: [0.8, 0.9, 0.6])
    ema_gamma: list[float] = field(default_factory=lambda: [2.5, 5.0, 2.0])
    momentum_form: str = "code"  # code | paper
    supcon_tau: float = 0.07
    supcon_form: str = "in"  # in | out
    selection: str = "faithful"  # faithful | fixed (stage-1 validation labels)
    # stage 2
    stage2_loss: str = "multi"  # multi (eqs. 15-18) | single (eq. 15 only)
    stage2_freeze_unimodal: bool = False  # CMC-variant: only the router trains
    stage2_lr: float = 0.0  # 0: same as train.lr (the authors); else stage 2's own learning rate
    stage2_select: str = "total"  # total: lowest validation loss of eq. 18 (the authors); multimodal: of eq. 15
    # cmc_avail: modality dropout in both stages. Each training batch loses every (sample, modality)
    # with this probability, at least one modality kept (seeded per stage and epoch). 0: the paper.
    modality_dropout: float = 0.0

    def validate(self) -> None:
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise SettingError(f"recipe.{key}", getattr(self, key), f"one of {', '.join(allowed)}")
        for key in ("label_momentum", "label_gamma", "ema_momentum", "ema_gamma"):
            values = getattr(self, key)
            if len(values) != 3:
                raise SettingError(f"recipe.{key}", values, "3 values (text, audio, vision)")
            if "momentum" in key and not all(0.0 <= v <= 1.0 for v in values):
                raise SettingError(f"recipe.{key}", values, "momenta in [0, 1]")
        if not self.supcon_tau > 0:
            raise SettingError("recipe.supcon_tau", self.supcon_tau, "a temperature > 0")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise SettingError("recipe.modality_dropout", self.modality_dropout, "a value in [0, 1)")
        if not self.stage2_lr >= 0:
            raise SettingError("recipe.stage2_lr", self.stage2_lr, ">= 0 (0: train.lr)")


class CMCRecipe:
    config_cls = CMCRecipeConfig

    @staticmethod
    def needs_unimodal_labels(rc: CMCRecipeConfig) -> bool:
        return rc.unimodal_labels == "ground_truth"

    def _initial_labels(self, ctx: RecipeContext) -> tuple[torch.Tensor, torch.Tensor]:
        rc, scheme = ctx.recipe, ctx.scheme
        if rc.unimodal_labels == "ground_truth":
            # CMC-GT: the dataset's own unimodal labels replace PLGM in stage 1 (train and selection splits only)
            splits = (ctx.train_split, ctx.select_split)
            if any(s.unimodal_labels is None for s in splits):
                raise AffectusError("variant cmc_gt needs unimodal labels (regression_labels_T/A/V), which this data lacks")
            return tuple(torch.from_numpy(np.stack([scheme.to_classes(s.unimodal_labels[m]) for m in MODALITIES], 1))
                         for s in splits)
        # eq. 19: the one-hot multimodal class for every modality
        return tuple(torch.from_numpy(scheme.to_classes(s.labels))[:, None].repeat(1, 3)
                     for s in (ctx.train_split, ctx.select_split))

    def train(self, ctx: RecipeContext) -> RecipeResult:
        from affectus.training.recipes.cmc.plgm import PseudoLabelBank

        rc, model = ctx.recipe, ctx.model
        init_train, init_val = self._initial_labels(ctx)
        frozen = not rc.plgm or rc.unimodal_labels == "ground_truth"
        classes = ctx.scheme.num_classes  # 3 sentiment classes, or a categorical scheme's N emotions
        bank = PseudoLabelBank(init_train, num_classes=classes, frozen=frozen)
        val_bank = PseudoLabelBank(init_val, num_classes=classes, frozen=frozen or rc.selection == "fixed")
        val_batches = ctx.eval_batches(ctx.select_split)
        summary: dict[str, Any] = {}

        # ---- stage 1: unimodal pretraining ----
        if ctx.saved is None or ctx.resumes(1):
            stage1 = Stage1Task(model, bank, val_bank, val_batches, rc, ctx.scheme)
            loop1 = ctx.run_stage(1, stage1, ctx.optimizer(), missing_rate=rc.modality_dropout)
            # the hand-over: each modality's best EMA weights into the model, the pseudo labels fixed
            train_targets, val_targets = stage1.handover(model)
            stage1_summary = {
                "epochs": loop1.epoch,
                "best_epoch": dict(stage1.best_epoch),
                "best_val_ce": dict(stage1.best_loss),
                "flips": {m: int((train_targets[:, k] != init_train[:, k]).sum()) for k, m in enumerate(MODALITIES)},
                "history": loop1.history,
            }
            bank_tensors = {"initial": bank.initial.clone(), "soft": bank.soft.clone(), "stage2_targets": train_targets,
                            "flip_history": bank.state_dict()["flip_history"]}
            # which labels PLGM flipped, with ids and raw text (the paper's Fig. 6)
            bank.export(ctx.train_split.ids, ctx.train_split.raw_text, ctx.out / "pseudo_labels.csv")
            ctx.saved = None
        else:
            saved = ctx.saved
            stage1_summary, bank_tensors = saved["stage1_summary"], saved["bank_tensors"]
            train_targets, val_targets = saved["train_targets"], saved["val_targets"]
        summary["stage1"] = stage1_summary
        logger.info(f"stage1 done: best epochs {stage1_summary['best_epoch']}, flips {stage1_summary['flips']}")

        # ---- stage 2: multimodal finetuning ----
        stage2 = Stage2Task(train_targets, val_targets, val_batches, rc, ctx.scheme)
        wrapped = None
        if rc.stage2_freeze_unimodal:  # CMC-variant (Fig. 3) trains the router alone
            model.branches.requires_grad_(False)
            wrapped = FrozenPart(model, "branches")
        opt2 = ctx.optimizer(lr=rc.stage2_lr or ctx.train.lr)
        extra = {"stage1_summary": stage1_summary, "bank_tensors": bank_tensors, "train_targets": train_targets,
                 "val_targets": val_targets}
        loop2 = ctx.run_stage(2, stage2, opt2, model=wrapped, extra=extra, missing_rate=rc.modality_dropout)
        if wrapped is not None:
            model.branches.requires_grad_(True)
        summary["stage2"] = {"epochs": loop2.epoch, "best_epoch": stage2.best_epoch,
                             "best_val_loss": stage2.best_loss, "history": loop2.history}
        # PLGM's pseudo labels (bank.safetensors) learn from the training split; the selection split's own
        # pseudo labels only choose epochs (early stopping)
        return RecipeResult(stage2.best_state, summary, bank_tensors,
                            fitted_on={"pseudo_labels": None if frozen else "train"})
