"""What every recipe gets (`RecipeContext`) and returns (`RecipeResult`), and the plumbing they share.

A recipe is any object with `config_cls` (the dataclass of its `recipe.*` settings, or None) and
`train(ctx) -> RecipeResult`. Stages are tasks run by the one generic loop (`training/loop.py`);
`ctx.run_stage` adds seeded batches, the optimiser's resume and a per-epoch resume state, so a recipe
only says which task trains which parameters in which order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from affectus.data.batches import Batch, iterate_batches
from affectus.data.missing import random_availability
from affectus.data.types import MODALITIES, Split
from affectus.models.registry import Capabilities, is_bert_parameter
from affectus.runs import checkpoints as ckpt
from affectus.training.loop import LoopState, run_loop

# draws an availability mask: (n samples, generator) -> (n, 3) bool, True = present
Sampler = Callable[..., np.ndarray]


class Recipe(Protocol):
    config_cls: type | None

    def train(self, ctx: RecipeContext) -> RecipeResult: ...


@dataclass
class RecipeResult:
    state: dict[str, torch.Tensor]  # the selected weights, loaded into the model before evaluation
    summary: dict[str, Any]  # per-stage summaries for run.json ({stage: {epochs, best_epoch, history, ...}})
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # extra tensors saved as bank.safetensors
    # what else learned from data, by the role of the split it saw ("train" | "select"; None drops a default):
    # the trainer adds {"weights": "train", "early_stopping": "select"} and writes run.json `fitted_on` with
    # the split names, so a score on a split any part was fitted on is marked in-sample (docs/training.md)
    fitted_on: dict[str, str | None] = field(default_factory=dict)
    # parts that choose among candidates by a score on their split (named beside a score there, not marked),
    # beyond early stopping
    selection_parts: tuple[str, ...] = ()


@dataclass
class RecipeContext:
    model: torch.nn.Module
    train: Any  # TrainConfig: the generic settings
    recipe: Any  # the recipe's own config (None for recipes without settings)
    train_split: Split
    select_split: Split
    scheme: Any  # LabelScheme: classes, SupCon labels
    device: torch.device
    out: Path
    saved: dict[str, Any] | None = None  # the resume state (state.pt), None for a fresh run
    on_epoch: Callable[[str, dict[str, float], int], None] | None = None  # observers: progress, TensorBoard
    can: Capabilities = field(default_factory=Capabilities)  # what the model declares (models/registry.py)

    @property
    def state_path(self) -> Path:
        return self.out / "state.pt"

    def batches(self, split: Split, stage: int, missing_rate: float = 0.0,
                availability: Sampler | None = None) -> Callable[[int], Iterable[Batch]]:
        """Epoch -> training batches. Shuffling and dropout are seeded from (seed, stage, epoch), so
        resuming an interrupted run gives bit-identical weights.

        `missing_rate` > 0: modality dropout. Each batch loses every (sample, modality) with that
        probability, at least one modality kept per sample (`data.missing.random_availability`), from
        its own generator seeded by (seed, stage, epoch): the same masks on a resume, and the shuffling
        stream is untouched, so a rate of 0 draws nothing and changes nothing. `availability` (n, rng) ->
        (n, 3) bool mask: another way to draw the masks (e.g. `data.missing.random_conditions`), from the
        same generator; it replaces `missing_rate`."""
        tc = self.train

        def make(epoch: int):
            torch.manual_seed(tc.seed * 1_000_003 + stage * 1009 + epoch)
            rng = np.random.default_rng([tc.seed, stage, epoch])
            batches = iterate_batches(split, tc.batch_size, order=self._order(split, rng), scheme=self.scheme,
                                      drop_single=True)
            sampler = availability or (partial(random_availability, rate=missing_rate) if missing_rate > 0 else None)
            if sampler is not None:
                return _drop_modalities(batches, sampler, np.random.default_rng([tc.seed, stage, epoch, 1]))
            return batches

        return make

    def _order(self, split: Split, rng: np.random.Generator) -> np.ndarray:
        if self.train.bucket and split.text_token_lengths is not None:
            # a fine-tuned text encoder (features/text_finetune.py) masks its padding exactly and costs per token
            # column: batches of transcripts of similar length
            from affectus.models.layers import bucket_order

            return bucket_order(split.text_token_lengths, self.train.batch_size, rng)
        if self.can.utterance_context is not None:  # whole videos per batch: their shared sequence computed once
            from affectus.data.context import group_order

            return group_order(split, rng)
        if self.train.bucket and self.can.sequence_masks:
            from affectus.models.layers import bucket_order

            lengths = np.maximum.reduce([split.lengths(m) for m in MODALITIES])
            return bucket_order(lengths, self.train.batch_size, rng)
        return rng.permutation(len(split))

    def eval_batches(self, split: Split) -> Callable[[], Iterable[Batch]]:
        return lambda: iterate_batches(split, self.train.batch_size, scheme=self.scheme)

    def optimizer(self, model: torch.nn.Module | None = None, lr: float | None = None) -> torch.optim.Optimizer:
        """Adam over the parameters that require grad. A fine-tuned BERT gets its own lr and decay (none
        on biases / LayerNorm); everything else `lr` (default train.lr), no decay. Freezing is the
        recipe's business (requires_grad on modules), never this factory's."""
        tc = self.train
        groups: dict[str, list] = {"main": [], "bert_decay": [], "bert_no_decay": []}
        for name, p in (model or self.model).named_parameters():
            if not p.requires_grad:
                continue
            if is_bert_parameter(name):
                no_decay = name.endswith("bias") or "LayerNorm" in name
                groups["bert_no_decay" if no_decay else "bert_decay"].append(p)
            else:
                groups["main"].append(p)
        params = [{"params": groups["main"], "lr": tc.lr if lr is None else lr, "weight_decay": 0.0}]
        if groups["bert_decay"] or groups["bert_no_decay"]:
            params += [
                {"params": groups["bert_decay"], "lr": tc.bert_lr, "weight_decay": tc.bert_weight_decay},
                {"params": groups["bert_no_decay"], "lr": tc.bert_lr, "weight_decay": 0.0},
            ]
        return torch.optim.Adam(params)

    def resumes(self, stage: int) -> bool:
        """True when the saved resume state belongs to this stage."""
        return self.saved is not None and self.saved.get("stage") == stage

    def run_stage(self, stage: int, task, optimizer, *, model: torch.nn.Module | None = None,
                  extra: dict[str, Any] | None = None, missing_rate: float = 0.0,
                  availability: Sampler | None = None) -> LoopState:
        """Train `task` in the generic loop as stage number `stage`, resuming it when the saved state is
        this stage's. `extra` tensors/values are saved with every epoch's resume state (what a later
        stage needs from an earlier one). `model` may wrap `ctx.model` (e.g. to keep parts in eval mode).
        `missing_rate` / `availability`: modality dropout on the training batches (see `batches`)."""
        tc = self.train
        batches = self.batches(self.train_split, stage, missing_rate, availability)
        return run_loop(task, model or self.model, optimizer, batches, tc.epochs, tc.patience, self.device,
                        state=self.resume_state(stage, task, optimizer),
                        save_state=self.state_saver(stage, task, optimizer, extra), amp=tc.amp, on_epoch=self.on_epoch)

    def resume_state(self, stage: int, task, optimizer) -> LoopState | None:
        """When the saved resume state is stage `stage`'s: the model, `optimizer` and `task` restored from it
        and the loop's state to continue from; else None (a fresh start). For a recipe that calls `run_loop`
        itself (its own batches, epochs or patience: CMC+'s experts) with `state_saver`."""
        if not self.resumes(stage):
            return None
        saved = self.saved
        self.model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        task.load_state_dict(saved["task"])
        d = saved["loop"]
        return LoopState(epoch=d["epoch"], since_improved=d["since_improved"], history=list(d["history"]),
                         done=d["done"])

    def state_saver(self, stage: int, task, optimizer,
                    extra: dict[str, Any] | None = None) -> Callable[[LoopState], None]:
        """`run_loop`'s `save_state` for stage `stage`: after every epoch, the model, `optimizer`, `task` and
        `extra` go to state.pt (atomically), which `resume_state` reads back."""

        def save(state: LoopState) -> None:
            ckpt.save_state(self.state_path, {
                "stage": stage, "loop": dataclasses.asdict(state), "model": self.model.state_dict(),
                "optimizer": optimizer.state_dict(), "task": task.state_dict(), **(extra or {}),
            })

        return save


class FrozenPart(torch.nn.Module):
    """`model` with one of its parts frozen in eval mode (no dropout, fixed BatchNorm statistics) while the
    rest trains: CMC-variant's frozen branches, MCUR's encoders after stage 0. Freezing the parameters
    (requires_grad) is the recipe's; this keeps `model.<part>` out of train mode whenever the loop calls
    `train()`. Everything else (forward, state_dict, the model's own methods) is the model's."""

    def __init__(self, model: torch.nn.Module, part: str) -> None:
        super().__init__()
        self.model = model
        self.part = part

    def train(self, mode: bool = True):
        super().train(mode)
        getattr(self.model, self.part).eval()
        return self

    def forward(self, batch):
        return self.model(batch)

    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:  # the wrapped model's own methods (e.g. MCUR's `represent`)
            return getattr(self._modules["model"], name)


def _drop_modalities(batches: Iterable[Batch], sampler: Sampler, rng: np.random.Generator) -> Iterable[Batch]:
    """Each batch with a random availability mask applied (modality dropout).

    A sample left with nothing (the mask keeps only modalities the file lacks: a text-only MELD sample
    under {a, v}) keeps the modalities it has, undropped: every model needs one modality per sample."""
    for batch in batches:
        drawn = torch.from_numpy(sampler(len(batch), rng=rng))
        have = batch.availability().to(drawn.device)
        empty = ~(drawn & have).any(dim=1)
        if empty.any():
            drawn[empty] = have[empty]
        yield batch.with_available(drawn)
