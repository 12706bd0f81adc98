"""Label schemes: what the labels of a dataset mean. Every label rule lives here, nowhere else.

A scheme is a small registered object (like a model). It knows its classes and their names, how a
label becomes a class (its bins), the Acc2 rule(s), the binary labels SupCon contrasts, when a sample
is modality-consistent (D_msc), which metrics and table columns apply, the sweep's default objective,
how a prediction is shown, and which label story the simulator tells for it. Generic code asks the
scheme; it never compares a scheme's name. `evaluation/metrics.py` turns outputs into numbers by
reading these declarations.

A new dataset with new labels is one YAML preset (`scheme: NAME` or `scheme: {name: categorical,
classes: [...]}`); a new kind of labels is one `@register_scheme` factory (see docs/architecture.md,
"Add a label scheme").

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

from affectus.data.types import MODALITIES, to_classes
from affectus.errors import AffectusError

SENTIMENT_CLASSES = ("negative", "neutral", "positive")


@dataclass(frozen=True)
class Acc2Rule:
    """One binary accuracy: which classes count as the positive side, which are left out.

    `prefix` names its keys (`{prefix}acc2`, `{prefix}f1`). The truth of a label is
    `to_classes(label) in positive`; a predicted score is binarised by the same rule, a prediction
    from logits by the scheme's `logit_sides`. Samples whose true class is in `dropped` are not scored.
    """

    prefix: str
    positive: tuple[int, ...]
    dropped: tuple[int, ...] = ()


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
    # the Acc2 rules, the first one is *the* rule (binary_targets, SupCon, predictions); () for none
    acc2_rules: tuple[Acc2Rule, ...] = ()
    # a prediction from logits is on the positive side iff the best logit of the second group beats the
    # best of the first (the authors' rule on 3 classes: pos > neg, neutral ignored, a tie is negative)
    logit_sides: tuple[tuple[int, ...], tuple[int, ...]] = ((0,), (2,))
    short_names: tuple[str, ...] = ()  # class names in figures (default: class_names)
    # SynthConfig fields of the simulator's score story for this scheme (label steps, class rates);
    # a scheme without scores is simulated by the categorical story from its class names
    synth_story: tuple[tuple[str, Any], ...] = ()
    # the metric shown first for named classes: "acc" (IEMOCAP's habit) or "f1" (weighted F1, as MELD is
    # reported); categorical schemes set it from their spec
    headline: str = "acc"
    # what the scheme means, in plain words for `train`'s output, reports and results.md (`describe`)
    description: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> str:
        """The scheme in plain words: "3-class sentiment, Acc2 Has0/Non0", "categorical: angry, happy, ..."."""
        return self.description or f"{self.num_classes}-class {self.name}: {', '.join(self.class_names)}"

    def spec(self) -> dict[str, Any]:
        """What a run records, and `get_scheme` rebuilds the scheme from."""
        return {"name": self.name}

    def to_classes(self, labels: np.ndarray) -> np.ndarray:
        """(N,) labels -> (N,) int64 class indices (the scheme's bins)."""
        raise NotImplementedError

    def check_labels(self, labels: np.ndarray, where: str) -> None:
        """Raise AffectusError naming `where` and the first bad row if labels do not fit the scheme."""

    def supcon_labels(self, classes: Any) -> Any:
        """Classes (torch or numpy ints) -> the labels SupCon contrasts (positives share a label)."""
        return classes

    def binary_targets(self, classes: Any) -> Any:
        """Classes (torch or numpy ints) -> the Acc2 rule's truth as int64 (1: `binary_names[1]`);
        None without a rule."""
        if not self.acc2_rules:
            return None
        table = [int(c in self.acc2_rules[0].positive) for c in range(self.num_classes)]
        if hasattr(classes, "new_tensor"):  # torch, without importing it here
            return classes.new_tensor(table).long()[classes.long()]
        return np.asarray(table, dtype=np.int64)[np.asarray(classes)]

    def binary(self, logits: np.ndarray) -> np.ndarray | None:
        """(N, C) logits -> (N,) bool under the Acc2 rule (True: `binary_names[1]`); None without a rule."""
        if not self.acc2_rules:
            return None
        logits = np.asarray(logits)
        neg, pos = self.logit_sides
        return logits[:, list(pos)].max(axis=1) > logits[:, list(neg)].max(axis=1)

    def show(self, class_id: int) -> str:
        return self.class_names[int(class_id)]

    def short(self, class_id: int) -> str:
        """A class's name in figures and compact tables."""
        return (self.short_names or self.class_names)[int(class_id)]

    def consistency_masks(self, labels: Any, unimodal: Mapping[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
        """(msc_mask, msi_mask), boolean (N,) each, complementary (CMC paper, footnote 3).

        A sample is modality-consistent (D_msc) when its multimodal label and its three unimodal labels
        (text, audio, vision) fall in one class of this scheme (`to_classes`); else inconsistent (D_msi).
        """
        if unimodal is None:
            raise AffectusError("D_msc / D_msi need unimodal labels (only CH-SIMS and CH-SIMS v2 have them)")
        missing = [m for m in MODALITIES if m not in unimodal]
        if missing:
            raise AffectusError(f"unimodal labels lack {', '.join(missing)}: expected keys text, audio, vision")
        multimodal = self.to_classes(np.asarray(labels).reshape(-1))
        msc = np.ones(multimodal.shape[0], dtype=bool)
        for m in MODALITIES:
            uni = np.asarray(unimodal[m]).reshape(-1)
            if uni.shape[0] != multimodal.shape[0]:
                raise AffectusError(f"{uni.shape[0]} {m} labels for {multimodal.shape[0]} multimodal labels")
            msc &= self.to_classes(uni) == multimodal
        return msc, ~msc


@dataclass(frozen=True)
class SentimentScheme(LabelScheme):
    """Sentiment scores -> 3 classes by sign (< 0, = 0, > 0); a subclass may bin them otherwise.

    How a *predicted score* is scored (MMSA's regression conventions, read by evaluation/metrics.py):
    both sides are clipped to `score_clip` first when set (MAE and correlation included); then each
    Acc2 rule, then `score_bins` (name -> thresholds: the class is how many thresholds a value lies
    above, compared in float32) and `score_rounding` (name -> bound: clip to [-bound, bound], round half
    to even), then MAE and Pearson correlation.
    """

    scores: bool = True
    score_clip: tuple[float, float] | None = None
    score_bins: tuple[tuple[str, tuple[float, ...]], ...] = ()
    score_rounding: tuple[tuple[str, float], ...] = ()

    def to_classes(self, labels: np.ndarray) -> np.ndarray:
        return to_classes(labels)

    def supcon_labels(self, classes: Any) -> Any:
        # The authors binarise along the dataset's Acc2 split: neutral goes with negative on CH-SIMS
        # (positive vs non-positive), with positive on MOSI (non-negative vs negative).
        return self.binary_targets(classes)


# a model with a regression output adds these (MMSA's); tables drop columns no run has a value for
_REGRESSION_COLUMNS = (("Acc5", "acc5"), ("Acc7", "acc7"), ("MAE", "mae"), ("Corr", "corr"))


def modality_columns(pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """Per-modality table columns (title, metric path) for (title, key) pairs."""
    return tuple((f"{m.capitalize()} {title}", f"modalities.{m}.{key}")
                 for m in ("text", "audio", "vision") for title, key in pairs)


@dataclass(frozen=True)
class CategoricalScheme(LabelScheme):
    """N named classes; labels are class indices. Accuracy, weighted F1, per-class F1, UAR.

    `headline` (on the base class): set from the spec, recorded only when it is not "acc"."""

    def describe(self) -> str:
        return f"{self.name}: {', '.join(self.class_names)}"

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


# ------------------------------------------------------------------------------------------- registry

_SCHEMES: dict[str, Callable[..., LabelScheme]] = {}
# Dataset names accepted for the two sentiment schemes (lower case, '_' read as '-'). The only alias table.
_ALIASES = {"ch-sims": "sims", "simsv2": "sims", "sims-v2": "sims", "ch-sims-v2": "sims", "ch-simsv2": "sims",
            "mosei": "mosi", "cmu-mosi": "mosi", "cmu-mosei": "mosi"}


def register_scheme(name: str):
    """Register a factory (keyword arguments: the spec's other keys) under `name`. A later registration
    of the same name replaces the earlier one (a test or a plugin may redefine its own scheme)."""

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


# The simulator's score stories (data/synthetic.py reads `synth_story`). Label steps: averaged ratings of
# 5 annotators (multiples of 0.2); MOSI-like data also has a few multiples of 1/4, 1/3 and 1/2 (fewer
# annotators), as in the shared MOSI pickle.
_SIMS_STORY = (("label_steps", (0.2,)), ("label_step_probs", None), ("neutral_rate", 0.15), ("positive_rate", 0.4))
_MOSI_STORY = (("label_steps", (0.2, 0.25, 1 / 3, 0.5)), ("label_step_probs", (0.85, 0.06, 0.03, 0.06)),
               ("neutral_rate", 0.05), ("positive_rate", 0.5))
SENTIMENT_SHORT = ("Neg", "Neu", "Pos")  # the paper's Figs. 6-7 labels


@register_scheme("sims")
def _sims() -> LabelScheme:
    return SentimentScheme(
        name="sims", class_names=SENTIMENT_CLASSES, short_names=SENTIMENT_SHORT, has_subsets=True, objective="acc2",
        description="3-class sentiment, Acc2 positive/non-positive (CH-SIMS rule)",
        binary_names=("non-positive", "positive"),  # Acc2 on CH-SIMS: positive vs non-positive
        acc2_rules=(Acc2Rule("", positive=(2,)),),
        # MMSA's SIMS regression bins (metricsTop.py, `__eval_sims_regression`) on scores clipped to [-1, 1]:
        # closed on the right, [-1, -0.1] -> 0, (-0.1, 0.1] -> 1, (0.1, 1] -> 2
        score_clip=(-1.0, 1.0), score_bins=(("acc3", (-0.1, 0.1)), ("acc5", (-0.7, -0.1, 0.1, 0.7))),
        columns=(("D_test Acc2", "d_test.acc2"), ("D_test F1", "d_test.f1"), ("D_msc Acc2", "d_msc.acc2"),
                 ("D_msc F1", "d_msc.f1"), ("D_msi Acc2", "d_msi.acc2"), ("D_msi F1", "d_msi.f1"),
                 ("Acc3", "acc3"), *_REGRESSION_COLUMNS),
        modality_columns=modality_columns((("Acc2", "acc2"), ("F1", "f1"))),
        slope_keys=(("D_test", "d_test.acc2"), ("D_msc", "d_msc.acc2"), ("D_msi", "d_msi.acc2")),
        synth_story=_SIMS_STORY,
    )


@register_scheme("mosi")
def _mosi() -> LabelScheme:
    return SentimentScheme(
        name="mosi", class_names=SENTIMENT_CLASSES, short_names=SENTIMENT_SHORT, objective="has0_acc2",
        description="3-class sentiment, Acc2 Has0/Non0 (MOSI rule)",
        f1_key="has0_f1",
        binary_names=("negative", "non-negative"),  # Has0 Acc2: non-negative vs negative
        # Has0: non-negative vs negative; Non0: zeros dropped, positive vs negative (MMSA's
        # `__eval_mosei_regression`; the authors' code gets Non0 wrong, docs/metrics.md)
        acc2_rules=(Acc2Rule("has0_", positive=(1, 2)), Acc2Rule("non0_", positive=(2,), dropped=(1,))),
        # MMSA's multiclass rule: clip to [-b, b], round half to even; MAE and correlation unclipped
        score_rounding=(("acc3", 1.0), ("acc5", 2.0), ("acc7", 3.0)),
        columns=(("Has0 Acc2", "has0_acc2"), ("Has0 F1", "has0_f1"), ("Non0 Acc2", "non0_acc2"),
                 ("Non0 F1", "non0_f1"), ("Acc3", "acc3"), *_REGRESSION_COLUMNS),
        modality_columns=modality_columns((("Has0 Acc2", "has0_acc2"), ("Non0 Acc2", "non0_acc2"))),
        slope_keys=(("Has0 Acc2", "has0_acc2"), ("Non0 Acc2", "non0_acc2")),
        synth_story=_MOSI_STORY,
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
        modality_columns=modality_columns(pair),
        slope_keys=pair,
    )


# DataPlan.origin (training/trainer.py) of a scheme the data file records (run.json `scheme_origin`)
RECORDED_ORIGIN = "recorded in the file"

# A class name a file may record (label.csv's `annotation`, extract-dataset): it becomes a metric key
# (`f1_<name>`), a table column and a JSON key, so plain lower-case words only; letters of any script
# are fine (str.isalpha), digits, '_' and '-' after the first letter.
MAX_CLASS_NAME = 40


def class_name_problem(name: str) -> str | None:
    """Why `name` cannot be a recorded class name, or None when it can (see MAX_CLASS_NAME)."""
    if not name:
        return "is empty"
    if len(name) > MAX_CLASS_NAME:
        return f"is longer than {MAX_CLASS_NAME} characters"
    if not name[0].isalpha():
        return "does not start with a letter"
    odd = [c for c in name if not (c.isalnum() or c in "_-")]
    if odd:
        return f"holds {odd[0]!r}; a class name is letters, digits, '_' and '-' (e.g. very_happy)"
    return None


def looks_like_class_indices(labels: np.ndarray) -> bool:
    """Whether sentiment labels look like class indices: whole numbers, none negative, at least two
    distinct (0/1/2 for happy/sad/angry). Real sentiment scores have negatives and fractions (averaged
    ratings); a file of these read as sentiment is almost surely emotion classes numbered by hand."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if y.size == 0 or not np.isfinite(y).all():
        return False
    return bool((y >= 0).all() and (y == np.round(y)).all() and np.unique(y).size >= 2)


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
