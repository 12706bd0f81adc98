"""CMC's size matches the paper's "Size" column, and our layer matches PyTorch's parameter count."""

from __future__ import annotations

import pytest
from torch import nn

from affectus.models.cmc import CMC, CMCConfig
from affectus.models.layers import EncoderLayer


@pytest.mark.parametrize(
    "dataset, dims, layers, heads, expected",
    [
        ("CH-SIMS", (768, 33, 709), 5, 4, 247_096),
        ("CH-SIMS v2", (768, 25, 177), 4, 2, 190_624),
        ("CMU-MOSI", (768, 5, 20), 2, 4, 108_382),
        ("CMU-MOSEI", (768, 74, 35), 2, 4, 111_238),
    ],
)
def test_non_bert_parameter_count_matches_the_paper(dataset, dims, layers, heads, expected):
    config = CMCConfig(dims=dict(zip(("text", "audio", "vision"), dims)), layers=layers, heads=heads)
    assert CMC(config).non_bert_parameter_count() == expected, dataset


@pytest.mark.parametrize("d, heads, ff", [(32, 4, 128), (16, 2, 64)])
def test_encoder_layer_has_pytorch_parameter_count(d, heads, ff):
    ours = sum(p.numel() for p in EncoderLayer(d, heads, ff, 0.1).parameters())
    torch_layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=ff, norm_first=True, batch_first=True)
    assert ours == sum(p.numel() for p in torch_layer.parameters())
    # in_proj 3d*d + 3d, out_proj d*d + d, linear1 d*ff + ff, linear2 ff*d + d, two LayerNorms
    assert ours == (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 4 * d


def test_size_of_a_bert_text_path_counts_the_same_non_bert_layers():
    """A config reading transcripts through BERT (`Capabilities.reads_transcripts`) is counted through the
    model's declared `feature_text` (768-d text features), without loading BERT from its missing path."""
    from affectus.models.registry import get_model_entry, size_from_config

    dims = {"text": 768, "audio": 5, "vision": 20}
    bert = {"dims": dims, "text_input": "bert", "bert_path": "/nonexistent/bert"}
    assert get_model_entry("cmc").can(bert).reads_transcripts
    assert size_from_config("cmc", bert) == size_from_config("cmc", {"dims": dims}) == 108_382
