"""Scoring a model on a split: predict with every label withheld, then compare with the labels.

Lives apart from training so that inference (`affectus.load`) and evaluation never import the
training stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from affectus.data.batches import iterate_batches
from affectus.data.types import MODALITIES, Split


@torch.no_grad()
def predict_split(model, split: Split, batch_size: int, device) -> dict[str, np.ndarray]:
    """Run a model over a split with every label withheld; returns stacked outputs."""
    model.eval()
    outs: dict[str, list] = {key: [] for key in OUTPUT_KEYS}
    for batch in iterate_batches(split, batch_size, with_labels=False):
        for key, value in output_arrays(model(batch.to(device))).items():
            outs[key].append(value)
    return {k: np.concatenate(v) for k, v in outs.items() if v}


# the ModelOutput fields predictions carry (those a model leaves None are left out)
OUTPUT_KEYS = ("logits", "modality_logits", "router_weights", "regression", "expert_logits", "expert_weights")


def output_arrays(output) -> dict[str, np.ndarray]:
    """A ModelOutput's prediction fields as float32 numpy arrays, the fields it left None dropped."""
    return {key: v.float().cpu().numpy() for key in OUTPUT_KEYS if (v := getattr(output, key)) is not None}


def evaluate_split(model, split: Split, scheme, batch_size: int, device,
                   masks: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Predict first (labels withheld), then score against the split's labels under the label scheme.

    `masks` (D_msc, D_msi) replaces the subsets computed from unimodal labels, e.g. the authors' files.
    """
    return score_predictions(predict_split(model, split, batch_size, device), split, scheme, masks)


def score_predictions(pred: dict[str, np.ndarray], split: Split, scheme,
                      masks: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Score `predict_split`'s outputs against the split's labels under the label scheme."""
    from affectus.data.schemes import get_scheme
    from affectus.evaluation.metrics import compute_metrics

    scheme = get_scheme(scheme)
    metrics = compute_metrics(scheme, logits=pred["logits"], pred_scores=pred.get("regression") if scheme.scores
                              else None, scores=split.labels,
                              unimodal_scores=split.unimodal_labels if scheme.has_subsets else None, masks=masks)
    if "modality_logits" in pred:
        # each modality's own prediction against the multimodal label (Table VI: audio-/vision-only quality)
        # A modality absent from every sample (audio / vision of text-only MELD) has no prediction of its
        # own: its head saw zeros, so its score would only be the prior's.
        metrics["modalities"] = {
            m: _flat(compute_metrics(scheme, logits=pred["modality_logits"][:, k], scores=split.labels))
            for k, m in enumerate(MODALITIES)
            if split.available is None or split.available[:, k].any()
        }
    return metrics


def single_class(logits: np.ndarray, scheme) -> str | None:
    """The one class a model predicts for every row of (N, C) `logits` (N >= 2), else None.

    A degenerate model (e.g. one that collapsed to the majority class) scores the majority rate; this
    names it: the class under argmax, or the side of the scheme's Acc2 rule when only that is constant.
    """
    from affectus.data.schemes import get_scheme

    scheme = get_scheme(scheme)
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[0] < 2 or logits.shape[1] < 2:  # (N, 1): a score, no classes
        return None
    classes = logits.argmax(-1)
    if (classes == classes[0]).all():
        return scheme.class_names[int(classes[0])]
    binary = scheme.binary(logits)
    if binary is not None and (binary == binary[0]).all():
        return f"{scheme.binary_names[int(binary[0])]} under the Acc2 rule"
    return None


def _flat(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}


def router_weights_by_condition(model, split: Split, batch_size: int = 256, device: torch.device | str = "cpu",
                                conditions: Sequence[tuple[str, ...]] | None = None) -> dict[str, dict[str, float]]:
    """How the router's weights shift with availability: for each condition (default the 7: {l}, ...,
    {l,a,v}; tuples of present modalities), the mean router weight of text / audio / vision over `split`
    scored under that condition. {condition: {modality: mean weight}}; empty when the model has no router
    weights. An absent modality keeps whatever weight the router gives its zero-filled input (exactly 0
    for a router that masks absent modalities, e.g. CMC-avail)."""
    from affectus.data.missing import CONDITIONS, condition_name, with_availability

    out: dict[str, dict[str, float]] = {}
    for present in CONDITIONS if conditions is None else conditions:
        pred = predict_split(model, with_availability(split, present), batch_size, device)
        if "router_weights" not in pred:
            return {}
        w = pred["router_weights"].mean(axis=0)  # (N, 3) -> (3,)
        out[condition_name(present)] = {m: float(w[k]) for k, m in enumerate(MODALITIES)}
    return out
