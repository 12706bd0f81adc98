"""Label schemes: what the labels of a dataset mean and how predictions against them are scored.

A scheme is a small registered object (like a model): it knows its classes and their names, how a
label becomes a class, the Acc2 rule, the binary labels SupCon contrasts, which metrics and table
columns apply, the sweep's default objective and how a prediction is shown. Generic code asks the
scheme; it never compares a family string. A new dataset with new labels is one YAML preset
(`scheme: NAME` or `scheme: {name: categorical, classes: [...]}`) and at most one new scheme here.

Shipped:
- `sims`: CH-SIMS family sentiment scores in [-1, 1]; Acc2 = non-positive vs positive; D_msc / D_msi.
- `mosi`: CMU-MOSI / MOSEI family scores in [-3, 3]; Has0 and Non0 Acc2.
- `categorical`: N named emotion classes (IEMOCAP-style); labels are class indices 0..N-1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from affectus.data.types import to_classes
from affectus.errors import AffectusError

SENTIMENT_CLASSES = ("negative", "neutral", "positive")


@dataclass(frozen=True)
class LabelScheme:
    """Base: a scheme with `class_names`; subclasses fill in the rules."""

    name: str
    class_names: tuple[str, ...]
    # Metric columns of results tables (title, metric path), shared by epoch lines, results.md, report, sweep.
    columns: tuple[tuple[str, str], ...] = ()
    modality_columns: tuple[tuple[str, str], ...] = ()  # per-modality columns (Table VI)
    slope_keys: tuple[tuple[str, str], ...] = ()  # what retention slopes are fitted on (Figs. 4-5)
    objective: str = "acc"  # the sweep's `metric: auto`
    f1_key: str = "f1"  # the headline (weighted) F1: what condition tables (CUMDF Tables 1-2) average
    has_subsets: bool = False  # D_msc / D_msi from unimodal labels apply
    scores: bool = False  # labels are continuous scores (regression outputs can be scored)
    # the keys of an MMSA-style file that hold the labels, first present wins (data/mmsa.py)
    label_keys: tuple[str, ...] = ("regression_labels",)
    # the Acc2 rule's two sides (False, True) where the scheme has one; () for none (categorical)
    binary_names: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def spec(self) -> dict[str, Any]:
        """What a run records, and `get_scheme` rebuilds the scheme from."""
        return {"name": self.name}

    def to_classes(self, labels: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def check_labels(self, labels: np.ndarray, where: str) -> None:
        """Raise AffectusError naming `where` and the first bad row if labels do not fit the scheme."""

    def supcon_labels(self, classes: Any) -> Any:
        """Classes (torch or numpy ints) -> the labels SupCon contrasts (positives share a label)."""
        return classes

    def binary_targets(self, classes: Any) -> Any:
        """Classes (torch ints) -> the Acc2 rule's truth (1: `binary_names[1]`); None without a rule."""
        return None

    def metrics(self, logits: Any = None, pred_scores: Any = None, labels: Any = None,
                unimodal: Mapping[str, Any] | None = None, masks: tuple[Any, Any] | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def show(self, class_id: int) -> str:
        return self.class_names[int(class_id)]

    def binary(self, logits: np.ndarray) -> np.ndarray | None:
        """(N, C) logits -> (N,) bool under the Acc2 rule (True: `binary_names[1]`); None without a rule."""
        if not self.binary_names:
            return None
        from affectus.evaluation.metrics import binary_from_logits

        return binary_from_logits(np.asarray(logits))


@dataclass(frozen=True)
class SentimentScheme(LabelScheme):
    """Sentiment scores -> 3 classes (< 0, = 0, > 0). `family` picks the Acc2 rule (metrics.py)."""

    family: str = "sims"

    def to_classes(self, labels: np.ndarray) -> np.ndarray:
        return to_classes(labels)

    def supcon_labels(self, classes: Any) -> Any:
        # The authors binarise along the dataset's Acc2 split: neutral goes with negative on CH-SIMS
        # (positive vs non-positive), with positive on MOSI (non-negative vs negative).
        return self.binary_targets(classes)

    def binary_targets(self, classes: Any) -> Any:
        # the Acc2 rule on classes: neutral is non-positive on CH-SIMS, non-negative on MOSI (Has0)
        return (classes > 1).long() if self.family == "sims" else (classes >= 1).long()

    def metrics(self, logits=None, pred_scores=None, labels=None, unimodal=None, masks=None) -> dict[str, Any]:
        from affectus.evaluation.metrics import compute_metrics

        return compute_metrics(self.family, logits=logits, pred_scores=pred_scores, scores=labels,
                               unimodal_scores=unimodal if self.has_subsets else None, masks=masks)


# a model with a regression output adds these (MMSA's); tables drop columns no run has a value for
_REGRESSION_COLUMNS = (("Acc5", "acc5"), ("Acc7", "acc7"), ("MAE", "mae"), ("Corr", "corr"))


def _modality_columns(pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple((f"{m.capitalize()} {title}", f"modalities.{m}.{key}")
                 for m in ("text", "audio", "vision") for title, key in pairs)


@dataclass(frozen=True)
class CategoricalScheme(LabelScheme):
    """N named classes; labels are class indices. Accuracy, weighted F1, per-class F1, UAR.

    `headline`: the metric shown first ("acc", IEMOCAP's habit, or "f1": weighted F1, as MELD is reported)."""

    headline: str = "acc"

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.name, "classes": list(self.class_names)}
        if self.headline != "acc":  # recorded only when set, so earlier runs' records read the same
            spec["headline"] = self.headline
        return spec

    def check_labels(self, labels: np.ndarray, where: str) -> None:
        labels = np.asarray(labels, dtype=np.float64).reshape(-1)
        bad = ~np.isfinite(labels) | (labels != np.round(labels)) | (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise AffectusError(f"{where} row {row}: label {labels[row]:g} is not one of the {self.num_classes} "
                                f"classes 0..{self.num_classes - 1} ({', '.join(self.class_names)})")

    def to_classes(self, labels: np.ndarray) -> np.ndarray:
        return np.asarray(labels).astype(np.int64)

    def metrics(self, logits=None, pred_scores=None, labels=None, unimodal=None, masks=None) -> dict[str, Any]:
        from sklearn.metrics import f1_score, recall_score

        if logits is None:
            raise AffectusError(f"scheme {self.name}: needs class logits (a model without a classifier output)")
        truth = self.to_classes(np.asarray(labels))
        lg = np.asarray(logits, dtype=np.float64)
        if lg.ndim != 2 or lg.shape != (truth.size, self.num_classes):
            raise AffectusError(f"logits must have shape ({truth.size}, {self.num_classes}), got {tuple(lg.shape)}")
        if np.isnan(lg).any():
            raise AffectusError(f"logits contain NaN in {int(np.isnan(lg).any(axis=1).sum())} of {truth.size} rows")
        pred = lg.argmax(axis=1)
        if truth.size == 0:
            return {"acc": None, "f1": None, "uar": None, **{f"f1_{c}": None for c in self.class_names}}
        ids = list(range(self.num_classes))
        per_class = f1_score(truth, pred, labels=ids, average=None, zero_division=0)
        acc = float(100.0 * np.mean(truth == pred))
        out = {
            "f1": float(100.0 * f1_score(truth, pred, labels=ids, average="weighted", zero_division=0)),
            # unweighted average recall over the classes present in the truth (absent classes have no recall)
            "uar": float(100.0 * recall_score(truth, pred, labels=sorted(set(truth.tolist())), average="macro",
                                              zero_division=0)),
        }
        out.update({f"f1_{c}": float(100.0 * v) for c, v in zip(self.class_names, per_class)})
        # the headline first: JSON readers and tables show keys in this order
        return {"acc": acc, **out} if self.headline == "acc" else {"f1": out.pop("f1"), "acc": acc, **out}


# ------------------------------------------------------------------------------------------- registry

_SCHEMES: dict[str, Callable[..., LabelScheme]] = {}
# Dataset names accepted for the two sentiment schemes (lower case, '_' read as '-').
_ALIASES = {"ch-sims": "sims", "simsv2": "sims", "sims-v2": "sims", "ch-sims-v2": "sims", "ch-simsv2": "sims",
            "mosei": "mosi", "cmu-mosi": "mosi", "cmu-mosei": "mosi"}


def register_scheme(name: str):
    def deco(factory: Callable[..., LabelScheme]):
        _SCHEMES[name] = factory
        return factory

    return deco


def list_schemes() -> list[str]:
    return sorted(_SCHEMES)


def get_scheme(spec: str | Mapping[str, Any] | LabelScheme) -> LabelScheme:
    """A scheme from its name, a dataset alias, or a recorded spec ({name: categorical, classes: [...]})."""
    if isinstance(spec, LabelScheme):
        return spec
    params: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        params = {k: v for k, v in spec.items() if k != "name"}
        spec = spec.get("name", "")
    key = str(spec).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _SCHEMES:
        raise AffectusError(f"unknown label scheme '{spec}': expected one of {', '.join(list_schemes())}")
    try:
        return _SCHEMES[key](**params)
    except TypeError as err:
        raise AffectusError(f"label scheme '{key}': {err}") from None


@register_scheme("sims")
def _sims() -> LabelScheme:
    return SentimentScheme(
        name="sims", class_names=SENTIMENT_CLASSES, family="sims", scores=True, has_subsets=True, objective="acc2",
        binary_names=("non-positive", "positive"),  # Acc2 on CH-SIMS: positive vs non-positive
        columns=(("D_test Acc2", "d_test.acc2"), ("D_test F1", "d_test.f1"), ("D_msc Acc2", "d_msc.acc2"),
                 ("D_msc F1", "d_msc.f1"), ("D_msi Acc2", "d_msi.acc2"), ("D_msi F1", "d_msi.f1"),
                 ("Acc3", "acc3"), *_REGRESSION_COLUMNS),
        modality_columns=_modality_columns((("Acc2", "acc2"), ("F1", "f1"))),
        slope_keys=(("D_test", "d_test.acc2"), ("D_msc", "d_msc.acc2"), ("D_msi", "d_msi.acc2")),
    )


@register_scheme("mosi")
def _mosi() -> LabelScheme:
    return SentimentScheme(
        name="mosi", class_names=SENTIMENT_CLASSES, family="mosi", scores=True, objective="has0_acc2", f1_key="has0_f1",
        binary_names=("negative", "non-negative"),  # Has0 Acc2: non-negative vs negative
        columns=(("Has0 Acc2", "has0_acc2"), ("Has0 F1", "has0_f1"), ("Non0 Acc2", "non0_acc2"),
                 ("Non0 F1", "non0_f1"), ("Acc3", "acc3"), *_REGRESSION_COLUMNS),
        modality_columns=_modality_columns((("Has0 Acc2", "has0_acc2"), ("Non0 Acc2", "non0_acc2"))),
        slope_keys=(("Has0 Acc2", "has0_acc2"), ("Non0 Acc2", "non0_acc2")),
    )


@register_scheme("categorical")
def _categorical(classes: list[str] | tuple[str, ...] = (), headline: str = "acc") -> LabelScheme:
    names = tuple(str(c) for c in classes)
    if len(names) < 2 or len(set(names)) != len(names):
        raise AffectusError(f"label scheme categorical: expected at least 2 distinct class names, got {list(names)}")
    if headline not in ("acc", "f1"):
        raise AffectusError(f"label scheme categorical: headline {headline!r}, expected acc or f1 (weighted F1)")
    pair = (("Acc", "acc"), ("W-F1", "f1")) if headline == "acc" else (("W-F1", "f1"), ("Acc", "acc"))
    return CategoricalScheme(
        name="categorical", class_names=names, objective="f1", headline=headline,
        # class indices: MMSA-style emotion files keep them in classification_labels; ours also in regression_labels
        label_keys=("classification_labels", "regression_labels"),
        columns=(*pair, ("UAR", "uar"), *((f"F1 {c}", f"f1_{c}") for c in names)),
        modality_columns=_modality_columns(pair),
        slope_keys=pair,
    )


def infer_scheme(train_labels: np.ndarray, select_labels: np.ndarray, unimodal: bool) -> LabelScheme:
    """The scheme of data without a preset, from the train and selection splits only.

    Test labels may be read by evaluation only: the scheme decides training behaviour (SupCon's
    binarisation), so it must not depend on them. Unimodal labels or scores within [-1, 1] mean the
    CH-SIMS family; anything wider the MOSI family.
    """
    both = np.concatenate([np.asarray(train_labels).reshape(-1), np.asarray(select_labels).reshape(-1)])
    if unimodal or (both.size and float(both.min()) >= -1.0 and float(both.max()) <= 1.0):
        return get_scheme("sims")
    return get_scheme("mosi")
