"""The conflict simulator: shapes per preset, determinism, file round trips, and the generative story."""

from __future__ import annotations

import math

import numpy as np
import pytest

import affectus.cli.synth_cmd  # noqa: F401  (registers `synth` on the app)
from affectus.data import synthetic
from affectus.data.mmsa import load_dataset, write_pickle
from affectus.data.npz import write_npz
from affectus.data.presets import load_preset
from affectus.data.schemes import get_scheme
from affectus.data.synthetic import SynthConfig, consistent_mask, generate, generate_dataset
from affectus.data.types import MODALITIES, UNIMODAL_KEYS, to_classes
from affectus.errors import AffectusError

SIMS = get_scheme("sims")

REAL_PRESETS = ("sims", "simsv2", "mosi", "mosei")
TABLE_I = {  # the paper's Table I: train / valid / test
    "sims": (1368, 456, 457),
    "simsv2": (2722, 647, 1034),
    "mosi": (1284, 229, 686),
    "mosei": (16326, 1871, 4659),
}
TABLE_II = {  # (seq len, dim) per modality, the paper's Table II
    "sims": {"text": (39, 768), "audio": (400, 33), "vision": (55, 709)},
    "simsv2": {"text": (50, 768), "audio": (925, 25), "vision": (232, 177)},
    "mosi": {"text": (50, 768), "audio": (375, 5), "vision": (500, 20)},
    "mosei": {"text": (50, 768), "audio": (500, 74), "vision": (500, 35)},
}


def tiny(**overrides) -> SynthConfig:
    """A small config (default shapes, ~100 samples) that generates in milliseconds."""
    return SynthConfig(**{"audio_neg_inf_rate": 0.01, "with_text_bert": True, **overrides})


def assert_same_raw(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for split, d in a.items():
        other = b[split]
        assert d.keys() == other.keys()
        for key, value in d.items():
            if isinstance(value, np.ndarray):
                assert value.dtype == other[key].dtype and value.tobytes() == other[key].tobytes(), key
            else:
                assert value == other[key], key


# ------------------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_and_other_seed_differs():
    assert_same_raw(generate(tiny()), generate(tiny()))
    assert generate(tiny())["train"]["audio"].tobytes() != generate(tiny(seed=7))["train"]["audio"].tobytes()


def test_streams_are_independent_per_split_and_modality():
    # Resizing the test split or one modality's shape leaves everything else byte-identical.
    base = generate(tiny())
    other = generate(
        tiny(
            n_test=3,
            seq_lens={"text": 8, "audio": 16, "vision": 20},
            dims={"text": 32, "audio": 8, "vision": 3},
        )
    )
    for key in ("text", "audio", "regression_labels", "regression_labels_T", "text_bert"):
        assert base["train"][key].tobytes() == other["train"][key].tobytes(), key
    assert other["test"]["audio"].shape[0] == 3


# ------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("preset", REAL_PRESETS)
def test_preset_sizes_at_full_scale_are_table_i(preset):
    config = SynthConfig.from_preset(preset)  # sizes only: nothing is generated
    assert (config.n_train, config.n_valid, config.n_test) == TABLE_I[preset]
    assert tuple(load_preset(preset).synth.sizes.values()) == TABLE_I[preset]
    assert {m: (config.seq_lens[m], config.dims[m]) for m in MODALITIES} == TABLE_II[preset]


@pytest.mark.parametrize("preset", REAL_PRESETS)
def test_preset_shapes_at_small_scale(preset):
    config = SynthConfig.from_preset(preset, scale=0.002)
    raw = generate(config)
    assert list(raw) == ["train", "valid", "test"]
    lo, hi = config.label_range
    for split, d in raw.items():
        n = getattr(config, f"n_{split}")
        assert 1 <= n <= 40 and len(d["id"]) == n == len(d["raw_text"])
        for m in MODALITIES:
            assert d[m].shape == (n, *TABLE_II[preset][m]) and d[m].dtype == np.float32
        assert (
            d["text_bert"].shape == (n, 3, TABLE_II[preset]["text"][0]) and d["text_bert"].dtype == np.int64
        )
        assert d["text_bert"].max() < 100
        assert d["audio_lengths"].dtype == np.int64 and d["regression_labels"].dtype == np.float32
        assert lo <= d["regression_labels"].min() and d["regression_labels"].max() <= hi
        np.testing.assert_array_equal(d["classification_labels"], to_classes(d["regression_labels"]))
        # unimodal labels only where the real dataset has them (CH-SIMS family)
        assert (UNIMODAL_KEYS["text"] in d) == preset.startswith("sims")


def test_mosi_utterance_has_no_test_split_and_length_one():
    raw = generate(SynthConfig.from_preset("mosi-utterance", scale=0.01))
    assert list(raw) == ["train", "valid"]
    assert raw["train"]["text"].shape[1:] == (1, 100) and "text_bert" not in raw["train"]
    assert (raw["train"]["audio_lengths"] == 1).all()


def test_unknown_preset_and_bad_values_are_affectus_errors():
    with pytest.raises(AffectusError, match="unknown preset"):
        SynthConfig.from_preset("nope")
    with pytest.raises(AffectusError, match="unknown config field"):
        SynthConfig.from_preset("sims", inconsistncy=0.3)
    for bad in (
        {"inconsistency": 1.5},
        {"n_train": 0},
        {"label_range": (0.0, 1.0)},
        {"noise": -1.0},
        {"min_length_fraction": 0.0},
        {"dims": {"text": 3, "audio": 2}},
        {"label_steps": (5.0,)},
    ):
        with pytest.raises(AffectusError):
            generate(tiny(**bad))
    with pytest.raises(AffectusError, match="GB"):
        generate_dataset("mosei")  # 8.5 GB of features: refused before anything is allocated


# ------------------------------------------------------------------------------------- files


@pytest.mark.parametrize("form", ["pickle", "npz"])
def test_round_trip_through_files(tmp_path, form):
    raw = generate(SynthConfig.from_preset("sims", scale=0.01, seq_scale=0.1, audio_neg_inf_rate=0.01))
    memory = generate_dataset(
        SynthConfig.from_preset("sims", scale=0.01, seq_scale=0.1, audio_neg_inf_rate=0.01)
    )
    path = tmp_path / f"synth.{'pkl' if form == 'pickle' else 'npz'}"
    if form == "pickle":
        write_pickle(raw, path)
    else:
        write_npz(memory, path)
    loaded = load_dataset(path, preset="sims")
    for split, d in raw.items():
        got, want = loaded[split], memory[split]
        n_inf = int(np.isneginf(d["audio"]).sum())
        assert n_inf > 0 and loaded.sanitised[(split, "audio")] == n_inf == memory.sanitised[(split, "audio")]
        np.testing.assert_array_equal(got.audio, np.where(np.isneginf(d["audio"]), 0.0, d["audio"]))
        for m in MODALITIES:
            assert got.features(m).tobytes() == want.features(m).tobytes()
            np.testing.assert_array_equal(got.lengths(m), want.lengths(m))
        np.testing.assert_array_equal(got.text_bert, d["text_bert"])
        np.testing.assert_array_equal(got.labels, d["regression_labels"])
        for m in MODALITIES:
            np.testing.assert_array_equal(got.unimodal_labels[m], d[UNIMODAL_KEYS[m]])
        assert got.ids == d["id"] and got.raw_text == d["raw_text"]


def test_cli_writes_pickle_and_npz_with_summary(tmp_path, cli):
    out = tmp_path / "sims.pkl"
    rc, stdout, _ = cli(
        "synth",
        "--preset",
        "sims",
        "--out",
        out,
        "--scale",
        "0.01",
        "--seq-scale",
        "0.1",
        "--seed",
        "3",
        "--inconsistency",
        "0.3",
    )
    assert rc == 0 and len(stdout.strip().splitlines()) == 1
    assert "D_msc" in stdout and "14/5/5" in stdout and "768/33/709" in stdout
    ds = load_dataset(out)
    assert len(ds["train"]) == 14 and ds.has_unimodal_labels
    rc, stdout, _ = cli(
        "synth",
        "--preset",
        "mosi",
        "--out",
        tmp_path / "m.npz",
        "--n-train",
        "5",
        "--n-valid",
        "2",
        "--n-test",
        "0",
        "--seq-scale",
        "0.05",
    )
    assert rc == 0 and "npz" in stdout
    ds = load_dataset(tmp_path / "m.npz")
    assert list(ds.splits) == ["train", "valid"] and ds.dims == {"text": 768, "audio": 5, "vision": 20}


@pytest.mark.parametrize(
    "args",
    [
        ("--preset", "nope"),
        ("--preset", "sims", "--inconsistency", "2"),
        ("--preset", "sims", "--scale", "0"),
        ("--preset", "sims", "--n-train", "-1"),
        ("--preset", "mosei"),
    ],
)
def test_cli_bad_values_one_line_exit_2(tmp_path, cli, args):
    rc, _, stderr = cli("synth", "--out", tmp_path / "x.pkl", *args)
    assert rc == 2 and len(stderr.strip().splitlines()) == 1 and stderr.startswith("error:")
    assert not (tmp_path / "x.pkl").exists()


# ------------------------------------------------------------------------------------- the story


def test_lengths_and_zero_padding():
    config = tiny(n_train=200, min_length_fraction=0.25)
    d = generate(config)["train"]
    lengths = {
        "text": d["text_bert"][:, 1].sum(axis=1),
        "audio": d["audio_lengths"],
        "vision": d["vision_lengths"],
    }
    for m in MODALITIES:
        full = config.seq_lens[m]
        assert lengths[m].min() >= math.ceil(0.25 * full) and lengths[m].max() == full
        assert len(np.unique(lengths[m])) > 1
        steps = np.arange(full)[None, :]
        pad = steps >= lengths[m][:, None]  # (N, L)
        assert (d[m][pad] == 0).all()
        assert (np.abs(d[m]).sum(axis=2)[~pad] > 0).all()  # noise: every true step is non-zero
    audio_pad = np.arange(config.seq_lens["audio"])[None, :] >= d["audio_lengths"][:, None]
    assert np.isneginf(d["audio"]).any() and not np.isneginf(d["audio"]).any(axis=2)[audio_pad].any()


def test_neg_inf_rate_is_controllable():
    assert not np.isneginf(generate(tiny(audio_neg_inf_rate=0.0))["train"]["audio"]).any()
    d = generate(tiny(n_train=400, audio_neg_inf_rate=0.02))["train"]
    true_values = d["audio_lengths"].sum() * d["audio"].shape[2]
    assert np.isneginf(d["audio"]).sum() / true_values == pytest.approx(0.02, rel=0.15)


def test_labels_are_quantised_like_the_real_data():
    d = generate(SynthConfig.from_preset("sims", seq_scale=0.01, scale=1.0))["train"]
    y = d["regression_labels"].astype(np.float64)
    np.testing.assert_allclose(y / 0.2, np.rint(y / 0.2), atol=1e-5)  # steps of 0.2
    assert 0.08 < (y == 0).mean() < 0.25  # a notable share of exact zeros (neutral)
    assert set(np.round(y, 4)) <= {round(k * 0.2, 4) for k in range(-5, 6)}


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 1.0])
def test_d_msc_d_msi_proportions_follow_inconsistency(rate):
    d = generate(tiny(n_train=2000, inconsistency=rate, seq_lens={"text": 1, "audio": 1, "vision": 1}))[
        "train"
    ]
    msi = ~consistent_mask(d, SIMS)
    assert msi.mean() == pytest.approx(rate, abs=0.04)


def test_table_i_like_split_has_both_subsets():
    d = generate(SynthConfig.from_preset("sims", seq_scale=0.01))["train"]
    msc = consistent_mask(d, SIMS)
    assert 0.4 < msc.mean() < 0.6  # Table I: 669 consistent / 699 inconsistent


def test_multimodal_label_is_the_weighted_majority():
    # Step 2 of the story: y_m's class is held by >= 2 modalities; when text dissents, audio and
    # vision both side with y_m (so a model that can outvote text on D_msi is rewarded).
    d = generate(tiny(n_train=3000, seq_lens={"text": 1, "audio": 1, "vision": 1}))["train"]
    cm = to_classes(d["regression_labels"])
    agree = {m: to_classes(d[UNIMODAL_KEYS[m]]) == cm for m in MODALITIES}
    assert (sum(agree.values()) >= 2).all()
    assert (agree["audio"] & agree["vision"])[~agree["text"]].all()
    assert (~agree["text"]).mean() == pytest.approx(0.5 / 3, abs=0.03)  # inconsistency x text_misleading


def test_raw_text_reflects_the_text_label():
    d = generate(tiny(n_train=300))["train"]
    for sentence, y in zip(d["raw_text"], d["regression_labels_T"]):
        cls = int(to_classes(np.array([y]))[0])
        words = {w for (c, _), group in synthetic._ADJECTIVES.items() if c == cls for w in group}
        assert sentence.split()[-1] in words, (sentence, y)
    assert len(set(d["raw_text"])) > 100


def test_text_beats_audio_and_all_three_beat_text_on_d_msi():
    """A linear probe on mean-pooled features: the story holds (text strongest, consensus wins)."""
    from sklearn.linear_model import LogisticRegression

    config = SynthConfig(
        n_train=500,
        n_valid=1,
        n_test=500,
        seq_lens={"text": 8, "audio": 20, "vision": 10},
        dims={"text": 128, "audio": 16, "vision": 64},
        audio_neg_inf_rate=0.0,
        seed=0,
    )
    raw = generate(config)
    train, test = raw["train"], raw["test"]
    msi = ~consistent_mask(test, SIMS)

    def accuracy(mods: tuple[str, ...]) -> tuple[float, float]:
        def pooled(d):
            return np.concatenate([d[m].mean(axis=1) for m in mods], axis=1)

        # C = 0.1: with ~as many features as samples an unregularised probe fits the label noise
        clf = LogisticRegression(C=0.1, max_iter=1000).fit(pooled(train), train["classification_labels"])
        hit = clf.predict(pooled(test)) == test["classification_labels"]
        return hit.mean(), hit[msi].mean()

    text, audio, both = accuracy(("text",)), accuracy(("audio",)), accuracy(MODALITIES)
    # measured at seed 0: text 0.80 / audio 0.66 / all 0.86; on D_msi text 0.65 / all 0.73
    assert text[0] > audio[0] + 0.05
    assert both[0] > text[0] + 0.03
    assert both[1] > text[1] + 0.04


def test_synth_cli_custom_dims_and_seq_lens(tmp_path, capsys):
    from affectus.cli import main
    from affectus.data.mmsa import load_dataset

    out = tmp_path / "custom.pkl"
    rc = main(["synth", "--preset", "sims", "--n-train", "20", "--n-valid", "8", "--n-test", "8",
               "--dims", "6,5,4", "--seq-lens", "3,7,2", "--out", str(out)])
    assert rc == 0
    ds = load_dataset(out)
    assert ds.dims == {"text": 6, "audio": 5, "vision": 4}
    assert ds.seq_lens == {"text": 3, "audio": 7, "vision": 2}
    capsys.readouterr()
    assert main(["synth", "--preset", "sims", "--dims", "6,5", "--out", str(tmp_path / "bad.pkl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dims" in err[0]
