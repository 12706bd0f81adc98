"""Layers shared by the models that read each utterance inside its video or dialogue (bc-LSTM, MMMU-BA).

Such a model declares `Capabilities.utterance_context`, and the data layer (data/context.py) then gives
every batch each sample's group as a sequence of utterances (`Batch.seq_*`). `utterance_sequence` reads
that sequence, or, for a batch without one (model.window = 0, a hand-made Batch, the service's probe),
makes each sample a sequence of one: itself. `SequenceRNN` runs a bidirectional recurrent layer over the
utterances of a sequence that have a modality, as the authors' Keras `Masking(0)` layers do (an
utterance whose vector is all zeros is skipped).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES


@dataclass
class UtteranceSequence:
    """S distinct sequences of up to W utterances, and which one each of the B samples reads."""

    x: dict[str, torch.Tensor]  # modality -> (S, W, D) each utterance's pooled feature (0 where absent)
    available: torch.Tensor  # (S, W, 3) bool: the utterance has the modality (False at padding)
    mask: torch.Tensor  # (S, W) bool: a real utterance
    centre: torch.Tensor  # (B,) int64: the sample's own place in its sequence
    index: torch.Tensor  # (B,) int64: the sample's sequence

    def at_centre(self, h: torch.Tensor) -> torch.Tensor:
        """(S, W, ...) -> (B, ...): each sample's own utterance's row."""
        return h[self.index, self.centre]

    def of_sample(self, h: torch.Tensor) -> torch.Tensor:
        """(S, W, ...) -> (B, W, ...): each sample's whole sequence."""
        return h[self.index]


def utterance_sequence(batch: Batch) -> UtteranceSequence:
    """The batch's utterance sequences; a batch without them: each sample alone (its features averaged over
    their true steps, present where `batch.available` says so and its length is > 0)."""
    device = batch.index.device
    if batch.seq_mask is not None:
        return UtteranceSequence({m: getattr(batch, f"seq_{m}").float() for m in MODALITIES},
                                 batch.seq_available.bool(), batch.seq_mask.bool(), batch.seq_centre.long(),
                                 batch.seq_index.long())
    present = batch.availability().to(device).clone()
    x = {}
    for k, m in enumerate(MODALITIES):
        feats = getattr(batch, m).float()  # (B, L, D)
        lengths = batch.lengths(m).to(device).long().clamp(min=0, max=feats.shape[1])
        steps = (torch.arange(feats.shape[1], device=device)[None, :] < lengths[:, None]).float()  # (B, L)
        pooled = (feats * steps[..., None]).sum(1) / lengths.clamp(min=1)[:, None].float()
        present[:, k] &= lengths > 0
        x[m] = (pooled * present[:, k, None].float())[:, None, :]  # (B, 1, D)
    b = len(batch)
    return UtteranceSequence(x, present[:, None, :], torch.ones(b, 1, dtype=torch.bool, device=device),
                             torch.zeros(b, dtype=torch.long, device=device), torch.arange(b, device=device))


class SequenceRNN(nn.Module):
    """A bidirectional LSTM or GRU over the utterances of each sequence that are `present`, in order, the
    others skipped (the authors' Keras `Masking`); (B, W, D), (B, W) bool -> (B, W, 2H) (H when not
    bidirectional), zeros at the skipped utterances. `in_dropout` drops input features (Keras' `dropout=` argument of the layer)."""

    def __init__(self, kind: str, d_in: int, hidden: int, in_dropout: float, bidirectional: bool = True) -> None:
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[kind]
        self.rnn = rnn(d_in, hidden, batch_first=True, bidirectional=bidirectional)
        self.drop = nn.Dropout(in_dropout)
        self.out_dim = (2 if bidirectional else 1) * hidden

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        w = x.shape[1]
        # the present utterances first, in their order (a stable sort on "absent"), then run packed
        order = torch.sort((~present).to(torch.int8), dim=1, stable=True).indices  # (B, W)
        packed_x = self.drop(x).gather(1, order[..., None].expand(-1, -1, x.shape[2]))
        lengths = present.sum(1).clamp(min=1).cpu()  # a sequence without the modality reads one zero step
        packed = pack_padded_sequence(packed_x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=w)  # (B, W, 2H), compacted order
        h = torch.zeros_like(out).scatter(1, order[..., None].expand(-1, -1, out.shape[2]), out)
        return h * present[..., None].to(h.dtype)
