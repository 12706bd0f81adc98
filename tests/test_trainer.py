"""The trainer (training/trainer.py, training/job.py): global torch state left alone, a last batch of one,
epoch lines, one preparation shared by the API and the CLI."""

from __future__ import annotations

import pytest
import torch

from affectus.cli import main
from affectus.data.mmsa import write_pickle
from affectus.data.synthetic import SynthConfig, generate
from affectus.errors import AffectusError

TINY = {"seq_lens": {"text": 4, "audio": 6, "vision": 5}, "dims": {"text": 12, "audio": 5, "vision": 7}}


FAST = ["--set", "train.epochs=2", "--set", "train.patience=1", "--set", "train.batch_size=16", "--threads", "1",
        "--quiet"]


def test_library_training_leaves_global_torch_state_alone(sim_file, tmp_path):
    import affectus

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    affectus.train(sim_file, tmp_path / "run", model="late_fusion", threads=1,
                   overrides={"train.epochs": 1, "train.batch_size": 16})
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.rand(3), expected)  # the run's seeds did not reset the caller's RNG


def test_training_set_size_one_more_than_a_batch_multiple(tmp_path):
    """N % batch == 1 used to yield an empty final batch (NaN loss): now the single sample sits out."""
    path = tmp_path / "odd.pkl"
    write_pickle(generate(SynthConfig(n_train=33, n_valid=8, n_test=8, seed=4, **TINY)), path)
    assert main(["train", "--data", str(path), "--model", "late_fusion", "--out", str(tmp_path / "r"), *FAST]) == 0


def test_epoch_lines_fit_80_columns_and_quiet_silences_them(sim_file, tmp_path, capsys):
    args = ["train", "--data", str(sim_file), "--model", "cmc", "--set", "model.layers=1", "--set", "model.heads=2",
            "--set", "train.epochs=2", "--set", "train.batch_size=16", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err.splitlines()
    lines = [ln for ln in err if "/2" in ln and "train" in ln and "val" in ln]
    assert err[0].startswith("epochs:") and "* = best (kept)" in err[0] and len(err[0]) <= 80
    assert len(lines) == 4 and {ln.split()[0] for ln in lines} == {"stage1", "stage2"}  # 2 epochs x 2 stages
    assert all(len(ln) <= 80 for ln in lines)
    # TensorBoard events were written by the trainer, per stage, with validation metrics as well as losses
    from affectus.evaluation.tensorboard import read_scalars

    tags = read_scalars(tmp_path / "a" / "tensorboard")
    assert [step for step, _ in tags["stage1/val_ce_audio"]] == [1, 2] and "stage2/train_loss" in tags
    assert main([*args, "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert "train" not in capsys.readouterr().err.replace("wrote", "")


def test_api_and_cli_train_share_one_preparation(sim_file, tmp_path, monkeypatch, capsys):
    """`affectus.train` and `affectus train` open, configure and plan through `training/job.py` alone: the
    seed / device / threads shortcuts are folded in there, and win over the overrides."""
    import affectus
    from affectus.training import job

    job_seen = []
    real = job.prepare_training

    def spy(*args, **kwargs):
        job_seen.append(real(*args, **kwargs))
        raise AffectusError("stop after preparing")

    monkeypatch.setattr(job, "prepare_training", spy)
    with pytest.raises(AffectusError, match="stop after preparing"):
        affectus.train(str(sim_file), tmp_path / "api", model="late_fusion", overrides={"train.seed": 1}, seed=7)
    assert main(["train", "--data", str(sim_file), "--out", str(tmp_path / "cli"), "--model", "late_fusion",
                 "--set", "train.seed=1", "--seed", "7"]) == 2
    assert "stop after preparing" in capsys.readouterr().err
    assert [(j.cfg.model_name, j.cfg.train.seed, j.plan.train) for j in job_seen] == [("late_fusion", 7, "train")] * 2
    assert not (tmp_path / "api").exists() and not (tmp_path / "cli").exists()
