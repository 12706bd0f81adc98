"""MCTN (Pham et al., AAAI 2019): a pinned fixed-seed run, its design (the cycle reconstructs the source;
prediction reads the source alone) and the settings it refuses before anything trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import affectus
from affectus.cli import main
from affectus.data.batches import iterate_batches
from affectus.data.missing import with_availability
from affectus.data.mmsa import dataset_from_raw, dataset_to_raw, load_dataset, write_pickle
from affectus.data.schemes import get_scheme
from affectus.data.synthetic import generate
from affectus.models.mctn import MCTN, MCTNConfig
from affectus.training.recipes.mctn import MCTNRecipeConfig, MCTNTask, masked_mse
from conftest import TINY_BATCH_DIMS, one_error_line, tiny_batch, tiny_sim_config

FAST = ["--set", "train.epochs=2", "--set", "train.patience=1", "--set", "train.batch_size=32", "--threads", "1",
        "--quiet"]

# Printed on branch bl-cumdf1 (after commit 49f1e3d, with this commit's mctn: level 1 text -> vision) by training `mctn` with FAST,
# train.lr=0.003 and model.steps=6 on `sim_file` (tiny_sim_config) and reading the first four test probabilities through
# affectus.load(out).predict: the test below with a print.
RECORDED = [[0.41713, 0.26539, 0.31748], [0.40929, 0.22905, 0.36166], [0.39798, 0.23992, 0.3621],
            [0.39813, 0.26705, 0.33482]]


@pytest.mark.slow
def test_fixed_seed_run_matches_recorded_values(sim_file, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(sim_file), "--model", "mctn", "--out", str(out), *FAST, "--set", "train.lr=0.003",
                 "--set", "model.steps=6"]) == 0
    got = affectus.load(out).predict(load_dataset(sim_file)["test"]).probabilities[:4]
    np.testing.assert_allclose(got, np.array(RECORDED), atol=2e-5)


def _small(**extra) -> MCTN:
    return MCTN(MCTNConfig(dims=dict(TINY_BATCH_DIMS), steps=4, hidden=8, reg_hidden=8, **extra))


def test_prediction_reads_the_source_only():
    """At test time MCTN needs only its source: audio and vision (the targets) never reach the verdict."""
    torch.manual_seed(0)
    model = _small().eval()
    batch = tiny_batch()
    before = model(batch).logits
    batch.audio.normal_()
    batch.vision.mul_(5.0)
    torch.testing.assert_close(model(batch).logits, before)
    batch.text.mul_(-3.0)
    assert not torch.allclose(model(batch).logits, before)
    assert model.config.targets == ("vision", "audio")  # the paper's Fig. 1: language -> visual (cycle) -> acoustic
    assert _small(source="vision").config.targets == ("text", "audio")
    assert _small(cycle_target="audio").config.targets == ("audio", "vision")


def _cycle_error(model: MCTN, split) -> float:
    model.eval()
    with torch.no_grad():
        errors = [masked_mse(p.cycled, p.source, torch.ones(len(b), dtype=torch.bool))
                  for b in iterate_batches(split, 64) for p in [model.translate(b)]]
    return float(torch.stack(errors).mean())


@pytest.mark.slow
def test_the_cycle_reconstructs_the_source():
    """The design property: training with the cycle loss makes the back translation X^_T1 -> X^_S
    reconstruct the source (on held-out samples) clearly better than the untrained network and than the
    same training without the cycle term (cycle_weight 0)."""
    ds = dataset_from_raw(generate(tiny_sim_config()))
    scheme = get_scheme("sims")
    errors = {}
    for name, weight in (("cycle", 1.0), ("no_cycle", 0.0)):
        torch.manual_seed(0)
        model = MCTN(MCTNConfig(dims=ds.dims, steps=4, hidden=16, reg_hidden=8))
        if name == "cycle":
            errors["untrained"] = _cycle_error(model, ds["valid"])
        task = MCTNTask(lambda: iter(()), MCTNRecipeConfig(cycle_weight=weight))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(12):
            for batch in iterate_batches(ds["train"], 24, scheme=scheme):
                loss, _ = task.loss(model, batch)
                opt.zero_grad()
                loss.backward()
                opt.step()
        errors[name] = _cycle_error(model, ds["valid"])
    assert errors["cycle"] < 0.85 * errors["untrained"], errors
    assert errors["cycle"] < 0.85 * errors["no_cycle"], errors


@pytest.mark.parametrize(("settings", "fragments"), [
    (["model.source=smell"], ("model.source = 'smell'", "text, audio, vision")),
    (["model.cycle_target=text"], ("model.cycle_target = 'text'", "other than model.source = text")),
])
def test_a_bad_source_or_target_is_refused_before_training(sim_file, tmp_path, capsys, settings, fragments):
    out = tmp_path / "run"
    sets = [x for s in settings for x in ("--set", s)]
    rc = main(["train", "--data", str(sim_file), "--model", "mctn", "--out", str(out), *sets, *FAST])
    one_error_line(rc, capsys.readouterr().err, *fragments)
    assert not out.exists()


def test_training_without_the_source_is_refused(tmp_path, capsys):
    """A file whose training split lacks MCTN's source (here text) has nothing to translate from: one
    error line, exit 2, before anything is written (the model declares it: needs_in_training)."""
    ds = dataset_from_raw(generate(tiny_sim_config()))
    ds.splits["train"] = with_availability(ds["train"], ("audio", "vision"))
    path = tmp_path / "no_text.pkl"
    write_pickle(dataset_to_raw(ds), path)
    out = tmp_path / "run"
    rc = main(["train", "--data", str(path), "--model", "mctn", "--out", str(out), *FAST])
    one_error_line(rc, capsys.readouterr().err, "mctn", "has no text", "model.source = text")
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    # the same file trains with a source it has
    capsys.readouterr()
    assert main(["train", "--data", str(path), "--model", "mctn", "--out", str(tmp_path / "ok"),
                 "--set", "model.source=audio", *FAST]) == 0
