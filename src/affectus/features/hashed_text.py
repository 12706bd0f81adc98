"""PLACEHOLDER text features: hashed character n-grams of each word. Not a language model.

The real text side is the CMC+ issue's encoder (`features/text.py`, the packaged MiniLM or any
BERT directory), built on another branch. Until it is wired into `dataset.py`, `affectus
extract-dataset` writes the transcript into `raw_text` and fills `text` with these features so the
file has every key the readers require. Each word becomes one row: the counts of its character
2- and 3-grams (with word-boundary marks) hashed into `dim` buckets, L2-normalised. They carry word
identity and spelling, no meaning: a model trained on them learns which words occur with which
labels in its own training clips, nothing more. Do not report results on them as text results.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from affectus.features.base import ExtractorConfig

# one CJK character (CH-SIMS transcripts have no spaces) or one run of other word characters
_WORD = re.compile(r"[\u4e00-\u9fff]|[^\W\u4e00-\u9fff]+")


@dataclasses.dataclass(frozen=True)
class HashedWordsConfig(ExtractorConfig):
    kind: str = "hashed_words_placeholder"
    dim: int = 64
    max_words: int = 50  # longer transcripts are cut (MMSA's text sequences are 39-50 long)

    def __post_init__(self) -> None:
        if self.dim < 2 or self.max_words < 1:
            raise ValueError("need dim >= 2 and max_words >= 1")


class HashedWordsExtractor:
    """transcript -> (L, dim) float32, L = number of words (at most max_words; 0 for a blank one)."""

    def __init__(self, config: HashedWordsConfig | None = None) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.config = config or HashedWordsConfig()
        self.dim = self.config.dim
        # char_wb: n-grams inside word boundaries; alternate_sign off keeps counts non-negative
        self._vectorizer = HashingVectorizer(
            analyzer="char_wb", ngram_range=(2, 3), n_features=self.dim, alternate_sign=False, norm="l2"
        )

    def __call__(self, text: str) -> np.ndarray:
        words = _WORD.findall(text.lower())[: self.config.max_words]
        if not words:
            return np.zeros((0, self.dim), np.float32)
        return self._vectorizer.transform(words).toarray().astype(np.float32)  # (L, dim)
