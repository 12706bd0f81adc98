"""bc-LSTM: bidirectional contextual LSTM, hierarchical fusion (Poria et al., ACL 2017), docs/baselines/bc_lstm.md.

Each utterance is read inside its video (dialogue), in two levels (the paper's Section 3.3, hierarchical
framework):

1. per modality, a contextual LSTM (bidirectional: bc-LSTM) over the video's utterance features, a dense
   tanh layer per utterance (the contextual unimodal feature, 100-d) and a softmax classifier of its own;
2. the three contextual unimodal features of every utterance concatenated, read by a second bc-LSTM, a
   dense ReLU layer (500) and the softmax classifier of the verdict.

The recipe (training/recipes/bc_lstm.py) trains level 1 first, each modality keeping its own best epoch,
then level 2 on the frozen level-1 features, as the authors' code does. The data layer gives the video
(data/context.py, `Capabilities.utterance_context`). An utterance lacking a modality is skipped by that
modality's LSTM (the authors' Keras `Masking(0)`), and its contextual feature is zero at the fusion input:
on text-only data (MELD) level 2 reads the text features alone.
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
from affectus.models.sequence import SequenceRNN, utterance_sequence
from affectus.models.tfn import check_features


@dataclass
class BCLSTMConfig:
    dims: dict[str, int] = field(default_factory=lambda: {"text": 100, "audio": 73, "vision": 100})  # set from data
    # utterances read on each side of the sample within its video: the paper reads the whole video
    # (MAX_WINDOW reaches any video's end); 0: the utterance alone (a sequence of one)
    window: int = MAX_WINDOW
    causal: bool = False  # only the utterances before it (sc-LSTM's direction; what live use can have)
    bidirectional: bool = True  # False: sc-LSTM, the paper's unidirectional variant (Section 3.2.2)
    # The authors' lstm.py (declare-lab/contextual-utterance-level-multimodal-sentiment-analysis), unimodal():
    # Bidirectional(LSTM(300, dropout=0.6)), Dropout(0.9), TimeDistributed(Dense(100, tanh)), Dropout(0.9),
    # TimeDistributed(Dense(classes, softmax))
    hidden: int = 300
    unimodal_in_dropout: float = 0.6  # on the LSTM's inputs (Keras `dropout`)
    unimodal_dropout: float = 0.9  # after the LSTM and after the dense layer (Keras Dropout(0.9): rate dropped)
    unimodal_dense: int = 100
    # multimodal(): Bidirectional(LSTM(300, dropout=0.4)), Dropout(0.9), TimeDistributed(Dense(500, relu)),
    # Dropout(0.9), TimeDistributed(Dense(classes, softmax))
    fusion_hidden: int = 300
    fusion_in_dropout: float = 0.4
    fusion_dropout: float = 0.9
    fusion_dense: int = 500
    num_classes: int = 3

    def validate(self) -> None:
        check_model_config(self, sizes=("hidden", "unimodal_dense", "fusion_hidden", "fusion_dense"))
        if isinstance(self.window, bool) or not isinstance(self.window, int) or not 0 <= self.window <= MAX_WINDOW:
            raise SettingError("model.window", self.window, f"a number of utterances in [0, {MAX_WINDOW}] (0: none)")
        if self.causal and not self.window:
            raise SettingError("model.causal", self.causal, "set only with model.window >= 1", "model.window")


class _Unimodal(nn.Module):
    """Level 1 for one modality: contextual LSTM, dense tanh (the contextual feature), softmax head."""

    def __init__(self, d_in: int, c: BCLSTMConfig) -> None:
        super().__init__()
        self.rnn = SequenceRNN("lstm", d_in, c.hidden, c.unimodal_in_dropout, c.bidirectional)
        self.dense = nn.Sequential(nn.Dropout(c.unimodal_dropout), nn.Linear(self.rnn.out_dim, c.unimodal_dense),
                                   nn.Tanh())
        self.head = nn.Sequential(nn.Dropout(c.unimodal_dropout), nn.Linear(c.unimodal_dense, c.num_classes))


class BCLSTM(nn.Module):
    def __init__(self, config: BCLSTMConfig) -> None:
        super().__init__()
        check_dims("bc_lstm", config.dims)
        self.config = config
        c = config
        self.unimodal = nn.ModuleDict({m: _Unimodal(int(c.dims[m]), c) for m in MODALITIES})
        self.fusion = SequenceRNN("lstm", 3 * c.unimodal_dense, c.fusion_hidden, c.fusion_in_dropout, c.bidirectional)
        self.out = nn.Sequential(nn.Dropout(c.fusion_dropout), nn.Linear(self.fusion.out_dim, c.fusion_dense),
                                 nn.ReLU(), nn.Dropout(c.fusion_dropout), nn.Linear(c.fusion_dense, c.num_classes))

    def forward(self, batch: Batch) -> ModelOutput:
        check_features("bc_lstm", batch, self.config.dims)
        seq = utterance_sequence(batch)
        feats, uni_logits = [], []
        for k, m in enumerate(MODALITIES):
            branch = self.unimodal[m]
            present = seq.available[..., k] & seq.mask  # (B, W)
            u = branch.dense(branch.rnn(seq.x[m], present)) * present[..., None].float()  # (B, W, 100)
            feats.append(u)
            uni_logits.append(branch.head(seq.at_centre(u)))  # (B, C)
        h = self.fusion(torch.cat(feats, dim=-1), seq.mask)  # (B, W, 2H)
        return ModelOutput(logits=self.out(seq.at_centre(h)), modality_logits=torch.stack(uni_logits, dim=1))


def _capabilities(c: BCLSTMConfig) -> Capabilities:
    return Capabilities(excludes_absent=True, unimodal_heads=True,
                        utterance_context=(c.window, c.causal) if c.window else None)


@register_model("bc_lstm", BCLSTMConfig,
                "bc-LSTM: contextual bi-LSTMs over the video's utterances per modality, then hierarchical fusion",
                recipe="affectus.training.recipes.bc_lstm:BCLSTMRecipe",
                variants={
                    "default": {"description": "bc-LSTM, hierarchical: the whole video, both directions",
                                "overrides": {}},
                    "sc_lstm": {"description": "sc-LSTM: unidirectional contextual LSTMs (the paper's Section "
                                               "3.2.2): the utterances before the sample (a forward LSTM's "
                                               "output there reads nothing later)",
                                "overrides": {"model.bidirectional": False, "model.causal": True}},
                    "no_context": {"description": "each utterance alone (a sequence of one), same network",
                                   "overrides": {"model.window": 0}},
                },
                capabilities=_capabilities,
                paper="Poria et al., Context-Dependent Sentiment Analysis in User-Generated Videos, ACL 2017")
def build(config: BCLSTMConfig) -> BCLSTM:
    return BCLSTM(config)
