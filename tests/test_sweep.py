"""`affectus sweep`: spec validation, validation-only objective, workers sharing one study (SQLite, PostgreSQL).

Runs are tiny (1 layer, 2 epochs, a few dozen samples). The PostgreSQL test reads the server from
AFFECTUS_TEST_POSTGRES_URL (`.ci/postgres.sh` starts one); without it the test skips locally and
fails under CI=true, so CI cannot skip it silently.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from affectus.cli import main, sweep_cmd  # noqa: F401  (registers `sweep` until cli/__init__ imports it)
from affectus.data.mmsa import write_pickle
from affectus.data.synthetic import generate
from affectus.experiments.sweep import Worker, load_spec, parse_spec
from conftest import SRC, one_error_line, tiny_sim_config

FAST = {"train.epochs": 2, "train.patience": 1, "train.batch_size": 32, "train.lr": 0.003}  # lr: scores that differ
GRID = {"model.layers": [1], "model.heads": [1, 2], "model.output_dropout": [0.0, 0.5]}  # 4 points
POINTS = {(1, h, d) for h in (1, 2) for d in (0.0, 0.5)}
RUNNER = "import sys; from affectus.cli import main, sweep_cmd; sys.exit(main(sys.argv[1:]))"


def write_spec(folder: Path, space: dict | None = None, **extra) -> Path:
    spec = {"name": "tiny", "overrides": dict(FAST), "objective": {"metric": "acc2", "direction": "maximize"},
            "space": space or GRID, **extra}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def sweep(spec: Path, out: Path, data: Path, *args: str) -> int:
    return main(["sweep", str(spec), "--out", str(out), "--data", str(data), "--threads", "1", "--quiet", *args])


def test_shipped_grid_is_the_papers() -> None:
    spec = load_spec("cmc_grid")
    assert spec.space == {"model.layers": [1, 2, 3, 4, 5], "model.heads": [1, 2, 4, 8],
                          "model.output_dropout": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]}
    assert spec.sampler == "grid" and spec.budget() == 120 and spec.direction == "maximize"
    from affectus.data.presets import load_preset
    from affectus.experiments.sweep import check_config_keys

    check_config_keys(spec, load_preset("sims"))  # every value is a valid config value


@pytest.mark.parametrize("patch, needle", [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"space": {"model.layers": []}}, "space.model.layers: empty list"),
    ({"space": {"model.layers": {"low": 1}}}, "missing key 'space.model.layers.high'"),
    ({"space": {"model.layers": {"low": 3, "high": 1}}}, "expected low < high"),
    ({"space": {"model.layers": 3}}, "space.model.layers = 3: expected a list or a mapping"),
    ({"trails": 3}, ("unknown key 'trails' in the sweep spec: expected one of name, model, variant, preset, data, "
                    "overrides, objective, sampler, space, trials, seed (did you mean 'trials'?)")),
    ({"space": {"model.attn_dropout": {"low": 0.0, "high": 0.2}}, "sampler": "grid"}, "must be a list"),
    ({"space": {"model.attn_dropout": {"low": 0.0, "high": 0.2}}}, "trials: needed"),
    ({"objective": {"metric": "acc2", "direction": "up"}}, "objective.direction"),
    ({"objective": {"metric": "acc2", "goal": 1}}, "unknown key 'goal'"),
    ({"trials": "many"}, "trials = 'many': expected an integer"),
    ({"trials": 0}, "trials = 0: expected a positive integer"),
    ({"space": {"model.nonsense": [1, 2]}}, "model.nonsense"),
    ({"space": {"model.layers": ["two"]}}, "model.layers"),
])
def test_bad_specs_fail_in_one_line(sim_file: Path, tmp_path: Path, capsys, patch: dict, needle: str) -> None:
    spec = yaml.safe_load(write_spec(tmp_path).read_text())
    spec.update(patch)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert sweep(path, tmp_path / "out", sim_file) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    if "sweep space" not in err[0]:  # a config value: named by its space key instead
        assert re.search(rf"{re.escape(str(path))}:\d+: ", err[0]), err  # the line of the problem
    assert not (tmp_path / "out" / "trials").exists()  # nothing trained


@pytest.mark.slow
def test_objective_reads_validation_only(tmp_path: Path) -> None:
    """Poison the test labels: the trials' validation values and the chosen trial must not move."""
    raw = generate(tiny_sim_config())
    clean, poisoned = tmp_path / "clean.pkl", tmp_path / "poisoned.pkl"
    write_pickle(raw, clean)
    rng = np.random.default_rng(0)
    raw["test"]["regression_labels"] = rng.uniform(-1, 1, len(raw["test"]["regression_labels"])).astype(np.float32)
    write_pickle(raw, poisoned)
    spec = write_spec(tmp_path, {"model.layers": [1], "model.heads": [2], "model.output_dropout": [0.0, 0.5]})
    reports = {}
    for name, data in (("a", clean), ("b", poisoned)):
        assert sweep(spec, tmp_path / name, data) == 0
        reports[name] = json.loads((tmp_path / name / "sweep.json").read_text())
    a, b = reports["a"], reports["b"]
    assert [t["validation"] for t in a["trials"]] == [t["validation"] for t in b["trials"]]
    assert a["best"]["trial"] == b["best"]["trial"] and a["best"]["params"] == b["best"]["params"]
    assert a["best"]["test"]["metrics"] != b["best"]["test"]["metrics"]  # the report did read the test scores
    assert a["objective"]["scored_on"] == "select_metrics"


def _two_workers(sim_file: Path, tmp_path: Path, storage: str | None) -> None:
    """Two `affectus sweep` processes at once on one study: every grid point exactly once, all COMPLETE."""
    spec, out = write_spec(tmp_path), tmp_path / "out"
    study = f"two-{uuid.uuid4().hex[:8]}"
    args = [sys.executable, "-c", RUNNER, "sweep", str(spec), "--out", str(out), "--data", str(sim_file),
            "--threads", "1", "--quiet", "--study", study] + (["--storage", storage] if storage else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    import optuna

    from affectus.experiments.sweep import normalise_storage_url

    url = normalise_storage_url(storage or f"sqlite:///{out.resolve() / 'study.db'}")
    trials = optuna.load_study(study_name=study, storage=url).get_trials()
    assert len(trials) == len(POINTS)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    seen = [(t.params["model.layers"], t.params["model.heads"], t.params["model.output_dropout"]) for t in trials]
    assert sorted(seen) == sorted(POINTS)  # each point once: none lost, none twice
    assert sorted(int(p.name) for p in (out / "trials").iterdir()) == [0, 1, 2, 3]
    # a third worker finds the grid exhausted and trains nothing
    extra = ["--study", study] + (["--storage", storage] if storage else [])
    assert sweep(spec, out, sim_file, *extra) == 0
    assert len(optuna.load_study(study_name=study, storage=url).get_trials()) == len(POINTS)


@pytest.mark.slow
def test_two_workers_share_a_sqlite_study(sim_file: Path, tmp_path: Path) -> None:
    _two_workers(sim_file, tmp_path, None)


@pytest.mark.slow
def test_two_workers_share_a_postgres_study(sim_file: Path, tmp_path: Path) -> None:
    url = os.environ.get("AFFECTUS_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("AFFECTUS_TEST_POSTGRES_URL is unset under CI: run `eval \"$(bash .ci/postgres.sh)\"` first")
        pytest.skip("AFFECTUS_TEST_POSTGRES_URL unset (start a server with .ci/postgres.sh)")
    _two_workers(sim_file, tmp_path, url)


@pytest.mark.slow
def test_killed_workers_trial_fails_and_is_retried_only_on_request(sim_file: Path, tmp_path: Path, capsys) -> None:
    spec_path, out = write_spec(tmp_path), tmp_path / "out"
    spec = load_spec(spec_path)
    spec.overrides["train.threads"] = 1
    url = f"sqlite:///{out.resolve() / 'study.db'}"
    out.mkdir()
    # a worker claims trial 0, beats once, and dies (we simply never beat again)
    dead = Worker(spec, out, url, "tiny", heartbeat=1, log=None)
    claimed = dead.claim()
    assert claimed.number == 0
    time.sleep(3.5)  # grace period: 3 heartbeats
    assert sweep(spec_path, out, sim_file, "--heartbeat", "1") == 0
    report = json.loads((out / "sweep.json").read_text())
    states = {t["number"]: t["state"] for t in report["trials"]}
    assert states == {0: "FAIL", 1: "COMPLETE", 2: "COMPLETE", 3: "COMPLETE"}  # not retried silently
    assert "no heartbeat" in report["trials"][0]["error"]
    capsys.readouterr()
    assert sweep(spec_path, out, sim_file, "--retry-failed") == 0
    report = json.loads((out / "sweep.json").read_text())
    assert len(report["trials"]) == 5 and report["trials"][4]["state"] == "COMPLETE"
    assert report["trials"][4]["params"] == report["trials"][0]["params"]
    # a different spec cannot join the study
    (tmp_path / "other").mkdir()
    other = write_spec(tmp_path / "other", seed=7)
    assert sweep(other, out, sim_file) == 2
    assert "another spec (seed differ)" in capsys.readouterr().err
    # --report rebuilds sweep.json from the study alone
    (out / "sweep.json").unlink()
    assert main(["sweep", str(spec_path), "--out", str(out), "--report"]) == 0
    assert json.loads((out / "sweep.json").read_text())["counts"] == {"FAIL": 1, "COMPLETE": 4}


@pytest.mark.slow
def test_tpe_over_a_range_spends_its_budget(sim_file: Path, tmp_path: Path) -> None:
    space = {"model.layers": [1], "model.output_dropout": {"low": 0.0, "high": 0.5}}
    spec = write_spec(tmp_path, space, trials=2)
    assert parse_spec(yaml.safe_load(spec.read_text())).sampler == "tpe"
    assert sweep(spec, tmp_path / "out", sim_file) == 0
    report = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert report["counts"] == {"COMPLETE": 2} and report["sampler"] == "tpe"
    assert all(0.0 <= t["params"]["model.output_dropout"] <= 0.5 for t in report["trials"])


# --------------------------------------------------------------------------------------------------- Optuna

def test_optuna_is_a_core_dependency() -> None:
    import tomllib

    project = tomllib.loads((Path(SRC).parent / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("optuna") for d in project["dependencies"])


def test_sweep_without_optuna_is_one_line(tmp_path: Path, cli, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
    rc, _, err = cli("sweep", "cmc_grid", "--out", tmp_path / "s")
    one_error_line(rc, err, "needs Optuna", "pip install optuna")
