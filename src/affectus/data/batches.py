"""Batches: what travels from the data layer into a model.

A `Batch` holds torch tensors for one mini-batch plus the dataset index of every sample (the contract
the pseudo-label bank relies on) and which modalities each sample has (`available`, (B, 3); an absent
modality arrives zero-filled with length 0). `iterate_batches` shuffles with an explicit generator so
runs are reproducible by seed; the label scheme turns labels into classes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from affectus.data.context import sequence_features
from affectus.data.types import MODALITIES, Split, to_classes


@dataclass
class Batch:
    text: torch.Tensor  # (B, Lt, Dt) float32, or unused when text_bert is used
    audio: torch.Tensor  # (B, La, Da)
    vision: torch.Tensor  # (B, Lv, Dv)
    text_lengths: torch.Tensor  # (B,) int64
    audio_lengths: torch.Tensor  # (B,)
    vision_lengths: torch.Tensor  # (B,)
    index: torch.Tensor  # (B,) int64, dataset index of each sample
    scores: torch.Tensor | None = None  # (B,) float32 label (a score, or a class index); None when withheld
    classes: torch.Tensor | None = None  # (B,) int64 class under the label scheme
    text_bert: torch.Tensor | None = None  # (B, 3, L) int64
    available: torch.Tensor | None = None  # (B, 3) bool, text / audio / vision present; None: all present
    # the fine-tuned text encoder's input (Split.text_tokens), cut to the batch's longest transcript:
    # (B, W, D) float16 token states and (B,) int64 lengths; None without `train.text_encoder_finetune`
    text_tokens: torch.Tensor | None = None
    text_token_lengths: torch.Tensor | None = None
    # Each sample's video / dialogue as a sequence of utterances (data/context.py), present only when the
    # split asks for it (`Split.sequence_window`, for models with `Capabilities.utterance_context`), else None:
    # seq_text / seq_audio / seq_vision (B, W, D) each utterance's pooled feature (zeros where it lacks the
    # modality, and at padding), seq_available (B, W, 3) bool, seq_mask (B, W) bool (a real utterance;
    # left-aligned), seq_centre (B,) int64 the sample's own place in its sequence. Samples that share a
    # sequence (one video's utterances) share its rows: seq_* hold S <= B sequences, seq_index (B,) int64 says
    # which is each sample's
    seq_text: torch.Tensor | None = None
    seq_audio: torch.Tensor | None = None
    seq_vision: torch.Tensor | None = None
    seq_available: torch.Tensor | None = None
    seq_mask: torch.Tensor | None = None
    seq_centre: torch.Tensor | None = None
    seq_index: torch.Tensor | None = None

    def availability(self) -> torch.Tensor:
        """(B, 3) bool; all True when the batch carries no mask."""
        if self.available is None:
            return torch.ones(len(self), 3, dtype=torch.bool, device=self.index.device)
        return self.available

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

    def with_available(self, present: torch.Tensor) -> Batch:
        """A copy where modality k of sample b is absent unless present[b, k] (and it was present):
        zero-filled with length 0, as `data.missing.with_availability` does to a split. (B, 3) bool."""
        mask = present.to(device=self.index.device, dtype=torch.bool) & self.availability()  # (B, 3)
        changes: dict = {"available": mask}
        for k, m in enumerate(MODALITIES):
            keep = mask[:, k]
            x = getattr(self, m)  # (B, L, D)
            changes[m] = torch.where(keep[:, None, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
            changes[f"{m}_lengths"] = torch.where(keep, self.lengths(m), torch.zeros_like(self.lengths(m)))
        if self.seq_available is not None:
            # a modality a condition removes from a sample is removed from its whole conversation: the
            # neighbours' features of that modality are not read either. Masks differ per sample, so each
            # sample gets its own copy of its sequence (seq_index 0..B-1)
            idx = self.seq_index
            seq_keep = self.seq_available[idx] & mask[:, None, :]  # (B, W, 3)
            changes["seq_available"] = seq_keep
            changes["seq_mask"] = self.seq_mask[idx]
            changes["seq_index"] = torch.arange(len(self), device=idx.device)
            for k, m in enumerate(MODALITIES):
                x = getattr(self, f"seq_{m}")[idx]
                changes[f"seq_{m}"] = torch.where(seq_keep[..., k, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        if self.text_bert is not None:
            changes["text_bert"] = torch.where(mask[:, 0, None, None], self.text_bert,
                                               torch.zeros((), dtype=self.text_bert.dtype, device=self.index.device))
        return replace(self, **changes)


def make_batch(split: Split, rows: np.ndarray, with_labels: bool = True, scheme=None) -> Batch:
    """Gather `rows` of a split into a Batch. `with_labels=False` withholds every label; `scheme` (a
    LabelScheme) maps labels to classes (default: 3-class sentiment)."""
    t = torch.from_numpy
    tokens = token_lengths = None
    if split.text_tokens is not None:
        token_lengths = split.text_token_lengths[rows]
        # only the columns up to the batch's longest transcript: the fine-tuned layers cost per column
        width = max(int(token_lengths.max(initial=0)), 1)
        tokens = t(np.ascontiguousarray(split.text_tokens[rows, :width]))
        token_lengths = t(np.asarray(token_lengths, dtype=np.int64))
    classes_of = to_classes if scheme is None else scheme.to_classes
    sequence = {}
    if split.sequence_window is not None:
        sequence = {k: t(v) for k, v in sequence_features(split, np.asarray(rows)).items()}
    return Batch(
        text=t(split.text[rows]),
        audio=t(split.audio[rows]),
        vision=t(split.vision[rows]),
        text_lengths=t(split.text_lengths[rows]),
        audio_lengths=t(split.audio_lengths[rows]),
        vision_lengths=t(split.vision_lengths[rows]),
        index=t(np.asarray(rows, dtype=np.int64)),
        scores=t(split.labels[rows]) if with_labels else None,
        classes=t(classes_of(split.labels[rows])) if with_labels else None,
        text_bert=None if split.text_bert is None else t(split.text_bert[rows]),
        available=None if split.available is None else t(split.available[rows]),
        text_tokens=tokens,
        text_token_lengths=token_lengths,
        **sequence,
    )


def iterate_batches(
    split: Split,
    batch_size: int = 64,
    shuffle: bool = False,
    generator: np.random.Generator | None = None,
    with_labels: bool = True,
    order: np.ndarray | None = None,
    scheme=None,
    drop_single: bool = False,
):
    """Yield Batches over a split. `order` (a permutation) overrides shuffling, e.g. for length bucketing.

    `drop_single` (training): a final batch of one sample is left out, because BatchNorm in training
    mode cannot normalise a single sample; it is the last sample of `order`, a different one each epoch.
    """
    if order is None:
        n = len(split)
        order = (generator or np.random.default_rng()).permutation(n) if shuffle else np.arange(n)
    n = len(order)
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        if drop_single and len(rows) == 1 and n > 1:
            return
        yield make_batch(split, rows, with_labels, scheme)
