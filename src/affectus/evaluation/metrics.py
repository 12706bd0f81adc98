"""Sentiment metrics as the CMC paper (sec. IV-A-3) and MMSA report them.

Two dataset families, two binary conventions:

- ``"sims"`` (CH-SIMS, CH-SIMS v2): Acc2 is non-positive (score <= 0) vs positive (> 0).
- ``"mosi"`` (CMU-MOSI, CMU-MOSEI): "Has0" Acc2 is negative (< 0) vs non-negative (>= 0);
  "Non0" drops the samples whose score is exactly 0 and scores negative vs positive.

Two kinds of model output:

- 3-class logits (CMC and every classifier here). The binary prediction uses the negative and
  positive logits only, as the authors' ``eval_metrics.py`` does: positive iff ``logit[2] > logit[0]``;
  the neutral logit is ignored, and a tie counts as negative (``np.argmax`` over ``[neg, pos]``
  returns the first index). Acc3 is the argmax of all three logits (ties -> the lower class index)
  against the 3-class truth of ``to_classes``.
- A regression score (MMSA-style models). Acc2 from signs, Acc3/Acc5/Acc7 by clipping and rounding
  or by MMSA's fixed bins, MAE and Pearson correlation: see the two ``*_from_scores`` functions.

Values: accuracies and F1 in percent (0-100); MAE and correlation as they are. F1 is weighted F1
(sklearn ``average='weighted'``). A metric that has no samples to be computed on (an empty D_msi, a
test set without non-zero scores for Non0) is ``None``, never NaN, so every result is valid JSON.

The one entry point is `compute_metrics`; ``docs/metrics.md`` states every convention in prose.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from affectus.data.types import to_classes
from affectus.errors import AffectusError

Metrics = dict[str, Any]

# Dataset names accepted by `metric_family` (lower case, '_' read as '-').
_FAMILY_ALIASES = {
    "sims": "sims",
    "ch-sims": "sims",
    "simsv2": "sims",
    "sims-v2": "sims",
    "ch-sims-v2": "sims",
    "ch-simsv2": "sims",
    "mosi": "mosi",
    "mosei": "mosi",
    "cmu-mosi": "mosi",
    "cmu-mosei": "mosi",
}

# MMSA's SIMS regression bins (metricsTop.py, ``__eval_sims_regression``), on scores clipped to
# [-1, 1]: a value falls in class k when it lies above exactly k thresholds, i.e. bins are
# closed on the right: [-1, -0.1] -> 0, (-0.1, 0.1] -> 1, (0.1, 1] -> 2.
_SIMS_BINS = {
    "acc2": (0.0,),
    "acc3": (-0.1, 0.1),
    "acc5": (-0.7, -0.1, 0.1, 0.7),
}


def metric_family(name: str) -> str:
    """'sims' or 'mosi' for a family or dataset name (CH-SIMS, SIMS-v2, MOSI, MOSEI, ...)."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in _FAMILY_ALIASES:
        raise AffectusError(f"unknown metric family '{name}': expected 'sims' or 'mosi' (or a dataset name)")
    return _FAMILY_ALIASES[key]


# ----------------------------------------------------------------------------------------------
# Small helpers: inputs to numpy, percentages, None for empty sets
# ----------------------------------------------------------------------------------------------


def _numpy(x: Any) -> np.ndarray:
    """numpy view of an array or a torch tensor (detached, on CPU), without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _vector(x: Any, what: str) -> np.ndarray:
    a = _numpy(x).astype(np.float64).reshape(-1)
    if np.isnan(a).any():
        raise AffectusError(f"{what} contain NaN ({int(np.isnan(a).sum())} of {a.size})")
    return a


def _logits(x: Any, n: int) -> np.ndarray:
    a = _numpy(x).astype(np.float64)
    if a.ndim != 2 or a.shape[1] != 3 or a.shape[0] != n:
        raise AffectusError(f"logits must have shape ({n}, 3) (neg, neu, pos), got {tuple(a.shape)}")
    if np.isnan(a).any():
        raise AffectusError(f"logits contain NaN in {int(np.isnan(a).any(axis=1).sum())} of {n} rows")
    return a


def _accuracy(truth: np.ndarray, pred: np.ndarray) -> float | None:
    if truth.size == 0:
        return None
    return float(100.0 * np.mean(truth == pred))


def _weighted_f1(truth: np.ndarray, pred: np.ndarray) -> float | None:
    if truth.size == 0:
        return None
    # imported here: predictions (affectus.load(...).predict) use the Acc2 rule below without scikit-learn
    from sklearn.metrics import f1_score

    # zero_division=0: a class present in the truth but never predicted gets F1 0 (sklearn's
    # default value too, minus the warning).
    return float(100.0 * f1_score(truth, pred, average="weighted", zero_division=0))


def _mae(pred: np.ndarray, truth: np.ndarray) -> float | None:
    return None if truth.size == 0 else float(np.mean(np.abs(pred - truth)))


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation; 0.0 when either side is constant (np.corrcoef would give NaN), None if empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.size == 0:
        return None
    da, db = a - a.mean(), b - b.mean()
    denom = np.sqrt(np.sum(da * da) * np.sum(db * db))
    if denom == 0.0:
        return 0.0
    return float(np.clip(np.sum(da * db) / denom, -1.0, 1.0))


def binary_from_logits(logits: np.ndarray) -> np.ndarray:
    """Positive iff the positive logit beats the negative one (neutral ignored; tie -> negative)."""
    return logits[:, 2] > logits[:, 0]


# ----------------------------------------------------------------------------------------------
# From 3-class logits (CMC and other classifiers)
# ----------------------------------------------------------------------------------------------


def sims_metrics_from_logits(logits: Any, scores: Any) -> Metrics:
    """CH-SIMS family: ``acc2``/``f1`` (non-positive vs positive) and ``acc3``. logits (N, 3), scores (N,)."""
    scores = _vector(scores, "scores")
    logits = _logits(logits, scores.size)
    truth2, pred2 = scores > 0, binary_from_logits(logits)
    return {
        "acc2": _accuracy(truth2, pred2),
        "f1": _weighted_f1(truth2, pred2),
        "acc3": _accuracy(to_classes(scores), np.argmax(logits, axis=1)),
    }


def mosi_metrics_from_logits(logits: Any, scores: Any) -> Metrics:
    """MOSI family: Has0 (negative vs non-negative), Non0 (zeros dropped, negative vs positive), acc3."""
    scores = _vector(scores, "scores")
    logits = _logits(logits, scores.size)
    pred2 = binary_from_logits(logits)
    has0_truth = scores >= 0
    nonzero = scores != 0
    # Non0 done right: the truth is binary (score > 0) like the prediction. The authors' code compares
    # 3-class truths {0, 2} with binary predictions {0, 1}; see `non0_acc2_authors_bug`.
    non0_truth, non0_pred = scores[nonzero] > 0, pred2[nonzero]
    return {
        "has0_acc2": _accuracy(has0_truth, pred2),
        "has0_f1": _weighted_f1(has0_truth, pred2),
        "non0_acc2": _accuracy(non0_truth, non0_pred),
        "non0_f1": _weighted_f1(non0_truth, non0_pred),
        "acc3": _accuracy(to_classes(scores), np.argmax(logits, axis=1)),
    }


def _authors_non0(logits: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    scores = _vector(scores, "scores")
    logits = _logits(logits, scores.size)
    classes = to_classes(scores)
    keep = classes != 1
    truth = classes[keep]  # in {0, 2}: the 3-class labels, never binarised
    pred = np.argmax(logits[keep][:, [0, 2]], axis=1)  # in {0, 1}
    return truth, pred


def non0_acc2_authors_bug(logits: Any, scores: Any) -> float | None:
    """The Non0 Acc2 the authors' code (and MMSA's classification metrics) prints. FOR FIDELITY CHECKS ONLY.

    It compares 3-class truths {0, 2} with binary predictions {0, 1}, so a positive sample never
    counts as correct: the value is (negatives predicted negative) / (non-zero samples). Use
    `mosi_metrics_from_logits`'s ``non0_acc2`` for the real metric.
    """
    truth, pred = _authors_non0(logits, scores)
    return _accuracy(truth, pred)


def non0_f1_authors_bug(logits: Any, scores: Any) -> float | None:
    """The authors' Non0 weighted F1, with the same label mix-up as `non0_acc2_authors_bug`. Fidelity only."""
    truth, pred = _authors_non0(logits, scores)
    return _weighted_f1(truth, pred)


# ----------------------------------------------------------------------------------------------
# From regression scores (MMSA conventions, metricsTop.py)
# ----------------------------------------------------------------------------------------------


def _bin(x: np.ndarray, thresholds: tuple[float, ...]) -> np.ndarray:
    """Class = how many thresholds x lies strictly above. Compared in float32, as MMSA does on its
    float32 tensors, so that e.g. a float32 0.1 lands in the same bin as there."""
    x32 = x.astype(np.float32)[:, None]
    return np.sum(x32 > np.asarray(thresholds, dtype=np.float32)[None, :], axis=1)


def _rounded(x: np.ndarray, bound: float) -> np.ndarray:
    """MMSA's multiclass rule: clip to [-bound, bound] then np.round (half to even: 0.5 -> 0, 1.5 -> 2)."""
    return np.round(np.clip(x.astype(np.float32), -bound, bound))


def sims_metrics_from_scores(pred: Any, scores: Any) -> Metrics:
    """CH-SIMS family from a predicted score: ``acc2``, ``f1``, ``acc3``, ``acc5``, ``mae``, ``corr``.

    As MMSA: both sides clipped to [-1, 1] first (MAE and correlation included); acc2 = (x > 0);
    acc3 bins [-1, -0.1] / (-0.1, 0.1] / (0.1, 1]; acc5 thresholds -0.7, -0.1, 0.1, 0.7.
    """
    truth = np.clip(_vector(scores, "scores"), -1.0, 1.0)
    pred = np.clip(_vector(pred, "predicted scores"), -1.0, 1.0)
    if pred.size != truth.size:
        raise AffectusError(f"{pred.size} predicted scores for {truth.size} true scores")
    out: Metrics = {}
    for name, thresholds in _SIMS_BINS.items():
        t, p = _bin(truth, thresholds), _bin(pred, thresholds)
        out[name] = _accuracy(t, p)
        if name == "acc2":
            out["f1"] = _weighted_f1(t, p)
    out["mae"] = _mae(pred, truth)
    out["corr"] = pearson(pred, truth)
    return out


def mosi_metrics_from_scores(pred: Any, scores: Any) -> Metrics:
    """MOSI family from a predicted score, as MMSA's ``__eval_mosei_regression``.

    Has0: (pred >= 0) vs (truth >= 0). Non0: samples with truth != 0, (pred > 0) vs (truth > 0) (so a
    prediction of exactly 0 is non-negative for Has0 but negative for Non0). acc3/acc5/acc7: clip both
    to [-1, 1] / [-2, 2] / [-3, 3] and round half to even. MAE and correlation on the unclipped values.
    """
    truth = _vector(scores, "scores")
    pred = _vector(pred, "predicted scores")
    if pred.size != truth.size:
        raise AffectusError(f"{pred.size} predicted scores for {truth.size} true scores")
    nonzero = truth != 0
    out: Metrics = {
        "has0_acc2": _accuracy(truth >= 0, pred >= 0),
        "has0_f1": _weighted_f1(truth >= 0, pred >= 0),
        "non0_acc2": _accuracy(truth[nonzero] > 0, pred[nonzero] > 0),
        "non0_f1": _weighted_f1(truth[nonzero] > 0, pred[nonzero] > 0),
    }
    for name, bound in (("acc3", 1.0), ("acc5", 2.0), ("acc7", 3.0)):
        out[name] = _accuracy(_rounded(truth, bound), _rounded(pred, bound))
    out["mae"] = _mae(pred, truth)
    out["corr"] = pearson(pred, truth)
    return out


# ----------------------------------------------------------------------------------------------
# The one entry point
# ----------------------------------------------------------------------------------------------


def _metrics_on(family: str, rows: np.ndarray, scores: np.ndarray, logits, pred_scores) -> Metrics:
    """Metrics on the rows selected by a boolean mask: classification metrics from logits when given,
    else the regression set from pred_scores; with both, logits decide and pred_scores add mae/corr."""
    s = scores[rows]
    if logits is not None:
        fn = sims_metrics_from_logits if family == "sims" else mosi_metrics_from_logits
        out = fn(logits[rows], s)
        if pred_scores is not None:
            reg = (sims_metrics_from_scores if family == "sims" else mosi_metrics_from_scores)(
                pred_scores[rows], s
            )
            # the regression output's own multi-class accuracies, MAE and correlation, as MMSA reports them
            out.update({k: reg[k] for k in ("acc5", "acc7", "mae", "corr") if k in reg})
        return out
    fn = sims_metrics_from_scores if family == "sims" else mosi_metrics_from_scores
    return fn(pred_scores[rows], s)


def compute_metrics(
    family: str,
    logits: Any = None,
    pred_scores: Any = None,
    scores: Any = None,
    unimodal_scores: Mapping[str, Any] | None = None,
    masks: tuple[Any, Any] | None = None,
) -> Metrics:
    """All metrics for one prediction run.

    family: 'sims' or 'mosi' (dataset names such as 'ch-sims-v2' or 'mosei' are accepted).
    logits: (N, 3) 3-class logits (neg, neu, pos), or None for a regression model.
    pred_scores: (N,) predicted scores, or None. At least one of logits / pred_scores is needed.
    scores: (N,) true multimodal scores (required; a keyword in practice).
    unimodal_scores: {'text','audio','vision'} -> (N,) true unimodal scores. When given (or when
        `masks` = (msc_mask, msi_mask) is given, e.g. from the authors' subset files), the result is
        nested: {'d_test': {...}, 'd_msc': {...}, 'd_msi': {...}}, each with its sample count 'n',
        plus every D_test metric repeated at the top level (so 'acc2' etc. always sit at the top).
        Without them the result is flat.

    Keys: sims -> acc2, f1, acc3 (logits) or acc2, f1, acc3, acc5, mae, corr (scores);
    mosi -> has0_acc2, has0_f1, non0_acc2, non0_f1, acc3 (+ acc5, acc7 from scores); mae and corr
    whenever pred_scores is given. A metric with no samples (an empty D_msi) is None.
    """
    fam = metric_family(family)
    if scores is None:
        raise TypeError("compute_metrics needs the true scores (scores=...)")
    if logits is None and pred_scores is None:
        raise TypeError("compute_metrics needs logits=..., pred_scores=... or both")
    y = _vector(scores, "scores")
    n = y.size
    lg = None if logits is None else _logits(logits, n)
    ps = None if pred_scores is None else _vector(pred_scores, "predicted scores")
    if ps is not None and ps.size != n:
        raise AffectusError(f"{ps.size} predicted scores for {n} true scores")

    everything = np.ones(n, dtype=bool)
    top = _metrics_on(fam, everything, y, lg, ps)
    if unimodal_scores is None and masks is None:
        return top

    if masks is not None:
        msc, msi = (np.asarray(m, dtype=bool).reshape(-1) for m in masks)
        if msc.size != n or msi.size != n:
            raise AffectusError(f"subset masks have {msc.size} / {msi.size} entries for {n} samples")
    else:
        from affectus.evaluation.subsets import consistency_masks

        msc, msi = consistency_masks(y, unimodal_scores)

    out: Metrics = dict(top)
    out["d_test"] = {"n": n, **top}
    out["d_msc"] = {"n": int(msc.sum()), **_metrics_on(fam, msc, y, lg, ps)}
    out["d_msi"] = {"n": int(msi.sum()), **_metrics_on(fam, msi, y, lg, ps)}
    return out
