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
    assert single_class(np.array([[0.3], [-0.2]]), "sims") is None  # a score output has no classes
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


# ------------------------------------------------------------------------------ item 16: Prediction, README


def test_prediction_gives_the_acc2_label(data_file: Path, finished: Path) -> None:
    import affectus
    from affectus.data.mmsa import load_dataset

    test = load_dataset(data_file)["test"]
    pred = affectus.load(finished).predict(test)
    assert pred.binary_names == ("non-positive", "positive")  # CH-SIMS family (scores in [-1, 1])
    # the rule metrics.py scores Acc2 with: positive iff the positive logit beats the negative one
    np.testing.assert_array_equal(pred.binary, pred.probabilities[:, 2] > pred.probabilities[:, 0])
    assert pred.binary_labels() == ["positive" if b else "non-positive" for b in pred.binary]
    assert pred.explain(0)["acc2"] == pred.binary_labels()[0]
    assert pred.scores is None and "score" not in pred.explain(0)  # late fusion regresses no score


def test_prediction_scores_and_schemes_without_a_binary_rule() -> None:
    from affectus.data.schemes import get_scheme
    from affectus.errors import AffectusError
    from affectus.inference.predictor import _to_prediction

    logits = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 0.5]], dtype=np.float32)
    pred = _to_prediction({"logits": logits, "regression": np.array([0.7, -1.2], np.float32)}, Path("run"), get_scheme("mosi"))
    assert pred.binary_labels() == ["non-negative", "negative"]
    np.testing.assert_allclose(pred.scores, [0.7, -1.2])
    assert pred.explain(1)["score"] == pytest.approx(-1.2)
    categorical = _to_prediction({"logits": logits}, Path("run"), get_scheme({"name": "categorical", "classes": ["a", "b", "c"]}))
    assert categorical.binary is None and categorical.labels() == ["c", "a"]
    with pytest.raises(AffectusError, match="no binary"):
        categorical.binary_labels()


def test_self_mm_prediction_carries_its_regression_score(data_file: Path, tmp_path: Path) -> None:
    import affectus
    from affectus.data.mmsa import load_dataset

    out = tmp_path / "selfmm"
    assert main(["train", "--data", str(data_file), "--out", str(out), "--model", "self_mm", "--set",
                 "model.text_encoder=lstm", "--set", "model.text_hidden=8", "--set", "train.epochs=1",
                 "--set", "train.batch_size=8", "--threads", "1", "--quiet"]) == 0
    test = load_dataset(data_file)["test"]
    pred = affectus.load(out).predict(test)
    assert pred.scores is not None and pred.scores.shape == (len(test),) and np.isfinite(pred.scores).all()


def _readme_python() -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert len(blocks) == 1, "README.md: expected one Python example"
    return blocks[0]


@pytest.mark.slow
def test_readme_python_example_runs_as_written(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_python(), "README.md", "exec"), namespace)  # noqa: S102 - our own README
    pred = namespace["pred"]
    assert len(pred.labels()) == 4 and set(pred.binary_labels()) <= {"negative", "non-negative"}
    assert (tmp_path / "runs" / "cmc-sim" / "run.json").exists()
    printed = capsys.readouterr().out
    assert "verdict" in printed and "weight" in printed  # explain(0) was printed


# ------------------------------------------------------------------------------ item 19: params


def test_params_of_a_run_directory(finished: Path, capsys) -> None:
    import affectus
    from affectus.models.registry import non_bert_parameter_count

    capsys.readouterr()
    assert main(["params", str(finished)]) == 0
    assert int(capsys.readouterr().out) == non_bert_parameter_count(affectus.load(finished).model)
    assert main(["params", str(finished), "--model", "cmc"]) == 2
    assert "drop --model" in _error_line(capsys)


def test_params_for_custom_dims(capsys) -> None:
    from affectus.models.cmc import CMC, CMCConfig

    capsys.readouterr()
    assert main(["params", "--preset", "sims", "--dims", "768,25,177"]) == 0  # sims settings, other dims
    expected = CMC(CMCConfig(dims={"text": 768, "audio": 25, "vision": 177}, layers=5, heads=4))
    assert int(capsys.readouterr().out) == expected.non_bert_parameter_count()
    assert main(["params", "--dims", "768,33,709"]) == 0  # no preset: the model's own defaults
    assert int(capsys.readouterr().out) > 0
    assert main(["params", "--dims", "768,33"]) == 2
    assert "T,A,V" in _error_line(capsys)
    assert main(["params"]) == 2
    assert "--dims" in _error_line(capsys)


def test_predicting_imports_no_training_code_or_sklearn(data_file: Path, finished: Path) -> None:
    import subprocess
    import sys

    code = ("import sys, affectus; from affectus.data.mmsa import load_dataset; "
            "p = affectus.load(sys.argv[1]).predict(load_dataset(sys.argv[2])['test']); p.binary_labels(); "
            "print(sorted(m for m in sys.modules if m.startswith(('affectus.training', 'sklearn'))))")
    proc = subprocess.run([sys.executable, "-c", code, str(finished), str(data_file)], capture_output=True,
                          text=True, check=True)
    assert proc.stdout.strip() == "[]"
