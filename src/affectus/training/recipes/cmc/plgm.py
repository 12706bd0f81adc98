"""PLGM, CMC's pseudo-label generation module (paper section III-C, eqs. 19-30).

Stage 1 trains each unimodal model against its own pseudo labels. Every training sample keeps a
soft label per modality, stored here in a `PseudoLabelBank` indexed by dataset sample index:

  start      soft = OneHot(y_m) for every modality                                  (eq. 19)
  target     y_kp = argmax(soft)                                                    (eq. 20)
  per batch  p = softmax(logits_k)  (detached, before the optimiser step)
             r = argmin_c ||p - e_c||              the class p is closest to         (eqs. 22-24)
             g = ||p - e_target||, g_r = ||p - e_r||                                 (eqs. 21, 26)
             alpha = (g - g_r) / (g + g_r) in [0, 1]                                 (eq. 25)
             candidate = (1 - alpha) e_target + alpha e_r                           (eq. 27)
             soft <- m soft + (1 - m) candidate                                     (eq. 28)

Beside the bank: the momentum schedules of eq. 30 (`MomentumSchedule`), an EMA copy of each
unimodal branch (eq. 29, `ModalityEMA`: one `torch.optim.swa_utils.AveragedModel` each). The CPU
slow-down that EMA training runs into is `utils/threads.enable_flush_denormal`'s. See docs/plgm.md.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from affectus.data.types import MODALITIES
from affectus.errors import AffectusError
from affectus.utils.csv_cells import csv_text
from affectus.utils.io import write_text_atomic

MOMENTUM_FORMS = ("code", "paper")


# ---------------------------------------------------------------------------------------------
# Momentum schedules (eq. 30)
# ---------------------------------------------------------------------------------------------


def momentum_schedule(m0: float, gamma: float, epoch: int, form: str = "code", previous: float | None = None) -> float:
    """The label / EMA momentum for epoch `epoch` (E >= 1), rising towards 1.

    form='code' (default): m_E = 1 - (1 - m0) / E^gamma, always from the initial m0. This is what the
      authors' code computes (`get_momentum`) and what the published numbers come from.
    form='paper': eq. 30 as printed, m_E = 1 - (1 - m_{E-1}) / E^gamma with m_0 = m0. Unrolled,
      1 - m_E = (1 - m0) / (E!)^gamma: the step size (1 - m) collapses factorially, so after a few
      epochs the labels barely move and PLGM flips almost nothing (none on a reference MOSI run,
      against ~68 text flips with the code form). Kept as an option, not the default.
    `previous` (paper form only) is m_{E-1}; without it the recursion is run from m0.
    """
    if form not in MOMENTUM_FORMS:
        raise ValueError(f"momentum form {form!r}: expected one of {', '.join(MOMENTUM_FORMS)}")
    if epoch < 1:
        raise ValueError(f"epoch {epoch}: epochs start at 1")
    if not 0.0 <= m0 <= 1.0 or gamma < 0.0:
        raise ValueError(f"momentum m0={m0}, gamma={gamma}: need 0 <= m0 <= 1 and gamma >= 0")
    if form == "code":
        return 1.0 - (1.0 - m0) / epoch**gamma
    if previous is not None:
        return 1.0 - (1.0 - previous) / epoch**gamma
    m = m0
    for e in range(1, epoch + 1):  # the same float operations as calling it epoch by epoch
        m = 1.0 - (1.0 - m) / e**gamma
    return m


@dataclass
class MomentumSchedule:
    """One momentum (a modality's label momentum or EMA-model momentum); call `at_epoch(E)` at each epoch start."""

    m0: float
    gamma: float
    form: str = "code"
    value: float = field(init=False)
    epoch: int = field(default=0, init=False)  # last epoch set; 0: none yet

    def __post_init__(self) -> None:
        if self.form not in MOMENTUM_FORMS:
            raise ValueError(f"momentum form {self.form!r}: expected one of {', '.join(MOMENTUM_FORMS)}")
        self.value = float(self.m0)

    def at_epoch(self, epoch: int) -> float:
        """Set and return m_E. Works for both forms and in any call order (a resumed run may start at E > 1)."""
        previous = self.value if self.form == "paper" and epoch == self.epoch + 1 and self.epoch > 0 else None
        self.value = momentum_schedule(self.m0, self.gamma, epoch, self.form, previous)
        self.epoch = epoch
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"m0": self.m0, "gamma": self.gamma, "form": self.form, "value": self.value, "epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.m0, self.gamma, self.form = float(state["m0"]), float(state["gamma"]), str(state["form"])
        self.value, self.epoch = float(state["value"]), int(state["epoch"])


# ---------------------------------------------------------------------------------------------
# Pseudo-label refinement (eqs. 21-27) and the bank (eqs. 19, 20, 28)
# ---------------------------------------------------------------------------------------------


def refine_labels(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eqs. 21-27 for any leading shape: logits (..., C), current hard target (...) int.

    Returns (candidate soft label (..., C), alpha (...), r (...)). The norms ||p - e_c|| are the
    norms of the cross-entropy gradient w.r.t. the logits if c were the label (eqs. 21-22).
    """
    p = torch.softmax(logits.float(), dim=-1)  # (..., C)
    num_classes = p.shape[-1]
    eye = torch.eye(num_classes, dtype=p.dtype, device=p.device)
    dist = torch.linalg.vector_norm(p.unsqueeze(-2) - eye, dim=-1)  # (..., C): ||p - e_c||, eqs. 22-23
    r = dist.argmin(dim=-1)  # eq. 24; ties go to the lowest class, as in the authors' strict-< loop
    g = dist.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # ||g_k||, eq. 21
    g_r = dist.gather(-1, r.unsqueeze(-1)).squeeze(-1)  # ||g_k^r||, eq. 26
    total = g + g_r
    # eq. 25; g >= g_r since r is the argmin, so alpha is in [0, 1]. 0/0 happens only when p is
    # exactly one-hot on the target (then r == target): such a sample is easy, alpha = 0.
    alpha = torch.where(total > 0, (g - g_r) / torch.where(total > 0, total, 1.0), 0.0)
    a = alpha.unsqueeze(-1)
    candidate = (1 - a) * eye[target] + a * eye[r]  # eq. 27
    return candidate, alpha, r


def _as_index(index: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(index, dtype=torch.long).reshape(-1).cpu()


class PseudoLabelBank:
    """Soft pseudo labels (N, K modalities, C) for the N samples of one split, indexed by sample index.

    `initial`: (N,) multimodal classes (eq. 19: every modality starts at the multimodal label) or
    (N, K) per-modality classes (CMC-GT: the dataset's unimodal labels). `frozen=True` keeps the
    labels at their initial value ("w/o PLGM", CMC-GT). Lives on the CPU; float32.
    """

    def __init__(
        self,
        initial: torch.Tensor | np.ndarray,
        num_classes: int = 3,
        frozen: bool = False,
        modalities: Sequence[str] = MODALITIES,
    ) -> None:
        init = torch.as_tensor(initial).cpu()
        if init.is_floating_point() and not torch.equal(init, init.round()):
            raise ValueError("pseudo-label bank: initial labels must be integer classes")
        init = init.long()
        self.modalities = tuple(modalities)
        k = len(self.modalities)
        if init.dim() == 1:
            init = init[:, None].expand(-1, k)
        if init.dim() != 2 or init.shape[1] != k:
            raise ValueError(f"pseudo-label bank: initial labels of shape {tuple(init.shape)}, expected (N,) or (N, {k})")
        if init.numel() and (int(init.min()) < 0 or int(init.max()) >= num_classes):
            raise ValueError(f"pseudo-label bank: classes must lie in [0, {num_classes - 1}]")
        self.num_classes = num_classes
        self.frozen = frozen
        self.initial = init.contiguous()  # (N, K)
        self.soft = F.one_hot(self.initial, num_classes).float()  # (N, K, C), eq. 19
        self.flip_history: list[list[int]] = []  # per recorded epoch: flips per modality

    def __len__(self) -> int:
        return self.soft.shape[0]

    def targets(self, index: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
        """(B, K) int64 hard labels for dataset indices: argmax of the stored soft labels (eq. 20)."""
        return self.soft[_as_index(index)].argmax(dim=-1)

    def hard_labels(self) -> torch.Tensor:
        """(N, K) int64 hard labels of every sample."""
        return self.soft.argmax(dim=-1)

    @torch.no_grad()
    def update(
        self,
        index: torch.Tensor | np.ndarray | Sequence[int],
        logits: torch.Tensor,
        momenta: torch.Tensor | Sequence[float] | float,
        keep: torch.Tensor | None = None,
    ) -> None:
        """Move the soft labels of a batch towards the model's predictions (eqs. 21-28).

        logits: (B, K, C) detached unimodal logits; momenta: (K,) label momentum per modality, m_kp;
        keep: (B, K) bool, the (sample, modality) entries to move (modality dropout: absent ones stay).
        The target in eq. 21 is the argmax of the soft label as currently stored, which may already
        differ from the initial label. Call it before the optimiser step (authors' order). A sample
        index repeated within one batch keeps its last update.
        """
        if self.frozen:
            return
        idx = _as_index(index)
        logits = logits.detach().float().cpu()
        if logits.shape != (len(idx), len(self.modalities), self.num_classes):
            raise ValueError(
                f"pseudo-label update: logits of shape {tuple(logits.shape)}, expected "
                f"({len(idx)}, {len(self.modalities)}, {self.num_classes})"
            )
        m = torch.as_tensor(momenta, dtype=torch.float32).cpu().expand(len(self.modalities))  # (K,)
        stored = self.soft[idx]  # (B, K, C)
        candidate, _, _ = refine_labels(logits, stored.argmax(dim=-1))  # eqs. 20-27
        m = m[None, :, None]
        moved = m * stored + (1 - m) * candidate  # eq. 28
        if keep is not None:
            moved = torch.where(keep.bool()[..., None], moved, stored)
        self.soft[idx] = moved

    # -- what PLGM changed ------------------------------------------------------------------

    def flip_mask(self) -> torch.Tensor:
        """(N, K) bool: where the hard label differs from the initial label."""
        return self.hard_labels() != self.initial

    def flip_counts(self) -> torch.Tensor:
        """(K,) int64: how many samples each modality has flipped away from its initial label."""
        return self.flip_mask().sum(dim=0)

    def record_epoch(self) -> dict[str, int]:
        """Append this epoch's flip counts to `flip_history` (call once per epoch); returns them."""
        counts = [int(c) for c in self.flip_counts()]
        self.flip_history.append(counts)
        return dict(zip(self.modalities, counts))

    # -- persistence ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors only, so the bank can go into a safetensors file."""
        history = torch.tensor(self.flip_history, dtype=torch.long).reshape(-1, len(self.modalities))
        return {"soft": self.soft.clone(), "initial": self.initial.clone(), "flip_history": history}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        soft, initial = state["soft"], state["initial"]
        if tuple(soft.shape) != tuple(self.soft.shape) or not torch.equal(initial.long().cpu(), self.initial):
            raise AffectusError(
                f"pseudo-label bank: saved state has shape {tuple(soft.shape)} and other initial labels than this "
                f"split's {tuple(self.soft.shape)}; it belongs to different data"
            )
        self.soft = soft.detach().float().cpu().clone()
        history = state.get("flip_history")
        self.flip_history = [] if history is None else [[int(v) for v in row] for row in history.tolist()]

    def export(
        self,
        ids: Sequence[str],
        raw_text: Sequence[str] | None = None,
        path: str | Path | None = None,
        decimals: int = 4,
    ) -> list[dict[str, Any]]:
        """One row per sample: index, id, raw text, then per modality the initial label, the final
        hard label, whether it flipped, and the final soft label (`soft_<modality>_<class>`).
        With `path`, also writes the rows as CSV (atomically) so a user can read what PLGM flipped
        (the paper's Fig. 6). Classes: 0 negative, 1 neutral, 2 positive.
        """
        n = len(self)
        if len(ids) != n or (raw_text is not None and len(raw_text) != n):
            raise ValueError(f"pseudo-label export: {len(ids)} ids / raw texts for a bank of {n} samples")
        hard, flipped = self.hard_labels().tolist(), self.flip_mask().tolist()
        initial, soft = self.initial.tolist(), self.soft.tolist()
        rows: list[dict[str, Any]] = []
        for i in range(n):
            row: dict[str, Any] = {"index": i, "id": str(ids[i]), "raw_text": "" if raw_text is None else str(raw_text[i])}
            for k, mod in enumerate(self.modalities):
                row[f"initial_{mod}"] = initial[i][k]
                row[f"label_{mod}"] = hard[i][k]
                row[f"flipped_{mod}"] = int(flipped[i][k])
                for c in range(self.num_classes):
                    row[f"soft_{mod}_{c}"] = round(soft[i][k][c], decimals)
            rows.append(row)
        if path is not None:
            buf = io.StringIO()
            fields = list(rows[0]) if rows else ["index", "id", "raw_text"]
            writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            # ids and transcripts come from the data file: no cell a spreadsheet would run as a formula
            writer.writerows({**row, "id": csv_text(row["id"]), "raw_text": csv_text(row["raw_text"])} for row in rows)
            write_text_atomic(path, buf.getvalue())
        return rows


# ---------------------------------------------------------------------------------------------
# EMA copies of the unimodal models (eq. 29)
# ---------------------------------------------------------------------------------------------


class Eq29:
    """`multi_avg_fn` of an `AveragedModel`: theta_ema <- m theta_ema + (1 - m) theta (eq. 29), with a
    momentum m that its owner sets before each update (it changes per epoch and per modality).

    `AveragedModel` calls it once per (device, dtype) group of parameters and buffers. Float groups
    take torch's own EMA step; integer buffers (BatchNorm's `num_batches_tracked`) are copied, since
    an average of batch counts means nothing (and would be truncated to an integer)."""

    def __init__(self, momentum: float = 0.0) -> None:
        self.momentum = momentum

    @torch.no_grad()
    def __call__(self, ema: list[torch.Tensor], new: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        if ema[0].is_floating_point():
            get_ema_multi_avg_fn(self.momentum)(ema, new, n_averaged)  # one fused lerp over the group
        else:
            for e, n in zip(ema, new):
                e.copy_(n)


class ModalityEMA(nn.Module):
    """The EMA models of stage 1 (eq. 29): an `AveragedModel` of each unimodal branch (encoder + head,
    and BERT for BERT text input), each with its own momentum.

    `use_buffers=True`: BatchNorm's running mean / variance are averaged like the weights, since they
    are what evaluation normalises with (the authors' EMA loops over parameters only and leaves them
    at their initial 0 / 1). Construction makes the first update, which copies: theta_ema starts at
    the branch's current weights, as eq. 29 does. `state_dict()` (an `nn.Module`'s) holds every
    branch's averaged weights and `n_averaged`, so a resumed run continues bit-exactly.
    """

    def __init__(self, branches: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.models = nn.ModuleDict(
            {m: AveragedModel(b, multi_avg_fn=Eq29(), use_buffers=True) for m, b in branches.items()}
        )
        self.requires_grad_(False)  # averaged, never trained
        for m, branch in branches.items():
            self.models[m].update_parameters(branch)  # n_averaged 0 -> 1: a copy

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.models)

    def branch(self, modality: str) -> nn.Module:
        """The EMA copy of one modality's branch."""
        return self.models[modality].module

    def update(self, branches: Mapping[str, nn.Module], momenta: Mapping[str, float] | float) -> None:
        """EMA step of every modality towards `branches` (call after each optimiser step)."""
        for mod, averaged in self.models.items():
            averaged.multi_avg_fn.momentum = float(momenta if isinstance(momenta, (int, float)) else momenta[mod])
            averaged.update_parameters(branches[mod])

    @torch.no_grad()
    def copy_to(self, branches: Mapping[str, nn.Module], modalities: Sequence[str] | None = None) -> None:
        """Write the EMA weights (and buffers) into `branches`, e.g. an evaluation copy's or the stage-2 model's."""
        for mod in self.modalities if modalities is None else modalities:
            branches[mod].load_state_dict(self.branch(mod).state_dict())
