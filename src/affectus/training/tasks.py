"""How a batch becomes a loss for a model trained in one stage, and the best-epoch selection that
recipes share (`SelectsBestState`; per modality: `SelectsBestPerModality`). A recipe's own tasks live beside it (CMC's: recipes/cmc/tasks.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from affectus.data.batches import Batch


class SelectsBestState:
    """The base of a task that trains one model: keep the weights of the epoch with the lowest `select_key`
    loss (early stopping on the selection split). Recipes subclass it (CMC's stage 2, MCUR, CUMDF)."""

    name = "train"
    select_key = "loss"

    def __init__(self, val_batches) -> None:
        self.val_batches = val_batches
        self.best_loss = float("inf")
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def start_epoch(self, epoch: int) -> None:
        pass

    def after_step(self, model) -> None:
        pass

    def end_epoch(self, epoch: int, model, val: dict[str, float]) -> bool:
        if val[self.select_key] < self.best_loss:
            self.best_loss = val[self.select_key]
            self.best_epoch = epoch
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch, "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_loss = state["best_loss"]
        self.best_epoch = state["best_epoch"]
        self.best_state = state["best_state"]


class SelectsBestPerModality:
    """The base of a stage that trains one branch per modality at once (bc-LSTM's level 1, MCUR's stage 0):
    each modality keeps its branch's weights of the epoch with its own lowest selection-split cross-entropy
    (`ce_<modality>` in `validate`'s result), since modalities learn at different speeds. An epoch counts as
    an improvement when any modality improved, so the loop's patience ends the stage once none has for that
    long. Subclasses give `loss`, `validate` and `branch(model, modality)`."""

    name = "unimodal"

    def __init__(self, val_batches, modalities: tuple[str, ...]) -> None:
        self.val_batches = val_batches
        self.modalities = modalities
        self.best_loss = {m: float("inf") for m in modalities}
        self.best_epoch = {m: 0 for m in modalities}
        self.best_state: dict[str, dict[str, torch.Tensor]] = {}

    def branch(self, model, modality: str) -> torch.nn.Module:
        raise NotImplementedError

    def start_epoch(self, epoch: int) -> None:
        pass

    def after_step(self, model) -> None:
        pass

    def end_epoch(self, epoch: int, model, val: dict[str, float]) -> bool:
        improved = False
        for m in self.modalities:
            if val[f"ce_{m}"] < self.best_loss[m]:
                self.best_loss[m], self.best_epoch[m], improved = val[f"ce_{m}"], epoch, True
                self.best_state[m] = {k: v.detach().clone() for k, v in self.branch(model, m).state_dict().items()}
        return improved

    def summary(self, loop) -> dict[str, Any]:
        """The stage's run.json summary: epochs run, and each modality's best epoch and selection CE."""
        return {"epochs": loop.epoch, "best_epoch": dict(self.best_epoch), "best_val_ce": dict(self.best_loss),
                "history": loop.history}

    def handover(self, model) -> None:
        """Each modality's best branch weights into the model (a modality that never improved keeps its own)."""
        for m, state in self.best_state.items():
            self.branch(model, m).load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch, "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_loss, self.best_epoch, self.best_state = state["best_loss"], state["best_epoch"], state["best_state"]


class SupervisedTask(SelectsBestState):
    """Single-stage training of a baseline on the multimodal 3-class label; selects on validation CE.
    `class_weights` (C,) (`train.class_weights`): the loss and the selection CE weigh each sample by its class."""

    def __init__(self, val_batches, class_weights: torch.Tensor | None = None) -> None:
        super().__init__(val_batches)
        self.class_weights = class_weights

    def loss(self, model, batch: Batch):
        logits = model(batch).logits
        weight = None if self.class_weights is None else self.class_weights.to(logits.device, logits.dtype)
        loss = F.cross_entropy(logits, batch.classes, weight=weight)
        return loss, {"loss": loss.detach()}

    def validate(self, model) -> dict[str, float]:
        return validation_ce(model, self.val_batches, self.class_weights)


def class_weights(classes: np.ndarray, num_classes: int, how: str) -> np.ndarray | None:
    """(C,) float32 per-class loss weights from the training split's classes (`train.class_weights`): "balanced"
    n / (C * n_c) (scikit-learn's rule: each class weighs the same in total), "sqrt" its square root (a softer
    pull towards rare classes); None for "none". A class absent from training gets 1 (it has no samples to weigh)."""
    if how == "none":
        return None
    counts = np.bincount(np.asarray(classes, dtype=np.int64), minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 1.0)
    return (np.sqrt(w) if how == "sqrt" else w).astype(np.float32)


def validation_ce(model, batches, class_weights: torch.Tensor | None = None) -> dict[str, float]:
    """The selection split's mean cross-entropy of the verdict (`loss`, what early stopping reads) and its
    accuracy; `batches()` gives the split's batches. With `class_weights`, the loss is the weighted mean
    (sum of w_y * CE over sum of w_y, as the training loss)."""
    total, n, correct, mass = 0.0, 0, 0, 0.0
    for batch in batches():
        batch = batch.to(next(model.parameters()).device)
        logits = model(batch).logits
        if class_weights is None:
            total += F.cross_entropy(logits, batch.classes, reduction="sum").item()
            mass += len(batch)
        else:
            w = class_weights.to(logits.device, logits.dtype)
            total += F.cross_entropy(logits, batch.classes, weight=w, reduction="sum").item()
            mass += float(w[batch.classes].sum())
        correct += int((logits.argmax(-1) == batch.classes).sum())
        n += len(batch)
    return {"loss": total / max(mass, 1e-12) if n else 0.0, "acc": 100.0 * correct / max(n, 1)}


def mean_ce_over_sets(model, val_sets) -> dict[str, float]:
    """The verdict's cross-entropy on each selection set (`val_sets`: callables giving batches, e.g. one per
    availability condition), averaged so each set weighs the same whatever its size (MCUR, MMIN)."""
    device = next(model.parameters()).device
    losses = []
    for batches in val_sets:
        total, n = 0.0, 0
        for batch in batches():
            batch = batch.to(device)
            total += F.cross_entropy(model(batch).logits.float(), batch.classes, reduction="sum").item()
            n += len(batch)
        losses.append(total / max(n, 1))
    return {"loss": float(np.mean(losses))}
