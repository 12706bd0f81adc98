"""`affectus extract-dataset --ray`: clips as Ray tasks (utils/executors.py, docs/media.md "Executors").

One local Ray instance (2 CPUs) serves the main test: it must write the same file as the local
executor, and a worker killed mid-run must lose no finished clip. Ray's own start-up is most of its
time. Skipped when `ray` (the `ray` extra) or the media tools are missing; the error lines need neither.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import pytest

import affectus
from affectus.errors import AffectusError
from affectus.inference.extract.dataset import MediaConfig, build_dataset
from affectus.utils.executors import RayExecutor
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


def test_ray_without_the_package_is_one_error_line(tmp_path: Path, cli, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    rc, out, err = cli("extract-dataset", tmp_path, "--out", tmp_path / "x.npz", "--ray", "local")
    assert rc == 2 and out == ""
    assert err.strip() == "error: --ray needs the ray package: pip install 'affectus[ray]' (docs/media.md)"


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


@needs_ray
def test_ray_matches_local_and_a_killed_worker_loses_no_finished_clip(tmp_path: Path, cli, monkeypatch) -> None:
    """Local reference -> a clean Ray run (same file) -> a run where one clip's worker is killed on its
    first try (Ray retries it) and another's on every try: the run ends in one error, every other clip
    is in the store, and the resumed run extracts only the lost clip and gives the same file."""
    if missing_tools():
        pytest.skip(f"media tools missing: {', '.join(missing_tools())}")
    import ray

    root = make_dataset(tmp_path / "clips", GOOD)  # 4 clips: train 2, valid 1, test 1
    local = tmp_path / "local.npz"
    rc, _, err = cli("extract-dataset", root, "--out", local, "--workers", "1", "--text-encoder", "hashed")
    assert rc == 0, err
    # Ray's workers are new processes: they must import this very affectus (not another installed copy)
    src = str(Path(affectus.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    before = _descendants()

    once, always = tmp_path / "kill-once", tmp_path / "kill-always"
    victim_once, victim_always = "v1/0002.mp4", "v2/0001.mp4"

    class KillingExecutor(RayExecutor):
        """Ray tasks whose worker process dies on the clips the marker files name (os._exit: no cleanup)."""

        def run(self, fn, tasks, on_done):  # noqa: ANN001, ANN202
            def task(config, path):  # noqa: ANN001, ANN202 - a closure: Ray ships it by value
                if path.endswith(victim_once) and os.path.exists(once):
                    os.remove(once)  # the retry finds no marker and runs
                    os._exit(1)
                if path.endswith(victim_always) and os.path.exists(always):
                    os._exit(1)
                return fn(config, path)

            return super().run(task, tasks, on_done)

    config = MediaConfig(text_encoder="hashed")
    with RayExecutor("local", num_cpus=2) as executor:
        clean = build_dataset(root, tmp_path / "ray.npz", config, executor=executor)  # starts Ray
        assert ray.is_initialized() and clean.computed == 4
        _same_arrays(tmp_path / "ray.npz", local)

        once.touch()
        always.touch()
        out, work = tmp_path / "again.npz", tmp_path / "again.work"
        with KillingExecutor("local", retries=1) as killing:  # joins the running instance
            with pytest.raises(AffectusError, match=r"^1 clip\(s\) lost a worker process .*v2/0001\.mp4"):
                build_dataset(root, out, config, work_dir=work, executor=killing)
        assert not once.exists()  # that clip's first worker was killed...
        saved = sorted(str(p.relative_to(p.parents[1])) for p in work.rglob("*.npz"))
        assert saved == ["v1/0001.npz", "v1/0002.npz", "v3/0001.npz"]  # ...and its retry saved it
        assert not out.exists()

        always.unlink()
        rc, stdout, err = cli(
            "extract-dataset", root, "--out", out, "--work-dir", work, "--ray", "local", "--text-encoder", "hashed"
        )
        assert rc == 0, err
        assert "(1 extracted, 3 resumed" in stdout
        _same_arrays(out, local)
        assert ray.is_initialized()  # the CLI used the running instance and left it to its owner
    assert not ray.is_initialized()
    deadline = time.monotonic() + 20
    while (_descendants() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (_descendants() - before), "Ray left processes behind"
