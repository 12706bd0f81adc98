"""TriagedMSA (Luo et al., IEEE Trans. Affective Computing 2025, "TriagedMSA: Triaging Sentimental
Disagreement in Multimodal Sentiment Analysis"), rebuilt from the paper's abstract and the CMC paper's
account of it (Section II); no public code or full text was found (docs/baselines/triaged_msa.md says
which searches), so every width and the exact form of each block is our choice, named as such below.

1. Unimodal encoders: per modality a masked Transformer encoder (models/layers.UnimodalEncoder) gives
   h_k (B, d), and a unimodal polarity head p_k (B, C) on it.
2. Sentiment Disagreement Triage (SDT): an MLP on [h_t, h_a, h_v, |h_t - h_a|, |h_t - h_v|, |h_a - h_v|]
   gives g in (0, 1), the probability that the modalities disagree in sentiment (the "triage").
3. Sentiment Commonality Attention (SCA): the three vectors attend to each other (self-attention over
   the modality tokens) and are mean-pooled: what the modalities share, for agreeing samples.
4. Sentiment Selection Attention (SSA): a learned query scores each modality (from h_k and the confidence
   of p_k) and a softmax selects among them: which modality to trust, for disagreeing samples.
5. Routing: logits = (1 - g) * head_SCA + g * head_SSA (a soft triage, so it trains end to end).
6. Adaptive Polarity Detection (APD, `apd_targets`): the triage's training target. With unimodal labels
   (the recipe looks them up by sample index) a sample disagrees when its modalities' classes differ;
   without, from the unimodal heads: a modality's predicted class counts only when its confidence passes
   an adaptive threshold (a running mean of the confidences seen in training, the `apd_threshold` buffer),
   and the sample disagrees when two counted modalities predict different classes.

The losses (CE on the routed logits, CE of each unimodal head, BCE of g against APD) are in
training/recipes/triaged_msa.py. An absent modality is zero-filled (scored under the masks as CMC did).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import SettingError
from affectus.models.layers import ResidualHead, UnimodalEncoder, check_dims
from affectus.models.output import ModelOutput
from affectus.models.registry import Capabilities, check_model_config, register_model
from affectus.models.tfn import check_features


@dataclass
class TriagedMSAConfig:
    # Input feature size per modality (default: CMU-MOSI's BERT 768 / COVAREP 5 / Facet 20); set from data.
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    # Widths: not published (abstract only); ours, the CMC encoder's (Table III of the CMC paper).
    d: int = 32
    layers: int = 1  # Transformer layers per unimodal encoder (ours)
    heads: int = 4  # attention heads in the encoders and in SCA (ours)
    ff: int = 64  # feed-forward width (ours)
    attn_dropout: float = 0.1  # (ours)
    output_dropout: float = 0.3  # in the SCA / SSA / unimodal heads (ours)
    # Loss weights of the unimodal heads and of the triage BCE (ours; the recipe reads them)
    unimodal_weight: float = 0.5
    triage_weight: float = 0.5
    # APD: momentum of the running mean of unimodal confidences that is the adaptive threshold (ours)
    apd_momentum: float = 0.99
    # False: the "w/o triage" ablation, g fixed at 0.5 (both branches always mixed equally)
    use_triage: bool = True
    num_classes: int = 3

    def validate(self) -> None:
        check_model_config(self, sizes=("d", "layers", "heads", "ff"))
        for key in ("unimodal_weight", "triage_weight"):
            if not getattr(self, key) >= 0:
                raise SettingError(f"model.{key}", getattr(self, key), "a loss weight >= 0")
        if not 0.0 <= self.apd_momentum < 1.0:
            raise SettingError("model.apd_momentum", self.apd_momentum, "a momentum in [0, 1)")


@dataclass
class TriageOutput:
    """What training reads from `triaged_forward`."""

    logits: torch.Tensor  # (B, C) routed
    modality_logits: torch.Tensor  # (B, 3, C) unimodal polarity heads
    triage: torch.Tensor  # (B,) g = P(the modalities disagree)
    common_logits: torch.Tensor  # (B, C) the SCA branch
    selective_logits: torch.Tensor  # (B, C) the SSA branch
    selection: torch.Tensor  # (B, 3) SSA's weights over the modalities


class TriagedMSA(nn.Module):
    def __init__(self, config: TriagedMSAConfig) -> None:
        super().__init__()
        check_dims("triaged_msa", config.dims)
        c = self.config = config
        self.encoders = nn.ModuleDict({
            m: UnimodalEncoder(int(c.dims[m]), d=c.d, layers=c.layers, heads=c.heads, ff=c.ff, dropout=c.attn_dropout,
                               batchnorm=m != "text", padding="masked")
            for m in MODALITIES
        })
        self.unimodal_heads = nn.ModuleDict({m: ResidualHead(c.d, c.num_classes, c.output_dropout) for m in MODALITIES})
        # SDT: the triage network
        self.triage_net = nn.Sequential(nn.Linear(6 * c.d, c.d), nn.ReLU(), nn.Linear(c.d, 1))
        # SCA: attention across the three modality tokens
        self.modality_embedding = nn.Parameter(torch.zeros(len(MODALITIES), c.d))
        self.sca = nn.TransformerEncoderLayer(c.d, c.heads, c.ff, c.attn_dropout, batch_first=True, norm_first=True)
        self.sca_head = ResidualHead(c.d, c.num_classes, c.output_dropout)
        # SSA: a scorer per modality token, input [h_k, confidence of p_k]
        self.ssa_score = nn.Sequential(nn.Linear(c.d + 1, c.d), nn.Tanh(), nn.Linear(c.d, 1))
        self.ssa_head = ResidualHead(c.d, c.num_classes, c.output_dropout)
        # APD's adaptive confidence threshold, starting at chance
        self.register_buffer("apd_threshold", torch.tensor(1.0 / c.num_classes))

    def embed(self, batch: Batch) -> torch.Tensor:
        check_features("triaged_msa", batch, self.config.dims)
        return torch.stack([self.encoders[m](getattr(batch, m).float(), batch.lengths(m)) for m in MODALITIES], dim=1)

    def triaged_forward(self, batch: Batch, triage: torch.Tensor | None = None) -> TriageOutput:
        """The full pass; `triage` (B,) overrides g (tests, analysis)."""
        h = self.embed(batch)  # (B, 3, d)
        uni = torch.stack([self.unimodal_heads[m](h[:, k]) for k, m in enumerate(MODALITIES)], dim=1)  # (B, 3, C)
        if triage is not None:
            g = triage.to(h.dtype)
        elif self.config.use_triage:
            pairs = [(h[:, i] - h[:, j]).abs() for i, j in ((0, 1), (0, 2), (1, 2))]
            g = torch.sigmoid(self.triage_net(torch.cat([h.flatten(1), *pairs], dim=1))).squeeze(-1)  # (B,)
        else:
            g = h.new_full((h.shape[0],), 0.5)
        common = self.sca(h + self.modality_embedding).mean(dim=1)  # (B, d)
        confidence = uni.softmax(-1).amax(-1, keepdim=True).detach()  # (B, 3, 1): selection reads, not trains, p_k
        alpha = self.ssa_score(torch.cat([h, confidence], dim=-1)).squeeze(-1).softmax(dim=1)  # (B, 3)
        selected = (alpha.unsqueeze(-1) * h).sum(dim=1)  # (B, d)
        common_logits, selective_logits = self.sca_head(common), self.ssa_head(selected)
        logits = (1 - g).unsqueeze(-1) * common_logits + g.unsqueeze(-1) * selective_logits
        return TriageOutput(logits, uni, g, common_logits, selective_logits, alpha)

    def forward(self, batch: Batch) -> ModelOutput:
        out = self.triaged_forward(batch)
        return ModelOutput(logits=out.logits, modality_logits=out.modality_logits)

    @torch.no_grad()
    def apd_targets(self, modality_logits: torch.Tensor, update: bool = True) -> torch.Tensor:
        """APD without unimodal labels: (B, 3, C) unimodal logits -> (B,) float, 1 where two modalities
        whose confidence passes the adaptive threshold predict different classes. `update` moves the
        threshold toward this batch's mean confidence (training only)."""
        probs = modality_logits.float().softmax(-1)
        conf, pred = probs.max(-1)  # (B, 3)
        counted = conf >= self.apd_threshold
        disagree = torch.zeros(pred.shape[0], dtype=torch.bool, device=pred.device)
        for i, j in ((0, 1), (0, 2), (1, 2)):
            disagree |= counted[:, i] & counted[:, j] & (pred[:, i] != pred[:, j])
        if update:
            m = self.config.apd_momentum
            self.apd_threshold.mul_(m).add_((1 - m) * conf.mean())
        return disagree.float()


@register_model("triaged_msa", TriagedMSAConfig,
                "TriagedMSA: sentiment-disagreement triage routing to commonality / selection attention",
                recipe="affectus.training.recipes.triaged_msa:TriagedMSARecipe",
                variants={"default": {"description": "the model as configured", "overrides": {}},
                          "wo_triage": {"description": "no triage: both branches mixed equally (ours)",
                                        "overrides": {"model.use_triage": False}}},
                capabilities=Capabilities(unimodal_heads=True, sequence_masks=True, extra_forward=("triaged_forward",)),
                family="baseline",
                paper="Luo et al., TriagedMSA: Triaging Sentimental Disagreement in Multimodal Sentiment Analysis, "
                      "IEEE Trans. Affective Computing 2025")
def build(config: TriagedMSAConfig) -> TriagedMSA:
    return TriagedMSA(config)
