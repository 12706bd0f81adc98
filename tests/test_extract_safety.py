"""extract-dataset hardening (issue 15, items 9-11): outputs never replace a file without --overwrite nor
an input ever; workers die with a killed parent; label.csv NULs and over-long ids, and resume-cache
entries that cannot be what their clip gives, are one line or a warning, never a traceback.

Clips come from tests/media_clips.py (2-s clips; a few seconds to make); tests that only read label.csv
need no clip at all.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from affectus.features.dataset import MediaConfig
from media_clips import GOOD, make_dataset, missing_tools
from proc_table import alive, children

SRC = Path(__file__).resolve().parents[1] / "src"
HEADER = "video_id,clip_id,text,label,mode\n"
HASHED = ("--text-encoder", "hashed")  # no MiniLM load: these tests check plumbing, not text features

needs_media = pytest.mark.skipif(bool(missing_tools()), reason=f"media tools missing: {', '.join(missing_tools())}")


def one_error_line(rc: int, out: str, err: str, *fragments: str) -> str:
    assert rc == 2 and out == "", (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three of the test bed's clips (train 2, valid 1)."""
    if missing_tools():
        pytest.skip(f"media tools missing: {', '.join(missing_tools())}")
    return make_dataset(tmp_path_factory.mktemp("clips"), GOOD[:3])


# ------------------------------------------------------------------------- item 9: outputs and inputs


def test_outputs_over_the_inputs_are_refused_even_with_overwrite(tmp_path: Path, cli) -> None:
    """label.csv, anything in Raw/ and the folder itself are inputs: no option writes over them, and the
    refusal comes before label.csv is even read (nothing is extracted, nothing changes)."""
    root = tmp_path / "ds"
    (root / "Raw" / "v1").mkdir(parents=True)
    label = root / "label.csv"
    label.write_text(HEADER + "v1,1,hi,0.5,train\n", encoding="utf-8")
    clip = root / "Raw" / "v1" / "1.mp4"
    clip.write_bytes(b"not really a video")
    link = tmp_path / "alias"
    link.symlink_to(root)
    before = {p: p.read_bytes() for p in (label, clip)}
    cases = [
        (("--out", label), "--out", "label.csv"),
        (("--out", tmp_path / "x.npz", "--report", label), "--report", "label.csv"),
        (("--out", link / "label.csv"), "--out", "label.csv"),  # the same file through a symlinked folder
        (("--out", clip), "--out", "Raw/"),
        (("--out", root / "Raw" / "v1" / "new.npz"), "--out", "Raw/"),  # a new file among the clips: no
        (("--out", root), "--out", "the dataset folder itself"),
        (("--out", tmp_path / "x.npz", "--work-dir", root / "Raw"), "--work-dir", "Raw/"),
    ]
    for args, option, needle in cases:
        rc, out, err = cli("extract-dataset", root, *args, "--overwrite", "--workers", "1", *HASHED)
        one_error_line(rc, out, err, option, needle)
    assert {p: p.read_bytes() for p in (label, clip)} == before
    assert sorted(p.name for p in root.rglob("*")) == ["1.mp4", "Raw", "label.csv", "v1"]
    assert not (tmp_path / "x.npz").exists()
    rc, out, err = cli("extract-dataset", root, "--out", tmp_path / "x.npz", "--report", tmp_path / "x.npz")
    one_error_line(rc, out, err, "--report", "the same file as --out")


def test_existing_outputs_are_refused_without_overwrite(tmp_path: Path, cli) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "label.csv").write_text(HEADER + "v1,1,hi,0.5,train\n", encoding="utf-8")
    out = tmp_path / "feats.npz"
    for existing, option in ((out, "--out"), (tmp_path / "feats.npz.failures.json", "--report"),
                             (tmp_path / "feats.npz.extract.json", "the record")):
        existing.write_text("keep me")
        rc, stdout, err = cli("extract-dataset", root, "--out", out, "--workers", "1", *HASHED)
        one_error_line(rc, stdout, err, option, str(existing), "file exists; pass --overwrite")
        assert existing.read_text() == "keep me"
        existing.unlink()
    mine = tmp_path / "mine.json"
    mine.write_text("keep me")
    rc, stdout, err = cli("extract-dataset", root, "--out", out, "--report", mine, "--workers", "1", *HASHED)
    one_error_line(rc, stdout, err, f"--report {mine}: file exists")
    assert mine.read_text() == "keep me"


@needs_media
def test_a_new_file_in_the_dataset_folder_and_overwrite_with_resume(clips: Path, tmp_path: Path, cli) -> None:
    """--out inside the dataset folder (not an input) is fine; the same command again is refused, and with
    --overwrite it resumes every clip from the work folder and writes the same arrays."""
    out = clips / "feats.npz"
    args = ("extract-dataset", clips, "--out", out, "--workers", "1", *HASHED)
    rc, stdout, err = cli(*args)
    assert rc == 0, err
    assert "(3 extracted, 0 resumed" in stdout
    first = out.read_bytes()
    rc, stdout, err = cli(*args)
    one_error_line(rc, stdout, err, f"--out {out}: file exists; pass --overwrite")
    assert out.read_bytes() == first
    rc, stdout, err = cli(*args, "--overwrite")
    assert rc == 0, err
    assert "(0 extracted, 3 resumed" in stdout
    for name in ("feats.npz", "feats.npz.failures.json", "feats.npz.extract.json"):
        assert (clips / name).is_file()
        (clips / name).unlink()  # the module's other tests read this folder as a dataset


# ------------------------------------------------------------------------- item 10: workers and a killed parent



@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@needs_media
def test_kill_9_of_extract_dataset_takes_its_workers_with_it(clips: Path, tmp_path: Path) -> None:
    """SIGKILL the parent while its two workers are extracting: within seconds no worker is left (they used
    to wait on the pool's task queue forever, about 200 MB each)."""
    root = tmp_path / "many"
    rows = [HEADER.strip().split(",")]
    for k in range(8):  # 24 rows over hard links of the 3 clips: the workers are still busy when killed
        for spec in GOOD[:3]:
            folder = root / "Raw" / f"{spec.video_id}_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            os.link(clips / "Raw" / spec.video_id / f"{spec.clip_id}.mp4", folder / f"{spec.clip_id}.mp4")
            rows.append([f"{spec.video_id}_{k}", spec.clip_id, spec.text, spec.label, spec.mode])
    with open(root / "label.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    work = tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "affectus", "extract-dataset", str(root), "--out", str(tmp_path / "x.npz"),
         "--work-dir", str(work), "--workers", "2", *HASHED],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    kids: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 120
        # workers exist from the first task on; one saved clip means they have started working
        while not list(work.rglob("*.npz")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        kids = children(proc.pid)
        assert proc.poll() is None and len(kids) >= 2, "the run ended before it could be killed"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 15
        while any(alive(p, t) for p, t in kids.items()) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p for p, t in kids.items() if alive(p, t)]
        assert not left, f"processes {left} outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid, started in kids.items():  # a failing run must not leave them behind either
            if alive(pid, started):
                os.kill(pid, signal.SIGKILL)


DRIVER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from affectus.utils.executors import LocalExecutor
LocalExecutor(2).run(time.sleep, [(120,)] * 4, lambda i, result: None)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_local_executor_workers_die_with_their_parent(tmp_path: Path) -> None:
    """The executor alone, without media: a parent whose two workers sleep 2 minutes is killed; they end."""
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(SRC)])
    kids: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 60
        # two spawned workers (multiprocessing's resource tracker may be a third child)
        while len([p for p in children(proc.pid) if "spawn_main" in _cmdline(p)]) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "no workers started"
            time.sleep(0.05)
        time.sleep(1.0)  # let them reach their task (the initializer has run by then)
        kids = children(proc.pid)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 15
        while any(alive(p, t) for p, t in kids.items()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p, t in kids.items() if alive(p, t)], "workers outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid, started in kids.items():
            if alive(pid, started):
                os.kill(pid, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# ------------------------------------------------------------------------- item 11: label.csv


@pytest.mark.parametrize(("text", "needle"), [
    (HEADER + "v\x001,1,hi,0.5,train\n", "line 2: contains a NUL byte"),
    (HEADER + "v1,1,h\x00i,0.5,train\n", "line 2: contains a NUL byte"),
    ("video_id,clip_id,text,label,mode\x00\n", "line 1: contains a NUL byte"),
    (HEADER.encode("utf-16"), "not UTF-8"),  # a spreadsheet's UTF-16 export: NULs between the ASCII
    (HEADER + "v1," + "a" * 300 + ",hi,0.5,train\n", "clip_id 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'... is 300 bytes"),
    (HEADER + "é" * 200 + ",1,hi,0.5,train\n", "video_id"),  # 200 characters, 400 bytes
    (HEADER + '"v\n1",1,hi,0.5,train\n', "is not a plain file name"),  # a quoted newline in an id
    (HEADER + "v1,a\x1bb,hi,0.5,train\n", "is not a plain file name"),  # a terminal escape in an id
])
def test_nul_bytes_and_over_long_ids_in_label_csv_are_one_line(tmp_path: Path, cli, text: str | bytes,
                                                               needle: str) -> None:
    (tmp_path / "label.csv").write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    rc, out, err = cli("extract-dataset", tmp_path, "--out", tmp_path / "x.npz", "--workers", "1", *HASHED)
    line = one_error_line(rc, out, err, "label.csv", needle)
    assert len(line) < 400  # an id of thousands of characters is not echoed whole
    assert not (tmp_path / "x.npz").exists()


def test_an_id_at_the_name_limit_is_taken(tmp_path: Path) -> None:
    from affectus.features.dataset import read_label_csv

    (tmp_path / "label.csv").write_text(HEADER + "v1," + "a" * 251 + ",hi,0.5,train\n", encoding="utf-8")
    (row,) = read_label_csv(tmp_path / "label.csv")
    assert len(row.path(tmp_path).name) == 255


# ------------------------------------------------------------------------- item 11: resume-cache entries


@needs_media
def test_feature_dims_from_the_config_match_the_extractors() -> None:
    from affectus.features.audio import LibrosaConfig, LibrosaExtractor, OpenSmileExtractor
    from affectus.features.dataset import feature_dims
    from affectus.features.vision import HaarFaceConfig, HaarFaceExtractor

    for config in (MediaConfig(), MediaConfig(audio=LibrosaConfig(n_mfcc=13), vision=HaarFaceConfig(crop_size=96))):
        audio = (OpenSmileExtractor if config.audio.kind == "opensmile" else LibrosaExtractor)(config.audio)
        assert feature_dims(config) == {"audio": audio.dim, "vision": HaarFaceExtractor(config.vision).dim}


def _rewrite(path: Path, edit) -> None:
    """Rewrite a saved clip result in place (keeping its record's stamp), as a hand edit or damage would."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["__meta__"]))
    edit(arrays, meta)
    arrays["__meta__"] = np.array(json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **{k: v for k, v in arrays.items() if v is not None})


BAD_ENTRIES = {
    # the 3-million-row case in small: far more rows than a 2-s clip gives (it padded every clip to it)
    "too_many_rows": (lambda a, m: a.update(audio=np.zeros((5000, 25), np.float32)), "audio array has 5000 rows"),
    "one_dimensional": (lambda a, m: a.update(audio=a["audio"].reshape(-1)), "audio array is float32"),
    "wrong_width": (lambda a, m: a.update(vision=a["vision"][:, :10]), "expected float32 (rows, 152)"),
    "wrong_dtype": (lambda a, m: a.update(vision=a["vision"].astype(np.float64)), "vision array is float64"),
    "not_finite": (lambda a, m: a["audio"].__setitem__((0, 0), np.nan), "NaN or infinite"),
    "missing_array": (lambda a, m: a.update(vision=None), "lacks vision features"),
    "rows_not_faces": (lambda a, m: a.update(vision=a["vision"][:3]), "differ from its face frames"),
    "failures_not_a_list": (lambda a, m: m.update(failures="none"), "failures are not a list"),
    "stats_not_numbers": (lambda a, m: m.update(stats={"frames": [1, 2]}), "stats are not an object"),
    "extra_array": (lambda a, m: a.update(text=np.zeros((2, 2), np.float32)), "holds other arrays"),
}


@pytest.mark.slow
@needs_media
def test_resume_cache_entries_that_cannot_be_their_clip_are_extracted_again(clips: Path, tmp_path: Path, cli) -> None:
    """Each kind of bad entry, on one clip: the rerun warns naming the entry and why, extracts that clip
    again, and writes the same file as the clean run (a too-long entry no longer pads every clip)."""
    work, ref = tmp_path / "work", tmp_path / "ref.npz"
    rc, _, err = cli("extract-dataset", clips, "--out", ref, "--work-dir", work, "--workers", "1", *HASHED)
    assert rc == 0, err
    (entry,) = work.glob("*/v1/0001.npz")
    clean = entry.read_bytes()
    for name, (edit, needle) in BAD_ENTRIES.items():
        entry.write_bytes(clean)
        _rewrite(entry, edit)
        out = tmp_path / f"{name}.npz"
        rc, stdout, err = cli("extract-dataset", clips, "--out", out, "--work-dir", work, "--workers", "1", *HASHED)
        assert rc == 0, (name, err)
        assert "(1 extracted, 2 resumed" in stdout, (name, stdout)
        warned = [line for line in err.splitlines() if str(entry) in line]
        assert len(warned) == 1 and needle in warned[0] and "extracting" in warned[0], (name, err)
        with np.load(out, allow_pickle=False) as a, np.load(ref, allow_pickle=False) as b:
            for key in b.files:
                if key != "__meta__":
                    assert np.array_equal(a[key], b[key]), (name, key)


def test_cache_check_bounds_rows_by_the_clips_length(tmp_path: Path) -> None:
    """The bound comes from the clip file (probed), at most decode.max_duration_s; no clip, no trust."""
    from affectus.features.dataset import BadEntry, CacheCheck

    check = CacheCheck(MediaConfig())
    check.seconds = lambda clip: 2.0  # type: ignore[method-assign] - a 2-s clip, without decoding one
    meta = {"failures": [], "stats": {"face_frames": 20, "frames": 20}}
    ok = {"audio": ((200, 25), np.dtype(np.float32)), "vision": ((20, 152), np.dtype(np.float32))}
    check(meta, ok, tmp_path / "c.mp4")
    with pytest.raises(BadEntry, match="3000000 rows; a 2.0 s clip gives 1 to 302"):
        check(meta, {**ok, "audio": ((3_000_000, 25), np.dtype(np.float32))}, tmp_path / "c.mp4")
    with pytest.raises(BadEntry, match="no longer opens"):
        CacheCheck(MediaConfig())(meta, ok, tmp_path / "gone.mp4")
