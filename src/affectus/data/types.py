"""The one in-memory form every dataset is read into.

Whatever the source (an MMSA pickle, our `.npz`, the simulator), training and evaluation only
ever see `MERDataset` -> `Split`. Arrays are float32 features, int64 lengths, float32 scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODALITIES = ("text", "audio", "vision")
UNIMODAL_KEYS = {"text": "regression_labels_T", "audio": "regression_labels_A", "vision": "regression_labels_V"}


@dataclass
class Split:
    """One split (train / valid / test) of N samples."""

    name: str
    text: np.ndarray  # (N, Lt, Dt) float32
    audio: np.ndarray  # (N, La, Da) float32
    vision: np.ndarray  # (N, Lv, Dv) float32
    text_lengths: np.ndarray  # (N,) int64 (from the text_bert mask when present, else Lt)
    audio_lengths: np.ndarray  # (N,) int64
    vision_lengths: np.ndarray  # (N,) int64
    labels: np.ndarray  # (N,) float32 multimodal sentiment score
    ids: list[str]
    raw_text: list[str] | None = None
    text_bert: np.ndarray | None = None  # (N, 3, L) int64: input ids, attention mask, segment ids
    unimodal_labels: dict[str, np.ndarray] | None = None  # modality -> (N,) float32 scores
    # (N, 3) bool, text / audio / vision present; None: every modality of every sample is present.
    # An absent modality is zero-filled with length 0 (data/missing.py).
    available: np.ndarray | None = None
    # Where each sample sits in its conversation or video, for context models: `groups` (N,) the group
    # (a video, a dialogue), `positions` (N,) int64 >= 0, the order within the group (unique per group,
    # not necessarily contiguous). Sorting a group's rows by position gives its utterances in order, so a
    # context window is the rows of the same group with a smaller position. None: no grouping known.
    groups: list[str] | None = None
    positions: np.ndarray | None = None
    speakers: list[str] | None = None  # (N,) who says each utterance (MELD); None: not known
    # (N,) int64 how many neighbours each sample's context view averages (data/context.py; 0: none, e.g.
    # at a group's edge, its context columns are zeros); None: the split carries no context
    context_lengths: np.ndarray | None = None
    # `train.text_encoder_finetune` (features/text_finetune.py): the transcripts' token states at the input of
    # the text encoder's first fine-tuned layer (N, Lk, D) float16, computed once by its frozen lower layers,
    # zero after each transcript's true length, and those lengths (N,) int64; None: no fine-tuning
    text_tokens: np.ndarray | None = None
    text_token_lengths: np.ndarray | None = None
    # (window, causal): batches of this split carry each sample's group as a sequence of utterances, the
    # `window` before it and (unless causal) after it, each modality pooled (data/context.py,
    # `sequence_rows`), for models that read their neighbours themselves (`Capabilities.utterance_context`).
    # Derived from groups / positions when a batch is made, so a subset's sequences hold its own rows.
    # None: batches carry no sequence.
    sequence_window: tuple[int, bool] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def features(self, modality: str) -> np.ndarray:
        return getattr(self, modality)

    def lengths(self, modality: str) -> np.ndarray:
        return getattr(self, f"{modality}_lengths")

    def subset(self, rows: np.ndarray, name: str | None = None) -> Split:
        """A new split holding `rows` (an index array or boolean mask), re-indexed from 0."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)

        def take(a):
            return None if a is None else a[rows]

        return Split(
            name=name or self.name,
            text=self.text[rows],
            audio=self.audio[rows],
            vision=self.vision[rows],
            text_lengths=self.text_lengths[rows],
            audio_lengths=self.audio_lengths[rows],
            vision_lengths=self.vision_lengths[rows],
            labels=self.labels[rows],
            ids=[self.ids[i] for i in rows],
            raw_text=None if self.raw_text is None else [self.raw_text[i] for i in rows],
            text_bert=take(self.text_bert),
            unimodal_labels=None
            if self.unimodal_labels is None
            else {k: v[rows] for k, v in self.unimodal_labels.items()},
            available=take(self.available),
            groups=None if self.groups is None else [self.groups[i] for i in rows],
            positions=take(self.positions),
            speakers=None if self.speakers is None else [self.speakers[i] for i in rows],
            context_lengths=take(self.context_lengths),
            text_tokens=take(self.text_tokens),
            text_token_lengths=take(self.text_token_lengths),
            sequence_window=self.sequence_window,
        )


@dataclass
class MERDataset:
    """Splits by name plus where they came from and what was cleaned on the way in."""

    splits: dict[str, Split]
    source: str = "<memory>"
    # (split, key) -> number of -inf / +inf / NaN feature values replaced by 0 on load
    sanitised: dict[tuple[str, str], int] = field(default_factory=dict)
    # the label scheme the file records (`{"name": "categorical", "classes": [...]}`, data/schemes.py), or
    # None: the reader infers it. `extract-dataset --labels annotation` writes one, so no reader guesses
    # what the class indices mean.
    scheme: dict[str, Any] | None = None

    def __getitem__(self, name: str) -> Split:
        return self.splits[name]

    def __contains__(self, name: str) -> bool:
        return name in self.splits

    @property
    def dims(self) -> dict[str, int]:
        first = next(iter(self.splits.values()))
        return {m: int(first.features(m).shape[2]) for m in MODALITIES}

    @property
    def seq_lens(self) -> dict[str, int]:
        first = next(iter(self.splits.values()))
        return {m: int(first.features(m).shape[1]) for m in MODALITIES}

    @property
    def has_unimodal_labels(self) -> bool:
        return all(s.unimodal_labels is not None for s in self.splits.values())


def group_summary(groups: list[str] | None) -> dict[str, float] | None:
    """{"groups": number of groups, "mean_length": samples per group} (None without groups)."""
    if groups is None:
        return None
    count = len(set(groups))
    return {"groups": count, "mean_length": len(groups) / count if count else 0.0}


def to_classes(scores: np.ndarray) -> np.ndarray:
    """Sentiment score -> 3-class label: < 0 -> 0 (negative), = 0 -> 1 (neutral), > 0 -> 2 (positive)."""
    scores = np.asarray(scores)
    return (np.sign(scores).astype(np.int64) + 1).astype(np.int64)
