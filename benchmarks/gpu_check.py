"""GPU check (issue 9): faithful CMC and CMC+ train one epoch on CUDA at CMU-MOSI and CH-SIMS shapes. JSON out.

    python benchmarks/gpu_check.py                 # the check (about 1-3 minutes on one modern GPU)
    python benchmarks/gpu_check.py --batches 4     # fewer batches per epoch
    python benchmarks/gpu_check.py --device cpu --batches 2   # a dry run of the same code on the CPU

Without CUDA it prints {"cuda": false, "message": ...} and exits 0 (CI never runs it; machines without a GPU
skip it cleanly).

Data: simulated as benchmarks/bench_speed.py simulates it, with each set's shapes and training-split size:
  mosi  text 50x768, audio 375x5,  vision 500x20;  1,284 samples; CMC 2 layers, 4 heads, dropout 0.5
  sims  text 39x768, audio 400x33, vision 55x709; 1,368 samples; CMC 5 layers, 4 heads, dropout 0.4
  (the presets' Table III rows), batch 64, shuffled, full padded length.

Per set and model, from the same initial weights, with and without AMP (`torch.autocast`, bfloat16 by
default; `--amp-dtype float16` adds a GradScaler):
  cmc       faithful CMC's stage-2 step (bench_speed.py's): CE on the final and the three unimodal logits,
            backward, Adam on every parameter; attention kernel "fast" (the default, written for CPUs);
  cmc_sdpa  the same with `attention="torch"` (F.scaled_dot_product_attention throughout);
  cmc_plus  CMC+ (hidden 64, router_hidden 16): a stage-1 epoch (every expert's CE on its pooled inputs,
            AdamW on the experts) then a stage-2 epoch (bench_speed.py's router step, experts frozen).
Two untimed warm-up steps, then one epoch timed with the device synchronised; host-to-device copies of
each batch are inside the timing. Also: the largest absolute difference between the CPU model's and the
GPU copy's outputs (logits, unimodal logits, router weights) in eval mode on 3 batches, in fp32 and with
AMP, and the peak GPU memory of each epoch. A configuration that fails records its error and the rest
still run.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench_speed.py; before torch loads OpenMP

import argparse
import contextlib
import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cmc_plus_loss, make_batch, simulate

from affectus.data.batches import Batch
from affectus.models.cmc import CMC, CMCConfig
from affectus.models.cmc_plus import CMCPlus, CMCPlusConfig
from affectus.training.recipes.cmc_plus import CMCPlusRecipeConfig

SETS = {  # name: (shapes (L, D), training samples, CMC's Table III settings)
    "mosi": ({"text": (50, 768), "audio": (375, 5), "vision": (500, 20)}, 1284,
             {"layers": 2, "heads": 4, "output_dropout": 0.5}),
    "sims": ({"text": (39, 768), "audio": (400, 33), "vision": (55, 709)}, 1368,
             {"layers": 5, "heads": 4, "output_dropout": 0.4}),
}
BATCH = 64


def build(kind: str, shapes: dict, cmc_kw: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    dims = {m: d for m, (_, d) in shapes.items()}
    if kind in ("cmc", "cmc_sdpa"):
        return CMC(CMCConfig(dims=dims, padding="faithful", attention="fast" if kind == "cmc" else "torch", **cmc_kw))
    return CMCPlus(CMCPlusConfig(dims=dims, hidden=64, router_hidden=16))


def cmc_step(model: CMC, opt: torch.optim.Optimizer, batch: Batch, amp: Callable, scaler) -> None:
    with amp():
        out = model(batch)
        y = batch.classes
        loss = F.cross_entropy(out.logits.float(), y) + sum(
            F.cross_entropy(out.modality_logits[:, k].float(), y) for k in range(3))
    backward_step(loss, opt, scaler)


def expert_step(model: CMCPlus, opt: torch.optim.Optimizer, batch: Batch, amp: Callable, scaler) -> None:
    """CMC+ stage 1 (the recipe's `_fit_experts`): every expert's CE on its own pooled inputs."""
    with amp():
        z = model.expert_logits(model.pooled(batch))  # (B, K, C)
        loss = sum(F.cross_entropy(z[:, k].float(), batch.classes) for k in range(z.shape[1]))
    backward_step(loss, opt, scaler)


def router_step(model: CMCPlus, opt: torch.optim.Optimizer, batch: Batch, amp: Callable, scaler,
                rc: CMCPlusRecipeConfig) -> None:
    """CMC+ stage 2: bench_speed.py's router step (experts frozen), under `amp`."""
    with amp():
        loss = cmc_plus_loss(model, batch, rc)
    backward_step(loss, opt, scaler)


def backward_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler) -> None:
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_epoch(steps: list[Callable[[np.ndarray], None]], batches: list[np.ndarray], device) -> list[float]:
    """Seconds per phase; each phase is a pass over `batches` with its step."""
    out = []
    for step in steps:
        sync(device)
        t0 = time.perf_counter()
        for rows in batches:
            step(rows)
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


@torch.no_grad()
def max_diff(ref: list, dev_model, data, batches, device, amp: Callable) -> float:
    """Largest |CPU - device| over the outputs `ref` (the CPU model's, eval mode, on `batches`)."""
    dev_model.eval()
    diff = 0.0
    for rows, want in zip(batches, ref):
        with amp():
            got = dev_model(make_batch(data, rows, cut=False).to(device))
        for key in ("logits", "modality_logits", "router_weights"):
            x, y = getattr(want, key), getattr(got, key)
            if x is not None and y is not None:
                diff = max(diff, float((x - y.float().cpu()).abs().max()))
    return diff


def train_epoch(kind: str, model: torch.nn.Module, data: dict, batches: list[np.ndarray], device: torch.device,
                amp: Callable, scaler) -> dict:
    """Warm-up steps, then one timed epoch of `kind`'s training steps on `device`."""

    def to_batch(rows: np.ndarray) -> Batch:
        return make_batch(data, rows, cut=False).to(device)

    model.train()
    if kind != "cmc_plus":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        steps, phases = [lambda rows: cmc_step(model, opt, to_batch(rows), amp, scaler)], ["stage2"]
    else:
        rc = CMCPlusRecipeConfig()
        e_opt = torch.optim.AdamW(model.experts.parameters(), lr=1e-3, weight_decay=rc.expert_weight_decay)
        r_opt = torch.optim.Adam(model.router.parameters(), lr=rc.router_lr)

        def stage1(rows: np.ndarray) -> None:
            model.experts.train().requires_grad_(True)
            expert_step(model, e_opt, to_batch(rows), amp, scaler)

        def stage2(rows: np.ndarray) -> None:
            model.experts.eval().requires_grad_(False)
            router_step(model, r_opt, to_batch(rows), amp, scaler, rc)

        steps, phases = [stage1, stage2], ["stage1", "stage2"]
    for step in steps:  # warm-up (kernel selection, allocator), not timed
        for rows in batches[:2]:
            step(rows)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed_epoch(steps, batches, device)
    samples = sum(len(b) for b in batches)
    entry = {"epoch_s": round(sum(seconds), 4), **{f"{p}_s": round(s, 4) for p, s in zip(phases, seconds)},
             "samples_per_s": round(samples * len(phases) / sum(seconds), 1)}
    if device.type == "cuda":
        entry["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return entry


def check(kind: str, set_name: str, data: dict, args, device: torch.device) -> dict:
    shapes, n, cmc_kw = SETS[set_name]
    perm = np.random.default_rng(args.seed).permutation(n)
    batches = [perm[i : i + BATCH] for i in range(0, n, BATCH)]
    if args.batches:
        batches = batches[: args.batches]
    cpu_model = build(kind, shapes, cmc_kw, args.seed).eval()
    with torch.no_grad():  # the CPU's outputs, once: both device runs compare against them
        ref = [cpu_model(make_batch(data, rows, cut=False)) for rows in batches[:3]]
    amp_dtype = getattr(torch, args.amp_dtype)
    result: dict = {"batches": len(batches), "samples": int(sum(len(b) for b in batches))}
    for label, on in (("fp32", False), ("amp", True)):
        amp = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if on else contextlib.nullcontext
        try:
            model = copy.deepcopy(cpu_model).to(device)
            result[f"max_abs_diff_cpu_vs_device_eval_{label}"] = max_diff(ref, model, data, batches[:3], device, amp)
            scaler = torch.amp.GradScaler(device.type) if on and amp_dtype == torch.float16 else None
            result[label] = train_epoch(kind, model, data, batches, device, amp, scaler)
        except Exception as err:  # noqa: BLE001 - record it, let the other configurations run
            result[label] = {"error": f"{type(err).__name__}: {' '.join(str(err).split())[:400]}"}
        finally:
            model = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run of the code)")
    ap.add_argument("--batches", type=int, default=0, help="batches per epoch (default: all)")
    ap.add_argument("--amp-dtype", choices=("bfloat16", "float16"), default="bfloat16")
    ap.add_argument("--sets", default="mosi,sims")
    ap.add_argument("--models", default="cmc,cmc_sdpa,cmc_plus")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"cuda": False, "torch": torch.__version__,
                          "message": "no CUDA device available to this torch: GPU check skipped"}))
        return 0
    device = torch.device(args.device)
    t0 = time.perf_counter()
    report: dict = {"cuda": device.type == "cuda", "device": str(device), "torch": torch.__version__,
                    "amp_dtype": args.amp_dtype, "batch_size": BATCH}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
        report["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    report["results"] = {}
    for name in args.sets.split(","):
        data = simulate(SETS[name][1], args.seed, SETS[name][0])  # (L, D) shapes, training samples
        report["results"][name] = {k: check(k, name, data, args, device) for k in args.models.split(",")}
    report["total_s"] = round(time.perf_counter() - t0, 1)
    failed = [f"{s}/{k}/{label}" for s, r in report["results"].items() for k, v in r.items()
              for label in ("fp32", "amp") if "error" in v.get(label, {})]
    report["failed"] = failed
    print(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
