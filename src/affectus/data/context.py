"""Context: each utterance read with its neighbours in the same group (video, dialogue), for every model.

`train.context = K` (0: off) gives each sample a context view: the mean of the pooled text features of
the K utterances before it in its group and, unless `train.context_causal`, the K after it. Built here,
once, from a split's `groups` / `positions` (data/types.py) and its features only, never its labels;
each split's context comes from that split's own rows, so nothing crosses from one split into another.

How models see it: the context is new columns of the text feature, one context view per text view
(`transcript_context` beside `transcript`, `file_context` beside `file`), delivered the way
`train.text_inputs`' views are (features/text.py): a model with views (`Capabilities.text_views`: CMC+'s
experts, `linear`'s blocks) gets each as a view of its own; any other model reads the columns
concatenated. The context vector is repeated over the text's L steps, so whatever pooling a model does
over the true steps (or over all L) gives back exactly that vector.

Why the text feature only: the context travels in the text block, so it is present exactly when the
sample's text is (an absent text zero-fills its context too); on MELD text is the only modality; and on
mosi-utterance text is the strong modality (75% alone vs about 54% for audio or vision), so averaging
audio and vision neighbours would add 173 weak columns for 1,447 training samples.

Edges: a neighbour is one of the group's rows sorted by position (positions need not be contiguous),
and a neighbour whose text is absent (length 0 or marked absent) does not count. A sample with no
neighbour that counts gets zeros, and `Split.context_lengths` (N,) says how many neighbours each
context averages (0 there). A split without groups has no context: a run asking for one is refused.

Context through the encoder's input (`train.text_context = K`, EmoBERTa-style): each utterance is encoded
together with the transcripts of its K neighbours in its group (the K before it and, unless
`train.context_causal`, the K after it), as a second segment of the encoder's input: "utterance [SEP]
Speaker: neighbour [SEP] Speaker: neighbour ..." (speaker names where the split has them; the neighbours
nearest first, the preceding one before the following one at each distance, so a cut input loses the farthest).
The encoder's attention reads the neighbours while the sentence vector is pooled over the utterance's own
tokens (features/text.py, `encode(pairs=)`). `neighbour_transcripts` builds the second segments here, from a
split's groups / positions / speakers / transcripts, never its labels, each split from its own rows; the
text inputs record (run.json `text_inputs.context`) carries the setting, so predict / evaluate / serve build
another file's segments the same way.

Utterance sequences (for models that read their neighbours themselves: bc-LSTM, MMMU-BA). A model whose
registry entry declares `Capabilities.utterance_context = (window, causal)` gets, in every batch, each
sample's group as a sequence: the group's utterances sorted by position, from `window` before the sample
to `window` after it (causal: to the sample itself), the sample included at `Batch.seq_centre`; each
utterance as each modality's feature averaged over its true steps, zeros (and False in
`Batch.seq_available`) where that utterance lacks the modality, left-aligned and padded after the end
(`Batch.seq_mask`). The split only records the request (`Split.sequence_window`); the rows are derived
from its groups / positions (`sequence_rows`) and the pooled features gathered from its current features
when a batch is made (`sequence_features`), so a split restricted to some modalities
(`data.missing.with_availability`) gives sequences restricted the same way, and a subset's sequences
hold its own rows only. Features only, never labels; each split its own rows, as above. Recorded in
run.json (`sequence_context`), rebuilt for another file by `sequence_from_run`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from affectus.data.types import MERDataset, Split
from affectus.errors import AffectusError

CONTEXT_SUFFIX = "_context"  # a text view's context view is named VIEW_context
MAX_WINDOW = 1000  # utterances on each side; far beyond any conversation in the field's sets


def window_rows(groups: list[str], positions: np.ndarray, window: int, causal: bool) -> np.ndarray:
    """(N, W) int64 row indices of each row's neighbours in its group (-1 where the group ends), with W =
    `window` (causal: the `window` rows before it) or 2 * `window` (also the `window` rows after it).
    Columns: the nearest preceding row first, then farther ones; then the following rows, nearest first."""
    n = len(groups)
    if positions is None or len(positions) != n:
        raise AffectusError("context: groups and positions must describe every row")
    _, group_of = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    order = np.lexsort((np.asarray(positions), group_of))  # rows sorted by group, then position
    sorted_groups = group_of[order]
    offsets = [-d for d in range(1, window + 1)] + ([] if causal else list(range(1, window + 1)))
    out = np.full((n, len(offsets)), -1, dtype=np.int64)
    rank = np.arange(n)
    for col, d in enumerate(offsets):
        other = rank + d  # the neighbour's place in the sorted order
        ok = (other >= 0) & (other < n)
        same = np.zeros(n, dtype=bool)
        same[ok] = sorted_groups[other[ok]] == sorted_groups[ok]
        out[order[same], col] = order[other[same]]
    return out


def neighbour_transcripts(split: Split, window: int, causal: bool, sep: str, speakers: bool = True,
                          where: str = "") -> list[str]:
    """(N,) each row's neighbours' transcripts as one text, "Speaker: text" joined by `sep` (the tokenizer's
    separator, spaced), nearest first (at each distance the preceding neighbour, then the following one); ""
    for a row with none. Neighbours whose text is marked absent do not count. Reads transcripts, groups,
    positions and speakers only."""
    where = where or f"split {split.name}"
    if split.groups is None or split.positions is None:
        raise AffectusError(f"{where}: no groups (video or dialogue of each sample), which train.text_context "
                            f"needs")
    if split.raw_text is None:
        raise AffectusError(f"{where}: no transcripts (key raw_text), which train.text_context reads")
    rows = window_rows(split.groups, split.positions, window, causal)  # (N, W): before nearest first, then after
    if not causal:  # interleave by distance: before 1, after 1, before 2, after 2, ...
        rows = rows[:, [c for d in range(window) for c in (d, window + d)]]
    present = np.ones(len(split), dtype=bool) if split.available is None else np.asarray(split.available)[:, 0]
    names = split.speakers if speakers else None
    texts = [str(t).strip() for t in split.raw_text]
    said = [f"{names[i]}: {texts[i]}" if names is not None and str(names[i]).strip() else texts[i]
            for i in range(len(texts))]
    joint = f" {sep} "
    return [joint.join(said[j] for j in row if j >= 0 and present[j]) for row in rows.tolist()]


def pooled_text(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) the text feature averaged over each sample's true steps, and (N,) bool whether it has text."""
    x, lengths = split.text, np.clip(np.asarray(split.text_lengths), 0, split.text.shape[1])
    mask = (np.arange(x.shape[1])[None, :] < lengths[:, None]).astype(np.float32)
    pooled = (x * mask[..., None]).sum(1) / np.maximum(lengths, 1)[:, None].astype(np.float32)
    present = lengths > 0
    if split.available is not None:
        present &= split.available[:, 0]
    return pooled.astype(np.float32), present


def context_features(split: Split, window: int, causal: bool, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(N, Dt) float32 each sample's context (the mean of its neighbours' pooled text), (N,) int64 how many
    neighbours it averages. Reads the split's features, groups and positions, nothing else."""
    if split.groups is None or split.positions is None:
        raise AffectusError(f"{where or f'split {split.name}'}: no groups (video or dialogue of each sample), "
                            f"which train.context needs")
    rows = window_rows(split.groups, split.positions, window, causal)  # (N, W)
    pooled, present = pooled_text(split)
    use = (rows >= 0) & present[np.maximum(rows, 0)]  # (N, W) neighbours that count
    counts = use.sum(1).astype(np.int64)
    total = np.zeros_like(pooled, dtype=np.float64)
    for col in range(rows.shape[1]):  # W is small: one gather per neighbour slot
        take = use[:, col]
        total[take] += pooled[rows[take, col]]
    ctx = (total / np.maximum(counts, 1)[:, None]).astype(np.float32)
    return ctx, counts


def add_context(split: Split, window: int, causal: bool, where: str = "") -> Split:
    """`split` with its context appended to the text feature's columns (repeated over the L steps; zero
    where the sample's own text is absent) and `context_lengths` set."""
    ctx, counts = context_features(split, window, causal, where)
    _, own = pooled_text(split)
    ctx[~own] = 0.0  # the context travels with the sample's text: absent with it
    return replace(append_text_columns(split, ctx), context_lengths=counts)


def append_text_columns(split: Split, columns: np.ndarray) -> Split:
    """`split` with (N, K) per-sample columns appended to its text feature, repeated over the L steps (so any
    pooling over the true steps, or all L, gives them back): how context and pretrained-expert views travel."""
    steps = split.text.shape[1]
    extra = np.broadcast_to(columns[:, None, :], (len(split), steps, columns.shape[1]))
    return replace(split, text=np.ascontiguousarray(np.concatenate([split.text, extra], axis=2), dtype=np.float32))


def context_views(text_views: list[tuple[str, int]], text_dim: int, base: str) -> list[tuple[str, int]]:
    """The text views once the context is appended: the views as they were (one block named `base` when
    there were none), then each one's context view, in the same order."""
    views = list(text_views) or [(base, int(text_dim))]
    return [*views, *((f"{name}{CONTEXT_SUFFIX}", width) for name, width in views)]


def check_context(dataset: MERDataset, window: int, what: str = "train.context") -> None:
    """Refuse (one line) a dataset whose splits cannot give a context: a split without groups."""
    if not window:
        return
    for name, split in dataset.splits.items():
        if split.groups is None or split.positions is None:
            raise AffectusError(f"{what} = {window} needs groups (the video or dialogue of each sample), but "
                                f"file {dataset.source} split {name} has none (no group/position keys, and its "
                                f"ids do not name one); train without context: --set train.context=0")


def apply_context(dataset: MERDataset, window: int, causal: bool, text_views: list[tuple[str, int]], base: str
                  ) -> tuple[MERDataset, dict[str, Any] | None, list[tuple[str, int]]]:
    """`train.context` applied to every split of a dataset: (dataset, run.json record, the new text views).
    window 0 returns the dataset untouched, no record and the views as they were."""
    if not window:
        return dataset, None, list(text_views)
    check_context(dataset, window)
    text_dim = dataset.dims["text"]
    views = context_views(text_views, text_dim, base)
    splits = {name: add_context(split, window, causal, f"file {dataset.source} split {name}")
              for name, split in dataset.splits.items()}
    record = {"window": int(window), "causal": bool(causal), "reads": "text", "width": int(text_dim),
              "views": [[name, int(width)] for name, width in views]}
    return MERDataset(splits=splits, source=dataset.source, sanitised=dict(dataset.sanitised)), record, views


def context_from_record(record: Any, where: str = "run.json context") -> tuple[int, bool, int]:
    """(window, causal, text width before the context) of a run's context record, checked."""
    if not isinstance(record, dict) or not {"window", "causal", "width"} <= set(record):
        raise AffectusError(f"{where}: expected an object with window, causal and width, got {record!r:.200}")
    window, causal, width = record["window"], record["causal"], record["width"]
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW:
        raise AffectusError(f"{where}: window {window!r} is not a whole number in [1, {MAX_WINDOW}]")
    if not isinstance(causal, bool):
        raise AffectusError(f"{where}: causal {causal!r} is not true or false")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise AffectusError(f"{where}: width {width!r} is not a positive whole number")
    return window, causal, width


def context_from_run(split: Split, record: dict[str, Any], where: str) -> Split:
    """A new file's split read as the run that wrote `record` read its data: its own context, from its own
    groups. A split without groups, or whose text is not as wide as the run's was, is refused."""
    window, causal, width = context_from_record(record, where)
    if split.groups is None or split.positions is None:
        raise AffectusError(f"{where}: the run reads context (train.context = {window}), which needs groups (the "
                            f"video or dialogue of each sample), but split {split.name} has none; give a file "
                            f"whose splits carry group/position keys or ids that name the group")
    if split.text.shape[2] != width:
        raise AffectusError(f"split {split.name} text: feature dim {split.text.shape[2]}, the run expects {width} "
                            f"(before its context columns)")
    return add_context(split, window, causal, f"split {split.name}")


# ------------------------------------------------------------------------------- utterance sequences

SEQUENCE_READS = ("text", "audio", "vision")  # every modality's pooled vector travels in the sequence


def sequence_rows(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(N, W) int64 the rows of each sample's sequence (its group's utterances in position order within the
    window, left-aligned, -1 after the sequence's end; W the longest sequence) and (N,) int64 the sample's
    own place in it. Computed once per Split object (cached on it: groups and positions never change in
    place; a changed split is a new object, `dataclasses.replace`)."""
    cached = split.__dict__.get("_sequence_rows")
    if cached is not None:
        return cached
    if split.sequence_window is None:
        raise AffectusError(f"split {split.name}: no utterance sequence was asked for")
    window, causal = split.sequence_window
    if split.groups is None or split.positions is None:
        raise AffectusError(f"split {split.name}: no groups (video or dialogue of each sample), which an "
                            f"utterance sequence needs")
    n = len(split.groups)
    _, group_of = np.unique(np.asarray(split.groups, dtype=object).astype(str), return_inverse=True)
    order = np.lexsort((np.asarray(split.positions), group_of))  # rows sorted by group, then position
    sorted_groups = group_of[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])  # each group's first rank
    sizes = np.diff(np.r_[starts, n])
    group_start = np.repeat(starts, sizes)  # (N,) per sorted rank: where its group starts
    rank = np.arange(n) - group_start  # place within the group
    lo = np.maximum(rank - window, 0)
    hi = np.minimum(rank + (0 if causal else window), np.repeat(sizes, sizes) - 1)
    length = hi - lo + 1
    cols = np.arange(int(length.max()) if n else 1)
    valid = cols[None, :] < length[:, None]
    at = np.minimum(group_start[:, None] + lo[:, None] + cols[None, :], max(n - 1, 0))
    rows_sorted = np.where(valid, order[at], -1).astype(np.int64)
    rows = np.empty_like(rows_sorted)
    rows[order] = rows_sorted
    centre = np.empty(n, dtype=np.int64)
    centre[order] = rank - lo
    split.__dict__["_sequence_rows"] = (rows, centre)
    return rows, centre


def pooled(split: Split, modality: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, D) float32 the feature of `rows` averaged over their true steps (zeros where absent) and (R,) bool
    whether each row has the modality (length > 0 and not marked absent)."""
    x = split.features(modality)[rows]
    lengths = np.clip(np.asarray(split.lengths(modality))[rows], 0, x.shape[1])
    mask = (np.arange(x.shape[1])[None, :] < lengths[:, None]).astype(np.float32)
    out = (x * mask[..., None]).sum(1) / np.maximum(lengths, 1)[:, None].astype(np.float32)
    present = lengths > 0
    if split.available is not None:
        present &= np.asarray(split.available, dtype=bool)[rows, SEQUENCE_READS.index(modality)]
    out[~present] = 0.0
    return out.astype(np.float32), present


def sequence_features(split: Split, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The utterance sequences of the samples `rows` of a split that asks for them. Samples of one batch that
    share a sequence (utterances of one video, when the window spans it) share its arrays: S distinct
    sequences, `seq_index` (B,) int64 each sample's. `seq_text` / `seq_audio` / `seq_vision` (S, W, D) float32,
    `seq_available` (S, W, 3) bool, `seq_mask` (S, W) bool, `seq_centre` (B,) int64, W this batch's longest."""
    all_rows, all_centre = sequence_rows(split)
    seq = all_rows[rows]  # (B, W_split)
    width = max(int((seq >= 0).sum(1).max()) if len(seq) else 1, 1)  # left-aligned: trim the common padding
    seq, index = np.unique(seq[:, :width], axis=0, return_inverse=True)  # (S, W), (B,)
    real = seq >= 0
    used, inverse = np.unique(seq[real], return_inverse=True)  # each utterance pooled once per batch
    out: dict[str, np.ndarray] = {}
    available = np.zeros((*seq.shape, len(SEQUENCE_READS)), dtype=bool)
    for k, m in enumerate(SEQUENCE_READS):
        vectors, present = pooled(split, m, used)
        x = np.zeros((*seq.shape, vectors.shape[1]), dtype=np.float32)
        x[real] = vectors[inverse]
        available[real, k] = present[inverse]
        out[f"seq_{m}"] = x
    out["seq_available"] = available
    out["seq_mask"] = real
    out["seq_centre"] = all_centre[rows].astype(np.int64)
    out["seq_index"] = np.asarray(index, dtype=np.int64).reshape(-1)
    return out


def group_order(split: Split, rng: np.random.Generator) -> np.ndarray:
    """A training order that keeps each group's rows together (the groups shuffled, each group's rows in
    position order): a batch then holds a few whole videos, as the context papers' batches do, and their
    samples share one sequence each (`sequence_features`), computed once. A split without groups: shuffled."""
    if split.groups is None or split.positions is None:
        return rng.permutation(len(split))
    _, group_of = np.unique(np.asarray(split.groups, dtype=object).astype(str), return_inverse=True)
    rank = rng.permutation(int(group_of.max()) + 1 if len(group_of) else 0)  # each group's place
    return np.lexsort((np.asarray(split.positions), rank[group_of]))


def check_sequences(dataset: MERDataset, window: int, what: str) -> None:
    """Refuse (one line) a dataset with a split that has no groups, for a model that reads sequences."""
    for name, split in dataset.splits.items():
        if split.groups is None or split.positions is None:
            raise AffectusError(f"{what} reads each utterance's video or dialogue (model.window = {window}), which "
                                f"needs groups, but file {dataset.source} split {name} has none (no group/position "
                                f"keys, and its ids do not name one); give a file with groups, or read one "
                                f"utterance alone: --set model.window=0")


def apply_sequences(dataset: MERDataset, window: int, causal: bool, what: str
                    ) -> tuple[MERDataset, dict[str, Any]]:
    """Every split of a dataset asking for utterance sequences: (dataset, run.json record)."""
    check_sequences(dataset, window, what)
    splits = {name: replace(split, sequence_window=(int(window), bool(causal)))
              for name, split in dataset.splits.items()}
    record = {"window": int(window), "causal": bool(causal), "reads": list(SEQUENCE_READS),
              "pooling": "mean over true steps"}
    return MERDataset(splits=splits, source=dataset.source, sanitised=dict(dataset.sanitised)), record


def sequence_from_run(split: Split, record: Any, where: str) -> Split:
    """A new file's split read as the run that wrote `record` (run.json `sequence_context`) read its data:
    sequences from its own groups. A split without groups is refused."""
    if not isinstance(record, dict) or not {"window", "causal"} <= set(record):
        raise AffectusError(f"{where}/run.json sequence_context: expected an object with window and causal, got "
                            f"{record!r:.200}")
    window, causal = record["window"], record["causal"]
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW:
        raise AffectusError(f"{where}/run.json sequence_context: window {window!r} is not a whole number in "
                            f"[1, {MAX_WINDOW}]")
    if not isinstance(causal, bool):
        raise AffectusError(f"{where}/run.json sequence_context: causal {causal!r} is not true or false")
    if split.groups is None or split.positions is None:
        raise AffectusError(f"{where}: the run reads each utterance's video or dialogue (window {window}), which "
                            f"needs groups, but split {split.name} has none; give a file whose splits carry "
                            f"group/position keys or ids that name the group")
    return replace(split, sequence_window=(window, causal))
