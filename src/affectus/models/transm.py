"""TransM / TransModality (Wang, Wan and Wan, The Web Conference (WWW) 2020, "TransModality: An End2End
Fusion Method with Transformer for Multimodal Sentiment Analysis"). No official code was found; the
structure follows the paper's description (Fig. 3) and every number the paper leaves open is ours and
marked so here and in docs/baselines/transm.md. Its losses and missing-modality training are
`training/recipes/transm.py`.

Text is the pivot (`source`). Each other modality m gets a Modality Fusion Cell, run in parallel (the
paper's text-acoustic and text-visual cells, kept apart so that the two translations do not interfere):
1. Every modality is resampled onto `steps` steps (segment means over its true length), projected to
   width d and given sinusoidal positions.
2. Forward translation: a Transformer encoder reads the source, E_f; a Transformer decoder whose queries
   are learned step embeddings attends to E_f and emits X^_m (B, T, D_m), the source translated into m.
3. Backward translation: a second encoder reads the target m, E_b, and a decoder translates it back into
   the source, X^_S.
   Absent modalities (TransM's missing-modality treatment, taught by the recipe's training): an absent
   target m is replaced by its forward translation X^_m before the backward encoder reads it; an absent
   source is replaced by the mean backward translation X^_S of the targets the sample has. Every absent
   modality is thus a learned stand-in, never zeros.
4. The cell's representation is [mean E_f; mean E_b]; the cells' representations are concatenated and
   an MLP (Linear-ReLU-dropout-Linear) gives C logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import SettingError
from affectus.models.ef_lstm import align_to_steps
from affectus.models.layers import check_dims
from affectus.models.mult import sinusoidal_positions
from affectus.models.output import ModelOutput
from affectus.models.registry import Capabilities, check_model_config, register_model
from affectus.models.tfn import check_features


@dataclass
class TransMConfig:
    # Input feature size per modality (default: CMU-MOSI's 768 / 5 / 20); set from data.
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    source: str = "text"  # the pivot every cell translates from and back to (the paper: text)
    # Sizes: the paper's are not available to us; ours are MulT-sized (models/mult.py), docs/baselines/transm.md.
    steps: int = 20  # resampled sequence length (MCTN's max_seq_len; utterance-level features are length 1)
    d: int = 32
    heads: int = 4
    layers: int = 2  # per encoder and per decoder
    ff: int = 64
    dropout: float = 0.1  # inside the Transformers
    output_dropout: float = 0.3  # before the classifier's last layer
    num_classes: int = 3

    def validate(self) -> None:
        check_model_config(self, sizes=("steps", "d", "heads", "layers", "ff"))
        if self.source not in MODALITIES:
            raise SettingError("model.source", self.source, "one of text, audio, vision")

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m != self.source)


@dataclass
class TransMParts:
    """What the training losses read (`forward` returns the logits alone)."""

    logits: torch.Tensor  # (B, C)
    translated: dict[str, torch.Tensor]  # target m -> X^_m (B, T, D_m), the forward translation
    back: dict[str, torch.Tensor]  # target m -> X^_S (B, T, D_S), the backward translation from m (or X^_m)
    imagined: torch.Tensor  # (B, 3) bool: the modality was absent and its translation stood in for it


def _encoder(c: TransMConfig) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(c.d, c.heads, c.ff, c.dropout, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)


def _decoder(c: TransMConfig) -> nn.TransformerDecoder:
    layer = nn.TransformerDecoderLayer(c.d, c.heads, c.ff, c.dropout, batch_first=True, norm_first=True)
    return nn.TransformerDecoder(layer, c.layers)


class FusionCell(nn.Module):
    """One Modality Fusion Cell: source <-> target m, each with its own encoder and decoder."""

    def __init__(self, c: TransMConfig, d_source: int, d_target: int) -> None:
        super().__init__()
        self.forward_encoder, self.forward_decoder = _encoder(c), _decoder(c)
        self.backward_encoder, self.backward_decoder = _encoder(c), _decoder(c)
        self.queries = nn.Parameter(torch.randn(2, c.steps, c.d) * 0.02)  # decoder step embeddings: fwd, bwd
        self.to_target = nn.Linear(c.d, d_target)
        self.to_source = nn.Linear(c.d, d_source)

    def translate_forward(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded source (B, T, d) -> (E_f (B, T, d), X^_m (B, T, D_m))."""
        e_f = self.forward_encoder(source)
        return e_f, self.to_target(self.forward_decoder(self.queries[0].expand(source.shape[0], -1, -1), e_f))

    def translate_backward(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded target (B, T, d) -> (E_b (B, T, d), X^_S (B, T, D_S))."""
        e_b = self.backward_encoder(target)
        return e_b, self.to_source(self.backward_decoder(self.queries[1].expand(target.shape[0], -1, -1), e_b))


class TransM(nn.Module):
    def __init__(self, config: TransMConfig) -> None:
        super().__init__()
        check_dims("transm", config.dims)
        config.validate()
        self.config = c = config
        self.proj = nn.ModuleDict({m: nn.Linear(int(c.dims[m]), c.d) for m in MODALITIES})
        self.cells = nn.ModuleDict({m: FusionCell(c, int(c.dims[c.source]), int(c.dims[m])) for m in c.targets})
        width = 2 * c.d * len(c.targets)
        self.classifier = nn.Sequential(nn.Linear(width, c.d), nn.ReLU(), nn.Dropout(c.output_dropout),
                                        nn.Linear(c.d, c.num_classes))
        self.register_buffer("positions", sinusoidal_positions(c.steps, c.d, torch.device("cpu")), persistent=False)

    def resample(self, batch: Batch, modality: str) -> torch.Tensor:
        """(B, L, D) -> (B, steps, D): each sample's valid steps spread over all `steps` steps."""
        x = getattr(batch, modality).float()
        lengths = batch.lengths(modality).to(x.device)
        return align_to_steps(x, lengths, torch.full_like(lengths, self.config.steps), self.config.steps)

    def _embed(self, m: str, x: torch.Tensor) -> torch.Tensor:
        return self.proj[m](x) * math.sqrt(self.config.d) + self.positions.to(x.dtype)

    def translate(self, batch: Batch) -> TransMParts:
        check_features("transm", batch, self.config.dims)
        c = self.config
        have = batch.availability().to(batch.text.device) & torch.stack(
            [batch.lengths(m).to(batch.text.device) > 0 for m in MODALITIES], dim=1)  # (B, 3)
        present = {m: have[:, MODALITIES.index(m)] for m in MODALITIES}
        real = {m: self._embed(m, self.resample(batch, m)) for m in MODALITIES}
        source = real[c.source]
        if not bool(present[c.source].all()):
            # an absent source is imagined by the backward translations of the targets the sample has
            # (averaged); at least one is present, as every sample keeps a modality
            back_real = torch.stack([self.cells[m].translate_backward(real[m])[1] for m in c.targets])  # (K, B, T, D_S)
            w = torch.stack([present[m] for m in c.targets]).to(source.dtype)[..., None, None]  # (K, B, 1, 1)
            imagined_source = (back_real * w).sum(0) / w.sum(0).clamp(min=1.0)
            source = torch.where(present[c.source][:, None, None], source, self._embed(c.source, imagined_source))
        reps, translated, back = [], {}, {}
        for m in c.targets:
            cell = self.cells[m]
            e_f, translated[m] = cell.translate_forward(source)
            # an absent target is imagined by its forward translation
            target = torch.where(present[m][:, None, None], real[m], self._embed(m, translated[m]))
            e_b, back[m] = cell.translate_backward(target)
            reps.append(torch.cat([e_f.mean(dim=1), e_b.mean(dim=1)], dim=-1))  # the cell's representation
        logits = self.classifier(torch.cat(reps, dim=-1))
        imagined = torch.stack([~present[m] for m in MODALITIES], dim=1)
        return TransMParts(logits, translated, back, imagined)

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.translate(batch).logits)


VARIANTS = {
    "default": {"description": "trained under random availability conditions (the missing-modality comparisons)",
                "overrides": {}},
    "complete": {"description": "trained on complete data only (the paper's own setting)",
                 "overrides": {"recipe.missing": "none"}},
}


@register_model("transm", TransMConfig, "TransM: Transformer forward/backward modality translation fusion (Wang et al. 2020)",
                recipe="affectus.training.recipes.transm:TransMRecipe", variants=VARIANTS,
                capabilities=lambda c: Capabilities(extra_forward=("translate",), excludes_absent=True, needs_in_training=(
                    (c.source, f"model.source = {c.source}: every translation starts from the source"),)),
                paper="Wang, Wan and Wan, TransModality: An End2End Fusion Method with Transformer for Multimodal "
                      "Sentiment Analysis, The Web Conference (WWW) 2020")
def build(config: TransMConfig) -> TransM:
    return TransM(config)
