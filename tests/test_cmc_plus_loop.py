"""CMC+'s stages in the generic loop (issue 17): the numbers did not move when `_fit_experts` became a task
of `training/loop.py` and the router's hide-one-modality sampler moved to `data/missing.py`; an interrupted
run resumes inside the experts stage to the same weights; a NaN loss (experts or router) stops with one
error line."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import affectus
from affectus.cli import main
from affectus.data.mmsa import load_dataset, write_pickle
from affectus.data.schemes import get_scheme
from affectus.data.synthetic import generate
from affectus.errors import AffectusError
from affectus.models.cmc_plus import CMCPlus, CMCPlusConfig
from affectus.training.recipes.cmc_plus import CMCPlusRecipe, CMCPlusRecipeConfig, ExpertsTask
from conftest import tiny_sim_config

# Small enough to run in seconds, long enough that the experts stage ends by every expert's patience
# (epoch 116 = vision's best 112 + 4), not by `expert_epochs`.
FAST = ["--threads", "1", "--quiet", "--set", "train.seed=7", "--set", "recipe.expert_epochs=120",
        "--set", "recipe.expert_patience=4", "--set", "recipe.router_steps=60", "--set", "recipe.folds=3",
        "--set", "recipe.fallback_folds=3"]

# Recorded at commit 338add3 (CMC+ with its own expert loop and router sampler, before the refactor) by
# training these runs on `tiny_sim_config()` and reading run.json and the first four test probabilities back.
# The refactored code gives bit-identical weights (same RNG draws in the same order).
RECORDED = {
    "fast": {
        "best_epoch": [62, 29, 112], "best_val_ce": [0.59506, 0.91473, 0.65721], "epochs": 116,
        "temperatures": {"audio": 0.8891, "text": 0.9418, "vision": 0.9976}, "router_loss": 0.49886,
        "mean_weights": {"audio": 0.2159, "text": 1.387, "vision": 0.9117}, "shrink": 0.25, "expert": "text",
        "heldout": {"0.0": 0.6239, "0.25": 0.63175, "0.5": 0.69601, "0.75": 0.82464, "1.0": 1.01822},
        "metrics": {"acc2": 79.16666666666666, "f1": 79.73381730187538, "acc3": 66.66666666666666},
        "probs": [[0.997445, 0.002466, 8.9e-05], [0.019204, 0.010573, 0.970223], [0.000681, 0.002001, 0.997318],
                  [0.263032, 0.106513, 0.630455]]},
    "drop": {  # recipe.modality_dropout=0.3: the router hides one modality of 30% of the rows per step
        "best_epoch": [62, 29, 112], "best_val_ce": [0.59506, 0.91473, 0.65721], "epochs": 116,
        "temperatures": {"audio": 0.8891, "text": 0.9418, "vision": 0.9976}, "router_loss": 0.64516,
        "mean_weights": {"audio": 0.3427, "text": 1.4698, "vision": 0.5389}, "shrink": 0.25, "expert": "text",
        "heldout": {"0.0": 0.69405, "0.25": 0.71468, "0.5": 0.77546, "0.75": 0.87838, "1.0": 1.01822},
        "metrics": {"acc2": 79.16666666666666, "f1": 79.73381730187538, "acc3": 70.83333333333334},
        "probs": [[0.996258, 0.003575, 0.000167], [0.02911, 0.017675, 0.953215], [0.000359, 0.001272, 0.998369],
                  [0.3045, 0.216345, 0.479155]]},
}
SETTINGS = {"fast": [], "drop": ["--set", "recipe.modality_dropout=0.3"]}


@pytest.fixture(scope="module")
def sim7(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cmcp") / "tiny.pkl"
    write_pickle(generate(tiny_sim_config()), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECORDED))
def test_fixed_seed_cmc_plus_matches_recorded_values(sim7, tmp_path, name):
    out = tmp_path / "run"
    assert main(["train", "--data", str(sim7), "--model", "cmc_plus", "--out", str(out), *FAST,
                 *SETTINGS[name]]) == 0
    want = RECORDED[name]
    stages = json.loads((out / "run.json").read_text())["stages"]
    experts, consensus = stages["experts"], stages["consensus"]
    assert experts["best_epoch"] == want["best_epoch"] and experts["epochs"] == want["epochs"]
    assert experts["best_val_ce"] == pytest.approx(want["best_val_ce"], abs=2e-5)
    assert consensus["temperatures"] == want["temperatures"]  # grid points: equal or a whole step apart
    assert consensus["loss"] == pytest.approx(want["router_loss"], abs=2e-5)
    assert consensus["mean_weights"] == pytest.approx(want["mean_weights"], abs=2e-4)
    fallback = consensus["fallback"]
    assert (fallback["shrink"], fallback["expert"]) == (want["shrink"], want["expert"])
    assert {k: v["loss"] for k, v in fallback["heldout"].items()} == pytest.approx(want["heldout"], abs=2e-5)
    metrics = json.loads((out / "metrics.json").read_text())["d_test"]
    for key, value in want["metrics"].items():
        assert metrics[key] == pytest.approx(value)
    probs = affectus.load(out).predict(load_dataset(sim7)["test"]).probabilities[:4]
    np.testing.assert_allclose(probs, np.array(want["probs"]), atol=2e-6)


@pytest.fixture(scope="module")
def uninterrupted(sim7, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cmcp_full") / "run"
    assert main(["train", "--data", str(sim7), "--model", "cmc_plus", "--out", str(out), *FAST]) == 0
    return out


# the experts' epochs run before the interruption: 20 is inside stage 1 (all of train, 116 epochs); 150 is
# inside a cross-fitting fold (stage 1 + f), whose resume state also carries stage 1's experts and the
# out-of-fold logits of the folds before it
@pytest.mark.slow
@pytest.mark.parametrize(("cut", "stages"), [(20, {1}), (150, {2, 3, 4})], ids=["stage1", "fold"])
def test_interrupted_run_resumes_inside_the_experts_to_the_same_weights(sim7, uninterrupted, tmp_path,
                                                                        monkeypatch, cut, stages):
    calls = {"n": 0}

    def interrupt(self, epoch):
        calls["n"] += 1
        if calls["n"] > cut:
            raise KeyboardInterrupt

    args = ["train", "--data", str(sim7), "--model", "cmc_plus", "--out", str(tmp_path / "cut"), *FAST]
    monkeypatch.setattr(ExpertsTask, "start_epoch", interrupt)
    assert main(args) == 130
    state = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)
    assert state["stage"] in stages and not (tmp_path / "cut" / "run.json").exists()
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    wa, wb = (load_file(str(d / "model.safetensors")) for d in (uninterrupted, tmp_path / "cut"))
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])
    runs = [json.loads((d / "run.json").read_text())["stages"] for d in (uninterrupted, tmp_path / "cut")]
    for r in runs:  # every epoch of stage 1, seconds aside
        r["experts"]["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in r["experts"]["history"]]
    assert len(runs[0]["experts"]["history"]) == 116 and runs[0] == runs[1]


def test_features_that_make_the_loss_nan_stop_the_experts_with_one_error_line(tmp_path, capsys):
    """Audio features at the edge of float32 overflow the experts' standardisation (inf mean, NaN inputs):
    the loop stops at the first step with its one-line error, before a NaN reaches the weights."""
    raw = generate(tiny_sim_config())
    raw["train"]["audio"][:5] = 3e38  # finite, so the loader keeps them
    path = tmp_path / "huge.pkl"
    write_pickle(raw, path)
    capsys.readouterr()
    out = tmp_path / "run"
    assert main(["train", "--data", str(path), "--model", "cmc_plus", "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: experts: loss became nan at epoch 1; check the input features"]
    assert not (out / "run.json").exists() and not (out / "state.pt").exists()


def test_router_fit_that_turns_nan_stops_with_one_error():
    """The router is a full-batch fit, not an epoch loop: its loss is checked once at the end of the fit."""
    torch.manual_seed(0)
    model = CMCPlus(CMCPlusConfig(dims={"text": 6, "audio": 3, "vision": 4}))
    ctx = SimpleNamespace(recipe=CMCPlusRecipeConfig(router_steps=5, modality_dropout=0.3), model=model,
                          train=SimpleNamespace(seed=0), scheme=get_scheme("mosi"))
    z, y = torch.randn(8, 3, 3), torch.arange(8) % 3
    assert CMCPlusRecipe()._fit_router(ctx, z, y)["loss"] > 0  # finite logits: a finite fit
    z[2, 1] = float("nan")
    with pytest.raises(AffectusError, match=r"^router: loss became nan after 5 steps; check the input features$"):
        CMCPlusRecipe()._fit_router(ctx, z, y)
