"""One-line errors and their hints (errors.py): --version, "did you mean" for commands, sweep spec keys
and experiment specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from affectus.errors import AffectusError, suggest
from conftest import one_error_line


def test_version(cli) -> None:
    from affectus import __version__

    rc, out, _ = cli("--version")
    assert rc == 0 and out.strip() == f"affectus {__version__}"


def test_suggest() -> None:
    assert suggest("mosii", ["mosi", "mosei", "sims"]) == " (did you mean 'mosi'?)"
    assert suggest("CMC", ["cmc", "tfn"]) == " (did you mean 'cmc'?)"
    assert suggest("zzz", ["cmc", "tfn"]) == ""


@pytest.mark.parametrize("args, needle", [
    (["params", "--preset", "mosii"], "unknown preset 'mosii' (did you mean 'mosi'?)"),
    (["params", "--preset", "mosi", "--model", "late_fusoin"], "(did you mean 'late_fusion'?)"),
])
def test_did_you_mean_in_the_cli(cli, args, needle) -> None:
    rc, _, err = cli(*args)
    one_error_line(rc, err, needle)


def test_did_you_mean_for_sweep_spec_keys(tmp_path: Path) -> None:
    from affectus.experiments.sweep import parse_spec

    with pytest.raises(AffectusError, match=r"unknown key 'sapce'.*\(did you mean 'space'\?\)"):
        parse_spec({"name": "x", "sapce": {}})


@pytest.mark.parametrize("spec, needle", [
    ({"runs": [{"name": "a", "variant": "wo_pfn"}]}, ("unknown variant 'wo_pfn'", "(did you mean 'wo_pfm'?)")),
    ({"runs": [{"name": "a", "modle": "cmc"}]}, ("unknown key 'modle'", "(did you mean 'model'?)")),
    ({"preset": "sim", "runs": [{"name": "a"}]}, ("unknown preset 'sim'", "(did you mean 'sims'?)")),
    ({"runs": [{"name": "a", "model": "tfm"}]}, ("unknown model 'tfm'", "(did you mean 'tfn'?)")),
])
def test_did_you_mean_in_experiment_specs(spec, needle) -> None:
    from affectus.experiments.spec import load_spec

    with pytest.raises(AffectusError) as info:
        load_spec({"name": "x", **spec})
    assert all(part in str(info.value) for part in needle)
