"""EF-LSTM: early-fusion LSTM, the baseline of MMSA's `models/singleTask/EF_LSTM.py` (after Williams
et al. 2018, "Recognizing Emotions in Video Using Multimodal DNN Feature Fusion", as benchmarked in
Yu et al. 2020 / MMSA).

Early fusion concatenates the three modalities step by step into one sequence and reads it with one
LSTM. That needs a shared timeline: MMSA runs EF-LSTM on word-aligned data only. Our data is usually
unaligned (MOSI: 50 text tokens, 375 audio frames, 500 video frames), so audio and vision are first
resampled onto the text timeline, per sample and by true lengths: text step i of T takes the mean of
the source frames in [floor(i S / T), ceil((i + 1) S / T)) of the S valid ones (`align_to_steps`).
On aligned data (equal lengths) this is the identity.

Then, as MMSA: normalisation -> multi-layer LSTM -> final hidden state -> dropout -> Linear + ReLU ->
dropout -> Linear to 3-class logits. MMSA's BatchNorm1d(seq_len) normalises each *time step* over
batch and features; we normalise each *feature* over the valid steps of the batch instead (what
BatchNorm is meant to do for mixed-scale features such as BERT + COVAREP + Facet), and pack the
sequence by the text length so padding never enters the LSTM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from affectus.data.batches import Batch
from affectus.models.layers import check_dims
from affectus.models.output import ModelOutput
from affectus.models.registry import check_model_config, register_model
from affectus.models.tfn import batchnorm_any_batch, check_features, lstm_last_hidden


@dataclass
class EFLSTMConfig:
    # Input feature size per modality (default: CMU-MOSI's 768 / 5 / 20); set from data.
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    # MMSA config_regression.json, ef_lstm / mosi: hidden_dims 128, num_layers 4, dropout 0.5.
    hidden: int = 128
    layers: int = 4
    dropout: float = 0.5  # between LSTM layers and before each output Linear
    num_classes: int = 3

    def validate(self) -> None:
        check_model_config(self, sizes=("hidden", "layers"))


def align_to_steps(x: torch.Tensor, src_lengths: torch.Tensor, tgt_lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """Resample each sample's valid source steps onto `tgt_lengths[b]` target steps by segment means.

    x (B, S_max, D), src_lengths (B,), tgt_lengths (B,) -> (B, steps, D); target steps beyond the
    target length are zero. Integer arithmetic, so the segments are exact (identity when S == T).
    """
    s_max = x.shape[1]
    dev = x.device
    s = src_lengths.to(dev).long().clamp(min=1, max=s_max)[:, None]  # (B, 1)
    t = tgt_lengths.to(dev).long().clamp(min=1, max=steps)[:, None]  # (B, 1)
    i = torch.arange(steps, device=dev)[None, :]  # (1, T)
    start = torch.div(i * s, t, rounding_mode="floor")  # (B, T)
    end = -torch.div(-(i + 1) * s, t, rounding_mode="floor")  # ceil; >= start + 1 since s >= 1
    j = torch.arange(s_max, device=dev)[None, None, :]  # (1, 1, S)
    w = (j >= start[..., None]) & (j < end[..., None]) & (i < t)[..., None]  # (B, T, S)
    w = w.to(x.dtype)
    w = w / w.sum(-1, keepdim=True).clamp(min=1.0)
    return torch.bmm(w, x)  # (B, T, D)


class EFLSTM(nn.Module):
    def __init__(self, config: EFLSTMConfig) -> None:
        super().__init__()
        check_dims("ef_lstm", config.dims)
        self.config = config
        in_dim = sum(int(config.dims[m]) for m in ("text", "audio", "vision"))
        self.norm = nn.BatchNorm1d(in_dim)
        self.lstm = nn.LSTM(
            in_dim, config.hidden, num_layers=config.layers, batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,  # torch warns on dropout with one layer
        )
        self.out = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.num_classes),
        )

    def forward(self, batch: Batch) -> ModelOutput:
        check_features("ef_lstm", batch, self.config.dims)
        text = batch.text.float()  # (B, T, Dt): the shared timeline
        steps = text.shape[1]
        t_len = batch.text_lengths.to(text.device).long().clamp(min=1, max=steps)
        audio = align_to_steps(batch.audio.float(), batch.audio_lengths, t_len, steps)  # (B, T, Da)
        vision = align_to_steps(batch.vision.float(), batch.vision_lengths, t_len, steps)  # (B, T, Dv)
        x = torch.cat([text, audio, vision], dim=-1)  # (B, T, Dt + Da + Dv)
        valid = torch.arange(steps, device=x.device)[None, :] < t_len[:, None]  # (B, T)
        # normalise features over the valid steps only; padding stays zero (and is packed away)
        x = x.masked_scatter(valid[..., None], batchnorm_any_batch(self.norm, x[valid]))
        h = lstm_last_hidden(self.lstm, x, t_len)  # (B, H)
        return ModelOutput(logits=self.out(h))  # (B, C)


@register_model("ef_lstm", EFLSTMConfig, "EF-LSTM: early-fusion LSTM on text-aligned features (MMSA)",
                paper="early-fusion LSTM as in MMSA (Yu et al., ACL 2020, CH-SIMS)")
def build(config: EFLSTMConfig) -> EFLSTM:
    return EFLSTM(config)
