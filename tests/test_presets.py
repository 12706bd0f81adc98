"""Presets: every shipped YAML loads with the right types, and Table III / VII numbers are as published.

Only numbers a paper publishes are pinned here (`PUBLISHED`); a preset of our own (mosi-utterance) or a
new dataset needs no edit of this file: the type checks run over whatever `list_presets()` finds."""

from __future__ import annotations

import re

import pytest

from affectus.data.mmsa import dataset_from_raw
from affectus.data.presets import Preset, list_presets, load_preset
from affectus.data.schemes import LabelScheme
from affectus.errors import AffectusError

PUBLISHED = {  # name: (dims t/a/v, seq lens t/a/v, label range, scheme, unimodal, {model: (layers, heads, dropout)})
    "sims": (
        (768, 33, 709),
        (39, 400, 55),
        (-1.0, 1.0),
        "sims",
        True,
        {"cmc": (5, 4, 0.4), "cmc-gt": (1, 2, 0.1)},
    ),
    "simsv2": (
        (768, 25, 177),
        (50, 925, 232),
        (-1.0, 1.0),
        "sims",
        True,
        {"cmc": (4, 2, 0.3), "cmc-gt": (4, 8, 0.1)},
    ),
    "mosi": (
        (768, 5, 20),
        (50, 375, 500),
        (-3.0, 3.0),
        "mosi",
        False,
        {"cmc": (2, 4, 0.5)},
    ),
    "mosei": (
        (768, 74, 35),
        (50, 500, 500),
        (-3.0, 3.0),
        "mosi",
        False,
        {"cmc": (2, 4, 0.0)},
    ),
    # CUMDF's appendix A.2.1: GloVe 300 / COVAREP 74 / MA-Net 1024, 20 word-aligned steps
    "iemocap": ((300, 74, 1024), (20, 20, 20), (0.0, 3.0), "categorical", False, {"cmc": (2, 4, 0.5)}),
    "iemocap6": ((300, 74, 1024), (20, 20, 20), (0.0, 5.0), "categorical", False, {"cmc": (2, 4, 0.5)}),
}


def test_list_presets():
    names = list_presets()
    assert names == sorted(names) and set(PUBLISHED) <= set(names) and "mosi-utterance" in names


@pytest.mark.parametrize("name", list_presets())
def test_preset_types(name):
    p = load_preset(name)
    assert isinstance(p, Preset) and p.name == name
    assert isinstance(p.description, str) and p.description
    assert isinstance(p.label_range, tuple) and all(isinstance(v, float) for v in p.label_range)
    assert p.label_range[0] < p.label_range[1]
    assert isinstance(p.scheme, LabelScheme)
    for table in (p.dims, p.seq_lens):
        assert list(table) == ["text", "audio", "vision"]
        assert all(type(v) is int and v > 0 for v in table.values())
    assert type(p.unimodal_labels) is bool
    assert set(p.splits) == {"train", "select", "eval"} and all(isinstance(v, str) for v in p.splits.values())
    assert "cmc" in p.settings
    for row in _cmc_rows(p).values():
        assert type(row[0]) is int and type(row[1]) is int and type(row[2]) is float
        assert 32 % row[1] == 0  # the shared width d = 32 must split evenly over the heads
    # CMC-GT needs ground-truth unimodal labels
    assert ("cmc-gt" in p.settings) == p.unimodal_labels
    for key, n in p.synth.sizes.items():
        assert key in ("train", "valid", "test") and type(n) is int and n >= 0


def _cmc_rows(p: Preset) -> dict[str, tuple]:
    """CMC's Table III / VII rows among a preset's settings: (layers, heads, output dropout)."""
    return {k: (row["model.layers"], row["model.heads"], row["model.output_dropout"])
            for k, row in p.settings.items() if "model.layers" in row}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_numbers(name):
    dims, lens, label_range, acc2, unimodal, models = PUBLISHED[name]
    p = load_preset(name)
    assert tuple(p.dims.values()) == dims
    assert tuple(p.seq_lens.values()) == lens
    assert p.label_range == label_range and p.scheme.name == acc2
    assert p.unimodal_labels is unimodal
    assert _cmc_rows(p) == models


def test_split_roles():
    assert load_preset("sims").splits == {"train": "train", "select": "valid", "eval": "test"}
    # the shared real set has no test split: valid selects and is reported (its README says so)
    assert load_preset("mosi-utterance").splits == {"train": "train", "select": "valid", "eval": "valid"}


def test_unknown_preset_lists_known():
    with pytest.raises(AffectusError, match=r"unknown preset 'mosii' \(did you mean 'mosi'\?\) \(known: iemocap, iemocap6, meld, meld-sentiment, mosei, mosi, mosi-utterance"):
        load_preset("mosii")


def _yaml(tmp_path, text):
    path = tmp_path / "custom.yaml"
    path.write_text(text)
    return str(path)


GOOD = """
name: custom
description: a test preset
label_range: [-3, 3]
scheme: mosi
dims: {text: 6, audio: 4, vision: 5}
seq_lens: {text: 5, audio: 7, vision: 6}
unimodal_labels: false
splits: {train: train, select: valid, eval: test}
settings:
  cmc: {model.layers: 1, model.heads: 2, model.output_dropout: 0.0}
"""


def test_preset_from_path(tmp_path):
    p = load_preset(_yaml(tmp_path, GOOD))
    assert p.name == "custom" and p.label_range == (-3.0, 3.0) and p.settings["cmc"]["model.output_dropout"] == 0.0


@pytest.mark.parametrize(
    "old,new,message",
    [
        ("unimodal_labels: false", "unimodal_labels: false\nbatch: 64", ":9: unknown key 'batch' in a preset"),
        ("splits:", "split:", ":9: unknown key 'split' in a preset: expected one of .* \\(did you mean 'splits'\\?\\)"),
        ("scheme: mosi", "scheme: has0", ":5: scheme: unknown label scheme"),
        ("scheme: mosi", "scheme: {name: categorical, classes: [a]}", ":5: .*at least 2 distinct class names"),
        ("scheme: mosi", "scheme: 3", ":5: scheme = 3: expected a string or a mapping"),
        ("unimodal_labels: false\nsplits", "unimodal_labels: 1\nsplits", ":8: unimodal_labels = 1: expected true or false"),
        ("{text: 6, audio: 4, vision: 5}", "{text: 6, audio: 4}", ":6: dims has keys"),
        ("{text: 6, audio: 4, vision: 5}", "{text: 6, audio: 4.5, vision: 5}", ":6: dims.audio = 4.5: expected an integer"),
        ("{text: 6, audio: 4, vision: 5}", "{text: 6, audio: 0, vision: 5}", ":6: dims.audio = 0: expected a positive"),
        ("[-3, 3]", "[3, -3]", ":4: label_range = .*low < high"),
        ("[-3, 3]", "[-3, 3, 4]", ":4: label_range = .*at most 2 items"),
        ("cmc: {", "cmc: [", ":11: not valid YAML"),
        ("scheme: mosi\n", "", ":2: missing key 'scheme'"),
        ("dims: {", "dims: {{", ":7: not valid YAML"),
        ("seq_lens:", "dims:", ":7: duplicate key 'dims'"),
    ],
)
def test_bad_preset_yaml_rejected(tmp_path, old, new, message):
    assert old in GOOD
    path = _yaml(tmp_path, GOOD.replace(old, new))
    with pytest.raises(AffectusError, match=re.escape(path) + message):
        load_preset(path)


@pytest.mark.parametrize(("old", "new", "message"), [
    ("model.layers: 1", "model.layers: true", ":11: model.layers = true: expected an integer"),
    ("model.layers: 1", "model.layrs: 1", ":11: unknown config key 'model.layrs' for model 'cmc' .*did you mean 'model.layers'"),
])
def test_a_bad_setting_points_at_its_preset_line(tmp_path, old, new, message):
    """A preset's settings rows are checked where the config path reads them, against the model's own
    keys; the error still names the preset file's line."""
    from affectus.training.config import resolve_config

    path = _yaml(tmp_path, GOOD.replace(old, new))
    with pytest.raises(AffectusError, match=re.escape(path) + message):
        resolve_config("cmc", None, load_preset(path))


def test_check_and_notes(make_raw):
    ds = dataset_from_raw(make_raw(dims={"text": 768, "audio": 5, "vision": 20}), source="x.pkl")
    load_preset("mosi").check(ds)  # dims match: no error
    with pytest.raises(AffectusError, match="file x.pkl split train key text: feature dim 768, preset"):
        load_preset("mosi-utterance").check(ds)
    notes = load_preset("mosi").notes(ds)
    assert any("sequence length" in n for n in notes)  # tiny data has other lengths: a note, not an error
    assert not any("labels span" in n for n in notes)


def test_a_preset_in_the_old_model_form_is_told_the_new_one(tmp_path):
    old = GOOD.replace("settings:\n  cmc: {model.layers: 1, model.heads: 2, model.output_dropout: 0.0}",
                       "model:\n  cmc: {layers: 1, heads: 2, output_dropout: 0}")
    with pytest.raises(AffectusError, match=r"custom.yaml:\d+: model: .* now settings: rows with full keys"):
        load_preset(_yaml(tmp_path, old))


@pytest.mark.parametrize(("synth", "message"), [
    ("synth: {sizes: {train: 5, dev: 2}}", "synth.sizes.dev = 2: expected split names train, valid, test"),
    ("synth: {sizes: {train: -1}}", "synth.sizes.train = -1"),
    ("synth: {inconsistency: 1.5}", "synth.inconsistency: expected a share in \\[0, 1\\]"),
    ("synth: {class_counts: [1, 2]}", "synth.class_counts: expected 3 positive counts"),
])
def test_synth_facts_are_checked(tmp_path, synth, message):
    with pytest.raises(AffectusError, match=message):
        load_preset(_yaml(tmp_path, GOOD + synth + "\n"))


def test_the_simulator_reads_its_sizes_from_the_preset(tmp_path):
    from affectus.data.synthetic import SynthConfig

    path = _yaml(tmp_path, GOOD + "synth: {sizes: {train: 40, valid: 10, test: 20}, inconsistency: 0.25}\n")
    config = SynthConfig.from_preset(path, scale=0.5)
    assert (config.n_train, config.n_valid, config.n_test, config.inconsistency) == (20, 5, 10, 0.25)
    with pytest.raises(AffectusError, match="no split sizes known for preset 'custom'"):
        SynthConfig.from_preset(_yaml(tmp_path, GOOD))
