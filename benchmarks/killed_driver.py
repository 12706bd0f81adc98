"""What a `kill -9` of `affectus extract-dataset` leaves running (docs/media.md, "Executors").

Makes the test bed's clips (tests/media_clips.py; needs ffmpeg and espeak-ng), starts extract-dataset on
hard-linked copies of them with two local worker processes (default) or `--ray local`, kills it with
SIGKILL once the first clip is saved, and counts its descendant processes still alive 2, 5, 10, 20 and
40 s later (a zombie counts as ended). Prints one JSON object; survivors are then killed by pid.

    python benchmarks/killed_driver.py            # local processes
    python benchmarks/killed_driver.py --ray      # a local Ray instance (needs the ray extra)
    python benchmarks/killed_driver.py --src ../main/src   # another checkout, e.g. before the fix
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

SAMPLES_S = (2, 5, 10, 20, 40)


def _name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    script = next((a.decode() for a in argv[1:] if a.endswith(b".py")), None)
    if script:
        return Path(script).name
    if b"-c" in argv:  # multiprocessing's children: "from multiprocessing.spawn import spawn_main; ..."
        code = argv[argv.index(b"-c") + 1].decode().split()
        return code[1] if len(code) > 1 and code[0] == "from" else " ".join(code)[:60]
    return " ".join(a.decode() for a in argv[1:3])[:60]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ray", action="store_true", help="--ray local instead of local worker processes")
    ap.add_argument("--copies", type=int, default=8, help="rows per generated clip (hard links)")
    ap.add_argument("--src", default=str(ROOT / "src"), help="the affectus source tree to run (another checkout's "
                                                            "src/ for a before/after comparison)")
    args = ap.parse_args()
    from media_clips import GOOD, make_dataset, missing_tools
    from proc_table import alive, descendants

    if missing_tools():
        sys.exit(f"missing: {', '.join(missing_tools())}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        clips = make_dataset(tmp_path / "clips", GOOD)
        root = tmp_path / "many"
        rows = [["video_id", "clip_id", "text", "label", "mode"]]
        for k in range(args.copies):
            for s in GOOD:
                folder = root / "Raw" / f"{s.video_id}_{k}"
                folder.mkdir(parents=True, exist_ok=True)
                os.link(clips / "Raw" / s.video_id / f"{s.clip_id}.mp4", folder / f"{s.clip_id}.mp4")
                rows.append([f"{s.video_id}_{k}", s.clip_id, s.text, s.label, s.mode])
        with open(root / "label.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)
        work = tmp_path / "work"
        cmd = [sys.executable, "-m", "affectus", "extract-dataset", str(root), "--out", str(tmp_path / "x.npz"),
               "--work-dir", str(work), "--workers", "2", "--text-encoder", "hashed"]
        if args.ray:
            cmd += ["--ray", "local"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [args.src, os.environ.get("PYTHONPATH")]))}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        while not list(work.rglob("*.npz")) and proc.poll() is None and time.monotonic() - t0 < 300:
            time.sleep(0.05)
        kids = descendants(proc.pid)
        started_s = time.monotonic() - t0
        proc.kill()
        proc.wait()
        killed = time.monotonic()
        still: dict[str, int] = {}
        for s in SAMPLES_S:
            time.sleep(max(0.0, killed + s - time.monotonic()))
            still[str(s)] = sum(alive(p, t) for p, t in kids.items())
        left = {p: _name(p) for p, t in kids.items() if alive(p, t)}
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    print(json.dumps({"executor": "ray local" if args.ray else "2 local processes",
                      "seconds_to_first_saved_clip": round(started_s, 1), "descendants_at_kill": len(kids),
                      "alive_after_s": still, "left_running_at_40s": sorted(left.values())}, indent=2))


if __name__ == "__main__":
    main()
