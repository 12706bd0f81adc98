"""MCTN: Multimodal Cyclic Translation Network (Pham et al., AAAI 2019, "Found in Translation: Learning
Robust Joint Representations by Cyclic Translations Between Modalities"), the hierarchical (trimodal)
form of the authors' Keras code (github.com/hainow/MCTN: seq2seq/mctn_models.py, models/trimodals.py,
models/regression_model.py, configs/hierarchical_mctn.yaml). Its losses are `training/recipes/mctn.py`;
docs/baselines/mctn.md gives every setting's source.

From the source modality S (text by default; the paper's Fig. 1 translates language -> visual with the
cycle, then the joint representation -> acoustic) alone:
1. Every modality is resampled onto `steps` steps (segment means over its true length; the authors cut
   word-aligned sequences to max_seq_len 20). X_S (B, T, D_S), targets X_T1, X_T2 likewise.
2. Level 1: a bidirectional LSTM encoder (directions summed) gives E1 = enc(X_S)
   (B, T, H); an attention LSTM decoder translates it into X^_T1 = dec(E1). The cycle translates
   X^_T1 back: X^_S = dec'(enc'(X^_T1)), with an encoder / decoder pair of its own (the paper's back
   translation; the Keras code calls the same layers on the other modality's width).
3. Level 2 (hierarchical MCTN, the paper's Fig. 1 bottom): a second encoder reads E1, E2 = enc2(E1), and a decoder
   translates it into X^_T2. No cycle at this level (the authors': no ground truth for it).
4. Prediction (regression_model.py): an LSTM over E2, attention pooling (tanh scores, softmax over the
   steps) and a linear layer give C logits (the authors regress one score).

Only the source is read to predict (`forward`); `translate` also returns the translations the training
losses compare with the real targets. At test time MCTN needs only the source (the paper's point):
absent audio or vision change nothing, an absent source is a zero input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import SettingError
from affectus.models.ef_lstm import align_to_steps
from affectus.models.layers import check_dims
from affectus.models.output import ModelOutput
from affectus.models.registry import Capabilities, check_model_config, register_model
from affectus.models.tfn import check_features


@dataclass
class MCTNConfig:
    # Input feature size per modality (default: CMU-MOSI's 768 / 5 / 20); set from data.
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    # The source modality and the level-1 target (translated with the cycle); the remaining modality is the
    # level-2 target. The paper's Fig. 1: language -> visual with the cycle, then -> acoustic. An empty
    # `cycle_target` is vision for a text source, else the first other modality in text / audio / vision order.
    source: str = "text"
    cycle_target: str = ""
    steps: int = 20  # configs/hierarchical_mctn.yaml general.max_seq_len 20
    hidden: int = 32  # translation1 / translation2 hidden_dim 32 (encoder and decoder)
    reg_hidden: int = 32  # regression.reg_hidden_dim 32 (the prediction LSTM)
    dropout: float = 0.0  # mctn_models.py dropout=0.0 between recurrent layers (depth (1, 1): no layer gets any)
    num_classes: int = 3

    def validate(self) -> None:
        check_model_config(self, sizes=("steps", "hidden", "reg_hidden"))
        if self.source not in MODALITIES:
            raise SettingError("model.source", self.source, "one of text, audio, vision")
        if self.cycle_target and (self.cycle_target not in MODALITIES or self.cycle_target == self.source):
            raise SettingError("model.cycle_target", self.cycle_target,
                               f"empty or one of {', '.join(m for m in MODALITIES if m != self.source)} "
                               f"(a modality other than model.source = {self.source})", "model.source")

    @property
    def targets(self) -> tuple[str, str]:
        """(level-1 target, translated with the cycle; level-2 target)."""
        others = [m for m in MODALITIES if m != self.source]
        first = self.cycle_target or ("vision" if self.source == "text" else others[0])
        return first, next(m for m in others if m != first)


@dataclass
class MCTNParts:
    """What the training losses read (`forward` returns the logits alone)."""

    logits: torch.Tensor  # (B, C)
    source: torch.Tensor  # (B, T, D_S) the resampled source X_S
    translated: torch.Tensor  # (B, T, D_T1) X^_T1 (level 1)
    cycled: torch.Tensor  # (B, T, D_S) X^_S, the source translated back from X^_T1 (the cycle)
    translated2: torch.Tensor  # (B, T, D_T2) X^_T2 (level 2)


class SumBiLSTM(nn.Module):
    """Bidirectional LSTM whose two directions are summed (Keras Bidirectional merge_mode='sum')."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, H)
        out, _ = self.lstm(x)
        return out[..., : self.hidden] + out[..., self.hidden:]


class AttentionDecoder(nn.Module):
    """An LSTM decoder that emits `steps` output vectors, each step reading its previous output and an
    attention context over the encoder states (the authors' AttentionDecoderCell: no teacher forcing).
    Starts from the mean encoder state."""

    def __init__(self, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(hidden, hidden, bias=False)  # bilinear attention score h W e
        self.cell = nn.LSTMCell(out_dim + hidden, hidden)
        self.out = nn.Linear(2 * hidden, out_dim)
        self.out_dim = out_dim

    def forward(self, enc: torch.Tensor, steps: int) -> torch.Tensor:  # (B, T, H) -> (B, steps, out_dim)
        h = enc.mean(dim=1)
        c = torch.zeros_like(h)
        y = enc.new_zeros(enc.shape[0], self.out_dim)
        keys = self.score(enc)  # (B, T, H)
        outs = []
        for _ in range(steps):
            att = torch.softmax(torch.einsum("bh,bth->bt", h, keys), dim=-1)  # (B, T)
            context = torch.einsum("bt,bth->bh", att, enc)
            h, c = self.cell(torch.cat([y, context], dim=-1), (h, c))
            y = self.out(torch.cat([h, context], dim=-1))
            outs.append(y)
        return torch.stack(outs, dim=1)


class MCTN(nn.Module):
    def __init__(self, config: MCTNConfig) -> None:
        super().__init__()
        check_dims("mctn", config.dims)
        config.validate()
        self.config = c = config
        t1, t2 = c.targets
        d_s, d_1, d_2 = (int(c.dims[m]) for m in (c.source, t1, t2))
        self.encoder = SumBiLSTM(d_s, c.hidden)  # level 1: S -> T1
        self.decoder = AttentionDecoder(c.hidden, d_1)
        self.back_encoder = SumBiLSTM(d_1, c.hidden)  # the cycle: T1^ -> S
        self.back_decoder = AttentionDecoder(c.hidden, d_s)
        self.encoder2 = SumBiLSTM(c.hidden, c.hidden)  # level 2: E1 -> T2
        self.decoder2 = AttentionDecoder(c.hidden, d_2)
        self.drop = nn.Dropout(c.dropout)
        self.reg_lstm = nn.LSTM(c.hidden, c.reg_hidden, batch_first=True)
        self.attention = nn.Linear(c.reg_hidden, 1)
        self.head = nn.Linear(c.reg_hidden, c.num_classes)  # the authors put an L2 penalty (0.01) on it

    def resample(self, batch: Batch, modality: str) -> torch.Tensor:
        """(B, L, D) -> (B, steps, D): each sample's valid steps spread over all `steps` steps."""
        x = getattr(batch, modality).float()
        lengths = batch.lengths(modality).to(x.device)
        return align_to_steps(x, lengths, torch.full_like(lengths, self.config.steps), self.config.steps)

    def _joint(self, x_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e1 = self.encoder(x_s)  # (B, T, H)
        e2 = self.encoder2(self.drop(e1))  # (B, T, H): the joint representation the prediction reads
        return e1, e2

    def _predict(self, e2: torch.Tensor) -> torch.Tensor:
        a, _ = self.reg_lstm(e2)  # (B, T, R)
        weights = torch.softmax(torch.tanh(self.attention(a)).squeeze(-1), dim=-1)  # (B, T)
        return self.head(torch.einsum("bt,btr->br", weights, a))

    def translate(self, batch: Batch) -> MCTNParts:
        check_features("mctn", batch, self.config.dims)
        steps = self.config.steps
        x_s = self.resample(batch, self.config.source)
        e1, e2 = self._joint(x_s)
        translated = self.decoder(self.drop(e1), steps)
        cycled = self.back_decoder(self.back_encoder(translated), steps)
        translated2 = self.decoder2(self.drop(e2), steps)
        return MCTNParts(self._predict(e2), x_s, translated, cycled, translated2)

    def forward(self, batch: Batch) -> ModelOutput:
        check_features("mctn", batch, self.config.dims)
        _, e2 = self._joint(self.resample(batch, self.config.source))
        return ModelOutput(logits=self._predict(e2))


# The paper's ablation of the cycle (its Seq2Seq rows: translation without the cycle-consistency loss).
VARIANTS = {
    "default": {"description": "hierarchical MCTN: text -> vision with the cycle, then -> audio", "overrides": {}},
    "no_cycle": {"description": "w/o cycle: the back translation is not trained (recipe.cycle_weight 0)",
                 "overrides": {"recipe.cycle_weight": 0.0}},
}


@register_model("mctn", MCTNConfig, "MCTN: cyclic Seq2Seq translation from the source modality (Pham et al. 2019)",
                recipe="affectus.training.recipes.mctn:MCTNRecipe", variants=VARIANTS,
                capabilities=lambda c: Capabilities(extra_forward=("translate",), needs_in_training=(
                    (c.source, f"model.source = {c.source}: MCTN translates from its source modality"),)),
                paper="Pham et al., Found in Translation: Learning Robust Joint Representations by Cyclic "
                      "Translations Between Modalities, AAAI 2019")
def build(config: MCTNConfig) -> MCTN:
    return MCTN(config)
