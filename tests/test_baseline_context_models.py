"""The context baselines (issue 19 item 4): bc-LSTM and MMMU-BA, and the utterance sequences the data layer
gives them (data/context.py `sequence_rows` / `sequence_features`, `Capabilities.utterance_context`).

By hand: the sequences of a tiny split (groups out of order, window, causal, absent modalities, samples of
one video sharing their sequence). Design: a prediction reads its video's other utterances (and only its
own video's; causal reads no later one; window 0 none), MMMU-BA's attention is a distribution over the
video's real utterances and padding changes nothing, bc-LSTM trains its two levels in turn. Runs: pinned
fixed-seed runs through the CLI, evaluate / predict on another file, a text-only file. Refusals: a file
without groups, `train.context` beside the model's own window, as one line with exit 2.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import affectus
from affectus.data.batches import make_batch
from affectus.data.context import sequence_features, sequence_rows
from affectus.data.missing import with_availability
from affectus.data.mmsa import dataset_from_raw
from affectus.data.npz import write_npz
from affectus.data.types import MERDataset, Split
from affectus.errors import AffectusError
from affectus.models.registry import create_model, get_model_entry, make_config
from conftest import build_raw, one_error_line

MODELS = ("bc_lstm", "mmmu_ba")
SMALL = {"bc_lstm": {"hidden": 6, "unimodal_dense": 4, "fusion_hidden": 5, "fusion_dense": 6},
         "mmmu_ba": {"hidden": 6, "dense": 4}}
DIMS = {"text": 3, "audio": 2, "vision": 2}


def hand_split(window: int = 1, causal: bool = False) -> Split:
    """Seven rows, out of order: group a at positions 3, 0, 9, 5 (rows 0, 2, 3, 6), group b at 1, 0 (rows 1, 4),
    group c alone (row 5). Row 4 has no text (length 0). Features random, fixed."""
    rng = np.random.default_rng(0)
    n = 7
    return Split(name="s", text=rng.normal(size=(n, 2, 3)).astype(np.float32),
                 audio=rng.normal(size=(n, 1, 2)).astype(np.float32), vision=rng.normal(size=(n, 1, 2)).astype(np.float32),
                 text_lengths=np.array([2, 1, 2, 2, 0, 1, 2]), audio_lengths=np.ones(n, np.int64),
                 vision_lengths=np.ones(n, np.int64), labels=np.zeros(n, np.float32), ids=[f"r{i}" for i in range(n)],
                 groups=["a", "b", "a", "a", "b", "c", "a"], positions=np.array([3, 1, 0, 9, 0, 0, 5]),
                 sequence_window=(window, causal))


def test_sequence_rows_by_hand():
    rows, centre = sequence_rows(hand_split(window=1))
    # a in order: rows 2 (pos 0), 0 (3), 6 (5), 3 (9); one on each side, left-aligned, -1 after the end
    assert rows.tolist() == [[2, 0, 6], [4, 1, -1], [2, 0, -1], [6, 3, -1], [4, 1, -1], [5, -1, -1], [0, 6, 3]]
    assert centre.tolist() == [1, 1, 0, 1, 0, 0, 1]
    rows, centre = sequence_rows(hand_split(window=1000))  # the whole group
    assert rows[0].tolist() == [2, 0, 6, 3] and centre.tolist() == [1, 1, 0, 3, 0, 0, 2]
    rows, centre = sequence_rows(hand_split(window=2, causal=True))  # the two before, then the sample
    assert rows.tolist()[3] == [0, 6, 3] and rows.tolist()[2] == [2, -1, -1] and centre.tolist()[3] == 2


def test_sequence_features_pool_share_and_mark_absence():
    split = hand_split(window=1000)
    f = sequence_features(split, np.arange(7))
    # three groups: three sequences, each sample pointing at its own
    assert f["seq_text"].shape == (3, 4, 3) and f["seq_index"].tolist() == [0, 1, 0, 0, 1, 2, 0]
    a = f["seq_index"][0]
    # the pooled text of row 0 (a@3, second in a): the mean over its 2 true steps
    np.testing.assert_allclose(f["seq_text"][a, 1], split.text[0].mean(0), rtol=1e-6)
    # row 4 (b@0) has no text: zeros, marked absent; b has two utterances, the rest padding
    b = f["seq_index"][4]
    assert f["seq_available"][b, :, 0].tolist() == [False, True, False, False]
    assert not f["seq_text"][b, 0].any() and f["seq_mask"][b].tolist() == [True, True, False, False]
    # a split restricted to some modalities gives sequences restricted the same way
    g = sequence_features(with_availability(split, ("text",)), np.arange(7))
    assert not g["seq_audio"].any() and not g["seq_available"][..., 1:].any()


def test_batch_with_available_removes_the_modality_from_the_whole_sequence():
    batch = make_batch(hand_split(window=1000), np.arange(7))
    keep = torch.ones(7, 3, dtype=torch.bool)
    keep[0, 1] = False  # sample 0 loses audio; sample 2 (same video) keeps it
    out = batch.with_available(keep)
    assert out.seq_index.tolist() == list(range(7))  # each sample its own copy now
    assert not out.seq_audio[0].any() and not out.seq_available[0, :, 1].any()
    assert out.seq_available[2, :4, 1].all() and out.seq_audio[2].abs().sum() > 0


def _model(name: str, **extra):
    torch.manual_seed(0)
    return create_model(name, make_config(name, {"dims": dict(DIMS), **SMALL[name], **extra})).eval()


def _logits(model, split: Split) -> torch.Tensor:
    with torch.no_grad():
        return model(make_batch(split, np.arange(len(split)))).logits


@pytest.mark.parametrize("name", MODELS)
def test_a_prediction_reads_its_own_videos_other_utterances(name):
    model = _model(name)
    split = hand_split(window=1000)
    base = _logits(model, split)
    changed = replace(split, audio=split.audio.copy(), text=split.text.copy())
    changed.audio[3] += 3.0  # a@9: the last utterance of video a
    changed.text[3] += 3.0
    after = _logits(model, changed)
    others_in_a, not_in_a = [0, 2, 6], [1, 4, 5]
    assert not torch.allclose(after[others_in_a], base[others_in_a])  # its neighbours read it
    torch.testing.assert_close(after[not_in_a], base[not_in_a])  # other videos do not
    # the utterance alone (window 0: no sequence): a neighbour's change reaches nobody else
    alone = _model(name, window=0)
    plain = replace(split, sequence_window=None)
    moved = replace(changed, sequence_window=None)
    keep = [0, 1, 2, 4, 5, 6]
    torch.testing.assert_close(_logits(alone, moved)[keep], _logits(alone, plain)[keep])


@pytest.mark.parametrize("name", MODELS)
def test_causal_sequences_read_no_later_utterance(name):
    model = _model(name, causal=True)
    split = hand_split(window=1000, causal=True)
    changed = replace(split, text=split.text.copy(), audio=split.audio.copy())
    changed.text[6] += 3.0  # a@5: later than rows 2 (a@0) and 0 (a@3), earlier than row 3 (a@9)
    changed.audio[6] += 3.0
    base, after = _logits(model, split), _logits(model, changed)
    torch.testing.assert_close(after[[0, 2]], base[[0, 2]])
    assert not torch.allclose(after[3], base[3])


def test_mmmu_ba_attention_is_a_distribution_over_the_videos_utterances():
    model = _model("mmmu_ba")
    split = hand_split(window=1000)
    batch = make_batch(split, np.arange(7))
    with torch.no_grad():
        att = model.attention(batch)
    assert set(att) == {"vision-text", "text-vision", "audio-vision", "vision-audio", "text-audio", "audio-text"}
    sizes = torch.tensor([4, 2, 4, 4, 2, 1, 4])  # each sample's video
    for pair, w in att.items():
        assert w.shape == (7, 4)
        pad = torch.arange(4)[None, :] >= sizes[:, None]
        assert (w[pad] == 0).all(), pair  # padding never attended
        keys_text = pair.endswith("-text")
        for i in range(7):
            if keys_text and i in (1, 4):  # b's text: row 4 has none, so row 1 is its only text key
                assert w[i, 0] == 0 and w[i, 1] == pytest.approx(1.0)
            else:
                assert float(w[i].sum()) == pytest.approx(1.0), (pair, i)
    # padding changes nothing: each sample in a batch of its own (no padding) gives what the batch gives
    with torch.no_grad():
        singles = torch.cat([model(make_batch(split, np.array([i]))).logits for i in range(7)])
    torch.testing.assert_close(singles, _logits(model, split))


@pytest.mark.parametrize("name", MODELS)
def test_every_availability_condition_through_the_sequences(name):
    from affectus.data.missing import CONDITIONS

    model = _model(name).train()
    for present in CONDITIONS:
        batch = make_batch(with_availability(hand_split(window=1000), present), np.arange(7))
        out = model(batch)
        out.logits.sum().backward()
        assert torch.isfinite(out.logits).all(), present
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), present
        model.zero_grad()


def test_registry_lists_both_with_their_papers(cli):
    rc, out, _ = cli("models")
    assert rc == 0
    for name, paper in (("bc_lstm", "Poria et al., Context-Dependent"), ("mmmu_ba", "Ghosal et al., Contextual")):
        assert name in out and f"paper: {paper}" in out
    assert get_model_entry("bc_lstm").can({}).utterance_context == (1000, False)
    assert get_model_entry("mmmu_ba").can({"window": 0}).utterance_context is None


# ------------------------------------------------------------------------------------- runs through the CLI


def grouped_file(tmp_path, name: str, seed: int, groups: bool = True, text_only: bool = False) -> str:
    """A tiny file whose MMSA ids `video$_$clip` give groups (four clips a video), rows in reverse order;
    `text_only`: audio and vision absent in every sample (MELD's layout)."""
    raw = build_raw(sizes={"train": 24, "valid": 8, "test": 8}, dims={"text": 6, "audio": 5, "vision": 4}, seed=seed)
    for split, d in raw.items():
        n = len(d["id"])
        d["id"] = [f"{split}v{i // 4}$_${i % 4}" if groups else f"{split}-{i}" for i in range(n)][::-1]
    ds = dataset_from_raw(raw, source=name)
    if text_only:
        ds = MERDataset(splits={k: with_availability(s, ("text",)) for k, s in ds.splits.items()}, source=name)
    path = tmp_path / name
    write_npz(ds, path)
    return str(path)


FAST = ["--set", "train.epochs=2", "--set", "train.patience=1", "--set", "train.batch_size=8", "--threads", "1",
        "--quiet"]
SETS = {name: [a for k, v in SMALL[name].items() for a in ("--set", f"model.{k}={v}")] for name in MODELS}

# Printed once by the same steps as the test (train `data.npz` with SETS + FAST, then
# `affectus.load(run).predict(load_dataset(data)["test"]).probabilities[:4]`, rounded to 5 places) on the
# working tree of commit 75f870a plus this file; a change to what these models, their recipe or their
# sequences compute fails here.
RECORDED = {
    "bc_lstm": [[0.28641, 0.34377, 0.36981], [0.28637, 0.34552, 0.36811], [0.28645, 0.34679, 0.36677],
                [0.28722, 0.34741, 0.36538]],
    "mmmu_ba": [[0.33902, 0.30453, 0.35645], [0.3426, 0.30417, 0.35323], [0.34045, 0.31757, 0.34198],
                [0.33355, 0.31231, 0.35413]],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_fixed_seed_run_train_evaluate_predict(tmp_path, cli, name):
    data = grouped_file(tmp_path, "data.npz", seed=1)
    other = grouped_file(tmp_path, "other.npz", seed=2)
    run = tmp_path / "run"
    rc, _, err = cli("train", "--data", data, "--model", name, "--out", run, *SETS[name], *FAST)
    assert rc == 0, err
    info = json.loads((run / "run.json").read_text())
    assert info["sequence_context"] == {"window": 1000, "causal": False, "reads": ["text", "audio", "vision"],
                                        "pooling": "mean over true steps"}
    assert info["context"] is None
    if name == "bc_lstm":  # level 1, then level 2
        assert set(info["stages"]) == {"unimodal", "fusion"}
        assert set(info["stages"]["unimodal"]["best_epoch"]) == {"text", "audio", "vision"}
    from affectus.data.load import load_dataset

    got = affectus.load(run).predict(load_dataset(data)["test"]).probabilities[:4]
    np.testing.assert_allclose(got, np.array(RECORDED[name]), atol=2e-5)
    rc, out, err = cli("evaluate", run, "--data", other, "--split", "test", "--json")
    assert rc == 0, err
    rc, out, err = cli("evaluate", run, "--data", other, "--split", "test", "--json", "--available", "text")
    assert rc == 0, err
    rc, out, err = cli("predict", run, other, "--split", "test", "--json")
    assert rc == 0, err
    assert len(out.strip().splitlines()) == 8
    # a file without groups: one line, exit 2
    plain = grouped_file(tmp_path, "plain.npz", seed=3, groups=False)
    for args in (("evaluate", run, "--data", plain, "--split", "test"), ("predict", run, plain, "--split", "test")):
        one_error_line(*cli(*args)[::2], "video or dialogue", "groups")
    p = affectus.load(run)
    with pytest.raises(AffectusError, match="video or dialogue"):
        p.predict({m: np.zeros((2, 1, d), np.float32) for m, d in p.dims.items()})


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_text_only_file_trains_on_text(tmp_path, cli, name):
    data = grouped_file(tmp_path, "meldlike.npz", seed=1, text_only=True)
    run = tmp_path / "run"
    rc, _, err = cli("train", "--data", data, "--model", name, "--out", run, *SETS[name], *FAST)
    assert rc == 0, err
    info = json.loads((run / "run.json").read_text())
    if name == "bc_lstm":  # the modalities the file lacks are not trained at level 1
        assert set(info["stages"]["unimodal"]["best_epoch"]) == {"text"}
    rc, out, err = cli("evaluate", run, "--data", data, "--split", "test", "--json")
    assert rc == 0, err
    assert np.isfinite(json.loads(out)["acc3"])


@pytest.mark.parametrize("name", MODELS)
def test_a_file_without_groups_is_refused_before_anything_is_written(tmp_path, cli, name):
    data = grouped_file(tmp_path, "plain.npz", seed=1, groups=False)
    run = tmp_path / "run"
    rc, _, err = cli("train", "--data", data, "--model", name, "--out", run, *FAST)
    one_error_line(rc, err, f"model {name} reads each utterance's video or dialogue", "split train", "model.window=0")
    assert not run.exists()
    # the utterance alone needs no groups
    rc, _, err = cli("train", "--data", data, "--model", name, "--out", run, "--variant", "no_context",
                     *SETS[name], *FAST)
    assert rc == 0, err
    assert json.loads((run / "run.json").read_text())["sequence_context"] is None


@pytest.mark.parametrize("name", MODELS)
def test_train_context_beside_the_models_own_window_is_refused(tmp_path, cli, name):
    data = grouped_file(tmp_path, "data.npz", seed=1)
    rc, _, err = cli("train", "--data", data, "--model", name, "--out", tmp_path / "run", "--set", "train.context=2",
                     *FAST)
    one_error_line(rc, err, "reads its neighbours itself", "model.window")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, sets, message", [
    ("bc_lstm", ["model.window=-1"], "model.window = -1"),
    ("mmmu_ba", ["model.causal=true", "model.window=0"], "model.causal = True"),
    ("bc_lstm", ["recipe.optimizer=sgd"], "recipe.optimizer = 'sgd'"),
])
def test_bad_settings_are_one_line(tmp_path, cli, name, sets, message):
    data = grouped_file(tmp_path, "data.npz", seed=1)
    args = [a for s in sets for a in ("--set", s)]
    rc, _, err = cli("train", "--data", data, "--model", name, "--out", tmp_path / "run", *args, *FAST)
    one_error_line(rc, err, message)
    assert not (tmp_path / "run").exists()
