"""The affectus .npz form of a dataset: what `affectus convert` writes and every door reads back without
pickle (`numpy.load(..., allow_pickle=False)`).

Arrays are named `<split>.<key>` with MMSA key names; strings are fixed-width unicode arrays; a JSON
`__meta__` says the format, its version, which keys each split has and how many non-finite values were
replaced on the way in. Members are written stored (not compressed), and a file whose members declare far
more bytes than it holds is refused before any is read. Validation into a `MERDataset` is `data/mmsa.py`'s.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np

from affectus.data.mmsa import _ZIP_MAGIC, _fail, _validated, _where, dataset_to_raw
from affectus.data.presets import Preset
from affectus.data.types import MERDataset
from affectus.errors import AffectusError
from affectus.utils.io import atomic_path

NPZ_FORMAT = "affectus-npz"
# Version 2 adds per-sample keys a version-1 reader would silently drop (`available`, `group`,
# `position`, `speaker`), so a file holding any of them says 2 and older affectus refuses it instead of misreading
# it; a file without them is still written as version 1. Both are read.
# Version 3 adds `scheme` in `__meta__` (what the labels mean: extract-dataset's emotion classes); a
# version-2 reader would ignore it and read class indices as sentiment scores, so such a file says 3.
NPZ_VERSION = 3
NPZ_READABLE = (1, 2, 3)
V2_KEYS = ("available", "group", "position", "speaker")


def check_unpacked_size(path: str) -> None:
    """A .npz is a zip: members may be compressed (numpy reads deflate too), so a small file could
    unpack to many GB. affectus writes its members stored, as they are; what the members declare may not
    exceed the file's size by more than SHARED_FLOOR (zipfile never reads past a declared size)."""
    from affectus.data.safe_pickle import SHARED_FLOOR

    size = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return  # not a readable zip: read_npz says so in its own line
    if declared > size + SHARED_FLOOR:
        raise _fail(_where(path), f"its members unpack to {declared} bytes from a {size}-byte file (more than the "
                                  f"file plus {SHARED_FLOOR // 2**20} MiB): not an .npz affectus convert writes")


Layout = tuple[dict[str, dict[str, Any]], dict[tuple[str, str], int], "dict[str, Any] | None"]


def read_npz(path: str, file: Any = None) -> Layout:
    """Our .npz back into the MMSA dict layout, plus the sanitised counts recorded at conversion and the
    label scheme the file records (None when it records none).

    `file`: an open binary file to read instead of `path` (which then only names it in messages)."""
    try:
        with np.load(path if file is None else file, allow_pickle=False) as z:
            return _raw_layout(z, z.files, path)
    except AffectusError:
        raise
    except Exception as err:  # noqa: BLE001 - bad zip, truncated member, bad JSON, ...
        hint = "truncated or corrupt? " if isinstance(err, (zipfile.BadZipFile, EOFError)) else ""
        raise _fail(
            _where(path), f"not a readable affectus .npz ({hint}{type(err).__name__}: {err})"
        ) from None


def _raw_layout(z: Any, names: Any, path: str) -> Layout:
    """The MMSA dict layout from `z[name]` (an open np.load, or a dict of arrays already read)."""
    if "__meta__" not in names:
        raise _fail(_where(path), "a .npz without __meta__: not written by affectus convert")
    meta = _check_meta(path, z["__meta__"])
    raw: dict[str, dict[str, Any]] = {}
    for split, keys in meta["keys"].items():
        raw[split] = {}
        for key in keys:
            try:
                raw[split][key] = z[f"{split}.{key}"]
            except (KeyError, ValueError) as err:
                raise _fail(_where(path, split, key), f"unreadable array ({err})") from None
    sanitised = {tuple(k.split("/", 1)): int(v) for k, v in meta.get("sanitised", {}).items()}
    return raw, sanitised, meta.get("scheme")  # type: ignore[return-value]


def _check_meta(path: str, value: np.ndarray) -> dict[str, Any]:
    """The JSON `__meta__` of an affectus .npz: {format, version, keys: {split: [key]}, sanitised}."""

    def bad(what: str) -> AffectusError:
        return _fail(_where(path, key="__meta__"), f"malformed: {what}")

    if value.dtype.kind != "U" or value.ndim != 0:
        raise bad(f"expected one JSON string, got a {value.dtype} array of shape {value.shape}")
    try:
        meta = json.loads(value.item())  # the 0-d array's str (str() would go through numpy's printing)
    except json.JSONDecodeError as err:
        raise bad(f"not valid JSON ({err.msg})") from None
    except RecursionError:  # json's decoder recurses per nesting level
        raise bad("not valid JSON (nested too deeply)") from None
    if not isinstance(meta, dict):
        raise bad(f"expected a JSON object, got {type(meta).__name__}")
    version = meta.get("version")
    if meta.get("format") != NPZ_FORMAT or isinstance(version, bool) or version not in NPZ_READABLE:
        raise _fail(
            _where(path),
            f"unsupported npz format {meta.get('format')!r} version {version!r} "
            f"(expected {NPZ_FORMAT!r} version {' or '.join(map(str, NPZ_READABLE))})",
        )
    keys = meta.get("keys")
    if not isinstance(keys, dict) or not all(
        isinstance(v, list) and all(isinstance(k, str) for k in v) for v in keys.values()
    ):
        raise bad("'keys' must map each split to a list of key names")
    if version == 1 and any(k in V2_KEYS for v in keys.values() for k in v):
        raise bad(f"version 1 cannot hold {', '.join(V2_KEYS)} (a version 2 key)")
    sanitised = meta.get("sanitised", {})
    if not isinstance(sanitised, dict) or not all(
        isinstance(k, str) and k.count("/") == 1 and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in sanitised.items()
    ):
        raise bad("'sanitised' must map 'split/key' to a count")
    if meta.get("scheme") is not None and version < 3:
        raise bad(f"version {version} cannot record a scheme (a version 3 key)")
    if meta.get("scheme") is not None:
        # the labels' meaning (extract-dataset --labels annotation records its classes): a spec get_scheme
        # rebuilds; anything else is refused rather than read as the wrong scheme
        from affectus.data.schemes import get_scheme

        spec = meta["scheme"]
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise bad("'scheme' must be an object with a name (e.g. {\"name\": \"categorical\", \"classes\": [...]})")
        try:
            get_scheme(spec)
        except AffectusError as err:
            raise bad(f"'scheme': {err}") from None
    return meta


def load_npz_bytes(data: bytes, source: str, preset: str | Preset | None = None) -> MERDataset:
    """An affectus .npz held in memory (an upload), read and validated as `load_dataset` reads a file;
    `source` names it in messages. Check untrusted bytes with `data.npz_check.check_npz` first: this
    reads every array the file lists."""
    import io

    if data[:4] not in _ZIP_MAGIC:
        raise _fail(_where(source), "not a readable affectus .npz (not a zip)")
    raw, prior, scheme = read_npz(source, io.BytesIO(data))
    return _validated(raw, prior, source, preset, scheme)


def load_npz_arrays(arrays: dict[str, np.ndarray], source: str, preset: str | Preset | None = None) -> MERDataset:
    """An affectus .npz whose members were already read and checked (`data.npz_check.read_checked_npz`,
    an upload), validated as `load_dataset` validates a file; `source` names it in messages."""
    raw, prior, scheme = _raw_layout(arrays, arrays, source)
    return _validated(raw, prior, source, preset, scheme)


def write_npz(dataset: MERDataset, path: str | os.PathLike) -> None:
    """Atomically write the pickle-free form: numeric arrays + unicode arrays + a JSON `__meta__`.

    Array names are `<split>.<key>` with MMSA key names; `__meta__` lists which keys each split has,
    so optional keys (text_bert, raw_text, unimodal labels) come back exactly as they were, and the
    dataset's recorded label scheme when it has one (`MERDataset.scheme`).
    """
    arrays: dict[str, np.ndarray] = {}
    keys: dict[str, list[str]] = {}
    for split, d in dataset_to_raw(dataset).items():
        keys[split] = []
        for key, value in d.items():
            if key in ("id", "raw_text", "group", "speaker"):
                value = np.array(value, dtype=np.str_)  # fixed-width unicode: loads without pickle
            arrays[f"{split}.{key}"] = np.ascontiguousarray(value)
            keys[split].append(key)
    meta = {
        "format": NPZ_FORMAT,
        # the lowest version that holds what the file has, so older readers still read the rest
        "version": 3 if dataset.scheme is not None else 2 if any(k in V2_KEYS for v in keys.values() for k in v) else 1,
        "keys": keys,
        "source": dataset.source,
        "sanitised": {f"{s}/{k}": n for (s, k), n in dataset.sanitised.items()},
    }
    if dataset.scheme is not None:  # left out otherwise: files without one stay byte-identical to before
        meta["scheme"] = dataset.scheme
    arrays["__meta__"] = np.array(json.dumps(meta, sort_keys=True))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
