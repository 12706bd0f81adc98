"""experiments/runner/plan.py: when a finished run still counts as a run of the spec."""

from __future__ import annotations

import json

import pytest

from affectus.errors import AffectusError
from affectus.runs.identity import check_same_run, config_differences, run_identity, write_identity
from affectus.training.config import ResolvedConfig, resolve_config, upgrade_config


def _same(old: dict, new: dict) -> bool:
    return not config_differences(old, new, upgrade_config)


def _cmc_plus() -> dict:
    return json.loads(json.dumps(resolve_config("cmc_plus", None, None).to_dict()))


def test_a_key_added_since_a_run_was_trained_is_filled_with_its_default():
    new = _cmc_plus()
    old = json.loads(json.dumps(new))
    del old["recipe"]["fallback_folds"]  # added with the fallback, but its default is what any run did
    assert _same(old, new)


def test_a_run_from_before_cmc_plus_fallback_is_not_a_run_of_todays_default():
    """Runs trained before `recipe.fallback` existed were the consensus alone: they match a spec asking
    for `fallback: none`, not one asking for today's default `cv` (which would mix the two in one table)."""
    new = _cmc_plus()
    assert new["recipe"]["fallback"] == "cv"
    old = json.loads(json.dumps(new))
    del old["recipe"]["fallback"]
    assert not _same(old, new)
    assert config_differences(old, new, upgrade_config) == ['recipe.fallback "none" -> "cv"']
    consensus_only = json.loads(json.dumps(new))
    consensus_only["recipe"]["fallback"] = "none"
    assert _same(old, consensus_only)
    assert ResolvedConfig.from_dict(old).recipe.fallback == "none"


def test_resume_and_the_experiment_plan_share_one_definition_of_the_same_run(tmp_path):
    """A run folder recorded before a key existed: `--resume` and the runner's plan both take it as the same
    run when the key's default is what it did, and both name the key when it is not."""
    new = _cmc_plus()
    old = json.loads(json.dumps(new))
    del old["recipe"]["fallback_folds"]
    data = {"source": "x.npz", "sha256": "ab" * 32}
    write_identity(tmp_path, run_identity(old["model_name"], old, data))
    check_same_run(tmp_path, run_identity(new["model_name"], new, data), upgrade_config)  # no error
    changed = json.loads(json.dumps(new))
    changed["train"]["lr"] = 0.5
    with pytest.raises(AffectusError, match="train.lr"):
        check_same_run(tmp_path, run_identity(new["model_name"], changed, data), upgrade_config)
    assert [d.split()[0] for d in config_differences(old, changed, upgrade_config)] == ["train.lr"]
    threads = json.loads(json.dumps(new))
    threads["train"].update(threads=7, device="cuda")  # how fast and where, not what: the same run
    assert _same(old, threads)
