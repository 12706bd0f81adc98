"""Executors (utils/executors.py, docs/media.md "Executors"): `affectus extract-dataset --ray`, clips as Ray tasks.

One local Ray instance (2 CPUs) serves the main test: it must write the same file as the local
executor, and a worker killed mid-run must lose no finished clip. Ray's own start-up is most of its
time. Skipped when `ray` (the `ray` extra) or the media tools are missing; the missing-package error
line and the local executor's dead-worker test need neither.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import affectus
from affectus.errors import AffectusError
from affectus.features.dataset import MediaConfig, build_dataset
from affectus.utils.executors import LocalExecutor, RayExecutor
from media_clips import GOOD, make_dataset, missing_tools

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray not installed (pip install 'affectus[ray]')")


def _same_arrays(a: Path, b: Path) -> None:
    with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
        assert sorted(x.files) == sorted(y.files)
        for key in y.files:
            if key != "__meta__":  # the meta names the source file
                assert np.array_equal(x[key], y[key]), key


def _descendants() -> set[int]:
    """Live (not zombie) processes below this one, from /proc: Ray's GCS, raylet and workers."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if fields[0] != "Z":
            parent[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


def _exit_on_two(i: int) -> int:
    if i == 2:
        os._exit(1)  # the worker process dies, as when killed
    return 10 * i


def test_local_executor_returns_the_tasks_a_dead_worker_lost() -> None:
    """A dead process breaks a local pool: its task and every unfinished one come back as lost, and
    every finished one was handed back (never both, never neither)."""
    got: dict[int, int] = {}
    lost = LocalExecutor(2).run(_exit_on_two, [(i,) for i in range(4)], got.__setitem__)
    assert 2 in lost and sorted([*got, *lost]) == [0, 1, 2, 3]
    assert all(v == 10 * i for i, v in got.items())


def test_ray_without_the_package_is_one_error_line(tmp_path: Path, cli, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    rc, out, err = cli("extract-dataset", tmp_path, "--out", tmp_path / "x.npz", "--ray", "local")
    assert rc == 2 and out == ""
    assert err.strip() == "error: --ray needs the ray package: pip install 'affectus[ray]' (docs/media.md)"


@needs_ray
def test_importing_affectus_never_imports_ray() -> None:
    code = (
        "import sys, affectus, affectus.cli, affectus.utils.executors, affectus.features.dataset; "
        "print('ray' in sys.modules)"
    )
    src = str(Path(affectus.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.slow
@needs_ray
def test_ray_address_nobody_answers_is_one_error_line(tmp_path: Path, cli) -> None:
    """ray.init would retry such an address for minutes; we check it first. A missing clip is still a task."""
    if missing_tools():
        pytest.skip(f"media tools missing: {', '.join(missing_tools())}")
    (tmp_path / "label.csv").write_text("video_id,clip_id,text,label,mode\nv1,1,Hello.,0.5,train\n")
    rc, _, err = cli("extract-dataset", tmp_path, "--out", tmp_path / "x.npz", "--ray", "127.0.0.1:1")
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("error: --ray 127.0.0.1:1: no Ray cluster answers there")
    rc, _, err = cli("extract-dataset", tmp_path, "--out", tmp_path / "x.npz", "--ray", "head:1", "--workers", "2")
    assert rc == 2 and err.startswith("error: --workers sets local processes or the CPUs of --ray local")


@pytest.mark.slow
@needs_ray
def test_ray_matches_local_and_a_killed_worker_loses_no_finished_clip(tmp_path: Path, cli, monkeypatch) -> None:
    """A local reference; then on one Ray instance: a run where one clip's worker is killed and not retried
    (one error; every other clip is in the store), the resumed run where it is killed once more and Ray's
    retry saves it (only that clip extracted; the local file), and a clean `--ray local` run (the local file)."""
    if missing_tools():
        pytest.skip(f"media tools missing: {', '.join(missing_tools())}")
    import ray

    root = make_dataset(tmp_path / "clips", GOOD[:3])  # 3 clips: train 2, valid 1
    local = tmp_path / "local.npz"
    rc, _, err = cli("extract-dataset", root, "--out", local, "--workers", "1", "--text-encoder", "hashed")
    assert rc == 0, err
    # Ray's workers are new processes: they must import this very affectus (not another installed copy)
    src = str(Path(affectus.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    before = _descendants()
    marker, victim = tmp_path / "kill", "v1/0002.mp4"

    class KillingExecutor(RayExecutor):
        """Ray tasks whose worker process dies (os._exit: no cleanup) on the victim clip while the marker
        file exists; the attempt that dies removes it, so a retry runs."""

        def run(self, fn, tasks, on_done):
            def task(config, path):  # a closure: Ray ships it by value
                if path.endswith(victim) and os.path.exists(marker):
                    os.remove(marker)
                    os._exit(1)
                return fn(config, path)

            return super().run(task, tasks, on_done)

    config = MediaConfig(text_encoder="hashed")
    out, work = tmp_path / "ray.npz", tmp_path / "ray.work"
    with KillingExecutor("local", num_cpus=2, retries=0) as killing:  # starts Ray on its first run
        marker.touch()
        with pytest.raises(AffectusError, match=r"^1 clip\(s\) lost a worker process .*v1/0002\.mp4"):
            build_dataset(root, out, config, work_dir=work, executor=killing)
        assert ray.is_initialized() and not marker.exists() and not out.exists()
        saved = sorted(str(p.relative_to(p.parents[1])) for p in work.rglob("*.npz"))
        assert saved == ["v1/0001.npz", "v2/0001.npz"]  # every clip but the victim

        marker.touch()
        killing.retries = 2
        again = build_dataset(root, out, config, work_dir=work, executor=killing)
        assert not marker.exists()  # its worker died again, and the retry ran it
        assert (again.computed, again.cached) == (1, 2)
        _same_arrays(out, local)

        rc, stdout, err = cli(
            "extract-dataset", root, "--out", tmp_path / "clean.npz", "--ray", "local", "--text-encoder", "hashed"
        )
        assert rc == 0, err
        assert "(3 extracted, 0 resumed" in stdout
        _same_arrays(tmp_path / "clean.npz", local)
        assert ray.is_initialized()  # the CLI used the running instance and left it to its owner
    assert not ray.is_initialized()
    deadline = time.monotonic() + 20
    while (_descendants() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (_descendants() - before), "Ray left processes behind"
