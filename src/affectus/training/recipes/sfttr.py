"""SFTTR's recipe (Sun and Tian, COLING 2025), after the authors' `main_encoder.py` and
`train/constrastive/TVA_fusion_train.py`.

Stage 1 (`pretrain`): the audio and vision encoders, each with its own classifier head, learn the label
alone (the authors pretrain each encoder with a regression head before fusion; their text BERT is
fine-tuned there too, while here the text features are fixed). The kept weights are those of the epoch
with the lowest sum of the two heads' selection-split cross-entropies.

Stage 2 (fusion), every parameter but the pretraining heads:

    L = CE(logits) + contrast_weight * L_con

L_con is the authors' supervised NT-Xent (cosine similarity, temperature `temperature`) over the text-close
(c) and text-far (f) representations. For each anchor sample i with partners drawn from its batch (ours;
the authors retrieve six partners per anchor from the whole training split and encode them as well):
  - c_text(i):  positives c_audio(i), c_vision(i) and c_text of the 2 most similar same-class partners;
                negatives f_text(i), f_audio(i), f_vision(i) and c_text of 4 other-class partners (the 2 most
                and the 2 least similar).
  - c_audio(i), c_vision(i): positives / negatives the same modality's c of those partners.
Similarity for picking partners: cosine between the concatenated encoder outputs (detached), as the
authors' retrieval matrix. Each positive pair's term is -log(e^{s_ap/t} / (e^{s_ap/t} + sum_n e^{s_an/t})),
negatives being the anchor's; L_con averages the terms.

Optimisers at train.lr, as the authors: stage 1 Adam (amsgrad, L2 decay `weight_decay`), stage 2 AdamW
(`weight_decay`, none on biases and LayerNorm weights); in each, the learning rate rises linearly over the
warm-up epochs and then falls linearly to 0 at the stage's last epoch (transformers' linear schedule with
warm-up).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from affectus.data.batches import Batch
from affectus.errors import SettingError
from affectus.models.sfttr import SEQUENCE, mlp
from affectus.training.recipes.base import RecipeContext, RecipeResult
from affectus.training.tasks import SelectsBestState, validation_ce


@dataclass
class SFTTRRecipeConfig:
    pretrain: bool = True  # stage 1: the audio / vision encoders with their own heads (main_encoder.py)
    pretrain_epochs: int = 0  # stage 1's epochs; 0: train.epochs (the authors: 100)
    pretrain_warmup_epochs: float = 5.0  # visionPretrain / audioPretrain num_warm_up
    contrast_weight: float = 0.1  # TVA_fusion: loss = pred_loss + 0.1 * sup_const_loss
    temperature: float = 0.5  # const_heat
    partners: int = 2  # per kind (same-class similar, other-class similar, other-class dissimilar): 2 each
    weight_decay: float = 1e-3  # TVAExp_fusion.decay (AdamW; none on biases and LayerNorm weights)
    warmup_epochs: float = 1.0  # TVAExp_fusion.num_warm_up

    def validate(self) -> None:
        if self.pretrain_epochs < 0:
            raise SettingError("recipe.pretrain_epochs", self.pretrain_epochs, "0 (train.epochs) or more")
        for key in ("pretrain_warmup_epochs", "contrast_weight", "weight_decay", "warmup_epochs"):
            value = getattr(self, key)
            if not value >= 0:
                raise SettingError(f"recipe.{key}", value, "a value >= 0")
        if not self.temperature > 0:
            raise SettingError("recipe.temperature", self.temperature, "a temperature > 0")
        if self.partners < 1:
            raise SettingError("recipe.partners", self.partners, "at least 1")


def pick_partners(key: torch.Tensor, classes: torch.Tensor, k: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per anchor, the partners of the batch: "ss" the k most similar of its class, "sd" the k most similar
    and "dd" the k least similar of other classes. key (B, D). -> kind: (index (B, k'), valid (B, k'))."""
    b = key.shape[0]
    k = max(0, min(k, b - 1))
    z = F.normalize(key.detach().float(), dim=-1)
    sim = z @ z.T  # (B, B)
    other = ~torch.eye(b, dtype=torch.bool, device=key.device)
    same = (classes[:, None] == classes[None, :]) & other
    diff = classes[:, None] != classes[None, :]
    out = {}
    for kind, allowed, sign in (("ss", same, 1.0), ("sd", diff, 1.0), ("dd", diff, -1.0)):
        scores = (sign * sim).masked_fill(~allowed, float("-inf"))
        values, index = scores.topk(k, dim=1) if k else (scores[:, :0], scores[:, :0].long())
        out[kind] = (index, torch.isfinite(values))
    return out


def _terms(anchor: torch.Tensor, pos: torch.Tensor, pos_ok: torch.Tensor, neg: torch.Tensor, neg_ok: torch.Tensor,
           t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent terms of one anchor kind: anchor (B, h), pos (B, P, h), neg (B, N, h), all unit vectors.
    -> (sum of the valid positive pairs' terms, their number)."""
    s_p = (pos @ anchor.unsqueeze(-1)).squeeze(-1) / t  # (B, P)
    s_n = ((neg @ anchor.unsqueeze(-1)).squeeze(-1) / t).masked_fill(~neg_ok, float("-inf"))  # (B, N)
    neg_lse = torch.logsumexp(s_n, dim=1, keepdim=True) if s_n.shape[1] else torch.full_like(s_p[:, :1], float("-inf"))
    terms = torch.logaddexp(s_p, neg_lse.expand_as(s_p)) - s_p  # -log(e^p / (e^p + sum e^n))
    terms = terms.masked_fill(~pos_ok, 0.0)
    return terms.sum(), pos_ok.sum()


def contrastive_loss(close: torch.Tensor, far: torch.Tensor, key: torch.Tensor, classes: torch.Tensor,
                     temperature: float, partners: int = 2) -> torch.Tensor:
    """L_con over a batch (see the module docstring). close, far (B, 3, h) in text / audio / vision order."""
    c, f = F.normalize(close, dim=-1), F.normalize(far, dim=-1)
    picked = pick_partners(key, classes, partners)
    ss, ss_ok = picked["ss"]
    negs = torch.cat([picked["sd"][0], picked["dd"][0]], dim=1)
    negs_ok = torch.cat([picked["sd"][1], picked["dd"][1]], dim=1)
    total, count = c.new_zeros(()), c.new_zeros((), dtype=torch.long)
    for m in range(3):
        anchor = c[:, m]
        pos, pos_ok = c[ss, m], ss_ok  # (B, k, h)
        neg, neg_ok = c[negs, m], negs_ok
        if m == 0:  # text-close of text: also pulls the other modalities' text-close, pushes every text-far
            pos = torch.cat([c[:, 1:], pos], dim=1)
            pos_ok = torch.cat([pos_ok.new_ones(pos_ok.shape[0], 2), pos_ok], dim=1)
            neg = torch.cat([f, neg], dim=1)
            neg_ok = torch.cat([neg_ok.new_ones(neg_ok.shape[0], 3), neg_ok], dim=1)
        s, n = _terms(anchor, pos, pos_ok, neg, neg_ok, temperature)
        total, count = total + s, count + n
    return total / count.clamp(min=1)


def linear_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """transformers' get_linear_schedule_with_warmup, as a LambdaLR."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _Scheduled(SelectsBestState):
    """A task that steps a learning-rate schedule after every optimiser step (its state resumes with it)."""

    def __init__(self, val_batches, scheduler) -> None:
        super().__init__(val_batches)
        self.scheduler = scheduler

    def after_step(self, model) -> None:
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.scheduler.load_state_dict(state["scheduler"])


class Pretrainer(torch.nn.Module):
    """Stage 1's network: the model's audio / vision encoders, each with a classifier head of its own (the
    authors' VisionPretrain / AudioPretrain: d -> d/2 -> d/4 -> d/8 -> out, GELU). The heads live here, not
    in the model, so the model holds only what inference uses; its state_dict is the model's."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        d, classes = model.config.d, model.config.num_classes
        self.heads = torch.nn.ModuleDict({m: mlp([d, d // 2, d // 4, d // 8], classes) for m in SEQUENCE})

    def unimodal_logits(self, batch: Batch) -> dict[str, torch.Tensor]:
        """modality -> (B, C) for audio and vision."""
        encoded = self.model.encode(batch)
        return {m: self.heads[m](encoded[m]) for m in SEQUENCE}

    def forward(self, batch: Batch):
        return self.model(batch)

    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)


class SFTTRPretrainTask(_Scheduled):
    """Stage 1: CE of the audio and vision heads; selects on their summed selection-split CE. The heads'
    weights travel in this task's resume state."""

    name = "pretrain"

    def __init__(self, val_batches, scheduler, net: Pretrainer) -> None:
        super().__init__(val_batches, scheduler)
        self.net = net

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "heads": self.net.heads.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.net.heads.load_state_dict(state["heads"])

    def loss(self, model, batch: Batch):
        logits = model.unimodal_logits(batch)
        parts = {f"ce_{m}": F.cross_entropy(logits[m], batch.classes) for m in SEQUENCE}
        total = sum(parts.values())
        return total, {"loss": total.detach(), **{k: v.detach() for k, v in parts.items()}}

    def validate(self, model) -> dict[str, float]:
        sums, n = {f"ce_{m}": 0.0 for m in SEQUENCE}, 0
        for batch in self.val_batches():
            batch = batch.to(next(model.parameters()).device)
            logits = model.unimodal_logits(batch)
            for m in SEQUENCE:
                sums[f"ce_{m}"] += F.cross_entropy(logits[m], batch.classes, reduction="sum").item()
            n += len(batch)
        out = {k: v / max(n, 1) for k, v in sums.items()}
        out["loss"] = sum(out.values())
        return out


class SFTTRTask(_Scheduled):
    """Stage 2: CE + contrast_weight * L_con; selects on the selection split's CE."""

    name = "fusion"

    def __init__(self, val_batches, scheduler, rc: SFTTRRecipeConfig) -> None:
        super().__init__(val_batches, scheduler)
        self.rc = rc

    def loss(self, model, batch: Batch):
        p = model.parts(batch)
        ce = F.cross_entropy(p.logits, batch.classes)
        key = torch.cat([p.encoded[m] for m in ("text", "audio", "vision")], dim=-1)
        con = contrastive_loss(p.close, p.far, key, batch.classes, self.rc.temperature, self.rc.partners)
        total = ce + self.rc.contrast_weight * con
        return total, {"loss": total.detach(), "ce": ce.detach(), "con": con.detach()}

    def validate(self, model) -> dict[str, float]:
        return validation_ce(model, self.val_batches)


def adamw(params: list[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with no decay on biases and LayerNorm weights (the authors' two groups)."""
    no_decay = [p for n, p in params if n.endswith("bias") or p.dim() == 1]
    decay = [p for n, p in params if not (n.endswith("bias") or p.dim() == 1)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps in one epoch: full batches, and a last one unless it holds a single sample (dropped)."""
    return n // batch_size + (1 if n % batch_size > 1 else 0)


class SFTTRRecipe:
    config_cls = SFTTRRecipeConfig

    def train(self, ctx: RecipeContext) -> RecipeResult:
        rc, model, tc = ctx.recipe, ctx.model, ctx.train
        steps = steps_per_epoch(len(ctx.train_split), tc.batch_size)
        summary: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        if rc.pretrain and (ctx.saved is None or ctx.resumes(1)):
            epochs = rc.pretrain_epochs or tc.epochs
            net = Pretrainer(model).to(ctx.device)
            params = [p for n, p in net.named_parameters()
                      if n.startswith(("model.encoders.", "heads.")) and p.requires_grad]
            # the authors' Vtrain / Atrain: Adam with amsgrad and an L2 decay on every parameter
            opt = torch.optim.Adam(params, lr=tc.lr, amsgrad=True, weight_decay=rc.weight_decay)
            task1 = SFTTRPretrainTask(ctx.eval_batches(ctx.select_split),
                                      linear_warmup(opt, math.ceil(rc.pretrain_warmup_epochs * steps), epochs * steps),
                                      net)
            stage_ctx = dataclasses.replace(ctx, train=dataclasses.replace(tc, epochs=epochs))
            loop1 = stage_ctx.run_stage(1, task1, opt, model=net)
            summary["pretrain"] = {"epochs": loop1.epoch, "best_epoch": task1.best_epoch,
                                   "best_val_loss": task1.best_loss, "history": loop1.history}
            model.load_state_dict(task1.best_state)
            ctx.saved = None
        elif rc.pretrain:  # resuming stage 2: stage 1's summary travels in the resume state
            summary["pretrain"] = ctx.saved["pretrain_summary"]
        if "pretrain" in summary:
            extra["pretrain_summary"] = summary["pretrain"]
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        opt = adamw(named, tc.lr, rc.weight_decay)
        task2 = SFTTRTask(ctx.eval_batches(ctx.select_split),
                          linear_warmup(opt, math.ceil(rc.warmup_epochs * steps), tc.epochs * steps), rc)
        loop2 = ctx.run_stage(2, task2, opt, extra=extra)
        summary["fusion"] = {"epochs": loop2.epoch, "best_epoch": task2.best_epoch, "best_val_loss": task2.best_loss,
                             "history": loop2.history}
        return RecipeResult(task2.best_state, summary)
