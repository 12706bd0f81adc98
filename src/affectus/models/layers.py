"""Shared layers: the unimodal Transformer encoder, the residual head, PFM and the router (MCR).

Equation numbers refer to the CMC paper (docs/model.md). The encoder computes the same function as
PyTorch's `nn.TransformerEncoder` of pre-norm layers (the authors' code), only faster:

* one fused qkv projection and `F.scaled_dot_product_attention`, no (L, B, d) transposes; with
  dropout (training), the fast attention kernel of `affectus.models.attention` (SDPA's CPU dropout
  path is slow) and cheaper dropout masks (`attention.keep_mask`);
* every sample is cut to the time steps that matter, and samples of similar length are run together
  ("groups"), since attention costs grow with the square of the length;
* faithful padding mode ("compaction"): trailing time steps of a sample that hold identical rows stay
  identical through every per-token operation, and attention over n identical keys equals attention
  over one of them with log(n) added to its logit. Such a run is computed once, as one token of
  multiplicity n. Exact (up to float rounding) whenever dropout is inactive; see `UnimodalEncoder`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from affectus.data.types import MODALITIES
from affectus.errors import AffectusError
from affectus.models.attention import AttentionKernel, SelfAttention, keep_mask

Padding = Literal["faithful", "masked"]

# Fixed cost of running one more group of samples (the calls it adds), in units of the cost of one
# attention score across the heads: see `plan_groups`. Tuned on 2 CPU cores, where 50k-200k timed
# alike and every group size in between beat one group per batch by ~2x on MOSI-like lengths.
_GROUP_OVERHEAD = 100_000


def check_dims(model: str, dims: dict[str, int]) -> None:
    """One error line when a model config's `dims` lacks a modality (every model reads all three)."""
    missing = [m for m in MODALITIES if m not in dims]
    if missing:
        raise AffectusError(f"{model} config dims lack {', '.join(missing)}: expected text, audio, vision")


def _dropout(x: torch.Tensor, p: float, rows: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Dropout on x (B, L, d), except at the token rows (batch idx, time idx) that stand for many
    identical time steps: those keep their expectation (their copies' independent noise averages out)."""
    keep = keep_mask(x.shape, p, x.device)
    if rows is not None:
        keep[rows] = 1.0
    return x * keep


class EncoderLayer(nn.Module):
    """Pre-norm Transformer encoder layer, ReLU, the parameters of `nn.TransformerEncoderLayer`:
    x = x + drop(attn(norm1(x)));  x = x + drop(linear2(drop(relu(linear1(norm2(x))))))."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float, attention: AttentionKernel = "fast") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, heads, dropout, attention)
        self.norm2 = nn.LayerNorm(d)
        self.linear1 = nn.Linear(d, ff)
        self.linear2 = nn.Linear(ff, d)
        self.dropout = dropout

    def forward(
        self,
        x: torch.Tensor,  # (B, L, d)
        bias: torch.Tensor | None,  # (B, 1, 1, L)
        multi_rows: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        a = self.attn(self.norm1(x), bias, multi_rows)
        x = x + (_dropout(a, p, multi_rows) if p > 0 else a)
        h = F.relu(self.linear1(self.norm2(x)))  # (B, L, ff)
        if p > 0:
            h = _dropout(h, p, multi_rows)
        h = self.linear2(h)
        return x + (_dropout(h, p, multi_rows) if p > 0 else h)


class UnimodalEncoder(nn.Module):
    """Eqs. 1-4: [BatchNorm1d] -> Conv1d(k=1) -> pre-norm Transformer -> mean over time -> L2 norm.

    forward(x (B, L, D), lengths (B,)) -> (B, d).

    padding="faithful" (the authors'): no padding mask; the mean runs over all L steps, padding
    included; `lengths` is not used. BatchNorm (training mode) takes its statistics over all B*L rows.
    padding="masked": keys beyond a sample's length are masked, the mean runs over its true length
    (0 counts as 1), BatchNorm statistics come from the true steps only, and padding content never
    matters.

    compact=True (faithful mode): a sample's trailing run of identical input rows (its padding, when
    padding rows are identical, e.g. zeros) is computed as one token of multiplicity n. With dropout
    inactive (eval mode, or dropout=0) this is the reference's function exactly. In training with
    dropout, that token gets no dropout noise (the reference's n independent masks average out), so
    the noise differs in distribution from the reference's; compact=False runs all L steps instead.
    Inputs that require grad (e.g. BERT outputs being fine-tuned) are never compacted, nor is anything
    while attention dropout runs on SDPA (attention="torch", or the fast kernel's fallback), which
    cannot spare such a token: that path has the reference's noise exactly.
    """

    def __init__(
        self,
        in_dim: int,
        d: int = 32,
        layers: int = 1,
        heads: int = 4,
        ff: int = 128,
        dropout: float = 0.1,
        batchnorm: bool = True,
        padding: Padding = "faithful",
        compact: bool = True,
        attention: AttentionKernel = "fast",
    ) -> None:
        super().__init__()
        if padding not in ("faithful", "masked"):
            raise ValueError(f"padding must be 'faithful' or 'masked', got {padding!r}")
        self.padding = padding
        self.compact = compact
        self.bn = nn.BatchNorm1d(in_dim) if batchnorm else None
        self.proj = nn.Conv1d(in_dim, d, kernel_size=1, bias=False)  # applied as a matmul
        self.layers = nn.ModuleList(EncoderLayer(d, heads, ff, dropout, attention) for _ in range(layers))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        b, steps, _ = x.shape
        if self.padding == "masked":
            if lengths is None:
                raise ValueError("masked padding needs the true lengths")
            n_tok = lengths.to(x.device).long().clamp(1, steps)  # (B,)
            mult = torch.ones_like(n_tok)  # multiplicity of each sample's last token
            denom = n_tok.to(x.dtype)
            valid = torch.arange(steps, device=x.device) < n_tok[:, None]  # (B, L)
            x = self._batchnorm(x.masked_fill(~valid[..., None], 0.0), valid)
        else:
            run = torch.ones(b, dtype=torch.long, device=x.device)  # identical trailing steps
            if self.compact and not x.requires_grad and self._can_spare_padding_token():
                run = self._identical_tail(x).long()
            n_tok, mult = steps - run + 1, run  # tokens kept; the last one stands for `run` steps
            denom = torch.full((b,), float(steps), dtype=x.dtype, device=x.device)
            x = self._batchnorm(x, None)
        pooled = torch.empty(b, self.proj.out_channels, dtype=x.dtype, device=x.device)
        for idx, width in plan_groups(n_tok):
            pooled[idx] = self._run_group(x[idx, :width], n_tok[idx], mult[idx], denom[idx])
        return F.normalize(pooled, dim=-1)  # eq. 4, (B, d)

    def _can_spare_padding_token(self) -> bool:
        """Whether a compacted token can be spared the dropout noise (see the class docstring)."""
        attn = self.layers[0].attn if len(self.layers) else None
        return attn is None or not (self.training and attn.dropout > 0) or attn.exempts_rows

    @staticmethod
    @torch.no_grad()
    def _identical_tail(x: torch.Tensor) -> torch.Tensor:
        """Length (>= 1) of the trailing run of rows equal to the last row, per sample. (B, L, D) -> (B,)."""
        same = (x == x[:, -1:]).all(dim=-1)  # (B, L)
        return same.flip(1).int().cumprod(dim=1).sum(dim=1)

    def _batchnorm(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """BatchNorm1d over the feature axis; statistics over all rows, or over `valid` (B, L) ones."""
        if self.bn is None:
            return x
        bn = self.bn
        rows = x.reshape(-1, x.shape[-1]) if valid is None else x[valid]  # (N, D)
        if self.training and rows.shape[0] == 1:
            # One row has no batch statistics: use the running ones rather than fail.
            normed = F.batch_norm(
                rows, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            )
        else:
            normed = bn(rows)
        if valid is None:
            return normed.view_as(x)
        return _scatter_rows(x, valid, normed)

    def _run_group(
        self,
        x: torch.Tensor,  # (G, W, D) BatchNorm-ed input, cut to the group's longest sample
        n_tok: torch.Tensor,  # (G,) tokens per sample
        mult: torch.Tensor,  # (G,) multiplicity of each sample's last token
        denom: torch.Tensor,  # (G,) divisor of the mean over time
    ) -> torch.Tensor:
        g, width, _ = x.shape
        h = F.linear(x, self.proj.weight.squeeze(-1))  # Conv1d(k=1) == per-step linear map, (G, W, d)
        pos = torch.arange(width, device=x.device)
        last = n_tok - 1
        weight = (pos < last[:, None]).to(x.dtype)  # (G, W): 1 per real token, 0 beyond
        weight[torch.arange(g, device=x.device), last] = mult.to(x.dtype)
        bias = None
        multi_rows = None
        if not bool((weight == 1).all()):
            bias = weight.log()[:, None, None, :]  # (G, 1, 1, W): n identical keys == one key + log n
            many = torch.nonzero(mult > 1).squeeze(1)
            if many.numel():
                multi_rows = (many, last[many])
        for layer in self.layers:
            h = layer(h, bias, multi_rows)
        # Mean over time (eq. 3): each token counts as often as the steps it stands for.
        return (weight.unsqueeze(1) @ h).squeeze(1) / denom[:, None]  # (G, d)


def plan_groups(n_tok: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """Split a batch into groups of samples run together, each cut to its longest sample's width.

    Sorted by token count, the samples are cut into consecutive groups minimising the estimated cost
    sum_g (n_g * W_g * (W_g + 32) + overhead): attention grows with W^2, the per-token layers with W,
    and each group costs a fixed number of calls. An exact dynamic programme over split points.
    Returns [(sample indices (n_g,), width W_g)].
    """
    order = torch.argsort(n_tok, descending=True)
    widths = n_tok[order].cpu().numpy().astype(np.float64)  # descending
    b = widths.shape[0]
    per_sample = widths * (widths + 32.0)  # cost of one sample in a group as wide as `widths[i]`
    best = np.zeros(b + 1)  # best[j]: cheapest plan for the first j samples
    start = np.zeros(b + 1, dtype=np.int64)
    for j in range(1, b + 1):
        i = np.arange(j)  # the last group is samples i..j-1, as wide as sample i
        cost = best[:j] + (j - i) * per_sample[:j] + _GROUP_OVERHEAD
        start[j] = int(np.argmin(cost))
        best[j] = cost[start[j]]
    groups = []
    j = b
    while j > 0:
        i = int(start[j])
        groups.append((order[i:j], int(widths[i])))
        j = i
    return groups[::-1]


def _scatter_rows(x: torch.Tensor, valid: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Place `rows` (N, D) at the `valid` (B, L) positions of a zero tensor shaped like x (B, L, D)."""
    out = x.new_zeros(x.shape[:-1] + rows.shape[-1:])
    out[valid] = rows
    return out


def convert_torch_encoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the parameters of an `nn.TransformerEncoder` held as ``transformer``
    (``transformer.layers.0.self_attn.in_proj_weight``) to ours (``layers.0.attn.in_proj.weight``);
    other names pass through unchanged."""
    renames = {
        "transformer.layers.": "layers.",
        "self_attn.in_proj_weight": "attn.in_proj.weight",
        "self_attn.in_proj_bias": "attn.in_proj.bias",
        "self_attn.out_proj.": "attn.out_proj.",
    }
    out = {}
    for name, value in state.items():
        for old, new in renames.items():
            name = name.replace(old, new)
        out[name] = value
    return out


class ResidualHead(nn.Module):
    """Eq. 6: h2 = proj2(dropout(relu(proj1(h)))) + h; logits = out(h2). (B, d) -> (B, C)."""

    def __init__(self, d: int, num_classes: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.proj1 = nn.Linear(d, d)
        self.proj2 = nn.Linear(d, d)
        self.out = nn.Linear(d, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.proj2(self.dropout(F.relu(self.proj1(h)))) + h)


def pfm(x: torch.Tensor, tau: float, available: torch.Tensor | None = None) -> torch.Tensor:
    """Parameter-free fusion (eqs. 31-33): X' = softmax(X Xᵀ / τ) X, rows of X L2-normalised.
    (B, M, d) -> (B, M, d).

    `available` (B, M) bool (cmc_avail): a present modality fuses over the present ones only (absent
    columns of the similarity matrix are masked out of the softmax); an absent row keeps its own vector,
    so no row is ever all-masked. None: the paper's fusion over every modality."""
    logits = x @ x.transpose(1, 2) / tau  # (B, M, M) cosine similarities / τ
    if available is not None:
        eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
        allowed = available[:, None, :] & available[:, :, None] | eye  # (B, M, M): present j, or j == i
        logits = logits.masked_fill(~allowed, float("-inf"))
    s = torch.softmax(logits, dim=-1)
    return s @ x


class ConsensusRouter(nn.Module):
    """MCR (eqs. 12-13, 34-35): w = softmax(Linear(Σ_k X'_k)). (B, M, d) -> (B, M).

    topk < n_modalities keeps the k largest weights and renormalises them (the authors' option)."""

    def __init__(self, d: int, n_modalities: int = 3, topk: int = 3) -> None:
        super().__init__()
        if not 1 <= topk <= n_modalities:
            raise ValueError(f"topk must lie in [1, {n_modalities}], got {topk}")
        self.linear = nn.Linear(d, n_modalities)
        self.topk = topk

    def forward(self, fused: torch.Tensor, available: torch.Tensor | None = None) -> torch.Tensor:
        """`available` (B, M) bool (cmc_avail): the router reads the sum of the present modalities' fused
        vectors and its softmax runs over them only, so an absent modality's weight is exactly 0."""
        if available is None:
            w = torch.softmax(self.linear(fused.sum(dim=1)), dim=-1)  # eqs. 12, 34, 35: (B, M)
        else:
            present = available.to(fused.dtype).unsqueeze(-1)  # (B, M, 1)
            scores = self.linear((fused * present).sum(dim=1))  # eq. 12 over the present rows: (B, M)
            w = torch.softmax(scores.masked_fill(~available, float("-inf")), dim=-1)  # masked eq. 13
        if self.topk < w.shape[-1]:
            top, idx = w.topk(self.topk, dim=-1)
            w = torch.zeros_like(w).scatter(-1, idx, top / top.sum(dim=-1, keepdim=True))
        return w


def bucket_order(
    lengths: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    pool_batches: int = 50,
    jitter: float = 0.1,
) -> np.ndarray:
    """A permutation of range(N) whose consecutive `batch_size` slices hold samples of similar length.

    lengths: (N,) or (N, M) (one column per modality; a sample's key is then the sum over columns
    of length / column max). Samples are shuffled, split into pools of `pool_batches` batches, sorted
    by key inside each pool (keys multiplied by U(1 - jitter, 1 + jitter) so that batches differ
    between epochs), cut into batches, and the full batches shuffled; a short batch (N not a multiple
    of batch_size) comes last, so slicing the order from 0 keeps every batch whole. Feed it to
    `iterate_batches(order=...)`; masked padding then computes each batch only up to its longest sample.
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    if lengths.ndim == 2:
        lengths = (lengths / np.maximum(lengths.max(axis=0), 1.0)).sum(axis=1)
    n = lengths.shape[0]
    perm = rng.permutation(n)
    key = lengths[perm] * rng.uniform(1.0 - jitter, 1.0 + jitter, size=n)
    batches: list[np.ndarray] = []
    pool = batch_size * pool_batches
    for start in range(0, n, pool):
        members = perm[start : start + pool]
        members = members[np.argsort(key[start : start + pool], kind="stable")]
        batches.extend(members[i : i + batch_size] for i in range(0, len(members), batch_size))
    short = [b for b in batches if len(b) < batch_size]  # at most one: the last pool's remainder
    full = [b for b in batches if len(b) == batch_size]
    return np.concatenate([full[i] for i in rng.permutation(len(full))] + short) if batches else perm
