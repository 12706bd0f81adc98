"""PLGM (eqs. 19-30): label refinement on hand-worked numbers, the bank, momentum schedules, EMA models."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn
from torch.optim.swa_utils import AveragedModel

from affectus.errors import AffectusError
from affectus.training.recipes.cmc.plgm import (
    ModalityEMA,
    MomentumSchedule,
    PseudoLabelBank,
    momentum_schedule,
    refine_labels,
)
from affectus.utils.threads import enable_flush_denormal


def logits_for(*probs: float) -> torch.Tensor:
    """Logits whose softmax is exactly-ish `probs` (log p)."""
    return torch.tensor(probs, dtype=torch.float32).log()


# p = softmax = [0.7, 0.2, 0.1]:
#   ||p - e0|| = sqrt(0.3^2 + 0.2^2 + 0.1^2) = sqrt(0.14) = 0.3741657
#   ||p - e1|| = sqrt(0.7^2 + 0.8^2 + 0.1^2) = sqrt(1.14) = 1.0677078
#   ||p - e2|| = sqrt(0.7^2 + 0.2^2 + 0.9^2) = sqrt(1.34) = 1.1575837
#   r = argmin = 0 (eq. 24)
P_A = (0.7, 0.2, 0.1)
ALPHA_A_T1 = (math.sqrt(1.14) - math.sqrt(0.14)) / (math.sqrt(1.14) + math.sqrt(0.14))  # = 0.4810006, eq. 25
# p = [0.9, 0.05, 0.05]: ||p - e0|| = sqrt(0.015) = 0.1224745, ||p - e1|| = sqrt(1.715) = 1.3095801
P_B = (0.9, 0.05, 0.05)
ALPHA_B_T1 = (math.sqrt(1.715) - math.sqrt(0.015)) / (math.sqrt(1.715) + math.sqrt(0.015))  # = 0.8289528


def test_refine_easy_sample_keeps_its_label():
    # target 0 == r: g = g_r -> alpha = 0, candidate = e0 (eq. 27)
    cand, alpha, r = refine_labels(logits_for(*P_A)[None], torch.tensor([0]))
    assert r.tolist() == [0]
    assert alpha.item() == 0.0
    assert torch.equal(cand[0], torch.tensor([1.0, 0.0, 0.0]))


def test_refine_incorrect_sample_moves_towards_r():
    # target 1, r = 0: alpha = (1.0677078 - 0.3741657) / (1.0677078 + 0.3741657) = 0.4810006
    # candidate = (1 - alpha) e1 + alpha e0 = [0.4810006, 0.5189994, 0]
    assert ALPHA_A_T1 == pytest.approx(0.4810006, abs=1e-7)
    cand, alpha, r = refine_labels(logits_for(*P_A)[None], torch.tensor([1]))
    assert r.item() == 0
    assert alpha.item() == pytest.approx(ALPHA_A_T1, abs=1e-6)
    assert cand[0].tolist() == pytest.approx([ALPHA_A_T1, 1 - ALPHA_A_T1, 0.0], abs=1e-6)


def test_refine_one_hot_softmax():
    # logits [0, -200, -200]: exp(-200) underflows in float32, softmax is exactly e0.
    logits = torch.tensor([[0.0, -200.0, -200.0]] * 2)
    assert torch.equal(torch.softmax(logits, -1)[0], torch.tensor([1.0, 0.0, 0.0]))
    cand, alpha, _ = refine_labels(logits, torch.tensor([0, 2]))
    # target 0: g = g_r = 0, alpha = 0/0 -> 0 (not NaN); the label stays e0
    assert alpha[0].item() == 0.0 and torch.equal(cand[0], torch.tensor([1.0, 0.0, 0.0]))
    # target 2: g = sqrt(2), g_r = 0 -> alpha = 1: the candidate is all r
    assert alpha[1].item() == pytest.approx(1.0) and cand[1].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert torch.isfinite(cand).all()


def test_update_blends_with_momentum():
    # one sample, all modalities initial class 1; text sees P_A, audio P_B, vision a confident class-1 output
    bank = PseudoLabelBank(torch.tensor([1]))
    logits = torch.stack([logits_for(*P_A), logits_for(*P_B), logits_for(0.1, 0.8, 0.1)])[None]  # (1, 3, 3)
    bank.update(torch.tensor([0]), logits, torch.tensor([0.9, 0.5, 0.7]))
    # eq. 28, text: 0.9 * e1 + 0.1 * [0.4810006, 0.5189994, 0] = [0.0481001, 0.9518999, 0]
    assert bank.soft[0, 0].tolist() == pytest.approx([0.1 * ALPHA_A_T1, 0.9 + 0.1 * (1 - ALPHA_A_T1), 0.0], abs=1e-6)
    # audio: 0.5 * e1 + 0.5 * [0.8289528, 0.1710472, 0] = [0.4144764, 0.5855236, 0]
    assert bank.soft[0, 1].tolist() == pytest.approx([0.5 * ALPHA_B_T1, 0.5 + 0.5 * (1 - ALPHA_B_T1), 0.0], abs=1e-6)
    # vision: r = target = 1, alpha = 0, candidate e1: the label is unchanged
    assert bank.soft[0, 2].tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-7)
    assert bank.soft.sum(-1)[0].tolist() == pytest.approx([1.0, 1.0, 1.0])  # stays on the simplex
    assert bank.targets([0]).tolist() == [[1, 1, 1]]


def test_target_drifts_with_the_stored_label():
    # initial class 1, the model keeps predicting P_B, m = 0.5 (all modalities)
    bank = PseudoLabelBank(torch.tensor([1]))
    logits = logits_for(*P_B).expand(1, 3, 3)
    a = ALPHA_B_T1
    bank.update([0], logits, 0.5)  # target 1: [0.4144764, 0.5855236, 0]
    assert bank.targets([0])[0, 0].item() == 1
    bank.update([0], logits, 0.5)  # target 1: [0.6217146, 0.3782854, 0] -> argmax flips to 0
    s2 = [0.5 * 0.5 * a + 0.5 * a, 0.5 * (0.5 + 0.5 * (1 - a)) + 0.5 * (1 - a)]
    assert bank.soft[0, 0, :2].tolist() == pytest.approx(s2, abs=1e-6)
    assert bank.targets([0]).tolist() == [[0, 0, 0]]
    # third update: the target is now the stored argmax 0 (not the initial 1), so r = target, alpha = 0,
    # candidate e0: [0.8108573, 0.1891427, 0]. With the initial label as target it would be [0.7253, 0.2747].
    bank.update([0], logits, 0.5)
    assert bank.soft[0, 0, :2].tolist() == pytest.approx([0.5 * s2[0] + 0.5, 0.5 * s2[1]], abs=1e-6)
    assert bank.flip_counts().tolist() == [1, 1, 1]


def _authors_refine(logits: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
    """A literal per-sample loop of eqs. 21-27 (the structure of the authors' code), to check vectorisation."""
    probs = torch.softmax(logits, -1)
    out = torch.zeros_like(probs)
    for i in range(len(probs)):
        best, best_c = float("inf"), 0
        for c in range(probs.shape[1]):
            norm = torch.linalg.vector_norm(probs[i] - torch.eye(probs.shape[1])[c]).item()
            if norm < best:
                best, best_c = norm, c
        rev = torch.eye(probs.shape[1])[best_c]
        g = torch.linalg.vector_norm(probs[i] - one_hot[i])
        g_r = torch.linalg.vector_norm(probs[i] - rev)
        alpha = (g - g_r) / (g + g_r)
        out[i] = (1 - alpha) * one_hot[i] + alpha * rev
    return out


def test_vectorised_update_matches_a_per_sample_loop():
    gen = torch.Generator().manual_seed(0)
    n, b = 20, 8
    bank = PseudoLabelBank(torch.randint(0, 3, (n,), generator=gen))
    momenta = torch.tensor([0.8, 0.9, 0.6])
    for _ in range(5):
        idx = torch.randperm(n, generator=gen)[:b]
        logits = 3 * torch.randn(b, 3, 3, generator=gen)
        before = bank.soft[idx].clone()
        bank.update(idx, logits, momenta)
        for k in range(3):
            one_hot = torch.eye(3)[before[:, k].argmax(-1)]
            expected = momenta[k] * before[:, k] + (1 - momenta[k]) * _authors_refine(logits[:, k], one_hot)
            assert torch.allclose(bank.soft[idx, k], expected, atol=1e-6)


def test_frozen_bank_keeps_the_multimodal_label():
    bank = PseudoLabelBank(torch.tensor([0, 2]), frozen=True)
    bank.update([0, 1], 5 * torch.randn(2, 3, 3), 0.0)
    assert torch.equal(bank.hard_labels(), torch.tensor([[0, 0, 0], [2, 2, 2]]))
    assert bank.flip_counts().tolist() == [0, 0, 0]


def test_ground_truth_initialisation_and_bad_input():
    bank = PseudoLabelBank(torch.tensor([[0, 1, 2], [2, 2, 1]]))  # CMC-GT: per-modality classes
    assert bank.targets(torch.tensor([1, 0])).tolist() == [[2, 2, 1], [0, 1, 2]]
    assert bank.soft.dtype == torch.float32 and bank.soft.shape == (2, 3, 3)
    with pytest.raises(ValueError):
        PseudoLabelBank(torch.tensor([0, 3]))
    with pytest.raises(ValueError):
        PseudoLabelBank(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError):
        bank.update([0], torch.zeros(1, 3, 2), 0.5)


def test_flips_history_state_round_trip_and_export(tmp_path):
    bank = PseudoLabelBank(torch.tensor([1, 1, 0, 2]))
    confident0 = torch.tensor([[0.0, -200.0, -200.0]]).expand(1, 3, 3)
    assert bank.record_epoch() == {"text": 0, "audio": 0, "vision": 0}
    bank.update([1], confident0, torch.tensor([0.0, 0.9, 0.9]))  # text of sample 1 jumps to class 0
    assert bank.record_epoch() == {"text": 1, "audio": 0, "vision": 0}
    assert torch.nonzero(bank.flip_mask()[:, 0]).flatten().tolist() == [1] and not bank.flip_mask()[:, 1].any()

    state = st_load(st_save(bank.state_dict()))  # plain tensors: goes through safetensors
    other = PseudoLabelBank(torch.tensor([1, 1, 0, 2]))
    other.load_state_dict(state)
    assert torch.equal(other.soft, bank.soft) and other.flip_history == [[0, 0, 0], [1, 0, 0]]
    with pytest.raises(AffectusError):
        PseudoLabelBank(torch.tensor([1, 1, 0, 0])).load_state_dict(state)

    rows = bank.export(["a", "b", "c", "d"], ["one", "two, with comma", "three", "four"], tmp_path / "pl.csv")
    assert rows[1]["initial_text"] == 1 and rows[1]["label_text"] == 0 and rows[1]["flipped_text"] == 1
    assert rows[1]["soft_text_0"] == 1.0 and rows[1]["label_audio"] == 1
    with open(tmp_path / "pl.csv", newline="", encoding="utf-8") as f:
        read = list(csv.DictReader(f))
    assert len(read) == 4 and read[1]["raw_text"] == "two, with comma" and read[1]["flipped_text"] == "1"
    assert read[0]["id"] == "a" and "soft_vision_2" in read[0]
    with pytest.raises(ValueError):
        bank.export(["a"])


# ---- momentum schedules (eq. 30) -------------------------------------------------------------


def test_momentum_code_form():
    # m_E = 1 - 0.2 / sqrt(E): 0.8, 1 - 0.2/1.4142136, 1 - 0.2/1.7320508, 1 - 0.2/2
    expected = [0.8, 0.8585786, 0.8845299, 0.9]
    assert [momentum_schedule(0.8, 0.5, e) for e in range(1, 5)] == pytest.approx(expected, abs=1e-7)


def test_momentum_paper_form():
    # m_E = 1 - (1 - m_{E-1}) / sqrt(E), m_0 = 0.8:
    #   E=1: 1 - 0.2/1 = 0.8;  E=2: 1 - 0.2/1.4142136 = 0.8585786 (1 - m = 0.1414214)
    #   E=3: 1 - 0.1414214/1.7320508 = 0.9183503 (1 - m = 0.0816497);  E=4: 1 - 0.0816497/2 = 0.9591752
    expected = [0.8, 0.8585786, 0.9183503, 0.9591752]
    assert [momentum_schedule(0.8, 0.5, e, "paper") for e in range(1, 5)] == pytest.approx(expected, abs=1e-7)
    # closed form: 1 - m_E = (1 - m0) / (E!)^gamma
    assert 1 - momentum_schedule(0.8, 0.5, 4, "paper") == pytest.approx(0.2 / math.sqrt(24))
    assert momentum_schedule(0.8, 0.5, 3, "paper", previous=0.8585786) == pytest.approx(0.9183503, abs=1e-7)
    with pytest.raises(ValueError):
        momentum_schedule(0.8, 0.5, 0)
    with pytest.raises(ValueError):
        momentum_schedule(0.8, 0.5, 1, "recursive")


@pytest.mark.parametrize("form", ["code", "paper"])
def test_momentum_schedule_class(form):
    sched = MomentumSchedule(0.8, 0.5, form)
    assert sched.value == 0.8
    values = [sched.at_epoch(e) for e in range(1, 6)]
    assert values == [momentum_schedule(0.8, 0.5, e, form) for e in range(1, 6)]
    resumed = MomentumSchedule(0.3, 1.0, "code")
    resumed.load_state_dict(sched.state_dict())
    assert resumed.at_epoch(6) == momentum_schedule(0.8, 0.5, 6, form)
    fresh = MomentumSchedule(0.8, 0.5, form)  # jumping straight to epoch 6 gives the same value
    assert fresh.at_epoch(6) == pytest.approx(resumed.value, abs=1e-12)


# ---- EMA models (eq. 29) ---------------------------------------------------------------------


def _branches() -> nn.ModuleDict:
    """Two unimodal branches: `a` with BatchNorm (float and integer buffers), `b` without."""
    return nn.ModuleDict({"a": nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2), nn.Linear(2, 2)),
                          "b": nn.Linear(3, 2)})


def _perturb(branches: nn.ModuleDict, seed: int) -> None:
    """Stand-in for an optimiser step: moves every parameter, BatchNorm running stats and batch count."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in branches.parameters():
            p.add_(torch.randn(p.shape, generator=gen))
    branches.train()
    branches["a"](torch.randn(5, 3, generator=gen) * 3 + 1)


class ReferenceEMA:
    """The hand-written EMA this project used before `AveragedModel` (kept to check the new one against):
    a clone of every parameter and buffer; floats lerped by 1 - m, integer buffers copied."""

    def __init__(self, branches: nn.ModuleDict) -> None:
        self.shadow = {m: {n: t.detach().clone() for n, t in b.state_dict().items()} for m, b in branches.items()}

    @torch.no_grad()
    def update(self, branches: nn.ModuleDict, momenta: dict[str, float]) -> None:
        for m, shadow in self.shadow.items():
            for name, new in branches[m].state_dict().items():
                if shadow[name].is_floating_point():
                    shadow[name].lerp_(new, 1.0 - momenta[m])
                else:
                    shadow[name].copy_(new)


def test_ema_matches_the_previous_implementation_with_changing_momenta():
    torch.manual_seed(0)
    branches = _branches()
    ema, reference = ModalityEMA(branches), ReferenceEMA(branches)
    for step in range(6):
        _perturb(branches, step)
        momenta = {"a": 0.5 + 0.08 * step, "b": 0.9 - 0.1 * step}  # per modality, changing every step
        ema.update(branches, momenta)
        reference.update(branches, momenta)
        for m in ("a", "b"):
            state = ema.branch(m).state_dict()
            assert set(state) == set(reference.shadow[m])
            for name, t in reference.shadow[m].items():
                assert torch.allclose(state[name], t, atol=1e-6, rtol=0), (step, m, name)
    assert ema.branch("a")[0].num_batches_tracked.item() == 6  # the batch counter is copied, not averaged
    assert int(ema.models["a"].n_averaged) == 7  # the copy at construction, then 6 updates


def test_ema_follows_the_formula_for_parameters_and_buffers():
    torch.manual_seed(0)
    branches = _branches()
    ema = ModalityEMA(branches)
    assert isinstance(ema.models["a"], AveragedModel) and ema.models["a"].use_buffers
    old = {m: {n: t.clone() for n, t in b.state_dict().items()} for m, b in branches.items()}
    _perturb(branches, 1)
    ema.update(branches, {"a": 0.75, "b": 0.5})
    state, new = ema.branch("a").state_dict(), branches["a"].state_dict()
    for name in ("0.weight", "0.running_mean", "0.running_var", "1.bias", "2.weight"):
        assert torch.allclose(state[name], 0.75 * old["a"][name] + 0.25 * new[name], atol=1e-6), name
    expected_b = 0.5 * old["b"]["weight"] + 0.5 * branches["b"].weight
    assert torch.allclose(ema.branch("b").weight, expected_b, atol=1e-6)
    assert not any(p.requires_grad for p in ema.parameters())  # averaged, never trained


def test_ema_copy_to_and_state_round_trip():
    torch.manual_seed(0)
    branches = _branches()
    ema = ModalityEMA(branches)
    _perturb(branches, 2)
    ema.update(branches, 0.9)
    target = _branches()
    ema.copy_to(target, modalities=["a"])
    assert torch.equal(target["a"][0].running_var, ema.branch("a")[0].running_var)
    assert torch.equal(target["a"][2].weight, ema.branch("a")[2].weight)
    assert not torch.equal(target["b"].weight, ema.branch("b").weight)  # b not copied
    # a resumed run: a fresh EMA loads the saved state and continues exactly as the original
    snapshot = {k: v.clone() for k, v in ema.state_dict().items()}
    other = ModalityEMA(_branches())
    other.load_state_dict(snapshot)
    _perturb(branches, 3)
    for e in (ema, other):
        e.update(branches, {"a": 0.3, "b": 0.7})
    for k, v in ema.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k


def test_enable_flush_denormal_flushes():
    was_on = torch.tensor([1e-39], dtype=torch.float32).item() == 0.0  # torch has no getter for the flag
    try:
        if enable_flush_denormal():
            assert torch.tensor([1e-39], dtype=torch.float32).item() == 0.0
    finally:
        torch.set_flush_denormal(was_on)
