"""MMIN and IF-MMIN (models/mmin.py, models/if_mmin.py, training/recipes/mmin.py and if_mmin.py): a pinned
fixed-seed run each, the design properties (the imagination learns the missing modality's representation;
IF-MMIN's CMD makes the shared features modality-invariant), and refusals at configuration time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import affectus
from affectus.data.batches import iterate_batches
from affectus.data.mmsa import dataset_from_raw, load_dataset
from affectus.data.schemes import get_scheme
from affectus.data.synthetic import generate
from affectus.data.types import MODALITIES
from affectus.models.registry import create_model, make_config
from affectus.training.recipes.if_mmin import IFMMINRecipeConfig
from affectus.training.recipes.mmin import (
    INCOMPLETE,
    ClippedAdam,
    ImagineTask,
    MMINRecipeConfig,
    Pretrainer,
    PretrainTask,
    Teacher,
    cmd,
    lr_factor,
    network_groups,
)
from conftest import tiny_batch, tiny_sim_config

SMALL = {"embd": 16, "text_channels": 8, "ae_layers": [32, 16, 8], "n_blocks": 2, "cls_layers": [16]}
SMALL_SET = [x for k, v in {"model.embd": 16, "model.text_channels": 8, "model.ae_layers": "[32,16,8]",
                            "model.n_blocks": 2, "model.cls_layers": "[16]"}.items() for x in ("--set", f"{k}={v}")]
FAST = ["--set", "train.epochs=2", "--set", "recipe.pretrain_epochs=2", "--set", "train.batch_size=32",
        "--set", "train.lr=0.001", "--threads", "1", "--quiet", *SMALL_SET]
SCHEME = get_scheme("sims")

# Printed by `PYTHONPATH=src OMP_NUM_THREADS=1 python tests/test_baseline_mmin.py` (the `__main__` block at the
# end: it trains as the test does on `tiny_sim_config()`, the sim_file fixture's data, and reads
# `affectus.load(out).predict(...).probabilities[:4]`) at the commit that added the Kaiming initialisation.
RECORDED = {
    "mmin": [[0.28935, 0.30346, 0.40718], [0.18235, 0.57111, 0.24654], [0.02012, 0.94081, 0.03908],
             [0.3659, 0.30918, 0.32492]],
    "if_mmin": [[0.36708, 0.32607, 0.30684], [0.39695, 0.30261, 0.30045], [0.2168, 0.57747, 0.20574],
                [0.17609, 0.36395, 0.45996]],
}


@pytest.mark.slow
@pytest.mark.parametrize("model", list(RECORDED))
def test_fixed_seed_run_matches_recorded_values(sim_file, tmp_path, cli, model):
    out = tmp_path / "run"
    rc, _, err = cli("train", "--data", sim_file, "--model", model, "--out", out, *FAST)
    assert rc == 0, err
    got = affectus.load(out).predict(load_dataset(sim_file)["test"]).probabilities[:4]
    np.testing.assert_allclose(got, np.array(RECORDED[model]), atol=2e-5)


def _small(name: str, dims: dict[str, int], **extra):
    torch.manual_seed(0)
    return create_model(name, make_config(name, {"dims": dict(dims), **SMALL, **extra}))


def _imagination_error(model, teacher: Teacher, split) -> float:
    """Mean squared error between the imagined vector of each missing modality and the teacher's vector of
    that modality's real features, over the six incomplete conditions (the missing slots only)."""
    model.eval()
    batch = next(iter(iterate_batches(split, len(split), scheme=SCHEME)))
    errors = []
    with torch.no_grad():
        for cond in INCOMPLETE:
            keep = torch.tensor([[m in cond for m in MODALITIES]]).expand(len(batch), 3)
            imagined = model.represent(batch.with_available(keep)).imagined.view(len(batch), 3, -1)
            target = teacher.encoders(batch, ~keep).view(len(batch), 3, -1)  # the missing ones' real features
            errors += [torch.mean((imagined[:, k] - target[:, k]) ** 2).item() for k in range(3) if not keep[0, k]]
    return float(np.mean(errors))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mmin", "if_mmin"])
def test_imagination_learns_the_missing_modalities_representation(name):
    """The CRA's output h' at a missing modality's slot approaches the pretrained encoder's vector of that
    modality (forward imagination): on held-out samples, training stage 1's loss cuts the error to under
    half an untrained network's. Without the imagination loss (or with its target at the available
    modalities) the error at the missing slots does not fall."""
    ds = dataset_from_raw(generate(tiny_sim_config()))
    model = _small(name, ds.dims)
    teacher = Teacher(model)
    before = _imagination_error(model, teacher, ds["test"])
    rc = IFMMINRecipeConfig() if name == "if_mmin" else MMINRecipeConfig()
    opt = ClippedAdam(network_groups(model.encoders, model.cra, model.cra_back, model.shared, model.classifier),
                      1e-3, rc.beta1, rc.clip)
    task = ImagineTask([list], rc, teacher, opt, 1e-3, 30, seed=0)
    for epoch in range(1, 31):
        task.start_epoch(epoch)
        model.train()
        for batch in iterate_batches(ds["train"], 24, shuffle=True, generator=np.random.default_rng(epoch),
                                     scheme=SCHEME):
            loss, _ = task.loss(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = _imagination_error(model, teacher, ds["test"])
    assert after < 0.5 * before, (before, after)


def _cross_modal_cmd(pre: Pretrainer, split) -> float:
    pre.eval()
    batch = next(iter(iterate_batches(split, len(split), scheme=SCHEME)))
    with torch.no_grad():
        _, _, inv = pre.parts(batch)
    return float(np.mean([cmd(inv[:, i], inv[:, j], 5).item() for i, j in ((0, 1), (0, 2), (1, 2))]))


@pytest.mark.slow
def test_if_mmin_cmd_pretraining_aligns_the_modalities_invariant_features():
    """IF-MMIN's invariant features: pretraining with CMD leaves the three modalities' S(h_m) far closer in
    distribution (held-out CMD) than the same pretraining without it."""
    ds = dataset_from_raw(generate(tiny_sim_config()))
    scores = {}
    for weight in (0.0, 1.0):
        model = _small("if_mmin", ds.dims)
        pre = Pretrainer(model, 0.3)
        rc = IFMMINRecipeConfig(cmd_weight=weight)
        opt = ClippedAdam(network_groups(model.encoders, model.shared, pre.head), 1e-3, 0.9, 0.5)
        task = PretrainTask(list, rc, opt, 1e-3, 20, pre)
        for epoch in range(1, 21):
            task.start_epoch(epoch)
            pre.train()
            for batch in iterate_batches(ds["train"], 24, shuffle=True, generator=np.random.default_rng(epoch),
                                         scheme=SCHEME):
                loss, _ = task.loss(pre, batch)
                opt.zero_grad()
                loss.backward()
                opt.step()
        scores[weight] = _cross_modal_cmd(pre, ds["test"])
    assert scores[1.0] < 0.5 * scores[0.0], scores


def test_absent_modality_is_encoded_from_a_zero_input():
    """MMIN's treatment of an absent modality: whatever its (zero-filled) features, it is the encoder's
    response to one zero step; the imagination then fills its slot."""
    model = _small("mmin", {"text": 6, "audio": 3, "vision": 4}).eval()
    batch = tiny_batch()
    gone = batch.with_available(torch.tensor([[True, False, True]] * 4))
    junk = gone.with_available(gone.available)
    junk.audio = torch.randn_like(junk.audio)  # values where nothing should be read
    with torch.no_grad():
        h = model.encoders(gone)
        torch.testing.assert_close(model.encoders(junk), h)
        assert torch.allclose(h[:, 1], h[0, 1].expand_as(h[:, 1]))  # the same vector for every sample
        torch.testing.assert_close(model(junk).logits, model(gone).logits)


def test_linear_learning_rate_policy():
    """Constant for the first half, then linear towards zero (the official niter = niter_decay policy)."""
    assert [round(lr_factor(e, 4), 3) for e in range(1, 5)] == [1.0, 1.0, 0.667, 0.333]
    assert lr_factor(1, 1) == 1.0


@pytest.mark.parametrize(("model", "setting", "message"), [
    ("mmin", "recipe.pretrain=false", "recipe.pretrain = false"),
    ("if_mmin", "model.share_weight=true", "model.share_weight needs model.cycle"),
    ("mmin", "model.ae_layers=[]", "model.ae_layers"),
    ("mmin", "recipe.missing=eight", "recipe.missing"),
])
def test_bad_settings_are_refused_before_training(sim_file, tmp_path, cli, model, setting, message):
    out = tmp_path / "run"
    rc, _, err = cli("train", "--data", sim_file, "--model", model, "--out", out, "--set", setting, "--quiet")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
    assert not out.exists() or not any(out.iterdir())


if __name__ == "__main__":  # prints the values RECORDED pins
    import tempfile
    from pathlib import Path

    from affectus.cli import main
    from affectus.data.mmsa import write_pickle

    folder = Path(tempfile.mkdtemp())
    data = folder / "tiny.pkl"
    write_pickle(generate(tiny_sim_config()), data)
    for name in RECORDED:
        assert main(["train", "--data", str(data), "--model", name, "--out", str(folder / name), *FAST]) == 0
        probs = affectus.load(folder / name).predict(load_dataset(data)["test"]).probabilities[:4]
        print(name, [[round(float(p), 5) for p in row] for row in probs])
