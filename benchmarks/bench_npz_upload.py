"""Reading a features upload (issue 20): the service's one-pass reader against the two-pass path it replaced,
in this process, as JSON.

    python benchmarks/bench_npz_upload.py [--samples 1] [--repeat 300]

Both paths check the same limits and give the same arrays (asserted here):

  two_pass   `data.npz_check.check_npz` (zip directory and every .npy header) then `data.npz.load_npz_bytes`
             (numpy's loader: every member opened and every header parsed again), the path before issue 20;
  one_pass   `data.npz_check.read_checked_npz` (each member's header checked, then its data read, in one
             pass) then `data.npz.load_npz_arrays` (validation from the arrays), what `/predict` runs now.

The upload is an affectus .npz of `--samples` samples at the default extractors' widths (text 64, audio 25 x 20
steps, vision 152 x 8 steps), the shape `benchmarks/bench_service.py` posts. Reported: the median
milliseconds of each over `--repeat` calls, interleaved, and the ratio two_pass / one_pass (a speed-up
measured in the same process, so a busy machine slows both alike).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from affectus.data.mmsa import dataset_from_raw
from affectus.data.npz import load_npz_arrays, load_npz_bytes, write_npz
from affectus.data.npz_check import check_npz, read_checked_npz
from affectus.data.synthetic import SynthConfig, generate

LIMITS = {"max_bytes": 64 * 2**20, "max_samples": 10_000, "max_seq_len": 10_000}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=300)
    args = ap.parse_args()
    raw = generate(SynthConfig(n_train=args.samples, n_valid=0, n_test=0, seed=3,
                               seq_lens={"text": 6, "audio": 20, "vision": 8},
                               dims={"text": 64, "audio": 25, "vision": 152}))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "up.npz"
        write_npz(dataset_from_raw({"test": raw["train"]}), path)
        data = path.read_bytes()

    def two_pass():
        check_npz(data, "up.npz", **LIMITS)
        return load_npz_bytes(data, "up.npz")

    def one_pass():
        return load_npz_arrays(read_checked_npz(data, "up.npz", **LIMITS), "up.npz")

    a, b = two_pass()["test"], one_pass()["test"]
    for m in ("text", "audio", "vision"):
        assert np.array_equal(a.features(m), b.features(m)), m
    assert a.ids == b.ids and np.array_equal(a.labels, b.labels)
    times: dict[str, list[float]] = {"two_pass": [], "one_pass": []}
    for _ in range(args.repeat):
        for name, fn in (("two_pass", two_pass), ("one_pass", one_pass)):
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1e3)
    med = {k: round(statistics.median(v), 4) for k, v in times.items()}
    print(json.dumps({"upload_bytes": len(data), "samples": args.samples, "repeat": args.repeat,
                      "median_ms": med, "speedup": round(med["two_pass"] / med["one_pass"], 2)}, indent=2))


if __name__ == "__main__":
    main()
