"""benchmarks/bench_meld.py's `--cache`: frozen sentence vectors kept on disk between processes are read back
under the toolkit's own cache key, so a second process never runs the encoder again over the same transcripts,
and a changed encoder misses."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from test_text_encoder import TEXTS, _write_tiny_bert


def _bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_meld.py"
    spec = importlib.util.spec_from_file_location("bench_meld", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cached_vectors_are_read_back_by_a_new_process(tmp_path, monkeypatch):
    from affectus.features import text
    from affectus.features.text import text_encoder_from_spec

    bench = _bench()
    monkeypatch.setattr(text, "_SENTENCE_CACHE", {})
    enc = text_encoder_from_spec(_write_tiny_bert(tmp_path / "bert"), max_length=8)
    first = text._sentences(enc, TEXTS, "t")
    bench.save_sentence_cache(str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    text._SENTENCE_CACHE.clear()  # a new process: nothing in memory
    assert bench.load_sentence_cache(str(tmp_path / "cache")) == 1
    monkeypatch.setattr(type(enc), "sentence_embeddings", lambda *a, **k: pytest.fail("encoded again"))
    np.testing.assert_array_equal(text._sentences(enc, TEXTS, "t"), first)
    other = text_encoder_from_spec(_write_tiny_bert(tmp_path / "bert2", seed=5), max_length=8)
    with pytest.raises(pytest.fail.Exception, match="encoded again"):  # other weights: another key, a miss
        text._sentences(other, TEXTS, "t")
    assert bench.load_sentence_cache(str(tmp_path / "nowhere")) == 0
