"""Modality availability (data/missing.py): conditions parsed, an absent modality zero-filled with length 0,
every model under every availability mask, evaluate --available."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from affectus.cli import main
from affectus.data.batches import iterate_batches
from affectus.data.missing import (
    CONDITIONS,
    condition_name,
    hide_one_modality,
    parse_available,
    with_availability,
)
from affectus.data.mmsa import dataset_from_raw, load_dataset
from affectus.data.schemes import get_scheme
from affectus.data.synthetic import SynthConfig, generate
from affectus.errors import AffectusError
from affectus.models.registry import (
    get_model_entry,
    list_models,
)
from affectus.training.config import resolve_config
from affectus.training.trainer import build_model
from conftest import model_needs

TINY = {"seq_lens": {"text": 4, "audio": 6, "vision": 5}, "dims": {"text": 12, "audio": 5, "vision": 7}}


FAST = ["--set", "train.epochs=2", "--set", "train.patience=1", "--set", "train.batch_size=16", "--threads", "1",
        "--quiet"]


def test_parse_available_and_conditions():
    assert parse_available("text,audio") == ("text", "audio")
    assert parse_available("l,a") == parse_available("la") == parse_available("{l,a}") == ("text", "audio")
    assert [condition_name(c) for c in CONDITIONS] == ["{l}", "{a}", "{v}", "{l,a}", "{l,v}", "{a,v}", "{l,a,v}"]
    with pytest.raises(AffectusError, match="unknown modality 'x'"):
        parse_available("l,x")
    with pytest.raises(AffectusError, match="at least one modality"):
        parse_available("")


def test_absent_modality_is_zero_filled_with_length_zero():
    ds = dataset_from_raw(generate(SynthConfig(n_train=8, n_valid=4, n_test=4, seed=2, **TINY)))
    split = with_availability(ds["train"], ("text",))
    assert (split.audio == 0).all() and (split.audio_lengths == 0).all() and (split.vision_lengths == 0).all()
    assert np.array_equal(split.text, ds["train"].text)
    batch = next(iter(iterate_batches(split, 8)))
    assert batch.available.tolist() == [[True, False, False]] * 8
    assert ds["train"].available is None and next(iter(iterate_batches(ds["train"], 8))).availability().all()


def test_hide_one_modality_draws_cmc_plus_router_masks():
    """The sampler CMC+'s router fits with (recipe.modality_dropout): at most one modality hidden per sample,
    with probability `rate`, uniformly which; from a torch.Generator it draws exactly the masks of the inline
    code it replaced (same seed, same draws in the same order), from a numpy Generator it is an
    `availability` sampler of `RecipeContext.batches`."""
    n, rate = 6000, 0.3

    def inline(gen):  # CMC+'s router before the sampler moved to data/missing.py
        hide = torch.rand(n, generator=gen) < rate
        which = torch.randint(0, 3, (n,), generator=gen)
        gone = torch.zeros(n, 3, dtype=torch.bool)
        gone[hide, which[hide]] = True
        return (~gone).numpy()

    gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(3):  # the generator moves on identically, step after step
        np.testing.assert_array_equal(hide_one_modality(n, rate, gen_a), inline(gen_b))
    mask = hide_one_modality(n, rate=rate, rng=np.random.default_rng(1))
    assert mask.shape == (n, 3) and mask.dtype == bool
    np.testing.assert_array_equal(mask, hide_one_modality(n, rate, np.random.default_rng(1)))
    assert (mask.sum(1) >= 2).all()  # every sample keeps two modalities
    assert abs((~mask.all(1)).mean() - rate) < 0.03  # 6000 draws: 5 standard errors
    assert all(abs((~mask[:, k]).mean() - rate / 3) < 0.02 for k in range(3))
    assert hide_one_modality(50, 0.0, np.random.default_rng(0)).all()
    with pytest.raises(AffectusError, match="expected a value in"):
        hide_one_modality(5, 1.5, np.random.default_rng(0))


@pytest.mark.parametrize("model_name", list_models())
def test_every_model_every_availability_mask_no_nan(model_name):
    """Forward and backward in training, forward in evaluation, under each of the 7 conditions."""
    ds = dataset_from_raw(generate(SynthConfig(n_train=12, n_valid=4, n_test=4, seed=3, **TINY)))
    fields = get_model_entry(model_name).config_cls.__dataclass_fields__
    small = {f"model.{k}": v for k, v in (("layers", 1), ("heads", 2)) if k in fields} | model_needs(model_name, "model.")
    cfg = resolve_config(model_name, None, None, None, small)
    torch.manual_seed(0)
    model, _ = build_model(cfg, ds, get_scheme("sims"))
    for present in CONDITIONS:
        split = with_availability(ds["train"], present)
        batch = next(iter(iterate_batches(split, 12)))
        model.train()
        out = model(batch)
        loss = out.logits.float().sum() + (0 if out.regression is None else out.regression.sum())
        loss.backward()
        assert torch.isfinite(out.logits).all(), (model_name, present)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), (model_name, present)
        model.zero_grad()
        model.eval()
        with torch.no_grad():
            assert torch.isfinite(model(batch).logits).all(), (model_name, present)


def test_evaluate_available_gives_the_same_keys(sim_file, tmp_path, capsys):
    out = tmp_path / "lf"
    assert main(["train", "--data", str(sim_file), "--model", "late_fusion", "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(sim_file), "--split", "test", "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(out), "--data", str(sim_file), "--split", "test", "--json", "--available", "l,a"]) == 0
    part = json.loads(capsys.readouterr().out)
    assert set(full) == set(part) and set(full["d_test"]) == set(part["d_test"])
    assert main(["evaluate", str(out), "--data", str(sim_file), "--available", "l,q"]) == 2
    assert "unknown modality 'q'" in capsys.readouterr().err
    # the Python API takes the same option; absent modalities leave the explanation
    import affectus

    pred = affectus.load(out).predict(load_dataset(sim_file)["test"], available="text")
    assert pred.available[:, 1:].sum() == 0 and pred.probabilities.shape == (24, 3)  # the 24 test rows of sim_file
