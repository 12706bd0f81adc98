"""Runs that cannot be mixed, degenerate runs flagged, the Python API's Prediction and the README
example, `affectus params` for a run or custom dims (issue 8, items 5, 13, 16, 19)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from affectus.cli import main
from affectus.data.mmsa import sha256_file, write_pickle
from conftest import build_raw

# late fusion with 8 hidden units: the quickest model to train; 2 epochs are plenty to test plumbing
FAST = ["--model", "late_fusion", "--set", "model.hidden=8", "--set", "train.epochs=2", "--set", "train.patience=2",
        "--set", "train.batch_size=8", "--threads", "1", "--quiet"]
SIZES = {"train": 16, "valid": 8, "test": 8}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "tiny.pkl"
    write_pickle(build_raw(sizes=SIZES, unimodal=True, label_range=1.0, seed=1), path)
    return path


@pytest.fixture(scope="module")
def finished(data_file: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--data", str(data_file), "--out", str(out), *FAST]) == 0
    return out


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


def _interrupted(data_file: Path, out: Path, monkeypatch) -> None:
    """Train until the second epoch starts, then stop as Ctrl-C would: OUT keeps state.pt only."""
    from affectus.training import tasks

    original = tasks.SupervisedTask.start_epoch

    def stop(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(tasks.SupervisedTask, "start_epoch", stop)
    assert main(["train", "--data", str(data_file), "--out", str(out), *FAST]) == 130
    monkeypatch.setattr(tasks.SupervisedTask, "start_epoch", original)
    assert (out / "state.pt").exists() and not (out / "run.json").exists()


# ------------------------------------------------------------------------------ item 5: --resume


def test_run_records_the_data_checksum(data_file: Path, finished: Path) -> None:
    info = json.loads((finished / "run.json").read_text())
    assert info["data"] == {"source": str(data_file), "sha256": sha256_file(data_file)}
    identity = json.loads((finished / "identity.json").read_text())
    assert identity["model_name"] == "late_fusion" and identity["data"]["sha256"] == sha256_file(data_file)
    assert "threads" not in identity["config"]["train"] and "device" not in identity["config"]["train"]


def test_resume_refuses_another_config_and_keeps_the_state(data_file: Path, tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    out = tmp_path / "cut"
    _interrupted(data_file, out, monkeypatch)
    config_before = (out / "config.json").read_bytes()
    capsys.readouterr()
    rc = main(["train", "--data", str(data_file), "--out", str(out), "--resume", *FAST, "--set", "train.lr=0.005",
               "--seed", "7"])
    line = _error_line(capsys)
    assert rc == 2 and "train.lr 0.001 -> 0.005" in line and "train.seed 1111 -> 7" in line
    # a changed architecture: refused in one line, not a state_dict traceback
    rc = main(["train", "--data", str(data_file), "--out", str(out), "--resume", *FAST, "--set", "model.hidden=16"])
    assert rc == 2 and "model.hidden 8 -> 16" in _error_line(capsys)
    assert (out / "config.json").read_bytes() == config_before and (out / "state.pt").exists()
    # threads (and device) are not part of a run's identity: this resume goes through
    assert main(["train", "--data", str(data_file), "--out", str(out), "--resume", *FAST, "--threads", "2"]) == 0
    assert (out / "run.json").exists()


def test_resume_refuses_data_edited_in_place(tmp_path: Path, monkeypatch, capsys) -> None:
    data = tmp_path / "edited.pkl"
    write_pickle(build_raw(sizes=SIZES, unimodal=True, label_range=1.0, seed=1), data)
    out = tmp_path / "cut"
    _interrupted(data, out, monkeypatch)
    write_pickle(build_raw(sizes=SIZES, unimodal=True, label_range=1.0, seed=2), data)  # same path, new content
    capsys.readouterr()
    rc = main(["train", "--data", str(data), "--out", str(out), "--resume", *FAST])
    line = _error_line(capsys)
    assert rc == 2 and re.search(r"data \S+ \(sha256 [0-9a-f]{12}\) -> \S+ \(sha256 [0-9a-f]{12}\)", line)


def test_resume_of_a_finished_run_refuses_another_model(data_file: Path, finished: Path, capsys) -> None:
    capsys.readouterr()
    rc = main(["train", "--data", str(data_file), "--out", str(finished), "--resume", "--model", "tfn", "--quiet"])
    line = _error_line(capsys)
    assert rc == 2 and "model late_fusion -> tfn" in line
    # the same run resumed: nothing to train, its metrics are shown
    assert main(["train", "--data", str(data_file), "--out", str(finished), "--resume", *FAST]) == 0


def test_resume_checks_runs_written_before_identity_files(data_file: Path, finished: Path, tmp_path: Path,
                                                          capsys) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(finished, old)
    (old / "identity.json").unlink()  # as a run written before identity files: run.json has the config
    capsys.readouterr()
    rc = main(["train", "--data", str(data_file), "--out", str(old), "--resume", *FAST, "--set", "train.lr=0.01"])
    assert rc == 2 and "train.lr" in _error_line(capsys)


# ------------------------------------------------------------------------------ item 13: degenerate runs


def test_single_class_names_the_class_or_the_acc2_side() -> None:
    from affectus.evaluation.evaluate import single_class

    varied = np.array([[2.0, 0, 0], [0, 0, 2.0], [0, 2.0, 0]])
    assert single_class(varied, "sims") is None
    assert single_class(np.array([[0, 2.0, 0], [0, 3.0, 1.0]]), "sims") == "neutral"
    # argmax varies (negative, neutral) but the Acc2 rule says non-positive for both
    assert single_class(np.array([[2.0, 0, 0], [0, 2.0, -1.0]]), "sims") == "non-positive under the Acc2 rule"
    assert single_class(np.array([[2.0, 0, 0], [0, 2.0, -1.0]]), "mosi") == "negative under the Acc2 rule"
    assert single_class(np.array([[2.0, 0], [0, 2.0]]), {"name": "categorical", "classes": ["a", "b"]}) is None


def test_degenerate_run_warns_and_is_recorded(tmp_path: Path) -> None:
    raw = build_raw(sizes=SIZES, unimodal=True, label_range=1.0, seed=1)
    for split in ("valid", "test"):  # identical inputs: any model gives every sample the same class
        for m in ("text", "audio", "vision"):
            raw[split][m][:] = 0.0
    data = tmp_path / "flat.pkl"
    write_pickle(raw, data)
    seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = seen.append
    logging.getLogger("affectus.training").addHandler(handler)
    try:
        assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *FAST]) == 0
    finally:
        logging.getLogger("affectus.training").removeHandler(handler)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert set(info["degenerate"]) == {"test", "valid"}
    assert info["degenerate"]["test"] in ("negative", "neutral", "positive")
    assert len(info["warnings"]) == 2 and all("degenerate run" in w for w in info["warnings"])
    assert [r.getMessage() for r in seen if r.levelno == logging.WARNING] == info["warnings"]


def test_results_md_marks_degenerate_rows(tmp_path: Path) -> None:
    from affectus.experiments.runner import aggregate

    runs = [{"id": f"{row}-s{seed}", "dir": f"runs/{row}-s{seed}", "group": row, "row": row, "model": "late_fusion",
             "variant": "default", "grid": {}, "seed": seed} for row in ("good", "flat") for seed in (1, 2)]
    (tmp_path / "experiment.json").write_text(json.dumps(
        {"name": "t", "data": "x.pkl", "preset": None, "scheme": {"name": "sims"}, "eval_split": "test",
         "runs": runs, "grid": {}, "report": {}}))
    for i, run in enumerate(runs):
        (tmp_path / run["dir"]).mkdir(parents=True)
        degenerate = {"test": "neutral"} if run["id"] == "flat-s1" else {}
        (tmp_path / run["dir"] / "run.json").write_text(json.dumps(
            {"model_name": "late_fusion", "model_config": {}, "family": "sims", "degenerate": degenerate,
             "metrics": {"d_test": {"acc2": 50.0 + i}}}))
    rows = {g["row"]: g for g in aggregate(tmp_path)}
    assert rows["flat"]["n_degenerate"] == 1 and rows["good"]["n_degenerate"] == 0
    md = (tmp_path / "results.md").read_text()
    flat_line = next(line for line in md.splitlines() if line.startswith("| flat"))
    good_line = next(line for line in md.splitlines() if line.startswith("| good"))
    assert "⚠" in flat_line and "⚠" not in good_line
    assert "1 of 2 seeds" in md
