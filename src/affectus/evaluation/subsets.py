"""D_msc / D_msi: the test subsets where modalities agree or disagree (CMC paper, sec. IV-A-3, footnote 3).

A test sample is *modality-semantic consistent* (D_msc) when its multimodal score and its three
unimodal scores (text, audio, vision) all fall in one sign class: all > 0, all = 0, or all < 0.
Every other sample is *inconsistent* (D_msi); D_test = D_msc ∪ D_msi. Only CH-SIMS and CH-SIMS v2
carry unimodal scores.

Two ways to get the subsets:
- the label scheme computes them from the labels (`LabelScheme.consistency_masks` in data/schemes.py:
  what the footnote defines, with the scheme's own classes);
- the authors also ship the subsets as separate files, ``[test]D_msc.pkl`` / ``[test]D_msi.pkl`` (an
  MMSA-style pickle holding ``{'test': {'id': [...], ...}}``): `load_subset_ids` reads the ids from
  such a file and `masks_from_ids` turns them into masks over a test split's ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from affectus.data.safe_pickle import load_untrusted
from affectus.errors import AffectusError

# ----------------------------------------------------------------------------------------------
# The authors' subset files
# ----------------------------------------------------------------------------------------------

def _ids_from(obj: Any, split: str) -> list[str] | None:
    """Ids from a list / array, a dict with 'id' (or 'ids'), or a split dict {'test': {'id': ...}}."""
    if isinstance(obj, (list, tuple, set, frozenset, np.ndarray)):
        return [_id_str(x) for x in (sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj)]
    if not isinstance(obj, Mapping):
        return None
    for key in ("id", "ids"):
        if key in obj:
            return _ids_from(obj[key], split)
    if split in obj:
        return _ids_from(obj[split], split)
    # A split dict under another name (e.g. the file holds only 'valid'): use it when it is the only one.
    nested = [v for v in obj.values() if isinstance(v, Mapping) and ("id" in v or "ids" in v)]
    if len(nested) == 1:
        return _ids_from(nested[0], split)
    return None


def _id_str(x: Any) -> str:
    if isinstance(x, bytes):
        return x.decode("utf-8")
    if isinstance(x, np.ndarray) and x.size == 1:  # ids stored as (N, 1) arrays
        return _id_str(x.reshape(-1)[0])
    return str(x)


def load_subset_ids(path: str | Path, split: str = "test") -> list[str]:
    """The sample ids in one of the authors' subset files (e.g. ``[test]D_msc.pkl``).

    Accepts a pickle holding a list / array of ids, a dict with an 'id' key, or an MMSA-like split
    dict ({'test': {'id': ...}}; `split` picks the entry). Raises AffectusError when unreadable.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = load_untrusted(f)
    except FileNotFoundError:
        raise AffectusError(f"subset file not found: {path}") from None
    # Whatever a corrupt or foreign pickle raises on the way in, it is a bad file for the user.
    except Exception as e:  # noqa: BLE001
        raise AffectusError(f"cannot read subset file {path}: {type(e).__name__}: {e}") from None
    ids = _ids_from(obj, split)
    if ids is None:
        raise AffectusError(
            f"subset file {path} holds {type(obj).__name__}: expected a list of ids, a dict with 'id', "
            f"or a split dict with '{split}'"
        )
    return ids


def masks_from_ids(
    ids: Sequence[str],
    msc_ids: Iterable[str],
    msi_ids: Iterable[str],
    strict: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(msc_mask, msi_mask) over `ids` (the test split's ids, in order) from the subsets' id lists.

    With `strict` (default) a subset id missing from `ids`, or an id listed in both subsets, raises
    AffectusError: either means the files belong to another version of the data. A test id listed in
    neither subset is in neither mask.
    """
    msc_set, msi_set = {str(i) for i in msc_ids}, {str(i) for i in msi_ids}
    if strict:
        both = msc_set & msi_set
        if both:
            raise AffectusError(f"{len(both)} id(s) in both D_msc and D_msi, e.g. '{min(both)}'")
        known = {str(i) for i in ids}
        unknown = (msc_set | msi_set) - known
        if unknown:
            raise AffectusError(
                f"{len(unknown)} subset id(s) not in the test split, e.g. '{min(unknown)}': "
                "the subset files do not match this data"
            )
    msc = np.array([str(i) in msc_set for i in ids], dtype=bool)
    msi = np.array([str(i) in msi_set for i in ids], dtype=bool)
    return msc, msi
