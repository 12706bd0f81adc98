"""The one way every door (CLI, Python API, experiment runner, sweep, report) opens a data source.

A source is a file (MMSA pickle or affectus .npz, told apart by magic bytes) or `synth:NAME`, the
conflict simulator's data with a preset's shapes, generated in memory. The preset comes back with the
data: for `synth:NAME` it is NAME's, unless a preset was given.
"""

from __future__ import annotations

import os

from affectus.data.mmsa import load_dataset
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
