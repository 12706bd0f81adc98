"""AV-MC (Liu et al., ICMI 2022, "Make Acoustic and Visual Cues Matter: CH-SIMS v2.0 Dataset and AV-Mixup
Consistent Module"), after the authors' `models/multiTask/V1.py` and `trains/multiTask/V1.py`
(github.com/thuiar/ch-sims-v2, the `v1` model of its `run.py`).

Network (their V1): text, audio and vision utterance vectors -> four heads.
- text: the authors take a frozen BERT's [CLS] (`use_bert_finetune: False`) through one Linear to
  `text_hidden`; here the precomputed `batch.text` features are mean-pooled over the true text length
  (no trainable text encoder, like a frozen BERT) and go through that Linear.
- audio / vision: time-averaged features (their `need_normalized: True`) through TFN's sub-network
  (BatchNorm -> dropout -> three Linear+ReLU; `tfn.PooledSubNet` is the same layers).
- one head per modality: dropout -> Linear+ReLU -> Linear+ReLU -> output; the fusion head reads the
  three heads' last hidden vectors, concatenated: dropout -> Linear -> Linear -> output, with no
  activation in between (as the authors' code).
Their outputs are scalar sentiment scores (L1 losses); ours are `num_classes` logits per head (every metric
of the toolkit reads class logits), and the fusion head also returns a score (`ModelOutput.regression`,
trained with L1 where the label scheme has scores). The authors squash the fusion score into [-1, 1]
(CH-SIMS's range) with a sigmoid; ours is unbounded, since MOSI's scores span [-3, 3].

The AV-Mixup consistent module (`mixup_data_no_grad` and the two mixed passes in their trainer): in
training, the pooled audio (or vision) inputs of a batch are mixed with a shuffled copy of the batch,
x~ = lam * x + (1 - lam) * x[perm], lam ~ Beta(alpha, alpha), while text and the other modality stay;
the mixed modality's head and the fusion head learn the same mix of the two samples' labels, the other
heads their own labels. `AVMixup` draws the mix in training only: in evaluation it draws none and the
network sees its inputs unchanged. The losses live in training/recipes/av_mc.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import SettingError
from affectus.models.late_fusion import masked_mean
from affectus.models.layers import check_dims
from affectus.models.output import ModelOutput
from affectus.models.registry import Capabilities, check_model_config, register_model
from affectus.models.tfn import PooledSubNet, check_features

MIXED = ("audio", "vision")  # the modalities AV-Mixup mixes (text never)


@dataclass
class AVMCBackbone:
    """The settings of the V1 network (MC-Teacher builds on the same network)."""

    # Input feature size per modality (default: CMU-MOSI's 768 / 5 / 20); set from data.
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    # ch-sims-v2 config/config_regression.py, `__V1` / sims3l:
    text_hidden: int = 64  # hidden_dims[0]: the Linear after the text vector (`tliner`)
    audio_hidden: int = 16  # hidden_dims[1]: audio SubNet width
    vision_hidden: int = 16  # hidden_dims[2]: video SubNet width
    post_text_dim: int = 32
    post_audio_dim: int = 32
    post_vision_dim: int = 64  # post_video_dim
    post_fusion_dim: int = 16  # post_fusion_out
    audio_dropout: float = 0.1  # dropouts (audio, video, text) = (0.1, 0.1, 0.1); the text one is unused there too
    vision_dropout: float = 0.1
    post_text_dropout: float = 0.3  # post_dropouts (text, audio, video, fusion) = (0.3, 0.3, 0.3, 0.3)
    post_audio_dropout: float = 0.3
    post_vision_dropout: float = 0.3
    post_fusion_dropout: float = 0.3
    num_classes: int = 3

    def validate(self) -> None:
        check_model_config(self, sizes=("text_hidden", "audio_hidden", "vision_hidden", "post_text_dim",
                                        "post_audio_dim", "post_vision_dim", "post_fusion_dim"))


@dataclass
class AVMCConfig(AVMCBackbone):
    # AV-Mixup: lam ~ Beta(alpha, alpha) (their mixup_data_no_grad default alpha = 1.0, i.e. uniform);
    # 0 turns the module off (the "w/o AV-Mixup" variant trains on unmixed inputs only)
    mixup_alpha: float = 1.0

    def validate(self) -> None:
        super().validate()
        if not (self.mixup_alpha >= 0 and self.mixup_alpha < float("inf")):
            raise SettingError("model.mixup_alpha", self.mixup_alpha, "a number >= 0 (0 turns AV-Mixup off)")


@dataclass
class Mix:
    """One AV-Mixup draw for a batch: sample b is mixed with sample perm[b] with weight lam on itself."""

    lam: float
    perm: torch.Tensor  # (B,) int64

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Mix rows of x (B, ...): lam * x + (1 - lam) * x[perm]. Also mixes one-hot / soft labels."""
        return self.lam * x + (1.0 - self.lam) * x[self.perm]


class AVMixup(nn.Module):
    """Draws the mix of a training batch; in eval mode (or with alpha = 0) it draws none."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def draw(self, batch_size: int, device: torch.device) -> Mix | None:
        if not self.training or self.alpha <= 0:
            return None
        # the global torch generator, which the trainer seeds per (seed, stage, epoch): resumable runs
        a = torch.tensor(self.alpha)
        lam = float(torch.distributions.Beta(a, a).sample())
        return Mix(lam, torch.randperm(batch_size).to(device))


@dataclass
class AVMCOutput:
    """What AV-MC's losses need: fusion logits (B, C) and score (B,), per-modality logits (B, 3, C), the
    last hidden vectors of the unimodal heads, the pooled inputs the network saw, and the mix (if any)."""

    logits: torch.Tensor
    score: torch.Tensor
    modality_logits: torch.Tensor
    features: dict[str, torch.Tensor]  # modality -> (B, post dim)
    inputs: dict[str, torch.Tensor]  # modality -> (B, D), after pooling and any mix
    mixed: str | None = None  # the modality mixed, or None
    mix: Mix | None = None


class Head(nn.Module):
    """dropout -> Linear+ReLU -> Linear+ReLU -> Linear to `out` (V1's post_*_layer_1..3).
    Returns (the hidden vector after the second layer, the output)."""

    def __init__(self, dim: int, hidden: int, out: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.layer1 = nn.Linear(dim, hidden)
        self.layer2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.layer2(torch.relu(self.layer1(self.drop(x)))))
        return h, self.out(h)


class AVMCNet(nn.Module):
    """The V1 network without the mixup module (MC-Teacher builds on it too)."""

    def __init__(self, c: AVMCBackbone) -> None:
        super().__init__()
        dims = {m: int(c.dims[m]) for m in MODALITIES}
        self.text_proj = nn.Linear(dims["text"], c.text_hidden)  # V1's `tliner`
        self.audio_net = PooledSubNet(dims["audio"], c.audio_hidden, c.audio_dropout)
        self.vision_net = PooledSubNet(dims["vision"], c.vision_hidden, c.vision_dropout)
        post = {"text": c.post_text_dim, "audio": c.post_audio_dim, "vision": c.post_vision_dim}
        self.heads = nn.ModuleDict({
            "text": Head(c.text_hidden, c.post_text_dim, c.num_classes, c.post_text_dropout),
            "audio": Head(c.audio_hidden, c.post_audio_dim, c.num_classes, c.post_audio_dropout),
            "vision": Head(c.vision_hidden, c.post_vision_dim, c.num_classes, c.post_vision_dropout),
        })
        self.post_dims = post
        self.fusion = nn.Sequential(
            nn.Dropout(c.post_fusion_dropout),
            nn.Linear(sum(post.values()), c.post_fusion_dim),
            nn.Linear(c.post_fusion_dim, c.post_fusion_dim),  # no activation between, as V1
        )
        self.classifier = nn.Linear(c.post_fusion_dim, c.num_classes)
        self.score = nn.Linear(c.post_fusion_dim, 1)

    @staticmethod
    def pool(batch: Batch) -> dict[str, torch.Tensor]:
        """Each modality's features averaged over its true length: (B, D) per modality."""
        return {m: masked_mean(getattr(batch, m).float(), batch.lengths(m)) for m in MODALITIES}

    def run(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                             dict[str, torch.Tensor]]:
        """Pooled inputs -> (fusion logits (B, C), score (B,), modality logits (B, 3, C), head features)."""
        encoded = {"text": self.text_proj(inputs["text"]), "audio": self.audio_net(inputs["audio"]),
                   "vision": self.vision_net(inputs["vision"])}
        features, logits = {}, []
        for m in MODALITIES:
            features[m], out = self.heads[m](encoded[m])
            logits.append(out)
        fused = self.fusion(torch.cat([features[m] for m in MODALITIES], dim=-1))  # (B, post_fusion_dim)
        return self.classifier(fused), self.score(fused).squeeze(-1), torch.stack(logits, 1), features


class AVMC(nn.Module):
    def __init__(self, config: AVMCConfig) -> None:
        super().__init__()
        check_dims("av_mc", config.dims)
        self.config = config
        self.net = AVMCNet(config)
        self.mixup = AVMixup(config.mixup_alpha)

    def represent(self, batch: Batch, mixed: str | None = None, mix: Mix | None = None) -> AVMCOutput:
        """The network on `batch`, with modality `mixed`'s pooled inputs mixed by `mix` (None: unmixed)."""
        check_features("av_mc", batch, self.config.dims)
        inputs = self.net.pool(batch)
        if mixed is not None and mix is not None:
            inputs[mixed] = mix.apply(inputs[mixed])
        logits, score, modality_logits, features = self.net.run(inputs)
        return AVMCOutput(logits, score, modality_logits, features, inputs,
                          mixed if mix is not None else None, mix)

    def mixup_forward(self, batch: Batch, modality: str = "audio") -> AVMCOutput:
        """The training path through AV-Mixup: `modality` (audio or vision) mixed across the batch by a
        fresh draw; in eval mode no mix is drawn and this is `represent(batch)`."""
        if modality not in MIXED:
            raise ValueError(f"AV-Mixup mixes audio or vision, not {modality!r}")
        return self.represent(batch, modality, self.mixup.draw(len(batch), batch.index.device))

    def forward(self, batch: Batch) -> ModelOutput:
        out = self.represent(batch)
        return ModelOutput(logits=out.logits, modality_logits=out.modality_logits, regression=out.score)


@register_model("av_mc", AVMCConfig, "AV-MC: audio/vision mixup across samples + unimodal heads (Liu et al. 2022)",
                recipe="affectus.training.recipes.av_mc:AVMCRecipe", variants="av_mc.yaml",
                capabilities=Capabilities(unimodal_heads=True, extra_forward=("mixup_forward",)),
                paper="Liu et al., Make Acoustic and Visual Cues Matter: CH-SIMS v2.0 Dataset and AV-Mixup "
                      "Consistent Module, ICMI 2022")
def build(config: AVMCConfig) -> AVMC:
    return AVMC(config)
