"""Wall time and peak memory of a CMC+ training run on the shared CMU-MOSI set, against faithful CMC's (issue 9).

    python benchmarks/bench_train_cost.py [--rounds 1] [--threads 1] [--data FILE]

Each measurement runs in a fresh Python process (so each peak RSS is its own run's, not the largest so far
in one process), the kinds interleaved round by round so a busy machine slows all alike:

  cmc_plus      `train_run` of `resolve_config("cmc", "cmc_plus", mosi-utterance, None, {"train.seed": 1})`:
                the preset's CMC+ settings, including train.text_inputs=sentence+file, so the run encodes
                every transcript with the packaged MiniLM before training; evaluation and writes included;
  cmc           the same for faithful CMC (`resolve_config("cmc", None, ...)`), the reference.

Per run: wall seconds of `train_run`, the run's own `train_seconds` (the recipe alone, from run.json), for
CMC+ the seconds spent inside `apply_text_inputs` during that same run (MiniLM loaded and run over every
transcript; timed by wrapping the module function the trainer imports), the process's peak RSS
(`resource.getrusage` ru_maxrss: imports and data included) and its RSS just before the call (so the
run's increment is visible). Medians over rounds; CMC+'s as ratios to CMC's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mosi-utterance" / "mosi_utterance_trainval.pkl"
KINDS = ("cmc_plus", "cmc")


def rss_mb() -> float:
    """The process's resident memory now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def child(kind: str, data: str, threads: int, out: Path) -> dict:
    """One measurement in this (fresh) process."""
    import affectus.features.text as text_module
    from affectus.data.load import open_data
    from affectus.training.config import resolve_config
    from affectus.training.loop import training_log
    from affectus.training.trainer import plan_for, train_run
    from affectus.utils.threads import enable_flush_denormal, torch_threads

    enable_flush_denormal()  # as the CLI does
    ds, preset = open_data(data, "mosi-utterance")
    record: dict = {"kind": kind, "rss_before_mb": rss_mb()}
    encode = text_module.apply_text_inputs
    spent: list[float] = []

    def timed_encode(*a, **kw):  # the trainer imports the function from its module at call time
        t = time.perf_counter()
        try:
            return encode(*a, **kw)
        finally:
            spent.append(time.perf_counter() - t)

    text_module.apply_text_inputs = timed_encode
    cfg = resolve_config("cmc", "cmc_plus" if kind == "cmc_plus" else None, preset, None, {"train.seed": 1})
    plan = plan_for(ds, preset)
    with torch_threads(threads), training_log():  # epoch lines kept off the console
        t0 = time.perf_counter()
        metrics = train_run(ds, cfg, out, plan, data_source=data)
        record["seconds"] = round(time.perf_counter() - t0, 2)
    info = json.loads((out / "run.json").read_text())
    record.update(variant=cfg.variant, train_seconds=info["train_seconds"], text_inputs_seconds=round(sum(spent), 2),
                  text_inputs=cfg.train.text_inputs, has0_f1=metrics.get("has0_f1"))
    record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.data, args.threads, Path(args.out))))
        return 0

    root = Path(tempfile.mkdtemp(prefix="bench-train-cost-"))
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    runs = []
    for r in range(1, args.rounds + 1):
        for kind in KINDS:
            cmd = [sys.executable, __file__, "--child", kind, "--data", args.data, "--threads", str(args.threads),
                   "--out", str(root / f"{kind}-{r}")]
            t0 = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.stderr.write(done.stderr)
                raise SystemExit(f"{kind} round {r} failed (exit {done.returncode})")
            runs.append({**json.loads(done.stdout.strip().splitlines()[-1]), "round": r,
                         "process_seconds": round(time.perf_counter() - t0, 2)})

    def med(kind: str, key: str) -> float:
        return round(statistics.median(x[key] for x in runs if x["kind"] == kind), 2)

    keys = ("seconds", "train_seconds", "text_inputs_seconds", "peak_rss_mb", "rss_before_mb")
    median = {k: {key: med(k, key) for key in keys} for k in KINDS}
    print(json.dumps({
        "benchmark": "training run wall time and peak memory, shared CMU-MOSI utterance set (preset mosi-utterance)",
        "data": args.data,
        "device": f"cpu ({platform.processor() or platform.machine()}), {args.threads} torch threads",
        "omp_wait_policy": env["OMP_WAIT_POLICY"],
        "rounds": args.rounds,
        "runs": runs,
        "median": median,
        "cmc_plus_vs_cmc": {"wall": round(median["cmc_plus"]["seconds"] / median["cmc"]["seconds"], 3),
                            "peak_rss": round(median["cmc_plus"]["peak_rss_mb"] / median["cmc"]["peak_rss_mb"], 3)},
        "text_inputs_share_of_cmc_plus_wall": round(statistics.median(
            x["text_inputs_seconds"] / x["seconds"] for x in runs if x["kind"] == "cmc_plus"), 3),
        "notes": "seconds: train_run (text encoding, recipe, evaluation, writes); train_seconds: the recipe alone "
                 "(run.json); text_inputs_seconds: apply_text_inputs within the run; peak_rss_mb: the whole "
                 "child process (ru_maxrss)",
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
