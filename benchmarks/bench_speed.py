"""Speed of one stage-2 training epoch: plain PyTorch CMC reference vs our CMC encoder, and CMC+.

    python benchmarks/bench_speed.py            # one full epoch per variant (~5 min on 2 cores)
    python benchmarks/bench_speed.py --quick    # 4 batches per variant, 3 rounds, extrapolated

Simulated data with CMU-MOSI's shapes: 1,284 training samples; text 50 x 768 (pre-extracted BERT
features, padding rows non-zero as BERT's outputs at [PAD] are), audio 375 x 5, vision 500 x 20
(zero rows after the true length). True lengths: a per-sample duration fraction u ~ U(0.1, 1), times
U(0.95, 1.05) per modality, times the padded length (text: at least 1 token). 2 layers, 4 heads,
batch 64; a step = stage-2 forward + CE(final) + sum_k CE(unimodal) + backward + Adam.

Variants, timed in the same process, interleaved batch by batch so machine noise hits all alike:
  reference         benchmarks/reference_cmc.py (nn.TransformerEncoder), shuffled batches;
  faithful          our CMC, padding="faithful" (compaction on), the same batches;
  masked_bucketed   our CMC, padding="masked", batches from `bucket_order`, cut to their longest sample;
  cmc_plus          CMC+ (models/cmc_plus.py; hidden 64, router_hidden 16: the model's defaults), the
                    reference's batches. Not the same network: its step is CMC+'s stage 2 as the recipe
                    runs it (training/recipes/cmc_plus.py, `_fit_router`), done batch by batch on the raw
                    sequences: a forward through the whole model (masked-mean pooling of text 50x768, audio
                    375x5, vision 500x20 -> standardisation -> three frozen 64-unit MLP experts -> calibration
                    -> evidence router), loss = CE(verdict) + BCE of the MOSI Acc2 rule on logit_pos -
                    logit_neg + the router's L2 term, backward, Adam (lr 0.02) on the router's parameters
                    only (experts frozen, in eval mode). So its ratio says how much faster a CMC+ stage-2
                    epoch is than the reference CMC's stage-2 epoch, not that one network got faster.
                    (The recipe itself pools each split once and fits the router with 300 full-batch
                    Adam steps on the precomputed expert logits: `cmc_plus_recipe_router_fit_s` times
                    that whole fit on 1,284 rows.)
Each round times `--batches` batches per variant (all of an epoch by default; with fewer, batches are
chosen evenly over the epoch, for the bucketed variant evenly over the length-sorted buckets) and
extrapolates to the epoch. Ratios are medians over rounds of (our samples/s) / (reference samples/s).
Also checks that faithful and reference compute the same function (eval mode, same weights).
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting for work steal the CPU from the thread that has work when
# the machine runs more threads than cores (a shared machine): a step of many small ops then gets
# ~5-10x slower, a step of few large ops far less. Sleep instead, for all variants alike; set
# OMP_WAIT_POLICY=ACTIVE to measure the other regime. Must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHAPES, cmc_plus_loss, make_batch, simulate
from reference_cmc import PlainCMC, reference_to_cmc_state

from affectus.data.batches import Batch
from affectus.data.schemes import get_scheme
from affectus.models.cmc import CMC, CMCConfig
from affectus.models.cmc_plus import CMCPlus, CMCPlusConfig
from affectus.models.layers import bucket_order
from affectus.training.recipes.cmc_plus import CMCPlusRecipe, CMCPlusRecipeConfig

N_TRAIN = 1284


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: Batch, plain: bool) -> None:
    if plain:
        final, unimodal, _, _ = model(batch.text, batch.audio, batch.vision)
    else:
        out = model(batch)
        final, unimodal = out.logits, out.modality_logits
    y = batch.classes
    loss = F.cross_entropy(final, y) + sum(F.cross_entropy(unimodal[:, k], y) for k in range(3))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def cmc_plus_step(model: CMCPlus, opt: torch.optim.Optimizer, batch: Batch, rc: CMCPlusRecipeConfig) -> None:
    """One CMC+ stage-2 step on a batch; only the router's parameters are in `opt` (experts frozen)."""
    loss = cmc_plus_loss(model, batch, rc)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def recipe_router_fit_seconds(model: CMCPlus, data: dict[str, np.ndarray], rc: CMCPlusRecipeConfig) -> float:
    """Seconds of the recipe's own stage 2 (`_fit_router`: `router_steps` full-batch Adam steps) on the
    frozen experts' logits for all N_TRAIN rows, pooled once beforehand (not timed, as in the recipe)."""
    model.eval()
    with torch.no_grad():
        rows = np.arange(N_TRAIN)
        z = torch.cat([model.expert_logits(model.pooled(make_batch(data, r, cut=False)))
                       for r in np.array_split(rows, 8)])  # (N, K, C)
    ctx = SimpleNamespace(recipe=rc, model=model, scheme=get_scheme("mosi"), train=SimpleNamespace(seed=0))
    y = torch.from_numpy(data["classes"]).long()
    t0 = time.perf_counter()
    CMCPlusRecipe()._fit_router(ctx, z, y)  # type: ignore[arg-type]
    return time.perf_counter() - t0


def spread(batches: list[np.ndarray], k: int) -> list[np.ndarray]:
    """k full batches at the midpoints of k equal strata of the list (all batches when k >= len):
    over length-sorted buckets, an unbiased sample of an epoch's cost (endpoints would overweight
    the longest bucket, whose cost grows with the square of its length)."""
    if k >= len(batches):
        return batches
    full = [b for b in batches if len(b) == max(len(x) for x in batches)]
    return [full[int((i + 0.5) * len(full) / k)] for i in range(k)]


@torch.no_grad()
def max_output_diff(
    ref: PlainCMC, ours: CMC, data: dict[str, np.ndarray], batches: list[np.ndarray]
) -> float:
    ref.eval()
    ours.eval()
    diff = 0.0
    for rows in batches:
        b = make_batch(data, rows, cut=False)
        final, unimodal, w, h = ref(b.text, b.audio, b.vision)
        out = ours(b)
        for x, y in (
            (final, out.logits),
            (unimodal, out.modality_logits),
            (w, out.router_weights),
            (h, out.embeddings),
        ):
            diff = max(diff, float((x - y).abs().max()))
    return diff


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 batches per variant per round, 3 rounds")
    ap.add_argument(
        "--batches", type=int, default=None, help="batches per variant per round (default: epoch)"
    )
    ap.add_argument("--rounds", type=int, default=None, help="repeats (default 1, --quick 3)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    batch_size = 64
    data = simulate(N_TRAIN, args.seed)
    rng = np.random.default_rng(args.seed)
    epoch_batches = -(-N_TRAIN // batch_size)
    n_batches = args.batches or (4 if args.quick else epoch_batches)
    rounds = args.rounds or (3 if args.quick else 1)

    perm = rng.permutation(N_TRAIN)
    shuffled = [perm[i : i + batch_size] for i in range(0, N_TRAIN, batch_size)]
    lengths = np.stack([data[f"{m}_lengths"] for m in SHAPES], axis=1)
    order = bucket_order(lengths, batch_size, rng)
    buckets = [order[i : i + batch_size] for i in range(0, N_TRAIN, batch_size)]
    buckets_by_length = sorted(buckets, key=lambda r: float(data["vision_lengths"][r].max()))

    dims = {m: dim for m, (_, dim) in SHAPES.items()}
    ref = PlainCMC(dims, layers=2, heads=4, output_dropout=0.5)
    models: dict[str, tuple[torch.nn.Module, bool, list[np.ndarray], bool]] = {}
    faithful = CMC(CMCConfig(dims=dims, layers=2, heads=4, output_dropout=0.5, padding="faithful"))
    masked = CMC(CMCConfig(dims=dims, layers=2, heads=4, output_dropout=0.5, padding="masked"))
    for m in (faithful, masked):
        m.load_state_dict(reference_to_cmc_state(ref.state_dict()))
    diff = max_output_diff(ref, faithful, data, shuffled[:3])
    # CMC+ at its defaults (64-unit MLP experts, a 16-unit evidence router), stage 2: experts frozen
    plus = CMCPlus(CMCPlusConfig(dims=dims, hidden=64, router_hidden=16))
    plus_rc = CMCPlusRecipeConfig()
    models = {
        "reference": (ref, True, spread(shuffled, n_batches), False),
        "faithful": (faithful, False, spread(shuffled, n_batches), False),
        "masked_bucketed": (masked, False, spread(buckets_by_length, n_batches), True),
        "cmc_plus": (plus, False, spread(shuffled, n_batches), False),
    }
    steps: dict[str, Callable[[np.ndarray], None]] = {}
    for name, (model, plain, _, cut) in models.items():
        model.train()
        if name == "cmc_plus":
            plus.experts.eval().requires_grad_(False)
            opt = torch.optim.Adam(plus.router.parameters(), lr=plus_rc.router_lr)
            steps[name] = lambda rows, opt=opt: cmc_plus_step(plus, opt, make_batch(data, rows, False), plus_rc)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            steps[name] = lambda rows, model=model, opt=opt, plain=plain, cut=cut: train_step(
                model, opt, make_batch(data, rows, cut), plain
            )
        steps[name](models[name][2][0])  # warm-up, not timed

    per_round: dict[str, list[float]] = {name: [] for name in models}  # samples/s
    for _ in range(rounds):
        seconds = dict.fromkeys(models, 0.0)
        samples = dict.fromkeys(models, 0)
        for i in range(n_batches):
            for name, (_, _, batches, _) in models.items():
                rows = batches[i % len(batches)]
                t0 = time.perf_counter()
                steps[name](rows)
                seconds[name] += time.perf_counter() - t0
                samples[name] += len(rows)
        for name in models:
            per_round[name].append(samples[name] / seconds[name])

    med = {name: statistics.median(v) for name, v in per_round.items()}
    ratio = {
        name: statistics.median(a / r for a, r in zip(per_round[name], per_round["reference"]))
        for name in ("faithful", "masked_bucketed", "cmc_plus")
    }
    router_fit_s = statistics.median(recipe_router_fit_seconds(plus, data, plus_rc) for _ in range(rounds))
    result = {
        "benchmark": "CMC stage-2 training epoch, simulated CMU-MOSI shapes",
        "device": f"cpu ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "samples_per_epoch": N_TRAIN,
        "batch_size": batch_size,
        "batches_timed_per_round": n_batches,
        "epoch_batches": epoch_batches,
        "extrapolated": n_batches < epoch_batches,
        "rounds": rounds,
        "samples_per_s": {k: round(v, 2) for k, v in med.items()},
        "epoch_s": {k: round(N_TRAIN / v, 3) for k, v in med.items()},
        "speedup_vs_reference": {k: round(v, 2) for k, v in ratio.items()},
        "samples_per_s_per_round": {k: [round(x, 2) for x in v] for k, v in per_round.items()},
        "max_abs_diff_faithful_vs_reference_eval": diff,
        "cmc_plus_config": {"hidden": plus.config.hidden, "router_hidden": plus.config.router_hidden,
                            "pool": plus.config.pool, "router_lr": plus_rc.router_lr,
                            "step": "stage 2: whole-model forward, CE + Acc2 BCE, Adam on the router (experts frozen)"},
        "cmc_plus_recipe_router_fit_s": round(router_fit_s, 3),
        "cmc_plus_recipe_router_steps": plus_rc.router_steps,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        # how busy the shared machine was: ratios move with it (docs/model.md)
        "load_average_1_5_15_min_at_end": [round(x, 2) for x in os.getloadavg()],
        "lengths": "u ~ U(0.1, 1) per sample, x U(0.95, 1.05) per modality, x padded length",
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
