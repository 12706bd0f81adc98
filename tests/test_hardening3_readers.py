"""Hardening, round 3 (issue 15): files, configs and secrets.

Items 6 (YAML aliases), 7 (shared references in a pickle, .npz members), 8 (storage URL secrets), 12 (CSV
cells, grid size, BUILD on a global, Ctrl-C) and the item-11 cases in these readers (YAML errors out of
the try block, `!!python/name` and `model.d=2**31` through --set, `synth:...?scale=1e300`, a PostgreSQL
URL with a bad port).

The memory tests run the CLI in a child process that reports its own peak RSS (and stops itself at a
cap, so that a regression fails the test instead of eating the machine), against a baseline child
that fails early on the same command.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from affectus.cli import main
from affectus.data.mmsa import write_pickle
from affectus.data.safe_pickle import UnsafePickleError, loads_untrusted
from affectus.data.synthetic import SynthConfig, generate
from affectus.errors import AffectusError
from conftest import SMALL_SIM, one_error_line

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = SMALL_SIM  # the shared small simulation (conftest.py); its pickle is the tiny_file fixture
FAST = ["--set", "train.epochs=1", "--set", "train.patience=1", "--set", "model.layers=1", "--set", "model.heads=1",
        "--set", "train.batch_size=8", "--threads", "1", "--quiet"]
MB = 2**20


# A child `affectus` that writes its peak RSS (bytes) to a file and stops itself past a cap.
_MEASURED = textwrap.dedent(
    """
    import os, resource, sys, threading, time
    cap, report, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]

    def watch():
        while True:
            with open("/proc/self/status") as f:
                rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
            if rss > cap:
                os.write(2, b"rss cap reached\\n")
                os._exit(137)
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    from affectus.cli import main
    rc = main(argv)
    with open(report, "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
    sys.exit(rc)
    """
)


def measured(tmp_path: Path, *args, cap: int = 3 * 2**30) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in bytes) of `affectus ARGS` in a child process."""
    report = tmp_path / f"rss-{len(list(tmp_path.glob('rss-*')))}.txt"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _MEASURED, str(cap), str(report), *map(str, args)],
                          check=False, capture_output=True, text=True, env=env, timeout=300)
    peak = int(report.read_text()) if report.exists() else cap
    return proc.returncode, proc.stderr, peak


# --------------------------------------------------------------------------- item 6: YAML aliases

BOMB = "".join(f"{k}: &{k} [{', '.join([f'*{p}'] * 9)}]\n" for p, k in zip("abcdefgh", "bcdefghi"))
BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + BOMB  # 9**9 leaves


@pytest.mark.slow
def test_a_yaml_alias_bomb_is_one_line_in_bounded_memory(tmp_path: Path, tiny_file: Path) -> None:
    bomb, plain = tmp_path / "bomb.yaml", tmp_path / "plain.yaml"
    bomb.write_text(BOMB)
    plain.write_text("train:\n  epochz: 1\n")  # fails at the same point, without aliases: the baseline
    assert len(BOMB) < 500
    rc, err, base = measured(tmp_path, "train", "--data", tiny_file, "--config", plain, "--out", tmp_path / "r0")
    one_error_line(rc, err, "epochz")
    rc, err, peak = measured(tmp_path, "train", "--data", tiny_file, "--config", bomb, "--out", tmp_path / "r1")
    one_error_line(rc, err, str(bomb), "aliases")
    assert peak - base < 300 * MB, (peak, base)
    assert not (tmp_path / "r1").exists()


def test_alias_budget_in_specs_and_set_values(tmp_path: Path, tiny_file: Path, cli) -> None:
    from affectus.utils.strict_yaml import ALIAS_BUDGET, read_yaml

    # a few anchors reused, as a spec shares a block of settings, still read
    doc = read_yaml("spec", "base: &b {lr: 0.001, epochs: 3}\nruns: [*b, *b, *b]\n")
    assert doc.data["runs"][2] == {"lr": 0.001, "epochs": 3}
    wide = "a: &a [" + ", ".join(["1"] * 200) + "]\nb: [" + ", ".join(["*a"] * (ALIAS_BUDGET // 200 + 1)) + "]\n"
    with pytest.raises(AffectusError, match="aliases repeat more than"):
        read_yaml("spec", wide)
    spec = tmp_path / "sweep.yaml"
    spec.write_text(BOMB + "space: {train.lr: [0.1]}\n")
    rc, _, err = cli("sweep", spec, "--out", tmp_path / "s")
    one_error_line(rc, err, "aliases")
    assert not (tmp_path / "s").exists()
    # --set reads its value with the same loader, so the same budget (and a recursive alias) holds
    rc, _, err = cli("train", "--data", tiny_file, "--out", tmp_path / "o", "--set", "x=" + BOMB.replace("\n", ", ").join("{}"))
    one_error_line(rc, err, "--set x")
    rc, _, err = cli("train", "--data", tiny_file, "--out", tmp_path / "o", "--set", "x=&b [*b]")
    one_error_line(rc, err, "--set x")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value, needle", [
    ("!!python/name:os.system", "python/name"),
    ("!!python/object/apply:os.system [echo]", "python/object"),  # a tag on a list, not a scalar
    ("!!set {a: null}", "set"),
    ("2001-13-45", "month"),  # a timestamp SafeLoader cannot build (a ValueError in PyYAML)
])
def test_bad_yaml_values_through_set_are_one_line(tmp_path: Path, tiny_file: Path, cli, value: str,
                                                  needle: str) -> None:
    rc, _, err = cli("train", "--data", tiny_file, "--out", tmp_path / "o", "--set", f"x={value}")
    one_error_line(rc, err, "--set x", needle)
    assert not (tmp_path / "o").exists()


def test_yaml_that_fails_while_building_values_is_one_line_with_its_line(tmp_path: Path, tiny_file: Path, cli) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  lr: 0.001\n  when: 2001-13-45\n")
    rc, _, err = cli("train", "--data", tiny_file, "--config", config, "--out", tmp_path / "o")
    one_error_line(rc, err, str(config), "month")
    config.write_text("train:\n  lr: !!python/name:os.system\n")
    rc, _, err = cli("train", "--data", tiny_file, "--config", config, "--out", tmp_path / "o")
    one_error_line(rc, err, f"{config}:2", "python/name")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------- item 7: shared references in a pickle

def _with(raw: dict, split: str, key: str, value) -> dict:
    raw = {s: dict(d) for s, d in raw.items()}
    raw[split][key] = value
    return raw


@pytest.mark.slow
def test_a_shared_reference_pickle_is_one_line_in_bounded_memory(tmp_path: Path) -> None:
    raw = generate(TINY)
    row = [1] * 400
    rows = [row] * 400
    path = tmp_path / "cube.pkl"  # 400 references to 400 references to one row: a (400, 400, 400) array
    path.write_bytes(pickle.dumps(_with(raw, "train", "text", [rows] * 400), protocol=4))
    assert path.stat().st_size < 50_000
    refused = tmp_path / "refused.pkl"  # refused at once, by name: the baseline
    refused.write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    rc, err, base = measured(tmp_path, "inspect", refused)
    one_error_line(rc, err, "os.system")
    rc, err, peak = measured(tmp_path, "inspect", path)
    one_error_line(rc, err, str(path), "shared references")
    assert peak - base < 300 * MB, (peak, base)


def test_convert_refuses_one_string_shared_by_every_row(tmp_path: Path, cli) -> None:
    raw = generate(SynthConfig(n_train=100, n_valid=4, n_test=4, seq_lens={"text": 2, "audio": 2, "vision": 2},
                               dims={"text": 2, "audio": 2, "vision": 2}, seed=1))
    text = "x" * 1_000_000
    path = tmp_path / "shared.pkl"
    path.write_bytes(pickle.dumps(_with(raw, "train", "raw_text", [text] * 100), protocol=4))
    out = tmp_path / "out.npz"
    rc, _, err = cli("convert", path, "--out", out)
    one_error_line(rc, err, "shared references")
    assert not out.exists()
    # the same text written out once per row is no sharing: a 100 MB file of 100 MB of text is read
    # (counted here directly: at 4 bytes a character, what the .npz form stores)
    assert loads_untrusted(pickle.dumps(["y" * 1000 + str(i) for i in range(100)]))[99].endswith("99")


def test_the_shared_limit_counts_every_use_and_can_be_raised(monkeypatch) -> None:
    from affectus.data import safe_pickle

    blob = np.zeros(1000, dtype=np.float64)  # 8,000 bytes
    data = pickle.dumps([blob] * 11, protocol=4)  # 10 repeated uses: 80,000 bytes
    assert len(loads_untrusted(data, shared_bytes=80_000)) == 11
    with pytest.raises(UnsafePickleError, match="shared references"):
        loads_untrusted(data, shared_bytes=79_999)
    # the default: max(64 MiB, the file's size); the environment variable overrides it
    assert safe_pickle.shared_limit(10) == 64 * MB and safe_pickle.shared_limit(2**33) == 2**33
    monkeypatch.setenv("AFFECTUS_PICKLE_SHARED_LIMIT", "1K")
    assert safe_pickle.shared_limit(10) == 1024
    with pytest.raises(UnsafePickleError, match="shared references"):
        loads_untrusted(pickle.dumps(["z" * 200] * 3))  # 2 repeats of 800 bytes
    monkeypatch.setenv("AFFECTUS_PICKLE_SHARED_LIMIT", "lots")
    with pytest.raises(AffectusError, match="AFFECTUS_PICKLE_SHARED_LIMIT"):
        safe_pickle.shared_limit(10)


def test_an_npz_whose_members_unpack_far_past_the_file_is_refused(tmp_path: Path, tiny_file: Path, cli) -> None:
    good = tmp_path / "good.npz"
    assert cli("convert", tiny_file, "--out", good)[0] == 0
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        pad = zipfile.ZipInfo("pad.npy")
        pad.compress_type = zipfile.ZIP_DEFLATED
        with dst.open(pad, "w") as f:  # 200 MB of zeros, deflated to ~200 KB
            for _ in range(200):
                f.write(bytes(MB))
    assert bomb.stat().st_size < 5 * MB
    rc, _, err = cli("inspect", bomb)
    one_error_line(rc, err, str(bomb), "unpack to")


# ------------------------------------------------------------------------- item 8: storage URL secrets

@pytest.mark.parametrize("url, shown", [
    ("postgresql://u:s3cretpw@db.example/affect", "postgresql://u:***@db.example/affect"),
    ("postgresql://u@db.example/affect?password=s3cretpw", "postgresql://u@db.example/affect?password=***"),
    ("postgresql://db.example/affect?user=u&sslpassword=s3cretpw&application_name=a",
     "postgresql://db.example/affect?user=u&sslpassword=***&application_name=a"),
    ("postgresql://u:p@s3cretpw@db.example/affect", "postgresql://..."),  # a second @: which part is which?
    ("postgresql://u:s3cretpw@db.example:notaport/affect", "postgresql://..."),
])
def test_every_credential_form_is_masked(url: str, shown: str) -> None:
    from affectus.experiments.sweep import redact

    assert redact(url) == shown
    assert "s3cretpw" not in redact(url)


@pytest.mark.parametrize("url, needle", [
    ("postgresql://u:s3cretpw@localhost:notaport/db", "not a database URL"),
    ("postgresql://u:p@s3cretpw@localhost/db", "%40"),
])
def test_a_storage_url_that_cannot_work_is_one_line_and_writes_nothing(tmp_path: Path, tiny_file: Path, cli,
                                                                        url: str, needle: str) -> None:
    out = tmp_path / "s"
    rc, _, err = cli("sweep", "cmc_grid", "--out", out, "--data", tiny_file, "--storage", url, "--trials", "1")
    line = one_error_line(rc, err, "--storage", needle)
    assert "s3cretpw" not in line
    assert not out.exists()


def test_a_query_password_never_reaches_the_terminal_or_sweep_json(tmp_path: Path, tiny_file: Path, cli,
                                                                 monkeypatch) -> None:
    from affectus.experiments import sweep

    url = "postgresql://u@127.0.0.1:1/db?password=s3cretpw"
    rc, _, err = cli("sweep", "cmc_grid", "--out", tmp_path / "s", "--data", tiny_file, "--storage", url,
                     "--trials", "1")
    line = one_error_line(rc, err, "--storage", "password=***")
    assert "s3cretpw" not in line
    assert not (tmp_path / "s" / "sweep-study.json").exists()  # a failed start claims nothing
    # the report saved as sweep.json names the storage through the same mask

    class Study:
        study_name = "x"

        @staticmethod
        def get_trials(deepcopy=False):
            return []

    spec = sweep.parse_spec({"space": {"train.lr": [0.1]}})
    report = sweep.build_report(Study, spec, "acc", url)
    assert "s3cretpw" not in json.dumps(report) and report["storage"].endswith("password=***")


def test_a_driver_message_that_quotes_the_password_is_scrubbed() -> None:
    import sqlalchemy.exc

    from affectus.experiments.sweep import storage_errors

    url = "postgresql://u:s3cretpw@localhost/db"
    with pytest.raises(AffectusError) as caught, storage_errors(url):
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("bad login u:s3cretpw@localhost"))
    assert "s3cretpw" not in str(caught.value) and "u:***@localhost" in str(caught.value)


# ----------------------------------------------------------------------------------- item 12: small

@pytest.fixture(scope="module")
def formula_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny run trained on data whose ids and transcripts look like spreadsheet formulas."""
    raw = generate(TINY)
    for split, d in raw.items():
        d["id"] = [("=HYPERLINK(\"http://x\")" if i == 0 else f"+{split}{i}" if i == 1 else f"@{split}{i}")
                   for i in range(len(d["id"]))]
        d["raw_text"] = ["-1+1" if i % 2 else "'quoted" for i in range(len(d["raw_text"]))]
    folder = tmp_path_factory.mktemp("formula")
    data = folder / "formula.pkl"
    write_pickle(raw, data)
    out = folder / "run"
    assert main(["train", "--data", str(data), "--out", str(out), *FAST]) == 0
    return data, out


def test_csv_cells_from_data_are_never_formulas(formula_run, tmp_path: Path, cli) -> None:
    from affectus.utils.csv_cells import text_cell

    data, run = formula_run
    pred = tmp_path / "pred.csv"
    rc, _, err = cli("evaluate", run, "--data", data, "--predictions", pred)
    assert rc == 0, err
    files = [pred] + ([run / "pseudo_labels.csv"] if (run / "pseudo_labels.csv").exists() else [])
    assert len(files) == 2, "the CMC recipe keeps pseudo_labels.csv"
    for path in files:
        rows = list(csv.DictReader(path.open(encoding="utf-8")))
        texts = [r[k] for r in rows for k in ("id", "raw_text") if k in r]
        assert texts and all(t[:1] not in "=+-@" for t in texts), texts[:4]
        # a leading ' is the spreadsheet escape; reading our own file back gives the data's text
        assert {text_cell(r["id"])[:1] for r in rows} <= {"=", "+", "@"}
    labels = list(csv.DictReader((run / "pseudo_labels.csv").open(encoding="utf-8")))
    assert {r["raw_text"] for r in labels} == {"'-1+1", "''quoted"}


def test_a_grid_past_the_limit_is_refused(tmp_path: Path, cli) -> None:
    from affectus.experiments.sweep import MAX_GRID_POINTS, parse_spec

    space = {f"train.k{i}": list(range(100)) for i in range(10)}  # 10**20 points
    spec = tmp_path / "grid.yaml"
    spec.write_text(json.dumps({"space": space}))
    rc, _, err = cli("sweep", spec, "--out", tmp_path / "s")
    one_error_line(rc, err, "grid of 1e+20 points", str(MAX_GRID_POINTS))
    assert not (tmp_path / "s").exists()
    with pytest.raises(AffectusError, match="--sampler grid"):
        from affectus.experiments.sweep import with_sampler

        with_sampler(parse_spec({"space": space, "sampler": "tpe", "trials": 5}), "grid")
    # an experiment's grid is expanded up front too
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(json.dumps({"name": "e", "runs": [{"name": "a"}], "grid": space}))
    rc, _, err = cli("experiment", experiment, "--out", tmp_path / "e", "--data", "synth:sims")
    one_error_line(rc, err, "grid: 1e+20 points")
    assert not (tmp_path / "e").exists()


def _build_on_reconstruct() -> bytes:
    """GLOBAL numpy.core.multiarray._reconstruct; BUILD ({'marker': 1}, {'__defaults__': (None,)})."""
    def text(s: str) -> bytes:
        return b"X" + len(s).to_bytes(4, "little") + s.encode()

    return (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n"
            + b"}" + text("marker") + b"K\x01s"
            + b"}" + text("__defaults__") + b"(Nts"
            + b"\x86b.")


def test_build_cannot_touch_an_allowed_global() -> None:
    from affectus.data import safe_pickle

    target = safe_pickle._reconstruct
    try:
        with pytest.raises(pickle.UnpicklingError, match="BUILD"):
            loads_untrusted(_build_on_reconstruct())
        assert target.__defaults__ is None and not hasattr(target, "marker")
    finally:  # on a reader that lets BUILD through, leave the module as it was for the other tests
        target.__defaults__ = None
        target.__dict__.pop("marker", None)


def test_ctrl_c_prints_one_error_line(monkeypatch, cli) -> None:
    from affectus.cli import data_cmds

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_cmds, "load_dataset", interrupted)
    rc, _, err = cli("inspect", "anything.pkl")
    assert rc == 130
    assert err.strip() == "error: interrupted"


# ------------------------------------------------------------- item 11: tracebacks in these readers

def test_a_huge_model_size_through_set_is_one_line(tmp_path: Path, tiny_file: Path, cli) -> None:
    rc, _, err = cli("train", "--data", tiny_file, "--set", "model.d=2147483648", "--out", tmp_path / "o")
    one_error_line(rc, err, "model.d", "65536")
    assert not (tmp_path / "o").exists()


def test_a_model_too_large_for_memory_is_one_line(monkeypatch) -> None:
    from affectus.models import registry

    entry = registry.get_model_entry("cmc")

    def build(config, **extras):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 120000000000 bytes.")

    monkeypatch.setattr(entry, "build", build)
    with pytest.raises(AffectusError, match=r"too large for this machine's memory \(120 GB"):
        registry.create_model("cmc", None)


@pytest.mark.parametrize("query", ["scale=1e300", "seq_scale=1e300", "scale=1e300&seq_scale=1e300"])
def test_synth_sizes_past_any_float_are_one_line(tmp_path: Path, cli, query: str) -> None:
    rc, _, err = cli("train", "--data", f"synth:sims?{query}", "--out", tmp_path / "o")
    one_error_line(rc, err, "synth: sims would hold about 10^")
    assert not (tmp_path / "o").exists()
    rc, _, err = cli("synth", "--preset", "sims", "--scale", "1e300", "--max-gb", "1e308", "--out", tmp_path / "s.pkl")
    one_error_line(rc, err, "would hold")
    assert not (tmp_path / "s.pkl").exists()
