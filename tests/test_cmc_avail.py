"""cmc_avail: the router and PFM over the present modalities only, modality dropout in both stages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import affectus
from affectus.cli import main
from affectus.data.batches import iterate_batches
from affectus.data.missing import CONDITIONS, condition_name, random_availability, with_availability
from affectus.data.mmsa import dataset_from_raw, load_dataset, write_pickle
from affectus.data.schemes import get_scheme
from affectus.data.synthetic import SynthConfig, generate
from affectus.evaluation.evaluate import router_weights_by_condition
from affectus.models.cmc import CMC, CMCConfig
from affectus.models.layers import ConsensusRouter, pfm
from affectus.training.config import resolve_config

TINY = {"seq_lens": {"text": 4, "audio": 6, "vision": 5}, "dims": {"text": 12, "audio": 5, "vision": 7}}


@pytest.fixture(scope="module")
def ds():
    return dataset_from_raw(generate(SynthConfig(n_train=40, n_valid=12, n_test=12, seed=6, **TINY)))


def _model(mask_absent: bool) -> CMC:
    torch.manual_seed(0)
    return CMC(CMCConfig(dims=TINY["dims"], layers=1, heads=2, mask_absent=mask_absent)).eval()


def test_random_availability_keeps_one_and_is_seeded():
    assert random_availability(50, 0.0, np.random.default_rng(0)).all()
    full_drop = random_availability(200, 1.0, np.random.default_rng(0))
    assert (full_drop.sum(axis=1) == 1).all()  # everything dropped, then exactly one kept
    a = random_availability(500, 0.5, np.random.default_rng(3))
    assert np.array_equal(a, random_availability(500, 0.5, np.random.default_rng(3)))
    assert a.any(axis=1).all() and 0.3 < 1 - a.mean() < 0.5  # absent share 0.5 - 0.125 / 3 ~ 0.46


def test_batch_with_available_matches_the_split_level_mask(ds):
    mask = random_availability(len(ds["train"]), 0.5, np.random.default_rng(1))
    expected = next(iter(iterate_batches(with_availability(ds["train"], mask), 64)))
    got = next(iter(iterate_batches(ds["train"], 64))).with_available(torch.from_numpy(mask))
    for name in ("text", "audio", "vision", "text_lengths", "audio_lengths", "vision_lengths", "available"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name


@pytest.mark.parametrize("present", CONDITIONS, ids=condition_name)
def test_absent_modality_gets_router_weight_exactly_zero(ds, present):
    model = _model(True)
    batch = next(iter(iterate_batches(with_availability(ds["test"], present), 12)))
    with torch.no_grad():
        out = model(batch)
    w = out.router_weights
    absent = [k for k, m in enumerate(("text", "audio", "vision")) if m not in present]
    assert torch.isfinite(out.logits).all() and torch.isfinite(w).all()
    assert (w[:, absent] == 0).all()
    assert torch.allclose(w.sum(1), torch.ones(len(batch)))
    # the faithful model reads no mask: it spreads weight over the zero-filled modalities too
    with torch.no_grad():
        faithful = _model(False)(batch).router_weights
    assert (faithful > 0).all()


def test_masked_pfm_and_router_by_hand():
    torch.manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(2, 3, 8), dim=-1)
    avail = torch.tensor([[True, False, True], [False, True, False]])
    got = pfm(x, 0.5, avail)
    # sample 0: text and vision fuse over {text, vision}; audio keeps its own vector
    sub = x[0, [0, 2]]
    expected = torch.softmax(sub @ sub.T / 0.5, dim=-1) @ sub
    assert torch.allclose(got[0, [0, 2]], expected, atol=1e-6)
    assert torch.allclose(got[0, 1], x[0, 1]) and torch.allclose(got[1], x[1])  # one present: unchanged
    router = ConsensusRouter(8)
    w = router(got, avail)
    scores = router.linear(got[0, [0, 2]].sum(0))[[0, 2]]
    assert torch.allclose(w[0, [0, 2]], torch.softmax(scores, -1), atol=1e-6) and w[0, 1] == 0
    assert w[1].tolist() == [0.0, 1.0, 0.0]
    assert torch.equal(pfm(x, 0.5), pfm(x, 0.5, None))  # no mask: the paper's fusion


def test_faithful_cmc_ignores_the_mask_and_backward_has_no_nan(ds):
    faithful = _model(False)
    batch = next(iter(iterate_batches(with_availability(ds["train"], ("audio",)), 16)))
    plain = next(iter(iterate_batches(with_availability(ds["train"], ("audio",)), 16)))
    plain.available = None
    with torch.no_grad():
        assert torch.equal(faithful(batch).logits, faithful(plain).logits)
    model = _model(True).train()
    out = model(batch)
    out.logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_cmc_avail_variant_trains_and_reports_router_shift(ds, tmp_path, capsys):
    cfg = resolve_config("cmc", "cmc_avail")
    assert cfg.model["mask_absent"] is True and cfg.recipe.modality_dropout == 0.3
    assert resolve_config("cmc").recipe.modality_dropout == 0.0 and resolve_config("cmc").model["mask_absent"] is False
    data = tmp_path / "d.pkl"
    write_pickle(generate(SynthConfig(n_train=40, n_valid=12, n_test=12, seed=6, **TINY)), data)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--variant", "cmc_avail", "--out", str(out), "--set", "model.layers=1",
            "--set", "model.heads=2", "--set", "train.epochs=2", "--set", "train.batch_size=16", "--threads", "1",
            "--quiet"]
    assert main(args) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["variant"] == "cmc_avail" and info["model_config"]["mask_absent"] is True
    pred = affectus.load(out)
    test = load_dataset(data)["test"]
    shift = router_weights_by_condition(pred.model, test)
    assert list(shift) == ["{l}", "{a}", "{v}", "{l,a}", "{l,v}", "{a,v}", "{l,a,v}"]
    assert shift["{l}"] == {"text": 1.0, "audio": 0.0, "vision": 0.0}
    assert shift["{a,v}"]["text"] == 0.0 and shift["{a,v}"]["audio"] + shift["{a,v}"]["vision"] == pytest.approx(1)
    explained = pred.predict(test, available="a,v").explain(0)
    assert set(explained["modalities"]) == {"audio", "vision"}
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(data), "--available", "v", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == "test"


def test_modality_dropout_batches_are_seeded_and_rate_zero_changes_nothing(ds, tmp_path):
    from affectus.training.recipes.base import RecipeContext

    cfg = resolve_config("cmc", "cmc_avail", overrides={"train.batch_size": 16})
    ctx = RecipeContext(model=_model(True), train=cfg.train, recipe=cfg.recipe, train_split=ds["train"],
                        select_split=ds["valid"], scheme=get_scheme("sims"), device=torch.device("cpu"), out=tmp_path)
    first = [b.available for b in ctx.batches(ds["train"], 1, 0.3)(1)]
    again = [b.available for b in ctx.batches(ds["train"], 1, 0.3)(1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    masks = torch.cat(first)
    assert masks.any(1).all() and not masks.all()
    dropped = [b for b in ctx.batches(ds["train"], 1, 0.3)(1)]
    plain = [b for b in ctx.batches(ds["train"], 1)(1)]
    assert all(torch.equal(a.index, b.index) for a, b in zip(dropped, plain))  # same shuffling
    assert all(b.available is None for b in plain)
