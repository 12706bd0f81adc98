"""CMC+: our calibrated-consensus model (docs/cmc_plus.md), beside the faithful `cmc`.

The paper's idea kept: each modality has its own expert (stage 1, trained alone), and a router weighs
the experts' own predictions into the verdict (stage 2). What changes, and why (measured in
docs/cmc_plus.md):

- **Experts read length-aware pooled inputs.** Each modality's sequence is averaged over its true steps
  only (`pool="masked"`; `"full"` is the faithful mean over all L steps, padding included), then
  standardised with the training split's statistics (buffers, so prediction needs nothing else) and
  fed to a linear head or a small MLP. The text features may hold several views side by side
  (`text_views`, e.g. a transcript encoder's sentence vector next to the file's text feature); each
  view is an expert of its own, because a joint fit trusts whichever view leaks its training labels.
- **Experts are calibrated.** Each expert's logits are divided by a temperature T_k fitted by
  temperature scaling (NLL on the router's fitting rows), so log p_k are comparable across experts.
- **The router sees the evidence.** Input per sample: every expert's calibrated log-probabilities,
  its entropy and each pair's agreement sum_c p_i(c) p_j(c). Output: effective weights
  w = softmax(g + MLP(evidence)) * s (g, s learned per expert). Verdict logits: sum_k w_k log p_k + b,
  a weighted log-linear pool: a contradicted expert can be turned down sample by sample. With
  `router_hidden=0` the weights are global (one per expert: stacking); with `use_router=False` the
  verdict is the plain sum of calibrated log-probabilities.
- **Availability.** An expert whose modality is absent (`batch.available`) gets weight exactly 0 and its
  evidence reads as a uniform prediction.
- **A fallback to the best single expert.** The verdict is (1 - lambda) * consensus + lambda * solo, where
  solo = a * log p_j + c is one calibrated expert alone with its own scale and class bias (buffers
  `solo_weights`, `solo_bias`) and lambda (`shrink`) is chosen by the recipe on held-out videos of its
  fitting rows (`recipe.fallback`). Both parts are log-linear pools, so the verdict is one too, with
  effective weights (1 - lambda) w + lambda * solo_weights. Where the solo expert's modality is absent
  the verdict is the consensus alone. lambda = 0 (the default, and every run saved before it existed)
  is the plain consensus.

Training (stage 1 experts, temperature, stage 2 router) is the recipe's: training/recipes/cmc_plus.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import AffectusError, SettingError
from affectus.models.layers import check_dims
from affectus.models.output import ModelOutput
from affectus.models.registry import Capabilities, check_model_config, register_model


@dataclass
class CMCPlusConfig:
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    # The text feature's columns split into views, each its own expert, in column order: [name, width]
    # pairs (the widths sum to dims.text). Empty: one text expert. Set by training from
    # `train.text_inputs` (e.g. [["transcript", 384], ["file", 100]] for `sentence+file`).
    text_views: list[tuple[str, int]] = field(default_factory=list)
    hidden: int = 64  # expert MLP width; 0: a linear expert (best on utterance-level features)
    in_dropout: float = 0.1  # dropout on an expert's standardised input
    dropout: float = 0.3  # dropout inside an MLP expert
    pool: Literal["masked", "full"] = "masked"  # mean over the true steps, or over all L (faithful CMC)
    router_hidden: int = 16  # evidence MLP width; 0: global weights, one per expert
    use_router: bool = True  # False: verdict = sum of calibrated log-probabilities (no fitted weights)
    num_classes: int = 3

    def validate(self) -> None:
        check_model_config(self)
        for key in ("hidden", "router_hidden"):
            if getattr(self, key) < 0:
                raise SettingError(f"model.{key}", getattr(self, key), "an integer >= 0 (0: linear / global)")
        if self.pool not in ("masked", "full"):
            raise SettingError("model.pool", self.pool, "masked or full")
        if any(len(v) != 2 or not (isinstance(v[1], int) and v[1] > 0) for v in self.text_views):
            raise SettingError("model.text_views", self.text_views, "positive widths per view")


def expert_names(config: CMCPlusConfig) -> list[str]:
    """Expert names in order: text (or text:VIEW per view), audio, vision."""
    text = [f"text:{name}" for name, _ in config.text_views] if config.text_views else ["text"]
    return [*text, "audio", "vision"]


class Expert(nn.Module):
    """Standardised pooled features -> (dropout) -> linear, or a one-hidden-layer MLP -> class logits."""

    def __init__(self, dim: int, config: CMCPlusConfig) -> None:
        super().__init__()
        c = config
        layers: list[nn.Module] = [nn.Dropout(c.in_dropout)]
        if c.hidden:
            layers += [nn.Linear(dim, c.hidden), nn.ReLU(), nn.Dropout(c.dropout), nn.Linear(c.hidden, c.num_classes)]
        else:
            layers += [nn.Linear(dim, c.num_classes)]
        self.net = nn.Sequential(*layers)
        # the training split's per-feature statistics (set by the recipe; saved with the weights)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


class EvidenceRouter(nn.Module):
    """Per-sample effective weights from the experts' evidence (module docstring)."""

    def __init__(self, k: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        evidence = k * num_classes + k + k * (k - 1) // 2
        self.mlp = nn.Sequential(nn.Linear(evidence, hidden), nn.Tanh(), nn.Linear(hidden, k)) if hidden else None
        self.gate = nn.Parameter(torch.zeros(k))  # g: global preference per expert
        self.scale = nn.Parameter(torch.full((k,), float(k)))  # s: how sharp the pooled verdict is
        self.bias = nn.Parameter(torch.zeros(num_classes))  # b: class prior of the verdict

    @staticmethod
    def evidence(lp: torch.Tensor) -> torch.Tensor:
        """(B, K, C) calibrated log-probs -> (B, K*C + K + K(K-1)/2): log-probs, entropies, agreements."""
        p = lp.exp()
        entropy = -(p * lp).sum(-1)  # (B, K)
        k = lp.shape[1]
        pairs = [(p[:, i] * p[:, j]).sum(-1) for i in range(k) for j in range(i + 1, k)]
        parts = [lp.flatten(1), entropy] + ([torch.stack(pairs, 1)] if pairs else [])
        return torch.cat(parts, 1)

    def forward(self, lp: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """lp (B, K, C), present (B, K) bool -> (verdict logits (B, C), effective weights (B, K))."""
        scores = self.gate.expand(lp.shape[0], -1)
        if self.mlp is not None:
            scores = scores + self.mlp(self.evidence(lp))
        scores = scores.masked_fill(~present, float("-inf"))  # an absent expert weighs exactly 0
        w = torch.softmax(scores, -1) * self.scale  # (B, K)
        return (w.unsqueeze(-1) * lp).sum(1) + self.bias, w


class CMCPlus(nn.Module):
    def __init__(self, config: CMCPlusConfig) -> None:
        super().__init__()
        check_dims("cmc_plus", config.dims)
        if config.text_views and sum(w for _, w in config.text_views) != config.dims["text"]:
            raise AffectusError(f"cmc_plus text_views {config.text_views} do not add up to the text dim "
                                f"{config.dims['text']}")
        self.config = config
        self.names = expert_names(config)
        widths = [w for _, w in config.text_views] or [config.dims["text"]]
        widths += [config.dims["audio"], config.dims["vision"]]
        self.experts = nn.ModuleList(Expert(int(w), config) for w in widths)
        # which modality (0 text, 1 audio, 2 vision) each expert reads
        self.register_buffer("modality", torch.tensor([0] * (len(widths) - 2) + [1, 2]), persistent=False)
        self.register_buffer("temperature", torch.ones(len(widths)))  # T_k, fitted by the recipe
        self.router = EvidenceRouter(len(widths), config.num_classes, config.router_hidden)
        # the fallback (module docstring): lambda, and the solo pool's weights (one nonzero) and class bias
        self.register_buffer("shrink", torch.zeros(()))
        self.register_buffer("solo_weights", torch.zeros(len(widths)))
        self.register_buffer("solo_bias", torch.zeros(config.num_classes))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # runs saved before the fallback existed are the plain consensus: lambda = 0
        for name in ("shrink", "solo_weights", "solo_bias"):
            state_dict.setdefault(prefix + name, getattr(self, name).new_zeros(getattr(self, name).shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- pieces the recipe trains one at a time ------------------------------------------------------
    def pooled(self, batch: Batch) -> list[torch.Tensor]:
        """Each expert's input, (B, D_k): the modality's sequence averaged over its true steps ("masked")
        or over all L steps ("full"), text cut into its views."""
        out = []
        for m in MODALITIES:
            x = getattr(batch, m).float()  # (B, L, D)
            if x.dim() != 3 or x.shape[-1] != self.config.dims[m]:
                raise AffectusError(f"cmc_plus expects {m} features (B, L, {self.config.dims[m]}), got {tuple(x.shape)}")
            if self.config.pool == "full":
                v = x.mean(1)
            else:
                steps = x.shape[1]
                lengths = batch.lengths(m).to(x.device).clamp(0, steps)
                mask = (torch.arange(steps, device=x.device)[None, :] < lengths[:, None]).to(x.dtype)  # (B, L)
                v = (x * mask.unsqueeze(-1)).sum(1) / lengths.clamp(min=1).to(x.dtype)[:, None]
            if m == "text" and self.config.text_views:
                out += list(torch.split(v, [w for _, w in self.config.text_views], dim=1))
            else:
                out.append(v)
        return out

    def expert_logits(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """(B, K, C): each expert's raw logits."""
        return torch.stack([e(x) for e, x in zip(self.experts, inputs)], 1)

    def present(self, batch: Batch) -> torch.Tensor:
        """(B, K) bool: whether each expert's modality is present (a sample with none is read as full)."""
        avail = batch.availability().to(self.temperature.device)
        avail = avail | ~avail.any(1, keepdim=True)
        return avail[:, self.modality]

    def consensus(self, z: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw expert logits (B, K, C) -> (verdict logits, calibrated log-probs, effective weights)."""
        lp = F.log_softmax(z / self.temperature[:, None], -1)
        uniform = torch.full_like(lp, -math.log(lp.shape[-1]))  # log(1/C)
        lp = torch.where(present.unsqueeze(-1), lp, uniform)  # an absent expert says nothing
        if self.config.use_router:
            logits, w = self.router(lp, present)
        else:
            w = present.to(lp.dtype)
            logits = (w.unsqueeze(-1) * lp).sum(1)
        if float(self.shrink) > 0:
            solo = self.solo_weights != 0
            # lambda per sample: 0 where the solo expert is absent (the consensus of what is there decides)
            lam = self.shrink * (present | ~solo).all(1, keepdim=True).to(lp.dtype)  # (B, 1)
            solo_logits = (self.solo_weights[None, :, None] * lp).sum(1) + self.solo_bias
            logits = (1 - lam) * logits + lam * solo_logits
            w = (1 - lam) * w + lam * self.solo_weights
        return logits, lp, w

    # -- the model ----------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> ModelOutput:
        present = self.present(batch)
        z = self.expert_logits(self.pooled(batch))
        logits, lp, w = self.consensus(z, present)
        # per modality: its experts' log-probs pooled by their weights, and its share of the total weight
        onehot = F.one_hot(self.modality, len(MODALITIES)).to(lp.dtype)  # (K, 3)
        mod_w = w @ onehot  # (B, 3)
        share = mod_w / mod_w.sum(1, keepdim=True).clamp(min=1e-12)
        inner = (w.unsqueeze(-1) * onehot.unsqueeze(0)) / mod_w.unsqueeze(1).clamp(min=1e-12)  # (B, K, 3)
        modality_lp = torch.einsum("bkm,bkc->bmc", inner, lp)  # (B, 3, C)
        return ModelOutput(logits=logits, modality_logits=modality_lp, router_weights=share,
                           expert_logits=lp, expert_weights=w)


@register_model("cmc_plus", CMCPlusConfig, "CMC+: calibrated experts and an evidence router (our method)",
                recipe="affectus.training.recipes.cmc_plus:CMCPlusRecipe", variants="cmc_plus.yaml",
                report_sections=("router",), family="ours",
                capabilities=lambda c: Capabilities(text_views=True, router=c.use_router, unimodal_heads=True,
                                                    experts=tuple(expert_names(c)), excludes_absent=True))
def build(config: CMCPlusConfig) -> CMCPlus:
    return CMCPlus(config)
