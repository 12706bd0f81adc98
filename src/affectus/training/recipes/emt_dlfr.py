"""EMT-DLFR's recipe (Sun et al., IEEE TAC 2023): one stage on two views of every batch, after the
authors' `trains/missingTask/EMT_DLFR.py`.

Per batch, the complete view (the batch as the data gives it) and an incomplete view in which every valid
frame of every modality is zeroed with probability `frame_rate` (the authors' random feature dropping;
lengths unchanged) and, our option for the 7-condition protocol, whole modalities are dropped with
`modality_rate` (at least one kept per sample). Both views run through the same network.

    L = CE(incomplete) + attra_weight * (L_attra + CE(complete)) + recon_weight * L_recon

- L_attra (high-level attraction, SimSiam): for the GMC and each utterance vector, the symmetric negative
  cosine between one view's prediction and the other view's projection, the projection's gradient stopped.
- L_recon (low-level reconstruction): SmoothL1 between the incomplete view's restored features and the
  complete view's input features, averaged over the dropped frames (and their feature entries) only.
- CE replaces the authors' L1 on a score (the toolkit's labels are classes).

Selection: the same total loss on the selection split, its incomplete view drawn once from the run's seed
(identical every epoch), as the authors select on the validation split's total loss (`KeyEval: Loss`).
Optimiser: Adam with the authors' per-part learning rates and L2 decays (audio / vision encoders and the
rest; `train.lr` is the rest's).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import SettingError
from affectus.models.emt_dlfr import HIGH_LEVEL, EMTParts
from affectus.training.recipes.base import RecipeContext, RecipeResult
from affectus.training.tasks import SelectsBestState


@dataclass
class EMTDLFRRecipeConfig:
    # Official code: run.py --missing (scripts/mosi/run.sh trains at 0.5): each valid frame of each modality
    # is dropped (zeroed) with this probability in the incomplete view.
    frame_rate: float = 0.5
    # Ours: each (sample, modality) of the incomplete view is also absent with this probability (zeros,
    # length 0), at least one kept per sample; 0 keeps the authors' frame dropping alone.
    modality_rate: float = 0.0
    attra_weight: float = 1.0  # loss_attra_weight
    recon_weight: float = 1.0  # loss_recon_weight
    # Official config, mosi: learning_rate_audio / _video and weight_decay_audio / _video / _other (Adam's
    # L2); the other parameters use train.lr (learning_rate_other 1e-3, the toolkit's default).
    lr_audio: float = 1e-3
    lr_vision: float = 1e-4
    weight_decay_audio: float = 0.01
    weight_decay_vision: float = 0.001
    weight_decay_other: float = 0.001

    def validate(self) -> None:
        for key in ("frame_rate", "modality_rate"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise SettingError(f"recipe.{key}", value, "a probability in [0, 1)")
        for key in ("attra_weight", "recon_weight", "weight_decay_audio", "weight_decay_vision", "weight_decay_other"):
            value = getattr(self, key)
            if not value >= 0.0:
                raise SettingError(f"recipe.{key}", value, "a value >= 0")
        for key in ("lr_audio", "lr_vision"):
            value = getattr(self, key)
            if not value > 0.0:
                raise SettingError(f"recipe.{key}", value, "a learning rate > 0")


def corrupt(batch: Batch, frame_rate: float, modality_rate: float,
            generator: torch.Generator | None = None) -> tuple[Batch, dict[str, torch.Tensor]]:
    """The incomplete view of `batch` and, per modality, the (B, T_m) bool mask of the valid frames it lost.

    Draws on the CPU (from `generator`, or the default one, which the loop seeds per epoch) so a seed gives
    the same views on any device."""
    device = batch.index.device
    dropped: dict[str, torch.Tensor] = {}
    changes: dict[str, Any] = {}
    for m in MODALITIES:
        x = getattr(batch, m)
        b, steps = x.shape[:2]
        valid = (torch.arange(steps)[None, :] < batch.lengths(m).cpu()[:, None])  # (B, T)
        drop = (torch.rand(b, steps, generator=generator) < frame_rate) & valid
        dropped[m] = drop.to(device)
        changes[m] = x * (~dropped[m]).unsqueeze(-1).to(x.dtype)
    view = replace(batch, **changes)
    if modality_rate > 0:
        b = len(batch)
        keep = torch.rand(b, 3, generator=generator) >= modality_rate
        rescue = torch.randint(0, 3, (b,), generator=generator)  # drawn for every sample: a stable stream
        empty = ~keep.any(dim=1)
        keep[empty, rescue[empty]] = True
        view = view.with_available(keep.to(device))
        for k, m in enumerate(MODALITIES):  # an absent modality lost every valid frame
            lengths = batch.lengths(m).to(device)
            valid = torch.arange(dropped[m].shape[1], device=device)[None, :] < lengths[:, None]
            dropped[m] = torch.where(keep[:, k].to(device)[:, None], dropped[m], valid)
    return view, dropped


def attraction_loss(full: EMTParts, inc: EMTParts) -> torch.Tensor:
    """Eq. 10: sum over the GMC and the utterance vectors of the symmetric negative cosine (SimSiam)."""
    total = full.logits.new_zeros(())
    for k in HIGH_LEVEL:
        total = total - 0.5 * (F.cosine_similarity(inc.p[k], full.z[k].detach(), dim=1).mean()
                               + F.cosine_similarity(full.p[k], inc.z[k].detach(), dim=1).mean())
    return total


def reconstruction_loss(inc: EMTParts, batch: Batch, dropped: dict[str, torch.Tensor]) -> torch.Tensor:
    """Eq. 9: per modality, SmoothL1 summed over the dropped frames' entries / their number (the authors'
    ReconLoss); a modality with no dropped frame adds 0."""
    total = inc.logits.new_zeros(())
    for m in MODALITIES:
        target = getattr(batch, m).float()  # the complete view's features (B, T, D)
        mask = dropped[m].unsqueeze(-1).to(target.dtype).expand_as(target)
        per = F.smooth_l1_loss(inc.recon[m] * mask, target * mask, reduction="sum")
        total = total + per / (mask.sum() + 1e-6)
    return total


class EMTDLFRTask(SelectsBestState):
    """DLFR's two-view loss; selects on the selection split's total loss under a fixed incomplete view."""

    def __init__(self, rc: EMTDLFRRecipeConfig, val_batches, seed: int) -> None:
        super().__init__(val_batches)
        self.rc = rc
        self.seed = seed

    def _losses(self, model, batch: Batch, generator: torch.Generator | None):
        inc_batch, dropped = corrupt(batch, self.rc.frame_rate, self.rc.modality_rate, generator)
        full = model.parts(batch)
        inc = model.parts(inc_batch)
        ce_m = F.cross_entropy(inc.logits, batch.classes)
        ce = F.cross_entropy(full.logits, batch.classes)
        attra = attraction_loss(full, inc)
        recon = reconstruction_loss(inc, batch, dropped)
        total = ce_m + self.rc.attra_weight * (attra + ce) + self.rc.recon_weight * recon
        return total, {"loss": total.detach(), "ce_m": ce_m.detach(), "ce": ce.detach(), "attra": attra.detach(),
                       "recon": recon.detach()}, inc

    def loss(self, model, batch: Batch):
        total, parts, _ = self._losses(model, batch, None)
        return total, parts

    def validate(self, model) -> dict[str, float]:
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(self.seed * 7919 + 17)  # the same incomplete view every epoch
        sums: dict[str, float] = {}
        n, correct = 0, 0
        for batch in self.val_batches():
            batch = batch.to(device)
            _, parts, inc = self._losses(model, batch, generator)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(batch)
            correct += int((inc.logits.argmax(-1) == batch.classes).sum())
            n += len(batch)
        out = {k: v / max(n, 1) for k, v in sums.items()}
        out["acc"] = 100.0 * correct / max(n, 1)
        return out


class EMTDLFRRecipe:
    config_cls = EMTDLFRRecipeConfig

    def optimizer(self, ctx: RecipeContext) -> torch.optim.Optimizer:
        """Adam with the authors' parameter groups: the audio encoder, the vision encoder, the rest."""
        rc, model = ctx.recipe, ctx.model
        audio = [p for p in model.audio_net.parameters() if p.requires_grad]
        vision = [p for p in model.vision_net.parameters() if p.requires_grad]
        taken = {id(p) for p in audio + vision}
        other = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
        return torch.optim.Adam([
            {"params": audio, "lr": rc.lr_audio, "weight_decay": rc.weight_decay_audio},
            {"params": vision, "lr": rc.lr_vision, "weight_decay": rc.weight_decay_vision},
            {"params": other, "lr": ctx.train.lr, "weight_decay": rc.weight_decay_other},
        ])

    def train(self, ctx: RecipeContext) -> RecipeResult:
        task = EMTDLFRTask(ctx.recipe, ctx.eval_batches(ctx.select_split), ctx.train.seed)
        loop = ctx.run_stage(1, task, self.optimizer(ctx))
        summary = {"train": {"epochs": loop.epoch, "best_epoch": task.best_epoch, "best_val_loss": task.best_loss,
                             "frame_rate": ctx.recipe.frame_rate, "modality_rate": ctx.recipe.modality_rate,
                             "history": loop.history}}
        return RecipeResult(task.best_state, summary)
