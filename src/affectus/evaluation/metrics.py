"""Metrics: a label scheme's outputs turned into numbers, as the CMC paper (sec. IV-A-3) and MMSA report them.

What is scored is the scheme's to say (data/schemes.py): its classes and bins, its Acc2 rules, how a
predicted score is clipped, binned or rounded. This module applies those declarations; it never asks
which scheme it is scoring. The shipped sentiment schemes:

- ``sims`` (CH-SIMS, CH-SIMS v2): Acc2 is non-positive (score <= 0) vs positive (> 0).
- ``mosi`` (CMU-MOSI, CMU-MOSEI): "Has0" Acc2 is negative (< 0) vs non-negative (>= 0);
  "Non0" drops the samples whose score is exactly 0 and scores negative vs positive.

Two kinds of model output:

- Class logits (CMC and every classifier here). The binary prediction compares the scheme's two
  logit sides, as the authors' ``eval_metrics.py`` does on 3 classes: positive iff
  ``logit[2] > logit[0]``; the neutral logit is ignored, and a tie counts as negative. ``acc{C}``
  (Acc3 for 3 classes) is the argmax of all C logits (ties -> the lower class index) against the
  scheme's classes of the true labels.
- A regression score (MMSA-style models). Acc2 by the same rules on the predicted score, the
  scheme's bins or rounding for Acc3/Acc5/Acc7, MAE and Pearson correlation: `metrics_from_scores`.

Values: accuracies and F1 in percent (0-100); MAE and correlation as they are. F1 is weighted F1
(sklearn ``average='weighted'``). A metric that has no samples to be computed on (an empty D_msi, a
test set without non-zero scores for Non0) is ``None``, never NaN, so every result is valid JSON.

The one entry point is `compute_metrics`; ``docs/metrics.md`` states every convention in prose.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from affectus.data.schemes import Acc2Rule, LabelScheme, get_scheme
from affectus.errors import AffectusError

Metrics = dict[str, Any]


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


def _logits(x: Any, n: int, c: int = 3, order: str = " (neg, neu, pos)") -> np.ndarray:
    a = _numpy(x).astype(np.float64)
    if a.ndim != 2 or a.shape[1] != c or a.shape[0] != n:
        raise AffectusError(f"logits must have shape ({n}, {c}){order}, got {tuple(a.shape)}")
    if np.isnan(a).any():
        raise AffectusError(f"logits contain NaN in {int(np.isnan(a).any(axis=1).sum())} of {n} rows")
    return a


def _order(scheme: LabelScheme) -> str:
    return f" ({', '.join(scheme.short(c).lower() for c in range(scheme.num_classes))})"


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


def _rule(rule: Acc2Rule, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(kept rows, truth on the positive side) of an `Acc2Rule` on (N,) classes."""
    keep = ~np.isin(classes, rule.dropped)
    return keep, np.isin(classes, rule.positive)


def metrics_from_logits(scheme: Any, logits: Any, scores: Any) -> Metrics:
    """A score scheme's metrics from (N, C) logits against (N,) true scores: per Acc2 rule
    ``{prefix}acc2`` / ``{prefix}f1``, then ``acc{C}`` (argmax against the scheme's classes)."""
    scheme = get_scheme(scheme)
    scores = _vector(scores, "scores")
    logits = _logits(logits, scores.size, scheme.num_classes, _order(scheme))
    classes = scheme.to_classes(scores)
    out: Metrics = {}
    if scheme.acc2_rules:
        pred2 = scheme.binary(logits)
        # Non0 done right: the truth is binary (score > 0) like the prediction. The authors' code compares
        # 3-class truths {0, 2} with binary predictions {0, 1} (docs/metrics.md).
        for rule in scheme.acc2_rules:
            keep, truth = _rule(rule, classes)
            out[f"{rule.prefix}acc2"] = _accuracy(truth[keep], pred2[keep])
            out[f"{rule.prefix}f1"] = _weighted_f1(truth[keep], pred2[keep])
    out[f"acc{scheme.num_classes}"] = _accuracy(classes, np.argmax(logits, axis=1))
    return out


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


def metrics_from_scores(scheme: Any, pred: Any, scores: Any) -> Metrics:
    """A score scheme's metrics from (N,) predicted scores against (N,) true scores, as MMSA's
    ``metricsTop.py`` does for its datasets.

    Both sides clipped to ``scheme.score_clip`` first when set (CH-SIMS: [-1, 1], MAE and correlation
    included); then each Acc2 rule on both sides (CH-SIMS: x > 0; MOSI Has0: x >= 0, Non0: x > 0 on the
    samples whose truth is not 0, so a prediction of exactly 0 is non-negative for Has0 but negative for
    Non0); then ``score_bins`` (CH-SIMS acc3 [-1, -0.1] / (-0.1, 0.1] / (0.1, 1], acc5 thresholds -0.7,
    -0.1, 0.1, 0.7) and ``score_rounding`` (MOSI acc3/acc5/acc7: clip to [-1, 1] / [-2, 2] / [-3, 3] and
    round half to even); MAE and correlation last.
    """
    scheme = get_scheme(scheme)
    truth = _vector(scores, "scores")
    pred = _vector(pred, "predicted scores")
    if pred.size != truth.size:
        raise AffectusError(f"{pred.size} predicted scores for {truth.size} true scores")
    if scheme.score_clip is not None:
        truth, pred = (np.clip(x, *scheme.score_clip) for x in (truth, pred))
    out: Metrics = {}
    truth_classes, pred_classes = scheme.to_classes(truth), scheme.to_classes(pred)
    for rule in scheme.acc2_rules:
        keep, t = _rule(rule, truth_classes)
        p = np.isin(pred_classes, rule.positive)
        out[f"{rule.prefix}acc2"] = _accuracy(t[keep], p[keep])
        out[f"{rule.prefix}f1"] = _weighted_f1(t[keep], p[keep])
    for name, thresholds in scheme.score_bins:
        out[name] = _accuracy(_bin(truth, thresholds), _bin(pred, thresholds))
    for name, bound in scheme.score_rounding:
        out[name] = _accuracy(_rounded(truth, bound), _rounded(pred, bound))
    out["mae"] = _mae(pred, truth)
    out["corr"] = pearson(pred, truth)
    return out


def categorical_metrics(scheme: Any, logits: Any, labels: Any) -> Metrics:
    """Named classes (labels are class indices): ``acc``, weighted ``f1``, ``uar`` and ``f1_<class>``."""
    from sklearn.metrics import f1_score, recall_score

    scheme = get_scheme(scheme)
    if logits is None:
        raise AffectusError(f"scheme {scheme.name}: needs class logits (a model without a classifier output)")
    truth = scheme.to_classes(np.asarray(labels))
    lg = _logits(logits, truth.size, scheme.num_classes, order="")
    pred = lg.argmax(axis=1)
    if truth.size == 0:
        return {"acc": None, "f1": None, "uar": None, **{f"f1_{c}": None for c in scheme.class_names}}
    ids = list(range(scheme.num_classes))
    per_class = f1_score(truth, pred, labels=ids, average=None, zero_division=0)
    out = {
        "acc": float(100.0 * np.mean(truth == pred)),
        "f1": float(100.0 * f1_score(truth, pred, labels=ids, average="weighted", zero_division=0)),
        # unweighted average recall over the classes present in the truth (absent classes have no recall)
        "uar": float(100.0 * recall_score(truth, pred, labels=sorted(set(truth.tolist())), average="macro",
                                          zero_division=0)),
    }
    # a class with neither samples nor predictions in this split has no F1 at all (null, like a metric of an
    # empty split), not 0: 0 would read as "always wrong" beside inspect's counts
    seen = np.isin(ids, np.concatenate([truth, pred]))
    out.update({f"f1_{c}": float(100.0 * v) if s else None for c, v, s in zip(scheme.class_names, per_class, seen)})
    # the scheme's headline first: JSON readers and tables show keys in this order (MELD: weighted F1)
    if scheme.headline == "f1":
        out = {"f1": out.pop("f1"), **out}
    return out


# ----------------------------------------------------------------------------------------------
# The one entry point
# ----------------------------------------------------------------------------------------------


def _metrics_on(scheme: LabelScheme, rows: np.ndarray, scores: np.ndarray, logits, pred_scores) -> Metrics:
    """Metrics on the rows selected by a boolean mask: classification metrics from logits when given,
    else the regression set from pred_scores; with both, logits decide and pred_scores add the rest."""
    s = scores[rows]
    if logits is not None:
        out = metrics_from_logits(scheme, logits[rows], s)
        if pred_scores is not None:
            # the regression output's own multi-class accuracies, MAE and correlation, as MMSA reports them
            reg = metrics_from_scores(scheme, pred_scores[rows], s)
            out.update({k: v for k, v in reg.items() if k not in out})
        return out
    return metrics_from_scores(scheme, pred_scores[rows], s)


def compute_metrics(
    scheme: LabelScheme | str | Mapping[str, Any],
    logits: Any = None,
    pred_scores: Any = None,
    scores: Any = None,
    unimodal_scores: Mapping[str, Any] | None = None,
    masks: tuple[Any, Any] | None = None,
) -> Metrics:
    """All metrics for one prediction run, under the label scheme's rules.

    scheme: a `LabelScheme`, or what `get_scheme` reads (a name such as 'sims', a dataset alias such as
        'ch-sims-v2' or 'mosei', a recorded spec).
    logits: (N, C) class logits (sentiment: neg, neu, pos), or None for a regression model.
    pred_scores: (N,) predicted scores, or None. A score scheme needs at least one of logits / pred_scores;
        a scheme of named classes needs logits and ignores pred_scores.
    scores: (N,) true labels (required; a keyword in practice).
    unimodal_scores: {'text','audio','vision'} -> (N,) true unimodal labels (callers pass them where the
        scheme has subsets, `has_subsets`). When given (or when `masks` = (msc_mask, msi_mask) is given, e.g. from
        the authors' subset files) a score scheme's result is nested: {'d_test': {...}, 'd_msc': {...},
        'd_msi': {...}}, each with its sample count 'n', plus every D_test metric repeated at the top
        level (so 'acc2' etc. always sit at the top). Without them the result is flat.

    Keys: sims -> acc2, f1, acc3 (logits) or acc2, f1, acc3, acc5, mae, corr (scores);
    mosi -> has0_acc2, has0_f1, non0_acc2, non0_f1, acc3 (+ acc5, acc7 from scores); mae and corr
    whenever pred_scores is given; categorical -> acc, f1, uar, f1_<class>. A metric with no samples
    (an empty D_msi) is None.
    """
    scheme = get_scheme(scheme)
    if scores is None:
        raise TypeError("compute_metrics needs the true scores (scores=...)")
    if not scheme.scores:  # named classes: no scores to regress, no subsets
        return categorical_metrics(scheme, logits, scores)
    if logits is None and pred_scores is None:
        raise TypeError("compute_metrics needs logits=..., pred_scores=... or both")
    y = _vector(scores, "scores")
    n = y.size
    lg = None if logits is None else _logits(logits, n, scheme.num_classes, _order(scheme))
    ps = None if pred_scores is None else _vector(pred_scores, "predicted scores")
    if ps is not None and ps.size != n:
        raise AffectusError(f"{ps.size} predicted scores for {n} true scores")

    everything = np.ones(n, dtype=bool)
    top = _metrics_on(scheme, everything, y, lg, ps)
    if unimodal_scores is None and masks is None:
        return top

    if masks is not None:
        msc, msi = (np.asarray(m, dtype=bool).reshape(-1) for m in masks)
        if msc.size != n or msi.size != n:
            raise AffectusError(f"subset masks have {msc.size} / {msi.size} entries for {n} samples")
    else:
        msc, msi = scheme.consistency_masks(y, unimodal_scores)

    out: Metrics = dict(top)
    out["d_test"] = {"n": n, **top}
    out["d_msc"] = {"n": int(msc.sum()), **_metrics_on(scheme, msc, y, lg, ps)}
    out["d_msi"] = {"n": int(msi.sum()), **_metrics_on(scheme, msi, y, lg, ps)}
    return out


def expected_calibration_error(probabilities: Any, classes: Any, bins: int = 15) -> float | None:
    """ECE (Guo et al. 2017, "On Calibration of Modern Neural Networks"): the samples binned by their top
    probability into `bins` equal-width bins over [0, 1]; the mean over bins, weighted by their share of
    samples, of |accuracy - mean confidence|. 0 is calibrated; a model printing 1.0 while right 70% of
    the time scores 0.3. None for no samples."""
    p = _numpy(probabilities)
    truth = _vector(classes, "classes").astype(np.int64)
    if p.ndim != 2 or p.shape[0] != truth.shape[0]:
        raise AffectusError(f"ECE: expected (N, C) probabilities for {truth.shape[0]} labels, got {p.shape}")
    if truth.size == 0:
        return None
    confidence = p.max(1)
    correct = (p.argmax(1) == truth).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)  # bin of each sample
    ece = 0.0
    for b in range(bins):
        here = which == b
        if here.any():
            ece += here.mean() * abs(correct[here].mean() - confidence[here].mean())
    return float(ece)
