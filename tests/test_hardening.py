"""Hardening (issue 8): checksummed weights, directory locks, no silent overwrites, one-line errors for
bad paths / full disks / broken storage, Predictor input checks, --version, "did you mean", umask.

One tiny CMC run (1 epoch, 24 training samples) is trained once per module and copied where a test
damages it. Lock tests hold the lock in a second Python process, as a real concurrent writer would.
"""

from __future__ import annotations

import errno
import hashlib
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
from affectus.errors import AffectusError, suggest
from affectus.utils.io import lock_dir, write_json_atomic
from conftest import SMALL_SIM

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = SMALL_SIM  # the shared small simulation (conftest.py); its pickle is the tiny_file fixture
FAST = ["--set", "train.epochs=1", "--set", "train.patience=1", "--set", "model.layers=1", "--set", "model.heads=1",
        "--set", "train.batch_size=8", "--threads", "1", "--quiet"]


def one_error_line(rc: int, err: str, *fragments: str) -> str:
    """The failure contract: exit 2, exactly one `error:` line on stderr holding every fragment."""
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def trained(tiny_file: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--data", str(tiny_file), "--out", str(out), *FAST]) == 0
    return out


@pytest.fixture
def run_copy(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


# ------------------------------------------------------------------------- item 3: weights checksum

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


# ------------------------------------------------------------------------------ item 6: directory locks

HOLDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {src!r})
    from affectus.utils.io import lock_dir
    with lock_dir(sys.argv[1], shared=sys.argv[2] == "shared"):
        print("locked", flush=True)
        sys.stdin.read()  # hold until the test closes stdin (or kills us)
""")


@pytest.fixture
def holder():
    """Start a process that holds the lock on a directory: `holder(path, shared=False)`."""
    procs: list[subprocess.Popen] = []

    def start(path: Path, shared: bool = False) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(src=SRC), str(path),
                                 "shared" if shared else "exclusive"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_second_process_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path: Path, holder) -> None:
    proc = holder(tmp_path / "run")
    with pytest.raises(AffectusError, match="is being written by another process"), lock_dir(tmp_path / "run"):
        pass
    proc.kill()  # SIGKILL: no cleanup code runs; the kernel drops the flock
    proc.wait()
    with lock_dir(tmp_path / "run") as d:
        assert d == tmp_path / "run"


def test_lock_is_reentrant_within_a_process_and_released_after(tmp_path: Path) -> None:
    with lock_dir(tmp_path), lock_dir(tmp_path):  # the runner locks a run dir, then train_run does too
        pass
    proc = subprocess.run([sys.executable, "-c", HOLDER.format(src=SRC), str(tmp_path), "exclusive"],
                          input="", capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "locked", proc.stderr  # free again


def test_shared_holders_coexist_but_keep_a_writer_out(tmp_path: Path, holder) -> None:
    holder(tmp_path, shared=True)
    with lock_dir(tmp_path, shared=True):  # another sweep worker of the same study
        pass
    with pytest.raises(AffectusError, match="another process"), lock_dir(tmp_path):
        pass


def test_experiment_refuses_a_directory_another_process_writes(tmp_path: Path, tiny_file: Path, holder, cli) -> None:
    out = tmp_path / "exp"
    holder(out)
    rc, _, err = cli("experiment", "table5_ablation", "--out", out, "--data", tiny_file, "--quiet")
    one_error_line(rc, err, str(out), "being written by another process")
    assert not (out / "experiment.json").exists()


def test_sweep_refuses_a_directory_another_process_writes(tmp_path: Path, tiny_file: Path, holder, cli) -> None:
    out = tmp_path / "sweep"
    holder(out)
    rc, _, err = cli("sweep", "cmc_grid", "--out", out, "--data", tiny_file, "--quiet", "--trials", "1")
    one_error_line(rc, err, str(out), "being written by another process")
    assert not (out / "study.db").exists()


def test_one_study_per_sweep_directory(tmp_path: Path) -> None:
    from affectus.experiments.sweep import CLAIM_FILE, claim_out_dir

    claim_out_dir(tmp_path, "a")
    claim_out_dir(tmp_path, "a")  # a second worker of the same study joins
    assert json.loads((tmp_path / CLAIM_FILE).read_text()) == {"study": "a"}
    with pytest.raises(AffectusError, match="holds the sweep of study 'a'"):
        claim_out_dir(tmp_path, "b")


# ----------------------------------------------------------------------- item 8: no silent overwrites

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


# ------------------------------------------------------------------ item 9: one line, never a traceback

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


# ---------------------------------------------------------------------------- item 11: Predictor input

@pytest.fixture(scope="module")
def predictor(trained: Path):
    from affectus.inference.predictor import load

    return load(trained)


def _arrays(n: int = 3, **changes) -> dict:
    rng = np.random.default_rng(0)
    arrays = {m: rng.standard_normal((n, TINY.seq_lens[m], TINY.dims[m])).astype(np.float32)
              for m in ("text", "audio", "vision")}
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


@pytest.mark.parametrize("data, needle", [
    (_arrays(audio_lengths=np.array([2, -1, 3])), "audio_lengths: length -1 outside [0, 6]"),
    (_arrays(vision_lengths=np.array([2, 9, 3])), "vision_lengths: length 9 outside [0, 5]"),
    (_arrays(audio_lengths=np.array([2, 2**64 - 1, 3], np.uint64)), "length 18446744073709551615 outside"),
    (_arrays(audio_lengths=np.array([2.0, 2.5, 3.0])), "audio_lengths: expected whole numbers"),
    (_arrays(text_lengths=np.array([1, 2])), "text_lengths: expected shape (3,)"),
    (_arrays(text_lengths=np.array(["1", "2", "3"])), "text_lengths: expected numbers"),
    (_arrays(0), "empty batch"),
    ([np.zeros((3, 4, 6))], "expected a Split, a Batch or a dict of arrays"),
    (_arrays(audio=np.full((3, 6, 5), "0.5")), "audio: expected numbers, got dtype <U3"),
    (_arrays(vision=None), "missing array 'vision'"),
    (_arrays(vison=np.zeros((3, 5, 7))), "unknown array 'vison' (did you mean 'vision'?)"),
    (_arrays(audio=np.zeros((2, 6, 5), np.float32)), "different numbers of samples (text 3, audio 2, vision 3)"),
    (_arrays(text=np.zeros((3, 0, 6), np.float32)), "text: sequence length L = 0"),
    (_arrays(text=np.zeros((3, 4, 7), np.float32)), "text: expected shape (N, L, 6)"),
    (_arrays(audio=np.full((3, 6, 5), 1e300)), "audio: contains NaN or infinite values"),
])
def test_predict_refuses_bad_input_in_one_message(predictor, data, needle) -> None:
    with pytest.raises(AffectusError) as info:
        predictor.predict(data)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_predict_accepts_unsigned_and_whole_float_lengths(predictor) -> None:
    a = predictor.predict(_arrays(audio_lengths=np.array([2, 6, 3], np.uint8)))
    b = predictor.predict(_arrays(audio_lengths=np.array([2.0, 6.0, 3.0])))
    np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=1e-6)
    assert a.classes.shape == (3,)


def test_non_finite_outputs_raise_instead_of_class_0(run_copy: Path) -> None:
    import torch

    from affectus.inference.predictor import load

    pred = load(run_copy)
    with torch.no_grad():
        for p in pred.model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(AffectusError, match="NaN/inf outputs for 3 sample"):
        pred.predict(_arrays())


# ---------------------------------------------------------------- item 12: warnings after the error line

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


# --------------------------------------------------------------------------------- item 14: Optuna

def test_optuna_is_a_core_dependency() -> None:
    import tomllib

    project = tomllib.loads((Path(SRC).parent / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("optuna") for d in project["dependencies"])


def test_sweep_without_optuna_is_one_line(tmp_path: Path, cli, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
    rc, _, err = cli("sweep", "cmc_grid", "--out", tmp_path / "s")
    one_error_line(rc, err, "needs Optuna", "pip install optuna")


# ------------------------------------------------------------------ item 17: --version, did you mean

def test_version(cli) -> None:
    from affectus import __version__

    rc, out, _ = cli("--version")
    assert rc == 0 and out.strip() == f"affectus {__version__}"


def test_suggest() -> None:
    assert suggest("mosii", ["mosi", "mosei", "sims"]) == " (did you mean 'mosi'?)"
    assert suggest("CMC", ["cmc", "tfn"]) == " (did you mean 'cmc'?)"
    assert suggest("zzz", ["cmc", "tfn"]) == ""


@pytest.mark.parametrize("args, needle", [
    (["params", "--preset", "mosii"], "unknown preset 'mosii' (did you mean 'mosi'?)"),
    (["params", "--preset", "mosi", "--model", "late_fusoin"], "(did you mean 'late_fusion'?)"),
])
def test_did_you_mean_in_the_cli(cli, args, needle) -> None:
    rc, _, err = cli(*args)
    one_error_line(rc, err, needle)


def test_did_you_mean_for_sweep_spec_keys(tmp_path: Path) -> None:
    from affectus.experiments.sweep import parse_spec

    with pytest.raises(AffectusError, match=r"unknown key 'sapce'.*\(did you mean 'space'\?\)"):
        parse_spec({"name": "x", "sapce": {}})


@pytest.mark.parametrize("spec, needle", [
    ({"runs": [{"name": "a", "variant": "wo_pfn"}]}, ("unknown variant 'wo_pfn'", "(did you mean 'wo_pfm'?)")),
    ({"runs": [{"name": "a", "modle": "cmc"}]}, ("unknown key 'modle'", "(did you mean 'model'?)")),
    ({"preset": "sim", "runs": [{"name": "a"}]}, ("unknown preset 'sim'", "(did you mean 'sims'?)")),
    ({"runs": [{"name": "a", "model": "tfm"}]}, ("unknown model 'tfm'", "(did you mean 'tfn'?)")),
])
def test_did_you_mean_in_experiment_specs(spec, needle) -> None:
    from affectus.experiments.spec import load_spec

    with pytest.raises(AffectusError) as info:
        load_spec({"name": "x", **spec})
    assert all(part in str(info.value) for part in needle)


# -------------------------------------------------------------------------------------- item 20: umask

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == mode


# ---------------------------------------------------------------------- item 18: per-sample predictions

def test_evaluate_writes_per_sample_predictions(trained: Path, tiny_file: Path, tmp_path: Path, cli) -> None:
    import csv

    path = tmp_path / "pred.csv"
    rc, out, err = cli("evaluate", trained, "--data", tiny_file, "--json", "--predictions", path)
    assert rc == 0, err
    metrics = json.loads(out)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == TINY.n_test and rows[0]["id"].startswith("synth-test")
    for r in rows:
        assert abs(sum(float(r[f"p_{c}"]) for c in ("negative", "neutral", "positive")) - 1) < 1e-4
        assert r["label_class"] == ("negative" if float(r["label"]) < 0 else
                                    "neutral" if float(r["label"]) == 0 else "positive")
    # the CSV's verdicts are the ones the metrics were computed from: its 3-class accuracy is acc3
    acc3 = 100 * np.mean([r["predicted"] == r["label_class"] for r in rows])
    assert acc3 == pytest.approx(metrics["d_test"]["acc3"])
    rc, _, err = cli("evaluate", trained, "--data", tiny_file, "--predictions", path)
    one_error_line(rc, err, str(path), "--overwrite")
