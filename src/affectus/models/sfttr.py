"""SFTTR (Kaiwei Sun and Mi Tian, COLING 2025, "Sequential Fusion of Text-close and Text-far Representations
for Multimodal Sentiment Analysis", pp. 40-49): the network, after the authors' code (github.com/Mi7914/SFTTR,
`SFTTR/MOSI/model/net/constrastive/TVA_fusion.py`). Its training (unimodal pretraining, then the fusion stage
with the contrastive loss that makes the two streams text-close and text-far) is
`training/recipes/sfttr.py`; docs/baselines/sfttr.md gives every setting's source.

forward(batch):
1. Unimodal encoders. Audio / vision: Linear to d, a learned [CLS] token and learned positions, dropout, a
   post-norm Transformer encoder (GELU, key padding masked), LayerNorm, mean over the [CLS] and the valid
   steps -> (B, d). Text: the mean of the data's per-token features over the true length (the authors take
   a BERT pooler output, fine-tuned in their pretraining and frozen in fusion; here the features are
   precomputed, like a frozen BERT).
2. Two projections per modality (LayerNorm, Linear to h = d / 2, tanh, dropout): the text-close
   representation ("similarity" projection, c_m) and the text-far one ("dissimilarity" projection, f_m).
   They become text-close / text-far through the recipe's contrastive loss: c_audio and c_vision are pulled
   toward c_text, and f_text, f_audio, f_vision are pushed away from it.
3. The sequential cross-modal encoder, three BERT-style encoders (token + position + token-type embeddings,
   post-norm self-attention layers) run one after the other:
     stage 1 (va):  [f_audio, f_vision]                      -> 2 tokens
     stage 2 (vat): [f_text, stage-1 tokens]                 -> 3 tokens
     stage 3 (pc):  [stage-2 tokens, c_text + c_audio + c_vision] -> 4 tokens
   The text-far streams are fused first, the text-close sum joins last; the mean of the 4 tokens goes to
   an MLP decoder (h -> 2h -> h -> h/2 -> h/4 -> C, GELU).

An absent modality arrives zero-filled with length 0: the text mean reads one zero step, an audio / vision
encoder attends to its [CLS] only; its zeros still sway the verdict, as the seeds score it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import SettingError
from affectus.models.late_fusion import masked_mean
from affectus.models.layers import check_dims
from affectus.models.output import ModelOutput
from affectus.models.registry import check_model_config, register_model
from affectus.models.tfn import check_features

ORDERS = ("far_first", "close_first")
SEQUENCE = ("audio", "vision")  # the modalities with a trained sequence encoder


@dataclass
class SFTTRConfig:
    # Input feature size per modality (default: CMU-MOSI's BERT 768 / COVAREP 5 / Facet 20); set from data.
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    # Official SFTTR/MOSI/config.py, MOSI.downStream:
    d: int = 768  # encoder_fea_dim: audio / vision encoder width (h = d / 2 = hidden_size 384 in fusion)
    encoder_heads: int = 8  # vision_nhead / audio_nhead
    encoder_layers: int = 2  # vision_tf_num_layers / audio_tf_num_layers
    encoder_ff: int = 768  # dim_feedforward (the encoders pass encoder_fea_dim)
    encoder_dropout: float = 0.5  # vision_drop_out / audio_drop_out (embeddings and encoder layers)
    # learned positions: audio_seq_len 375, video_seq_len 500 (longer inputs keep their first steps)
    max_steps: dict[str, int] = field(default_factory=lambda: {"audio": 375, "vision": 500})
    close_dropout: float = 0.3  # common_feature_extractor's dropout (text-close projections)
    far_dropout: float = 0.5  # private_feature_extractor's dropout (text-far projections)
    heads: int = 8  # num_attention_heads of the cross-modal encoders
    layers: int = 2  # num_hidden_layers of each cross-modal encoder
    cross_ff: int = 256  # intermediate_size
    cross_dropout: float = 0.1  # hidden_dropout_prob (embeddings, attention output, feed-forward output)
    cross_attn_dropout: float = 0.1  # attention_probs_dropout_prob
    cross_positions: int = 240  # max_position_embeddings
    # Ours: "far_first" is the authors' order; "close_first" swaps the streams' places (text-close
    # representations fused in stages 1-2, the text-far sum last), an ablation of the sequential order.
    fusion_order: str = "far_first"
    num_classes: int = 3  # the scheme's classes (the authors regress one score)

    def validate(self) -> None:
        check_model_config(self, sizes=("d", "encoder_heads", "encoder_layers", "encoder_ff", "heads", "layers",
                                        "cross_ff", "cross_positions"))
        if self.d % 2 or self.d % self.encoder_heads:
            raise SettingError("model.d", self.d, f"an even multiple of model.encoder_heads = {self.encoder_heads}")
        if (self.d // 2) % self.heads:
            raise SettingError("model.heads", self.heads, f"a divisor of model.d / 2 = {self.d // 2}", "model.d")
        if self.d // 2 < 4:
            raise SettingError("model.d", self.d, "at least 8 (the decoder narrows to d / 8)")
        if self.fusion_order not in ORDERS:
            raise SettingError("model.fusion_order", self.fusion_order, " or ".join(ORDERS))
        if set(self.max_steps) != set(SEQUENCE) or any(int(v) < 1 for v in self.max_steps.values()):
            raise SettingError("model.max_steps", self.max_steps, "a positive integer for audio and vision")


@dataclass
class SFTTRParts:
    """What the recipe's losses read (forward returns the `ModelOutput` view of it)."""

    logits: torch.Tensor  # (B, C)
    encoded: dict[str, torch.Tensor]  # per modality, the encoder output (B, D_m): partner retrieval
    close: torch.Tensor  # (B, 3, h) text-close representations, text / audio / vision
    far: torch.Tensor  # (B, 3, h) text-far representations


class SequenceEncoder(nn.Module):
    """Audio / vision encoder: x (B, T, D), lengths -> (B, d)."""

    def __init__(self, dim: int, c: SFTTRConfig, max_steps: int) -> None:
        super().__init__()
        self.max_steps = max_steps
        self.proj = nn.Linear(dim, c.d)
        self.cls = nn.Parameter(torch.ones(1, 1, c.d))  # the authors initialise the [CLS] token to ones
        self.positions = nn.Parameter(torch.zeros(1, max_steps + 1, c.d))  # learned, zero-initialised
        self.drop = nn.Dropout(c.encoder_dropout)
        layer = nn.TransformerEncoderLayer(c.d, c.encoder_heads, c.encoder_ff, c.encoder_dropout, activation="gelu",
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, c.encoder_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.d)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = x[:, : self.max_steps]
        b, steps, _ = x.shape
        lengths = lengths.to(x.device).long().clamp(min=0, max=steps)
        valid = torch.arange(steps, device=x.device)[None, :] < lengths[:, None]  # (B, T)
        valid = torch.cat([valid.new_ones(b, 1), valid], dim=1)  # the [CLS] is always valid
        h = torch.cat([self.cls.expand(b, -1, -1), self.proj(x)], dim=1) + self.positions[:, : steps + 1]
        h = self.norm(self.encoder(self.drop(h), src_key_padding_mask=~valid))
        w = valid.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(1) / w.sum(1)  # mean over the [CLS] and the valid steps


class CrossEncoder(nn.Module):
    """One stage of the sequential cross-modal encoder: BERT-style embeddings (input + position + token
    type, LayerNorm, dropout) and post-norm self-attention layers over a few tokens. (B, N, h), types (N,)."""

    def __init__(self, c: SFTTRConfig) -> None:
        super().__init__()
        h = c.d // 2
        self.positions = nn.Embedding(c.cross_positions, h)
        self.types = nn.Embedding(2, h)
        self.norm = nn.LayerNorm(h, eps=1e-12)
        self.drop = nn.Dropout(c.cross_dropout)
        self.attn = nn.ModuleList(nn.MultiheadAttention(h, c.heads, dropout=c.cross_attn_dropout, batch_first=True)
                                  for _ in range(c.layers))
        self.norm_attn = nn.ModuleList(nn.LayerNorm(h, eps=1e-12) for _ in range(c.layers))
        self.ff_in = nn.ModuleList(nn.Linear(h, c.cross_ff) for _ in range(c.layers))
        self.ff_out = nn.ModuleList(nn.Linear(c.cross_ff, h) for _ in range(c.layers))
        self.norm_ff = nn.ModuleList(nn.LayerNorm(h, eps=1e-12) for _ in range(c.layers))

    def forward(self, x: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[1], device=x.device)
        x = self.drop(self.norm(x + self.positions(pos)[None] + self.types(types.to(x.device))[None]))
        for attn, n1, f_in, f_out, n2 in zip(self.attn, self.norm_attn, self.ff_in, self.ff_out, self.norm_ff):
            a, _ = attn(x, x, x, need_weights=False)
            x = n1(x + self.drop(a))
            x = n2(x + self.drop(f_out(F.gelu(f_in(x)))))
        return x


def _projection(dim: int, h: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, h), nn.Tanh(), nn.Dropout(dropout))


def mlp(sizes: list[int], out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], out))


class SFTTR(nn.Module):
    def __init__(self, config: SFTTRConfig) -> None:
        super().__init__()
        check_dims("sfttr", config.dims)
        config.validate()
        self.config = c = config
        d, h = c.d, c.d // 2
        dims = {m: int(c.dims[m]) for m in MODALITIES}
        self.encoders = nn.ModuleDict({m: SequenceEncoder(dims[m], c, int(c.max_steps[m])) for m in SEQUENCE})
        widths = {"text": dims["text"], "audio": d, "vision": d}
        self.close = nn.ModuleDict({m: _projection(widths[m], h, c.close_dropout) for m in MODALITIES})
        self.far = nn.ModuleDict({m: _projection(widths[m], h, c.far_dropout) for m in MODALITIES})
        self.stages = nn.ModuleDict({s: CrossEncoder(c) for s in ("va", "vat", "pc")})
        self.decoder = mlp([h, 2 * h, h, h // 2, h // 4], c.num_classes)  # the authors' TVA_decoder
        for name, types in (("va", [0, 1]), ("vat", [0, 1, 1]), ("pc", [0, 0, 0, 1])):
            self.register_buffer(f"types_{name}", torch.tensor(types), persistent=False)

    def encode(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Each modality's encoder output: text (B, Dt), audio / vision (B, d)."""
        check_features("sfttr", batch, self.config.dims)
        out = {"text": masked_mean(batch.text.float(), batch.text_lengths)}
        for m in SEQUENCE:
            out[m] = self.encoders[m](getattr(batch, m).float(), batch.lengths(m))
        return out

    def fuse(self, close: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
        """The sequential cross-modal encoder: close, far (B, 3, h) in text / audio / vision order -> (B, h)."""
        if self.config.fusion_order == "close_first":
            close, far = far, close
        va = self.stages["va"](far[:, [1, 2]], self.types_va)  # [f_audio, f_vision]
        vat = self.stages["vat"](torch.cat([far[:, :1], va], dim=1), self.types_vat)  # [f_text, va]
        common = close.sum(dim=1, keepdim=True)  # c_text + c_audio + c_vision
        return self.stages["pc"](torch.cat([vat, common], dim=1), self.types_pc).mean(dim=1)

    def parts(self, batch: Batch) -> SFTTRParts:
        encoded = self.encode(batch)
        close = torch.stack([self.close[m](encoded[m]) for m in MODALITIES], dim=1)  # (B, 3, h)
        far = torch.stack([self.far[m](encoded[m]) for m in MODALITIES], dim=1)
        logits = self.decoder(self.fuse(close, far))
        return SFTTRParts(logits=logits, encoded=encoded, close=close, far=far)

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.parts(batch).logits)


@register_model("sfttr", SFTTRConfig,
                "SFTTR: sequential fusion of text-close and text-far representations (Sun & Tian 2025)",
                recipe="affectus.training.recipes.sfttr:SFTTRRecipe",
                variants={"default": {"description": "the authors' order: text-far streams first, text-close last",
                                      "overrides": {}},
                          "close_first": {"description": "ablation: the streams' places swapped",
                                          "overrides": {"model.fusion_order": "close_first"}}},
                paper="Sun and Tian, Sequential Fusion of Text-close and Text-far Representations for Multimodal "
                      "Sentiment Analysis, COLING 2025")
def build(config: SFTTRConfig) -> SFTTR:
    return SFTTR(config)
