"""MMIN: Missing Modality Imagination Network (Zhao, Li and Jin, ACL 2021, "Missing Modality Imagination
Network for Emotion Recognition with Uncertain Missing Modalities"; official code AIM3-RUC/MMIN, branch
master). The network; its two-stage training (full-modality encoder pretraining, then imagination under
the missing conditions) is `training/recipes/mmin.py`. docs/baselines/mmin.md has every setting's source.

forward(batch):
1. Utterance-level modality encoders (networks/textcnn.py, networks/lstm.py): text through a TextCNN (convolutions of
   heights 3/4/5 over the word sequence, ReLU, max over time, dropout, Linear+ReLU), audio and vision
   through a one-layer unidirectional LSTM whose outputs are max-pooled over time: h_m (B, E) each.
   An absent modality is what MMIN was trained on: a zero input (here one zero step), so its h_m is
   the encoder's response to silence; the imagination below replaces it.
2. The cascade residual autoencoder (CRA, networks/autoencoder.py ResidualAE): x = [h_t; h_a; h_v] (B, 3E) goes through
   `n_blocks` autoencoders, block k reading the input plus the sum of the earlier blocks' outputs
   (Delta z_k = D_k(E_k(x + sum_{j<k} Delta z_j))); a transition MLP maps x + sum Delta z to the
   imagined full-modality representation h' (B, 3E), trained to match the pretrained encoders' output
   of the missing modalities (forward imagination). The joint latent c = [E_1(.); ...; E_K(.)]
   (B, K * ae_layers[-1]) is the concatenation of the blocks' bottlenecks.
3. With `cycle` (MMIN), a second CRA maps h' back to x (backward imagination, the cycle-consistency
   loss); it is used by training only (`represent`).
4. A fully connected classifier on c gives the logits (networks/classifier.py FcClassifier).

IF-MMIN (`invariant`, models/if_mmin.py) adds a shared encoder S that maps each modality's h_m to a
modality-invariant feature; H' = [S(h_t); S(h_a); S(h_v)] guides every CRA block (block k reads the
previous block's output plus H', and the first block reads x + H'), and training pulls H' towards the
pretrained S applied to the full-modality h (its recipe); IF-MMIN has no backward CRA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import AffectusError
from affectus.models.layers import check_dims
from affectus.models.output import ModelOutput
from affectus.models.registry import Capabilities, check_model_config, register_model
from affectus.models.tfn import check_features


@dataclass
class MMINConfig:
    # Input feature size per modality; set from the data. Default: the paper's IEMOCAP features
    # (scripts/CAP_mmin.sh: BERT-large 1024 text, ComParE 130 audio, DenseFace 342 vision).
    dims: dict[str, int] = field(default_factory=lambda: {"text": 1024, "audio": 130, "vision": 342})
    embd: int = 128  # embd_size_a / _v / _l (CAP_mmin.sh): each encoder's utterance vector
    text_kernels: list[int] = field(default_factory=lambda: [3, 4, 5])  # TextCNN kernel_heights (networks/textcnn.py)
    text_channels: int = 128  # TextCNN out_channels per kernel height (networks/textcnn.py)
    text_dropout: float = 0.5  # TextCNN dropout before its Linear (networks/textcnn.py)
    ae_layers: list[int] = field(default_factory=lambda: [256, 128, 64])  # AE_layers (CAP_mmin.sh)
    n_blocks: int = 5  # number of CRA blocks (CAP_mmin.sh --n_blocks=5)
    cls_layers: list[int] = field(default_factory=lambda: [128, 128])  # classifier hidden layers (CAP_mmin.sh)
    dropout: float = 0.5  # classifier dropout_rate (CAP_mmin.sh)
    cycle: bool = True  # the backward CRA and its cycle-consistency loss (mmin_model.py netAE_cycle)
    share_weight: bool = False  # forward and backward CRA share weights (mmin_model.py --share_weight, off)
    # IF-MMIN: the shared (modality-invariant) encoder and the invariant-guided CRA (models/if_mmin.py)
    invariant: bool = False
    invariant_layers: int = 2  # Linear+LeakyReLU layers of the shared encoder (IF-MMIN networks/shared.py, default branch)
    num_classes: int = 3

    def validate(self) -> None:
        check_model_config(self, sizes=("embd", "text_channels", "n_blocks", "invariant_layers"))
        for key in ("text_kernels", "ae_layers", "cls_layers"):
            values = list(getattr(self, key))
            if (not values and key != "cls_layers") or any(not isinstance(v, int) or v < 1 for v in values):
                raise AffectusError(f"model.{key} = {values}: expected a list of positive integers"
                                    + ("" if key == "cls_layers" else " (at least one)"))
        if self.share_weight and not self.cycle:
            raise AffectusError("model.share_weight needs model.cycle = true (it ties the backward CRA to the forward one)")


@dataclass
class MMINParts:
    """Everything the recipe's losses read from one forward pass."""

    logits: torch.Tensor  # (B, C)
    feats: torch.Tensor  # (B, 3E) x = [h_t; h_a; h_v], absent modalities encoded from a zero input
    imagined: torch.Tensor  # (B, 3E) h', the forward CRA's output
    latent: torch.Tensor  # (B, n_blocks * ae_layers[-1]) the joint representation c
    cycle: torch.Tensor | None = None  # (B, 3E) the backward CRA's output (MMIN's cycle), None without
    invariant: torch.Tensor | None = None  # (B, 3E) H' (IF-MMIN), None without


class TextCNN(nn.Module):
    """Convolutions over the word sequence, ReLU, max over the valid positions, dropout, Linear+ReLU.

    A window is valid when it starts inside the true length and ends inside max(length, kernel): a text
    shorter than a kernel reads its zero padding (as the official code's batch padding does), and
    nothing beyond that, so a sample's output does not depend on the batch it is in."""

    def __init__(self, dim: int, embd: int, kernels: list[int], channels: int, dropout: float) -> None:
        super().__init__()
        self.kernels = [int(k) for k in kernels]
        self.convs = nn.ModuleList(nn.Conv1d(dim, channels, k) for k in self.kernels)
        self.dropout = nn.Dropout(dropout)
        self.embd = nn.Linear(len(self.kernels) * channels, embd)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        steps = max(x.shape[1], max(self.kernels))
        x = F.pad(x, (0, 0, 0, steps - x.shape[1])).transpose(1, 2)  # (B, D, T)
        pooled = []
        for k, conv in zip(self.kernels, self.convs):
            act = F.relu(conv(x))  # (B, C, T - k + 1)
            last = (lengths - k + 1).clamp(min=1)  # (B,) number of valid windows
            valid = torch.arange(act.shape[-1], device=x.device)[None, :] < last[:, None]
            pooled.append(act.masked_fill(~valid[:, None, :], float("-inf")).amax(-1))  # (B, C)
        return F.relu(self.embd(self.dropout(torch.cat(pooled, dim=-1))))


class LSTMMaxEncoder(nn.Module):
    """One-layer unidirectional LSTM, outputs max-pooled over the valid steps (MMIN's `maxpool` embedding).
    Unidirectional, so trailing padding cannot reach a valid step's output."""

    def __init__(self, dim: int, embd: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(dim, embd, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # (B, T, E)
        valid = torch.arange(out.shape[1], device=x.device)[None, :] < lengths[:, None]
        return out.masked_fill(~valid[..., None], float("-inf")).amax(1)


class CascadeResidualAE(nn.Module):
    """MMIN's cascade residual autoencoder (the official ResidualAE): `blocks` fully connected autoencoders of widths
    `layers` (encoder: Linear + LeakyReLU between layers, none after the bottleneck; decoder: Linear +
    ReLU, a plain Linear back to the input width) and a transition MLP (Linear, ReLU, Linear).

    forward(x) (MMIN): block k reads x + the previous block's output, accumulated: x_k = x_{k-1} + out_{k-1},
    the result is transition(x_K + out_K). forward(x, guide) (IF-MMIN's IF-IM): block k reads its
    predecessor's output (x for the first) plus the guide, the result is transition(out_K).
    Returns (output (B, dim), latent (B, blocks * layers[-1]))."""

    def __init__(self, dim: int, layers: list[int], blocks: int) -> None:
        super().__init__()
        widths = [dim, *[int(w) for w in layers]]

        def encoder() -> nn.Sequential:
            mods: list[nn.Module] = []
            for i in range(len(widths) - 1):
                mods += [nn.Linear(widths[i], widths[i + 1]), nn.LeakyReLU()]
            return nn.Sequential(*mods[:-1])

        def decoder() -> nn.Sequential:
            back = widths[::-1]
            mods: list[nn.Module] = []
            for i in range(len(back) - 2):
                mods += [nn.Linear(back[i], back[i + 1]), nn.ReLU()]
            return nn.Sequential(*mods, nn.Linear(back[-2], back[-1]))

        self.encoders = nn.ModuleList(encoder() for _ in range(blocks))
        self.decoders = nn.ModuleList(decoder() for _ in range(blocks))
        self.transition = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        latents = []
        if guide is None:
            x_in, out = x, torch.zeros_like(x)
            for enc, dec in zip(self.encoders, self.decoders):
                x_in = x_in + out
                z = enc(x_in)
                out = dec(z)
                latents.append(z)
            return self.transition(x_in + out), torch.cat(latents, dim=-1)
        out = x
        for enc, dec in zip(self.encoders, self.decoders):
            z = enc(out + guide)
            out = dec(z)
            latents.append(z)
        return self.transition(out), torch.cat(latents, dim=-1)


def shared_encoder(embd: int, layers: int) -> nn.Sequential:
    """IF-MMIN's modality-invariant encoder S: `layers` x (Linear(E, E) + LeakyReLU), one for all modalities."""
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(embd, embd), nn.LeakyReLU()]
    return nn.Sequential(*mods)


def fc_classifier(dim: int, layers: list[int], num_classes: int, dropout: float) -> nn.Sequential:
    """Linear + ReLU + Dropout per hidden layer, then a Linear to the classes (MMIN's FcClassifier)."""
    mods: list[nn.Module] = []
    for width in layers:
        mods += [nn.Linear(dim, int(width)), nn.ReLU(), nn.Dropout(dropout)]
        dim = int(width)
    return nn.Sequential(*mods, nn.Linear(dim, num_classes))


class ModalityEncoders(nn.Module):
    """MMIN's three utterance-level encoders: batch -> (B, 3, E), text / audio / vision. A modality
    absent from a sample (`batch.available` False) is encoded from one zero step, MMIN's zero input."""

    def __init__(self, config: MMINConfig, name: str) -> None:
        super().__init__()
        c = config
        self.name = name
        self.dims = {m: int(c.dims[m]) for m in MODALITIES}
        self.nets = nn.ModuleDict({
            "text": TextCNN(self.dims["text"], c.embd, c.text_kernels, c.text_channels, c.text_dropout),
            "audio": LSTMMaxEncoder(self.dims["audio"], c.embd),
            "vision": LSTMMaxEncoder(self.dims["vision"], c.embd),
        })

    def forward(self, batch: Batch, available: torch.Tensor | None = None) -> torch.Tensor:
        check_features(self.name, batch, self.dims)
        if available is None:
            available = batch.availability()
        available = available.to(batch.text.device)
        out = []
        for k, m in enumerate(MODALITIES):
            x = getattr(batch, m).float()  # (B, T, D)
            present = available[:, k]
            if x.shape[1] == 0:  # no steps at all: one zero step
                x = x.new_zeros(x.shape[0], 1, x.shape[2])
            # absent: zero features, one step; present: the true length, read as at least 1
            x = x * present[:, None, None].to(x.dtype)
            lengths = batch.lengths(m).to(x.device).long().clamp(min=1, max=x.shape[1])
            lengths = torch.where(present, lengths, torch.ones_like(lengths))
            valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
            out.append(self.nets[m](x * valid[..., None].to(x.dtype), lengths))
        return torch.stack(out, dim=1)  # (B, 3, E)


def kaiming_init(module: nn.Module) -> None:
    """The official initialisation (`networks/tools.py init_weights`, `--init_type=kaiming`): Kaiming-normal
    weights (fan_in, gain for ReLU) and zero biases for every Linear and convolution; the LSTMs keep
    PyTorch's default."""
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        nn.init.kaiming_normal_(module.weight, a=0, mode="fan_in")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class MMIN(nn.Module):
    name = "mmin"

    def __init__(self, config: MMINConfig) -> None:
        super().__init__()
        check_dims(self.name, config.dims)
        config.validate()
        self.config = c = config
        dim = len(MODALITIES) * c.embd
        self.encoders = ModalityEncoders(c, self.name)
        self.cra = CascadeResidualAE(dim, c.ae_layers, c.n_blocks)
        self.cra_back = None
        if c.cycle and not c.share_weight:
            self.cra_back = CascadeResidualAE(dim, c.ae_layers, c.n_blocks)
        self.shared = shared_encoder(c.embd, c.invariant_layers) if c.invariant else None
        self.classifier = fc_classifier(c.n_blocks * int(c.ae_layers[-1]), c.cls_layers, c.num_classes, c.dropout)
        self.apply(kaiming_init)

    def invariant_features(self, h: torch.Tensor) -> torch.Tensor:
        """IF-MMIN's H: the shared encoder on each modality's vector, concatenated. (B, 3, E) -> (B, 3E)."""
        return self.shared(h).flatten(1)

    def represent(self, batch: Batch) -> MMINParts:
        h = self.encoders(batch)  # (B, 3, E)
        feats = h.flatten(1)  # (B, 3E)
        invariant = self.invariant_features(h) if self.shared is not None else None
        imagined, latent = self.cra(feats, invariant)
        logits = self.classifier(latent)
        cycle = None
        if self.config.cycle:
            back = self.cra if self.cra_back is None else self.cra_back
            cycle, _ = back(imagined)
        return MMINParts(logits, feats, imagined, latent, cycle, invariant)

    def forward(self, batch: Batch) -> ModelOutput:
        h = self.encoders(batch)
        invariant = self.invariant_features(h) if self.shared is not None else None
        _, latent = self.cra(h.flatten(1), invariant)
        return ModelOutput(logits=self.classifier(latent), embeddings=h)


def _capabilities(c: MMINConfig) -> Capabilities:
    # the backward CRA is reached by `represent` only (training's cycle loss); an absent modality's
    # representation is imagined by the CRA, a learned stand-in, so it never enters as raw zeros
    return Capabilities(extra_forward=("represent",), excludes_absent=True)


@register_model("mmin", MMINConfig, "MMIN: cascade residual autoencoder imagines missing modalities, cycle consistency",
                recipe="affectus.training.recipes.mmin:MMINRecipe", variants="mmin.yaml", family="baseline",
                paper="Zhao, Li & Jin, Missing Modality Imagination Network for Emotion Recognition with "
                      "Uncertain Missing Modalities, ACL 2021",
                capabilities=_capabilities)
def build(config: MMINConfig) -> MMIN:
    return MMIN(config)
