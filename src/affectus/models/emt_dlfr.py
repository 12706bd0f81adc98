"""EMT-DLFR (Sun, Lian, Liu and Tao, IEEE Trans. Affective Computing 2023, "Efficient Multimodal Transformer
with Dual-Level Feature Restoration for Robust Multimodal Sentiment Analysis"; arXiv 2208.07589, 2022, which
the CUMDF paper cites as "EMT"): the network. Its training (a complete and a randomly corrupted view of each
batch, with the two restoration losses) is `training/recipes/emt_dlfr.py`; docs/baselines/emt_dlfr.md gives
every setting's source.

forward(batch), the authors' `forward_once`:
1. Unimodal encoders. Audio / vision: an LSTM packed by the true length; its per-step outputs and its final
   state pass one Linear (the authors' AuViSubNet) -> a local sequence (B, T, out) and an utterance vector
   (B, out). Text: the data's per-token features are the local sequence and their mean over the true length
   the utterance vector (the authors fine-tune BERT and take its [CLS] and token states; here the text
   features are precomputed, like a frozen BERT).
2. Each is mapped to the width d (bias-free Linear, identity when already d). The three utterance vectors
   form the global multimodal context (GMC, 3 tokens); the local sequences get sinusoidal positions.
3. EMT (paper sec. 3.2): per layer and modality m, a mutual promotion unit (MPU) in two directions: the local
   sequence of m queries the GMC and the GMC queries the local sequence of m (each half-MPU: pre-norm
   cross-attention, self-attention, GEGLU feed-forward, all residual). The three promoted GMCs are pooled
   by a learned attention over modalities (eq. 6's aggregation). MPUs and pools may be shared across
   directions, modalities and layers (the authors' MOSI setting shares all three).
4. Prediction: [u_text; u_audio; u_vision; GMC (3d)] -> dropout -> two Linear+ReLU -> C logits.

For DLFR (`parts`): SimSiam projectors (Linear + BatchNorm without affine) and predictors (Linear, BatchNorm,
ReLU, Linear) on the GMC and on each utterance vector (the high-level attraction, eq. 10), and one Linear per
modality from EMT's promoted local sequences back to the input features (the low-level reconstruction,
eq. 9).

An absent modality (zero-filled, length 0) reads as one zero frame: its LSTM reads the first step and its
attention keys keep the first position, which is what the authors' feature dropping gives at rate 1.0
(every frame zeroed). So all 7 availability conditions run without NaN; the zeros still sway the verdict.
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
from affectus.models.late_fusion import masked_mean
from affectus.models.layers import check_dims
from affectus.models.mult import sinusoidal_positions
from affectus.models.output import ModelOutput
from affectus.models.registry import Capabilities, check_model_config, register_model
from affectus.models.tfn import check_features

HIGH_LEVEL = ("gmc", "text", "audio", "vision")  # the representations DLFR's attraction pulls together


@dataclass
class EMTDLFRConfig:
    # Input feature size per modality (default: CMU-MOSI's BERT 768 / COVAREP 5 / Facet 20); set from data.
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    # Official code config/config_regression.py, emt-dlfr / mosi:
    audio_hidden: int = 32  # a_lstm_hidden_size
    vision_hidden: int = 64  # v_lstm_hidden_size
    audio_out: int = 16  # audio_out
    vision_out: int = 32  # video_out
    audio_dropout: float = 0.0  # a_lstm_dropout (after the final LSTM state)
    vision_dropout: float = 0.0  # v_lstm_dropout
    d: int = 128  # d_model
    layers: int = 3  # fusion_layers
    heads: int = 4  # heads
    ff_expansion: int = 4  # ff_expansion (GEGLU: d -> 2 * 4d -> 4d -> d)
    emb_dropout: float = 0.0  # emb_dropout (after the positions)
    attn_dropout: float = 0.3  # attn_dropout (on the attention weights)
    ff_dropout: float = 0.1  # ff_dropout
    mpu_share: bool = True  # one MPU for both directions (mpu_share)
    modality_share: bool = True  # one MPU for the three modalities (modality_share)
    layer_share: bool = True  # one MPU and one pool for every layer (layer_share)
    gmc_pred_dim: int = 128  # gmc_tokens_pred_dim: SimSiam predictor bottleneck on the GMC (3d)
    text_pred_dim: int = 256  # text_pred_dim
    audio_pred_dim: int = 8  # audio_pred_dim
    vision_pred_dim: int = 16  # video_pred_dim
    post_fusion_dim: int = 256  # post_fusion_dim
    post_fusion_dropout: float = 0.3  # post_fusion_dropout
    num_classes: int = 3  # the scheme's classes (the authors regress one score)

    def validate(self) -> None:
        check_model_config(self, sizes=("audio_hidden", "vision_hidden", "audio_out", "vision_out", "d", "layers",
                                        "heads", "ff_expansion", "gmc_pred_dim", "text_pred_dim", "audio_pred_dim",
                                        "vision_pred_dim", "post_fusion_dim"))
        if self.d % self.heads:
            raise SettingError("model.heads", self.heads, f"a divisor of model.d = {self.d}", "model.d")


@dataclass
class EMTParts:
    """What DLFR's losses read from one view (forward returns the `ModelOutput` view of it)."""

    logits: torch.Tensor  # (B, C)
    z: dict[str, torch.Tensor]  # SimSiam projections, per HIGH_LEVEL name: (B, dim)
    p: dict[str, torch.Tensor]  # SimSiam predictions, same shapes
    recon: dict[str, torch.Tensor]  # per modality: (B, T_m, D_m), the input features restored from EMT's output


class _Attention(nn.Module):
    """Multi-head attention of the authors' EMT (bias-free q and kv maps, an output map), queries from x and
    keys / values from `context` (x itself when None). `mask` (B, Tk) bool, True = a key to attend to."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.to_q = nn.Linear(d, d, bias=False)
        self.to_kv = nn.Linear(d, 2 * d, bias=False)
        self.to_out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, tq, d = x.shape
        h = self.heads
        q = self.to_q(x).view(b, tq, h, d // h).transpose(1, 2)  # (B, H, Tq, hd)
        k, v = (t.view(b, -1, h, d // h).transpose(1, 2) for t in self.to_kv(context).chunk(2, dim=-1))
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, Tk)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).reshape(b, tq, d))


class _GEGLUFeedForward(nn.Module):
    def __init__(self, d: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.inp = nn.Linear(d, 2 * mult * d)
        self.out = nn.Linear(mult * d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gates = self.inp(x).chunk(2, dim=-1)
        return self.drop(self.out(a * F.gelu(gates)))


class HalfMPU(nn.Module):
    """One direction of a mutual promotion unit (the authors' CrossSelfTransformer, depth 1): the target x
    is promoted by the source: x += CrossAttn(LN x, LN source); x += SelfAttn(LN x); x += FF(LN x)."""

    def __init__(self, c: EMTDLFRConfig) -> None:
        super().__init__()
        d = c.d
        self.norm_x = nn.LayerNorm(d)
        self.norm_src = nn.LayerNorm(d)
        self.cross = _Attention(d, c.heads, c.attn_dropout)
        self.norm_self = nn.LayerNorm(d)
        self.self_attn = _Attention(d, c.heads, c.attn_dropout)
        self.norm_ff = nn.LayerNorm(d)
        self.ff = _GEGLUFeedForward(d, c.ff_expansion, c.ff_dropout)

    def forward(self, x: torch.Tensor, source: torch.Tensor, x_mask: torch.Tensor | None,
                source_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.cross(self.norm_x(x), self.norm_src(source), source_mask)
        x = x + self.self_attn(self.norm_self(x), None, x_mask)
        return x + self.ff(self.norm_ff(x))


class ModalityPool(nn.Module):
    """The authors' NaiveAttention: softmax over the M promoted GMCs of Linear-tanh-Linear scores.
    (B, M, 3d) -> (B, 3d)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.score(x), dim=1)  # (B, M, 1)
        return (w * x).sum(dim=1)


class EMT(nn.Module):
    """The efficient multimodal transformer: GMC (B, 3, d) <-> local sequences [(B, T_m, d)] for `layers`
    layers; returns the promoted GMC (B, 3, d) and the promoted local sequences."""

    def __init__(self, c: EMTDLFRConfig) -> None:
        super().__init__()
        self.c = c
        n_dir = 1 if c.mpu_share else 2
        n_mod = 1 if c.modality_share else len(MODALITIES)
        n_layer = 1 if c.layer_share else c.layers
        self.mpus = nn.ModuleList(HalfMPU(c) for _ in range(n_dir * n_mod * n_layer))
        self.pools = nn.ModuleList(ModalityPool(len(MODALITIES) * c.d) for _ in range(n_layer))
        self.emb_drop = nn.Dropout(c.emb_dropout)

    def _mpu(self, layer: int, modality: int, direction: int) -> HalfMPU:
        c = self.c
        n_dir = 1 if c.mpu_share else 2
        n_mod = 1 if c.modality_share else len(MODALITIES)
        li = 0 if c.layer_share else layer
        mi = 0 if c.modality_share else modality
        di = 0 if c.mpu_share else direction
        return self.mpus[(li * n_mod + mi) * n_dir + di]

    def forward(self, gmc: torch.Tensor, seqs: list[torch.Tensor],
                masks: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, n_tok, d = gmc.shape
        seqs = [self.emb_drop(x + sinusoidal_positions(x.shape[1], d, x.device)) for x in seqs]
        for layer in range(self.c.layers):
            promoted = []
            for k in range(len(seqs)):
                # local <- global, then global <- local, both from the GMC of the previous layer (the authors')
                new_x = self._mpu(layer, k, 0)(seqs[k], gmc, masks[k], None)
                promoted.append(self._mpu(layer, k, 1)(gmc, seqs[k], None, masks[k]).reshape(b, -1))
                seqs[k] = new_x
            pool = self.pools[0 if self.c.layer_share else layer]
            gmc = pool(torch.stack(promoted, dim=1)).view(b, n_tok, d)
        return gmc, seqs


class AuViEncoder(nn.Module):
    """The authors' AuViSubNet: LSTM (packed by true length) -> per-step outputs and final state, each
    through one Linear. x (B, T, D), lengths (B,) -> (local (B, T, out), utterance (B, out))."""

    def __init__(self, dim: int, hidden: int, out: int, dropout: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        steps = x.shape[1]
        lengths = lengths.detach().to("cpu", torch.int64).clamp(min=1, max=steps)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        outputs, (h, _) = self.lstm(packed)
        local, _ = pad_packed_sequence(outputs, batch_first=True, total_length=steps)  # (B, T, H), 0 beyond
        return self.linear(local), self.linear(self.drop(h[-1]))


def _projector(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim, affine=False))


def _predictor(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, dim))


def key_masks(batch: Batch, steps: dict[str, int], device: torch.device) -> list[torch.Tensor]:
    """(B, T_m) bool per modality: the valid steps; a sample without any keeps its first (zero) step, so
    no attention row is empty."""
    masks = []
    for m in MODALITIES:
        lengths = batch.lengths(m).to(device).long().clamp(min=1, max=steps[m])
        masks.append(torch.arange(steps[m], device=device)[None, :] < lengths[:, None])
    return masks


class EMTDLFR(nn.Module):
    def __init__(self, config: EMTDLFRConfig) -> None:
        super().__init__()
        check_dims("emt_dlfr", config.dims)
        config.validate()
        self.config = c = config
        dims = {m: int(c.dims[m]) for m in MODALITIES}
        self.audio_net = AuViEncoder(dims["audio"], c.audio_hidden, c.audio_out, c.audio_dropout)
        self.vision_net = AuViEncoder(dims["vision"], c.vision_hidden, c.vision_out, c.vision_dropout)
        outs = {"text": dims["text"], "audio": c.audio_out, "vision": c.vision_out}
        # bias-free equalisation to d, the identity where a width already is d (the authors')
        self.proj = nn.ModuleDict({m: nn.Identity() if outs[m] == c.d else nn.Linear(outs[m], c.d, bias=False)
                                   for m in MODALITIES})
        self.fusion = EMT(c)
        gmc_dim = len(MODALITIES) * c.d
        widths = {"gmc": gmc_dim, **outs}
        pred = {"gmc": c.gmc_pred_dim, "text": c.text_pred_dim, "audio": c.audio_pred_dim, "vision": c.vision_pred_dim}
        self.projectors = nn.ModuleDict({k: _projector(widths[k]) for k in HIGH_LEVEL})
        self.predictors = nn.ModuleDict({k: _predictor(widths[k], pred[k]) for k in HIGH_LEVEL})
        self.recon = nn.ModuleDict({m: nn.Linear(c.d, dims[m]) for m in MODALITIES})
        self.post_drop = nn.Dropout(c.post_fusion_dropout)
        self.post1 = nn.Linear(sum(outs.values()) + gmc_dim, c.post_fusion_dim)
        self.post2 = nn.Linear(c.post_fusion_dim, c.post_fusion_dim)
        self.head = nn.Linear(c.post_fusion_dim, c.num_classes)

    def _encode(self, batch: Batch):
        check_features("emt_dlfr", batch, self.config.dims)
        text = batch.text.float()
        device = text.device
        u_t = masked_mean(text, batch.text_lengths)  # (B, Dt)
        seq_a, u_a = self.audio_net(batch.audio.float(), batch.audio_lengths)
        seq_v, u_v = self.vision_net(batch.vision.float(), batch.vision_lengths)
        utts = {"text": u_t, "audio": u_a, "vision": u_v}
        seqs = {"text": text, "audio": seq_a, "vision": seq_v}
        gmc = torch.stack([self.proj[m](utts[m]) for m in MODALITIES], dim=1)  # (B, 3, d)
        local = [self.proj[m](seqs[m]) for m in MODALITIES]
        masks = key_masks(batch, {m: seqs[m].shape[1] for m in MODALITIES}, device)
        gmc, local = self.fusion(gmc, local, masks)
        gmc = gmc.reshape(gmc.shape[0], -1)  # (B, 3d)
        h = self.post_drop(torch.cat([u_t, u_a, u_v, gmc], dim=-1))
        h = F.relu(self.post2(F.relu(self.post1(h))))
        return self.head(h), utts, gmc, local

    def parts(self, batch: Batch) -> EMTParts:
        """One view's prediction, SimSiam projections / predictions and restored input features."""
        logits, utts, gmc, local = self._encode(batch)
        high = {"gmc": gmc, **utts}
        z = {k: self.projectors[k](high[k]) for k in HIGH_LEVEL}
        p = {k: self.predictors[k](z[k]) for k in HIGH_LEVEL}
        recon = {m: self.recon[m](local[k]) for k, m in enumerate(MODALITIES)}
        return EMTParts(logits=logits, z=z, p=p, recon=recon)

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self._encode(batch)[0])


# The ablations of DLFR in the paper's ablation study (without the low-level reconstruction, without the high-level
# attraction, without both) and our option for the seeds' whole-modality protocol.
VARIANTS = {
    "default": {"description": "EMT-DLFR: frame dropping at 0.5, both restoration losses", "overrides": {}},
    "wo_recon": {"description": "w/o low-level reconstruction", "overrides": {"recipe.recon_weight": 0.0}},
    "wo_attra": {"description": "w/o high-level attraction (and the complete view's prediction loss inside it)",
                 "overrides": {"recipe.attra_weight": 0.0}},
    "wo_dlfr": {"description": "w/o DLFR: the incomplete view's prediction loss alone",
                "overrides": {"recipe.attra_weight": 0.0, "recipe.recon_weight": 0.0}},
    "modality_drop": {"description": "ours: the incomplete view also loses whole modalities (rate 0.3)",
                      "overrides": {"recipe.modality_rate": 0.3}},
}


@register_model("emt_dlfr", EMTDLFRConfig,
                "EMT-DLFR: global-local multimodal transformer with dual-level feature restoration (Sun et al. 2023)",
                recipe="affectus.training.recipes.emt_dlfr:EMTDLFRRecipe",
                capabilities=Capabilities(extra_forward=("parts",)),
                variants=VARIANTS,
                paper="Sun, Lian, Liu and Tao, Efficient Multimodal Transformer with Dual-Level Feature Restoration "
                      "for Robust Multimodal Sentiment Analysis, IEEE TAC 2023 (CUMDF's \"EMT\", arXiv 2022)")
def build(config: EMTDLFRConfig) -> EMTDLFR:
    return EMTDLFR(config)
