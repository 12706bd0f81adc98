"""TransM / TransModality (Wang et al., WWW 2020): a pinned fixed-seed run, its design (absent modalities
are imagined by translation; training makes the translations approach the real features) and the
settings it refuses before anything trains."""

from __future__ import annotations

import dataclasses

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
from affectus.models.transm import TransM, TransMConfig
from affectus.training.recipes.mctn import masked_mse
from affectus.training.recipes.transm import TransMRecipeConfig, TransMTask
from conftest import TINY_BATCH_DIMS, one_error_line, tiny_batch, tiny_sim_config

FAST = ["--set", "train.epochs=2", "--set", "train.patience=1", "--set", "train.batch_size=32", "--threads", "1",
        "--quiet"]
SMALL = ["--set", "model.d=8", "--set", "model.heads=2", "--set", "model.layers=1", "--set", "model.ff=16",
         "--set", "model.steps=4"]

# Printed on branch bl-cumdf1 (after commit 49d2f24) by training `transm` with FAST and SMALL on `sim_file`
# (tiny_sim_config) and reading the first four test probabilities through affectus.load(out).predict.
RECORDED = [[0.43413, 0.32757, 0.23829], [0.44721, 0.29382, 0.25896], [0.48038, 0.30099, 0.21863],
            [0.2451, 0.34555, 0.40935]]


@pytest.mark.slow
def test_fixed_seed_run_matches_recorded_values(sim_file, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(sim_file), "--model", "transm", "--out", str(out), *FAST, *SMALL]) == 0
    got = affectus.load(out).predict(load_dataset(sim_file)["test"]).probabilities[:4]
    np.testing.assert_allclose(got, np.array(RECORDED), atol=2e-5)


def _small(**extra) -> TransM:
    return TransM(TransMConfig(dims=dict(TINY_BATCH_DIMS), steps=4, d=8, heads=2, layers=1, ff=16, **extra))


def test_an_absent_target_is_imagined_by_its_forward_translation():
    """The missing-modality design: with audio absent, the model reads the text -> audio translation in
    its place, exactly as if that translation had been the audio input."""
    torch.manual_seed(0)
    model = _small().eval()
    full = tiny_batch()
    no_audio = full.with_available(torch.tensor([[True, False, True]] * 4))
    with torch.no_grad():
        parts = model.translate(no_audio)
        assert parts.imagined[:, 1].all() and not parts.imagined[:3, 0].any()  # text_lengths[3] = 0: no text
        steps = model.config.steps
        fed = dataclasses.replace(no_audio, audio=parts.translated["audio"], audio_lengths=torch.full((4,), steps),
                                  available=torch.ones(4, 3, dtype=torch.bool))
        # (sample 3 has no text: its text is imagined from the present targets, which differ between the two)
        torch.testing.assert_close(model(fed).logits[:3], parts.logits[:3])
        # an absent source is imagined too: not the zeros a zero-filled model would read
        no_text = full.with_available(torch.tensor([[False, True, True]] * 4))
        zeros_as_text = dataclasses.replace(no_text, available=torch.ones(4, 3, dtype=torch.bool),
                                            text_lengths=torch.full((4,), 5))
        assert not torch.allclose(model(no_text).logits, model(zeros_as_text).logits)


def _forward_error(model: TransM, split) -> float:
    model.eval()
    with torch.no_grad():
        errs = [masked_mse(model.translate(b).translated["audio"], model.resample(b, "audio"),
                           torch.ones(len(b), dtype=torch.bool)) for b in iterate_batches(split, 64)]
    return float(torch.stack(errs).mean())


@pytest.mark.slow
def test_training_under_missing_conditions_teaches_the_translation():
    """The text -> audio translation (what stands in for absent audio) approaches the real audio on
    held-out samples after training with the recipe's task (random conditions, losses on the full batch)."""
    ds = dataset_from_raw(generate(tiny_sim_config()))
    scheme = get_scheme("sims")
    torch.manual_seed(0)
    model = TransM(TransMConfig(dims=ds.dims, steps=4, d=16, heads=2, layers=1, ff=32))
    before = _forward_error(model, ds["valid"])
    task = TransMTask([lambda: iter(())], TransMRecipeConfig(forward_weight=1.0), seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(1, 6):
        task.start_epoch(epoch)
        model.train()
        for batch in iterate_batches(ds["train"], 24, scheme=scheme):
            loss, _ = task.loss(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = _forward_error(model, ds["valid"])
    assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize(("setting", "fragment"), [
    ("model.source=smell", "model.source = 'smell': expected one of text, audio, vision"),
    ("recipe.missing=sometimes", "recipe.missing = 'sometimes': expected one of conditions, none"),
])
def test_bad_settings_are_refused_before_training(sim_file, tmp_path, capsys, setting, fragment):
    out = tmp_path / "run"
    rc = main(["train", "--data", str(sim_file), "--model", "transm", "--out", str(out), "--set", setting, *FAST])
    one_error_line(rc, capsys.readouterr().err, fragment)
    assert not out.exists()


def test_training_without_the_source_is_refused(tmp_path, capsys):
    ds = dataset_from_raw(generate(tiny_sim_config()))
    ds.splits["train"] = with_availability(ds["train"], ("audio", "vision"))
    path = tmp_path / "no_text.pkl"
    write_pickle(dataset_to_raw(ds), path)
    out = tmp_path / "run"
    rc = main(["train", "--data", str(path), "--model", "transm", "--out", str(out), *FAST])
    one_error_line(rc, capsys.readouterr().err, "transm", "has no text", "model.source = text")
    assert not (out / "config.json").exists()
