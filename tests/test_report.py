"""`affectus report` and the TensorBoard writer: on a tiny trained CMC run and on hand-written experiments."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import affectus.cli.report_cmd  # noqa: F401  (registers the command until the CLI package imports it)
from affectus.cli import main
from affectus.data.mmsa import write_pickle
from affectus.data.synthetic import SynthConfig, generate
from affectus.evaluation.report import build_report, find_runs, least_squares_slope, mean_std
from affectus.evaluation.tensorboard import crc32c, read_scalars, write_tensorboard

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ["--set", "train.epochs=2", "--set", "train.patience=1", "--set", "model.layers=1", "--set", "model.heads=2",
        "--set", "train.batch_size=32", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data file, run dir) of a 2+2-epoch CMC run on tiny simulated CH-SIMS-like data."""
    root = tmp_path_factory.mktemp("report")
    data = root / "tiny.pkl"
    cfg = SynthConfig(n_train=72, n_valid=24, n_test=24, seq_lens={"text": 4, "audio": 6, "vision": 5},
                      dims={"text": 12, "audio": 5, "vision": 7}, seed=3)
    write_pickle(generate(cfg), data)
    run = root / "run"
    assert main(["train", "--data", str(data), "--out", str(run), *FAST]) == 0
    return data, run


def fake_run(path: Path, variant: str = "cmc", seed: int = 1, tau: float = 0.07, retention: float = 1.0,
             metrics: dict[str, Any] | None = None) -> None:
    """A minimal run.json, what the report reads (no weights: the router section must skip it)."""
    history = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 1.5 / e} for e in (1, 2, 3)]
    info = {"format": "affectus-run/1", "model_name": "cmc", "variant": variant, "family": "sims",
            "config": {"model": {"tau": tau}, "train": {"seed": seed, "consistent_retention": retention}},
            "metrics": metrics or {}, "metrics_split": "test",
            "stages": {"stage1": {"history": history, "flips": {"text": seed, "audio": 0, "vision": 0}},
                       "stage2": {"history": history}}}
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps(info))


def subsets(test: float, msc: float, msi: float) -> dict[str, Any]:
    return {"d_test": {"acc2": test, "f1": test - 1}, "d_msc": {"acc2": msc, "f1": msc - 1},
            "d_msi": {"acc2": msi, "f1": msi - 1}, "acc2": test}


def assert_self_contained(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    for src in re.findall(r'src="([^"]*)"', page):
        assert src.startswith("data:image/png;base64,"), src[:40]
    assert "<link" not in page and "<script" not in page


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000, path


# ---------------------------------------------------------------------------------------------- numbers


def test_least_squares_slope_by_hand() -> None:
    # x mean 1.5, y mean 2.75; sum dx*dy = 5.5, sum dx^2 = 5 -> slope 1.1, intercept 2.75 - 1.1 * 1.5 = 1.1
    slope, intercept = least_squares_slope([0, 1, 2, 3], [1, 3, 2, 5])
    assert slope == pytest.approx(1.1) and intercept == pytest.approx(1.1)
    assert least_squares_slope([0.2, 0.6, 1.0], [61, 63, 65])[0] == pytest.approx(5.0)
    with pytest.raises(ValueError):
        least_squares_slope([0.5, 0.5], [1, 2])


def test_mean_std_is_sample_std_and_skips_missing() -> None:
    assert mean_std([81.0, 82.0, None]) == (81.5, pytest.approx(np.sqrt(0.5)), 2)
    assert mean_std([None]) == (None, None, 0)
    assert mean_std([3.0]) == (3.0, 0.0, 1)


# ---------------------------------------------------------------------------------------------- experiments


def test_temperature_experiment(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    for tau, base in ((0.07, 80.0), (0.5, 70.0)):
        for seed in (1, 2):
            fake_run(exp / "runs" / f"tau{tau}-s{seed}", seed=seed, tau=tau,
                     metrics=subsets(base + seed, base + 10 + seed, base - 10 + seed))
    (exp / "results.csv").write_text("run,whatever\n")  # the runner's files must not confuse the report
    path = build_report(exp, tensorboard=False)
    assert path == exp / "report" / "report.html"
    page = path.read_text()
    assert_self_contained(page)
    for heading in ("Results", "Temperature of PFM (Table VIII)", "Training curves", "TensorBoard"):
        assert f"<h2>{heading}</h2>" in page
    # rows are grid points, mean ± sample std over the two seeds: 81, 82 -> 81.50 ± 0.71
    assert "cmc/cmc model.tau=0.07" in page and "81.50 ± 0.71" in page and "71.50 ± 0.71" in page
    assert "91.50 ± 0.71" in page  # D_msc at tau 0.07
    assert "skipped: the runs do not vary train.consistent_retention" in page
    assert "skipped: needs the data" in page and "no run has pseudo_labels.csv" in page
    assert_png(exp / "report" / "temperature_sims.png")


def test_retention_slopes(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    for variant, gain in (("cmc", 5.0), ("cmc_gt", 3.0)):
        for r in (0.2, 0.6, 1.0):
            for seed in (1, 2):
                jitter = 0.2 * (seed - 1.5)  # cancels in the mean: the fitted slope is exactly `gain`
                fake_run(exp / f"{variant}-{r}-{seed}", variant=variant, seed=seed, retention=r,
                         metrics=subsets(70 + gain * r + jitter, 60 + gain * r + jitter, 50 + jitter))
    page = build_report(exp, out=tmp_path / "out", tensorboard=False).read_text()
    assert "<h2>Retention of D_msc training samples (Figs. 4-5)</h2>" in page
    section = page.split("Retention of D_msc training samples (Figs. 4-5)</h2>")[1].split("</section>")[0]
    assert "+5.00" in section and "+3.00" in section and "+0.00" in section
    assert "cmc/cmc_gt" in section
    assert_png(tmp_path / "out" / "retention_sims.png")


def test_empty_directory_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no finished runs" in err and "\n" not in err


def test_unreadable_run_json_is_skipped_with_a_note(tmp_path: Path) -> None:
    fake_run(tmp_path / "good", metrics=subsets(80, 90, 70))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    runs, notes = find_runs(tmp_path)
    assert [r.run_id for r in runs] == ["good"] and "unreadable" in notes[0]


# ---------------------------------------------------------------------------------------------- a real run


def test_report_of_a_trained_run(tiny_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    data, run = tiny_run
    out = tmp_path / "report"
    assert main(["report", str(run), "--data", str(data), "--out", str(out), "--samples", "10"]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (out / "report.html").read_text()
    assert_self_contained(page)
    for heading in ("Runs", "Results", "Training curves", "PLGM pseudo-label flips (Fig. 6)",
                    "MCR router weights on D_msi samples (Fig. 7)", "TensorBoard"):
        assert f"<h2>{heading}</h2>" in page
    metrics = json.loads((run / "metrics.json").read_text())
    for subset in ("d_test", "d_msc", "d_msi"):
        assert f"{metrics[subset]['acc2']:.2f}" in page
    # Fig. 7: D_msi samples with their raw text, the verdict and each modality's own prediction
    info = json.loads((run / "run.json").read_text())
    assert info["metrics_split"] == "test" and "synth-test-" in page and "own T:" in page
    assert "Run run on split 'test'" in page
    # Fig. 6: per-modality flip counts from pseudo_labels.csv
    assert "72 training samples" in page and "final = dataset&#x27;s label" in page
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"training_cmc_cmc.png", "router_run.png"} <= set(pngs)
    assert page.count('src="data:image/png;base64,') == len(pngs)
    for p in out.glob("*.png"):
        assert_png(p)


def test_tensorboard_events_are_readable(tiny_run: tuple[Path, Path]) -> None:
    _, run = tiny_run
    path = write_tensorboard(run)
    assert path is not None and path.parent == run / "tensorboard"
    assert write_tensorboard(run) == path and len(list(path.parent.iterdir())) == 1  # rewriting replaces it
    stages = json.loads((run / "run.json").read_text())["stages"]
    scalars = read_scalars(path)
    expected = {f"{stage}/{key}" for stage, s in stages.items() for e in s["history"] for key in e if key != "epoch"}
    assert set(scalars) == expected
    assert [step for step, _ in scalars["stage2/val_loss"]] == [e["epoch"] for e in stages["stage2"]["history"]]
    assert scalars["stage1/train_loss"][0][1] == pytest.approx(stages["stage1"]["history"][0]["train_loss"])
    # TensorBoard's own reader, when installed, sees the same tags and steps
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(path.parent))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == expected
    assert len(acc.Scalars("stage1/val_ce_text")) == len(stages["stage1"]["history"])


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
