"""Writing files (utils/io.py): directory locks held across processes (and the commands that take them),
files that follow the umask."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from affectus.errors import AffectusError
from affectus.utils.io import lock_dir, write_json_atomic
from conftest import SRC, one_error_line

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


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == mode
