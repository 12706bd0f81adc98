"""Every fit is recorded (run.json `fitted_on`), and a score on a split that anything was fitted on is
marked in-sample wherever it is shown: train / evaluate (console and --json), predict --json, metrics.json,
results.md / results.csv and the HTML report. Early stopping on the selection split is named, not marked.

The CMC+ run is the mosi-utterance preset's (consensus fitted on valid, valid also reported), on its
simulated stand-in with the file's text feature (no transcript encoder) and short training."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from affectus.data.mmsa import write_pickle
from affectus.data.synthetic import SynthConfig, generate
from affectus.runs.checkpoints import in_sample_parts, same_data, split_fits

DATA = "synth:mosi-utterance?scale=0.2"
OTHER = "synth:mosi-utterance?scale=0.25"  # same split names, other samples
FAST = ["--threads", "1", "--quiet", "--set", "train.text_inputs=file", "--set", "recipe.expert_epochs=15",
        "--set", "recipe.expert_patience=3", "--set", "recipe.router_steps=40"]
FAST_OVERRIDES = {"train.text_inputs": "file", "recipe.expert_epochs": 15, "recipe.expert_patience": 3,
                  "recipe.router_steps": 40}


@pytest.fixture(scope="module")
def cmc_plus_runs(tmp_path_factory) -> dict[str, Path]:
    """CMC+ on the mosi-utterance preset: its consensus fitted on valid (`select`), and out of fold."""
    from affectus.cli import main

    root = tmp_path_factory.mktemp("insample")
    runs = {}
    for fit in ("select", "oof"):
        runs[fit] = root / fit
        assert main(["train", "--data", DATA, "--preset", "mosi-utterance", "--model", "cmc_plus", "--out",
                     str(runs[fit]), *FAST, "--set", f"recipe.consensus_fit={fit}", "--set", "recipe.folds=2"]) == 0
    return runs


def _info(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def test_run_json_records_the_split_every_part_learned_from(cmc_plus_runs):
    assert _info(cmc_plus_runs["select"])["fitted_on"] == {
        "weights": "train", "early_stopping": "valid", "scaler": "train", "temperatures": "valid",
        "consensus": "valid", "fallback": "valid"}
    assert _info(cmc_plus_runs["oof"])["fitted_on"]["consensus"] == "train"
    assert _info(cmc_plus_runs["select"])["selection_parts"] == ["early_stopping"]


def test_evaluate_on_the_split_the_consensus_was_fitted_on_says_in_sample(cmc_plus_runs, cli):
    run = cmc_plus_runs["select"]
    rc, out, _ = cli("evaluate", run, "--split", "valid")
    assert rc == 0 and "in-sample" in out and "†" in out
    assert "consensus" in out and "temperatures" in out and "early_stopping" in out
    rc, out, _ = cli("evaluate", run, "--split", "valid", "--json")
    got = json.loads(out)
    assert rc == 0 and sorted(got["in_sample"]["parts"]) == ["consensus", "fallback", "temperatures"]
    assert got["selection"] == {"parts": ["early_stopping"]}
    # train's own metrics file and console say it too (valid is the preset's reported split)
    assert sorted(json.loads((run / "metrics.json").read_text())["in_sample"]["parts"]) == ["consensus", "fallback",
                                                                                              "temperatures"]


def test_a_split_of_other_data_or_a_held_out_fit_is_not_marked(cmc_plus_runs, cli):
    # the same split name in another file is not the split the consensus saw
    rc, out, _ = cli("evaluate", cmc_plus_runs["select"], "--split", "valid", "--data", OTHER, "--json")
    got = json.loads(out)
    assert rc == 0 and "in_sample" not in got and "selection" not in got
    rc, out, _ = cli("evaluate", cmc_plus_runs["select"], "--split", "valid", "--data", OTHER)
    assert rc == 0 and "in-sample" not in out
    # consensus fitted out of fold on train: valid only chose the experts' epochs (named, not marked)
    rc, out, _ = cli("evaluate", cmc_plus_runs["oof"], "--split", "valid", "--json")
    got = json.loads(out)
    assert rc == 0 and "in_sample" not in got and got["selection"] == {"parts": ["early_stopping"]}
    rc, out, _ = cli("evaluate", cmc_plus_runs["oof"], "--split", "valid")
    assert "in-sample" not in out and "early_stopping" in out
    # the training split is in-sample for every model's weights
    rc, out, _ = cli("evaluate", cmc_plus_runs["oof"], "--split", "train", "--json")
    assert {"weights", "scaler", "consensus", "fallback", "temperatures"} == set(json.loads(out)["in_sample"]["parts"])


def test_predict_json_marks_every_row_of_an_in_sample_split(cmc_plus_runs, cli):
    rc, out, _ = cli("predict", cmc_plus_runs["select"], DATA, "--split", "valid", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert rc == 0 and rows and all(sorted(r["in_sample"]["parts"]) == ["consensus", "fallback", "temperatures"] for r in rows)
    rc, out, _ = cli("predict", cmc_plus_runs["select"], OTHER, "--split", "valid", "--json")
    assert rc == 0 and all("in_sample" not in json.loads(line) for line in out.splitlines())
    rc, out, _ = cli("predict", cmc_plus_runs["select"], DATA, "--split", "valid", "--limit", "2")
    assert rc == 0 and "in-sample" in out


def test_a_run_from_before_the_record_is_derived_or_unknown(cmc_plus_runs, tmp_path, cli):
    old = tmp_path / "old"
    shutil.copytree(cmc_plus_runs["select"], old)
    info = _info(old)
    for key in ("fitted_on", "selection_parts"):
        del info[key]
    (old / "run.json").write_text(json.dumps(info))
    # derived from the consensus record the CMC+ recipe always wrote
    assert sorted(in_sample_parts(info, "valid")) == ["consensus", "temperatures"]
    rc, out, _ = cli("evaluate", old, "--split", "valid", "--json")
    assert rc == 0 and sorted(json.loads(out)["in_sample"]["parts"]) == ["consensus", "temperatures"]
    # a run.json recording neither its plan nor its selection split: unknown, said, no crash
    for key in ("plan", "select_split"):
        del info[key]
    (old / "run.json").write_text(json.dumps(info))
    assert in_sample_parts(info, "valid") is None
    rc, out, _ = cli("evaluate", old, "--split", "valid", "--json")
    assert rc == 0 and json.loads(out)["in_sample"] == {"parts": None}
    rc, out, _ = cli("evaluate", old, "--split", "valid")
    assert rc == 0 and "in-sample unknown" in out


def test_a_plain_model_names_early_stopping_on_valid_but_is_not_marked(tmp_path, cli):
    data = tmp_path / "sim.pkl"
    write_pickle(generate(SynthConfig(n_train=48, n_valid=16, n_test=16, seq_lens={"text": 4, "audio": 5, "vision": 4},
                                      dims={"text": 8, "audio": 5, "vision": 6}, seed=2)), data)
    run = tmp_path / "lf"
    rc, out, _ = cli("train", "--data", data, "--model", "late_fusion", "--out", run, "--set", "train.epochs=2",
                     "--threads", "1", "--quiet")
    assert rc == 0 and "in-sample" not in out  # scored on test
    assert _info(run)["fitted_on"] == {"weights": "train", "early_stopping": "valid"}
    rc, out, _ = cli("evaluate", run, "--split", "valid", "--json")
    got = json.loads(out)
    assert "in_sample" not in got and got["selection"] == {"parts": ["early_stopping"]}
    rc, out, _ = cli("evaluate", run, "--split", "valid")
    assert "early_stopping" in out and "in-sample" not in out and "†" not in out
    rc, out, _ = cli("evaluate", run, "--json")
    assert set(json.loads(out)) & {"in_sample", "selection"} == set()
    # a copy of the training file elsewhere is the same data: the same split names what it saw
    copy = tmp_path / "copy.pkl"
    shutil.copy(data, copy)
    rc, out, _ = cli("evaluate", run, "--split", "train", "--data", copy, "--json")
    assert json.loads(out)["in_sample"] == {"parts": ["weights"]}


def test_same_data_compares_files_by_content_and_synth_by_name():
    info = {"data": {"source": "/a/x.pkl", "sha256": "abc"}}
    assert same_data(info, {"source": "/b/copy.pkl", "sha256": "abc"})
    assert not same_data(info, {"source": "/a/x.pkl", "sha256": "def"})  # edited in place
    assert not same_data(info, {"source": "synth:mosi", "sha256": None})
    synth = {"data": {"source": "synth:mosi", "sha256": None}}
    assert same_data(synth, {"source": "synth:mosi", "sha256": None}) and same_data(synth, None)
    assert not same_data(synth, {"source": "synth:mosi?scale=0.5", "sha256": None})
    plain = {"fitted_on": {"weights": "train", "early_stopping": "valid"}, **synth}
    assert split_fits(plain, "valid") == {"in_sample": [], "selection": ["early_stopping"]}
    assert split_fits(plain, "valid", {"source": "synth:other", "sha256": None}) == {"in_sample": [], "selection": []}


def test_results_md_csv_and_report_mark_an_in_sample_row(tmp_path):
    from affectus.experiments.runner import run_experiment
    from affectus.report import build_report

    spec = {"name": "insample", "seeds": 1, "preset": "mosi-utterance",
            "runs": [{"name": "CMC+", "model": "cmc_plus", "overrides": FAST_OVERRIDES},
                     {"name": "LF", "model": "late_fusion", "overrides": {"train.epochs": 2, "train.text_inputs": "file"}}],
            "report": {"columns": "conditions", "conditions": ["l", "lav"]}}
    out = tmp_path / "exp"
    run_experiment(spec, out, data=DATA, threads=1, progress=False)
    md = (out / "results.md").read_text(encoding="utf-8")
    assert re.search(r"^\| CMC\+ † \|", md, re.MULTILINE) and re.search(r"^\| LF \|", md, re.MULTILINE)
    footnote = next(line for line in md.splitlines() if line.startswith("† in-sample"))
    assert "CMC+: " in footnote and "consensus" in footnote and "temperatures" in footnote and "LF" not in footnote
    assert "early_stopping chose on it" in md  # named, for every row: valid also selects
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    by_row = {r["row"]: r["in_sample"] for r in rows if r["kind"] == "run"}
    assert set(by_row["CMC+"].split("+")) == {"consensus", "fallback", "temperatures"} and by_row["LF"] == ""
    page = build_report(out, tensorboard=False).read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", " ", page)
    assert "CMC+ †" in text and "† in-sample: CMC+" in text and "LF †" not in text
    assert "selection on the scored split" in text
    # the availability-condition table is scored on the same split: its CMC+ row is marked as well
    conditions = text.split("F1 per availability condition")[1]
    assert "CMC+ †" in conditions and "LF †" not in conditions


def test_sweep_says_when_its_validation_and_reported_scores_are_in_sample(tmp_path, capsys):
    """A CMC+ sweep under mosi-utterance: the objective (valid) is in-sample for the consensus, and the
    'reported' split is the one that chose the trial: the summary and sweep.json say both."""
    import yaml

    from affectus.cli import main, sweep_cmd  # noqa: F401  (registers `sweep`)

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "cp", "model": "cmc_plus", "preset": "mosi-utterance",
                                    "overrides": FAST_OVERRIDES, "space": {"recipe.router_lr": [0.02]}}))
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(tmp_path / "sw"), "--data", DATA, "--threads", "1",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "† in-sample" in out and "the split that chose the trial: not held out" in out
    assert "not used to choose" not in out
    best = json.loads((tmp_path / "sw" / "sweep.json").read_text())["best"]
    assert set(best["validation_in_sample"]) == {"consensus", "fallback", "temperatures"}
    assert best["test"]["chose_trial"] and set(best["test"]["in_sample"]["parts"]) == {"consensus", "fallback", "temperatures"}
