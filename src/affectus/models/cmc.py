"""CMC: Calibrated Multimodal Consensus (paper section III; authors' details in docs/model.md).

Stage 1 (`unimodal_forward`): per modality, encoder f_k (eqs. 1-4) -> head p_k (eqs. 5-6), held
together as one submodule `branches[k]` (an `UnimodalBranch`), so EMA copies and freezing act on it.
Stage 2 (`forward`): h = [h_t, h_a, h_v] -> PFM (eqs. 10, 31-33) -> heads (eq. 11) -> router
weights on the sum of the fused vectors (MCR, eqs. 12-13, 34-35) -> weighted sum of logits (eq. 14).

The text encoder reads pre-extracted features (`batch.text`) or, with text_input="bert", the last
hidden state of a Hugging Face `BertModel` run on `batch.text_bert` (ids, mask, segment ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import AffectusError, SettingError
from affectus.models.attention import KERNELS, AttentionKernel
from affectus.models.layers import ConsensusRouter, ResidualHead, UnimodalEncoder, check_dims, pfm
from affectus.models.output import ModelOutput
from affectus.models.registry import (
    Capabilities,
    check_model_config,
    non_bert_parameter_count,
    register_model,
)


@dataclass
class CMCConfig:
    # Input feature size per modality (the default is CMU-MOSI's: BERT 768, COVAREP 5, Facet 20).
    # With text_input="bert" the text size is BERT's hidden size instead.
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    d: int = 32  # shared width
    layers: int = 2  # Transformer layers per encoder (Table III)
    heads: int = 4  # attention heads (Table III)
    ff: int = 128  # feed-forward width
    attn_dropout: float = 0.1  # dropout inside the encoders (fixed in the authors' code)
    output_dropout: float = 0.5  # dropout in the heads (Table III "output dropout")
    tau: float = 0.07  # PFM temperature (eq. 32)
    use_pfm: bool = True  # False: the paper's "w/o PFM"
    use_router: bool = True  # False: unweighted mean of the per-modality logits ("w/o MCR")
    router_topk: int = 3  # 3 = dense softmax weights
    padding: Literal["faithful", "masked"] = "faithful"
    # Faithful mode only: compute a run of identical padding rows once (exact without dropout; see
    # docs/model.md for the training-noise difference). False: every padded step, as the authors.
    compact_padding: bool = True
    # Attention kernel of the encoders (models/attention.py): "fast" (our CPU dropout kernel) or
    # "torch" (F.scaled_dot_product_attention throughout); the same function, see docs/model.md.
    attention: AttentionKernel = "fast"
    # BatchNorm on the text features too. Off, as the paper (BERT states need none, eq. 2); worth
    # switching on for handcrafted / CNN text features whose scale is arbitrary.
    text_batchnorm: bool = False
    # cmc_avail: PFM fuses the present modalities only and the router's softmax ignores absent ones
    # (weight exactly 0), read from `batch.available`. False: the paper's CMC, blind to availability.
    mask_absent: bool = False
    text_input: Literal["features", "bert"] = "features"
    bert_path: str | None = None  # local directory, or a cached model name (local_files_only)
    bert_finetune: bool = True
    num_classes: int = 3

    def validate(self) -> None:
        """Ranges a type cannot say, checked before anything is written (resolve_config calls it)."""
        check_model_config(self, sizes=("d", "layers", "heads", "ff"))
        if not self.tau > 0:
            raise SettingError("model.tau", self.tau, "a temperature > 0 (eq. 32 divides by it)")
        if not 1 <= self.router_topk <= 3:
            raise SettingError("model.router_topk", self.router_topk, "1, 2 or 3 (of the three modalities)")


class CMC(nn.Module):
    def __init__(self, config: CMCConfig, bert_config: Any | None = None) -> None:
        """`bert_config` (a `transformers.BertConfig`) builds a randomly initialised BERT instead of
        loading `config.bert_path`: for tests and for checkpoints whose weights hold BERT's."""
        super().__init__()
        check_dims("cmc", config.dims)
        if config.text_input not in ("features", "bert"):
            raise AffectusError(f"cmc text_input must be 'features' or 'bert', got {config.text_input!r}")
        if config.attention not in KERNELS:
            raise AffectusError(f"cmc attention must be one of {', '.join(KERNELS)}, got {config.attention!r}")
        self.config = config
        bert: nn.Module | None = None
        in_dims = {m: int(config.dims[m]) for m in MODALITIES}
        if config.text_input == "bert":
            bert = _load_bert(config.bert_path, bert_config)
            in_dims["text"] = int(bert.config.hidden_size)
            if not config.bert_finetune:
                bert.requires_grad_(False)
        encoders = {
            m: UnimodalEncoder(
                in_dims[m],
                d=config.d,
                layers=config.layers,
                heads=config.heads,
                ff=config.ff,
                dropout=config.attn_dropout,
                batchnorm=m != "text" or config.text_batchnorm,  # eq. 2: BERT features need no BatchNorm
                padding=config.padding,
                compact=config.compact_padding,
                attention=config.attention,
            )
            for m in MODALITIES
        }
        # Heads are built after all encoders: the order the random initialisation has always had.
        heads = {m: ResidualHead(config.d, config.num_classes, config.output_dropout) for m in MODALITIES}
        self.branches = nn.ModuleDict(
            {m: UnimodalBranch(encoders[m], heads[m], bert if m == "text" else None) for m in MODALITIES}
        )
        self.router = ConsensusRouter(config.d, len(MODALITIES), config.router_topk)

    @property
    def bert(self) -> nn.Module | None:
        """BERT, when the text is read through it; it belongs to the text branch (part of f_t)."""
        return self.branches["text"].bert

    # -- encoders -------------------------------------------------------------------------------
    def _text_features(self, batch: Batch) -> torch.Tensor:
        if self.bert is None:
            return batch.text.float()  # (B, Lt, Dt)
        if batch.text_bert is None:
            raise AffectusError("cmc with text_input='bert' needs batch.text_bert (ids, mask, segment ids)")
        tb = batch.text_bert.long()  # MMSA stores it as float64: (B, 3, L)
        with torch.set_grad_enabled(self.config.bert_finetune and torch.is_grad_enabled()):
            out = self.bert(input_ids=tb[:, 0], attention_mask=tb[:, 1], token_type_ids=tb[:, 2])
        return out.last_hidden_state  # (B, L, hidden)

    def embed(self, batch: Batch) -> torch.Tensor:
        """L2-normalised utterance vectors h_t, h_a, h_v (eq. 4): (B, 3, d)."""
        hs = []
        for m in MODALITIES:
            x = self._text_features(batch) if m == "text" else getattr(batch, m).float()  # (B, L, D)
            encoder = self.branches[m].encoder
            if x.dim() != 3 or x.shape[-1] != encoder.proj.in_channels:
                raise AffectusError(
                    f"cmc expects {m} features (B, L, {encoder.proj.in_channels}), got {tuple(x.shape)}"
                )
            hs.append(encoder(x, batch.lengths(m)))  # (B, d)
        return torch.stack(hs, dim=1)  # (B, 3, d)

    def _head_logits(self, h: torch.Tensor) -> torch.Tensor:
        """p_k applied to row k of h: (B, 3, d) -> (B, 3, C) (eqs. 5-6, 11)."""
        return torch.stack([self.branches[m].head(h[:, k]) for k, m in enumerate(MODALITIES)], dim=1)

    # -- the two stages ---------------------------------------------------------------------------
    def unimodal_forward(self, batch: Batch) -> ModelOutput:
        """Stage 1: each head on its own modality's h_k (eq. 5), no PFM, no router."""
        h = self.embed(batch)  # (B, 3, d)
        logits = self._head_logits(h)  # (B, 3, C)
        return ModelOutput(logits=logits.mean(dim=1), modality_logits=logits, embeddings=h)

    def forward(self, batch: Batch) -> ModelOutput:
        """Stage 2: PFM -> per-modality logits (eq. 11) -> router (eq. 13) -> fused logits (eq. 14)."""
        h = self.embed(batch)  # (B, 3, d), eq. 10
        avail = self._present(batch)  # (B, 3) bool, None unless mask_absent
        fused = pfm(h, self.config.tau, avail) if self.config.use_pfm else h  # (B, 3, d)
        logits = self._head_logits(fused)  # eq. 11: (B, 3, C)
        if self.config.use_router:
            w = self.router(fused, avail)  # (B, 3)
        elif avail is None:
            w = torch.full(logits.shape[:2], 1.0 / len(MODALITIES), dtype=logits.dtype, device=logits.device)
        else:  # "w/o MCR" over the present modalities: their plain mean
            w = avail.to(logits.dtype) / avail.sum(dim=1, keepdim=True).to(logits.dtype)
        final = (w.unsqueeze(-1) * logits).sum(dim=1)  # eq. 14: (B, C)
        return ModelOutput(logits=final, modality_logits=logits, router_weights=w, embeddings=h)

    def _present(self, batch: Batch) -> torch.Tensor | None:
        """Which modalities fusion may read, (B, 3) bool: None (all) unless `mask_absent`. A sample
        marked with none present (never produced by data/missing.py) is read as fully present."""
        if not self.config.mask_absent or batch.available is None:
            return None
        avail = batch.available.to(batch.index.device).bool()
        return avail | ~avail.any(dim=1, keepdim=True)

    # -- size ---------------------------------------------------------------------------------------
    def non_bert_parameter_count(self) -> int:
        """The paper's "Size" (Table IV): every parameter outside BERT."""
        return non_bert_parameter_count(self)


class UnimodalBranch(nn.Module):
    """One modality's unimodal model: encoder f_k (eqs. 1-4) and head p_k (eqs. 5-6), plus BERT for
    text read through it (BERT is part of f_t; the authors' EMA text model includes it). Stage 1 keeps
    an EMA copy of each branch (eq. 29); CMC-variant freezes them all. Called piecewise by `CMC`."""

    def __init__(self, encoder: UnimodalEncoder, head: ResidualHead, bert: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.bert = bert  # None registers nothing


def _load_bert(path: str | None, bert_config: Any | None) -> nn.Module:
    """BERT without its pooler (CMC reads the last hidden state only)."""
    if bert_config is None and not path:
        raise AffectusError("text_input='bert' needs bert_path (a local directory or a cached model name)")
    try:
        from transformers import BertModel  # heavy: imported only for text_input="bert"
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise AffectusError("text_input='bert' needs transformers: pip install 'affectus[bert]'") from exc
    if bert_config is not None:
        return BertModel(bert_config, add_pooling_layer=False)
    try:
        return BertModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False)
    except (OSError, ValueError) as exc:  # missing files; a path that is not a valid model name
        raise AffectusError(f"cannot load BERT from {path!r} (local files only): {exc}") from exc


def _feature_text(values: dict[str, Any]) -> dict[str, Any]:
    """The config with BERT's text path replaced by 768-d text features (BERT-base's hidden size): the
    same non-BERT layers, for counting them without loading BERT."""
    return {**values, "text_input": "features", "dims": {**values["dims"], "text": 768}}


def capabilities(config: CMCConfig) -> Capabilities:
    return Capabilities(reads_transcripts=config.text_input == "bert", feature_text=_feature_text,
                        router=config.use_router, unimodal_heads=True, sequence_masks=config.padding == "masked",
                        extra_forward=("unimodal_forward",), excludes_absent=config.mask_absent)


@register_model("cmc", CMCConfig, "Calibrated Multimodal Consensus (CMC)", recipe="affectus.training.recipes.cmc:CMCRecipe",
                variants="cmc.yaml", report_sections=("temperature", "plgm_flips", "router"), capabilities=capabilities,
                family="seed", paper="Zhong et al., Calibrating Multimodal Consensus for Emotion Recognition, 2025")
def build(config: CMCConfig, bert_config: Any | None = None) -> CMC:
    return CMC(config, bert_config=bert_config)
