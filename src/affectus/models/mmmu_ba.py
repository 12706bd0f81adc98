"""MMMU-BA: multi-modal multi-utterance bi-modal attention (Ghosal et al., EMNLP 2018), docs/baselines/mmmu_ba.md.

Each utterance is read inside its video (dialogue): per modality, a bidirectional GRU over the video's
utterances and a dense tanh layer give D_m (u x 100, the paper's Section 3.2 / Figure 1). For each pair of
modalities (X, Y) of (V, T), (A, V), (T, A), the bi-modal attention of Section 3.3 (eqs. 1-5):

    M1 = X Y^T,  N1 = softmax(M1) (over Y's utterances),  O1 = N1 Y,  A1 = O1 * X   (and the same with X, Y
    swapped: A2),  BA_XY = [A1, A2]

then the concatenation [BA_VT, BA_AV, BA_TA, D_V, D_A, D_T] and a dense softmax layer per utterance. We
compute the sample's own utterance's row: its query against every utterance of its video.

The data layer gives the video (data/context.py, `Capabilities.utterance_context`); the attention reads the
video's real utterances only (padding and utterances lacking Y are masked out of the softmax). An absent
modality's D_m is zero, so a pair with an absent modality contributes zeros: on text-only data (MELD) the
verdict reads D_T alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from affectus.data.batches import Batch
from affectus.data.context import MAX_WINDOW
from affectus.data.types import MODALITIES
from affectus.errors import SettingError
from affectus.models.layers import check_dims
from affectus.models.output import ModelOutput
from affectus.models.registry import Capabilities, check_model_config, register_model
from affectus.models.sequence import SequenceRNN, UtteranceSequence, utterance_sequence
from affectus.models.tfn import check_features

# the pairs of the authors' code (trimodal_attention_models.py, mode MMMU_BA), in its order
PAIRS = (("vision", "text"), ("audio", "vision"), ("text", "audio"))
_K = {m: k for k, m in enumerate(MODALITIES)}


@dataclass
class MMMUBAConfig:
    dims: dict[str, int] = field(default_factory=lambda: {"text": 100, "audio": 73, "vision": 100})  # set from data
    # utterances read on each side of the sample within its video: the paper reads the whole video
    # (MAX_WINDOW reaches any video's end); 0: the utterance alone (the sequence of one)
    window: int = MAX_WINDOW
    causal: bool = False  # only the utterances before it (not in the paper; what live use can have)
    # the authors' trimodal_attention_models.py: Bidirectional(GRU(300, dropout=0.5, recurrent_dropout=0.5)),
    # Dropout(0.7), TimeDistributed(Dense(100, tanh)), Dropout(0.7); the paper's Section 4.2 (300 / 100 units)
    hidden: int = 300
    rnn_dropout: float = 0.5  # on the GRU's inputs (Keras `dropout`); recurrent_dropout is not reproduced
    rnn_out_dropout: float = 0.7
    dense: int = 100
    dense_dropout: float = 0.7
    num_classes: int = 3

    def validate(self) -> None:
        check_model_config(self, sizes=("hidden", "dense"))
        if isinstance(self.window, bool) or not isinstance(self.window, int) or not 0 <= self.window <= MAX_WINDOW:
            raise SettingError("model.window", self.window, f"a number of utterances in [0, {MAX_WINDOW}] (0: none)")
        if self.causal and not self.window:
            raise SettingError("model.causal", self.causal, "set only with model.window >= 1", "model.window")


def _bimodal(x: torch.Tensor, y: torch.Tensor, seq: UtteranceSequence, kx: int, ky: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eqs. 1-5 for the sample's own utterance: [A1, A2] (B, 2d) and the attention weights N1, N2 (B, W)."""
    xc, yc = seq.at_centre(x), seq.at_centre(y)  # (B, d): the sample's own utterance
    xs, ys = seq.of_sample(x), seq.of_sample(y)  # (B, W, d): its video's utterances
    keys = seq.of_sample(seq.available & seq.mask[..., None])  # (B, W, 3)
    n1 = _attend(torch.einsum("bd,bwd->bw", xc, ys), keys[..., ky])
    n2 = _attend(torch.einsum("bd,bwd->bw", yc, xs), keys[..., kx])
    a1 = torch.einsum("bw,bwd->bd", n1, ys) * xc
    a2 = torch.einsum("bw,bwd->bd", n2, xs) * yc
    return torch.cat([a1, a2], dim=-1), n1, n2


def _attend(scores: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Softmax over the valid keys (B, W) bool; zeros where a row has none (finite fill: no NaN gradient)."""
    weights = torch.softmax(scores.masked_fill(~keys, torch.finfo(scores.dtype).min), dim=-1)
    return weights * keys.to(weights.dtype)


class MMMUBA(nn.Module):
    def __init__(self, config: MMMUBAConfig) -> None:
        super().__init__()
        check_dims("mmmu_ba", config.dims)
        self.config = config
        c = config
        self.rnn = nn.ModuleDict({m: SequenceRNN("gru", int(c.dims[m]), c.hidden, c.rnn_dropout) for m in MODALITIES})
        self.dense = nn.ModuleDict({m: nn.Sequential(nn.Dropout(c.rnn_out_dropout), nn.Linear(2 * c.hidden, c.dense),
                                                     nn.Tanh(), nn.Dropout(c.dense_dropout)) for m in MODALITIES})
        self.out = nn.Linear(2 * c.dense * len(PAIRS) + 3 * c.dense, c.num_classes)

    def encode(self, batch: Batch) -> tuple[UtteranceSequence, dict[str, torch.Tensor]]:
        """The sequences and each modality's D_m (B, W, dense), zero where an utterance lacks the modality."""
        check_features("mmmu_ba", batch, self.config.dims)
        seq = utterance_sequence(batch)
        d = {}
        for k, m in enumerate(MODALITIES):
            present = seq.available[..., k] & seq.mask
            d[m] = self.dense[m](self.rnn[m](seq.x[m], present)) * present[..., None].float()
        return seq, d

    def attention(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Each pair's attention weights of the sample's own utterance over its video's utterances, (B, W):
        "vision-text" is N1 of (X, Y) = (V, T) (V's query over T's utterances), "text-vision" its N2."""
        seq, d = self.encode(batch)
        out = {}
        for x, y in PAIRS:
            _, n1, n2 = _bimodal(d[x], d[y], seq, _K[x], _K[y])
            out[f"{x}-{y}"], out[f"{y}-{x}"] = n1, n2
        return out

    def forward(self, batch: Batch) -> ModelOutput:
        seq, d = self.encode(batch)
        pairs = [_bimodal(d[x], d[y], seq, _K[x], _K[y])[0] for x, y in PAIRS]
        own = [seq.at_centre(d[m]) for m in ("vision", "audio", "text")]
        return ModelOutput(logits=self.out(torch.cat([*pairs, *own], dim=-1)))


def _capabilities(c: MMMUBAConfig) -> Capabilities:
    return Capabilities(excludes_absent=True, utterance_context=(c.window, c.causal) if c.window else None)


@register_model("mmmu_ba", MMMUBAConfig,
                "MMMU-BA: bi-GRU per modality over the video's utterances, bi-modal attention over T-A, T-V, A-V",
                variants={
                    "default": {"description": "MMMU-BA: the whole video, bi-modal attention", "overrides": {}},
                    "no_context": {"description": "each utterance alone (a sequence of one): the attention reads "
                                                  "the utterance's own modalities only",
                                   "overrides": {"model.window": 0}},
                },
                capabilities=_capabilities,
                paper="Ghosal et al., Contextual Inter-modal Attention for Multi-modal Sentiment Analysis, EMNLP 2018")
def build(config: MMMUBAConfig) -> MMMUBA:
    return MMMUBA(config)
