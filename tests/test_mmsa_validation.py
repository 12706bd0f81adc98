"""Every kind of bad feature file ends in exactly one `error: ...` line on stderr and exit code 2.

Each case runs through the real CLI entry point (`affectus.cli.main`), so the message a user sees is
what is checked: it must name the file, and the split and key where there is one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from affectus.data.mmsa import dataset_from_raw, write_pickle
from affectus.data.npz import write_npz

# A case gets (make_raw, tmp_path) and returns (file to inspect, extra CLI args, fragments the message must hold).
Case = Callable[[Callable[..., dict], Path], tuple[Path, list[str], list[str]]]


def _pickle(tmp_path: Path, raw: Any, name: str = "bad.pkl") -> Path:
    path = tmp_path / name
    write_pickle(raw, path)
    return path


def _edit(split: str, key: str, fn: Callable[[Any], Any], name: str = "bad.pkl") -> Case:
    """A case that builds a valid raw dict, replaces raw[split][key] by fn(old) (None deletes it)."""

    def case(make_raw, tmp_path):
        raw = make_raw()
        new = fn(raw[split].get(key))
        if new is None:
            del raw[split][key]
        else:
            raw[split][key] = new
        return _pickle(tmp_path, raw, name), [], [f"split {split}", f"key {key}"]

    return case


def truncated(make_raw, tmp_path):
    path = _pickle(tmp_path, make_raw())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, [], ["truncated"]


def random_bytes(make_raw, tmp_path):
    path = tmp_path / "noise.pkl"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path, [], ["not a readable MMSA pickle"]


def text_file(make_raw, tmp_path):
    path = tmp_path / "notes.pkl"
    path.write_text("id,text,label\n1,hello,0.5\n")
    return path, [], ["not a readable MMSA pickle"]


def empty_file(make_raw, tmp_path):
    path = tmp_path / "empty.pkl"
    path.write_bytes(b"")
    return path, [], ["empty file"]


def missing_file(make_raw, tmp_path):
    return tmp_path / "absent.pkl", [], ["no such file"]


def a_directory(make_raw, tmp_path):
    (tmp_path / "dir.pkl").mkdir()
    return tmp_path / "dir.pkl", [], ["not a file"]


def empty_dict(make_raw, tmp_path):
    return _pickle(tmp_path, {}), [], ["no splits"]


def not_a_dict(make_raw, tmp_path):
    return _pickle(tmp_path, [1, 2, 3]), [], ["expected a dict of splits"]


def unknown_split(make_raw, tmp_path):
    raw = make_raw()
    raw["dev"] = raw.pop("valid")
    return _pickle(tmp_path, raw), [], ["'dev' is not a split"]


def split_not_a_dict(make_raw, tmp_path):
    raw = make_raw()
    raw["test"] = np.zeros(3)
    return _pickle(tmp_path, raw), [], ["split test", "expected a dict of arrays"]


def empty_split(make_raw, tmp_path):
    return _pickle(tmp_path, make_raw(sizes={"train": 5, "test": 0})), [], ["split test", "empty split"]


def ragged(make_raw, tmp_path):
    raw = make_raw()
    raw["train"]["audio"] = [np.zeros((3, 4)), np.zeros((5, 4))] + [np.zeros((7, 4))] * 10
    return _pickle(tmp_path, raw), [], ["split train", "key audio", "ragged"]


def preset_dim(make_raw, tmp_path):
    path = _pickle(tmp_path, make_raw(dims={"text": 768, "audio": 20, "vision": 20}))
    return path, ["--preset", "mosi"], ["split train", "key audio", "feature dim 20, preset mosi expects 5"]


def dim_between_splits(make_raw, tmp_path):
    raw = make_raw()
    raw["test"]["vision"] = raw["test"]["vision"][:, :, :3]
    return _pickle(tmp_path, raw), [], ["split test", "key vision", "feature dim 3, but split train has 5"]


def unimodal_some_splits(make_raw, tmp_path):
    raw = make_raw(unimodal=True)
    for k in ("regression_labels_T", "regression_labels_A", "regression_labels_V"):
        del raw["valid"][k]
    return _pickle(tmp_path, raw), [], ["split valid", "all splits or none"]


def unknown_preset(make_raw, tmp_path):
    return _pickle(tmp_path, make_raw()), ["--preset", "nope"], ["unknown preset 'nope'", "mosi-utterance"]


def npz_truncated(make_raw, tmp_path):
    path = tmp_path / "d.npz"
    write_npz(dataset_from_raw(make_raw()), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, [], ["not a readable affectus .npz"]


def npz_foreign(make_raw, tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, train_text=np.zeros((2, 1, 3)))
    return path, [], ["without __meta__"]


def npy_file(make_raw, tmp_path):
    path = tmp_path / "arr.npy"
    np.save(path, np.zeros(3))
    return path, [], ["single .npy array"]


def npz_meta(meta) -> Case:
    """A valid .npz whose `__meta__` is replaced by `meta` (a JSON string, or any array)."""

    def case(make_raw, tmp_path):
        path = tmp_path / "meta.npz"
        write_npz(dataset_from_raw(make_raw()), path)
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["__meta__"] = np.asarray(meta(arrays["__meta__"]))
        np.savez(path, **arrays)
        return path, [], ["key __meta__", "malformed"]

    return case


def _meta_edit(**changes):
    import json

    return lambda old: json.dumps({**json.loads(str(old)), **changes})


def _float(value):
    return lambda old: np.asarray(old, dtype=np.float32).copy() if value is None else value(old)


def _set(arr, index, value):
    arr = np.array(arr, dtype=np.float32 if arr.dtype.kind == "f" else arr.dtype)
    arr[index] = value
    return arr


CASES: dict[str, Case] = {
    "truncated": truncated,
    "random-bytes": random_bytes,
    "text-file": text_file,
    "empty-file": empty_file,
    "missing-file": missing_file,
    "directory": a_directory,
    "empty-dict": empty_dict,
    "not-a-dict": not_a_dict,
    "unknown-split": unknown_split,
    "split-not-a-dict": split_not_a_dict,
    "empty-split": empty_split,
    "missing-key": _edit("train", "audio", lambda old: None),
    "missing-labels": _edit("valid", "regression_labels", lambda old: None),
    "missing-id": _edit("test", "id", lambda old: None),
    "n-mismatch": _edit("valid", "audio", lambda old: old[:-1]),
    "n-mismatch-ids": _edit("train", "id", lambda old: old[:-2]),
    "ragged": ragged,
    "wrong-ndim": _edit("train", "vision", lambda old: old[:, 0, :]),
    "wrong-ndim-labels": _edit("test", "regression_labels", lambda old: np.stack([old, old], 1)),
    "non-numeric-str": _edit("valid", "vision", lambda old: old.astype(str)),
    "non-numeric-object": _edit("train", "text", lambda old: np.array([{"a": 1}] * len(old), dtype=object)),
    "ids-not-str": _edit("train", "id", lambda old: list(range(len(old)))),
    "nan-label": _edit("train", "regression_labels", lambda old: _set(old, 3, np.nan)),
    "inf-label": _edit("test", "regression_labels", lambda old: _set(old, 0, np.inf)),
    "length-too-long": _edit("train", "audio_lengths", lambda old: _set(old, 0, 999)),
    "length-negative": _edit("valid", "vision_lengths", lambda old: _set(old, 1, -1)),
    "length-fractional": _edit("train", "audio_lengths", lambda old: old + 0.5),
    "length-unsigned-huge": _edit("train", "audio_lengths", lambda old: np.full(len(old), 2**64 - 1, np.uint64)),
    "seq-len-zero": _edit("valid", "audio", lambda old: np.zeros((len(old), 0, old.shape[2]), np.float32)),
    "dim-zero": _edit("train", "vision", lambda old: np.zeros((len(old), old.shape[1], 0), np.float32)),
    "npz-meta-list": npz_meta(lambda old: "[1, 2]"),
    "npz-meta-not-json": npz_meta(lambda old: "{format"),
    "npz-meta-number-array": npz_meta(lambda old: np.zeros(3)),
    "npz-meta-keys": npz_meta(_meta_edit(keys={"train": "text"})),
    "npz-meta-sanitised": npz_meta(_meta_edit(sanitised={"train-text": 3})),
    "text-bert-shape": _edit("train", "text_bert", lambda old: np.zeros((12, 2, 5))),
    "unimodal-partial": _edit("train", "regression_labels_A", lambda old: None),
    "dim-between-splits": dim_between_splits,
    "unimodal-some-splits": unimodal_some_splits,
    "preset-dim": preset_dim,
    "unknown-preset": unknown_preset,
    "npz-truncated": npz_truncated,
    "npz-foreign": npz_foreign,
    "npy-file": npy_file,
}

EXPECTED_WORDS = {  # what the message must say beyond file / split / key
    "missing-key": "missing required key",
    "n-mismatch": "N mismatch",
    "n-mismatch-ids": "N mismatch",
    "wrong-ndim": "expected 3-d array",
    "wrong-ndim-labels": "expected 1-d array (N,), got shape (6, 2)",
    "non-numeric-str": "non-numeric",
    "non-numeric-object": "non-numeric",
    "ids-not-str": "expected str",
    "nan-label": "NaN",
    "inf-label": "NaN/inf",
    "length-too-long": "length 999 outside [0, 7]",
    "length-negative": "length -1 outside",
    "length-fractional": "integer values",
    "length-unsigned-huge": "length 18446744073709551615 outside [0, 7]",  # as stored, not wrapped to -1
    "seq-len-zero": "sequence length L = 0",
    "dim-zero": "feature dim D = 0",
    "npz-meta-list": "expected a JSON object",
    "npz-meta-not-json": "not valid JSON",
    "npz-meta-number-array": "expected one JSON string",
    "npz-meta-keys": "'keys'",
    "npz-meta-sanitised": "'sanitised'",
    "text-bert-shape": "expected (N, 3, L)",
    "unimodal-partial": "need all of _T, _A and _V",
}


def _check_one_line_error(rc: int, out: str, err: str, path: Path, fragments: list[str]) -> None:
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err and "Traceback" not in out
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    if "unknown preset" not in lines[0]:
        assert f"file {path}" in lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_inspect_rejects(name, make_raw, tmp_path, cli):
    raw_factory = make_raw
    if name in ("text-bert-shape",):
        raw_factory = lambda **kw: make_raw(text_bert=True, **kw)
    if name in ("unimodal-partial",):
        raw_factory = lambda **kw: make_raw(unimodal=True, **kw)
    path, extra, fragments = CASES[name](raw_factory, tmp_path)
    fragments = fragments + ([EXPECTED_WORDS[name]] if name in EXPECTED_WORDS else [])
    rc, out, err = cli("inspect", path, *extra)
    _check_one_line_error(rc, out, err, path, fragments)


@pytest.mark.parametrize("name", ["truncated", "missing-key", "nan-label", "preset-dim"])
def test_convert_rejects_and_writes_nothing(name, make_raw, tmp_path, cli):
    path, extra, fragments = CASES[name](make_raw, tmp_path)
    out_path = tmp_path / "out.npz"
    rc, out, err = cli("convert", path, "--out", out_path, *extra)
    _check_one_line_error(rc, out, err, path, fragments)
    assert not out_path.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_convert_refuses_to_overwrite_its_input(make_raw, tmp_path, cli):
    path = _pickle(tmp_path, make_raw())
    rc, out, err = cli("convert", path, "--out", path)
    _check_one_line_error(rc, out, err, path, ["--out is the input file"])
