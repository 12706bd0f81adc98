"""One generic epoch loop with early stopping; every task (stage 1, stage 2, a baseline) runs in it.

A task turns a batch into a loss (`loss`), hears about optimiser steps (`after_step`), scores the
selection split (`validate`) and decides what "better" means (`end_epoch` -> improved?). The loop
owns the optimiser, the patience counter, progress display and the per-epoch resume state.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from affectus.data.batches import Batch
from affectus.errors import AffectusError


class Task(Protocol):
    name: str

    def start_epoch(self, epoch: int) -> None: ...

    def loss(self, model: torch.nn.Module, batch: Batch | Any) -> tuple[torch.Tensor, dict[str, float]]: ...

    def after_step(self, model: torch.nn.Module) -> None: ...

    def validate(self, model: torch.nn.Module) -> dict[str, float]: ...

    def end_epoch(self, epoch: int, model: torch.nn.Module, val: dict[str, float]) -> bool: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class LoopState:
    epoch: int = 0  # last finished epoch
    since_improved: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    done: bool = False


def run_loop(
    task: Task,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Callable[[int], Any],  # epoch -> iterable of Batch (or a recipe's own rows: see below)
    epochs: int,
    patience: int,
    device: torch.device,
    state: LoopState | None = None,
    save_state: Callable[[LoopState], None] | None = None,
    amp: bool = False,
    on_epoch: Callable[[str, dict[str, float], int], None] | None = None,
    log: bool = True,
) -> LoopState:
    """Train until `epochs` or `patience` epochs without improvement. Resumable from `state`.

    `batches(epoch)` yields objects with `.to(device)` and `len()` that the task's `loss` reads: a
    `Batch`, or a recipe's own (CMC+'s pooled rows). Each epoch is logged as one line on the
    `affectus.training` logger (`epoch_line`; `log=False`: none, for a recipe's inner refits such as
    CMC+'s cross-fitting folds) and handed to `on_epoch(task name, record, max epochs)` (progress bars,
    TensorBoard)."""
    state = state or LoopState()
    scaler = torch.amp.GradScaler("cuda") if amp and device.type == "cuda" else None
    while not state.done and state.epoch < epochs:
        epoch = state.epoch + 1
        task.start_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        n = 0
        for batch in batches(epoch):
            batch = batch.to(device)
            with torch.autocast(device.type, enabled=scaler is not None):
                loss, parts = task.loss(model, batch)
            # one sync per step, on purpose: a NaN step must stop before it reaches the weights
            if not torch.isfinite(loss):
                raise AffectusError(f"{task.name}: loss became {loss.item()} at epoch {epoch}; check the input features")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            task.after_step(model)
            for k, v in parts.items():  # tensors stay on the device until the epoch ends
                v = v.detach().double() if isinstance(v, torch.Tensor) else float(v)
                sums[k] = sums.get(k, 0.0) + v * len(batch)
            n += len(batch)
        model.eval()
        with torch.no_grad():
            val = task.validate(model)
        improved = task.end_epoch(epoch, model, val)
        state.since_improved = 0 if improved else state.since_improved + 1
        record = {"epoch": epoch, "seconds": round(time.perf_counter() - t0, 3)}
        record.update({f"train_{k}": float(v) / max(n, 1) for k, v in sums.items()})
        record.update({f"val_{k}": v for k, v in val.items()})
        record["improved"] = float(improved)
        state.history.append(record)
        state.epoch = epoch
        if state.since_improved >= patience:
            state.done = True
        if log:
            logger.info(epoch_line(task.name, record, epochs))
        if on_epoch is not None:
            on_epoch(task.name, record, epochs)
        if save_state is not None:
            save_state(state)
    state.done = True
    return state


# ----------------------------------------------------------------------------------------- epoch lines

logger = logging.getLogger("affectus.training")

# What an epoch line shows, in at most 80 columns: the stage, epoch / max, the mean training loss, the
# selection split's losses (short names), '*' when the epoch is the best so far (its weights are kept).
EPOCH_LEGEND = "epochs: train = mean training loss, val = selection-split loss, * = best (kept)"
_SHORT = {"ce_text": "t", "ce_audio": "a", "ce_vision": "v", "ce_m": "m", "loss": "loss", "supcon": "sc",
          "acc": "acc%"}


def epoch_line(stage: str, record: dict[str, float], epochs: int) -> str:
    vals = [(k[4:], v) for k, v in record.items() if k.startswith("val_") and not math.isnan(v)]
    val_txt = " ".join(f"{_SHORT.get(k, k)} {v:.3f}" for k, v in vals)
    train = record.get("train_loss", float("nan"))
    star = "*" if record.get("improved") else " "
    line = f"{stage:>6} {int(record['epoch']):3d}/{epochs:<3d} train {train:6.3f} | val {val_txt} {star} {record['seconds']:5.1f}s"
    return line if len(line) <= 80 else line[:77] + "..."


@contextmanager
def training_log(path: str | Path | None = None, console: bool = False, stream: Any = None) -> Iterator[None]:
    """Within the block, epoch lines go to `path` (appended) and/or `stream`, and reach the handlers of the
    `affectus` logger (the CLI's console) only if `console`.

    The experiment runner and the sweep keep each run's lines in the run's own train.log."""
    handler = None
    if path is not None or stream is not None:
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8") if path is not None else logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    before_propagate, before_level = logger.propagate, logger.level
    logger.propagate = console
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.propagate, logger.level = before_propagate, before_level
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()
