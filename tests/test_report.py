"""`affectus report` and TensorBoard logging: a tiny trained CMC run, a mixed CMC + baseline experiment,
and hand-written runs."""

from __future__ import annotations

import json
import re
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import affectus.cli.report_cmd  # noqa: F401  (registers the command until the CLI package imports it)
from affectus.cli import main
from affectus.evaluation.tensorboard import EpochLogger, read_scalars, write_tensorboard
from affectus.experiments.runner import run_experiment
from affectus.report import build_report, find_runs, least_squares_slope, mean_std

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ["--set", "train.epochs=2", "--set", "train.patience=1", "--set", "model.layers=1", "--set", "model.heads=2",
        "--set", "train.batch_size=32", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def tiny_run(sim_file: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(data file, run dir) of a 2+2-epoch CMC run on the tiny data."""
    data = sim_file
    run = tmp_path_factory.mktemp("report") / "run"
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
    assert mean_std([3.0]) == (3.0, None, 1)  # one seed: no spread to estimate (evaluation/results.py)


# ---------------------------------------------------------------------------------------------- experiments


def section(page: str, title: str) -> str:
    """The HTML of one section, by its heading (fails when the section is absent)."""
    assert f"<h2>{title}</h2>" in page, title
    return page.split(f"<h2>{title}</h2>")[1].split("</section>")[0]


def test_temperature_experiment_uses_the_plan(tmp_path: Path) -> None:
    """Inside an experiment, rows are named and ordered by experiment.json, and the grid axis gets its curve."""
    exp, planned = tmp_path / "exp", []
    for row, base in (("Zeta <full>", 80.0), ("Alpha", 60.0)):  # not alphabetical: the spec's order must win
        for tau in (0.07, 0.5):
            for seed in (1, 2):
                group = f"{row.split()[0].lower()}__tau={tau}"
                fake_run(exp / "runs" / f"{group}__seed={seed}", seed=seed, tau=tau,
                         metrics=subsets(base - 10 * tau + seed, base + 10 + seed, base - 10 + seed))
                planned.append({"id": f"{group}__seed={seed}", "group": group, "row": row, "model": "cmc",
                                "variant": "cmc", "grid": {"model.tau": tau}, "seed": seed,
                                "dir": f"runs/{group}__seed={seed}"})
    (exp / "experiment.json").write_text(json.dumps({"format": "affectus-experiment/1", "name": "t",
                                                     "grid": {"model.tau": [0.07, 0.5]}, "runs": planned}))
    (exp / "results.csv").write_text("run,whatever\n")  # the runner's files must not confuse the report
    path = build_report(exp, tensorboard=False)
    assert path == exp / "report" / "report.html"
    page = path.read_text()
    assert_self_contained(page)
    results = section(page, "Results")
    # the spec's order, names escaped by the template; mean ± sample std over two seeds: 80.3, 81.3 -> 80.80 ± 0.71
    assert results.index("Zeta &lt;full&gt;") < results.index("Alpha") and "<full>" not in page
    assert "80.80 ± 0.71" in results and "91.50 ± 0.71" in results  # D_test, D_msc at tau 0.07
    curve = section(page, "Temperature of PFM (Table VIII)")
    assert "<h3>Zeta &lt;full&gt; (sims)</h3>" in curve and "<h3>Alpha (sims)</h3>" in curve
    assert "zeta__tau=0.07" in section(page, "Training curves")  # file names: the runner's group ids
    # left out: no retention axis, no router, no TensorBoard (asked for none); PLGM applies but lacks its file
    for absent in ("Retention of D_msc", "MCR router weights", "<h2>TensorBoard", "skipped"):
        assert absent not in page
    assert "no run kept pseudo_labels.csv" in section(page, "PLGM pseudo-label flips (Fig. 6)")
    assert_png(exp / "report" / "temperature_sims.png")
    assert_png(exp / "report" / "training_zeta__tau=0.5.png")


def test_retention_slopes(tmp_path: Path) -> None:
    """Runs made by hand (no experiment.json): rows are model/variant, axes what varies within one."""
    exp = tmp_path / "exp"
    for variant, gain in (("cmc", 5.0), ("cmc_gt", 3.0)):
        for r in (0.2, 0.6, 1.0):
            for seed in (1, 2):
                jitter = 0.2 * (seed - 1.5)  # cancels in the mean: the fitted slope is exactly `gain`
                fake_run(exp / f"{variant}-{r}-{seed}", variant=variant, seed=seed, retention=r,
                         metrics=subsets(70 + gain * r + jitter, 60 + gain * r + jitter, 50 + jitter))
    page = build_report(exp, out=tmp_path / "out", tensorboard=False).read_text()
    curve = section(page, "Retention of D_msc training samples (Figs. 4-5)")
    assert "+5.00" in curve and "+3.00" in curve and "+0.00" in curve
    assert "cmc/cmc_gt" in curve
    assert "Temperature" not in page  # tau is the same in every run
    assert_png(tmp_path / "out" / "retention_sims.png")


def test_empty_directory_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no finished runs" in err and "\n" not in err


def test_unreadable_run_json_is_skipped_with_a_note(tmp_path: Path) -> None:
    fake_run(tmp_path / "good", metrics=subsets(80, 90, 70))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    runs, _axes, notes = find_runs(tmp_path)
    assert [r.run_id for r in runs] == ["good"] and "unreadable" in notes[0]


# ---------------------------------------------------------------------------------------------- real runs


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
    assert f"cmc/cmc, seed {info['config']['train']['seed']} (run) on split &#39;test&#39;" in page
    # Fig. 6: per-modality flip counts from pseudo_labels.csv
    assert "72 training samples" in page and "final = dataset&#39;s label" in page
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"training_cmc-cmc.png", "router_cmc-cmc.png"} <= set(pngs)
    assert page.count('src="data:image/png;base64,') == len(pngs)
    for p in out.glob("*.png"):
        assert_png(p)


def test_report_of_a_mixed_experiment(sim_file: Path, tmp_path: Path) -> None:
    """A CMC row and a baseline row in one spec: the spec's row names and order, no temperature section."""
    spec = {"name": "mixed", "seeds": 1,
            "overrides": {"train.epochs": 2, "train.patience": 1, "train.batch_size": 32},
            "runs": [{"name": "LF-DNN", "model": "late_fusion"},
                     {"name": "CMC <full>", "overrides": {"model.layers": 1, "model.heads": 2}}]}
    exp = tmp_path / "exp"
    run_experiment(spec, exp, data=str(sim_file), threads=1, progress=False)
    page = build_report(exp, tensorboard=False).read_text()
    results = section(page, "Results")
    assert re.findall(r'<tr><td class="l">([^<]*)</td>', results) == ["LF-DNN", "CMC &lt;full&gt;"]
    results_md = (exp / "results.md").read_text()
    assert results_md.index("| LF-DNN |") < results_md.index("| CMC <full> |")  # the same order as results.md
    assert "Temperature" not in page and "model.tau" not in page and "skipped" not in page
    assert "<h3>CMC &lt;full&gt;, seed 1: 72 training samples</h3>" in section(page, "PLGM pseudo-label flips (Fig. 6)")
    assert "--data" in section(page, "MCR router weights on D_msi samples (Fig. 7)")
    assert {"training_lf-dnn.png", "training_cmc-full.png", "flips_cmc-full__seed=1.png"} <= {
        p.name for p in (exp / "report").glob("*.png")}
    # the baseline's run alone: named by the plan two levels up; CMC's sections do not apply to it
    alone = build_report(exp / "runs" / "lf-dnn__seed=1", tensorboard=False).read_text()
    assert "<td class=\"l\">LF-DNN</td>" in alone and "training_lf-dnn.png" in alone
    for absent in ("PLGM", "MCR router", "Temperature", "skipped"):
        assert absent not in alone


# ---------------------------------------------------------------------------------------------- TensorBoard


def accumulate(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return acc


def record(epoch: int, loss: float) -> dict[str, float]:
    """An epoch record as the training loop builds it."""
    return {"epoch": epoch, "seconds": 0.5, "train_loss": loss, "val_loss": loss + 0.1, "val_acc2": 60.0 + epoch,
            "improved": 1.0}


def test_epoch_logger_writes_during_training(tmp_path: Path) -> None:
    logger = EpochLogger(tmp_path)
    for epoch in (1, 2):
        logger.log_epoch("stage1", {**record(epoch, 1.0 / epoch), "val_ce_text": 0.7, "nan_metric": float("nan")})
    logger.log_epoch("stage2", record(1, 0.4))
    # readable before close: each epoch is flushed as it is logged
    acc = accumulate(tmp_path / "tensorboard" / "stage1")
    assert set(acc.Tags()["scalars"]) == {"stage1/seconds", "stage1/train_loss", "stage1/val_loss",
                                          "stage1/val_acc2", "stage1/improved", "stage1/val_ce_text"}
    assert [(e.step, e.value) for e in acc.Scalars("stage1/val_acc2")] == [(1, 61.0), (2, 62.0)]
    logger.log_epoch("stage2", record(2, 0.3))
    logger.close()
    stage2 = accumulate(tmp_path / "tensorboard" / "stage2")
    assert [e.step for e in stage2.Scalars("stage2/val_loss")] == [1, 2]
    assert stage2.Scalars("stage2/train_loss")[1].value == pytest.approx(0.3)


def test_resumed_stage_replaces_what_the_interrupted_process_logged(tmp_path: Path) -> None:
    with closing(EpochLogger(tmp_path)) as first:  # stage 1 done; stage 2 logged epochs 1-3, checkpointed after 2
        first.log_epoch("stage1", record(1, 9.0))
        for epoch in (1, 2, 3):
            first.log_epoch("stage2", record(epoch, 1.0))
    with closing(EpochLogger(tmp_path)) as resumed:  # the resume repeats epoch 3, then goes on
        for epoch in (3, 4):
            resumed.log_epoch("stage2", record(epoch, 2.0))
    scalars = read_scalars(tmp_path / "tensorboard")
    assert scalars["stage2/train_loss"] == [(1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0)]
    assert scalars["stage1/train_loss"] == [(1, 9.0)]  # another stage's steps are not purged


def test_tensorboard_from_run_json(tiny_run: tuple[Path, Path]) -> None:
    """Runs logged after the fact from run.json: the same tags and steps, and never twice."""
    _, run = tiny_run
    log_dir = write_tensorboard(run)
    assert log_dir == run / "tensorboard"
    files = sorted(log_dir.rglob("events.out.tfevents.*"))
    assert write_tensorboard(run) == log_dir and sorted(log_dir.rglob("events.out.tfevents.*")) == files
    stages = json.loads((run / "run.json").read_text())["stages"]
    scalars = read_scalars(log_dir)
    expected = {f"{stage}/{key}" for stage, s in stages.items() for e in s["history"] for key in e if key != "epoch"}
    assert set(scalars) == expected
    assert [step for step, _ in scalars["stage2/val_loss"]] == [e["epoch"] for e in stages["stage2"]["history"]]
    assert scalars["stage1/train_loss"][0][1] == pytest.approx(stages["stage1"]["history"][0]["train_loss"])


def test_degenerate_rows_are_marked_and_ties_not_highlighted(tmp_path: Path) -> None:
    """A row whose runs predicted one class is flagged; two rows tied for the best mean are not bold."""
    for variant, value in (("cmc", 70.0), ("wo_pfm", 70.0), ("wo_mcr", 50.0)):
        fake_run(tmp_path / variant, variant=variant, metrics=subsets(value, value, value))
    info = json.loads((tmp_path / "wo_mcr" / "run.json").read_text())
    info.update(degenerate={"test": 1}, warnings=["predicted one class"])
    (tmp_path / "wo_mcr" / "run.json").write_text(json.dumps(info))
    results = section(build_report(tmp_path, tensorboard=False).read_text(), "Results")
    assert "cmc/wo_mcr ⚠" in results and "1 of 1 run(s) predicted a single class" in results
    assert "<b>" not in results and "<strong>" not in results and 'class="best"' not in results


def test_categorical_runs_get_a_confusion_matrix_from_the_data(tmp_path: Path) -> None:
    """issue 19: a categorical scheme's report shows truth x prediction counts that add up to the split and
    agree with the run's own accuracy; without the data it says what it needs."""
    data = "synth:iemocap?scale=0.03"
    run = tmp_path / "run"
    assert main(["train", "--data", data, "--model", "late_fusion", "--out", str(run),
                 "--set", "train.epochs=2", "--threads", "1", "--quiet"]) == 0
    page = build_report(run, data=data, out=tmp_path / "rep", tensorboard=False).read_text()
    assert "<h2>Confusion matrices</h2>" in page
    section = page.split("<h2>Confusion matrices</h2>")[1].split("<h2>")[0]
    info = json.loads((run / "run.json").read_text())
    names = info["scheme"]["classes"] if isinstance(info.get("scheme"), dict) else None
    cells = [[c for c in re.findall(r"<td[^>]*>(.*?)</td>", tr)] for tr in re.findall(r"<tr>(.*?)</tr>", section, re.S)]
    body = [c for c in cells if c and c[0] not in ("predicted",)]
    k = len(body)
    assert k >= 2 and (names is None or [c[0] for c in body] == names)
    counts = np.array([[int(re.sub("<[^>]+>", "", v)) for v in c[1:1 + k]] for c in body])
    acc = 100.0 * np.trace(counts) / counts.sum()
    metrics = json.loads((run / "metrics.json").read_text())
    assert abs(acc - metrics["acc"]) < 1e-6
    bare = build_report(run, out=tmp_path / "rep2", tensorboard=False).read_text()
    assert "needs the data to predict with" in bare.split("<h2>Confusion matrices</h2>")[1]
