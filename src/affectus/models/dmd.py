"""DMD: Decoupled Multimodal Distillation (Li et al., CVPR 2023, "Decoupled Multimodal Distilling for
Emotion Recognition"), in the shape of the authors' code (github.com/mdswyz/DMD,
`trains/singleTask/model/dmd.py`). docs/baselines/dmd.md gives every setting's source.

1. Per modality a temporal Conv1d projects the features to a common width d (the official `proj_*`).
2. Feature decoupling (paper sec. 3.1): a private encoder per modality gives the modality-exclusive
   (heterogeneous) part s_m, one encoder shared by the three modalities gives the modality-irrelevant
   (homogeneous) part c_m; a decoder per modality reconstructs the projected input from [s_m; c_m],
   and the private encoder applied to that reconstruction gives s_m_r (the cycle term). Both encoders
   are per-step linear maps (Conv1d k=1, no bias), as the authors'.
3. Homogeneous space: each c_m has its own residual head (logits and the representation the HomoGD unit
   reads); per modality a self-attention transformer over c_m, their last valid steps concatenated
   (3d), a residual block and a head give `logits_c`.
4. Heterogeneous space: MulT's crossmodal attention over the s_m (the two sources of each target, a
   memory transformer over their concatenation, 2d), per modality a residual head (logits and the
   representation the HeteroGD unit reads).
5. Fusion: sigmoid-gated (a Linear + sigmoid per part) heterogeneous summaries and homogeneous fusion,
   concatenated (9d), a residual block and the output head.

The graph distillation units (GD-Units, sec. 3.2) and every loss live in the recipe
(training/recipes/dmd.py): they only train, as in the authors' code, whose test path builds this
network alone. Our changes, all forced by variable-length inputs or by the toolkit's C-class outputs:
the homogeneous heads and the margin/cosine projections read the masked mean of c_m / s_m over the
true length instead of the flattened fixed-length sequence (the official Linear layers are sized by
MOSI's padded length 50 / 375 / 500, which our data does not have); the convolution uses "same"
padding on zeroed padding steps and attention masks keys beyond a sequence's length (as our MulT);
every head gives C logits (the official heads regress one score).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import SettingError
from affectus.models.late_fusion import masked_mean
from affectus.models.layers import check_dims
from affectus.models.mult import Transformer
from affectus.models.output import ModelOutput
from affectus.models.registry import Capabilities, check_model_config, register_model
from affectus.models.tfn import check_features


@dataclass
class DMDConfig:
    # Input feature size per modality (default: CMU-MOSI's 768 / 5 / 20); set from data.
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    # config/config.json, dmd / mosi (the authors' repository):
    d: int = 50  # dst_feature_dim_nheads[0]
    heads: int = 10  # dst_feature_dim_nheads[1]
    layers: int = 4  # nlevels: crossmodal and homogeneous self-attention transformers
    mem_layers: int = 0  # memory transformers; 0 = max(layers, 3), as the official get_network(layers=3)
    attn_dropout: float = 0.3  # attention dropout with text as the source (and the memory transformers)
    attn_dropout_a: float = 0.2  # ... with audio as the source
    attn_dropout_v: float = 0.0  # ... with vision as the source
    relu_dropout: float = 0.0
    embed_dropout: float = 0.2
    res_dropout: float = 0.0
    output_dropout: float = 0.5  # inside every residual head
    text_dropout: float = 0.5  # on the text input, before its projection
    # conv1d_kernel_size_l / _a / _v (MOSI: 5 each); odd, "same" padding here
    kernel_text: int = 5
    kernel_audio: int = 5
    kernel_vision: int = 5
    num_classes: int = 3

    def validate(self) -> None:
        check_model_config(self, sizes=("d", "heads", "layers", "kernel_text", "kernel_audio", "kernel_vision"))
        if self.mem_layers < 0:
            raise SettingError("model.mem_layers", self.mem_layers, "0 (max(layers, 3)) or a positive integer")
        for m in MODALITIES:
            k = getattr(self, f"kernel_{m}")
            if k % 2 == 0:
                raise SettingError(f"model.kernel_{m}", k, "an odd kernel size (the convolution keeps the length)")
        if (2 * self.d) % self.heads:
            raise SettingError("model.heads", self.heads, f"a divisor of 2 * model.d = {2 * self.d}", "model.d")


@dataclass
class DMDParts:
    """Everything DMD's losses read (training/recipes/dmd.py). Sequences are (B, L, d), pads (B, L) bool."""

    logits: torch.Tensor  # (B, C) the fused prediction
    logits_c: torch.Tensor  # (B, C) the homogeneous-fusion head
    origin: dict[str, torch.Tensor]  # the projected input
    specific: dict[str, torch.Tensor]  # s_m, modality-exclusive (heterogeneous) part
    shared: dict[str, torch.Tensor]  # c_m, modality-irrelevant (homogeneous) part
    recon: dict[str, torch.Tensor]  # decoder([s_m; c_m])
    specific_cycle: dict[str, torch.Tensor]  # s_m_r: the private encoder applied to the reconstruction
    pads: dict[str, torch.Tensor]
    shared_sim: dict[str, torch.Tensor]  # (B, d) the margin loss's projection of c_m
    homo_logits: torch.Tensor  # (3, B, C) in MODALITIES order
    homo_repr: torch.Tensor  # (3, B, d)
    hetero_logits: torch.Tensor  # (3, B, C)
    hetero_repr: torch.Tensor  # (3, B, 2d)


class ResidualBlock(nn.Module):
    """out(proj2(dropout(relu(proj1(h)))) + h), returning (proj1(h), the residual sum, out)."""

    def __init__(self, dim: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.proj1 = nn.Linear(dim, dim)
        self.proj2 = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, num_classes)
        self.dropout = dropout

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        first = self.proj1(h)
        summed = self.proj2(F.dropout(F.relu(first), self.dropout, self.training)) + h
        return first, summed, self.out(summed)


def _pair(target: str, source: str) -> str:
    return f"{target}_from_{source}"


def last_valid(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, L, D) -> (B, D): each sample's last step within its length (lengths already clamped to [1, L])."""
    return h[torch.arange(h.shape[0], device=h.device), lengths - 1]


class DMD(nn.Module):
    def __init__(self, config: DMDConfig) -> None:
        super().__init__()
        check_dims("dmd", config.dims)
        config.validate()
        c = config
        self.config = c
        d = c.d
        kernels = {m: getattr(c, f"kernel_{m}") for m in MODALITIES}
        source_dropout = {"text": c.attn_dropout, "audio": c.attn_dropout_a, "vision": c.attn_dropout_v}

        def net(attn: float) -> SimpleNamespace:  # the dropout settings a `mult.Transformer` reads
            return SimpleNamespace(attn_dropout=attn, relu_dropout=c.relu_dropout, res_dropout=c.res_dropout,
                                   embed_dropout=c.embed_dropout)

        self.proj = nn.ModuleDict(
            {m: nn.Conv1d(int(c.dims[m]), d, kernels[m], padding=kernels[m] // 2, bias=False) for m in MODALITIES})
        self.encoder_s = nn.ModuleDict({m: nn.Linear(d, d, bias=False) for m in MODALITIES})  # private
        self.encoder_c = nn.Linear(d, d, bias=False)  # shared by the three modalities
        self.decoder = nn.ModuleDict({m: nn.Linear(2 * d, d, bias=False) for m in MODALITIES})
        self.align_c = nn.ModuleDict({m: nn.Linear(d, d) for m in MODALITIES})  # margin loss's projection
        self.homo_heads = nn.ModuleDict({m: ResidualBlock(d, c.num_classes, c.output_dropout) for m in MODALITIES})
        self.self_attn_c = nn.ModuleDict({m: Transformer(d, c.heads, c.layers, False, net(source_dropout[m]))
                                          for m in MODALITIES})
        self.head_c = ResidualBlock(3 * d, c.num_classes, c.output_dropout)
        self.crossmodal = nn.ModuleDict({_pair(t, s): Transformer(d, c.heads, c.layers, True, net(source_dropout[s]))
                                         for t in MODALITIES for s in MODALITIES if s != t})
        mem_layers = c.mem_layers or max(c.layers, 3)
        self.memory = nn.ModuleDict({m: Transformer(2 * d, c.heads, mem_layers, False, net(c.attn_dropout))
                                     for m in MODALITIES})
        self.hetero_heads = nn.ModuleDict({m: ResidualBlock(2 * d, c.num_classes, c.output_dropout)
                                           for m in MODALITIES})
        self.gate = nn.ModuleDict({m: nn.Linear(2 * d, 2 * d) for m in MODALITIES})
        self.gate_c = nn.Linear(3 * d, 3 * d)
        self.fusion = ResidualBlock(9 * d, c.num_classes, c.output_dropout)

    def decoupled_forward(self, batch: Batch) -> DMDParts:
        check_features("dmd", batch, self.config.dims)
        c = self.config
        origin, pads, lengths = {}, {}, {}
        for m in MODALITIES:
            x = getattr(batch, m).float()  # (B, L, D)
            steps = x.shape[1]
            lengths[m] = batch.lengths(m).to(x.device).long().clamp(min=1, max=steps)
            pads[m] = torch.arange(steps, device=x.device)[None, :] >= lengths[m][:, None]  # (B, L)
            x = x.masked_fill(pads[m][..., None], 0.0)  # the convolution must not read padding values
            if m == "text":
                x = F.dropout(x, c.text_dropout, self.training)
            origin[m] = self.proj[m](x.transpose(1, 2)).transpose(1, 2)  # (B, L, d)
        specific = {m: self.encoder_s[m](origin[m]) for m in MODALITIES}
        shared = {m: self.encoder_c(origin[m]) for m in MODALITIES}
        recon = {m: self.decoder[m](torch.cat([specific[m], shared[m]], dim=-1)) for m in MODALITIES}
        cycle = {m: self.encoder_s[m](recon[m]) for m in MODALITIES}
        pooled_c = {m: masked_mean(shared[m], lengths[m]) for m in MODALITIES}  # (B, d)
        shared_sim = {m: self.align_c[m](pooled_c[m]) for m in MODALITIES}

        homo_logits, homo_repr = [], []
        for m in MODALITIES:
            first, _, logits = self.homo_heads[m](pooled_c[m])
            homo_logits.append(logits)
            homo_repr.append(first)
        c_fusion = torch.cat([last_valid(self.self_attn_c[m](shared[m], pads[m]), lengths[m])
                              for m in MODALITIES], dim=-1)  # (B, 3d)
        _, _, logits_c = self.head_c(c_fusion)

        hetero_logits, hetero_repr, summaries = [], [], {}
        for t in MODALITIES:
            crossed = [self.crossmodal[_pair(t, s)](specific[t], pads[t], specific[s], pads[s])
                       for s in MODALITIES if s != t]
            h = self.memory[t](torch.cat(crossed, dim=-1), pads[t])  # (B, Lt, 2d)
            summaries[t] = last_valid(h, lengths[t])  # (B, 2d)
            _, summed, logits = self.hetero_heads[t](summaries[t])
            hetero_logits.append(logits)
            hetero_repr.append(summed)

        fused = torch.cat([torch.sigmoid(self.gate[m](summaries[m])) for m in MODALITIES]
                          + [torch.sigmoid(self.gate_c(c_fusion))], dim=-1)  # (B, 9d)
        _, _, logits = self.fusion(fused)
        return DMDParts(logits=logits, logits_c=logits_c, origin=origin, specific=specific, shared=shared,
                        recon=recon, specific_cycle=cycle, pads=pads, shared_sim=shared_sim,
                        homo_logits=torch.stack(homo_logits), homo_repr=torch.stack(homo_repr),
                        hetero_logits=torch.stack(hetero_logits), hetero_repr=torch.stack(hetero_repr))

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.decoupled_forward(batch).logits)


@register_model("dmd", DMDConfig, "DMD: decoupled homo-/heterogeneous spaces with graph distillation (Li et al. 2023)",
                recipe="affectus.training.recipes.dmd:DMDRecipe",
                variants={
                    "default": {"description": "DMD: decoupling, HomoGD and HeteroGD, as configured", "overrides": {}},
                    "wo_homo_gd": {"description": "w/o HomoGD: no graph distillation in the homogeneous space",
                                   "overrides": {"recipe.homo_gd": False}},
                    "wo_hetero_gd": {"description": "w/o HeteroGD: no graph distillation in the heterogeneous space",
                                     "overrides": {"recipe.hetero_gd": False}},
                    "wo_gd": {"description": "w/o GD: feature decoupling alone, no graph distillation",
                              "overrides": {"recipe.homo_gd": False, "recipe.hetero_gd": False}},
                    "wo_decoupling_losses": {
                        "description": "w/o the decoupling losses (reconstruction, cycle, margin, orthogonality)",
                        "overrides": {"recipe.decouple_weight": 0.0}},
                    "authors_optimiser": {
                        "description": "DMD with the authors' MOSI optimiser settings (Adam lr 1e-4, batch 16)",
                        "overrides": {"train.lr": 1e-4, "train.batch_size": 16}},
                },
                capabilities=Capabilities(extra_forward=("decoupled_forward",), sequence_masks=True),
                paper="Li et al., Decoupled Multimodal Distilling for Emotion Recognition, CVPR 2023")
def build(config: DMDConfig) -> DMD:
    return DMD(config)
