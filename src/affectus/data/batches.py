"""Batches: what travels from the data layer into a model.

A `Batch` holds torch tensors for one mini-batch plus the dataset index of every sample
(the contract the pseudo-label bank relies on). `iterate_batches` shuffles with an explicit
generator so runs are reproducible by seed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from affectus.data.types import Split, to_classes


@dataclass
class Batch:
    text: torch.Tensor  # (B, Lt, Dt) float32, or unused when text_bert is used
    audio: torch.Tensor  # (B, La, Da)
    vision: torch.Tensor  # (B, Lv, Dv)
    text_lengths: torch.Tensor  # (B,) int64
    audio_lengths: torch.Tensor  # (B,)
    vision_lengths: torch.Tensor  # (B,)
    index: torch.Tensor  # (B,) int64, dataset index of each sample
    scores: torch.Tensor | None = None  # (B,) float32 multimodal score; None when labels are withheld
    classes: torch.Tensor | None = None  # (B,) int64 3-class multimodal label
    text_bert: torch.Tensor | None = None  # (B, 3, L) int64
    unimodal_classes: torch.Tensor | None = None  # (B, 3) int64, ground-truth t/a/v classes when known

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            moved[f.name] = v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        return Batch(**moved)

    def lengths(self, modality: str) -> torch.Tensor:
        return getattr(self, f"{modality}_lengths")


def make_batch(split: Split, rows: np.ndarray, with_labels: bool = True) -> Batch:
    """Gather `rows` of a split into a Batch. `with_labels=False` withholds every label."""
    t = torch.from_numpy
    unimodal = None
    if with_labels and split.unimodal_labels is not None:
        unimodal = t(np.stack([to_classes(split.unimodal_labels[m][rows]) for m in ("text", "audio", "vision")], 1))
    return Batch(
        text=t(split.text[rows]),
        audio=t(split.audio[rows]),
        vision=t(split.vision[rows]),
        text_lengths=t(split.text_lengths[rows]),
        audio_lengths=t(split.audio_lengths[rows]),
        vision_lengths=t(split.vision_lengths[rows]),
        index=t(np.asarray(rows, dtype=np.int64)),
        scores=t(split.labels[rows]) if with_labels else None,
        classes=t(to_classes(split.labels[rows])) if with_labels else None,
        text_bert=None if split.text_bert is None else t(split.text_bert[rows]),
        unimodal_classes=unimodal,
    )


def iterate_batches(
    split: Split,
    batch_size: int = 64,
    shuffle: bool = False,
    generator: np.random.Generator | None = None,
    with_labels: bool = True,
    order: np.ndarray | None = None,
):
    """Yield Batches over a split. `order` (a permutation) overrides shuffling, e.g. for length bucketing."""
    n = len(split)
    if order is None:
        order = (generator or np.random.default_rng()).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        yield make_batch(split, order[start : start + batch_size], with_labels)
