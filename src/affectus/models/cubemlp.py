"""CubeMLP (Sun et al., ACM MM 2022, "CubeMLP: An MLP-based Model for Multimodal Sentiment Analysis and
Depression Estimation"), after the authors' code (github.com/kiva12138/CubeMLP: Model.py, MLPProcess.py,
Parameters.py and the README's MOSI command). docs/baselines/cubemlp.md gives every setting's source.

1. Per modality a sequence of width d (`d_common`): text is projected by a bias-free linear map (the
   authors' W_t on BERT states; here on the file's text features); audio and vision run through a
   bidirectional GRU (packed by the true length) whose two directions are summed, then LayerNorm + ReLU.
2. Each sequence is resampled onto `time_len` steps (segment means over its true length: our change,
   since unaligned sequences of different lengths cannot be stacked step by step; the authors pad
   word-aligned sequences to `time_len` with zeros) and the three are stacked into a cube
   X (B, L, M=3, d).
3. CubeMLP blocks (the README's detail figure): three MLP units mix X along the sequence axis L, the modality
   axis M and the channel axis d in turn; each unit is LayerNorm (first, `ln_first`) -> Linear -> GELU ->
   Linear -> dropout, plus a bias-free linear projection of its input as the residual (`res_project`),
   so each unit may change its axis's size (L 100 -> 50 -> 10, d 128 -> 128 -> 32 on MOSI).
4. The output cube is averaged over L and its modality rows concatenated (the README's
   `features_compose_t mean`, `features_compose_k cat`), and a classifier gives C logits: one linear
   layer when that vector is at most 128 wide (the authors' rule), else Linear-ReLU-dropout-Linear.

Absent modalities are scored under the masks: an absent modality's sequence is zero in the cube
(the zeros the authors' padding puts there), and its zeros still pass through the mixing MLPs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import SettingError
from affectus.models.ef_lstm import align_to_steps
from affectus.models.layers import check_dims
from affectus.models.output import ModelOutput
from affectus.models.registry import MAX_SIZE, check_model_config, register_model
from affectus.models.tfn import check_features


@dataclass
class CubeMLPConfig:
    # Input feature size per modality (default: CMU-MOSI's 768 / 5 / 20); set from data.
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    d_common: int = 128  # Parameters.py --d_common 128: the width every modality is brought to
    rnn_layers: int = 2  # Model.py: encoders 'gru' (Parameters.py default) is a 2-layer bidirectional GRU
    time_len: int = 100  # Parameters.py --time_len 100 (the README's MOSI command keeps the default)
    # README MOSI command: --d_hiddens 50-3-128=10-3-32 --d_outs 50-3-128=10-3-32: per block [L, M, d]
    d_hiddens: list[list[int]] = field(default_factory=lambda: [[50, 3, 128], [10, 3, 32]])
    d_outs: list[list[int]] = field(default_factory=lambda: [[50, 3, 128], [10, 3, 32]])
    # README MOSI command: --dropout_mlp 0.1-0.1-0.1 (the L, M, d units) and --dropout 0.1-0.1-0.1-0.1
    # (text, audio, vision after their encoders, and the classifier's hidden layer)
    mlp_dropout: float = 0.1
    input_dropout: float = 0.1
    classifier_dropout: float = 0.1
    num_classes: int = 3

    def validate(self) -> None:
        check_model_config(self, sizes=("d_common", "rnn_layers", "time_len"))
        for name, triples in (("model.d_outs", self.d_outs), ("model.d_hiddens", self.d_hiddens)):
            if not isinstance(triples, (list, tuple)) or not triples or not all(
                    isinstance(t, (list, tuple)) and len(t) == 3 and all(
                        isinstance(v, int) and 1 <= v <= MAX_SIZE for v in t) for t in triples):
                raise SettingError(name, triples, f"a list of [L, M, d] triples (one per block) of positive integers "
                                                  f"up to {MAX_SIZE}")
        if len(self.d_hiddens) != len(self.d_outs):
            raise SettingError("model.d_hiddens", self.d_hiddens, f"as many [L, M, d] triples as model.d_outs "
                                                                  f"({len(self.d_outs)})", "model.d_outs")


class AxisMLP(nn.Module):
    """One MLP unit of a CubeMLP block, mixing one axis of the cube: LayerNorm over that axis ->
    Linear -> GELU -> Linear -> dropout, plus a bias-free projection of the input as residual."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_in, eps=1e-6)  # the authors' eps
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_out)
        self.drop = nn.Dropout(dropout)
        self.residual = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        x = x.movedim(axis, -1)  # the mixed axis last
        y = self.drop(self.fc2(F.gelu(self.fc1(self.norm(x)))))
        return (y + self.residual(x)).movedim(-1, axis)


class CubeBlock(nn.Module):
    """Sequence mixing, then modality mixing, then channel mixing (MLPProcess.py's order). x (B, L, M, d)."""

    def __init__(self, d_in: list[int], d_hidden: list[int], d_out: list[int], dropout: float) -> None:
        super().__init__()
        self.units = nn.ModuleList(AxisMLP(d_in[i], d_hidden[i], d_out[i], dropout) for i in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for axis, unit in zip((1, 2, 3), self.units):
            x = unit(x, axis)
        return x


class CubeMLP(nn.Module):
    def __init__(self, config: CubeMLPConfig) -> None:
        super().__init__()
        check_dims("cubemlp", config.dims)
        config.validate()
        self.config = c = config
        d = c.d_common
        self.text_proj = nn.Linear(int(c.dims["text"]), d, bias=False)  # W_t
        self.rnns = nn.ModuleDict({m: nn.GRU(int(c.dims[m]), d, c.rnn_layers, bidirectional=True, batch_first=True)
                                   for m in ("audio", "vision")})
        for name, p in self.rnns.named_parameters():
            if "weight_hh" in name:  # Train.py's other_model_operations: orthogonal recurrent weights
                nn.init.orthogonal_(p)
        self.norms = nn.ModuleDict({m: nn.LayerNorm(d, eps=1e-6) for m in ("audio", "vision")})
        self.input_drop = nn.Dropout(c.input_dropout)
        sizes = [[c.time_len, len(MODALITIES), d], *[list(t) for t in c.d_outs]]
        self.blocks = nn.ModuleList(CubeBlock(sizes[i], list(c.d_hiddens[i]), sizes[i + 1], c.mlp_dropout)
                                    for i in range(len(c.d_outs)))
        width = sizes[-1][1] * sizes[-1][2]  # mean over L, modality rows concatenated
        if width <= 128:
            self.classifier = nn.Linear(width, c.num_classes)
        else:
            self.classifier = nn.Sequential(nn.Linear(width, 128), nn.ReLU(), nn.Dropout(c.classifier_dropout),
                                            nn.Linear(128, c.num_classes))

    def _encode(self, m: str, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, L_m, D_m) -> (B, L_m, d), zero beyond each sample's length."""
        steps = x.shape[1]
        if m == "text":
            return self.text_proj(x)
        lens = lengths.detach().to("cpu", torch.int64).clamp(min=1, max=steps)
        packed = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.rnns[m](packed)[0], batch_first=True, total_length=steps)
        out = out[..., : self.config.d_common] + out[..., self.config.d_common:]  # the two directions summed
        return F.relu(self.norms[m](out))

    def mix(self, batch: Batch) -> torch.Tensor:
        """The cube after the CubeMLP blocks: (B, L', M', d') (the last `d_outs` triple)."""
        check_features("cubemlp", batch, self.config.dims)
        available = batch.availability().to(batch.text.device)
        rows = []
        for k, m in enumerate(MODALITIES):
            x = getattr(batch, m).float()
            lengths = batch.lengths(m).to(x.device)
            h = self.input_drop(self._encode(m, x, lengths))  # (B, L_m, d)
            full = torch.full_like(lengths, self.config.time_len)
            h = align_to_steps(h, lengths, full, self.config.time_len)  # (B, time_len, d)
            rows.append(h * available[:, k, None, None])  # an absent modality is a zero row of the cube
        x = torch.stack(rows, dim=2)  # (B, L, M, d)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, batch: Batch) -> ModelOutput:
        fused = self.mix(batch).mean(dim=1).flatten(1)  # (B, M' * d')
        return ModelOutput(logits=self.classifier(fused))


@register_model("cubemlp", CubeMLPConfig, "CubeMLP: MLP mixing along sequence, modality and channel axes (Sun et al. 2022)",
                paper="Sun et al., CubeMLP: An MLP-based Model for Multimodal Sentiment Analysis and Depression "
                      "Estimation, ACM MM 2022")
def build(config: CubeMLPConfig) -> CubeMLP:
    return CubeMLP(config)
