"""CUMDF: Counterfactual-based Uncertain Missing Modality Distillation Framework (the paper "Label-Guided
Enhancement: A Distillation Framework for Uncertainty-Aware Multimodal Emotion Recognition"; no public
code). The network; its teacher / student training is `training/recipes/cumdf.py`. docs/cumdf.md lists
every choice the paper leaves open, beside the equation it completes.

forward(batch), per modality m in text (L) / audio (A) / vision (V):
1. X'_m = Conv1D(X_m) + PE (eq. 1), cut to `max_lengths[m]` steps.
2. MKE (sec. 2.2): AMSKE, a one-layer Transformer per modality -> X_m_spe (eq. 2); GMCKE, the
   parameter-free cross-modal products of eq. 4 -> X_m_com (4d); X~_m = X_m_spe + W_com X_m_com.
3. LG-MMT (sec. 2.3): a label embedding e (eq. 5's E_y[y]) gates every modality's sequence (eq. 5) and is
   the one attention query (eq. 6) over the valid tokens of each pair (L,A), (L,V), (A,V) (eqs. 7-8);
   residual + FFN + LayerNorm (eq. 9); global average pooling; H = [H_LA; H_LV; H_AV].
   The label is never read at inference: e is the expected label embedding under a first-pass
   prediction from the pooled MKE features (docs/cumdf.md, "the label at test time").
4. Heads on H: class logits (eq. 9) and a sentiment score (`regression`, scored as MAE on MOSI).

An absent modality (Batch.available False, or no valid step) contributes no token anywhere: its
sequence is zeroed after MKE, pairs without any valid token attend to nothing (a zero output), so
every one of the 7 availability conditions runs without NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.errors import AffectusError
from affectus.models.layers import EncoderLayer, check_dims
from affectus.models.mult import sinusoidal_positions
from affectus.models.output import ModelOutput
from affectus.models.registry import Capabilities, register_model
from affectus.models.tfn import check_features

# LG-MMT's modality pairs (m1, m2), the order of H (eq. 9); m1's steps carry the residual.
PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2))


@dataclass
class CUMDFConfig:
    # Input feature size per modality; the default is the paper's (A.2.1: GloVe 300, COVAREP 74,
    # MA-Net 1024); set from the data.
    dims: dict[str, int] = field(default_factory=lambda: {"text": 300, "audio": 74, "vision": 1024})
    hidden: int = 300  # d, "hidden size" (appendix Table 2)
    heads: int = 4  # attention heads of AMSKE and LG-MMT (paper silent; 300 = 4 x 75)
    ff: int = 300  # feed-forward width of AMSKE and LG-MMT (paper silent; = hidden keeps a step cheap)
    # Appendix Table 2's "dropout rate 0.8", read as the probability of KEEPING a unit (TensorFlow's
    # keep_prob convention of the setting it was copied from), i.e. nn.Dropout(p=0.2); docs/cumdf.md.
    dropout_keep: float = 0.8
    # Maximum sequence lengths (appendix Table 2: language 25, audio 150, video 100); longer inputs keep
    # their first steps.
    max_lengths: dict[str, int] = field(default_factory=lambda: {"text": 25, "audio": 150, "vision": 100})
    kernels: dict[str, int] = field(default_factory=lambda: {"text": 1, "audio": 1, "vision": 1})  # k_m, eq. 1
    use_mke: bool = True  # False: "w/o MKE" (Table 3): X~_m = X'_m
    use_lgmmt: bool = True  # False: "w/o LG-MMT" (Table 3): no label gate, each pair's mean token is the query
    # Training only: the share of samples whose LG-MMT label embedding is the true label's (the paper's
    # literal training form, eq. 5) instead of the first-pass expectation. 0 keeps training and
    # inference identical; see docs/cumdf.md.
    label_forcing: float = 0.0
    num_classes: int = 3

    def validate(self) -> None:
        if self.hidden < 1 or self.heads < 1 or self.hidden % self.heads:
            raise AffectusError(f"cumdf hidden = {self.hidden} must be a positive multiple of heads = {self.heads}")
        if not 0.0 < self.dropout_keep <= 1.0:
            raise AffectusError(f"cumdf dropout_keep = {self.dropout_keep}: expected a keep probability in (0, 1]")
        if not 0.0 <= self.label_forcing <= 1.0:
            raise AffectusError(f"cumdf label_forcing = {self.label_forcing}: expected a share in [0, 1]")
        for key in ("max_lengths", "kernels"):
            values = getattr(self, key)
            if set(values) != set(MODALITIES) or any(int(v) < 1 for v in values.values()):
                raise AffectusError(f"cumdf {key} = {values}: expected a positive integer for text, audio and vision")
        if any(int(k) % 2 == 0 for k in self.kernels.values()):
            raise AffectusError(f"cumdf kernels = {self.kernels}: expected odd sizes ('same' padding)")


@dataclass
class Encoded:
    """MKE's output, what LG-MMT and MACI's counterfactuals start from."""

    seqs: torch.Tensor  # (3, B, T, d) X~_m, zero at invalid steps; T = the longest of the three
    valid: torch.Tensor  # (3, B, T) bool: a real, present step


@dataclass
class CUMDFParts:
    """Everything the recipe's losses read (forward returns the `ModelOutput` view of it)."""

    logits: torch.Tensor  # (B, C), eq. 9
    regression: torch.Tensor  # (B,)
    first_logits: torch.Tensor  # (B, C), the first-pass prediction that picks the label embedding
    fused: torch.Tensor  # (B, 3d), H of eq. 9 (SRD, eq. 10)
    pooled: torch.Tensor  # (B, 3, d), each modality's X~_m averaged over its valid steps (0 if absent)
    present: torch.Tensor  # (B, 3) bool: the modality has at least one valid step
    encoded: Encoded


def masked_pool(seqs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the valid steps: seqs (..., T, d), valid (..., T) -> (..., d); zero where none is valid."""
    w = valid.to(seqs.dtype)
    return (seqs * w.unsqueeze(-1)).sum(-2) / w.sum(-1, keepdim=True).clamp(min=1.0)


class CUMDF(nn.Module):
    def __init__(self, config: CUMDFConfig) -> None:
        super().__init__()
        check_dims("cumdf", config.dims)
        config.validate()
        self.config = c = config
        d, p = c.hidden, 1.0 - c.dropout_keep
        self.proj = nn.ModuleDict({m: nn.Conv1d(int(c.dims[m]), d, int(c.kernels[m]), padding=int(c.kernels[m]) // 2)
                                   for m in MODALITIES})  # eq. 1
        self.drop = nn.Dropout(p)
        if c.use_mke:
            self.amske = nn.ModuleDict({m: EncoderLayer(d, c.heads, c.ff, p) for m in MODALITIES})  # eq. 2
            # X~_m = X_m_spe + W_com X_m_com: the common knowledge (4d) mapped by one map shared by the modalities
            self.common = nn.Linear(4 * d, d)
        # LG-MMT
        self.label_embedding = nn.Embedding(c.num_classes, d)  # E_y (sec. 2.3.1)
        self.first_head = nn.Linear(d, c.num_classes)  # first-pass prediction (our completion)
        self.label_gate = nn.Linear(d, d)  # W_e, b_e (eq. 5)
        self.w_q = nn.Linear(d, d)  # W_Q^LE (eq. 6)
        self.w_k = nn.ModuleDict({m: nn.Linear(d, d) for m in MODALITIES})  # W_K^m
        self.w_v = nn.ModuleDict({m: nn.Linear(d, d) for m in MODALITIES})  # W_V^m
        self.w_o = nn.Linear(d, d)  # W_O (eq. 9)
        self.ffn = nn.Sequential(nn.Linear(d, c.ff), nn.ReLU(), nn.Dropout(p), nn.Linear(c.ff, d))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(3 * d, c.num_classes)  # W_s,pre, b_s (eq. 9)
        self.score_head = nn.Linear(3 * d, 1)
        # pair membership of the modalities: (P, 3) bool
        member = torch.zeros(len(PAIRS), 3, dtype=torch.bool)
        for i, (a, b) in enumerate(PAIRS):
            member[i, a] = member[i, b] = True
        self.register_buffer("member", member, persistent=False)
        self.register_buffer("pair_first", torch.tensor([a for a, _ in PAIRS]), persistent=False)  # m1 of each pair
        self._position_cache: dict[tuple[int, str], torch.Tensor] = {}

    # ------------------------------------------------------------------------------------- MKE

    def encode(self, batch: Batch) -> Encoded:
        """Eqs. 1-4 -> X~_m for the three modalities, padded to one length T."""
        check_features("cumdf", batch, self.config.dims)
        available = batch.availability().to(batch.text.device)  # (B, 3)
        xs, valids = [], []
        for k, m in enumerate(MODALITIES):
            x = getattr(batch, m).float()[:, : int(self.config.max_lengths[m])]  # (B, T_m, D_m)
            steps = x.shape[1]
            lengths = batch.lengths(m).to(x.device).long().clamp(min=0, max=steps)
            valid = (torch.arange(steps, device=x.device)[None, :] < lengths[:, None]) & available[:, k:k + 1]
            x = x * valid.unsqueeze(-1)  # the convolution must not read padding values
            x = self._project(m, x)  # (B, T_m, d)
            x = x + self._positions(steps, x.device)  # eq. 1
            xs.append(self.drop(x))
            valids.append(valid)
        if self.config.use_mke:
            xs = self._mke(xs, valids)
        steps = max(x.shape[1] for x in xs)
        seqs = torch.stack([F.pad(x, (0, 0, 0, steps - x.shape[1])) for x in xs])  # (3, B, T, d)
        valid = torch.stack([F.pad(v, (0, steps - v.shape[1])) for v in valids])  # (3, B, T)
        return Encoded(seqs * valid.unsqueeze(-1), valid)

    def _project(self, m: str, x: torch.Tensor) -> torch.Tensor:
        """Eq. 1's Conv1D: x (B, T, D_m) -> (B, T, d). A width-1 kernel is a per-step linear map, run as
        one matrix product (the same sums; torch's convolution costs ~4x more on these small batches).
        The result keeps the convolution's memory layout, (B, d, T) transposed: dropout draws its mask
        in memory order, so a seed drops the same units either way."""
        conv = self.proj[m]
        if conv.kernel_size[0] > 1:
            return conv(x.transpose(1, 2)).transpose(1, 2)
        return F.linear(x, conv.weight[:, :, 0], conv.bias).transpose(1, 2).contiguous().transpose(1, 2)

    def _positions(self, steps: int, device: torch.device) -> torch.Tensor:
        """(steps, d) sinusoidal codes of eq. 1, built once per length and device."""
        key = (steps, str(device))
        if key not in self._position_cache:
            self._position_cache[key] = sinusoidal_positions(steps, self.config.hidden, device)
        return self._position_cache[key]

    def _mke(self, xs: list[torch.Tensor], valids: list[torch.Tensor]) -> list[torch.Tensor]:
        spe = []
        for k, m in enumerate(MODALITIES):
            # AMSKE (eq. 2): keys beyond the valid steps are masked; a sample without any keeps its first
            # key (its output is zeroed afterwards), so no softmax row is empty.
            keys = valids[k].clone()
            keys[:, 0] = True
            bias = torch.zeros(keys.shape, device=keys.device).masked_fill(~keys, float("-inf"))[:, None, None, :]
            spe.append(self.amske[m](xs[k], bias))  # (B, T_m, d)
        # X~_m = X_m_spe + W_com X_m_com (GMCKE draws no random numbers, so running it after the three
        # AMSKE layers keeps the dropout draws in their order)
        if len({x.shape[1] for x in xs}) == 1:  # one length: the three modalities' W_com in one product
            com = self.common(_gmcke_same_length(torch.stack(xs), torch.stack(valids)))  # (3, B, T, d)
            return [a + c for a, c in zip(spe, com.unbind(0))]
        return [a + self.common(_gmcke(xs, valids, k)) for k, a in enumerate(spe)]

    # ------------------------------------------------------------------------------------ LG-MMT

    def fuse(self, enc: Encoded, classes: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """LG-MMT and the heads on MKE's output. `classes` (training, label_forcing > 0 only) are true
        labels that replace the first-pass expectation for a random share of the samples.

        -> (logits (B, C), score (B,), first-pass logits (B, C), H (B, 3d), pooled (B, 3, d), present (B, 3))."""
        seqs, valid = enc.seqs, enc.valid  # (3, B, T, d), (3, B, T)
        n_mod, b, steps, d = seqs.shape
        pooled = masked_pool(seqs, valid).transpose(0, 1)  # (B, 3, d)
        present = valid.any(-1).transpose(0, 1)  # (B, 3)
        # first pass: the mean of the present modalities' pooled features -> class probabilities
        overall = (pooled * present.unsqueeze(-1)).sum(1) / present.sum(1, keepdim=True).clamp(min=1)  # (B, d)
        first_logits = self.first_head(self.drop(overall))  # (B, C)
        token_valid = valid.permute(1, 0, 2).reshape(b, n_mod * steps)  # (B, 3T)
        pair_valid = token_valid[:, None, :] & self.member.repeat_interleave(steps, dim=1)[None]  # (B, P, 3T)
        if self.config.use_lgmmt:
            probs = first_logits.softmax(-1)  # (B, C)
            if classes is not None and self.training and self.config.label_forcing > 0:
                forced = torch.rand(b, device=probs.device) < self.config.label_forcing
                probs = torch.where(forced[:, None], F.one_hot(classes, probs.shape[-1]).to(probs.dtype), probs)
            e = probs @ self.label_embedding.weight  # (B, d): E_p[E_y[y]], sec. 2.3.1 at test time
            gated = seqs * self.label_gate(e)[None, :, None, :]  # eq. 5: Z~_m = X~_m * (W_e e + b_e)
            query = self.w_q(e)[:, None, :].expand(b, len(PAIRS), d)  # eq. 6: one query per sample, every pair
        else:
            gated = seqs
            tokens = seqs.permute(1, 0, 2, 3).reshape(b, n_mod * steps, d)  # (B, 3T, d), modality-major
            pair_tokens = pair_valid.to(seqs.dtype)
            mean_token = (pair_tokens @ tokens) / pair_tokens.sum(-1, keepdim=True).clamp(min=1)  # (B, P, d)
            query = self.w_q(mean_token)
        keys = torch.cat([self.w_k[m](gated[k]) for k, m in enumerate(MODALITIES)], dim=1)  # (B, 3T, d)
        values = torch.cat([self.w_v[m](gated[k]) for k, m in enumerate(MODALITIES)], dim=1)  # (B, 3T, d)
        h, hd = self.config.heads, d // self.config.heads
        # contiguous heads: batched matrix products over strided (or, for the shared query, expanded)
        # operands fall back to one small product per (sample, head), ~10x slower on CPU
        q = query.reshape(b, -1, h, hd).transpose(1, 2).contiguous()  # (B, h, P, hd)
        kk = keys.view(b, -1, h, hd).transpose(1, 2).contiguous()  # (B, h, 3T, hd)
        vv = values.view(b, -1, h, hd).transpose(1, 2).contiguous()
        att = _masked_softmax(q @ kk.transpose(-1, -2) * hd**-0.5, pair_valid[:, None])  # eqs. 7-8: (B, h, P, 3T)
        heads_out = (att @ vv).transpose(1, 2).reshape(b, -1, d)  # (B, P, d)
        f = self.ffn(self.w_o(heads_out))  # (B, P, d)
        # eq. 9: H_{m1 m2} = LayerNorm(Z~_m1 + FFN(...)) at m1's steps, averaged over them (GAP); an absent
        # m1 leaves LayerNorm(FFN(...)).
        resid = gated[self.pair_first].transpose(0, 1)  # (B, P, T, d)
        res_valid = valid[self.pair_first].transpose(0, 1)  # (B, P, T)
        hseq = self.norm(resid + f[:, :, None, :])  # (B, P, T, d)
        none = ~res_valid.any(-1, keepdim=True)  # (B, P, 1): pool the residual-free first step instead
        pair_h = masked_pool(hseq, res_valid | (none & (torch.arange(steps, device=seqs.device) == 0)))  # (B, P, d)
        fused = pair_h.reshape(b, len(PAIRS) * d)  # H (B, 3d)
        out = self.drop(fused)
        return self.head(out), self.score_head(out).squeeze(-1), first_logits, fused, pooled, present

    def parts(self, batch: Batch) -> CUMDFParts:
        enc = self.encode(batch)
        logits, score, first, fused, pooled, present = self.fuse(enc, batch.classes)
        return CUMDFParts(logits, score, first, fused, pooled, present, enc)

    def forward(self, batch: Batch) -> ModelOutput:
        p = self.parts(batch)
        return ModelOutput(logits=p.logits, regression=p.regression)

    # -------------------------------------------------------------------------- MACI (eqs. 11-13)

    @torch.no_grad()
    def counterfactual_probs(self, enc: Encoded, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prediction with every modality as it is, and with modality m replaced by its training-set
        average `means[m]` (eq. 12) at each of its valid steps, for m = text, audio, vision.

        Run as one batch of 4B samples in eval mode (no dropout noise in the differences).
        -> (full (B, C), counterfactual (3, B, C)) probabilities."""
        was_training = self.training
        self.eval()
        try:
            n_mod, b = enc.seqs.shape[:2]
            copies = [enc.seqs]
            for k in range(n_mod):
                cf = enc.seqs.clone()
                cf[k] = means[k].to(cf.dtype)[None, None, :] * enc.valid[k].unsqueeze(-1)
                copies.append(cf)
            stacked = Encoded(torch.cat(copies, dim=1), enc.valid.repeat(1, n_mod + 1, 1))  # (3, 4B, T, d)
            probs = self.fuse(stacked)[0].softmax(-1).view(n_mod + 1, b, -1)
        finally:
            self.train(was_training)
        return probs[0], probs[1:]

    def attention_weights(self) -> list[torch.Tensor]:
        """W_Q^LE, W_K^m, W_V^m: the matrices L_reg (eq. 17) penalises, in that order."""
        return [self.w_q.weight, *(self.w_k[m].weight for m in MODALITIES), *(self.w_v[m].weight for m in MODALITIES)]


# GMCKE's other modalities n of each modality m, in the order their blocks enter X_m_com
OTHERS: tuple[tuple[int, int], ...] = ((1, 2), (0, 2), (0, 1))


def _gmcke(xs: list[torch.Tensor], valids: list[torch.Tensor], k: int) -> torch.Tensor:
    """GMCKE (eq. 4) for modality k: for each other modality n, S = softmax(tanh(X'_k X'_n^T)) over n's valid
    steps, R = S X'_n, and [R; R * X'_k]; X_k_com = the two of them side by side. xs[m] (B, T_m, d),
    valids[m] (B, T_m) -> (B, T_k, 4d)."""
    com = []
    for j in OTHERS[k]:
        scores = torch.tanh(xs[k] @ xs[j].transpose(1, 2))  # (B, T_k, T_n)
        r = _masked_softmax(scores, valids[j][:, None, :]) @ xs[j]  # (B, T_k, d)
        com += [r, r * xs[k]]
    return torch.cat(com, dim=-1)


def _gmcke_same_length(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`_gmcke` for the three modalities at once when they share one length T (utterance-level features,
    aligned sequences): the pairwise products run as batched products (a few calls in place of ~60; the
    m = n pairs are computed and dropped). x (3, B, T, d), valid (3, B, T) -> X_com (3, B, T, 4d)."""
    n_mod, b, steps, d = x.shape
    scores = torch.tanh(x[:, None] @ x[None].transpose(-1, -2))  # (3 m, 3 n, B, T, T)
    r = _masked_softmax(scores, valid[None, :, :, None, :]) @ x[None]  # (3, 3, B, T, d): R of (m, n)
    rx = r * x[:, None]  # R * X'_m
    m_idx = [k for k in range(n_mod) for _ in OTHERS[k]]
    n_idx = [n for k in range(n_mod) for n in OTHERS[k]]
    blocks = torch.stack([r[m_idx, n_idx], rx[m_idx, n_idx]], dim=1)  # (6 (m, n), 2 [R; R * X'_m], B, T, d)
    # -> (3, B, T, 4d): per m, [R_n1; R_n1 * X'_m; R_n2; R_n2 * X'_m] along the features, as `_gmcke`
    return blocks.view(n_mod, 2, 2, b, steps, d).permute(0, 3, 4, 1, 2, 5).reshape(n_mod, b, steps, 4 * d)


def _masked_softmax(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis where `allowed` (broadcast); a row with nothing allowed is all zeros."""
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return scores.softmax(-1) * allowed.any(-1, keepdim=True)


@register_model("cumdf", CUMDFConfig, "CUMDF: label-guided masked Transformer, teacher-student distillation with "
                "counterfactual modality attribution (missing modalities)",
                recipe="affectus.training.recipes.cumdf:CUMDFRecipe", variants="cumdf.yaml",
                capabilities=Capabilities(excludes_absent=True), family="seed",
                paper="Label-Guided Enhancement: A Distillation Framework for Uncertainty-Aware MER (CUMDF)")  # an absent modality gives no token
def build(config: CUMDFConfig) -> CUMDF:
    return CUMDF(config)
