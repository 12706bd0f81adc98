"""Fine-tuning the top layers of the transcript encoder inside training (`train.text_encoder_finetune = N`).

With `train.text_inputs` = sentence (or sentence+file) a run reads each transcript as a frozen sentence
vector (features/text.py). N >= 1 fine-tunes the encoder's last N transformer layers with the model:

* the frozen lower layers (embeddings and layers 0 .. K-1, K = layers - N) run once per split, before
  training, and their output, the token states at the input of layer K, is kept in the split
  (`Split.text_tokens`, float16, zero after each transcript's length; `text_token_lengths`). On CPU this
  is what makes fine-tuning affordable: a step runs N layers, not the whole encoder, and a batch is cut
  to its longest transcript (data/batches.py);
* `TextTuner` holds copies of layers K .. L-1 (initialised from the encoder, so before the first step it
  gives back the frozen sentence vectors up to float16 rounding of its input) and the encoder's pooling.
  It is attached to the run's model as the submodule `text_tuner`, with a forward pre-hook that replaces
  the transcript's columns of `batch.text` (the first D columns: the transcript view, which comes first
  in every layout `train.text_inputs` makes) by the pooled output of the tuned layers. The model itself
  is unchanged and sees the text feature it would see frozen, so every model the one-stage supervised
  recipe trains through its `forward` can fine-tune. Its parameters live under `text_tuner.bert.*`, so the
  optimiser gives them BERT's own learning rate and weight decay (`train.bert_lr`, `train.bert_weight_decay`;
  recipes/base.py `optimizer`), and they are saved in the run's model.safetensors.
* Context (`train.context`) keeps the neighbours' frozen sentence vectors: a neighbour's vector is computed
  once, before training, and the tuned layers change the utterance's own vector only.

run.json's `text_inputs.finetune` records N, K and the layers' Hugging Face config, so `Predictor` (predict,
evaluate, serve) rebuilds the tuner, loads the fine-tuned weights from model.safetensors and runs the frozen
lower layers of the recorded (fingerprinted) encoder on a new file's transcripts: the run predicts with its
fine-tuned encoder, never the packaged frozen one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from affectus.data.types import MERDataset, Split
from affectus.errors import AffectusError

TUNER = "text_tuner"  # the submodule's name on the model (its parameters: text_tuner.bert.*)
# The encoders whose layers this module can rebuild from a saved config (BertLayer): MiniLM is one.
TUNABLE_TYPES = frozenset({"bert"})
# the models trained end to end through `forward` on each batch: the tuned layers get gradients with them
TUNABLE_RECIPE = "affectus.training.recipes.supervised:SupervisedRecipe"
TUNABLE_TEXT_INPUTS = ("sentence", "sentence+file")

# Token states of transcripts already run through the frozen lower layers in this process (benchmarks train
# many runs on one file), keyed by (encoder record, K, texts). Each entry is large (N x L x D float16).
_TOKEN_CACHE: dict[tuple[str, int, str], tuple[np.ndarray, np.ndarray]] = {}
_CACHE_LIMIT = 4


def _layer_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # transformers 4 returns a tuple, 5 the tensor


def _additive_mask(lengths: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    """(B,) lengths -> (B, 1, 1, W) additive attention mask: 0 on tokens, the dtype's minimum on padding."""
    keep = torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]
    return (~keep)[:, None, None, :].to(dtype) * torch.finfo(dtype).min


def encoder_layers(encoder) -> int:
    return int(encoder.hf_config.num_hidden_layers)


def check_finetune(encoder_or_config, n: int, spec: str) -> None:
    """Refuse (one line) N layers an encoder does not have, or an encoder this module cannot rebuild."""
    hf = getattr(encoder_or_config, "hf_config", encoder_or_config)
    if hf.model_type not in TUNABLE_TYPES:
        raise AffectusError(f"train.text_encoder_finetune = {n}: the text encoder {spec} is a {hf.model_type!r} "
                            f"model; fine-tuning supports model_type {', '.join(sorted(TUNABLE_TYPES))} "
                            f"(MiniLM is one); or keep it frozen: --set train.text_encoder_finetune=0")
    if n > int(hf.num_hidden_layers):
        raise AffectusError(f"train.text_encoder_finetune = {n}: the text encoder {spec} has "
                            f"{hf.num_hidden_layers} layers; give at most that many (0: frozen)")


def check_finetune_setting(entry, model_cfg: dict[str, Any], train) -> None:
    """`train.text_encoder_finetune` checked with the config (training/config.py `resolve_config`), before
    anything is read or written: a model whose training does not run its forward on each batch, or more
    layers than the encoder has (its config.json alone is read; an encoder that is not there is refused
    later, by `check_text_inputs`, with the text inputs)."""
    from affectus.errors import SettingError

    n = train.text_encoder_finetune
    if entry.recipe != TUNABLE_RECIPE or entry.can(model_cfg).reads_transcripts:
        raise SettingError(
            "train.text_encoder_finetune", n,
            f"0 for model {entry.name}, which trains through a recipe of its own (pooled inputs, stages or "
            f"its own BERT) that the tuned layers cannot train with; fine-tune with a model of the one-stage "
            f"supervised recipe (late_fusion, tfn, ef_lstm, ...)")
    from affectus.features.text import _check_model_dir, _load_hf_config, minilm_available, minilm_model_dir

    spec = train.text_encoder
    try:
        if spec == "minilm":
            if not minilm_available():
                return
            folder = minilm_model_dir()
        else:
            folder = _check_model_dir(spec)
        hf = _load_hf_config(folder)
    except AffectusError:
        return  # refused with the text inputs, in its own words
    if hf.model_type not in TUNABLE_TYPES:
        raise SettingError("train.text_encoder_finetune", n,
                           f"0 for the text encoder {spec}, a {hf.model_type!r} model (fine-tuning supports "
                           f"model_type {', '.join(sorted(TUNABLE_TYPES))}, MiniLM is one)", "train.text_encoder")
    if n > int(hf.num_hidden_layers):
        raise SettingError("train.text_encoder_finetune", n,
                           f"at most the {hf.num_hidden_layers} layers the text encoder {spec} has (0: frozen)",
                           "train.text_encoder")


@torch.no_grad()
def lower_states(encoder, texts: list[str], first: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, L, D) float16 token states at the input of layer `first` (the embeddings for 0) and (N,) int64
    lengths, from the frozen embeddings and layers 0 .. first-1, in length-sorted batches as `encode` runs.
    L is the longest transcript's token count (<= the encoder's max_length)."""
    key = (json.dumps(encoder.record(), sort_keys=True), int(first),
           hashlib.sha256("\x1f".join(texts).encode()).hexdigest())
    hit = _TOKEN_CACHE.pop(key, None)
    if hit is None:
        hit = _lower_states(encoder, texts, first, where)
        if len(_TOKEN_CACHE) >= _CACHE_LIMIT:
            _TOKEN_CACHE.pop(next(iter(_TOKEN_CACHE)))
    _TOKEN_CACHE[key] = hit  # least recently used first
    return hit


def _lower_states(encoder, texts: list[str], first: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    text_bert = encoder.tokenize(texts, where)  # (N, 3, L) ids, mask, segments; checks the texts
    model = encoder.model
    lengths = text_bert[:, 1].sum(axis=1).astype(np.int64)
    n, width_all, dim = len(texts), int(lengths.max()), encoder.hidden_size
    out = np.zeros((n, width_all, dim), np.float16)
    order = np.argsort(-lengths, kind="stable")
    for start in range(0, n, encoder.config.batch_size):
        rows = order[start : start + encoder.config.batch_size]
        width = int(lengths[rows].max())
        tb = torch.from_numpy(text_bert[rows, :, :width])
        h = model.embeddings(input_ids=tb[:, 0], token_type_ids=tb[:, 2])
        mask = _additive_mask(torch.from_numpy(lengths[rows]), width, h.dtype)
        for layer in model.encoder.layer[:first]:
            h = _layer_output(layer(h, attention_mask=mask))
        h = h * tb[:, 1].unsqueeze(-1).to(h.dtype)  # exactly 0 after each true length
        out[rows, :width] = h.float().numpy().astype(np.float16)
    return out, lengths


def add_text_tokens(dataset: MERDataset, encoder, first: int) -> MERDataset:
    """A dataset whose splits carry `text_tokens` / `text_token_lengths` from `encoder`'s frozen lower layers
    (layers 0 .. first-1) run on their transcripts. Everything else is shared, not copied."""
    splits = {}
    for name, split in dataset.splits.items():
        where = f"file {dataset.source} split {name} key raw_text"
        if split.raw_text is None:
            raise AffectusError(f"{where}: missing; fine-tuning the text encoder needs the transcripts")
        tokens, lengths = lower_states(encoder, list(split.raw_text), first, where)
        splits[name] = replace(split, text_tokens=tokens, text_token_lengths=lengths)
    return MERDataset(splits=splits, source=dataset.source, sanitised=dict(dataset.sanitised))


def split_tokens(split: Split, encoder, first: int, where: str) -> Split:
    """One split with its `text_tokens` (a new file's, at prediction time)."""
    tokens, lengths = lower_states(encoder, list(split.raw_text), first, where)
    return replace(split, text_tokens=tokens, text_token_lengths=lengths)


def finetune_record(encoder, n: int) -> dict[str, Any]:
    """run.json's `text_inputs.finetune`: how many top layers were tuned, from which layer, and their config."""
    return {"layers": int(n), "first": encoder_layers(encoder) - int(n), "pooling": encoder.config.pooling,
            "normalize": bool(encoder.config.normalize), "hf_config": encoder.hf_config.to_dict()}


def check_finetune_record(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict) or not {"layers", "first", "pooling", "normalize", "hf_config"} <= set(record):
        raise AffectusError(f"{where}: text_inputs.finetune: expected layers, first, pooling, normalize and "
                            f"hf_config, got {record!r:.200}")
    layers, first = record["layers"], record["first"]
    for key, value, low in (("layers", layers, 1), ("first", first, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise AffectusError(f"{where}: text_inputs.finetune.{key} {value!r} is not a whole number >= {low}")
    if record["pooling"] not in ("mean", "cls") or not isinstance(record["normalize"], bool):
        raise AffectusError(f"{where}: text_inputs.finetune: pooling {record['pooling']!r} / normalize "
                            f"{record['normalize']!r} are not mean|cls / true|false")
    if not isinstance(record["hf_config"], dict) or record["hf_config"].get("model_type") not in TUNABLE_TYPES:
        raise AffectusError(f"{where}: text_inputs.finetune.hf_config is not a BERT config")
    return record


class TextTuner(nn.Module):
    """The encoder's top layers (fine-tuned) and its pooling: (B, W, D) token states -> (B, D) sentence vectors."""

    def __init__(self, hf_config: Any, layers: int, pooling: str = "mean", normalize: bool = True) -> None:
        super().__init__()
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertLayer

        config = hf_config if not isinstance(hf_config, dict) else BertConfig.from_dict(hf_config)
        if getattr(config, "_attn_implementation", None) is None:
            config._attn_implementation = "sdpa"  # as from_pretrained picks on CPU; a standalone layer has none
        self.pooling, self.normalize = pooling, normalize
        self.dim = int(config.hidden_size)
        self.bert = nn.ModuleList([BertLayer(config) for _ in range(layers)])  # "bert": BERT's own lr and decay

    @classmethod
    def from_encoder(cls, encoder, n: int) -> TextTuner:
        """The encoder's last `n` layers, copied (the encoder itself stays frozen and untouched)."""
        tuner = cls(encoder.model.config, n, encoder.config.pooling, encoder.config.normalize)
        first = encoder_layers(encoder) - n
        for mine, theirs in zip(tuner.bert, encoder.model.encoder.layer[first:]):
            mine.load_state_dict(theirs.state_dict())
        return tuner

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TextTuner:
        return cls(record["hf_config"], record["layers"], record["pooling"], record["normalize"])

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = tokens.to(torch.float32)
        width = h.shape[1]
        mask = _additive_mask(lengths, width, h.dtype)
        for layer in self.bert:
            h = _layer_output(layer(h, attention_mask=mask))
        keep = (torch.arange(width, device=h.device)[None, :] < lengths[:, None]).to(h.dtype)  # (B, W)
        if self.pooling == "cls":
            v = h[:, 0]
        else:
            v = (h * keep.unsqueeze(-1)).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
        return nn.functional.normalize(v, dim=-1) if self.normalize else v

    def replace_text(self, batch):
        """`batch` with its transcript columns (the first D of `text`, at every step) computed by the tuned
        layers; samples whose text is absent (length 0, or marked absent) keep theirs (zeros)."""
        if batch.text_tokens is None:
            has_text = batch.text_lengths > 0
            if batch.available is not None:
                has_text = has_text & batch.available[:, 0]
            if not bool(has_text.any()):
                return batch  # no transcript to encode (every sample's text absent): nothing to replace
            raise AffectusError("the run fine-tunes its text encoder (train.text_encoder_finetune), which reads "
                                "the transcripts: give a file (a Split with raw_text), not feature arrays")
        vec = self(batch.text_tokens, batch.text_token_lengths)  # (B, D)
        text = batch.text
        present = (batch.text_lengths > 0) & (batch.text_token_lengths > 0)
        if batch.available is not None:
            present = present & batch.available[:, 0]
        own = torch.where(present[:, None], vec.to(text.dtype), text[:, 0, : self.dim])
        own = own[:, None, :].expand(-1, text.shape[1], -1)
        return replace(batch, text=torch.cat([own, text[:, :, self.dim :]], dim=2))


def _pre_hook(module: nn.Module, args: tuple) -> tuple:
    if not args:
        return args
    return (getattr(module, TUNER).replace_text(args[0]), *args[1:])


def attach(model: nn.Module, tuner: TextTuner) -> nn.Module:
    """Give `model` the tuner: a submodule (its weights are saved and loaded with the model's) and a forward
    pre-hook that hands `forward` the batch with the tuned transcript vectors."""
    model.add_module(TUNER, tuner)
    model.register_forward_pre_hook(_pre_hook)
    return model
