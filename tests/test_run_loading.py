"""Loading a run folder that was damaged or edited by hand (issue 15, item 11): the weights' checksum is
checked before anything is built from run.json, a model_config that does not describe the saved weights
(other widths, a million layers, d = 2**20) is refused before its tensors are allocated, and run.json /
identity.json nested too deeply for Python's JSON decoder are one line, never a traceback.

One tiny CMC run is trained once per session (conftest.py) (1 epoch) and copied where a test edits it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from affectus.cli import main
from affectus.errors import AffectusError
from conftest import SMALL_FAST, one_error_line

NESTED = "[" * 100_000 + "]" * 100_000  # far deeper than the interpreter's recursion limit


def _edit_config(run: Path, **values) -> None:
    info = json.loads((run / "run.json").read_text())
    for key, value in values.items():
        if key.startswith("dims_"):
            info["model_config"]["dims"][key[5:]] = value
        else:
            info["model_config"][key] = value
    (run / "run.json").write_text(json.dumps(info))


@pytest.mark.parametrize(("values", "needle"), [
    # weights of another width: load_state_dict's size-mismatch traceback before
    ({"d": 16}, ("tensor(s) of another shape, first branches.text.encoder.proj.weight: (32, 6, 1) in the file, "
                 "(16, 6, 1) by the config")),
    ({"ff": 64}, "tensor(s) of another shape"),
    ({"dims_text": 60}, "(32, 6, 1) in the file, (32, 60, 1) by the config"),
    ({"layers": 2}, "missing"),  # a second layer the file has no weights for
    ({"d": 0}, "model.d = 0: expected a positive integer"),  # a ZeroDivisionError traceback before
    ({"d": -1}, "model.d = -1: expected a positive integer"),
    # tried to allocate 13 TB before; refused by the config's own cap (65,536) or the weights' size
    ({"d": 2 ** 20}, "d = 1048576"),
    ({"dims_text": 10 ** 12}, "dims.text = 1000000000000 is larger than"),
])
def test_a_model_config_that_does_not_describe_the_weights_is_one_line(run_copy: Path, tiny_file: Path, cli,
                                                                       values, needle) -> None:
    _edit_config(run_copy, **values)
    rc, _, err = cli("evaluate", run_copy, "--data", tiny_file)
    one_error_line(rc, err, str(run_copy), needle)


def test_weights_of_another_run_are_refused_by_shape(trained: Path, run_copy: Path, tiny_file: Path,
                                                     tmp_path: Path, cli) -> None:
    """Another run's model.safetensors with its checksum put in: it parses and passes the checksum, and is
    refused naming the first tensor whose shape differs."""
    import hashlib

    other = tmp_path / "wide"
    assert main(["train", "--data", str(tiny_file), "--out", str(other), *SMALL_FAST, "--set", "model.d=16"]) == 0
    shutil.copy(other / "model.safetensors", run_copy / "model.safetensors")
    info = json.loads((run_copy / "run.json").read_text())
    info["weights_sha256"] = hashlib.sha256((run_copy / "model.safetensors").read_bytes()).hexdigest()
    (run_copy / "run.json").write_text(json.dumps(info))
    rc, _, err = cli("evaluate", run_copy, "--data", tiny_file)
    one_error_line(rc, err, "model.safetensors does not match", "(16, 6, 1) in the file, (32, 6, 1) by the config")


def test_the_checksum_is_checked_before_anything_is_built(run_copy: Path, monkeypatch) -> None:
    """Damaged weights and a model_config asking for a billion layers: the checksum speaks first, and no
    model (not even an empty shell) is built."""
    from affectus.inference import predictor

    weights = run_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01
    weights.write_bytes(bytes(data))
    _edit_config(run_copy, layers=10 ** 9)

    def no_build(*args, **kwargs):
        raise AssertionError("a model was built before the weights' checksum was checked")

    monkeypatch.setattr(predictor, "create_model", no_build)
    with pytest.raises(AffectusError, match="sha256 differs"):
        predictor.load(run_copy)


def test_a_billion_layers_is_refused_before_any_module_is_made(run_copy: Path, monkeypatch) -> None:
    from affectus.inference import predictor

    _edit_config(run_copy, layers=10 ** 9)
    monkeypatch.setattr(predictor, "create_model", lambda *a, **k: pytest.fail("built a billion-layer model"))
    with pytest.raises(AffectusError, match="layers = 1000000000(: expected a positive integer up to| is larger than)"):
        predictor.load(run_copy)


def test_the_untouched_run_still_loads_and_keeps_the_callers_rng(run_copy: Path) -> None:
    import torch

    from affectus.inference.predictor import load

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    predictor = load(run_copy)
    assert torch.equal(torch.rand(3), expected)  # neither the meta shell nor the real one drew from it
    assert predictor.model_name == "cmc" and not any(p.is_meta for p in predictor.model.parameters())


def test_run_json_nested_too_deeply_is_one_line(run_copy: Path, tiny_file: Path, cli) -> None:
    (run_copy / "run.json").write_text(NESTED)
    rc, _, err = cli("evaluate", run_copy, "--data", tiny_file)
    one_error_line(rc, err, "run.json", "nested too deeply")
    info_tail = '{"format": "affectus-run/1", "x": ' + '{"a": ' * 50_000 + "1" + "}" * 50_000 + "}"
    (run_copy / "run.json").write_text(info_tail)
    rc, _, err = cli("predict", run_copy, tiny_file)
    one_error_line(rc, err, "run.json", "nested too deeply")


def test_identity_json_nested_too_deeply_is_one_line_on_resume(trained: Path, tiny_file: Path, tmp_path: Path,
                                                               cli) -> None:
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    (run / "identity.json").write_text(NESTED)
    rc, _, err = cli("train", "--data", tiny_file, "--out", run, "--resume", *SMALL_FAST)
    one_error_line(rc, err, "identity.json", "RecursionError")


def test_params_of_a_hand_edited_run_is_one_line_and_allocates_nothing(run_copy: Path, cli) -> None:
    """`affectus params RUN` counts on the meta device, after bounding the config by the weights file."""
    rc, out, err = cli("params", run_copy)
    assert rc == 0 and int(out) > 0, err
    count = int(out)
    _edit_config(run_copy, d=2 ** 20, heads=1)  # 13 TB of tensors on main
    rc, _, err = cli("params", run_copy)
    one_error_line(rc, err, "run.json: model_config: ", "d = 1048576")
    _edit_config(run_copy, d=16, heads=1)  # an honest-looking size: counted without any memory
    rc, out, err = cli("params", run_copy)
    assert rc == 0 and 0 < int(out) < count, err


def test_serve_refuses_a_run_whose_config_does_not_match_its_weights(run_copy: Path, cli, monkeypatch) -> None:
    """The service loads its run once, through the same loader: a bad run is one line before it listens."""
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("served a run that should be refused"))
    _edit_config(run_copy, d=16)
    rc, _, err = cli("serve", run_copy)
    one_error_line(rc, err, "model.safetensors does not match", "by the config")


def test_other_json_nested_too_deeply_is_one_line(tmp_path: Path, cli) -> None:
    """The same for an .npz data file's JSON header and an extract-dataset --config file."""
    import numpy as np

    data = tmp_path / "deep.npz"
    with open(data, "wb") as f:
        np.savez(f, __meta__=np.array(NESTED))
    rc, _, err = cli("inspect", data)
    one_error_line(rc, err, "deep.npz", "nested too deeply")
    (tmp_path / "label.csv").write_text("video_id,clip_id,text,label,mode\nv1,1,hi,0.5,train\n")
    (tmp_path / "deep.json").write_text(NESTED)
    rc, _, err = cli("extract-dataset", tmp_path, "--out", tmp_path / "x.npz", "--config", tmp_path / "deep.json")
    one_error_line(rc, err, "deep.json: not a readable JSON config")


# --------------------------------------------------------------- the weights checksum and a broken run.json

def test_run_json_records_the_weights_sha256(trained: Path) -> None:
    info = json.loads((trained / "run.json").read_text())
    assert info["weights_sha256"] == hashlib.sha256((trained / "model.safetensors").read_bytes()).hexdigest()


def test_a_corrupted_model_file_is_refused(run_copy: Path, tiny_file: Path, cli) -> None:
    weights = run_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01  # one flipped bit inside a tensor: the file still parses as safetensors
    weights.write_bytes(bytes(data))
    rc, _, err = cli("evaluate", run_copy, "--data", tiny_file)
    one_error_line(rc, err, str(weights), "sha256")


def test_a_run_without_a_checksum_still_loads(run_copy: Path) -> None:
    from affectus.inference.predictor import load

    info = json.loads((run_copy / "run.json").read_text())
    del info["weights_sha256"]  # a run written before the checksum existed
    (run_copy / "run.json").write_text(json.dumps(info))
    assert load(run_copy).info["model_name"] == "cmc"


@pytest.mark.parametrize("edit, needle", [
    (lambda info: [info], "expected a JSON object, got list"),
    (lambda info: {k: v for k, v in info.items() if k != "model_config"}, "'model_config' missing"),
    (lambda info: {**info, "model_config": "cmc"}, "'model_config' missing or not a dict"),
    (lambda info: {**info, "dims": {"text": 6}}, "dims"),
    (lambda info: {**info, "model_config": {**info["model_config"], "layers": "two"}}, "model_config"),
])
def test_a_broken_run_json_is_one_line(run_copy: Path, tiny_file: Path, cli, edit, needle) -> None:
    info = json.loads((run_copy / "run.json").read_text())
    (run_copy / "run.json").write_text(json.dumps(edit(info)))
    rc, _, err = cli("evaluate", run_copy, "--data", tiny_file)
    one_error_line(rc, err, "run.json", needle)


def test_run_json_that_is_not_utf8_is_one_line(run_copy: Path, tiny_file: Path, cli) -> None:
    (run_copy / "run.json").write_bytes(b"\xff\xfe{}")
    rc, _, err = cli("evaluate", run_copy, "--data", tiny_file)
    one_error_line(rc, err, "run.json", "not UTF-8")
