"""Experiment specs and the runner: expansion, bad specs, Table V end to end, resume, --jobs."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

import affectus.cli.experiment_cmd  # noqa: F401  (registers `affectus experiment` on the app)
from affectus.cli import main
from affectus.data.mmsa import write_pickle
from affectus.data.presets import load_preset
from affectus.data.synthetic import SynthConfig, generate
from affectus.errors import AffectusError
from affectus.experiments.runner import aggregate, run_experiment
from affectus.experiments.spec import expand, find_spec, list_experiments, load_spec
from affectus.models.registry import list_models

FAST = ["--set", "train.epochs=2", "--set", "train.patience=1", "--set", "model.layers=1", "--set", "model.heads=2",
        "--set", "train.batch_size=32", "--threads", "1", "--quiet"]
FAST_OVERRIDES = {"train.epochs": 2, "train.patience": 1, "model.layers": 1, "model.heads": 2, "train.batch_size": 32}
TABLE5_ROWS = ["CMC", "w/o PLGM", "w/o PFM", "w/o MCR", "single-task", "single-task w/o PFM", "CMC-variant"]


@pytest.fixture(scope="module")
def table5_reference(sim_file: Path, tmp_path_factory) -> Path:
    """The Table V spec, 2 seeds, run once without interruption: the reference for resume and --jobs."""
    out = tmp_path_factory.mktemp("exp") / "reference"
    assert main(["experiment", "table5_ablation", "--out", str(out), "--data", str(sim_file), "--seeds", "2",
                 *FAST]) == 0
    return out


# ------------------------------------------------------------------------------------ expansion


def test_expansion_ids_and_precedence() -> None:
    spec = {
        "name": "t", "seeds": 2, "overrides": {"train.epochs": 3, "model.d": 16},
        "runs": [{"name": "CMC"}, {"name": "w/o MCR", "variant": "wo_mcr", "overrides": {"train.epochs": 4}}],
        "grid": {"model.tau": [0.05, 0.1]},
    }
    runs = expand(load_spec(spec), overrides={"model.d": 8})
    assert [r.id for r in runs] == [
        "cmc__tau=0.05__seed=1", "cmc__tau=0.05__seed=2", "cmc__tau=0.1__seed=1", "cmc__tau=0.1__seed=2",
        "w-o-mcr__tau=0.05__seed=1", "w-o-mcr__tau=0.05__seed=2", "w-o-mcr__tau=0.1__seed=1",
        "w-o-mcr__tau=0.1__seed=2",
    ]
    assert len({r.id for r in runs}) == 8 and runs[0].group == "cmc__tau=0.05"
    first, last = runs[0].config, runs[-1].config
    assert (first.model["tau"], first.train.seed, first.train.epochs, first.model["d"]) == (0.05, 1, 3, 8)
    assert (last.model["tau"], last.train.seed, last.train.epochs, last.model["use_router"]) == (0.1, 2, 4, False)
    # --seeds N replaces the spec's seeds; an explicit list is kept as given
    assert [r.seed for r in expand(load_spec(spec), seeds=3)][:3] == [1, 2, 3]
    assert [r.seed for r in expand(load_spec({**spec, "seeds": [1111, 7]}))][:2] == [1111, 7]
    # a row with `presets:` runs only under those presets (context rows: only data with groups has neighbours)
    only = {"runs": [{"name": "CMC"}, {"name": "ctx", "model": "late_fusion", "overrides": {"train.context": 2},
                                       "presets": ["mosi-utterance"]}]}
    assert [r.row for r in expand(load_spec(only), seeds=1)] == ["CMC"]
    assert [r.row for r in expand(load_spec(only), preset=load_preset("mosi-utterance"), seeds=1)] == ["CMC", "ctx"]
    with pytest.raises(AffectusError, match="no row applies to preset 'sims'"):
        expand(load_spec({"runs": [only["runs"][1]]}), preset=load_preset("sims"))
    table4 = [r.row for r in expand(load_spec("table4_comparison"), preset=load_preset("mosi-utterance"), seeds=1)]
    assert {"CMC+ ctx2", "LF-DNN ctx2", "LogReg ctx2"} <= set(table4)
    # a preset's Table III row shapes the config
    with_preset = expand(load_spec({"runs": [{"name": "CMC"}]}), preset=load_preset("sims"))
    assert with_preset[0].config.model["layers"] == 5


def test_shipped_specs_expand() -> None:
    """Every shipped spec resolves (rows of models not registered yet are left out)."""
    assert {"table4_comparison", "table5_ablation", "table6_unimodal", "table7_gt", "table8_temperature",
            "fig45_retention"} <= set(list_experiments())
    registered = set(list_models())
    for name in list_experiments():
        raw = yaml.safe_load(find_spec(name).read_text(encoding="utf-8"))
        raw["runs"] = [r for r in raw["runs"] if r.get("model", "cmc") in registered]
        assert expand(load_spec(raw)), name
    table5 = yaml.safe_load(find_spec("table5_ablation").read_text(encoding="utf-8"))
    assert [r["name"] for r in table5["runs"]] == TABLE5_ROWS
    taus = yaml.safe_load(find_spec("table8_temperature").read_text(encoding="utf-8"))["grid"]["model.tau"]
    assert sorted(taus) == [0.05, 0.07, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


# ------------------------------------------------------------------------------------ bad specs

GOOD = """name: bad
seeds: 2
runs:
  - {name: CMC, model: cmc}
  - name: other
    variant: wo_mcr
"""


@pytest.mark.parametrize(
    "text, line, needle",
    [
        (GOOD + "  - {name: X, model: nonsense}\n", 7, "unknown model 'nonsense'"),
        (GOOD.replace("variant: wo_mcr", "variant: wo_everything"), 6, "unknown variant 'wo_everything'"),
        (GOOD + "colour: blue\n", 7, "unknown key 'colour'"),
        (GOOD + "seed: 3\n", 7, ("unknown key 'seed' in the spec: expected one of name, description, preset, data, "
                                 "seeds, overrides, runs, grid, mixed_inputs, report (did you mean 'seeds'?)")),
        (GOOD.replace("- {name: CMC, model: cmc}", "- {name: CMC, modle: cmc}"), 4, "did you mean 'model'?"),
        (GOOD.replace("- {name: CMC, model: cmc}", "- {name: 3}"), 4, "runs[0].name = 3: expected a string"),
        (GOOD.replace("    variant: wo_mcr", "    variant: wo_mcr\n    overrides:\n      model.heads: 3"), 8,
         "run 'other': model.heads = 3: expected a divisor of model.d = 32"),
        (GOOD + "overrides:\n  train.epochs: 2\n  model.nonsense: 1\n", 9, "model.nonsense"),
        (GOOD + "grid:\n  train.epochs: [2, many]\n", 8, "train.epochs = 'many': expected an integer"),
        (GOOD.replace("    variant: wo_mcr", "    variant: wo_mcr\n    overrides: {train.lr: fast}"), 7, "train.lr"),
        (GOOD.replace("seeds: 2", "seeds: 0"), 2, "seeds = 0"),
        (GOOD.replace("seeds: 2", "seeds: [1, 1]"), 2, "distinct"),
        (GOOD.replace("seeds: 2", "seeds: five"), 2, "seeds = 'five'"),
        (GOOD + "overrides: {train.seed: 3}\n", 7, "use `seeds:`"),
        (GOOD.replace("name: other", "name: cmc"), 5, "same id 'cmc'"),
        (GOOD + "grid: {model.tau: [0.1, 0.1]}\n", 7, "values repeat"),
        (GOOD + "  - {name: X, model: cmc, presets: [mosi-utterance, mosy]}\n", 7, "unknown preset 'mosy'"),
        # rows that would read different inputs, without `mixed_inputs: true`
        (GOOD.replace("    variant: wo_mcr", "    variant: wo_mcr\n    overrides: {train.text_inputs: sentence}"), 5,
         "run 'other' reads inputs sentence:minilm, run 'CMC' reads file"),
    ],
)
def test_bad_spec_fails_in_one_line_before_any_run(sim_file: Path, tmp_path: Path, capsys, text, line,
                                                   needle) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    assert main(["experiment", str(spec), "--out", str(out), "--data", str(sim_file), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"{spec}:{line}:" in err[0] and needle in err[0], err[0]
    assert not out.exists()  # nothing ran, nothing was written


def test_bad_cli_values_fail_before_any_run(sim_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    for extra, needle in ((["--set", "model.nonsense=1"], "--set model.nonsense"), (["--seeds", "0"], "--seeds"),
                          (["--jobs", "0"], "--jobs")):
        assert main(["experiment", "table5_ablation", "--out", str(out), "--data", str(sim_file), *extra,
                     "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert not out.exists()
    with pytest.raises(AffectusError, match="no data"):
        run_experiment({"runs": [{"name": "CMC"}]}, tmp_path / "x")


# ------------------------------------------------------------------------------- running tables


@pytest.mark.slow
def test_table5_end_to_end(table5_reference: Path) -> None:
    md = (table5_reference / "results.md").read_text(encoding="utf-8")
    header = next(line for line in md.splitlines() if line.startswith("| Run"))
    for column in ("D_test Acc2", "D_msc Acc2", "D_msi Acc2", "Params", f"Time ×{TABLE5_ROWS[0]}", "Seeds"):
        assert column in header
    for i, row in enumerate(TABLE5_ROWS):
        line = next(x for x in md.splitlines() if x.startswith(f"| {row} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert all("±" in c for c in cells[1:7]), line  # D_test / D_msc / D_msi Acc2 and F1, mean ± std
        assert cells[-1] == "2" and int(cells[-3].replace(",", "")) > 0
        assert float(cells[-2]) > 0 and (i or cells[-2] == "1.00")  # training time as a ratio to the first row
    lines = (table5_reference / "results.csv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    assert "d_test.acc2" in header and "d_msi.acc2" in header and "modalities.audio.acc2" in header
    kinds = [line.split(",")[0] for line in lines[1:]]
    assert kinds.count("run") == 14 and kinds.count("mean") == 7 and kinds.count("std") == 7
    plan = json.loads((table5_reference / "experiment.json").read_text(encoding="utf-8"))
    assert len(plan["runs"]) == 14 and plan["family"] == "sims"
    for run in plan["runs"]:
        saved = json.loads((table5_reference / run["dir"] / "config.json").read_text(encoding="utf-8"))
        assert saved["variant"] == run["variant"] and saved["train"]["seed"] == run["seed"]


def _mtimes(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/run.json")}


@pytest.mark.slow
def _without_times(path: Path) -> list[list[str]]:
    """A results.csv or results.md as cells, without the training-time columns (wall seconds differ by run)."""
    sep = "," if path.suffix == ".csv" else "|"
    rows = [line.split(sep) for line in path.read_text(encoding="utf-8").splitlines()]
    header = next((r for r in rows if "train_seconds" in r or any(c.strip().startswith("Time ×") for c in r)), None)
    if header is None:
        return rows
    drop = {i for i, c in enumerate(header) if c == "train_seconds" or c.strip().startswith("Time ×")}
    return [[c for i, c in enumerate(r) if i not in drop] if len(r) == len(header) else r for r in rows]


def test_interrupted_experiment_resumes_to_the_same_results(sim_file: Path, table5_reference: Path,
                                                            tmp_path: Path, monkeypatch) -> None:
    from affectus.training.recipes.cmc import tasks

    original = tasks.Stage2Task.start_epoch
    calls = {"n": 0}

    def interrupt(self, epoch):
        if epoch == 2:
            calls["n"] += 1
            if calls["n"] == 3:  # the 3rd run, mid stage 2: its state.pt holds stage 2's first epoch
                raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(tasks.Stage2Task, "start_epoch", interrupt)
    out = tmp_path / "cut"
    args = ["experiment", "table5_ablation", "--out", str(out), "--data", str(sim_file), "--seeds", "2", *FAST]
    assert main(args) == 130
    runs = out / "runs"
    assert sorted(_mtimes(out)) == ["cmc__seed=1", "cmc__seed=2"]
    assert (runs / "w-o-plgm__seed=1" / "state.pt").exists()
    assert not (out / "results.csv").exists()
    before = _mtimes(out)
    monkeypatch.setattr(tasks.Stage2Task, "start_epoch", original)
    assert main(args) == 0
    after = _mtimes(out)
    assert len(after) == 14 and all(after[k] == v for k, v in before.items())  # finished runs not retrained
    assert not list(runs.glob("*/state.pt"))
    for name in ("results.csv", "results.md"):  # the same results; wall times (not results) left out
        assert _without_times(out / name) == _without_times(table5_reference / name), name
    # a finished experiment re-run trains nothing; changing a setting into the same OUT is refused
    summary = run_experiment("table5_ablation", out, data=str(sim_file), seeds=2, overrides=FAST_OVERRIDES,
                             threads=1, progress=False)
    assert summary["trained"] == 0 and summary["finished_before"] == 14 and _mtimes(out) == after
    with pytest.raises(AffectusError, match="another configuration"):
        run_experiment("table5_ablation", out, data=str(sim_file), seeds=2,
                       overrides={**FAST_OVERRIDES, "train.lr": 0.01}, threads=1, progress=False)


@pytest.mark.slow
def test_jobs_2_gives_the_same_results(sim_file: Path, table5_reference: Path, tmp_path: Path) -> None:
    """Two worker processes train the same runs as one process: identical per-run and mean/std lines.

    Two Table V rows keep it quick (spawned workers each import torch); the lines of those rows must
    equal the lines of the uninterrupted one-process reference."""
    spec = yaml.safe_load(find_spec("table5_ablation").read_text(encoding="utf-8"))
    spec["runs"] = [r for r in spec["runs"] if r["name"] in ("CMC", "w/o MCR")]
    path = tmp_path / "two_rows.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    out = tmp_path / "parallel"
    assert main(["experiment", str(path), "--out", str(out), "--data", str(sim_file), "--seeds", "2",
                 "--jobs", "2", *FAST]) == 0

    def lines(folder: Path) -> list[list[str]]:
        rows = _without_times(folder / "results.csv")
        return [rows[0]] + [r for r in rows[1:] if r[1] in ("cmc", "w-o-mcr")]

    assert lines(out) == lines(table5_reference)
    assert len(lines(out)) == 1 + 4 + 4
    # aggregate() alone rewrites the same files from the run directories
    before = (out / "results.md").read_text(encoding="utf-8")
    rows = aggregate(out)
    assert [r["row"] for r in rows] == ["CMC", "w/o MCR"] and all(r["n_seeds"] == 2 for r in rows)
    assert (out / "results.md").read_text(encoding="utf-8") == before


@pytest.mark.slow
def test_ray_local_trains_the_same_runs_and_a_killed_worker_resumes(sim_file: Path, table5_reference: Path,
                                                                    tmp_path: Path, monkeypatch) -> None:
    """`--ray local`: each run a Ray task. One run's worker process dies (os._exit, as when killed) in its
    second stage-2 epoch; Ray hands the task out again and the run resumes from its saved state. Every
    run's weights equal the one-process reference's, byte for byte, and so do results.csv's lines."""
    import importlib.util
    import os

    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray not installed (pip install 'affectus[ray]')")
    import affectus
    from affectus.utils import executors

    spec = yaml.safe_load(find_spec("table5_ablation").read_text(encoding="utf-8"))
    spec["runs"] = [r for r in spec["runs"] if r["name"] == "CMC"]  # 2 runs: Ray's start-up is most of the time
    path = tmp_path / "one_row.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    # Ray's workers are new processes: they must import this very affectus
    src = str(Path(affectus.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    marker, victim = tmp_path / "kill", "cmc__seed=2"

    class KillingRay(executors.RayExecutor):
        def run(self, fn, tasks, on_done):
            def task(*args):  # a closure: Ray ships it by value
                if args[4] == victim and os.path.exists(marker):
                    from affectus.training.recipes.cmc import tasks as cmc_tasks

                    original = cmc_tasks.Stage2Task.start_epoch

                    def dying(self, epoch):
                        if epoch == 2 and os.path.exists(marker):
                            os.remove(marker)
                            os._exit(1)
                        return original(self, epoch)

                    cmc_tasks.Stage2Task.start_epoch = dying
                return fn(*args)

            return super().run(task, tasks, on_done)

    monkeypatch.setattr(executors, "RayExecutor", KillingRay)
    marker.touch()
    out = tmp_path / "ray"
    assert main(["experiment", str(path), "--out", str(out), "--data", str(sim_file), "--seeds", "2",
                 "--ray", "local", "--jobs", "2", *FAST]) == 0
    assert not marker.exists()  # the victim's worker died, and the retry finished its run
    for run in sorted((out / "runs").iterdir()):
        ref = table5_reference / "runs" / run.name / "model.safetensors"
        assert (run / "model.safetensors").read_bytes() == ref.read_bytes(), run.name

    def lines(folder: Path) -> list[list[str]]:
        rows = _without_times(folder / "results.csv")
        return [rows[0]] + [r for r in rows[1:] if r[0] == "run" and r[1] == "cmc"]

    assert lines(out) == lines(table5_reference) and len(lines(out)) == 1 + 2


def test_modality_columns_and_retention_slopes(sim_file: Path, tmp_path: Path) -> None:
    spec = {"name": "retention", "seeds": 1, "runs": [{"name": "CMC"}, {"name": "CMC-GT", "variant": "cmc_gt"}],
            "grid": {"train.consistent_retention": [0.5, 1.0]},
            "report": {"slope_over": "train.consistent_retention"}}
    run_experiment(spec, tmp_path / "ret", data=str(sim_file), overrides=FAST_OVERRIDES, threads=1, progress=False)
    md = (tmp_path / "ret" / "results.md").read_text(encoding="utf-8")
    assert "| Run | train.consistent_retention |" in md and "D_msc slope" in md
    slope_rows = [x for x in md.split("## Slope")[1].splitlines() if x.startswith("| CMC")]
    assert len(slope_rows) == 2
    for line in slope_rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert all(c != "-" for c in cells[1:4]), line  # D_test / D_msc / D_msi slopes from 2 points

    unimodal = yaml.safe_load(find_spec("table6_unimodal").read_text(encoding="utf-8"))
    run_experiment(unimodal, tmp_path / "uni", data=str(sim_file), seeds=1, overrides=FAST_OVERRIDES, threads=1,
                   progress=False)
    md = (tmp_path / "uni" / "results.md").read_text(encoding="utf-8")
    assert "Audio Acc2" in md and "Vision Acc2" in md and "D_test Acc2" not in md


def test_data_edited_in_place_is_refused_on_resume(tmp_path: Path, capsys) -> None:
    """Experiments identify data by content too: edit the file, re-run, and the finished runs are not mixed in."""
    data = tmp_path / "data.pkl"
    write_pickle(generate(SynthConfig(n_train=40, n_valid=12, n_test=12, seq_lens={"text": 4, "audio": 6, "vision": 5},
                                      dims={"text": 12, "audio": 5, "vision": 7}, seed=3)), data)
    spec = {"name": "one", "seeds": 1, "runs": [{"name": "LF", "model": "late_fusion"}]}
    out = tmp_path / "exp"
    run_experiment(spec, out, data=str(data), overrides={"train.epochs": 1, "train.batch_size": 16}, threads=1,
                   progress=False)
    write_pickle(generate(SynthConfig(n_train=40, n_valid=12, n_test=12, seq_lens={"text": 4, "audio": 6, "vision": 5},
                                      dims={"text": 12, "audio": 5, "vision": 7}, seed=4)), data)  # same path, new content
    with pytest.raises(AffectusError, match="trained on another version of"):
        run_experiment(spec, out, data=str(data), overrides={"train.epochs": 1, "train.batch_size": 16}, threads=1,
                       progress=False)


COND_SPEC = {"name": "cond", "seeds": 1,
             "runs": [{"name": "LF", "model": "late_fusion"},
                      {"name": "CMC-avail", "variant": "cmc_avail", "overrides": {"model.layers": 1, "model.heads": 2}}],
             "report": {"columns": "conditions", "conditions": ["l", "a", "v", "la", "lv", "av", "lav"],
                        "drop_ratios": [0.3], "missing_rates": [0.0, 0.5, 1.0]}}
COND_FAST = {"train.epochs": 2, "train.patience": 1, "train.batch_size": 32}


@pytest.fixture(scope="module")
def condition_experiment(sim_file: Path, tmp_path_factory) -> Path:
    """Late fusion and CMC-avail, one seed, scored under the 7 availability conditions, a drop ratio and
    three missing rates."""
    out = tmp_path_factory.mktemp("cond") / "cond"
    run_experiment(COND_SPEC, out, data=str(sim_file), overrides=COND_FAST, threads=1, progress=False)
    return out


def test_condition_table_scores_every_run_under_the_same_masks(condition_experiment: Path, sim_file: Path,
                                                               tmp_path: Path) -> None:
    """report.conditions / drop_ratios: each finished run is also scored under every availability condition
    and MRMS drop ratio; results.md shows F1 per condition and the average over the conditions."""
    out = condition_experiment
    md = (out / "results.md").read_text(encoding="utf-8")
    assert ("| {l} F1 | {a} F1 | {v} F1 | {l,a} F1 | {l,v} F1 | {a,v} F1 | {l,a,v} F1 | p=0.3 F1 | r=0 F1 | r=0.5 F1 "
            "| r=1 F1 | Avg F1 | AUC F1 |") in md
    scores = {d.name: json.loads((d / "conditions.json").read_text()) for d in (out / "runs").iterdir()}
    assert all(len(s) == 11 for s in scores.values())
    for s in scores.values():  # r = 0 removes nothing: the complete data's score
        assert s["r=0"]["d_test"]["acc2"] == s["{l,a,v}"]["d_test"]["acc2"]
    for s in scores.values():
        # {l,a,v} is the complete data: the same score as the run's own evaluation
        assert s["{l,a,v}"]["d_test"]["n"] == 24
    lf = next(s for name, s in scores.items() if name.startswith("lf"))
    full = json.loads((out / "runs" / next(n for n in scores if n.startswith("lf")) / "metrics.json").read_text())
    assert lf["{l,a,v}"]["d_test"]["acc2"] == full["d_test"]["acc2"]
    bad = {**COND_SPEC, "report": {"columns": "conditions", "conditions": ["l", "x"]}}
    with pytest.raises(AffectusError, match="unknown modality 'x'"):
        run_experiment(bad, tmp_path / "bad", data=str(sim_file), overrides=COND_FAST, threads=1, progress=False)


def test_router_weights_per_condition_in_results_and_report(condition_experiment: Path) -> None:
    """A model with a router (CMC-avail) gets its mean router weight per modality under each availability
    condition: an absent modality weighs 0, the present ones sum to 1; late fusion has no router, no rows.
    results.md, results.csv and the HTML report show it."""
    from affectus.data.missing import CONDITIONS, condition_name
    from affectus.data.types import MODALITIES
    from affectus.report import build_report

    out = condition_experiment
    cmc_dir = next(d for d in (out / "runs").iterdir() if d.name.startswith("cmc-avail"))
    lf_dir = next(d for d in (out / "runs").iterdir() if d.name.startswith("lf"))
    assert json.loads((lf_dir / "router_conditions.json").read_text()) == {"weights": None}
    weights = json.loads((cmc_dir / "router_conditions.json").read_text())["weights"]
    assert set(weights) == {condition_name(c) for c in CONDITIONS}  # the file is written with sorted keys
    for present in CONDITIONS:
        w = weights[condition_name(present)]
        assert all(w[m] == 0.0 for m in MODALITIES if m not in present)
        assert sum(w[m] for m in present) == pytest.approx(1.0, abs=1e-5)
        assert all(w[m] > 0 for m in present)
    assert weights["{l}"]["text"] == pytest.approx(1.0)
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "## Router weight per availability condition" in md and "| Run | Condition | text | audio | vision |" in md
    assert "| CMC-avail | {a,v} | 0.00 | " in md and "| LF | {a,v} |" not in md.split("## Router weight")[1]
    lav = weights["{l,a,v}"]
    assert f"| CMC-avail | {{l,a,v}} | {lav['text']:.2f} | {lav['audio']:.2f} | {lav['vision']:.2f} |" in md
    header = next(csv.reader((out / "results.csv").read_text().splitlines()))
    assert "router.{a,v}.text" in header
    page = build_report(out, tensorboard=False).read_text()
    assert "Router weight per availability condition" in page
    section = re.sub(r"<[^>]+>", " ", page.split("Router weight per availability condition")[1]).split()
    # the conditions in CUMDF's order, {l} first; the full-data row holds the run's {l,a,v} weights
    assert section.index("{l}") < section.index("{a,v}") < section.index("{l,a,v}")
    at = section.index("{l,a,v}")
    assert section[at + 1:at + 4] == [f"{lav[m]:.2f}" for m in MODALITIES]


def test_report_shows_the_condition_table_and_curves(sim_file: Path, tmp_path: Path) -> None:
    from affectus.report import build_report

    spec = {"name": "cond", "seeds": 1, "runs": [{"name": "LF", "model": "late_fusion"}],
            "report": {"columns": "conditions", "conditions": ["l", "av", "lav"], "drop_ratios": [0.2, 0.5],
                       "missing_rates": [0.0, 0.5]}}
    out = tmp_path / "cond"
    run_experiment(spec, out, data=str(sim_file), overrides={"train.epochs": 1, "train.batch_size": 32}, threads=1,
                   progress=False)
    page = build_report(out, tensorboard=False).read_text()
    assert "Missing modalities" in page and "F1 per availability condition" in page
    assert "{a,v}" in page and "average" in page
    assert (out / "report" / "missing_p_sims.png").is_file() and (out / "report" / "missing_r_sims.png").is_file()
