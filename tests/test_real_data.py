"""The shared real set (CMU-MOSI utterance features): the reader, the preset and `inspect --json` agree with its README."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from affectus.data.mmsa import load_dataset
from affectus.data.npz import write_npz
from affectus.data.presets import load_preset

REAL = Path("/work/shared/data/mosi-utterance/mosi_utterance_trainval.pkl")
SHA256 = "4c073414b6e6d6870e8c04841430bc590ca0dfd94a31ca66a1a3eee13696c6be"  # from its README

pytestmark = pytest.mark.skipif(not REAL.is_file(), reason="shared real data set not present")


def test_load_with_preset():
    ds = load_dataset(REAL, "mosi-utterance")
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 1447, "valid": 369}
    assert ds.dims == {"text": 100, "audio": 73, "vision": 100}
    assert ds.seq_lens == {"text": 1, "audio": 1, "vision": 1}
    assert not ds.has_unimodal_labels and ds["train"].text_bert is None
    assert ds["train"].raw_text is not None and ds["train"].ids[0].count("_") >= 1
    assert float(ds["train"].labels.min()) >= -3.0 and float(ds["train"].labels.max()) <= 3.0
    preset = load_preset("mosi-utterance")
    preset.check(ds)
    assert preset.notes(ds) == []


def test_inspect_json(cli):
    rc, out, err = cli("inspect", REAL, "--json", "--preset", "mosi-utterance")
    assert rc == 0, err
    info = json.loads(out)
    assert info["sha256"] == SHA256 and info["format"] == "pickle"
    assert info["splits"]["train"]["n"] == 1447 and info["splits"]["valid"]["n"] == 369
    assert info["dims"] == {"text": 100, "audio": 73, "vision": 100}
    assert info["splits"]["valid"]["dims"] == info["dims"]
    labels = info["splits"]["train"]["labels"]
    assert labels["negative"] + labels["zero"] + labels["positive"] == 1447
    assert info["splits"]["train"]["d_msc"] is None  # no unimodal labels in MOSI
    assert info["has_text_bert"] is False and info["has_unimodal_labels"] is False


def test_inspect_human(cli):
    rc, out, err = cli("inspect", REAL)
    assert rc == 0, err
    assert "1,447" in out and "369" in out and SHA256 in out


def test_convert_round_trip(tmp_path, cli):
    out_path = tmp_path / "mosi.npz"
    rc, out, err = cli("convert", REAL, "--out", out_path)
    assert rc == 0, err
    assert f"wrote {out_path}" in out
    a, b = load_dataset(REAL), load_dataset(out_path)
    for name in ("train", "valid"):
        for m in ("text", "audio", "vision"):
            np.testing.assert_array_equal(a[name].features(m), b[name].features(m))
        np.testing.assert_array_equal(a[name].labels, b[name].labels)
        assert a[name].ids == b[name].ids and a[name].raw_text == b[name].raw_text
    write_npz(b, tmp_path / "again.npz")  # an npz re-written from an npz holds the same content
    assert load_dataset(tmp_path / "again.npz")["valid"].ids == a["valid"].ids
