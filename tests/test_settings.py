"""The strict YAML loader (utils/strict_yaml.py) and invalid settings refused up front.

Every invalid setting ends in one `error:` line naming the key, exit code 2, and nothing written: through
`affectus train --set`, through a config file (with its line), and through an experiment spec (with the
line of the override).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from affectus.cli import main
from affectus.data.mmsa import write_pickle
from affectus.data.synthetic import SynthConfig, generate
from affectus.errors import AffectusError
from affectus.utils.strict_yaml import Strict, check_value, read_yaml, validate, yaml_value

# (model, KEY=VALUE as typed after --set); the key is what the error line must name
INVALID = [
    ("cmc", "model.heads=3"),  # 3 does not divide d = 32
    ("cmc", "model.d=0"),
    ("cmc", "model.layers=0"),
    ("cmc", "model.heads=-4"),
    ("cmc", "model.output_dropout=1.0"),
    ("cmc", "model.attn_dropout=-0.1"),
    ("cmc", "recipe.ema_momentum=[0.8, 1.5, 0.6]"),
    ("cmc", "recipe.label_momentum=[-0.1, 0.99, 0.99]"),
    ("cmc", "model.router_topk=0"),
    ("cmc", "model.router_topk=4"),
    ("cmc", "model.padding=zeros"),
    ("cmc", "train.lr=-0.001"),
    ("cmc", "train.lr=.nan"),
    ("cmc", "model.tau=0"),
    ("cmc", "recipe.supcon_tau=0.0"),
    ("cmc", "train.seed=-1"),
    ("cmc", "train.seed=4294967296"),
    ("cmc", "train.seed=1.5"),
    ("cmc", "train.device=tpu"),
    ("cmc", "train.threads=-1"),
    ("mult", "model.heads=5"),
    ("mult", "model.embed_dropout=1.5"),
    ("late_fusion", "model.dropout=1.0"),
    ("ef_lstm", "model.layers=0"),
    ("tfn", "model.post_fusion_dropout=-0.5"),
    ("self_mm", "model.text_encoder=bert"),
]


def _tiny_config() -> SynthConfig:
    return SynthConfig(n_train=24, n_valid=8, n_test=8, seq_lens={"text": 3, "audio": 4, "vision": 3},
                       dims={"text": 6, "audio": 3, "vision": 4}, seed=1)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sim") / "tiny.pkl"
    write_pickle(generate(_tiny_config()), path)
    return path


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("model, setting", INVALID)
def test_invalid_setting_refused_by_train(data_file: Path, tmp_path: Path, capsys, model: str, setting: str) -> None:
    out = tmp_path / "run"
    assert main(["train", "--data", str(data_file), "--out", str(out), "--model", model, "--set", setting,
                 "--quiet"]) == 2
    line = _one_error(capsys)
    key = setting.split("=")[0]
    assert f"--set: {key} = " in line, line
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("model, setting", INVALID)
def test_invalid_setting_refused_by_experiment_spec(data_file: Path, tmp_path: Path, capsys, model: str,
                                                    setting: str) -> None:
    key, value = setting.split("=", 1)
    if key == "train.seed":  # a spec's seeds come from `seeds:`, never from an override
        text, needle = f"name: bad\nseeds: [{value}]\nruns:\n  - name: row\n", ":2: seeds"
    else:
        text = f"name: bad\nruns:\n  - name: row\n    model: {model}\n    overrides:\n      {key}: {value}\n"
        # the override's own line; threads are the runner's (--threads / --jobs)
        needle = f":6: '{key}' is set by the runner" if key == "train.threads" else f":6: run 'row': {key} = "
    spec = tmp_path / "spec.yaml"
    spec.write_text(text, encoding="utf-8")
    out = tmp_path / "exp"
    assert main(["experiment", str(spec), "--out", str(out), "--data", str(data_file), "--quiet"]) == 2
    line = _one_error(capsys)
    assert f"{spec}{needle}" in line, line
    assert not out.exists()


@pytest.mark.parametrize("option, value, key", [("--device", "tpu0", "train.device"), ("--threads", "-2", "train.threads"),
                                                ("--seed", "-5", "train.seed")])
def test_invalid_cli_options_refused(data_file: Path, tmp_path: Path, capsys, option: str, value: str,
                                     key: str) -> None:
    out = tmp_path / "run"
    assert main(["train", "--data", str(data_file), "--out", str(out), option, value, "--quiet"]) == 2
    assert f"{key} = " in _one_error(capsys)
    assert not out.exists()


def test_heads_not_dividing_d_points_at_the_line_that_set_d(data_file: Path, tmp_path: Path, capsys) -> None:
    """Heads keep their default 4 and a grid sets d = 30: the error names heads and points at d's line."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("runs:\n  - {name: row}\ngrid:\n  model.d: [32,\n            30]\n", encoding="utf-8")
    assert main(["experiment", str(spec), "--out", str(tmp_path / "exp"), "--data", str(data_file), "--quiet"]) == 2
    assert f"{spec}:5: run 'row': model.heads = 4: expected a divisor of model.d = 30" in _one_error(capsys)


@pytest.mark.parametrize("text, needle", [
    ("model:\n  d: 32\n  heads: 3\n", ":3: model.heads = 3: expected a divisor of model.d = 32"),
    ("train:\n  lr: 1e-3\n  epochs: many\n", ":3: train.epochs = 'many': expected an integer"),
    ("model:\n  layrs: 2\n", ":2: unknown config key 'model.layrs' for model 'cmc' (did you mean 'model.layers'?)"),
    ("train: 3\n", ":1: train: expected a mapping of train.* keys"),
    ("lr: 0.1\nlr: 0.2\n", ":2: duplicate key 'lr'"),
    ("train: {lr: [}\n", ":1: not valid YAML"),
])
def test_config_file_errors_name_the_line(data_file: Path, tmp_path: Path, capsys, text: str, needle: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data_file), "--out", str(out), "--config", str(config), "--quiet"]) == 2
    line = _one_error(capsys)
    assert f"{config}{needle}" in line, line
    assert not out.exists()


def test_config_file_not_utf8(data_file: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(b"train:\n  lr: \xff\xfe\n")
    assert main(["train", "--data", str(data_file), "--out", str(tmp_path / "run"), "--config", str(config)]) == 2
    assert f"{config}: not UTF-8 text" in _one_error(capsys)


# ------------------------------------------------------------------------------- the loader itself


class _Inner(Strict):
    size: int
    rate: float = 0.5


class _Outer(Strict):
    name: str
    seeds: int | list[int] = 1
    parts: dict[str, _Inner] = Field(default_factory=dict)


def test_lines_types_and_suggestions(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"

    def error(text: str) -> str:
        path.write_text(text, encoding="utf-8")
        with pytest.raises(AffectusError) as info:
            validate(_Outer, read_yaml(path), what="the file")
        return str(info.value)

    assert error("name: a\nparts:\n  p:\n    size: true\n") == f"{path}:4: parts.p.size = true: expected an integer"
    assert error("name: a\nparts:\n  p: {size: 1, rate: '0.1'}\n") == f"{path}:3: parts.p.rate = '0.1': expected a number"
    assert error("name: a\nparts:\n  p: {sise: 1}\n") == (f"{path}:3: unknown key 'sise' in parts.p: expected one of "
                                                          "size, rate (did you mean 'size'?)")
    assert error("nme: a\n") == f"{path}:1: unknown key 'nme' in the file: expected one of name, seeds, parts (did you mean 'name'?)"
    # a union speaks through the member that got furthest: a bad list item, not "expected an integer"
    assert error("name: a\nseeds:\n  - 1\n  - two\n") == f"{path}:4: seeds[1] = 'two': expected an integer"
    assert error("name: a\nseeds: x\n") == f"{path}:2: seeds = 'x': expected an integer or a list"
    assert error("name: 3\n") == f"{path}:1: name = 3: expected a string"
    assert error("- 1\n") == f"{path}:1: expected a mapping of the file's keys, got [1]"
    ok = validate(_Outer, read_yaml(path, "name: a\nparts: {p: {size: 2, rate: 1}}\n"))
    assert ok.parts["p"].rate == 1.0 and isinstance(ok.parts["p"].rate, float) and isinstance(ok, BaseModel)


def test_yaml_reading() -> None:
    assert yaml_value("1e-3") == 0.001 and yaml_value("5E4") == 50000.0  # YAML 1.2 numbers
    assert yaml_value("1.5e-3") == 0.0015 and yaml_value("1e3x") == "1e3x" and yaml_value("12") == 12
    assert math.isnan(yaml_value(".nan")) and yaml_value("true") is True and yaml_value("") == ""
    doc = read_yaml("mem", "a:\n  b: [1,\n    2]\n")
    assert doc.where(("a", "b", 1)) == "mem:3" and doc.where(("a", "zz")) == "mem:1" and doc.where(()) == "mem:1"
    with pytest.raises(AffectusError, match=re.escape("mem:2: duplicate key 'a'")):
        read_yaml("mem", "a: 1\na: 2\n")
    with pytest.raises(AffectusError, match="mem:1: a key must be a plain value"):
        read_yaml("mem", "? [1, 2]\n: 3\n")


def test_check_value_against_a_dataclass_field() -> None:
    from affectus.models.cmc import CMCConfig
    from affectus.training.config import TrainConfig

    assert check_value(TrainConfig, "lr", 1, "train.lr") == 1.0 and isinstance(check_value(TrainConfig, "lr", 1, "x"),
                                                                                 float)
    assert check_value(CMCConfig, "bert_path", None, "model.bert_path") is None
    with pytest.raises(AffectusError, match=r"^train\.amp = 1: expected true or false$"):
        check_value(TrainConfig, "amp", 1, "train.amp")
    with pytest.raises(AffectusError, match=r"^model\.dims\.audio = 2\.5: expected an integer$"):
        check_value(CMCConfig, "dims", {"text": 1, "audio": 2.5, "vision": 3}, "model.dims")


def test_variants_file_is_read_strictly() -> None:
    from affectus.models.variants import read_variants

    text = "base:\n  description: the model\n  overrides: {model.d: 16}\nsmall:\n  description: small\n  overide: {}\n"
    with pytest.raises(AffectusError, match=re.escape("v.yaml:6: unknown key 'overide' in variant small: expected one of "
                                                      "description, overrides, preset_model_key, model (did you mean 'overrides'?)")):
        read_variants("v.yaml", text)
    good = read_variants("v.yaml", text.replace("overide", "overrides"))
    assert list(good) == ["base", "small"] and good["base"] == {"description": "the model", "overrides": {"model.d": 16}}
