"""Metrics and subsets, checked against values worked out by hand (the logistic-regression baseline is the
registered `linear` model: tests/test_linear.py).

Rows of logits are (neg, neu, pos). Binary rule: positive iff pos > neg (tie -> negative).
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from affectus.data.schemes import get_scheme
from affectus.errors import AffectusError
from affectus.evaluation.metrics import (
    compute_metrics,
    metrics_from_logits,
    metrics_from_scores,
    pearson,
)
from affectus.evaluation.subsets import load_subset_ids, masks_from_ids

# ------------------------------------------------------------------------------------------------
# From logits
# ------------------------------------------------------------------------------------------------

SIMS_SCORES = np.array([-0.8, -0.2, 0.0, 0.0, 0.4, 0.6, 0.6, -0.4])
# truth2 (> 0):      F  F  F  F  T  T  T  F
# truth3:            0  0  1  1  2  2  2  0
SIMS_LOGITS = np.array(
    [
        [2, 0, 1],  # bin neg  ok | argmax 0 ok
        [1, 3, 1],  # tie -> neg ok | argmax 1 (neu) vs 0: wrong
        [0, 0.5, 1],  # pos: wrong (score 0 is non-positive) | argmax 2 vs 1: wrong
        [1, 5, 0],  # neg ok | argmax 1 ok
        [0, 0, 2],  # pos ok | argmax 2 ok
        [0.5, 0, 1],  # pos ok | argmax 2 ok
        [1, 1, 1],  # tie -> neg: wrong | all tie -> argmax 0: wrong
        [0, 0, -1],  # neg ok | tie neg/neu -> 0 ok
    ]
)


def test_sims_from_logits_by_hand():
    m = metrics_from_logits("sims", SIMS_LOGITS, SIMS_SCORES)
    assert m["acc2"] == pytest.approx(75.0)  # rows 0,1,3,4,5,7 right: 6/8
    assert m["acc3"] == pytest.approx(62.5)  # rows 0,3,4,5,7 right: 5/8
    # positive: TP 4,5; FP 2; FN 6 -> P = R = 2/3 -> F1 2/3 (support 3)
    # negative: TP 0,1,3,7; FP 6; FN 2 -> P = R = 4/5 -> F1 0.8 (support 5)
    # weighted: (3 * 2/3 + 5 * 0.8) / 8 = 0.75
    assert m["f1"] == pytest.approx(75.0)
    assert set(m) == {"acc2", "f1", "acc3"}


def test_sims_from_logits_accepts_torch():
    torch = pytest.importorskip("torch")
    m = metrics_from_logits("sims", torch.tensor(SIMS_LOGITS, requires_grad=True), torch.tensor(SIMS_SCORES))
    assert m["acc2"] == pytest.approx(75.0)


MOSI_SCORES = np.array([-1.5, -0.4, 0.0, 0.0, 0.8, 2.2, 1.0, -2.6])
# has0 truth (>= 0): F  F  T  T  T  T  T  F
# classes:           0  0  1  1  2  2  2  0
MOSI_LOGITS = np.array(
    [
        [2, 0, 1],  # neg | argmax 0
        [0, 0, 1],  # pos | argmax 2
        [1, 0, 2],  # pos | argmax 2
        [2, 1, 1],  # neg | argmax 0
        [0, 1, 3],  # pos | argmax 2
        [0, 0, 1],  # pos | argmax 2
        [2, 2, 1],  # neg | tie neg/neu -> argmax 0
        [1, 0, 1],  # tie neg/pos -> neg | argmax 0
    ]
)


def test_mosi_from_logits_by_hand():
    m = metrics_from_logits("mosi", MOSI_LOGITS, MOSI_SCORES)
    # Has0: wrong rows 1 (F vs T), 3 (T vs F), 6 (T vs F): 5/8
    assert m["has0_acc2"] == pytest.approx(62.5)
    # non-negative: TP 2,4,5; FP 1; FN 3,6 -> P 3/4, R 3/5, F1 2/3 (support 5)
    # negative: TP 0,7; FP 3,6; FN 1 -> P 1/2, R 2/3, F1 4/7 (support 3)
    # weighted: (5 * 2/3 + 3 * 4/7) / 8 = 53/84
    assert m["has0_f1"] == pytest.approx(100 * 53 / 84)
    # Non0 keeps rows 0,1,4,5,6,7: truth F F T T T F, pred F T T T F F -> rows 0,4,5,7 right: 4/6
    assert m["non0_acc2"] == pytest.approx(100 * 4 / 6)
    # positive: TP 4,5; FP 1; FN 6 -> F1 2/3; negative: TP 0,7; FP 6; FN 1 -> F1 2/3
    assert m["non0_f1"] == pytest.approx(100 * 2 / 3)
    # classes 0 0 1 1 2 2 2 0 vs argmax 0 2 2 0 2 2 0 0 -> rows 0,4,5,7: 4/8
    assert m["acc3"] == pytest.approx(50.0)


def test_non0_counts_every_positive_when_all_right():
    # the authors' code would print 50 here: its 3-class truths {0, 2} never match a binary prediction of 1
    scores = np.array([1.0, 2.0, -1.0, -2.0])
    perfect = np.array([[0, 0, 1], [0, 0, 1], [1, 0, 0], [1, 0, 0]])
    assert metrics_from_logits("mosi", perfect, scores)["non0_acc2"] == pytest.approx(100.0)
    # rows 0,1,4,5,6,7 of MOSI_LOGITS kept (zeros dropped); binary truth vs binary prediction: 4 of 6 right
    assert metrics_from_logits("mosi", MOSI_LOGITS, MOSI_SCORES)["non0_acc2"] == pytest.approx(100 * 4 / 6)


def test_logits_binary_metrics_agree_with_sklearn():
    rng = np.random.default_rng(0)
    scores = rng.choice([-2.0, -1.0, 0.0, 1.0, 2.0], size=200)
    logits = rng.normal(size=(200, 3))
    pred = logits[:, 2] > logits[:, 0]
    m = metrics_from_logits("mosi", logits, scores)
    assert m["has0_acc2"] == pytest.approx(100 * accuracy_score(scores >= 0, pred))
    assert m["has0_f1"] == pytest.approx(100 * f1_score(scores >= 0, pred, average="weighted"))
    nz = scores != 0
    assert m["non0_f1"] == pytest.approx(100 * f1_score(scores[nz] > 0, pred[nz], average="weighted"))
    s = metrics_from_logits("sims", logits, scores)
    assert s["f1"] == pytest.approx(100 * f1_score(scores > 0, pred, average="weighted"))


def test_logits_shape_and_nan_are_errors():
    with pytest.raises(AffectusError):
        metrics_from_logits("sims", np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(AffectusError):
        metrics_from_logits("sims", np.full((2, 3), np.nan), np.zeros(2))


# ------------------------------------------------------------------------------------------------
# From regression scores (MMSA conventions)
# ------------------------------------------------------------------------------------------------


def test_sims_from_scores_by_hand():
    truth = np.array([-1.0, -0.6, -0.2, 0.0, 0.2, 0.8, 0.4, 0.0], dtype=np.float32)
    pred = np.array([-1.4, -0.05, -0.1, 0.1, 0.15, 0.75, 0.7, -0.3], dtype=np.float32)
    # clipped pred: -1.0 -0.05 -0.1 0.1 0.15 0.75 0.7 -0.3
    m = metrics_from_scores("sims", pred, truth)
    # acc2 (> 0): truth F F F F T T T F, pred F F F T T T T F -> only row 3 wrong: 7/8
    assert m["acc2"] == pytest.approx(87.5)
    # positive: TP 4,5,6; FP 3 -> P 3/4, R 1, F1 6/7 (support 3); negative: TP 0,1,2,7; FN 3 -> F1 8/9 (5)
    assert m["f1"] == pytest.approx(100 * (3 * 6 / 7 + 5 * 8 / 9) / 8)
    # acc3 bins [-1,-0.1] (-0.1,0.1] (0.1,1]: truth 0 0 0 1 2 2 2 1, pred 0 1 0 1 2 2 2 0 -> 6/8.
    # Row 3 (float32 0.1) is class 1 only when compared in float32, as MMSA does.
    assert m["acc3"] == pytest.approx(75.0)
    # acc5 thresholds -0.7 -0.1 0.1 0.7: truth 0 1 1 2 3 4 3 2, pred 0 2 1 2 3 4 3 1 -> 6/8
    assert m["acc5"] == pytest.approx(75.0)
    # MAE on clipped values: 0 + .55 + .1 + .1 + .05 + .05 + .3 + .3 = 1.45 -> /8
    assert m["mae"] == pytest.approx(1.45 / 8, abs=1e-6)
    assert m["corr"] == pytest.approx(np.corrcoef(np.clip(pred, -1, 1), truth)[0, 1], abs=1e-6)


def test_mosi_from_scores_by_hand():
    truth = np.array([-3.2, -1.5, -0.5, 0.0, 0.0, 0.5, 1.5, 2.6])
    pred = np.array([-2.4, -0.4, 0.0, 0.0, -0.6, 1.4, 2.5, 3.4])
    m = metrics_from_scores("mosi", pred, truth)
    # Has0 (>= 0): truth F F F T T T T T, pred F F T T F T T T -> rows 2, 4 wrong: 6/8
    assert m["has0_acc2"] == pytest.approx(75.0)
    # non-negative: TP 3,5,6,7; FP 2; FN 4 -> F1 0.8 (support 5); negative: TP 0,1 -> F1 2/3 (support 3)
    assert m["has0_f1"] == pytest.approx(75.0)
    # Non0 (rows 0,1,2,5,6,7; > 0): truth F F F T T T, pred F F F T T T (pred 0.0 is not > 0): 6/6
    assert m["non0_acc2"] == pytest.approx(100.0)
    assert m["non0_f1"] == pytest.approx(100.0)
    # acc7: clip [-3,3], round half to even: truth -3 -2 0 0 0 0 2 3, pred -2 0 0 0 -1 1 2 3 -> 4/8
    assert m["acc7"] == pytest.approx(50.0)
    # acc5: clip [-2,2]: truth -2 -2 0 0 0 0 2 2, pred -2 0 0 0 -1 1 2 2 -> 5/8
    assert m["acc5"] == pytest.approx(62.5)
    # acc3: clip [-1,1]: truth -1 -1 0 0 0 0 1 1, pred -1 0 0 0 -1 1 1 1 -> 5/8
    assert m["acc3"] == pytest.approx(62.5)
    # MAE unclipped: .8 + 1.1 + .5 + 0 + .6 + .9 + 1.0 + .8 = 5.7 -> /8
    assert m["mae"] == pytest.approx(5.7 / 8)
    assert m["corr"] == pytest.approx(np.corrcoef(pred, truth)[0, 1])


def test_pearson_constant_and_empty():
    assert pearson(np.ones(5), np.arange(5.0)) == 0.0
    assert pearson(np.array([]), np.array([])) is None
    assert pearson(np.arange(4.0), -np.arange(4.0)) == pytest.approx(-1.0)
    m = metrics_from_scores("mosi", np.zeros(4), np.array([-1.0, 1.0, 2.0, -2.0]))
    assert m["corr"] == 0.0


def test_dataset_names_read_as_schemes():
    # the one alias table lives in data/schemes.py; compute_metrics reads names through it
    assert get_scheme("CH-SIMS-v2").name == "sims"
    assert get_scheme("mosei").name == "mosi"
    with pytest.raises(AffectusError):
        get_scheme("iemocap")
    assert compute_metrics("ch_sims", logits=SIMS_LOGITS, scores=SIMS_SCORES) == compute_metrics(
        "sims", logits=SIMS_LOGITS, scores=SIMS_SCORES)


# ------------------------------------------------------------------------------------------------
# compute_metrics and D_msc / D_msi
# ------------------------------------------------------------------------------------------------

SUB_SCORES = np.array([0.8, -0.6, 0.0, 0.4, -0.2, 0.6])
SUB_UNIMODAL = {
    "text": np.array([0.6, -0.8, 0.0, 0.2, -0.4, 0.2]),
    "audio": np.array([0.2, -0.2, 0.0, -0.2, -0.6, 0.0]),  # row 3 negative, row 5 zero
    "vision": np.array([1.0, -0.4, 0.0, 0.4, 0.2, 0.8]),  # row 4 positive
}
# msc: row 0 all > 0, row 1 all < 0, row 2 all = 0; rows 3,4,5 disagree somewhere.
SUB_LOGITS = np.array(
    [
        [0, 0, 1],  # pos ok | 2 ok
        [1, 0, 0],  # neg ok | 0 ok
        [0, 1, 0],  # tie -> neg ok (0 is non-positive) | 1 ok
        [1, 0, 0],  # neg wrong | 0 wrong
        [0, 0, 1],  # pos wrong | 2 wrong
        [0, 0, 1],  # pos ok | 2 ok
    ]
)


def test_consistency_masks_by_hand():
    msc, msi = get_scheme("sims").consistency_masks(SUB_SCORES, SUB_UNIMODAL)
    assert msc.tolist() == [True, True, True, False, False, False]
    assert (msi == ~msc).all()
    with pytest.raises(AffectusError):
        get_scheme("sims").consistency_masks(SUB_SCORES, {"text": SUB_SCORES})


def test_consistency_of_class_labels_compares_the_classes_not_their_signs():
    """D_msc is the scheme's one rule: class indices 1 and 2 are different emotions, although both are > 0
    (the old sign rule in evaluation/subsets.py called them consistent, the simulator did not)."""
    emotions = get_scheme({"name": "categorical", "classes": ["happy", "sad", "angry"]})
    labels = np.array([1, 2, 0, 2])
    uni = {"text": np.array([1, 1, 0, 2]), "audio": np.array([1, 2, 0, 2]), "vision": np.array([1, 2, 0, 1])}
    msc, msi = emotions.consistency_masks(labels, uni)
    assert msc.tolist() == [True, False, True, False]
    assert (msi == ~msc).all()


def test_compute_metrics_nested_for_sims():
    m = compute_metrics("sims", logits=SUB_LOGITS, scores=SUB_SCORES, unimodal_scores=SUB_UNIMODAL)
    assert m["d_test"]["n"] == 6 and m["d_msc"]["n"] == 3 and m["d_msi"]["n"] == 3
    assert m["d_test"]["acc2"] == pytest.approx(100 * 4 / 6)
    assert m["d_msc"]["acc2"] == pytest.approx(100.0)
    assert m["d_msi"]["acc2"] == pytest.approx(100 / 3)  # only row 5
    assert m["d_msi"]["acc3"] == pytest.approx(100 / 3)
    for key in ("acc2", "f1", "acc3"):
        assert m[key] == m["d_test"][key]


def test_compute_metrics_empty_msi_gives_none_not_nan():
    rows = slice(0, 3)  # only the consistent rows
    uni = {k: v[rows] for k, v in SUB_UNIMODAL.items()}
    m = compute_metrics("sims", logits=SUB_LOGITS[rows], scores=SUB_SCORES[rows], unimodal_scores=uni)
    assert m["d_msi"] == {"n": 0, "acc2": None, "f1": None, "acc3": None}
    assert m["d_msc"]["acc2"] == pytest.approx(100.0)
    json.dumps(m, allow_nan=False)  # no NaN anywhere


def test_compute_metrics_masks_and_regression_extras():
    msc = np.array([True, False, False, False, False, False])
    m = compute_metrics(
        "sims", logits=SUB_LOGITS, pred_scores=SUB_SCORES, scores=SUB_SCORES, masks=(msc, ~msc)
    )
    assert m["d_msc"]["n"] == 1 and m["d_msi"]["n"] == 5
    assert m["mae"] == 0.0 and m["corr"] == pytest.approx(1.0)
    assert m["acc2"] == pytest.approx(100 * 4 / 6)  # logits decide the classification metrics


def test_compute_metrics_mosi_flat():
    m = compute_metrics("mosi", logits=MOSI_LOGITS, scores=MOSI_SCORES)
    assert set(m) == {"has0_acc2", "has0_f1", "non0_acc2", "non0_f1", "acc3"}
    m = compute_metrics("mosei", pred_scores=np.zeros(8), scores=MOSI_SCORES)
    assert {"acc5", "acc7", "mae", "corr"} <= set(m)
    # no non-zero truth at all: Non0 has nothing to score
    m = compute_metrics("mosi", logits=MOSI_LOGITS[2:4], scores=np.zeros(2))
    assert m["non0_acc2"] is None and m["non0_f1"] is None and m["has0_acc2"] == pytest.approx(50.0)
    with pytest.raises(TypeError):
        compute_metrics("mosi", scores=MOSI_SCORES)


# ------------------------------------------------------------------------------------------------
# The authors' subset files
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 5])
def test_load_subset_ids_forms(tmp_path, protocol):
    forms = {
        "list": ["a$_$1", "b$_$2"],
        "array": np.array(["a$_$1", "b$_$2"], dtype=object),
        "dict": {"id": np.array(["a$_$1", "b$_$2"])},
        "mmsa": {"test": {"id": np.array(["a$_$1", "b$_$2"], dtype=object), "vision": np.zeros((2, 3, 4))}},
    }
    for name, obj in forms.items():
        path = tmp_path / f"[test]{name}.pkl"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        assert load_subset_ids(path) == ["a$_$1", "b$_$2"], name


class _Evil:
    def __reduce__(self):
        return (print, ("this should never run",))


def test_load_subset_ids_errors(tmp_path):
    with pytest.raises(AffectusError, match="not found"):
        load_subset_ids(tmp_path / "missing.pkl")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(AffectusError):
        load_subset_ids(bad)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"id": _Evil()}))
    with pytest.raises(AffectusError, match="not numpy data"):
        load_subset_ids(evil)
    odd = tmp_path / "odd.pkl"
    odd.write_bytes(pickle.dumps({"train": 1}))
    with pytest.raises(AffectusError, match="expected"):
        load_subset_ids(odd)


def test_masks_from_ids():
    ids = ["v1", "v2", "v3", "v4"]
    msc, msi = masks_from_ids(ids, ["v1", "v3"], ["v2", "v4"])
    assert msc.tolist() == [True, False, True, False] and msi.tolist() == [False, True, False, True]
    with pytest.raises(AffectusError, match="not in the test split"):
        masks_from_ids(ids, ["v1", "v9"], ["v2"])
    with pytest.raises(AffectusError, match="both"):
        masks_from_ids(ids, ["v1"], ["v1"])
    msc, msi = masks_from_ids(ids, ["v1", "v9"], [], strict=False)
    assert msc.tolist() == [True, False, False, False] and not msi.any()


def test_per_class_f1_of_a_class_neither_present_nor_predicted_is_null():
    from affectus.evaluation.metrics import categorical_metrics

    scheme = get_scheme({"name": "categorical", "classes": ["angry", "happy", "sad"]})
    truth = np.array([0, 0, 1, 1])
    logits = np.eye(3)[[0, 1, 1, 1]]  # one angry sample called happy; sad: no samples, no predictions
    m = categorical_metrics(scheme, logits, truth)
    assert m["f1_sad"] is None
    assert m["f1_angry"] == pytest.approx(100 * f1_score(truth, [0, 1, 1, 1], labels=[0], average=None)[0])
    # predicted but absent from the truth is a real 0, not null
    m2 = categorical_metrics(scheme, np.eye(3)[[0, 2, 1, 1]], truth)
    assert m2["f1_sad"] == 0.0
    json.dumps(m)  # null in JSON
