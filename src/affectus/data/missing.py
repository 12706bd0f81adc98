"""Modality availability: which of text / audio / vision a sample has.

An absent modality is zero-filled with length 0 and marked False in the split's (N, 3) `available`
mask, which every batch carries as `Batch.available`. Every model accepts every mask without NaN.

The 7 fixed conditions of CUMDF's Tables 1-2 are the non-empty subsets of {l, a, v} (l = language =
text); `parse_available` reads them as `text,audio`, `l,a`, `la` or `{l,a}`.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import torch

from affectus.data.types import MODALITIES, Split
from affectus.errors import AffectusError

SHORT = {"l": "text", "t": "text", "a": "audio", "v": "vision"}

# {l}, {a}, {v}, {l,a}, {l,v}, {a,v}, {l,a,v}: CUMDF's order
CONDITIONS: tuple[tuple[str, ...], ...] = tuple(
    c for r in (1, 2, 3) for c in itertools.combinations(MODALITIES, r)
)


def usable_conditions(split: Split) -> tuple[tuple[str, ...], ...]:
    """The conditions (`CONDITIONS` order) under which every sample of `split` keeps a modality: all 7
    for a split without an availability mask; those with text for a text-only file (MELD)."""
    if split.available is None:
        return CONDITIONS
    have = np.asarray(split.available, dtype=bool)
    return tuple(c for c in CONDITIONS
                 if (have & np.array([m in c for m in MODALITIES])).any(axis=1).all())


def condition_name(present: tuple[str, ...] | list[str]) -> str:
    """('text', 'audio') -> '{l,a}'."""
    short = {"text": "l", "audio": "a", "vision": "v"}
    return "{" + ",".join(short[m] for m in MODALITIES if m in present) + "}"


def random_availability(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) bool: each (sample, modality) absent with probability `rate`, at least one kept per sample.

    A sample that loses all three keeps one modality drawn uniformly, so a modality is absent with
    probability rate - rate**3 / 3, a little below `rate`. Training recipes use it for modality dropout;
    the same generator state, n and rate give the same mask.
    """
    if not 0.0 <= rate <= 1.0:
        raise AffectusError(f"missing rate {rate}: expected a value in [0, 1]")
    mask = rng.random((n, 3)) >= rate  # (n, 3) True = present
    keep = rng.integers(0, 3, size=n)  # drawn for every sample, so the stream does not depend on the mask
    empty = ~mask.any(axis=1)
    mask[np.flatnonzero(empty), keep[empty]] = True
    return mask


def random_conditions(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) bool: each sample gets one of the 7 conditions (`CONDITIONS`), drawn uniformly.

    The evaluation protocol of CUMDF's Tables 1-2 averages over the 7 conditions with equal weight; this
    draws training masks from exactly that distribution (a per-modality rate gives a single modality
    1/7 of the samples only near rate 0.5, and never the complete set 1/7 of the time)."""
    table = np.array([[m in c for m in MODALITIES] for c in CONDITIONS])  # (7, 3)
    return table[rng.integers(0, len(CONDITIONS), size=n)]


def hide_one_modality(n: int, rate: float, rng: np.random.Generator | torch.Generator) -> np.ndarray:
    """(n, 3) bool: each sample, with probability `rate`, hides one of its three modalities, drawn uniformly;
    the other two stay. At most one modality is absent per sample, so every sample keeps two.

    Draws n uniforms, then n integers in [0, 3) (every sample gets both, so the stream does not depend on
    the outcome). `rng` is a numpy Generator (the `availability` samplers of `RecipeContext.batches`) or a
    torch.Generator (CMC+'s router, whose masks have always been drawn from one); the same generator
    state, n and rate give the same mask. CMC+ (`recipe.modality_dropout`) uses it while fitting the
    evidence router, so the router learns to weigh the experts left when one is missing."""
    if not 0.0 <= rate <= 1.0:
        raise AffectusError(f"modality dropout rate {rate}: expected a value in [0, 1]")
    if isinstance(rng, torch.Generator):
        hide = (torch.rand(n, generator=rng) < rate).numpy()
        which = torch.randint(0, len(MODALITIES), (n,), generator=rng).numpy()
    else:
        hide = rng.random(n) < rate
        which = rng.integers(0, len(MODALITIES), size=n)
    present = np.ones((n, len(MODALITIES)), dtype=bool)
    present[np.flatnonzero(hide), which[hide]] = False
    return present


def parse_available(text: str) -> tuple[str, ...]:
    """'text,audio' / 'l,a' / 'la' / '{l,a}' -> ('text', 'audio'), in text / audio / vision order."""
    raw = str(text).strip().strip("{}").replace(" ", "")
    parts = [p for p in raw.split(",") if p] if "," in raw or raw in MODALITIES else list(raw)
    names = []
    for p in parts:
        name = SHORT.get(p.lower(), p.lower())
        if name not in MODALITIES:
            raise AffectusError(f"--available {text!r}: unknown modality {p!r} (expected text, audio, vision or l, a, v)")
        names.append(name)
    if not names:
        raise AffectusError(f"--available {text!r}: at least one modality must stay available")
    return tuple(m for m in MODALITIES if m in names)


def with_availability(split: Split, present: tuple[str, ...] | list[str] | np.ndarray) -> Split:
    """A copy of `split` where the absent modalities are zero-filled with length 0.

    `present`: the modalities every sample keeps (a condition), or an (N, 3) bool mask per sample.
    A sample already missing a modality stays missing it.
    """
    n = len(split)
    if isinstance(present, np.ndarray):
        mask = np.asarray(present, dtype=bool)
        if mask.shape != (n, 3):
            raise AffectusError(f"availability mask of shape {mask.shape}, expected ({n}, 3)")
    else:
        unknown = [m for m in present if m not in MODALITIES]
        if unknown:
            raise AffectusError(f"unknown modality {unknown[0]!r} (expected text, audio, vision)")
        mask = np.tile(np.array([m in present for m in MODALITIES]), (n, 1))
    if split.available is not None:
        mask = mask & split.available
    if not mask.any(axis=1).all():
        raise AffectusError(f"split {split.name}: an availability condition must keep at least one modality")
    changes = {}
    for k, m in enumerate(MODALITIES):
        gone = ~mask[:, k]
        if gone.any():
            feats = split.features(m).copy()
            feats[gone] = 0.0
            lengths = split.lengths(m).copy()
            lengths[gone] = 0
            changes[m] = feats
            changes[f"{m}_lengths"] = lengths
            if m == "text" and split.text_bert is not None:
                bert = split.text_bert.copy()
                bert[gone] = 0  # no ids, an all-zero attention mask
                changes["text_bert"] = bert
    return replace(split, available=mask, **changes)


def mrms(split: Split, p: float, seed: int) -> Split:
    """CUMDF's Modality Random Missing Strategy: a copy of `split` where each valid frame of each present
    modality is dropped (set to a zero vector) with probability `p`, independently, seeded by `seed`.

    Lengths stay as they were (a dropped frame is a zero frame in its place). A modality that loses every
    frame of a sample becomes absent (zeros, length 0, False in `available`). A sample that would lose
    all its modalities keeps one it had, chosen uniformly, with all its frames: at least one modality
    remains per sample. The paper's drop ratios are 0.1 to 0.7; text given as BERT ids (`text_bert`)
    follows only whole-modality absence.
    """
    if not 0.0 <= p < 1.0:
        raise AffectusError(f"MRMS drop ratio p = {p}: expected a value in [0, 1)")
    n = len(split)
    rng = np.random.default_rng([int(seed), 0x4D524D53])  # "MRMS": a stream of its own for this seed
    had = np.ones((n, 3), dtype=bool) if split.available is None else split.available.copy()
    drops, kept = [], np.zeros((n, 3), dtype=bool)
    for k, m in enumerate(MODALITIES):
        steps = split.features(m).shape[1]
        valid = (np.arange(steps)[None, :] < np.clip(split.lengths(m), 0, steps)[:, None]) & had[:, k:k + 1]
        drop = (rng.random((n, steps)) < p) & valid  # (N, T_m)
        drops.append(drop)
        kept[:, k] = (valid & ~drop).any(axis=1)
    lost = ~kept.any(axis=1)
    choice = np.argmax(rng.random((n, 3)) * had, axis=1)  # a modality each sample had, uniformly
    changes = {}
    for k, m in enumerate(MODALITIES):
        restore = lost & (choice == k)
        drops[k][restore] = False
        kept[restore, k] = True
        feats = split.features(m).copy()
        feats[drops[k]] = 0.0
        changes[m] = feats
    return with_availability(replace(split, **changes), kept)
