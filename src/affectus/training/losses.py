"""Supervised contrastive loss (Khosla et al., 2020) as CMC uses it (eqs. 8, 9, 18).

CMC applies SupCon to the concatenated unimodal embeddings [h_t; h_a; h_v] (3B x d, each row
L2-normalised) with the pseudo labels binarised by the label scheme (`LabelScheme.supcon_labels`). For an anchor i, with
z_ij = <f_i, f_j> / tau, positives P(i) = {j != i : y_j = y_i} and A(i) = {j != i}:

  form='in'  (the authors' code, our default for reproduction; the sum over positives INSIDE the log)
      loss_i = -log( sum_{p in P(i)} exp(z_ip) / sum_{a in A(i)} exp(z_ia) )
  form='out' (Khosla et al.'s recommended L_out; the mean over positives OUTSIDE the log)
      loss_i = -(1/|P(i)|) sum_{p in P(i)} log( exp(z_ip) / sum_{a in A(i)} exp(z_ia) )

The loss is the mean of loss_i over anchors with at least one positive; anchors without one are
left out, and a batch without any positive pair gives 0. The authors' 'in' form has no 1/|P(i)|
inside the log (Khosla's printed L_in has one: it only shifts loss_i by log|P(i)|, same gradient)
and no tau / base_tau factor. See docs/plgm.md.
"""

from __future__ import annotations

import torch

SUPCON_FORMS = ("in", "out")


def supcon_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.07,
    form: str = "in",
    base_temperature: float | None = None,
) -> torch.Tensor:
    """Scalar SupCon loss of (N, d) L2-normalised `features` with (N,) integer `labels`.

    `base_temperature`: optional SupContrast-style factor tau / base_tau on the result (None: no factor,
    as in the CMC code). Numerically stable (log-sum-exp, i.e. the row max is subtracted before exp)
    and NaN-free for a single sample or a single class; the result always carries a gradient.
    """
    if form not in SUPCON_FORMS:
        raise ValueError(f"SupCon form {form!r}: expected one of {', '.join(SUPCON_FORMS)}")
    if features.dim() != 2:
        raise ValueError(f"SupCon: features of shape {tuple(features.shape)}, expected (N, d)")
    labels = labels.reshape(-1)
    n = features.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"SupCon: {labels.shape[0]} labels for {n} feature rows")
    # half precision (autocast) is lifted to float32; float64 stays float64
    feats = features if features.dtype in (torch.float32, torch.float64) else features.float()
    not_self = ~torch.eye(n, dtype=torch.bool, device=feats.device)  # (N, N): A(i)
    positive = (labels[:, None] == labels[None, :]).to(feats.device) & not_self  # (N, N): P(i)
    anchors = positive.any(dim=1)  # (N,): anchors with at least one positive
    if not bool(anchors.any()):
        return (feats * 0.0).sum()  # 0, still attached to the graph
    z = (feats[anchors] @ feats.T) / temperature  # (A, N): z_ij for the kept anchors
    positive, not_self = positive[anchors], not_self[anchors]
    neg_inf = torch.finfo(z.dtype).min  # a finite -inf: masked entries get exp() = 0 and zero gradient
    # log sum_{a != i} exp(z_ia); self-similarity is excluded from the denominator
    log_den = torch.logsumexp(z.masked_fill(~not_self, neg_inf), dim=1)  # (A,)
    if form == "in":
        log_num = torch.logsumexp(z.masked_fill(~positive, neg_inf), dim=1)  # log sum_{p in P(i)} exp(z_ip)
        per_anchor = log_den - log_num
    else:
        log_prob = z - log_den[:, None]  # (A, N), finite everywhere (the diagonal is masked below)
        per_anchor = -(log_prob * positive).sum(dim=1) / positive.sum(dim=1)
    loss = per_anchor.mean()
    if base_temperature is not None:
        loss = loss * (temperature / base_temperature)
    return loss
