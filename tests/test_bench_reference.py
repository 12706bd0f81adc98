"""benchmarks/reference_cmc.py, the speed benchmark's plain-PyTorch CMC: its weights load into our CMC
and both compute the same function in eval mode (bench_speed.py relies on this before timing)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from affectus.data.batches import Batch
from affectus.models.cmc import CMC, CMCConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from reference_cmc import PlainCMC, reference_to_cmc_state

DIMS = {"text": 6, "audio": 3, "vision": 4}


def test_reference_weights_load_into_cmc_and_give_the_same_outputs():
    torch.manual_seed(0)
    ref = PlainCMC(DIMS, layers=2, heads=4, output_dropout=0.5).eval()
    ours = CMC(CMCConfig(dims=DIMS, layers=2, heads=4, output_dropout=0.5)).eval()
    ours.load_state_dict(reference_to_cmc_state(ref.state_dict()))  # strict: every name maps
    b, lengths = 5, {"text": 7, "audio": 9, "vision": 8}
    x = {m: torch.randn(b, lengths[m], DIMS[m]) for m in DIMS}
    for m in ("audio", "vision"):
        x[m][:, 5:] = 0.0  # zero padding, which faithful mode compacts
    batch = Batch(index=torch.arange(b), classes=torch.zeros(b, dtype=torch.long), **x,
                  **{f"{m}_lengths": torch.full((b,), lengths[m]) for m in DIMS})
    with torch.no_grad():
        final, unimodal, _, _ = ref(x["text"], x["audio"], x["vision"])
        out = ours(batch)
    assert torch.allclose(final, out.logits, atol=1e-5)
    assert torch.allclose(unimodal, out.modality_logits, atol=1e-5)
