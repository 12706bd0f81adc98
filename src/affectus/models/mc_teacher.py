"""MC-Teacher (Yuan, Fang, Xu and Gao, IEEE/ACM TASLP 2024, "Multimodal Consistency-Based Teacher for
Semi-Supervised Multimodal Sentiment Analysis"): the network a consistency-based mean teacher trains.

The paper publishes no code; what is known of it here is its abstract: a consistency-based pseudo-label
technique for (regression) sentiment analysis that does without task-specific augmentation and without
classification thresholds; a "synergistic consistency" assumption on the consistency among bimodal
representations; a learnable filter network that learns to recognise misleading instances (whose pseudo
labels should not be trusted) in place of a threshold. docs/baselines/mc_teacher.md says what each piece
below rests on. Our reading, as a network:

- backbone: AV-MC's V1 network (`models/av_mc.AVMCNet`, the same lab's CH-SIMS v2 model, whose
  unlabeled-data variant AV-MC(Semi) MC-Teacher is compared with): per-modality vectors, unimodal heads,
  a fusion head (class logits and a score);
- bimodal heads, one per modality pair (text+audio, text+vision, audio+vision), each on the two unimodal
  heads' hidden vectors: their agreement is the synergistic consistency a reliable instance shows;
- the filter network: from the three bimodal predictions (their class probabilities and pairwise
  disagreements) the probability that an instance's pseudo label is right. The recipe trains it on
  labeled batches (target: the teacher's prediction was right) and weights the unlabeled losses by it.
- perturbation: Gaussian noise on the pooled inputs, scaled by each feature's spread in the batch (so raw
  COVAREP and BERT scales are alike), on present modalities only: student and teacher see different noise.

The mean teacher itself (EMA weights, consistency, pseudo labels) lives in training/recipes/mc_teacher.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import SettingError
from affectus.models.av_mc import AVMCBackbone, AVMCNet
from affectus.models.layers import check_dims
from affectus.models.output import ModelOutput
from affectus.models.registry import Capabilities, check_model_config, register_model
from affectus.models.tfn import check_features

PAIRS = (("text", "audio"), ("text", "vision"), ("audio", "vision"))


@dataclass
class MCTeacherConfig(AVMCBackbone):
    # The backbone's settings (above, inherited) are AV-MC V1's. The paper's own sizes are not available
    # here; these are ours, kept as small as the backbone's heads:
    bimodal_dim: int = 32  # hidden width of each bimodal head
    filter_hidden: int = 16  # hidden width of the filter network
    # perturbation: noise std relative to each pooled feature's std in the batch (mean teacher's input noise,
    # Tarvainen & Valpola 2017, use 0.15 on images; ours 0.1)
    noise_std: float = 0.1

    def validate(self) -> None:
        super().validate()
        check_model_config(self, sizes=("bimodal_dim", "filter_hidden"))
        if not 0.0 <= self.noise_std < 10.0:
            raise SettingError("model.noise_std", self.noise_std, "a number in [0, 10)")


@dataclass
class MCTeacherOutput:
    logits: torch.Tensor  # (B, C) fusion head
    score: torch.Tensor  # (B,)
    modality_logits: torch.Tensor  # (B, 3, C) text / audio / vision heads
    bimodal_logits: torch.Tensor  # (B, 3, C) in PAIRS order
    reliability_logit: torch.Tensor  # (B,) the filter on this output's own (detached) bimodal predictions


class MCTeacher(nn.Module):
    def __init__(self, config: MCTeacherConfig) -> None:
        super().__init__()
        check_dims("mc_teacher", config.dims)
        c = config
        self.config = c
        self.net = AVMCNet(c)
        post = self.net.post_dims
        self.bimodal = nn.ModuleList(
            nn.Sequential(nn.Linear(post[a] + post[b], c.bimodal_dim), nn.ReLU(), nn.Linear(c.bimodal_dim, c.num_classes))
            for a, b in PAIRS)
        k = len(PAIRS)
        self.filter = nn.Sequential(nn.Linear(k * c.num_classes + k, c.filter_hidden), nn.ReLU(),
                                    nn.Linear(c.filter_hidden, 1))

    def _inputs(self, batch: Batch, noise: bool) -> dict[str, torch.Tensor]:
        inputs = self.net.pool(batch)
        if not noise or self.config.noise_std <= 0:
            return inputs
        present = batch.availability().to(inputs["text"].device)  # (B, 3): an absent modality stays zero
        for k, m in enumerate(MODALITIES):
            x = inputs[m]  # (B, D)
            spread = x.std(dim=0, keepdim=True) if x.shape[0] > 1 else x.abs()
            inputs[m] = x + self.config.noise_std * spread * torch.randn_like(x) * present[:, k:k + 1]
        return inputs

    def parts(self, batch: Batch, noise: bool = False) -> MCTeacherOutput:
        """Every head's output; `noise` perturbs the pooled inputs (the consistency views)."""
        check_features("mc_teacher", batch, self.config.dims)
        logits, score, modality_logits, features = self.net.run(self._inputs(batch, noise))
        bimodal = torch.stack([head(torch.cat([features[a], features[b]], dim=-1))
                               for head, (a, b) in zip(self.bimodal, PAIRS)], 1)  # (B, 3, C)
        return MCTeacherOutput(logits, score, modality_logits, bimodal, self.reliability_logit(bimodal.detach()))

    def reliability_logit(self, bimodal_logits: torch.Tensor) -> torch.Tensor:
        """The filter network: (B, 3, C) bimodal logits -> (B,) logit of "this pseudo label can be trusted".
        Reads the three bimodal distributions and their pairwise total-variation distances (synergistic
        consistency: a reliable instance's bimodal views agree)."""
        p = bimodal_logits.softmax(-1)  # (B, 3, C)
        tv = torch.stack([0.5 * (p[:, i] - p[:, j]).abs().sum(-1) for i, j in ((0, 1), (0, 2), (1, 2))], 1)  # (B, 3)
        return self.filter(torch.cat([p.flatten(1), tv], dim=-1)).squeeze(-1)

    def forward(self, batch: Batch) -> ModelOutput:
        out = self.parts(batch)
        return ModelOutput(logits=out.logits, modality_logits=out.modality_logits, regression=out.score)


@register_model("mc_teacher", MCTeacherConfig,
                "MC-Teacher: mean teacher with bimodal consistency and a learned pseudo-label filter (Yuan et al. 2024)",
                recipe="affectus.training.recipes.mc_teacher:MCTeacherRecipe", variants="mc_teacher.yaml",
                capabilities=Capabilities(unimodal_heads=True, extra_forward=("parts",)),
                paper="Yuan, Fang, Xu and Gao, Multimodal Consistency-Based Teacher for Semi-Supervised Multimodal "
                      "Sentiment Analysis, IEEE/ACM TASLP 2024")
def build(config: MCTeacherConfig) -> MCTeacher:
    return MCTeacher(config)

