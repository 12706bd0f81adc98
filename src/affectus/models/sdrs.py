"""SDRS: Sentiment-aware Disentangled Representation Shifting (Zhao et al., IEEE Trans. Affective
Computing 2025, "SDRS: Sentiment-Aware Disentangled Representation Shifting for Multimodal Sentiment
Analysis"), the CMC paper's baseline [36].

Neither the authors' code nor the paper's text is public (searched: docs/baselines/sdrs.md); this is
built from the published abstract, and every choice it leaves open is ours, named here and in the doc:

1. Each modality is projected to a common width d (a per-step linear map on zeroed padding).
2. "Interactive sentiment-aware representation disentanglement" (abstract): for each nonverbal
   modality m (audio, vision) a cross-attention autoencoder: m's steps query the other two modalities'
   steps (the "contextual influence of other modalities"; a `mult.Transformer` crossmodal stack), and
   two linear heads split the result into a sentiment-specific part z_m^s and a sentiment-irrelevant
   part z_m^i; a decoder reconstructs m's projected input from [z_m^s; z_m^i].
3. The specific part predicts the label (a linear head on its masked mean: `specific_logits`); the
   recipe pushes the irrelevant part away from it (orthogonality of the pooled parts) and from the label
   (an adversary behind gradient reversal). Text is not decomposed (the abstract decomposes the
   nonverbal modalities and shifts the text with them).
4. "Attentive cross-modal representation shifting": the specific parts, projected into the text token
   space, are attended to by every text step; a sigmoid gate on [h_t; u] scales the attended shift u,
   and h_t + g * u (LayerNorm) is the shifted text.
5. The shifted text is read by a self-attention transformer (the paper fine-tunes a pre-trained
   language model on the shifted tokens; here the text arrives as features, as for every other model,
   so a trainable transformer stands in) and a residual head on its masked mean gives C logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from torch import nn

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.models.dmd import ResidualBlock
from affectus.models.late_fusion import masked_mean
from affectus.models.layers import check_dims
from affectus.models.mult import Transformer
from affectus.models.output import ModelOutput
from affectus.models.registry import Capabilities, check_model_config, register_model
from affectus.models.tfn import check_features

NONVERBAL = ("audio", "vision")


@dataclass
class SDRSConfig:
    # Input feature size per modality (default: CMU-MOSI's 768 / 5 / 20); set from data.
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    # SDRS's sizes are not public. d and dropout: MMSA's MISA / MOSI (hidden_size 128, dropout 0.2), the
    # nearest public disentangling baseline; depths and heads: ours, small enough for CPU runs.
    d: int = 128
    heads: int = 4
    ae_layers: int = 1  # crossmodal layers of each cross-attention autoencoder's encoder
    layers: int = 2  # the text transformer that reads the shifted tokens (stands in for the PLM)
    dropout: float = 0.2  # attention, feed-forward and residual dropout inside the transformers, and the head
    embed_dropout: float = 0.1  # on each transformer's scaled input (as our MulT)
    num_classes: int = 3

    def validate(self) -> None:
        check_model_config(self, sizes=("d", "heads", "ae_layers", "layers"))


@dataclass
class SDRSParts:
    """What SDRS's losses read (training/recipes/sdrs.py); dicts are keyed by the nonverbal modalities."""

    logits: torch.Tensor  # (B, C) from the shifted text
    origin: dict[str, torch.Tensor]  # (B, L, d) projected input
    recon: dict[str, torch.Tensor]  # (B, L, d) the autoencoder's reconstruction of it
    pads: dict[str, torch.Tensor]  # (B, L) True at padding
    specific: dict[str, torch.Tensor]  # (B, d) masked mean of z^s
    irrelevant: dict[str, torch.Tensor]  # (B, d) masked mean of z^i
    specific_logits: dict[str, torch.Tensor]  # (B, C) the label predicted from z^s alone
    gate: torch.Tensor  # (B, Lt, d) the shift gate, for inspection


class SDRS(nn.Module):
    def __init__(self, config: SDRSConfig) -> None:
        super().__init__()
        check_dims("sdrs", config.dims)
        config.validate()
        c = config
        self.config = c
        d = c.d
        drop = SimpleNamespace(attn_dropout=c.dropout, relu_dropout=c.dropout, res_dropout=c.dropout,
                               embed_dropout=c.embed_dropout)
        self.proj = nn.ModuleDict({m: nn.Linear(int(c.dims[m]), d, bias=False) for m in MODALITIES})
        self.context = nn.ModuleDict({m: Transformer(d, c.heads, c.ae_layers, True, drop) for m in NONVERBAL})
        self.to_specific = nn.ModuleDict({m: nn.Linear(d, d) for m in NONVERBAL})
        self.to_irrelevant = nn.ModuleDict({m: nn.Linear(d, d) for m in NONVERBAL})
        self.decoder = nn.ModuleDict({m: nn.Linear(2 * d, d) for m in NONVERBAL})
        self.specific_head = nn.ModuleDict({m: nn.Linear(d, c.num_classes) for m in NONVERBAL})
        self.to_token_space = nn.ModuleDict({m: nn.Linear(d, d) for m in NONVERBAL})
        self.shift_attn = nn.MultiheadAttention(d, c.heads, dropout=c.dropout, batch_first=True)
        self.shift_gate = nn.Linear(2 * d, d)
        self.shift_norm = nn.LayerNorm(d)
        self.text_encoder = Transformer(d, c.heads, c.layers, False, drop)
        self.head = ResidualBlock(d, c.num_classes, c.dropout)

    def disentangle_forward(self, batch: Batch) -> SDRSParts:
        check_features("sdrs", batch, self.config.dims)
        h, pads, lengths = {}, {}, {}
        for m in MODALITIES:
            x = getattr(batch, m).float()
            steps = x.shape[1]
            lengths[m] = batch.lengths(m).to(x.device).long().clamp(min=1, max=steps)
            pads[m] = torch.arange(steps, device=x.device)[None, :] >= lengths[m][:, None]
            h[m] = self.proj[m](x.masked_fill(pads[m][..., None], 0.0))  # (B, L, d)
        spec_seq, recon, specific, irrelevant, spec_logits, tokens, token_pads = {}, {}, {}, {}, {}, [], []
        for m in NONVERBAL:
            others = [o for o in MODALITIES if o != m]
            ctx = torch.cat([h[o] for o in others], dim=1)
            ctx_pad = torch.cat([pads[o] for o in others], dim=1)
            e = self.context[m](h[m], pads[m], ctx, ctx_pad)  # (B, Lm, d): m read in the others' context
            z_s, z_i = self.to_specific[m](e), self.to_irrelevant[m](e)
            spec_seq[m] = z_s
            recon[m] = self.decoder[m](torch.cat([z_s, z_i], dim=-1))
            specific[m] = masked_mean(z_s, lengths[m])
            irrelevant[m] = masked_mean(z_i, lengths[m])
            spec_logits[m] = self.specific_head[m](specific[m])
            tokens.append(self.to_token_space[m](z_s))
            token_pads.append(pads[m])
        keys = torch.cat(tokens, dim=1)  # (B, La + Lv, d): specific parts in the text token space
        shift, _ = self.shift_attn(h["text"], keys, keys, key_padding_mask=torch.cat(token_pads, dim=1),
                                   need_weights=False)  # (B, Lt, d)
        gate = torch.sigmoid(self.shift_gate(torch.cat([h["text"], shift], dim=-1)))
        shifted = self.shift_norm(h["text"] + gate * shift)
        encoded = self.text_encoder(shifted, pads["text"])  # (B, Lt, d)
        _, _, logits = self.head(masked_mean(encoded, lengths["text"]))
        return SDRSParts(logits=logits, origin={m: h[m] for m in NONVERBAL}, recon=recon,
                         pads={m: pads[m] for m in NONVERBAL}, specific=specific, irrelevant=irrelevant,
                         specific_logits=spec_logits, gate=gate)

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.disentangle_forward(batch).logits)


@register_model("sdrs", SDRSConfig, "SDRS: sentiment-specific / -irrelevant decomposition, text shifting (Zhao et al. 2025)",
                recipe="affectus.training.recipes.sdrs:SDRSRecipe",
                variants={
                    "default": {"description": "SDRS: disentanglement (specific head, orthogonality, adversary) "
                                               "and cross-modal shifting", "overrides": {}},
                    "wo_orthogonality": {"description": "w/o the orthogonality of the specific and irrelevant parts",
                                         "overrides": {"recipe.orth_weight": 0.0}},
                    "wo_adversary": {"description": "w/o the adversary on the irrelevant part",
                                     "overrides": {"recipe.adv_weight": 0.0}},
                    "wo_disentanglement": {"description": "w/o every disentanglement loss (specific head, "
                                                          "reconstruction, orthogonality, adversary)",
                                           "overrides": {"recipe.specific_weight": 0.0, "recipe.recon_weight": 0.0,
                                                         "recipe.orth_weight": 0.0, "recipe.adv_weight": 0.0}},
                },
                capabilities=Capabilities(extra_forward=("disentangle_forward",), sequence_masks=True),
                paper="Zhao et al., SDRS: Sentiment-Aware Disentangled Representation Shifting for Multimodal "
                      "Sentiment Analysis, IEEE Trans. Affective Comput. 2025")
def build(config: SDRSConfig) -> SDRS:
    return SDRS(config)
