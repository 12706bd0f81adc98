"""TriagedMSA's recipe: one supervised stage whose loss adds the unimodal heads and the triage network's
target from Adaptive Polarity Detection (models/triaged_msa.py).

With unimodal labels in the training split (CH-SIMS, CH-SIMS v2) APD reads them: a sample disagrees when
its modalities' classes differ, and each unimodal head learns its own label. Without them (CMU-MOSI,
CMU-MOSEI), the heads learn the multimodal label and APD reads their confident predictions instead.
Selection is on the selection split's CE of the routed logits (SupervisedTask.validate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES
from affectus.training.recipes.base import RecipeContext
from affectus.training.recipes.supervised import SupervisedRecipe
from affectus.training.tasks import SupervisedTask


class TriagedMSARecipe(SupervisedRecipe):
    def make_task(self, ctx: RecipeContext) -> TriagedMSATask:
        split = ctx.train_split
        unimodal = None
        if split.unimodal_labels is not None and all(m in split.unimodal_labels for m in MODALITIES):
            # (N, 3) classes per modality, indexed by the batch's sample index
            unimodal = torch.stack([torch.as_tensor(ctx.scheme.to_classes(split.unimodal_labels[m]), dtype=torch.long)
                                    for m in MODALITIES], dim=1)
        return TriagedMSATask(ctx.eval_batches(ctx.select_split), unimodal)


class TriagedMSATask(SupervisedTask):
    def __init__(self, val_batches, unimodal: torch.Tensor | None = None) -> None:
        super().__init__(val_batches)
        self.unimodal = unimodal  # (N, 3) int64 or None

    def loss(self, model, batch: Batch):
        out = model.triaged_forward(batch)
        ce = F.cross_entropy(out.logits, batch.classes)
        dev = out.logits.device
        if self.unimodal is not None:
            targets = self.unimodal[batch.index.cpu()].to(dev)  # (B, 3)
            disagree = (targets != targets[:, :1]).any(dim=1).float()
        else:
            targets = batch.classes[:, None].expand(-1, len(MODALITIES))
            disagree = model.apd_targets(out.modality_logits, update=model.training)
        uni = F.cross_entropy(out.modality_logits.flatten(0, 1), targets.reshape(-1))
        triage = F.binary_cross_entropy(out.triage.float().clamp(1e-6, 1 - 1e-6), disagree)
        c = model.config
        total = ce + c.unimodal_weight * uni + (c.triage_weight * triage if c.use_triage else 0.0)
        return total, {"loss": total.detach(), "ce": ce.detach(), "unimodal": uni.detach(), "triage": triage.detach(),
                       "disagree_share": disagree.mean()}
