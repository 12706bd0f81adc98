"""The MMSA reader/writer: round trips, sanitisation, lengths, format detection, the restricted unpickler."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from affectus.data.mmsa import (
    dataset_from_raw,
    dataset_to_raw,
    file_format,
    load_dataset,
    sha256_file,
    write_pickle,
)
from affectus.data.npz import write_npz
from affectus.data.schemes import get_scheme
from affectus.data.types import MODALITIES, MERDataset
from affectus.errors import AffectusError


def assert_same(a: MERDataset, b: MERDataset) -> None:
    assert list(a.splits) == list(b.splits)
    for name in a.splits:
        x, y = a[name], b[name]
        for m in MODALITIES:
            assert x.features(m).dtype == y.features(m).dtype == np.float32
            np.testing.assert_array_equal(x.features(m), y.features(m))
            assert x.lengths(m).dtype == y.lengths(m).dtype == np.int64
            np.testing.assert_array_equal(x.lengths(m), y.lengths(m))
        np.testing.assert_array_equal(x.labels, y.labels)
        assert x.ids == y.ids and x.raw_text == y.raw_text
        assert (x.text_bert is None) == (y.text_bert is None)
        if x.text_bert is not None:
            np.testing.assert_array_equal(x.text_bert, y.text_bert)
        assert (x.unimodal_labels is None) == (y.unimodal_labels is None)
        if x.unimodal_labels is not None:
            for m in MODALITIES:
                np.testing.assert_array_equal(x.unimodal_labels[m], y.unimodal_labels[m])
    assert a.sanitised == b.sanitised


@pytest.mark.parametrize("unimodal,text_bert", [(False, False), (True, True)])
def test_pickle_npz_round_trip(make_raw, write_raw, tmp_path, unimodal, text_bert):
    pkl = write_raw(make_raw(unimodal=unimodal, text_bert=text_bert))
    ds = load_dataset(pkl)
    npz = tmp_path / "data.npz"
    write_npz(ds, npz)
    back = load_dataset(npz)
    assert_same(ds, back)
    assert back.has_unimodal_labels == unimodal
    # and back to a pickle through the MMSA dict layout
    pkl2 = tmp_path / "again.pkl"
    write_pickle(dataset_to_raw(back), pkl2)
    assert_same(ds, load_dataset(pkl2))


def test_npz_is_pickle_free(make_raw, write_raw, tmp_path):
    npz = tmp_path / "d.npz"
    write_npz(load_dataset(write_raw(make_raw())), npz)
    with np.load(npz, allow_pickle=False) as z:  # would raise on any object array
        for key in z.files:
            assert z[key].dtype != object
        meta = json.loads(str(z["__meta__"]))
    assert meta["format"] == "affectus-npz" and "raw_text" in meta["keys"]["train"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic: no leftovers


def test_custom_text_lengths_round_trip(make_raw, tmp_path):
    ds = dataset_from_raw(make_raw())
    ds["train"].text_lengths = np.arange(len(ds["train"]), dtype=np.int64) % 5 + 1  # not derivable
    npz = tmp_path / "d.npz"
    write_npz(ds, npz)
    np.testing.assert_array_equal(load_dataset(npz)["train"].text_lengths, ds["train"].text_lengths)
    assert "text_lengths" not in dataset_to_raw(ds)["valid"]  # MMSA-shaped where nothing differs


def test_sanitisation_counts_and_replaces(make_raw, tmp_path):
    raw = make_raw()
    raw["train"]["audio"][0, 0, :3] = -np.inf
    raw["train"]["audio"][1, 2, 0] = np.inf
    raw["valid"]["vision"][0, 0, 0] = np.nan
    audio_before = raw["train"]["audio"].copy()
    ds = dataset_from_raw(raw, source="mem")
    assert ds.sanitised == {("train", "audio"): 4, ("valid", "vision"): 1}
    assert np.isfinite(ds["train"].audio).all() and np.isfinite(ds["valid"].vision).all()
    assert ds["train"].audio[0, 0, 0] == 0.0 and ds["valid"].vision[0, 0, 0] == 0.0
    np.testing.assert_array_equal(raw["train"]["audio"], audio_before)  # caller's array untouched
    # the counts travel with the converted file
    npz = tmp_path / "d.npz"
    write_npz(ds, npz)
    assert load_dataset(npz).sanitised == ds.sanitised


def test_float64_features_become_float32(make_raw):
    raw = make_raw()
    raw["train"]["text"] = raw["train"]["text"].astype(np.float64)
    raw["train"]["text"][0, 0, 0] = 1e300  # beyond float32: becomes inf, so it is sanitised too
    ds = dataset_from_raw(raw)
    assert ds["train"].text.dtype == np.float32
    assert ds.sanitised == {("train", "text"): 1}


def test_lengths(make_raw):
    raw = make_raw(text_bert=True)
    del raw["valid"]["audio_lengths"]
    raw["train"]["vision_lengths"] = raw["train"]["vision_lengths"].astype(np.float32)  # integral floats: ok
    raw["test"]["regression_labels"] = raw["test"]["regression_labels"][:, None]  # (N, 1): ok
    ds = dataset_from_raw(raw)
    mask = raw["train"]["text_bert"][:, 1, :]
    np.testing.assert_array_equal(ds["train"].text_lengths, mask.sum(axis=1))
    assert ds["train"].text_bert.dtype == np.int64
    assert (ds["valid"].audio_lengths == raw["valid"]["audio"].shape[1]).all()  # absent -> full length
    assert ds["train"].vision_lengths.dtype == np.int64
    assert ds["test"].labels.shape == (len(ds["test"]),)


def test_optional_parts_and_string_forms(make_raw):
    raw = make_raw(sizes={"train": 4, "valid": 3})  # no test split, like the shared real set
    raw["train"]["id"] = np.array(raw["train"]["id"])  # numpy unicode array
    raw["valid"]["id"] = np.array(raw["valid"]["id"], dtype=object)  # numpy object array of str
    raw["train"]["annotations"] = ["Positive"] * 4  # unknown keys are ignored
    del raw["train"]["raw_text"]
    ds = dataset_from_raw(raw)
    assert list(ds.splits) == ["train", "valid"]
    assert ds["train"].ids[0] == "trainvid0_0" and type(ds["train"].ids[0]) is str
    assert ds["train"].raw_text is None and ds["valid"].raw_text is not None


def test_splits_in_canonical_order(make_raw):
    raw = make_raw()
    raw = {k: raw[k] for k in ("test", "train", "valid")}
    assert list(dataset_from_raw(raw).splits) == ["train", "valid", "test"]


def test_format_detected_by_content(make_raw, write_raw, tmp_path):
    ds = load_dataset(write_raw(make_raw(), "really_a_pickle.npz"))
    assert file_format(tmp_path / "really_a_pickle.npz") == "pickle"
    npz = tmp_path / "really_an_npz.pkl"
    write_npz(ds, npz)
    assert file_format(npz) == "npz"
    assert_same(ds, load_dataset(npz))


def test_consistency_mask():
    raw = {
        "train": {
            "id": ["a", "b", "c", "d"],
            "text": np.zeros((4, 1, 2), np.float32),
            "audio": np.zeros((4, 1, 2), np.float32),
            "vision": np.zeros((4, 1, 2), np.float32),
            "regression_labels": np.array([0.6, -0.2, 0.0, 0.4], np.float32),
            "regression_labels_T": np.array([0.2, -1.0, 0.0, 0.4], np.float32),
            "regression_labels_A": np.array([1.0, -0.4, 0.0, 0.0], np.float32),
            "regression_labels_V": np.array([0.8, -0.6, 0.2, 0.4], np.float32),
        }
    }
    split = dataset_from_raw(raw)["train"]
    mask, _ = get_scheme("sims").consistency_masks(split.labels, split.unimodal_labels)
    # all positive / all negative -> D_msc; a zero against a positive -> D_msi
    assert mask.tolist() == [True, True, False, False]


def test_consistency_mask_needs_unimodal_labels(make_raw):
    with pytest.raises(AffectusError, match="need unimodal labels"):
        split = dataset_from_raw(make_raw())["train"]
        get_scheme("sims").consistency_masks(split.labels, split.unimodal_labels)


class _Sneaky:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless stand-in for os.system


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    path = tmp_path / "sneaky.pkl"
    path.write_bytes(pickle.dumps({"train": _Sneaky()}))
    with pytest.raises(AffectusError, match="refused by the data-only pickle reader") as err:
        load_dataset(path)
    assert "getcwd" in str(err.value)
    # trusted: it unpickles (runs getcwd) and then fails validation as a non-dict split
    with pytest.raises(AffectusError, match="split train: expected a dict of arrays"):
        load_dataset(path, trust_pickle=True)


def test_preset_check_on_load(make_raw, write_raw):
    pkl = write_raw(make_raw(dims={"text": 768, "audio": 5, "vision": 20}))
    assert load_dataset(pkl, "mosi").dims == {"text": 768, "audio": 5, "vision": 20}
    with pytest.raises(AffectusError, match="key audio: feature dim 5, preset sims expects 33"):
        load_dataset(pkl, "sims")


def test_sha256(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_text_bert_longer_than_text_gives_the_lengths(make_raw):
    # Re-encoded transcripts (features/text.py) give text_bert its own, longer sequence.
    raw = make_raw(text_bert=True)
    raw["train"]["text_bert"] = np.concatenate([raw["train"]["text_bert"]] * 2, axis=2)  # L 10 > text L 5
    raw["train"]["text_bert"][:, 1, :] = 1
    assert (dataset_from_raw(raw)["train"].text_lengths == 10).all()


def test_text_length_beyond_text_bert_names_text_bert(make_raw):
    raw = make_raw(text_bert=True)
    raw["train"]["text_bert"][:, 1, :] = 2  # not a 0/1 mask: sums to 10 over L 5
    with pytest.raises(AffectusError, match=r"key text_bert: length 10 outside \[0, 5\] \(the text_bert seq"):
        dataset_from_raw(raw)


def test_explicit_text_length_beyond_text_is_refused(make_raw):
    raw = make_raw()
    raw["train"]["text_lengths"] = np.full(12, 6)  # text L is 5
    with pytest.raises(AffectusError, match=r"key text_lengths: length 6 outside \[0, 5\] \(the text seq"):
        dataset_from_raw(raw)
