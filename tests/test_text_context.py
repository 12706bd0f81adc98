"""Context through the encoder's input (`train.text_context`, EmoBERTa-style; data/context.py, features/text.py).

The neighbours' texts by hand on a tiny split (order, speakers, causal, absent neighbours), the encoder reading
them as a second segment while pooling the transcript's own tokens (a tiny random BERT), and a run trained with
it through the CLI: recorded in run.json, rebuilt the same way for another file by evaluate / predict, and the
refusals (no groups, settings that cannot combine) as one line with exit 2.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from affectus.data.context import neighbour_transcripts
from affectus.data.mmsa import dataset_from_raw, load_dataset
from affectus.data.npz import write_npz
from affectus.data.types import MERDataset
from affectus.errors import AffectusError
from conftest import one_error_line
from test_context import FAST, hand_split

transformers = pytest.importorskip("transformers")

from test_text_encoder import WORDS, _write_tiny_bert


def named_split(available=None):
    s = hand_split(available)  # groups b, a, b, a, b, c at positions 5, 2, 1, 0, 9, 0
    return replace(s, raw_text=[f"t{i}" for i in range(6)], speakers=[f"S{i}" for i in range(6)])


def test_neighbour_texts_by_hand_nearest_first_with_speakers():
    s = named_split()
    # window 1, both sides: row 0 (b@5) has b@1 (row 2) before and b@9 (row 4) after; row 5 is alone in c
    assert neighbour_transcripts(s, 1, False, "[SEP]") == [
        "S2: t2 [SEP] S4: t4", "S3: t3", "S0: t0", "S1: t1", "S0: t0", ""]
    # causal, window 2: the ones before only, nearest first (row 4, b@9: b@5 then b@1)
    assert neighbour_transcripts(s, 2, True, "</s>") == ["S2: t2", "S3: t3", "", "", "S0: t0 </s> S2: t2", ""]
    assert neighbour_transcripts(s, 1, False, "[SEP]", speakers=False)[0] == "t2 [SEP] t4"
    assert neighbour_transcripts(replace(s, speakers=None), 1, True, "[SEP]")[0] == "t2"
    avail = np.ones((6, 3), bool)
    avail[2, 0] = False  # b@1's text is absent: b@5 reads only b@9
    assert neighbour_transcripts(named_split(avail), 1, False, "[SEP]")[0] == "S4: t4"
    with pytest.raises(AffectusError, match="no groups"):
        neighbour_transcripts(replace(s, groups=None), 1, False, "[SEP]")


def test_the_encoder_reads_the_neighbours_and_pools_the_transcripts_own_tokens(tmp_path):
    from affectus.features.text import text_encoder_from_spec

    enc = text_encoder_from_spec(_write_tiny_bert(tmp_path / "bert", positions=64), max_length=16)
    texts, pairs = ["the movie is good", "i liked it"], ["a plot was bad", ""]
    out = enc.encode(texts, bert=True, sentence=True, pairs=pairs)
    ids, mask, seg = out.text_bert[:, 0], out.text_bert[:, 1], out.text_bert[:, 2]
    sep = enc.tokenizer.sep_token_id
    for i, own in enumerate((6, 5)):  # [CLS] + words + [SEP]: the transcript's own tokens
        n = int(mask[i].sum())
        assert ids[i, own - 1] == sep and (seg[i, :own] == 0).all()
        with torch.no_grad():
            h = enc.model(input_ids=torch.from_numpy(ids[i : i + 1, :n]),
                          token_type_ids=torch.from_numpy(seg[i : i + 1, :n])).last_hidden_state[0].numpy()
        mean = h[:own].mean(0)  # the neighbours' tokens shape h through attention but are not pooled
        np.testing.assert_allclose(out.sentence[i], mean / np.linalg.norm(mean), atol=1e-5)
    other = enc.sentence_embeddings(texts, pairs=["the acting was awful", ""])
    assert not np.allclose(other[0], out.sentence[0], atol=1e-4)  # another neighbour: another vector
    alone = enc.sentence_embeddings(texts)
    assert not np.allclose(alone[0], out.sentence[0], atol=1e-4)
    with pytest.raises(AffectusError, match="one context text per transcript"):
        enc.sentence_embeddings(texts, pairs=["x"])
    with pytest.raises(AffectusError, match="token states of a transcript with its context"):
        enc.encode(texts, states=True, pairs=pairs)


def grouped_words_file(tmp_path, make_raw, name: str, seed: int, groups: bool = True) -> str:
    """Four utterances a dialogue (MMSA ids `video$_$clip`), transcripts in the tiny vocabulary."""
    raw = make_raw(sizes={"train": 24, "valid": 8, "test": 8}, seed=seed)
    rng = np.random.default_rng(seed)
    for split, d in raw.items():
        n = len(d["id"])
        d["id"] = [f"{split}v{i // 4}$_${i % 4}" if groups else f"{split}-{i}" for i in range(n)]
        d["raw_text"] = [" ".join(rng.choice(WORDS[:16], size=4)) for _ in range(n)]
    path = tmp_path / name
    write_npz(dataset_from_raw(raw, source=name), path)
    return str(path)


def test_a_run_with_text_context_records_it_and_rebuilds_it_for_another_file(tmp_path, cli, make_raw):
    from affectus.features.text import reencode_dataset, text_encoder_from_record
    from affectus.inference.predictor import Predictor

    bert = _write_tiny_bert(tmp_path / "bert", positions=64)
    data = grouped_words_file(tmp_path, make_raw, "data.npz", seed=1)
    other = grouped_words_file(tmp_path, make_raw, "other.npz", seed=2)
    run = tmp_path / "run"
    rc, _, err = cli("train", "--data", data, "--model", "late_fusion", "--out", run, "--set",
                     "train.text_inputs=sentence", "--set", f"train.text_encoder={bert}", "--set", "train.text_context=1",
                     "--set", "train.context_causal=true", "--set", "train.text_context_tokens=24", *FAST)
    assert rc == 0, err
    info = json.loads((run / "run.json").read_text())
    record = info["text_inputs"]
    assert record["context"] == {"window": 1, "causal": True, "speakers": True}
    assert record["text_encoder"]["max_length"] == 24 and info["dims"]["text"] == 16
    # another file read as the run reads it: its own dialogues, the previous utterance in the encoder's input
    split = load_dataset(other)["test"]
    read = Predictor(run).reads(split)
    encoder = text_encoder_from_record(record["text_encoder"])
    want = reencode_dataset(MERDataset(splits={"test": split}), encoder, text="sentence",
                            context={"window": 1, "causal": True, "speakers": True})["test"]
    np.testing.assert_allclose(read.text, want.text, atol=1e-6)
    alone = reencode_dataset(MERDataset(splits={"test": split}), encoder, text="sentence")["test"]
    assert not np.allclose(read.text[1], alone.text[1], atol=1e-4)  # clip 1 reads clip 0 before it
    rc, _, err = cli("evaluate", run, "--data", other, "--split", "test", "--json")
    assert rc == 0, err
    # a conversation typed at predict time: causal, so a verdict reads what came before it and nothing after
    said = ["the movie is good", "i liked it", "the plot was awful", "not very good acting"]

    def probs(lines, name):
        f = tmp_path / name
        f.write_text("\n".join(lines) + "\n", encoding="utf-8")
        rc, text, err = cli("predict", run, "--utterances", f, "--json")
        assert rc == 0, err
        return [json.loads(line)["probabilities"] for line in text.splitlines()]

    def gap(a, b):
        return max(abs(a[k] - b[k]) for k in a)

    full, head = probs(said, "full.txt"), probs(said[:2], "head.txt")
    assert max(gap(a, b) for a, b in zip(head, full[:2])) < 1e-5
    changed = probs(["the acting was bad"] + said[1:], "changed.txt")
    assert gap(changed[1], full[1]) > 1e-6  # utterance 1 reads utterance 0 through the encoder
    # a file without dialogues cannot give the neighbours: one line, exit 2
    flat = grouped_words_file(tmp_path, make_raw, "flat.npz", seed=3, groups=False)
    rc, _, err = cli("evaluate", run, "--data", flat, "--split", "test")
    one_error_line(rc, err, "no groups", "train.text_context")


@pytest.mark.parametrize("sets, fragment", [
    (["train.text_context=1"], "train.text_context = 1: expected 0 unless train.text_inputs is sentence"),
    (["train.text_context=1", "train.text_inputs=sentence", "train.text_encoder_finetune=1"],
     "0 with train.text_encoder_finetune"),
    (["train.context_causal=true"], "set only with train.context or train.text_context"),
    (["train.text_context=1", "train.text_inputs=sentence", "train.text_context_tokens=2"], "[3, 4096]"),
])
def test_settings_that_cannot_combine_are_refused(tmp_path, cli, make_raw, sets, fragment):
    data = grouped_words_file(tmp_path, make_raw, "data.npz", seed=1)
    args = [a for s in sets for a in ("--set", s)]
    rc, _, err = cli("train", "--data", data, "--model", "late_fusion", "--out", tmp_path / "run", *args, *FAST)
    one_error_line(rc, err, fragment)
    assert not (tmp_path / "run").exists()


def test_a_file_without_groups_is_refused_before_training(tmp_path, cli, make_raw):
    bert = _write_tiny_bert(tmp_path / "bert", positions=64)
    flat = grouped_words_file(tmp_path, make_raw, "flat.npz", seed=3, groups=False)
    rc, _, err = cli("train", "--data", flat, "--model", "late_fusion", "--out", tmp_path / "run", "--set",
                     "train.text_inputs=sentence", "--set", f"train.text_encoder={bert}", "--set",
                     "train.text_context=1", "--set", "train.text_context_tokens=24", *FAST)
    one_error_line(rc, err, "train.text_context = 1 needs groups")
    assert not (tmp_path / "run").exists()
