"""CubeMLP (Sun et al., ACM MM 2022): a pinned fixed-seed run, its design (MLP mixing along the sequence,
modality and channel axes; padding ignored) and the block layout it refuses before anything trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import affectus
from affectus.cli import main
from affectus.data.mmsa import load_dataset
from affectus.models.cubemlp import CubeMLP, CubeMLPConfig
from conftest import TINY_BATCH_DIMS, one_error_line, tiny_batch

FAST = ["--set", "train.epochs=2", "--set", "train.patience=1", "--set", "train.batch_size=32", "--threads", "1",
        "--quiet"]
SMALL = ["--set", "model.d_common=16", "--set", "model.time_len=8", "--set", "model.d_hiddens=[[4, 3, 16], [2, 3, 8]]",
         "--set", "model.d_outs=[[4, 3, 16], [2, 3, 8]]"]

# Printed on branch bl-cumdf1 (after commit 97724c4, with the GRUs' orthogonal initialisation) by training `cubemlp` with FAST and SMALL on `sim_file`
# (tiny_sim_config) and reading the first four test probabilities through affectus.load(out).predict.
RECORDED = [[0.46124, 0.20905, 0.32971], [0.44446, 0.21252, 0.34302], [0.4697, 0.20552, 0.32479],
            [0.44091, 0.20194, 0.35715]]


@pytest.mark.slow
def test_fixed_seed_run_matches_recorded_values(sim_file, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(sim_file), "--model", "cubemlp", "--out", str(out), *FAST, *SMALL]) == 0
    got = affectus.load(out).predict(load_dataset(sim_file)["test"]).probabilities[:4]
    np.testing.assert_allclose(got, np.array(RECORDED), atol=2e-5)


def _small() -> CubeMLP:
    return CubeMLP(CubeMLPConfig(dims=dict(TINY_BATCH_DIMS), d_common=8, rnn_layers=1, time_len=6,
                                 d_hiddens=[[4, 3, 8], [2, 3, 4]], d_outs=[[4, 3, 8], [2, 3, 4]]))


def test_the_cube_is_mixed_along_every_axis():
    """The design: the cube (B, L, M, d) is resized along L and d by the blocks, and the modality-mixing
    unit makes every modality's row depend on the others (without it, a text row would never see audio)."""
    torch.manual_seed(0)
    model = _small().eval()
    batch = tiny_batch()
    cube = model.mix(batch)
    assert cube.shape == (4, 2, 3, 4)  # L 6 -> 4 -> 2, M 3, d 8 -> 8 -> 4
    batch.audio.mul_(-2.0)
    changed = model.mix(batch)
    text_row = (changed[:, :, 0] - cube[:, :, 0]).abs().amax()
    assert text_row > 1e-4  # audio reached the text row through modality mixing
    # the same network without the modality-mixing units' effect (identity mixing along M) keeps rows apart
    for block in model.blocks:
        unit = block.units[1]
        torch.nn.init.zeros_(unit.fc2.weight)
        torch.nn.init.zeros_(unit.fc2.bias)
        unit.residual.weight.data.copy_(torch.eye(unit.residual.weight.shape[0]))
    batch = tiny_batch()
    separate = model.mix(batch)
    batch.audio.mul_(-2.0)
    assert torch.allclose(model.mix(batch)[:, :, 0], separate[:, :, 0])


def test_padding_is_ignored():
    torch.manual_seed(0)
    model = _small().eval()
    batch = tiny_batch()
    before = model(batch).logits
    batch.text[1, 3:] = 1e3  # beyond text_lengths[1] = 3
    batch.audio[1, 2:] = -1e3  # beyond audio_lengths[1] = 2
    batch.vision[3, 1:] = 7.0  # beyond vision_lengths[3] = 1
    torch.testing.assert_close(model(batch).logits, before)


@pytest.mark.parametrize(("setting", "fragment"), [
    ("model.d_outs=[[50, 3]]", "model.d_outs"),
    ("model.d_hiddens=[[50, 3, 128]]", "as many [L, M, d] triples as model.d_outs"),
])
def test_a_bad_block_layout_is_refused_before_training(sim_file, tmp_path, capsys, setting, fragment):
    out = tmp_path / "run"
    rc = main(["train", "--data", str(sim_file), "--model", "cubemlp", "--out", str(out), "--set", setting, *FAST])
    one_error_line(rc, capsys.readouterr().err, fragment)
    assert not out.exists()
