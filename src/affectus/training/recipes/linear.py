"""Logistic regression's recipe: standardise on train, fit one LogisticRegression per C on train, keep the C
with the best accuracy on the selection split, install its weights in the model (models/linear.py).

No epochs: the fit is scikit-learn's (lbfgs, deterministic). The features come from the model's own
`pooled` (float64 here, as scikit-learn fits), so training and inference pool the same way. Test labels
are never read: the evaluation split does not reach a recipe.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from affectus.errors import AffectusError, SettingError
from affectus.training.recipes.base import RecipeContext, RecipeResult

TARGETS = ("classes", "acc2")
# logit of a class the fit cannot predict (absent from the training targets): softmax gives it ~0, no NaN
_NEVER = -1e4


@dataclass
class LinearRecipeConfig:
    Cs: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0])  # inverse L2 strengths tried
    # classes: the scheme's classes, as every other model; acc2: the scheme's Acc2 truth (two classes; the
    # logits put them on the scheme's negative / positive classes, the neutral one never predicted)
    target: str = "classes"
    max_iter: int = 2000  # lbfgs iterations per fit

    def validate(self) -> None:
        if not self.Cs or not all(math.isfinite(c) and c > 0 for c in self.Cs):
            raise SettingError("recipe.Cs", self.Cs, "a non-empty list of positive numbers")
        if self.target not in TARGETS:
            raise SettingError("recipe.target", self.target, f"one of {', '.join(TARGETS)}")
        if self.max_iter < 1:
            raise SettingError("recipe.max_iter", self.max_iter, "at least 1")


class LinearRecipe:
    config_cls = LinearRecipeConfig
    weighs_classes = True  # train.class_weights: LogisticRegression's class_weight

    def train(self, ctx: RecipeContext) -> RecipeResult:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        rc, model = ctx.recipe, ctx.model
        train, select = ctx.train_split, ctx.select_split
        x_train, present_train = _features(ctx, train)
        y_train = _targets(ctx, train.labels, rc.target)
        if np.unique(y_train).size < 2:
            raise AffectusError(f"linear: the training split '{train.name}' holds one class only")
        # standardisation per block, on the training rows where that block's modality is present
        mean, scale = np.zeros(x_train.shape[1]), np.ones(x_train.shape[1])
        start = 0
        for _, _, _, width in model.blocks:
            cols = slice(start, start + width)
            rows = present_train[:, start]
            if rows.any():
                scaler = StandardScaler().fit(x_train[rows, cols])
                mean[cols], scale[cols] = scaler.mean_, scaler.scale_
            start += width
        z_train = _standardise(x_train, present_train, mean, scale)
        x_select, present_select = _features(ctx, select)
        z_select = _standardise(x_select, present_select, mean, scale)
        y_select = _targets(ctx, select.labels, rc.target)

        from affectus.training.tasks import class_weights

        # train.class_weights: scikit-learn's per-class sample weights, from the training targets only
        w = class_weights(y_train, int(y_train.max()) + 1, ctx.train.class_weights)
        weighting = None if w is None else {int(k): float(w[k]) for k in np.unique(y_train)}

        def fit(c: float):
            lr = LogisticRegression(C=c, max_iter=rc.max_iter, random_state=ctx.train.seed, class_weight=weighting)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                lr.fit(z_train, y_train)
            return lr, not any("converge" in str(w.message).lower() for w in caught)

        selection, fits = {}, {}
        for c in rc.Cs:
            fits[c] = fit(c)  # kept, not refitted once C is chosen: lbfgs gives the same weights again
            selection[str(c)] = round(100.0 * float(np.mean(fits[c][0].predict(z_select) == y_select)), 4)
        # the best selection accuracy; on a tie the smaller C (stronger regularisation)
        best = max(sorted(rc.Cs), key=lambda c: selection[str(c)])
        lr, converged = fits[best]
        weight, bias = _class_weights(lr, ctx.scheme.num_classes, rc.target, z_train.shape[1])
        model.set_fit(*(torch.from_numpy(a) for a in (mean, scale, weight, bias)))
        summary = {"linear": {
            "C": float(best), "selection": selection, "selected_on": select.name, "target": rc.target,
            "views": model.names, "features": int(z_train.shape[1]), "iterations": int(np.max(lr.n_iter_)),
            "converged": converged, **({} if weighting is None else {"class_weights": weighting}),
        }}
        # run.json `fitted_on`: scaler and weights learn from train; C is chosen on the selection split by
        # accuracy there, a selection like early stopping (named beside a score on that split, not marked)
        return RecipeResult({k: v.detach().clone() for k, v in model.state_dict().items()}, summary,
                            fitted_on={"scaler": "train", "C": "select", "early_stopping": None},
                            selection_parts=("C",))


def _features(ctx: RecipeContext, split) -> tuple[np.ndarray, np.ndarray]:
    """(N, F) float64 pooled blocks of `split` through the model's own pooling, and (N, F) presence."""
    xs, present = [], []
    with torch.no_grad():
        for batch in ctx.eval_batches(split)():
            x, here = ctx.model.pooled(batch.to(ctx.device), dtype=torch.float64)
            xs.append(x.cpu().numpy())
            present.append(here.cpu().numpy())
    return np.concatenate(xs), np.concatenate(present)


def _standardise(x: np.ndarray, present: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """As the model's forward: (x - mean) / scale, 0 (the training mean) where a modality is absent."""
    return np.where(present, (x - mean) / scale, 0.0)


def _targets(ctx: RecipeContext, labels: np.ndarray, target: str) -> np.ndarray:
    classes = ctx.scheme.to_classes(np.asarray(labels))
    if target == "classes":
        return np.asarray(classes, dtype=np.int64)
    truth = ctx.scheme.binary_targets(torch.as_tensor(np.asarray(classes, dtype=np.int64)))
    if truth is None or len(ctx.scheme.binary_names) != 2 or ctx.scheme.num_classes != 3:
        raise AffectusError(f"linear recipe.target = acc2: label scheme {ctx.scheme.name} has no Acc2 rule over "
                            f"negative / neutral / positive classes (use recipe.target=classes)")
    return truth.numpy().astype(np.int64)


def _class_weights(lr, num_classes: int, target: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The fit as logits over the scheme's classes: (C, F) weights and (C,) biases whose softmax is the
    fit's predict_proba. A class the fit never saw gets logit -1e4 (probability ~0)."""
    weight = np.zeros((num_classes, width))
    bias = np.full(num_classes, _NEVER)
    # acc2: the Acc2 truth's 0 / 1 are the scheme's first (negative) / last (positive) class
    column = {0: 0, 1: num_classes - 1} if target == "acc2" else {c: c for c in range(num_classes)}
    seen = [column[int(c)] for c in lr.classes_]
    if len(seen) == 2:  # binary: P(classes_[1]) = sigmoid(z), i.e. softmax over logits (0, z)
        weight[seen[1]], bias[seen[1]] = lr.coef_[0], lr.intercept_[0]
        bias[seen[0]] = 0.0
    else:
        for j, c in enumerate(seen):
            weight[c], bias[c] = lr.coef_[j], lr.intercept_[j]
    return weight, bias
