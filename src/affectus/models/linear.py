"""Logistic regression as a registered model: early fusion of pooled, standardised inputs.

The floor every neural model should clear, and a row of every table: each input view is mean-pooled
over its true length, the pooled vectors are concatenated, standardised with the training split's mean
and scale, and a linear map gives the scheme's class logits. The weights are fitted by scikit-learn's
LogisticRegression in the model's recipe (training/recipes/linear.py, which also picks C on the
selection split); they live here as tensors, so a run folder is `model.safetensors` + `run.json` like
any other model's, and predict / serve / evaluate need nothing else (and import no scikit-learn).

Views: "text", "audio", "vision"; when the run's text inputs hold two text views (`train.text_inputs =
sentence+file`: "text:transcript" and "text:file") each text view is its own block. `views` picks the
blocks read ([]: all of them), e.g. ["text:transcript"] for a probe of the transcript vectors alone.

An absent modality (zero-filled, length 0, marked absent) gets standardised value 0 in all its
columns, i.e. the training mean: a linear model then decides from the modalities that are present
instead of reading the zero fill as a (far from average) feature value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import AffectusError, SettingError
from affectus.models.late_fusion import masked_mean
from affectus.models.layers import check_dims
from affectus.models.output import ModelOutput
from affectus.models.registry import Capabilities, register_model


@dataclass
class LinearConfig:
    # feature size per modality (the dataset's `dims`, filled in by the trainer)
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    num_classes: int = 3  # the label scheme's classes (filled in by the trainer)
    # the text feature's columns as named views, from `train.text_inputs` (e.g. [["transcript", 384],
    # ["file", 100]] for `sentence+file`); [] when text is one block
    text_views: list[tuple[str, int]] = field(default_factory=list)
    # the blocks read, in this order: "text", "audio", "vision" or a text view "text:NAME"; []: every block
    views: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.num_classes < 2:
            raise SettingError("model.num_classes", self.num_classes, "at least 2")
        for name in self.views:
            modality, _, view = str(name).partition(":")
            if modality not in MODALITIES or (view and modality != "text") or (":" in name and not view):
                raise SettingError("model.views", self.views, "names among text, audio, vision or text:VIEW")
        if len(set(self.views)) != len(self.views):
            raise SettingError("model.views", self.views, "distinct names")


def blocks(config: LinearConfig) -> list[tuple[str, str, int, int]]:
    """The blocks the model reads, in order: (name, modality, first column in that modality's features, width)."""
    available: list[tuple[str, str, int, int]] = []
    for m in MODALITIES:
        if m == "text" and config.text_views:
            start = 0
            for name, width in config.text_views:
                available.append((f"text:{name}", "text", start, int(width)))
                start += int(width)
            if start != config.dims["text"]:
                raise AffectusError(f"linear text_views {config.text_views} do not add up to the text dim "
                                    f"{config.dims['text']}")
        else:
            available.append((m, m, 0, int(config.dims[m])))
    if not config.views:
        return available
    by_name = {b[0]: b for b in available}
    if "text" in config.views and config.text_views:  # the text views together are the whole text feature
        by_name["text"] = ("text", "text", 0, int(config.dims["text"]))
    missing = [v for v in config.views if v not in by_name]
    if missing:
        raise AffectusError(f"linear model.views asks for {', '.join(missing)}, but the run's inputs have "
                            f"{', '.join(by_name)} (a transcript view needs text inputs that read the "
                            f"transcripts: train.text_inputs = sentence+file)")
    return [by_name[v] for v in config.views]


class Linear(nn.Module):
    def __init__(self, config: LinearConfig) -> None:
        super().__init__()
        check_dims("linear", config.dims)
        self.config = config
        self.blocks = blocks(config)
        width = sum(b[3] for b in self.blocks)
        # standardisation fitted on the training split (the recipe sets them; identity until then)
        self.register_buffer("mean", torch.zeros(width))  # (F,)
        self.register_buffer("scale", torch.ones(width))  # (F,)
        # the logistic regression's weights per class (the recipe sets them; 0 until then: uniform)
        self.weight = nn.Parameter(torch.zeros(config.num_classes, width))  # (C, F)
        self.bias = nn.Parameter(torch.zeros(config.num_classes))  # (C,)

    @property
    def names(self) -> list[str]:
        return [b[0] for b in self.blocks]

    def pooled(self, batch: Batch, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """The concatenated pooled blocks (B, F) in `dtype`, and which of their columns are present (B, F)."""
        available = batch.availability()  # (B, 3)
        parts, present = [], []
        for _, m, start, width in self.blocks:
            x = getattr(batch, m)  # (B, L, D)
            if x.dim() != 3 or x.shape[-1] != self.config.dims[m]:
                raise AffectusError(f"linear expects {m} features (B, L, {self.config.dims[m]}), got {tuple(x.shape)}")
            parts.append(masked_mean(x[..., start:start + width].to(dtype), batch.lengths(m)))  # (B, width)
            here = available[:, MODALITIES.index(m)] & (batch.lengths(m) > 0)  # (B,)
            present.append(here[:, None].expand(-1, width))
        return torch.cat(parts, dim=1), torch.cat(present, dim=1)

    def set_fit(self, mean: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Install a fit: the standardisation (F,), (F,) and the class weights (C, F), (C,)."""
        with torch.no_grad():
            for target, value in ((self.mean, mean), (self.scale, scale), (self.weight, weight), (self.bias, bias)):
                if tuple(value.shape) != tuple(target.shape):
                    raise AffectusError(f"linear fit: shape {tuple(value.shape)}, expected {tuple(target.shape)}")
                target.copy_(value.to(target.dtype))

    def forward(self, batch: Batch) -> ModelOutput:
        x, present = self.pooled(batch)  # (B, F), (B, F)
        z = torch.where(present, (x - self.mean) / self.scale, torch.zeros((), dtype=x.dtype, device=x.device))
        return ModelOutput(logits=z @ self.weight.T + self.bias)  # (B, C)


@register_model("linear", LinearConfig, "logistic regression on pooled, standardised inputs (early fusion)",
                recipe="affectus.training.recipes.linear:LinearRecipe", variants="linear.yaml", family="ours",
                capabilities=Capabilities(text_views=True, excludes_absent=True))  # absent: the training mean
def build(config: LinearConfig) -> Linear:
    return Linear(config)
