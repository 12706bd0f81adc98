"""The CLI's commands end to end (cli/): evaluate with the authors' subset files and the run's own data, train
refusing to replace foreign files, predict explaining samples, generated preset help; no silent overwrites and
one `error:` line (never a traceback) for bad paths, full disks, unreadable files and broken storage; warnings
after the error line; per-sample predictions."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from affectus.cli import main
from affectus.data.mmsa import load_dataset
from affectus.data.schemes import get_scheme
from affectus.errors import AffectusError
from affectus.utils.io import write_json_atomic
from conftest import SMALL_SIM, SRC, one_error_line

FAST = ["--set", "train.epochs=2", "--set", "train.patience=1", "--set", "train.batch_size=16", "--threads", "1",
        "--quiet"]


def test_evaluate_with_the_authors_subset_files(sim_file, tmp_path, capsys):
    """--subsets MSC,MSI scores the subsets listed in the files; listing the computed ones reproduces them."""
    import pickle

    out = tmp_path / "lf"
    assert main(["train", "--data", str(sim_file), "--model", "late_fusion", "--out", str(out), *FAST]) == 0
    test = load_dataset(sim_file)["test"]
    msc, msi = get_scheme("sims").consistency_masks(test.labels, test.unimodal_labels)
    files = []
    for name, mask in (("msc", msc), ("msi", msi)):
        path = tmp_path / f"[test]D_{name}.pkl"
        path.write_bytes(pickle.dumps({"test": {"id": np.array([i for i, m in zip(test.ids, mask) if m], dtype=object)}}))
        files.append(str(path))
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(sim_file), "--split", "test", "--json"]) == 0
    computed = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(out), "--data", str(sim_file), "--split", "test", "--json", "--subsets", ",".join(files)]) == 0
    from_files = json.loads(capsys.readouterr().out)
    assert from_files["d_msc"] == computed["d_msc"] and from_files["d_msi"] == computed["d_msi"]
    # only half of D_msi listed: the subset shrinks
    Path(files[1]).write_bytes(pickle.dumps([i for i, m in zip(test.ids, msi) if m][: int(msi.sum()) // 2]))
    assert main(["evaluate", str(out), "--data", str(sim_file), "--split", "test", "--json", "--subsets", ",".join(files)]) == 0
    assert json.loads(capsys.readouterr().out)["d_msi"]["n"] == int(msi.sum()) // 2


def test_evaluate_defaults_to_the_runs_own_data(sim_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "lf"
    monkeypatch.chdir(sim_file.parent)  # a relative --data is recorded as an absolute path
    assert main(["train", "--data", sim_file.name, "--model", "late_fusion", "--out", str(out), *FAST]) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["d_test"]["acc2"] == json.loads((out / "metrics.json").read_text())["d_test"]["acc2"]


def test_train_refuses_to_replace_files_it_did_not_write(sim_file, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}')
    assert main(["train", "--data", str(sim_file), "--model", "late_fusion", "--out", str(out), *FAST]) == 2
    assert "not an affectus run but holds config.json" in capsys.readouterr().err
    assert (out / "config.json").read_text() == '{"my": "settings"}'
    assert main(["train", "--data", str(sim_file), "--model", "late_fusion", "--out", str(out), "--overwrite", *FAST]) == 0


def test_predict_explains_every_sample_of_a_features_file(sim_file, tmp_path, capsys):
    out = tmp_path / "cmc"
    assert main(["train", "--data", str(sim_file), "--out", str(out), "--set", "model.layers=1", "--set",
                 "model.heads=2", *FAST]) == 0
    capsys.readouterr()
    assert main(["predict", str(out), str(sim_file), "--split", "test", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    test = load_dataset(sim_file)["test"]
    assert [r["id"] for r in rows] == test.ids and rows[0]["transcript"] == test.raw_text[0]
    for r in rows:
        assert set(r["modalities"]) == {"text", "audio", "vision"} and r["acc2"] in ("non-positive", "positive")
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-5
        weights = sorted(((v["weight"], m) for m, v in r["modalities"].items()), reverse=True)
        lead = weights[0][1]
        if r["modalities"][lead]["prediction"] == r["verdict"] and weights[0][0] - weights[1][0] >= 0.1:
            assert r["followed"] == lead  # the largest weight, agreeing with the verdict, by a margin
        else:
            assert r["followed"] is None
    assert main(["predict", str(out), str(sim_file), "--split", "test", "--json", "--available", "l,a"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # faithful CMC zero-fills the absent vision: it entered the verdict, and the row says so
    assert all(set(r["modalities"]) == {"text", "audio", "vision"} and "zero-filled" in r["absent"]["vision"]
               for r in rows)
    assert main(["predict", str(out), "clip.mp4"]) == 2
    assert "does not know how to extract a clip" in capsys.readouterr().err


def test_preset_help_is_generated_from_the_preset_registry():
    """A command's --preset help that names presets names every one (iemocap too), read from the presets,
    not listed by hand."""
    import typer

    from affectus.cli import app
    from affectus.data.presets import list_presets

    group = typer.main.get_command(app)
    helps = {name: p.help for name, cmd in group.commands.items() for p in cmd.params
             if "--preset" in p.opts and p.help and any(preset in p.help for preset in list_presets())}
    assert {"train", "synth"} <= set(helps)
    for name, text in helps.items():
        assert all(preset in text for preset in list_presets()), (name, text)


# -------------------------------------------------------- no silent overwrites; one line, never a traceback

def test_synth_and_convert_refuse_to_replace_a_file(tmp_path: Path, tiny_file: Path, cli) -> None:
    for args in (["synth", "--preset", "mosi", "--n-train", "4", "--n-valid", "2", "--n-test", "2",
                  "--seq-scale", "0.1"], ["convert", str(tiny_file)]):
        target = tmp_path / f"{args[0]}.npz"
        target.write_text("my notes")
        rc, _, err = cli(*args, "--out", target)
        one_error_line(rc, err, str(target), "--overwrite")
        assert target.read_text() == "my notes"
        rc, _, err = cli(*args, "--out", target, "--overwrite")
        assert rc == 0, err
        assert target.read_bytes()[:2] == b"PK"  # the .npz replaced the notes


@pytest.mark.parametrize("where", ["under-a-file", "a-directory"])
def test_convert_out_that_cannot_be_a_file(tmp_path: Path, tiny_file: Path, cli, where) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    out = tmp_path / "notes.txt" / "d.npz" if where == "under-a-file" else tmp_path / "folder"
    rc, _, err = cli("convert", tiny_file, "--out", out)
    one_error_line(rc, err, str(out.parent if where == "under-a-file" else out))


@pytest.mark.parametrize("where", ["a-file", "under-a-file"])
def test_experiment_out_that_cannot_be_a_directory(tmp_path: Path, tiny_file: Path, cli, where) -> None:
    (tmp_path / "notes.txt").write_text("x")
    out = tmp_path / "notes.txt" if where == "a-file" else tmp_path / "notes.txt" / "exp"
    rc, _, err = cli("experiment", "table5_ablation", "--out", out, "--data", tiny_file, "--quiet")
    one_error_line(rc, err, "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "x"


def test_a_full_disk_is_one_line_and_leaves_no_temp_file(tmp_path: Path, tiny_file: Path, cli, monkeypatch) -> None:
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "out" / "d.npz"
    rc, _, err = cli("convert", tiny_file, "--out", out)
    one_error_line(rc, err, str(out), "No space left on device")
    assert not out.exists() and not list(out.parent.iterdir())
    with pytest.raises(AffectusError, match="No space left"):
        write_json_atomic(tmp_path / "x.json", {"a": 1})
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".x.json*"))


def test_an_unreadable_data_file_is_one_line(tmp_path: Path, tiny_file: Path, cli, monkeypatch) -> None:
    path = Path(shutil.copy(tiny_file, tmp_path / "locked.pkl"))
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: make the read fail as it would for a user
        from affectus.data import mmsa

        def denied(p):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))

        monkeypatch.setattr(mmsa, "file_format", denied)
    for command in ("inspect", "train"):
        extra = ["--out", str(tmp_path / "run")] if command == "train" else []
        rc, _, err = cli(command, *(["--data"] if command == "train" else []), path, *extra)
        one_error_line(rc, err, f"file {path}", "cannot read")


def test_spec_files_that_are_not_utf8_are_one_line(tmp_path: Path, tiny_file: Path, cli) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(b"name: \xe9t\xe9\n")  # latin-1
    rc, _, err = cli("experiment", spec, "--out", tmp_path / "e", "--data", tiny_file)
    one_error_line(rc, err, str(spec), "not UTF-8")
    rc, _, err = cli("sweep", spec, "--out", tmp_path / "s", "--data", tiny_file)
    one_error_line(rc, err, str(spec), "not UTF-8")


def _storage_cases(tmp_path: Path) -> dict[str, tuple[str, list[str]]]:
    (tmp_path / "noise.db").write_bytes(b"not a database " * 100)
    (tmp_path / "folder.db").mkdir()
    return {
        "bad-url": ("nonsense", ["not a database URL"]),
        "unreachable-postgres": ("postgresql://me:s3cret@127.0.0.1:1/db", ["cannot use the study storage",
                                                                            "127.0.0.1"]),
        "not-a-database": (f"sqlite:///{tmp_path / 'noise.db'}", ["not a database"]),
        "unopenable-sqlite": (f"sqlite:///{tmp_path / 'folder.db'}", ["unable to open"]),
    }


@pytest.mark.parametrize("case", ["bad-url", "unreachable-postgres", "not-a-database", "unopenable-sqlite"])
def test_sweep_storage_failures_are_one_line(tmp_path: Path, tiny_file: Path, cli, case) -> None:
    url, fragments = _storage_cases(tmp_path)[case]
    rc, _, err = cli("sweep", "cmc_grid", "--out", tmp_path / "s", "--data", tiny_file, "--storage", url,
                     "--trials", "1", "--quiet")
    line = one_error_line(rc, err, "--storage", *fragments)
    assert "s3cret" not in line  # the password never reaches a terminal or a log
    rc, _, err = cli("sweep", "cmc_grid", "--out", tmp_path / "s", "--storage", url, "--report")
    one_error_line(rc, err, "--storage", *fragments)


@pytest.mark.slow
def test_warnings_never_come_before_the_error_line(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, warnings
        sys.path.insert(0, {SRC!r})
        import affectus.cli.data_cmds as data_cmds
        from affectus.errors import AffectusError

        def load(*args, **kwargs):
            warnings.warn("overflow encountered in cast", RuntimeWarning)
            raise AffectusError("file x.pkl: broken")

        data_cmds.load_dataset = load
        from affectus.cli import main
        sys.exit(main(["inspect", "x.pkl"]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines[0] == "error: file x.pkl: broken"
    assert lines[1:] == ["warning: RuntimeWarning: overflow encountered in cast"]


def test_evaluate_writes_per_sample_predictions(trained: Path, tiny_file: Path, tmp_path: Path, cli) -> None:
    import csv

    path = tmp_path / "pred.csv"
    rc, out, err = cli("evaluate", trained, "--data", tiny_file, "--json", "--predictions", path)
    assert rc == 0, err
    metrics = json.loads(out)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == SMALL_SIM.n_test and rows[0]["id"].startswith("synth-test")
    for r in rows:
        assert abs(sum(float(r[f"p_{c}"]) for c in ("negative", "neutral", "positive")) - 1) < 1e-4
        assert r["label_class"] == ("negative" if float(r["label"]) < 0 else
                                    "neutral" if float(r["label"]) == 0 else "positive")
    # the CSV's verdicts are the ones the metrics were computed from: its 3-class accuracy is acc3
    acc3 = 100 * np.mean([r["predicted"] == r["label_class"] for r in rows])
    assert acc3 == pytest.approx(metrics["d_test"]["acc3"])
    rc, _, err = cli("evaluate", trained, "--data", tiny_file, "--predictions", path)
    one_error_line(rc, err, str(path), "--overwrite")
