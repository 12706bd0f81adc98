"""A logistic-regression early-fusion baseline: the floor any neural model should clear.

Each modality's (N, L, D) features are mean-pooled over the true length, the three pooled vectors
are concatenated, standardised (StandardScaler fitted on train only) and fed to sklearn's
LogisticRegression. C is chosen on a selection split (validation), or by 3-fold cross-validation on
train when none is given, never on the split being reported. The reported metrics come from
`compute_metrics`, with log-probabilities standing in for logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from affectus.data.schemes import LabelScheme, get_scheme
from affectus.data.types import MODALITIES, Split
from affectus.errors import AffectusError
from affectus.evaluation.metrics import compute_metrics

_LOG_EPS = 1e-12  # probability floor before the log, so an absent class gets a finite logit


def pooled_features(split: Split) -> np.ndarray:
    """(N, Dt + Da + Dv): each modality averaged over its first `length` steps (clamped to [1, L])."""
    parts = []
    for m in MODALITIES:
        x = np.asarray(split.features(m), dtype=np.float64)  # (N, L, D)
        steps = x.shape[1]
        lengths = np.clip(np.asarray(split.lengths(m)).astype(np.int64), 1, steps)
        mask = np.arange(steps)[None, :] < lengths[:, None]  # (N, L)
        parts.append((x * mask[:, :, None]).sum(axis=1) / lengths[:, None])
    return np.concatenate(parts, axis=1)


def _targets(scores: np.ndarray, scheme: LabelScheme, task: str) -> np.ndarray:
    classes = scheme.to_classes(scores)
    # binary labels follow the scheme's Acc2 truth: SIMS positive vs non-positive, MOSI non-negative vs negative
    return classes if task == "3class" else scheme.binary_targets(classes)


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int, max_iter: int) -> Pipeline:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
    return model.fit(x, y)


def _as_logits(model: Pipeline, x: np.ndarray, task: str) -> np.ndarray:
    """(N, 3) log-probabilities in the (neg, neu, pos) order `compute_metrics` expects."""
    proba = model.predict_proba(x)
    out = np.full((x.shape[0], 3), np.log(_LOG_EPS))
    # A binary model's classes are {0: not positive/negative, 1: the other}; map them onto neg / pos.
    columns = {0: 0, 1: 2} if task == "binary" else {0: 0, 1: 1, 2: 2}
    for j, cls in enumerate(model.classes_):
        out[:, columns[int(cls)]] = np.log(np.clip(proba[:, j], _LOG_EPS, 1.0))
    return out


def logreg_baseline(
    train_split: Split,
    eval_split: Split,
    select_split: Split | None = None,
    Cs: Sequence[float] = (0.001, 0.01, 0.1, 1.0, 10.0),
    family: str = "mosi",
    task: str = "3class",
    seed: int = 0,
    max_iter: int = 2000,
    features: Callable[[Split], np.ndarray] = pooled_features,
) -> dict[str, Any]:
    """Fit on train, pick C on select_split (accuracy of the fitted task), report metrics on eval_split.

    family: 'sims' or 'mosi' (decides the metrics and the binary labels). task: '3class' (labels
    from `to_classes`) or 'binary' (the family's Acc2 truth). Returns {'metrics': compute_metrics(...)
    on eval_split (nested D_msc/D_msi when eval_split has unimodal labels), 'logits': its (N, 3)
    log-probabilities, 'C': the chosen C, 'selection': {str(C): accuracy in %}, 'selected_on': the split
    name or 'train-cv', 'task', 'family'}. `features` turns a split into the (N, F) inputs (default: the
    pooled, concatenated modalities; e.g. sentence vectors of the transcripts for a text probe).
    """
    scheme = get_scheme(family)
    fam = scheme.name
    if task not in ("3class", "binary"):
        raise AffectusError(f"unknown task '{task}': expected '3class' or 'binary'")
    if select_split is not None and select_split.name == "test":
        raise AffectusError(
            "logreg_baseline: C may not be chosen on the test split; pass the validation split"
        )
    if not Cs:
        raise AffectusError("logreg_baseline: Cs is empty")

    x_train = features(train_split)
    y_train = _targets(np.asarray(train_split.labels), scheme, task)
    if np.unique(y_train).size < 2:
        raise AffectusError(f"logreg_baseline: the training split '{train_split.name}' holds one class only")

    selection: dict[str, float] = {}
    if select_split is not None:
        x_sel = features(select_split)
        y_sel = _targets(np.asarray(select_split.labels), scheme, task)
        for c in Cs:
            selection[str(c)] = 100.0 * float(
                np.mean(_fit(x_train, y_train, c, seed, max_iter).predict(x_sel) == y_sel)
            )
        selected_on = select_split.name
    else:
        # No validation split: 3-fold stratified cross-validation on train (fewer folds if a class is rare).
        counts = np.bincount(y_train)
        folds = int(min(3, counts[counts > 0].min()))
        if folds < 2:
            raise AffectusError("logreg_baseline: too few samples per class to choose C by cross-validation")
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for c in Cs:
            hits = [
                np.mean(_fit(x_train[tr], y_train[tr], c, seed, max_iter).predict(x_train[te]) == y_train[te])
                for tr, te in splitter.split(x_train, y_train)
            ]
            selection[str(c)] = 100.0 * float(np.mean(hits))
        selected_on = "train-cv"

    # Highest accuracy wins; on a tie the smaller C (stronger regularisation), i.e. the first in sorted order.
    best_c = max(sorted(Cs), key=lambda c: selection[str(c)])
    model = _fit(x_train, y_train, best_c, seed, max_iter)
    logits = _as_logits(model, features(eval_split), task)
    metrics = compute_metrics(
        scheme,
        logits=logits,
        scores=np.asarray(eval_split.labels),
        unimodal_scores=eval_split.unimodal_labels,
    )
    return {
        "metrics": metrics,
        "logits": logits,
        "C": float(best_c),
        "selection": selection,
        "selected_on": selected_on,
        "task": task,
        "family": fam,
    }
