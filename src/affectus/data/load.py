"""The one way every door (CLI, Python API, experiment runner, sweep, report) opens a data source.

A source is a file (MMSA pickle or affectus .npz, told apart by magic bytes) or `synth:NAME`, the
conflict simulator's data with a preset's shapes, generated in memory. The preset comes back with the
data: for `synth:NAME` it is NAME's, unless a preset was given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from affectus.data.mmsa import load_dataset, sha256_file
from affectus.data.presets import Preset, load_preset
from affectus.data.types import MERDataset

SYNTH_PREFIX = "synth:"
DEFAULT_SYNTH = "mosi"


def is_synth(source: str | os.PathLike) -> bool:
    return str(source).startswith(SYNTH_PREFIX)


def source_id(source: str | os.PathLike) -> str:
    """How a source is recorded in a run: `synth:NAME` as given, a file by its absolute path."""
    text = str(source)
    return text if is_synth(text) else os.path.abspath(text)


# (absolute path, size, mtime_ns, inode) -> sha256: an experiment's runs hash a multi-GB file once
_SHA256_CACHE: dict[tuple[str, int, int, int], str] = {}


def data_identity(source: str | os.PathLike) -> dict[str, Any]:
    """What identifies a run's data: `{"source": as given, "sha256": hex digest of the file}`.

    `synth:NAME` data is generated from its name alone, so the name is its identity (sha256 None); so is
    a source that is no file (e.g. data built in memory). A file edited in place gets a new digest."""
    text = str(source)
    if is_synth(text) or not os.path.isfile(text):
        return {"source": text, "sha256": None}
    st = os.stat(text)
    key = (os.path.abspath(text), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _SHA256_CACHE:
        _SHA256_CACHE[key] = sha256_file(text)
    return {"source": text, "sha256": _SHA256_CACHE[key]}


def open_data(
    source: str | os.PathLike, preset: str | Preset | None = None, *, trust_pickle: bool = False
) -> tuple[MERDataset, Preset | None]:
    """Load `source` (file or `synth:NAME`) and return it with its preset (None for a file without one).

    A file is checked against the preset's feature dims when one is given. `trust_pickle=True` reads a
    pickle with Python's own unpickler, which runs any code the file holds (a warning names the file).
    """
    p = load_preset(preset) if isinstance(preset, str) else preset
    text = str(source)
    if is_synth(text):
        from affectus.data.synthetic import generate_dataset

        name = text[len(SYNTH_PREFIX) :] or (p.name if p is not None else DEFAULT_SYNTH)
        return generate_dataset(name), p or load_preset(name)
    return load_dataset(text, preset=p, trust_pickle=trust_pickle), p


def extraction_record(source: str | os.PathLike) -> dict[str, Any] | None:
    """The extractors that made a features file, from `FILE.extract.json` beside it (`affectus
    extract-dataset` writes it): {"extractors": ..., "text_features": ...}, or None for other files.

    A run records it, so `affectus predict RUN clip.mp4` extracts a new clip the same way."""
    text = str(source)
    if is_synth(text):
        return None
    meta = Path(text + ".extract.json") if not text.endswith(".extract.json") else Path(text)
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("extractors"), dict):
        return None
    return {"extractors": data["extractors"], "text_features": data.get("text_features")}
