"""Read MMSA feature files (and write the pickle form), validating them into the one in-memory form (`MERDataset`).

Two on-disk forms are read, told apart by their first bytes (not by the file name):

* **MMSA pickle** (`unaligned_50.pkl`, `unaligned_39.pkl`, ...): `{'train'|'valid'|'test': {key: array}}`
  as published by thuiar/MMSA and read by the CMC authors' code.
* **affectus .npz**: the same content written by `data.npz.write_npz` / `affectus convert`, loadable with
  `numpy.load(..., allow_pickle=False)`: no object arrays, strings stored as fixed unicode arrays (its reader
  and writer live in `data/npz.py`).

Safety: unpickling a file can run code chosen by whoever wrote it. Pickles are read by the package's
one data-only reader (`data/safe_pickle.py`), which never lets the file call anything: numpy arrays of
plain dtypes and plain containers come through, everything else is refused. `trust_pickle=True` hands the
file to Python's own unpickler instead (it runs whatever the file says). `docs/security.md` has the
details; `affectus convert` writes the pickle-free .npz, which numpy reads without any code.

Every problem a user can cause is an `AffectusError` whose one-line message names the file, the
split and the key, and says what was expected.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from affectus.data.presets import Preset, load_preset
from affectus.data.safe_pickle import UnsafePickleError, load_untrusted
from affectus.data.types import MODALITIES, UNIMODAL_KEYS, MERDataset, Split
from affectus.errors import AffectusError
from affectus.utils.io import atomic_path

_log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")
FEATURE_KEYS = MODALITIES  # (N, L, D) float features under the modality's own name
ID_SEP = "$_$"  # MMSA ids are `video_id$_$clip_id`
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip (npz) with entries / an empty zip
_NPY_MAGIC = b"\x93NUMPY"


def _where(path: str, split: str | None = None, key: str | None = None) -> str:
    parts = [f"file {path}"]
    if split is not None:
        parts.append(f"split {split}")
    if key is not None:
        parts.append(f"key {key}")
    return " ".join(parts)


def _fail(where: str, what: str) -> AffectusError:
    # Messages must stay on one line: the CLI prints exactly one `error: ...` line.
    what = " ".join(str(what).split())
    return AffectusError(f"{where}: {what}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (feature files can be several GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------- reading files


def _read_pickle(path: str, trust_pickle: bool) -> Any:
    try:
        with open(path, "rb") as f:
            if trust_pickle:
                return pickle.load(f)
            return load_untrusted(f)
    except UnsafePickleError as err:
        raise _fail(
            _where(path),
            f"refused by the data-only pickle reader ({err}); if you trust the file's author, "
            "pass --trust-pickle (Python: trust_pickle=True), or convert it once with affectus convert",
        ) from None
    except Exception as err:  # noqa: BLE001 - a corrupt pickle can raise almost anything
        # EOFError / UnpicklingError("truncated") both mean the file ends early.
        truncated = isinstance(err, EOFError) or "truncated" in str(err)
        hint = "truncated file? " if truncated else ""
        raise _fail(_where(path), f"not a readable MMSA pickle ({hint}{type(err).__name__}: {err})") from None



def file_format(path: str | os.PathLike) -> str:
    """'npz' or 'pickle', decided by the file's magic bytes (a .pkl renamed .npz still reads)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] in _ZIP_MAGIC:
        return "npz"
    if head.startswith(_NPY_MAGIC):
        return "npy"
    return "pickle"


def load_dataset(
    path: str | os.PathLike, preset: str | Preset | None = None, *, trust_pickle: bool = False
) -> MERDataset:
    """Read an MMSA pickle or an affectus .npz, validate it, and return the in-memory form.

    `preset` (a name or a `Preset`) says which key holds the labels (its scheme's `label_keys`: class
    indices may come from `classification_labels`) and checks the feature dims and the labels against
    the preset's.
    Non-finite feature values are replaced by 0 and counted in `MERDataset.sanitised`.
    """
    spath = str(path)
    p = Path(path)
    if not p.exists():
        raise _fail(_where(spath), "no such file")
    if not p.is_file():
        raise _fail(_where(spath), "not a file")
    try:
        if p.stat().st_size == 0:
            raise _fail(_where(spath), "empty file (0 bytes)")
        fmt = file_format(p)
    except OSError as err:  # no read permission, an I/O error
        raise _fail(_where(spath), f"cannot read ({err.strerror or type(err).__name__})") from None
    if fmt == "npy":
        raise _fail(_where(spath), "a single .npy array, not a dataset (expected an MMSA pickle or .npz)")
    if fmt == "npz":
        from affectus.data.npz import check_unpacked_size, read_npz  # npz.py builds on this module

        check_unpacked_size(spath)
        raw, prior, scheme = read_npz(spath)
    else:
        if trust_pickle:
            _log.warning("warning: --trust-pickle: reading %s with Python's own unpickler, which runs any code the file holds", spath)
        raw, prior, scheme = _read_pickle(spath, trust_pickle), {}, None
    return _validated(raw, prior, spath, preset, scheme)



def _validated(raw: Any, prior: dict[tuple[str, str], int], source: str, preset: str | Preset | None,
               scheme: dict[str, Any] | None = None) -> MERDataset:
    """`scheme`: the label scheme the file records (an .npz's `__meta__`), kept on the dataset."""
    p = None if preset is None else (preset if isinstance(preset, Preset) else load_preset(preset))
    keys = p.scheme.label_keys if p is not None else None
    if keys is None and scheme is not None:
        from affectus.data.schemes import get_scheme

        keys = get_scheme(scheme).label_keys
    dataset = dataset_from_raw(raw, source=source, label_keys=keys)
    dataset.scheme = scheme
    if p is not None and p.id_separator is not None:  # the preset says how its files' ids name the group
        for split in dataset.splits.values():
            derived = groups_from_ids(split.ids, p.id_separator) if split.groups is None else None
            if derived is not None:
                split.groups, split.positions = derived
    # Values already replaced when the npz was written still count: the npz holds the cleaned arrays.
    for k, v in prior.items():
        dataset.sanitised[k] = dataset.sanitised.get(k, 0) + v
    if p is not None:
        p.check(dataset)
    return dataset


# ------------------------------------------------------------------------------------------ validation


def dataset_from_raw(raw: Any, source: str = "<memory>", label_keys: tuple[str, ...] | None = None) -> MERDataset:
    """Validate an MMSA-layout dict into a `MERDataset` (never modifies the arrays it is given).

    `label_keys`: where the labels are, first present key wins (a label scheme's `label_keys`);
    None: `regression_labels`, the sentiment score of MMSA files."""
    if not isinstance(raw, dict):
        raise _fail(_where(source), f"expected a dict of splits (train/valid/test), got {type(raw).__name__}")
    unknown = [k for k in raw if k not in SPLIT_NAMES]
    if unknown:
        raise _fail(
            _where(source), f"top-level key {unknown[0]!r} is not a split (expected {', '.join(SPLIT_NAMES)})"
        )
    if not raw:
        raise _fail(_where(source), f"no splits (expected at least one of {', '.join(SPLIT_NAMES)})")
    dataset = MERDataset(splits={}, source=source)
    for name in SPLIT_NAMES:  # canonical order, whatever order the file used
        if name in raw:
            dataset.splits[name] = _build_split(source, name, raw[name], dataset.sanitised,
                                                label_keys or ("regression_labels",))
    _check_across_splits(source, dataset)
    return dataset


def _build_split(source: str, name: str, d: Any, sanitised: dict[tuple[str, str], int],
                 label_keys: tuple[str, ...] = ("regression_labels",)) -> Split:
    if not isinstance(d, dict):
        raise _fail(_where(source, name), f"expected a dict of arrays, got {type(d).__name__}")
    for key in ("id", "text", "audio", "vision"):
        if key not in d:
            raise _fail(_where(source, name, key), "missing required key")
    label_key = next((k for k in label_keys if d.get(k) is not None), None)
    if label_key is None:
        hint = ""
        if "classification_labels" in d and "classification_labels" not in label_keys:
            hint = " (the file has classification_labels: class labels need a categorical preset, e.g. --preset iemocap)"
        raise _fail(_where(source, name, " or ".join(label_keys)), "missing required key" + hint)

    labels = _numeric(source, name, label_key, d[label_key], ndim=1)
    n = labels.shape[0]
    if n == 0:
        raise _fail(_where(source, name), "empty split (0 samples)")
    labels = _finite_labels(source, name, label_key, labels)

    def rows_ok(key: str, arr: np.ndarray | list) -> None:
        if len(arr) != n:
            raise _fail(_where(source, name, key), f"{len(arr)} rows, but {label_key} has {n} (N mismatch)")

    feats: dict[str, np.ndarray] = {}
    for m in FEATURE_KEYS:
        arr = _numeric(source, name, m, d[m], ndim=3)
        rows_ok(m, arr)
        if arr.shape[1] == 0 or arr.shape[2] == 0:
            # nothing to encode: the model cannot be built (D = 0) or has no step to attend to (L = 0)
            size = "sequence length L = 0" if arr.shape[1] == 0 else "feature dim D = 0"
            raise _fail(_where(source, name, m), f"{size} in shape {arr.shape}: each modality needs L, D >= 1")
        feats[m], count = _sanitise(arr)
        if count:
            sanitised[(name, m)] = count

    text_bert = None
    if d.get("text_bert") is not None:
        text_bert = _integers(
            source, name, "text_bert", _numeric(source, name, "text_bert", d["text_bert"], 3)
        )
        rows_ok("text_bert", text_bert)
        if text_bert.shape[1] != 3:
            raise _fail(
                _where(source, name, "text_bert"),
                f"shape {text_bert.shape}, expected (N, 3, L): input ids, attention mask, segment ids",
            )

    lengths: dict[str, np.ndarray] = {}
    for m in MODALITIES:
        key = f"{m}_lengths"
        full = feats[m].shape[1]
        if d.get(key) is not None:  # `text_lengths` is our extension; MMSA has audio/vision only
            arr = _numeric(source, name, key, d[key], ndim=1)
            _integers(source, name, key, arr)  # whole numbers, checked before the range below
        elif m == "text" and text_bert is not None:
            arr = text_bert[:, 1, :].sum(axis=1)  # attention mask: 1 per real token
            key = "text_bert"  # name the key that is actually in the file
            # The mask counts tokens of text_bert's own sequence, which re-encoded transcripts make
            # longer than the file's `text` features (e.g. L 1 utterance vectors); models clamp.
            full = text_bert.shape[2]
        else:
            arr = np.full(n, full, dtype=np.int64)
        rows_ok(key, arr)
        # compared in the file's own dtype: an unsigned 2**64-1 is reported as that, not as -1
        outside = arr[(arr < 0) | (arr > full)]
        if outside.size:
            bad = outside[0].item()
            raise _fail(
                _where(source, name, key),
                f"length {int(bad) if isinstance(bad, float) else bad} outside [0, {full}] (the {key.removesuffix('_lengths')} sequence length)",
            )
        lengths[m] = arr.astype(np.int64)

    ids = _strings(source, name, "id", d["id"])
    rows_ok("id", ids)
    available = None
    if d.get("available") is not None:
        available = _availability(source, name, d["available"], lengths)
        rows_ok("available", available)
    groups, positions = _groups(source, name, d, ids, rows_ok)
    speakers = None
    if d.get("speaker") is not None:
        speakers = _strings(source, name, "speaker", d["speaker"])
        rows_ok("speaker", speakers)
    raw_text = None
    if d.get("raw_text") is not None:
        raw_text = _strings(source, name, "raw_text", d["raw_text"])
        rows_ok("raw_text", raw_text)

    present = [m for m, k in UNIMODAL_KEYS.items() if d.get(k) is not None]
    unimodal = None
    if present:
        if len(present) != 3:
            missing = next(k for m, k in UNIMODAL_KEYS.items() if m not in present)
            raise _fail(_where(source, name, missing), "missing: unimodal labels need all of _T, _A and _V")
        unimodal = {}
        for m, key in UNIMODAL_KEYS.items():
            arr = _finite_labels(source, name, key, _numeric(source, name, key, d[key], ndim=1))
            rows_ok(key, arr)
            unimodal[m] = arr

    return Split(
        name=name,
        text=feats["text"],
        audio=feats["audio"],
        vision=feats["vision"],
        text_lengths=lengths["text"],
        audio_lengths=lengths["audio"],
        vision_lengths=lengths["vision"],
        labels=labels,
        ids=ids,
        raw_text=raw_text,
        text_bert=text_bert,
        unimodal_labels=unimodal,
        available=available,
        groups=groups,
        positions=positions,
        speakers=speakers,
    )


def _availability(source: str, name: str, value: Any, lengths: dict[str, np.ndarray]) -> np.ndarray:
    """(N, 3) 0/1 -> bool; every sample keeps a modality, and an absent one has length 0 (data/missing.py)."""
    where = _where(source, name, "available")
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - ragged
        raise _fail(where, "ragged: expected an (N, 3) array") from None
    if arr.dtype.kind not in "biuf" or arr.ndim != 2 or arr.shape[1] != 3:
        raise _fail(where, f"expected an (N, 3) array of 0/1 (text, audio, vision), got {arr.dtype} {arr.shape}")
    if not np.isin(arr, (0, 1)).all():
        raise _fail(where, "expected only 0/1 (absent / present)")
    mask = arr.astype(bool)
    if len(mask) and not mask.any(axis=1).all():
        row = int(np.flatnonzero(~mask.any(axis=1))[0])
        raise _fail(where, f"row {row} has no modality (every sample needs at least one)")
    for k, m in enumerate(MODALITIES):
        if len(lengths[m]) != len(mask):
            continue  # the row count is reported by the caller
        bad = ~mask[:, k] & (lengths[m] > 0)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise _fail(where, f"row {row}: {m} is marked absent but has length {int(lengths[m][row])} "
                               "(an absent modality has length 0)")
    return mask


def groups_from_ids(ids: list[str], sep: str = ID_SEP) -> tuple[list[str], np.ndarray] | None:
    """MMSA ids `video$_$clip` -> (groups, positions): the video, and the clip's order in it (the clip id
    when every clip id is a whole number, unique in its video; else the order of the rows). None when
    some id is not of that form. `sep`: another separator a preset declares for its files' ids (the last
    one in an id splits it, so a video id may hold it too: mosi-utterance's `<video>_<segment>`)."""
    if not ids or not all(sep in i for i in ids):
        return None
    pairs = [i.rpartition(sep)[::2] for i in ids]
    groups = [g for g, _ in pairs]
    return groups, order_in_groups(groups, [c for _, c in pairs])


def order_in_groups(groups: list[str], keys: list[str]) -> np.ndarray:
    """(N,) int64 positions: each key as a number when all are whole numbers >= 0, unique in their group
    (clip or utterance numbers); otherwise the rows' order of appearance in their group."""
    if all(k.isascii() and k.isdigit() for k in keys):
        numbers = [int(k) for k in keys]
        if len(set(zip(groups, numbers))) == len(numbers):
            return np.asarray(numbers, dtype=np.int64)
    seen: dict[str, int] = {}
    out = np.empty(len(groups), dtype=np.int64)
    for i, g in enumerate(groups):
        out[i] = seen.get(g, 0)
        seen[g] = out[i] + 1
    return out


def _groups(source: str, name: str, d: dict, ids: list[str], rows_ok) -> tuple[list[str] | None, np.ndarray | None]:
    """The split's `group` / `position` keys, checked; else derived from MMSA ids; else (None, None)."""
    has = [k for k in ("group", "position") if d.get(k) is not None]
    if not has:
        derived = groups_from_ids(ids)
        return (None, None) if derived is None else derived
    if len(has) == 1:
        other = "position" if has[0] == "group" else "group"
        raise _fail(_where(source, name, other), f"missing: {has[0]} needs {other} beside it")
    groups = _strings(source, name, "group", d["group"])
    rows_ok("group", groups)
    positions = _integers(source, name, "position", _numeric(source, name, "position", d["position"], ndim=1))
    rows_ok("position", positions)
    if (positions < 0).any():
        row = int(np.flatnonzero(positions < 0)[0])
        raise _fail(_where(source, name, "position"), f"row {row}: position {int(positions[row])} < 0")
    seen: dict[tuple[str, int], int] = {}
    for i, key in enumerate(zip(groups, positions.tolist())):
        if key in seen:
            raise _fail(_where(source, name, "position"),
                        f"rows {seen[key]} and {i} are both position {key[1]} of group {key[0]!r}")
        seen[key] = i
    return groups, positions


def _check_across_splits(source: str, dataset: MERDataset) -> None:
    splits = list(dataset.splits.values())
    first = splits[0]
    for s in splits[1:]:
        for m in MODALITIES:
            a, b = first.features(m).shape[2], s.features(m).shape[2]
            if a != b:
                raise _fail(_where(source, s.name, m), f"feature dim {b}, but split {first.name} has {a}")
        if (first.unimodal_labels is None) != (s.unimodal_labels is None):
            has, lacks = (first, s) if s.unimodal_labels is None else (s, first)
            raise _fail(
                _where(source, lacks.name, "regression_labels_T"),
                f"missing: split {has.name} has unimodal labels; they must be in all splits or none",
            )
        if (first.text_bert is None) != (s.text_bert is None):
            lacks = s if s.text_bert is None else first
            raise _fail(_where(source, lacks.name, "text_bert"), "missing: present in some splits only")


def _numeric(source: str, split: str, key: str, value: Any, ndim: int) -> np.ndarray:
    # the message's "where" is built only for a refusal (this runs for every array of every upload)
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - ragged nested lists raise ValueError in numpy 2
        raise _fail(
            _where(source, split, key), "ragged: rows of different shapes, expected one array (pad sequences to one L)"
        ) from None
    if arr.dtype.kind not in "biuf":
        raise _fail(_where(source, split, key),
                    f"expected a numeric array, got dtype {arr.dtype} (non-numeric or ragged)")
    if ndim == 1 and arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]  # (N, 1) labels / lengths, as some MMSA-style exporters write them
    if arr.ndim != ndim:
        expected = {1: "(N,)", 3: "(N, L, D)"}[ndim]
        raise _fail(_where(source, split, key), f"expected {ndim}-d array {expected}, got shape {arr.shape}")
    return arr


def _integers(source: str, split: str, key: str, arr: np.ndarray) -> np.ndarray:
    """Integer-valued arrays (MMSA sometimes stores lengths / token ids as floats) -> int64."""
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        raise _fail(_where(source, split, key), "expected integer values, found fractional / non-finite ones")
    return arr.astype(np.int64)


def _finite_labels(source: str, split: str, key: str, arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _fail(
            _where(source, split, key), f"{int(bad.sum())} NaN/inf label(s), first at row {i} ({arr[i]})"
        )
    return arr


def _sanitise(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """float32 copy-on-need with -inf/inf/NaN -> 0 (what the CMC authors' code does to MMSA audio)."""
    with np.errstate(over="ignore"):  # float64 beyond float32 range turns into inf: counted below
        out = np.asarray(arr, dtype=np.float32)
    bad = ~np.isfinite(out)
    count = int(bad.sum())
    if count:
        out = out.copy() if np.may_share_memory(out, arr) else out  # never write into the caller's array
        out[bad] = 0.0
    return out, count


def _strings(source: str, split: str, key: str, value: Any) -> list[str]:
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise _fail(_where(source, split, key), f"expected a list of N str, got shape {value.shape}")
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise _fail(_where(source, split, key), f"expected a list of N str, got {type(value).__name__}")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bytes):
            v = v.decode("utf-8", errors="replace")
        if not isinstance(v, str):
            raise _fail(_where(source, split, key), f"expected str, row {i} is {type(v).__name__}")
        out.append(str(v))  # np.str_ -> str
    return out


# ------------------------------------------------------------------------------------------ writing


def dataset_to_raw(dataset: MERDataset) -> dict[str, dict[str, Any]]:
    """The MMSA dict layout of a dataset (arrays are shared, not copied).

    `text_lengths` is written only when it differs from what a reader would derive (the text_bert
    mask, else the full length), so files stay MMSA-shaped while every dataset round-trips.
    """
    raw: dict[str, dict[str, Any]] = {}
    for name, s in dataset.splits.items():
        d: dict[str, Any] = {"id": list(s.ids)}
        if s.raw_text is not None:
            d["raw_text"] = list(s.raw_text)
        d.update(text=s.text, audio=s.audio, vision=s.vision)
        if s.text_bert is not None:
            d["text_bert"] = s.text_bert
        derived = (
            s.text_bert[:, 1, :].sum(axis=1) if s.text_bert is not None else np.full(len(s), s.text.shape[1])
        )
        if not np.array_equal(derived, s.text_lengths):
            d["text_lengths"] = s.text_lengths
        d.update(audio_lengths=s.audio_lengths, vision_lengths=s.vision_lengths, regression_labels=s.labels)
        if s.unimodal_labels is not None:
            for m, key in UNIMODAL_KEYS.items():
                d[key] = s.unimodal_labels[m]
        if s.available is not None:
            d["available"] = np.asarray(s.available, dtype=bool)
        if s.groups is not None and s.positions is not None:
            # written only when the ids do not already say it (MMSA `video$_$clip` ids are read back alike)
            derived = groups_from_ids(list(s.ids))
            if derived is None or derived[0] != list(s.groups) or not np.array_equal(derived[1], s.positions):
                d["group"] = list(s.groups)
                d["position"] = np.asarray(s.positions, dtype=np.int64)
        if s.speakers is not None:
            d["speaker"] = list(s.speakers)
        raw[name] = d
    return raw


def write_pickle(raw: dict, path: str | os.PathLike) -> None:
    """Atomically write a raw MMSA dict as a pickle (the layout the CMC authors' code reads)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(raw, f, protocol=4)
        f.flush()
        os.fsync(f.fileno())


