"""CMC and its layers: same function as PyTorch's nn.TransformerEncoder (compacted or not), masked
padding, PFM, router, the two stages, the attention flag, BERT text input, branches and parameter names.
The attention kernels themselves: tests/test_attention.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from affectus.data.batches import Batch
from affectus.errors import AffectusError
from affectus.models import layers
from affectus.models.cmc import CMC, CMCConfig, build
from affectus.models.layers import (
    ConsensusRouter,
    ResidualHead,
    UnimodalEncoder,
    bucket_order,
    convert_torch_encoder_state,
    pfm,
    plan_groups,
)
from affectus.models.registry import create_model, make_config

DIMS = {"text": 6, "audio": 3, "vision": 4}
D, HEADS, FF = 8, 2, 16


class PlainEncoder(nn.Module):
    """The authors' encoder in plain PyTorch: BN -> Conv1d -> nn.TransformerEncoder -> mean -> L2."""

    def __init__(self, in_dim: int, layers_: int, batchnorm: bool, dropout: float = 0.0):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_dim) if batchnorm else None
        self.proj = nn.Conv1d(in_dim, D, kernel_size=1, bias=False)
        layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers_, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)
        if self.bn is not None:
            x = self.bn(x)
        return F.normalize(self.transformer(self.proj(x).transpose(1, 2)).mean(dim=1), dim=-1)


def _pair(in_dim=5, layers_=2, batchnorm=True, **kw) -> tuple[PlainEncoder, UnimodalEncoder]:
    torch.manual_seed(0)
    ref = PlainEncoder(in_dim, layers_, batchnorm)
    ours = UnimodalEncoder(in_dim, D, layers_, HEADS, FF, dropout=0.0, batchnorm=batchnorm, **kw)
    ours.load_state_dict(convert_torch_encoder_state(ref.state_dict()))
    return ref, ours


def _padded(b=7, steps=12, dim=5, seed=0, pad_value=0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features with rows after each length set to `pad_value`; lengths include 0, 1 and full."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, steps, dim, generator=g) * 2 + 1
    lengths = torch.randint(1, steps + 1, (b,), generator=g)
    lengths[:3] = torch.tensor([steps, 1, 0])
    for i, n in enumerate(lengths.tolist()):
        x[i, n:] = pad_value
    return x, lengths


@pytest.fixture
def fine_groups(monkeypatch):
    """Make plan_groups split batches into many groups, so the grouped path is exercised too."""
    monkeypatch.setattr(layers, "_GROUP_OVERHEAD", 0)


# -- the encoder against nn.TransformerEncoder ------------------------------------------------------
@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("grouped", [False, True])
def test_faithful_encoder_matches_torch_in_eval(batchnorm, grouped, request):
    if grouped:
        request.getfixturevalue("fine_groups")
    ref, ours = _pair(batchnorm=batchnorm)
    x, lengths = _padded()
    assert (UnimodalEncoder._identical_tail(x) > 1).any()  # the compacted path is taken
    ref.eval(), ours.eval()
    with torch.no_grad():
        assert torch.allclose(ours(x, lengths), ref(x), atol=1e-5)
        uncompacted = UnimodalEncoder(5, D, 2, HEADS, FF, 0.0, batchnorm, compact=False).eval()
        uncompacted.load_state_dict(ours.state_dict())
        assert torch.allclose(uncompacted(x, lengths), ref(x), atol=1e-5)


def test_faithful_encoder_matches_torch_in_train_mode(fine_groups):
    """BatchNorm in training mode (batch statistics over all B*L rows, padding included), dropout 0:
    outputs, running statistics and every parameter gradient agree."""
    ref, ours = _pair()
    x, lengths = _padded(b=9, steps=15)
    ref.train(), ours.train()
    out_ref, out = ref(x), ours(x, lengths)
    assert torch.allclose(out, out_ref, atol=1e-5)
    assert torch.allclose(ours.bn.running_mean, ref.bn.running_mean, atol=1e-6)
    assert torch.allclose(ours.bn.running_var, ref.bn.running_var, atol=1e-5)
    w = torch.randn_like(out)
    (out_ref * w).sum().backward()
    (out * w).sum().backward()
    ref_grads = convert_torch_encoder_state({n: p.grad for n, p in ref.named_parameters()})
    for name, p in ours.named_parameters():
        assert torch.allclose(p.grad, ref_grads[name], atol=1e-5), name


def test_nonidentical_padding_is_not_compacted():
    """Text features: padding rows that differ (BERT outputs at [PAD]) are computed in full."""
    ref, ours = _pair(batchnorm=False)
    x, lengths = _padded()
    x += torch.randn_like(x) * 1e-3  # no two rows equal
    assert (UnimodalEncoder._identical_tail(x) == 1).all()
    ref.eval(), ours.eval()
    with torch.no_grad():
        assert torch.allclose(ours(x, lengths), ref(x), atol=1e-5)


def test_masked_encoder_ignores_padding_and_equals_unpadded_runs(fine_groups):
    _, ours = _pair(padding="masked")
    x, lengths = _padded()
    for mode in ("eval", "train"):
        getattr(ours, mode)()
        torch.manual_seed(0)
        before = ours(x, lengths)
        noisy = x.clone()
        for i, n in enumerate(lengths.clamp(min=1).tolist()):
            noisy[i, n:] = torch.randn_like(noisy[i, n:]) * 100
        torch.manual_seed(0)
        assert torch.allclose(ours(noisy, lengths), before, atol=1e-5), mode
    ours.eval()
    with torch.no_grad():
        before = ours(x, lengths)
        for i, n in enumerate(lengths.clamp(min=1).tolist()):  # length 0 counts as 1
            alone = ours(x[i : i + 1, :n], torch.tensor([n]))
            assert torch.allclose(alone[0], before[i], atol=1e-5)


def test_masked_mode_needs_lengths():
    _, ours = _pair(padding="masked")
    with pytest.raises(ValueError, match="lengths"):
        ours(torch.randn(2, 3, 5))


# -- training with dropout ------------------------------------------------------------------------------
def test_training_with_dropout_runs_and_reaches_every_parameter(fine_groups):
    torch.manual_seed(0)
    enc = UnimodalEncoder(5, D, 2, HEADS, FF, dropout=0.3).train()
    x, lengths = _padded()
    out = enc(x, lengths)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_plan_groups_covers_the_batch_once(monkeypatch):
    n_tok = torch.tensor([3, 50, 7, 49, 200, 1, 180, 3])
    for overhead in (0, 100_000, 10**12):
        monkeypatch.setattr(layers, "_GROUP_OVERHEAD", overhead)
        groups = plan_groups(n_tok)
        assert sorted(torch.cat([idx for idx, _ in groups]).tolist()) == list(range(8))
        assert all(width == int(n_tok[idx].max()) for idx, width in groups)
    assert len(groups) == 1  # huge overhead: one group


def test_bucket_order_is_a_permutation_of_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 500, size=300)
    order = bucket_order(lengths, 32, np.random.default_rng(1), jitter=0.0)
    assert sorted(order.tolist()) == list(range(300))
    spread = [np.ptp(lengths[order[i : i + 32]]) for i in range(0, 300, 32)]
    assert max(spread) < 0.2 * np.ptp(lengths)
    assert len(bucket_order(lengths[:70], 32, np.random.default_rng(2))[64:]) == 6  # short batch last
    two = bucket_order(np.stack([lengths, lengths // 2], 1), 32, np.random.default_rng(1))
    assert sorted(two.tolist()) == list(range(300))
    assert np.array_equal(
        two, bucket_order(np.stack([lengths, lengths // 2], 1), 32, np.random.default_rng(1))
    )


# -- PFM, router, head ---------------------------------------------------------------------------------
def test_pfm_rows_are_softmax_weights_and_small_tau_is_identity():
    eye = torch.eye(3).unsqueeze(0)  # X = I, so X' = S X = S itself
    s = pfm(eye, tau=0.5)
    assert torch.allclose(s.sum(dim=-1), torch.ones(1, 3))
    assert torch.allclose(s, torch.softmax(torch.eye(3) / 0.5, dim=-1))
    x = F.normalize(torch.randn(4, 3, 8), dim=-1)
    assert torch.allclose(pfm(x, tau=1e-4), x, atol=1e-6)


def test_router_weights_sum_to_one_and_topk_zeroes_the_rest():
    torch.manual_seed(0)
    fused = torch.randn(5, 3, 8)
    dense = ConsensusRouter(8)(fused)
    assert dense.shape == (5, 3) and torch.allclose(dense.sum(-1), torch.ones(5))
    for k in (1, 2):
        w = ConsensusRouter(8, topk=k)(fused)
        assert torch.allclose(w.sum(-1), torch.ones(5))
        assert ((w > 0).sum(-1) == k).all()
    router = ConsensusRouter(8, topk=2)
    full = torch.softmax(router.linear(fused.sum(1)), -1)
    kept = router(fused)
    dropped = full.argmin(-1)
    assert torch.all(kept[torch.arange(5), dropped] == 0)
    with pytest.raises(ValueError):
        ConsensusRouter(8, topk=4)


def test_residual_head_is_eq6():
    head = ResidualHead(8, 3, dropout=0.0)
    h = torch.randn(4, 8)
    expected = head.out(head.proj2(F.relu(head.proj1(h))) + h)
    assert torch.allclose(head(h), expected)


# -- the model ------------------------------------------------------------------------------------------
def _batch(b: int = 5, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    feats, lengths = {}, {}
    for m, steps in (("text", 6), ("audio", 9), ("vision", 7)):
        x = torch.randn(b, steps, DIMS[m], generator=g)
        n = torch.randint(1, steps + 1, (b,), generator=g)
        if m != "text":
            for i, ln in enumerate(n.tolist()):
                x[i, ln:] = 0.0
        feats[m], lengths[f"{m}_lengths"] = x, n
    return Batch(index=torch.arange(b), classes=torch.arange(b) % 3, **feats, **lengths)


def _model(**kw) -> CMC:
    torch.manual_seed(0)
    return CMC(CMCConfig(dims=DIMS, d=D, layers=1, heads=HEADS, ff=FF, **kw))


@pytest.mark.parametrize("padding", ["faithful", "masked"])
def test_forward_backward_reaches_every_parameter(padding):
    model = _model(padding=padding).train()
    batch = _batch()
    out = model(batch)
    assert out.logits.shape == (5, 3) and out.modality_logits.shape == (5, 3, 3)
    assert out.router_weights.shape == (5, 3) and out.embeddings.shape == (5, 3, D)
    loss = F.cross_entropy(out.logits, batch.classes) + sum(
        F.cross_entropy(out.modality_logits[:, k], batch.classes) for k in range(3)
    )
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_stage2_is_eqs_10_to_14():
    model = _model().eval()
    batch = _batch()
    with torch.no_grad():
        out = model(batch)
        h = model.embed(batch)
        assert torch.allclose(out.embeddings, h)
        assert torch.allclose(h.norm(dim=-1), torch.ones(5, 3), atol=1e-6)
        fused = pfm(h, 0.07)
        for k, m in enumerate(("text", "audio", "vision")):
            assert torch.allclose(out.modality_logits[:, k], model.branches[m].head(fused[:, k]), atol=1e-6)
        assert torch.allclose(out.router_weights, model.router(fused))
        expected = (out.router_weights.unsqueeze(-1) * out.modality_logits).sum(1)
        assert torch.allclose(out.logits, expected, atol=1e-6)


def test_without_router_is_the_mean_and_without_pfm_uses_h():
    model = _model(use_router=False, use_pfm=False).eval()
    batch = _batch()
    with torch.no_grad():
        out = model(batch)
        uni = model.unimodal_forward(batch)
    assert torch.allclose(out.router_weights, torch.full((5, 3), 1 / 3))
    assert torch.allclose(out.logits, out.modality_logits.mean(1), atol=1e-6)
    assert torch.allclose(out.modality_logits, uni.modality_logits, atol=1e-6)  # no PFM: head_k(h_k)


def test_unimodal_forward_is_stage1():
    model = _model().eval()
    batch = _batch()
    with torch.no_grad():
        out = model.unimodal_forward(batch)
        h = model.embed(batch)
    assert out.router_weights is None
    for k, m in enumerate(("text", "audio", "vision")):
        assert torch.allclose(out.modality_logits[:, k], model.branches[m].head(h[:, k]), atol=1e-6)
    assert torch.allclose(out.logits, out.modality_logits.mean(1))


def test_parameter_names_and_branches():
    model = _model()
    names = dict(model.named_parameters())
    for name in (
        "branches.audio.encoder.bn.weight",
        "branches.audio.encoder.proj.weight",
        "branches.vision.encoder.layers.0.attn.in_proj.weight",
        "branches.text.encoder.layers.0.attn.out_proj.bias",
        "branches.text.encoder.layers.0.linear1.weight",
        "branches.text.head.proj1.weight",
        "branches.vision.head.out.bias",
        "router.linear.weight",
    ):
        assert name in names, name
    assert "branches.text.encoder.bn.weight" not in names  # eq. 2: no BatchNorm on text
    # the branches and the router hold every parameter, each once
    grouped = [p for m in ("text", "audio", "vision") for p in model.branches[m].parameters()]
    grouped += list(model.router.parameters())
    assert len(grouped) == len(names) and {id(p) for p in grouped} == {id(p) for p in names.values()}
    assert "running_mean" in dict(model.branches["audio"].encoder.bn.named_buffers())  # EMA copies average it


class _CMCBeforeBranches(nn.Module):
    """CMC as it was composed before the branches (`encoders` and `heads` dicts), from the same layers:
    what the faithful CMC computed, to check that the reshaped model is bit-identical."""

    def __init__(self, c: CMCConfig) -> None:
        super().__init__()
        self.tau = c.tau
        self.encoders = nn.ModuleDict(
            {m: UnimodalEncoder(c.dims[m], c.d, c.layers, c.heads, c.ff, c.attn_dropout, m != "text") for m in DIMS}
        )
        self.heads = nn.ModuleDict({m: ResidualHead(c.d, c.num_classes, c.output_dropout) for m in DIMS})
        self.router = ConsensusRouter(c.d)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.stack([self.encoders[m](getattr(batch, m), batch.lengths(m)) for m in DIMS], dim=1)
        fused = pfm(h, self.tau)
        logits = torch.stack([self.heads[m](fused[:, k]) for k, m in enumerate(DIMS)], dim=1)
        return (self.router(fused).unsqueeze(-1) * logits).sum(dim=1), logits


def legacy_state_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """(The check below only.) Rename a state dict from before the branches (``encoders.audio.*``, ``heads.audio.*``, ``bert.*``)
    to today's names (``branches.audio.encoder.*``, ``branches.audio.head.*``, ``branches.text.bert.*``)."""
    out = {}
    for name, value in state.items():
        first, _, rest = name.partition(".")
        if first in ("encoders", "heads"):
            modality, _, rest = rest.partition(".")
            name = f"branches.{modality}.{first[:-1]}.{rest}"
        elif first == "bert":
            name = f"branches.text.bert.{rest}"
        out[name] = value
    return out


def test_faithful_cmc_is_bit_identical_to_the_model_before_branches():
    config = CMCConfig(dims=DIMS, d=D, layers=2, heads=HEADS, ff=FF)
    torch.manual_seed(0)
    before = _CMCBeforeBranches(config)
    torch.manual_seed(0)
    model = CMC(config)
    # same initialisation from the same seed, and the old state-dict names map onto the new ones
    renamed = legacy_state_names(before.state_dict())
    assert renamed.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in renamed.items())
    batch = _batch(b=9)
    for mode in ("train", "eval"):  # train: dropout masks drawn in the same order
        getattr(before, mode)(), getattr(model, mode)()
        torch.manual_seed(1)
        expected, expected_modality = before(batch)
        torch.manual_seed(1)
        out = model(batch)
        assert torch.equal(out.logits, expected) and torch.equal(out.modality_logits, expected_modality), mode
    assert legacy_state_names({"bert.pooler.w": torch.zeros(1)}).keys() == {"branches.text.bert.pooler.w"}


def test_attention_flag_selects_the_kernel_and_keeps_the_function():
    fast, plain = _model(), _model(attention="torch")
    assert fast.config.attention == "fast"  # the default
    assert {layer.attn.kernel for b in plain.branches.values() for layer in b.encoder.layers} == {"torch"}
    batch = _batch()
    fast.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(fast(batch).logits, plain(batch).logits)  # same SDPA call without dropout
    out = plain.train()(batch)
    out.logits.sum().backward()
    assert torch.isfinite(out.logits).all()
    with pytest.raises(AffectusError, match="attention"):
        _model(attention="flash")


def test_registered_and_built_from_a_dict():
    config = make_config("cmc", {"dims": DIMS, "d": D, "heads": HEADS, "layers": 1, "padding": "masked"})
    model = create_model("cmc", config)
    assert isinstance(model, CMC) and isinstance(build(config), CMC)
    with pytest.raises(AffectusError, match="unknown config"):
        make_config("cmc", {"nope": 1})


def test_bad_inputs_are_clear_errors():
    with pytest.raises(AffectusError, match="vision"):
        CMC(CMCConfig(dims={"text": 6, "audio": 3}))
    model = _model()
    batch = _batch()
    batch.audio = torch.randn(5, 9, 4)
    with pytest.raises(AffectusError, match="audio"):
        model(batch)
    with pytest.raises(AffectusError, match="bert_path"):
        CMC(CMCConfig(dims=DIMS, text_input="bert"))


def test_bert_text_input(tmp_path):
    transformers = pytest.importorskip("transformers")
    bert_config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=12,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )
    batch = _batch()
    ids = torch.randint(1, 50, (5, 6))
    mask = (torch.arange(6) < batch.text_lengths[:, None]).long()
    batch.text_bert = torch.stack([ids * mask, mask, torch.zeros_like(mask)], 1).double()  # as MMSA
    torch.manual_seed(0)
    model = CMC(CMCConfig(dims=DIMS, d=D, layers=1, heads=HEADS, ff=FF, text_input="bert"), bert_config)
    assert model.branches["text"].encoder.proj.in_channels == 12  # BERT's hidden size, not dims["text"]
    assert model.branches["text"].bert is model.bert  # BERT belongs to the text branch (f_t)
    out = model.train()(batch)
    out.logits.sum().backward()
    assert model.bert.embeddings.word_embeddings.weight.grad is not None
    size = model.non_bert_parameter_count()
    assert size == sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in model.bert.parameters())
    assert size == sum(p.numel() for p in _model().parameters()) + 12 * D - DIMS["text"] * D  # text proj 12 -> D

    frozen = CMC(
        CMCConfig(dims=DIMS, d=D, layers=1, heads=HEADS, ff=FF, text_input="bert", bert_finetune=False),
        bert_config,
    )
    frozen.train()(batch).logits.sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in frozen.bert.parameters())
    assert frozen.branches["text"].encoder.proj.weight.grad is not None

    model.bert.save_pretrained(tmp_path)  # a local directory, as `bert_path` expects
    config = CMCConfig(
        dims=DIMS, d=D, layers=1, heads=HEADS, ff=FF, text_input="bert", bert_path=str(tmp_path)
    )
    loaded = CMC(config)
    assert torch.equal(
        loaded.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight
    )
    with pytest.raises(AffectusError, match="cannot load BERT"):
        CMC(CMCConfig(dims=DIMS, text_input="bert", bert_path=str(tmp_path / "missing")))
