"""The predictor (inference/predictor.py): loading a run imports no training code, bad input arrays are one
message, unsigned and whole-float lengths are taken, non-finite outputs raise instead of reading as class 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from affectus.cli import main
from affectus.errors import AffectusError
from conftest import SMALL_SIM

FAST = ["--set", "train.epochs=2", "--set", "train.patience=1", "--set", "train.batch_size=16", "--threads", "1",
        "--quiet"]


def test_load_imports_no_training_code_or_sklearn(sim_file, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(sim_file), "--model", "late_fusion", "--out", str(out), *FAST]) == 0
    code = ("import sys, affectus; p = affectus.load(sys.argv[1]); "
            "bad = sorted(m for m in sys.modules if m.startswith(('affectus.training', 'sklearn'))); print(bad)")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


# ------------------------------------------------------------ Predictor input checks and non-finite outputs

@pytest.fixture(scope="module")
def predictor(trained: Path):
    from affectus.inference.predictor import load

    return load(trained)


def _arrays(n: int = 3, **changes) -> dict:
    rng = np.random.default_rng(0)
    arrays = {m: rng.standard_normal((n, SMALL_SIM.seq_lens[m], SMALL_SIM.dims[m])).astype(np.float32)
              for m in ("text", "audio", "vision")}
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


@pytest.mark.parametrize("data, needle", [
    (_arrays(audio_lengths=np.array([2, -1, 3])), "audio_lengths: length -1 outside [0, 6]"),
    (_arrays(vision_lengths=np.array([2, 9, 3])), "vision_lengths: length 9 outside [0, 5]"),
    (_arrays(audio_lengths=np.array([2, 2**64 - 1, 3], np.uint64)), "length 18446744073709551615 outside"),
    (_arrays(audio_lengths=np.array([2.0, 2.5, 3.0])), "audio_lengths: expected whole numbers"),
    (_arrays(text_lengths=np.array([1, 2])), "text_lengths: expected shape (3,)"),
    (_arrays(text_lengths=np.array(["1", "2", "3"])), "text_lengths: expected numbers"),
    (_arrays(0), "empty batch"),
    ([np.zeros((3, 4, 6))], "expected a Split, a Batch or a dict of arrays"),
    (_arrays(audio=np.full((3, 6, 5), "0.5")), "audio: expected numbers, got dtype <U3"),
    (_arrays(vision=None), "missing array 'vision'"),
    (_arrays(vison=np.zeros((3, 5, 7))), "unknown array 'vison' (did you mean 'vision'?)"),
    (_arrays(audio=np.zeros((2, 6, 5), np.float32)), "different numbers of samples (text 3, audio 2, vision 3)"),
    (_arrays(text=np.zeros((3, 0, 6), np.float32)), "text: sequence length L = 0"),
    (_arrays(text=np.zeros((3, 4, 7), np.float32)), "text: expected shape (N, L, 6)"),
    (_arrays(audio=np.full((3, 6, 5), 1e300)), "audio: contains NaN or infinite values"),
])
def test_predict_refuses_bad_input_in_one_message(predictor, data, needle) -> None:
    with pytest.raises(AffectusError) as info:
        predictor.predict(data)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_predict_accepts_unsigned_and_whole_float_lengths(predictor) -> None:
    a = predictor.predict(_arrays(audio_lengths=np.array([2, 6, 3], np.uint8)))
    b = predictor.predict(_arrays(audio_lengths=np.array([2.0, 6.0, 3.0])))
    np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=1e-6)
    assert a.classes.shape == (3,)


def test_non_finite_outputs_raise_instead_of_class_0(run_copy: Path) -> None:
    import torch

    from affectus.inference.predictor import load

    pred = load(run_copy)
    with torch.no_grad():
        for p in pred.model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(AffectusError, match="NaN/inf outputs for 3 sample"):
        pred.predict(_arrays())
