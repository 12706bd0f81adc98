"""The one way every door (CLI, Python API, experiment runner, sweep, report) opens a data source.

A source is a file (MMSA pickle or affectus .npz, told apart by magic bytes) or `synth:NAME`, the
conflict simulator's data with a preset's shapes, generated in memory. `synth:NAME?scale=0.1&seq_scale=0.25`
scales it as `affectus synth --scale/--seq-scale` do (options: `SYNTH_OPTIONS`). The preset comes back with
the data: for `synth:NAME` it is NAME's, unless a preset was given.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from affectus.data.mmsa import load_dataset, sha256_file
from affectus.data.presets import Preset, load_preset
from affectus.data.types import MERDataset
from affectus.errors import AffectusError, suggest

SYNTH_PREFIX = "synth:"
DEFAULT_SYNTH = "mosi"
# `synth:NAME?key=value&...`: the options `affectus synth` has, under generate_dataset's names.
# key -> (parse, is the value allowed, what a value must be, the default: left out of the identity)
SYNTH_OPTIONS: dict[str, tuple[type, Any, str, Any]] = {
    "scale": (float, lambda v: math.isfinite(v) and v > 0, "a number > 0", 1.0),
    "seq_scale": (float, lambda v: math.isfinite(v) and v > 0, "a number > 0", 1.0),
    "seed": (int, lambda v: v >= 0, "an integer >= 0", 1111),
    "inconsistency": (float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]", None),
}


def is_synth(source: str | os.PathLike) -> bool:
    return str(source).startswith(SYNTH_PREFIX)


def parse_synth(source: str) -> tuple[str, dict[str, Any]]:
    """'synth:iemocap?scale=0.1&seq_scale=0.25' -> ('iemocap', {'scale': 0.1, 'seq_scale': 0.25}).

    Strict: an unknown or repeated key, a missing or bad value ends in one AffectusError naming the source.
    The name may be empty ('synth:?scale=0.5': the preset's, or mosi)."""
    from urllib.parse import parse_qsl

    name, sep, query = source[len(SYNTH_PREFIX):].partition("?")

    def bad(msg: str) -> AffectusError:
        return AffectusError(f"data source {source!r}: {msg}")

    if sep and not query:
        raise bad(f"nothing after '?': expected key=value pairs joined by '&' ({', '.join(SYNTH_OPTIONS)})")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    except ValueError:
        raise bad("expected key=value pairs joined by '&', e.g. synth:iemocap?scale=0.1&seq_scale=0.25") from None
    options: dict[str, Any] = {}
    for key, text in pairs:
        if key not in SYNTH_OPTIONS:
            raise bad(f"unknown option {key!r}{suggest(key, SYNTH_OPTIONS)} (expected {', '.join(SYNTH_OPTIONS)})")
        if key in options:
            raise bad(f"option {key!r} given twice")
        kind, ok, want, _ = SYNTH_OPTIONS[key]
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise bad(f"{key}={text!r}: expected {want}")
        options[key] = value
    return name, options


def synth_identity(source: str) -> str:
    """The canonical spelling of a `synth:` source: options in `SYNTH_OPTIONS` order, numbers as Python
    writes them, defaults left out ('synth:iemocap?seq_scale=0.250&scale=1' -> 'synth:iemocap?seq_scale=0.25').
    Two spellings of the same generated data are one identity, so an experiment resumes under either."""
    name, options = parse_synth(source)
    kept = [f"{k}={options[k]!r}" for k in SYNTH_OPTIONS if k in options and options[k] != SYNTH_OPTIONS[k][3]]
    return SYNTH_PREFIX + name + ("?" + "&".join(kept) if kept else "")


def source_id(source: str | os.PathLike) -> str:
    """How a source is recorded in a run: `synth:NAME[?options]` canonically spelled, a file by its
    absolute path."""
    text = str(source)
    return synth_identity(text) if is_synth(text) else os.path.abspath(text)


# (absolute path, size, mtime_ns, inode) -> sha256: an experiment's runs hash a multi-GB file once
_SHA256_CACHE: dict[tuple[str, int, int, int], str] = {}


def data_identity(source: str | os.PathLike) -> dict[str, Any]:
    """What identifies a run's data: `{"source": as given, "sha256": hex digest of the file}`.

    `synth:NAME[?options]` data is generated from its name and options alone, so their canonical spelling
    is its identity (sha256 None); a source that is no file (e.g. data built in memory) is its own. A file
    edited in place gets a new digest."""
    text = str(source)
    if is_synth(text):
        return {"source": synth_identity(text), "sha256": None}
    if not os.path.isfile(text):
        return {"source": text, "sha256": None}
    st = os.stat(text)
    key = (os.path.abspath(text), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _SHA256_CACHE:
        _SHA256_CACHE[key] = sha256_file(text)
    return {"source": text, "sha256": _SHA256_CACHE[key]}


def open_data(
    source: str | os.PathLike, preset: str | Preset | None = None, *, trust_pickle: bool = False
) -> tuple[MERDataset, Preset | None]:
    """Load `source` (file or `synth:NAME[?options]`) and return it with its preset (None for a file without one).

    A file is checked against the preset's feature dims when one is given. `trust_pickle=True` reads a
    pickle with Python's own unpickler, which runs any code the file holds (a warning names the file).
    """
    p = load_preset(preset) if isinstance(preset, str) else preset
    text = str(source)
    if is_synth(text):
        from affectus.data.synthetic import generate_dataset

        name, options = parse_synth(text)
        name = name or (p.name if p is not None else DEFAULT_SYNTH)
        return generate_dataset(name, source=synth_identity(text), **options), p or load_preset(name)
    _refuse_clip_inputs(text)
    return load_dataset(text, preset=p, trust_pickle=trust_pickle), p


def _refuse_clip_inputs(text: str) -> None:
    """A folder of clips or its label.csv given where features belong: say which command makes them.

    Both are what `affectus extract-dataset` reads; without this hint the reader only says "not a file"
    or "not a readable MMSA pickle", which leaves the user guessing."""
    path = Path(text)
    make = "make a features file first: affectus extract-dataset {dir} --out FEATURES.npz, then pass --data FEATURES.npz"
    if path.is_dir():
        what = "a folder of clips (it holds label.csv)" if (path / "label.csv").is_file() else "a folder, not a file"
        raise AffectusError(f"file {text}: {what}; expected an MMSA pickle or an affectus .npz; "
                            + make.format(dir=text))
    if path.suffix.lower() == ".csv" and path.is_file():
        raise AffectusError(f"file {text}: a clip list (label.csv), not features; expected an MMSA pickle or an "
                            f"affectus .npz; " + make.format(dir=path.parent))


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
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("extractors"), dict):
        return None
    return {"extractors": data["extractors"], "text_features": data.get("text_features")}
