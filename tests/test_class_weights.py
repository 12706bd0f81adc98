"""`train.class_weights` (training/tasks.py): per-class loss weights from the training split's classes, for rare
classes a model otherwise never predicts (MELD's fear and disgust). Weights by hand, the weighted selection CE,
runs that record them (late_fusion, linear) and the refusals (a recipe that does not weigh, a bad value)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from affectus.training.tasks import class_weights, validation_ce
from conftest import one_error_line
from test_context import FAST, grouped_file


def test_weights_by_hand():
    classes = np.array([0, 0, 0, 1])  # class 2 absent from training
    np.testing.assert_allclose(class_weights(classes, 3, "balanced"), [4 / 9, 4 / 3, 1.0], rtol=1e-6)
    np.testing.assert_allclose(class_weights(classes, 3, "sqrt"), np.sqrt([4 / 9, 4 / 3, 1.0]), rtol=1e-6)
    assert class_weights(classes, 3, "none") is None


def test_the_selection_ce_is_the_weighted_mean_the_training_loss_uses():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 3), torch.tensor([0, 0, 0, 1, 2, 2])
    w = torch.tensor([0.5, 2.0, 1.0])

    class Out:
        def __init__(self, logits):
            self.logits = logits

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, batch):
            return Out(batch.logits)

    class B:
        def __init__(self, rows):
            self.logits, self.classes = logits[rows], y[rows]

        def to(self, device):
            return self

        def __len__(self):
            return len(self.classes)

    batches = lambda: [B(slice(0, 4)), B(slice(4, 6))]  # two batches: sums, not means, add up
    got = validation_ce(Model(), batches, w)["loss"]
    assert got == pytest.approx(F.cross_entropy(logits, y, weight=w).item(), rel=1e-6)
    assert validation_ce(Model(), batches)["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


@pytest.mark.parametrize("model, where", [("late_fusion", ("stages", "train", "class_weights")),
                                          ("linear", ("stages", "linear", "class_weights"))])
def test_a_run_records_the_weights_of_its_training_classes(tmp_path, cli, make_raw, model, where):
    from affectus.data.mmsa import load_dataset
    from affectus.data.schemes import get_scheme

    data = grouped_file(tmp_path, make_raw, "data.npz", seed=1)
    run = tmp_path / "run"
    rc, _, err = cli("train", "--data", data, "--model", model, "--out", run, "--set", "train.class_weights=balanced",
                     *FAST)
    assert rc == 0, err
    info = json.loads((run / "run.json").read_text())
    assert info["config"]["train"]["class_weights"] == "balanced"
    got = info
    for key in where:
        got = got[key]
    train = load_dataset(data)["train"]
    classes = get_scheme(info["scheme"]).to_classes(train.labels)
    want = class_weights(classes, 3, "balanced")
    values = list(got.values()) if isinstance(got, dict) else got
    present = np.unique(classes)
    np.testing.assert_allclose(values, want[present] if isinstance(got, dict) else want, rtol=1e-5)


def test_a_recipe_that_does_not_weigh_classes_and_a_bad_value_are_refused(tmp_path, cli, make_raw):
    data = grouped_file(tmp_path, make_raw, "data.npz", seed=1)
    rc, _, err = cli("train", "--data", data, "--model", "cmc_plus", "--out", tmp_path / "a", "--set",
                     "train.class_weights=balanced", *FAST)
    one_error_line(rc, err, "train.class_weights = balanced: model cmc_plus's training recipe does not weigh classes")
    assert not (tmp_path / "a").exists()
    rc, _, err = cli("train", "--data", data, "--model", "late_fusion", "--out", tmp_path / "b", "--set",
                     "train.class_weights=inverse", *FAST)
    one_error_line(rc, err, "train.class_weights = 'inverse': expected one of none, balanced, sqrt")
    assert not (tmp_path / "b").exists()
