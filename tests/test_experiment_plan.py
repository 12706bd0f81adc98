"""experiments/runner/plan.py: when a finished run still counts as a run of the spec."""

from __future__ import annotations

import json

from affectus.experiments.runner.plan import _comparable
from affectus.training.config import ResolvedConfig, resolve_config


def _cmc_plus() -> dict:
    return json.loads(json.dumps(resolve_config("cmc_plus", None, None).to_dict()))


def test_a_key_added_since_a_run_was_trained_is_filled_with_its_default():
    new = _cmc_plus()
    old = json.loads(json.dumps(new))
    del old["recipe"]["fallback_folds"]  # added with the fallback, but its default is what any run did
    assert _comparable(old) == _comparable(new)


def test_a_run_from_before_cmc_plus_fallback_is_not_a_run_of_todays_default():
    """Runs trained before `recipe.fallback` existed were the consensus alone: they match a spec asking
    for `fallback: none`, not one asking for today's default `cv` (which would mix the two in one table)."""
    new = _cmc_plus()
    assert new["recipe"]["fallback"] == "cv"
    old = json.loads(json.dumps(new))
    del old["recipe"]["fallback"]
    assert _comparable(old) != _comparable(new)
    consensus_only = json.loads(json.dumps(new))
    consensus_only["recipe"]["fallback"] = "none"
    assert _comparable(old) == _comparable(consensus_only)
    assert ResolvedConfig.from_dict(old).recipe.fallback == "none"
