"""How a batch becomes a loss in CMC's two stages (the generic single-stage task is training/tasks.py).

Stage 1 (unimodal pretraining, eqs. 7-9 and 19-30): each modality's encoder + head is trained
against its own pseudo labels from the PLGM bank, plus SupCon on the concatenated embeddings.
An EMA copy of every unimodal model (eq. 29) is what gets validated and handed on.

Stage 2 (multimodal finetuning, eqs. 10-18): PFM + MCR on top of the stage-1 models, trained on
the multimodal label plus each modality's fixed stage-1 pseudo labels, plus SupCon.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.training.losses import supcon_loss
from affectus.training.recipes.cmc.plgm import ModalityEMA, MomentumSchedule, PseudoLabelBank
from affectus.training.tasks import SelectsBestState


def _supcon(embeddings: torch.Tensor, classes: torch.Tensor, scheme, tau: float, form: str,
            present: torch.Tensor | None = None) -> torch.Tensor:
    """SupCon on [h_t; h_a; h_v] (eq. 8): (B, 3, d) embeddings, (B, 3) per-modality classes; the label
    scheme says which classes count as positives of each other (sentiment: the binary Acc2 split).
    `present` (B, 3) bool (modality dropout): absent modalities' rows take no part."""
    feats = embeddings.transpose(0, 1).reshape(-1, embeddings.shape[-1])  # (3B, d), modality-major
    labels = scheme.supcon_labels(classes.transpose(0, 1).reshape(-1))  # (3B,)
    if present is not None:
        rows = present.transpose(0, 1).reshape(-1)  # (3B,)
        feats, labels = feats[rows], labels[rows]
    return supcon_loss(feats, labels, temperature=tau, form=form)


def _modality_ce(logits: torch.Tensor, targets: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of one modality's (B, C) logits, over the samples where it is present (B,) bool
    (None: all). No present sample: 0, attached to the graph."""
    if present is None:
        return F.cross_entropy(logits, targets)
    if not bool(present.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[present], targets[present])


class Stage1Task:
    """Unimodal pretraining with PLGM (eqs. 7-9, 19-30)."""

    name = "stage1"

    def __init__(self, model, train_bank: PseudoLabelBank, val_bank: PseudoLabelBank, val_batches, cfg, scheme):
        self.cfg = cfg
        self.scheme = scheme
        self.bank = train_bank
        self.val_bank = val_bank  # faithful mode: moves with PLGM too (authors' code); fixed mode: frozen
        self.val_batches = val_batches  # () -> iterable of Batch (with labels)
        self.ema = ModalityEMA(model.branches)
        self.label_sched = [MomentumSchedule(m0, g, cfg.momentum_form) for m0, g in zip(cfg.label_momentum, cfg.label_gamma)]
        self.ema_sched = [MomentumSchedule(m0, g, cfg.momentum_form) for m0, g in zip(cfg.ema_momentum, cfg.ema_gamma)]
        self.label_m = torch.tensor([s.m0 for s in self.label_sched])
        self.ema_m = {m: s.m0 for m, s in zip(MODALITIES, self.ema_sched)}
        self.eval_model = copy.deepcopy(model)
        self.best_loss = {m: float("inf") for m in MODALITIES}
        self.best_epoch = {m: 0 for m in MODALITIES}
        # per modality: EMA weights and the pseudo labels (train + val) as they stood at its best epoch
        self.best_state: dict[str, dict[str, torch.Tensor]] = {}
        # all three modalities' pseudo labels (train / val) as they stood at the last epoch in which
        # any modality improved: the authors hand this one snapshot to stage 2
        self.best_labels = train_bank.hard_labels().clone()
        self.best_val_labels = val_bank.hard_labels().clone()

    def start_epoch(self, epoch: int) -> None:
        # eq. 30 (code form by default): momenta set once per epoch from m0
        self.label_m = torch.tensor([s.at_epoch(epoch) for s in self.label_sched])
        self.ema_m = {m: s.at_epoch(epoch) for m, s in zip(MODALITIES, self.ema_sched)}

    def loss(self, model, batch: Batch):
        out = model.unimodal_forward(batch)  # modality_logits (B, 3, C)
        index = batch.index.cpu()
        targets = self.bank.targets(index).to(out.modality_logits.device)  # (B, 3), before this batch's update
        present = batch.available  # (B, 3) under modality dropout (cmc_avail); None: all present
        # eqs. 21-28: move the soft labels from the detached predictions, before the optimiser step;
        # an absent modality's prediction (from zeros) moves nothing
        if self.cfg.plgm and self.cfg.unimodal_labels == "pseudo":
            self.bank.update(index, out.modality_logits.detach().float().cpu(), self.label_m,
                             keep=None if present is None else present.cpu())
        ce = [_modality_ce(out.modality_logits[:, k], targets[:, k], None if present is None else present[:, k])
              for k in range(3)]
        sc = _supcon(out.embeddings, targets, self.scheme, self.cfg.supcon_tau, self.cfg.supcon_form, present)
        total = ce[0] + ce[1] + ce[2] + sc  # eq. 9, weights all 1
        # detached tensors, not floats: the loop reads them once per epoch (each .item() is a device sync)
        parts = {"loss": total.detach(), "supcon": sc.detach()}
        parts.update({f"ce_{m}": c.detach() for m, c in zip(MODALITIES, ce)})
        return total, parts

    def after_step(self, model) -> None:
        self.ema.update(model.branches, self.ema_m)  # eq. 29, parameters and BatchNorm buffers

    def validate(self, model) -> dict[str, float]:
        """CE of each EMA model against the validation pseudo labels.

        Faithful selection (the authors' code): the validation labels also move with PLGM, driven by
        the online model's predictions, so stage-1 early stopping partly scores the model against
        itself (cmc-reference.md). `selection: fixed` keeps them at the multimodal label.
        """
        self.ema.copy_to(self.eval_model.branches)
        self.eval_model.eval()
        sums = torch.zeros(3)
        n = 0
        move = self.cfg.selection == "faithful" and self.cfg.plgm and self.cfg.unimodal_labels == "pseudo"
        device = next(self.eval_model.parameters()).device
        for batch in self.val_batches():
            batch = batch.to(device)
            out = self.eval_model.unimodal_forward(batch)
            index = batch.index.cpu()
            targets = self.val_bank.targets(index).to(out.modality_logits.device)
            for k in range(3):
                sums[k] += F.cross_entropy(out.modality_logits[:, k], targets[:, k], reduction="sum").item()
            if move:
                online = model.unimodal_forward(batch).modality_logits
                self.val_bank.update(index, online.float().cpu(), self.label_m)
            n += len(batch)
        return {f"ce_{m}": float(sums[k] / max(n, 1)) for k, m in enumerate(MODALITIES)}

    def end_epoch(self, epoch: int, model, val: dict[str, float]) -> bool:
        improved = False
        self.bank.record_epoch()
        for m in MODALITIES:
            # the authors compare validation CE rounded to 4 decimals
            if round(val[f"ce_{m}"], 4) < round(self.best_loss[m], 4):
                # each modality keeps its own best EMA checkpoint (lowest validation CE)
                self.best_loss[m] = val[f"ce_{m}"]
                self.best_epoch[m] = epoch
                self.best_state[m] = {n: t.clone() for n, t in self.ema.branch(m).state_dict().items()}
                improved = True
        if improved:
            self.best_labels = self.bank.hard_labels().clone()
            self.best_val_labels = self.val_bank.hard_labels().clone()
        return improved

    def state_dict(self) -> dict[str, Any]:
        return {
            "bank": self.bank.state_dict(),
            "val_bank": self.val_bank.state_dict(),
            "ema": self.ema.state_dict(),
            "label_sched": [s.state_dict() for s in self.label_sched],
            "ema_sched": [s.state_dict() for s in self.ema_sched],
            "best_loss": dict(self.best_loss),
            "best_epoch": dict(self.best_epoch),
            "best_state": self.best_state,
            "best_labels": self.best_labels,
            "best_val_labels": self.best_val_labels,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bank.load_state_dict(state["bank"])
        self.val_bank.load_state_dict(state["val_bank"])
        self.ema.load_state_dict(state["ema"])
        for s, d in zip(self.label_sched, state["label_sched"]):
            s.load_state_dict(d)
        for s, d in zip(self.ema_sched, state["ema_sched"]):
            s.load_state_dict(d)
        self.best_loss = dict(state["best_loss"])
        self.best_epoch = dict(state["best_epoch"])
        self.best_state = state["best_state"]
        self.best_labels = state["best_labels"]
        self.best_val_labels = state["best_val_labels"]

    def handover(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        """Load each modality's best EMA weights into `model`; return fixed (N, 3) train / val targets."""
        for m, state in self.best_state.items():
            model.branches[m].load_state_dict(state)
        return self.best_labels.clone(), self.best_val_labels.clone()


class Stage2Task(SelectsBestState):
    """Multimodal finetuning (eqs. 10-18); `single` loss keeps only eq. 15."""

    name = "stage2"

    def __init__(self, train_targets, val_targets, val_batches, cfg, scheme):
        super().__init__(val_batches)
        self.cfg = cfg
        self.scheme = scheme
        self.train_targets = train_targets  # (N_train, 3) fixed stage-1 pseudo labels
        self.val_targets = val_targets  # (N_val, 3)
        # the authors select on the total validation loss (eq. 18); `multimodal` selects on eq. 15
        self.select_key = "ce_m" if cfg.stage2_select == "multimodal" else "loss"

    def _loss(self, model, batch: Batch, targets: torch.Tensor, out=None):
        out = model(batch) if out is None else out
        lm = F.cross_entropy(out.logits, batch.classes)  # eq. 15
        if self.cfg.stage2_loss == "single":
            return lm, {"loss": lm.detach(), "ce_m": lm.detach()}
        present = batch.available  # (B, 3) under modality dropout (cmc_avail); None: all present
        lk = [_modality_ce(out.modality_logits[:, k], targets[:, k], None if present is None else present[:, k])
              for k in range(3)]  # eq. 16, over the samples that have modality k
        sc = _supcon(out.embeddings, targets, self.scheme, self.cfg.supcon_tau, self.cfg.supcon_form, present)
        total = lm + lk[0] + lk[1] + lk[2] + sc  # eqs. 17-18
        parts = {"loss": total.detach(), "ce_m": lm.detach(), "supcon": sc.detach()}
        parts.update({f"ce_{m}": v.detach() for m, v in zip(MODALITIES, lk)})
        return total, parts

    def loss(self, model, batch: Batch):
        targets = self.train_targets[batch.index.cpu()].to(batch.classes.device)
        return self._loss(model, batch, targets)

    def validate(self, model) -> dict[str, float]:
        total, multimodal, n, correct = 0.0, 0.0, 0, 0
        for batch in self.val_batches():
            batch = batch.to(next(model.parameters()).device)
            targets = self.val_targets[batch.index.cpu()].to(batch.classes.device)
            out = model(batch)
            loss, parts = self._loss(model, batch, targets, out)
            total += loss.item() * len(batch)
            multimodal += float(parts.get("ce_m", parts["loss"])) * len(batch)
            correct += int((out.logits.argmax(-1) == batch.classes).sum())
            n += len(batch)
        # the accuracy is watched (TensorBoard, epoch lines), never used to select
        return {"loss": total / max(n, 1), "ce_m": multimodal / max(n, 1), "acc": 100.0 * correct / max(n, 1)}
