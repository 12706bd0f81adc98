"""IF-MMIN: MMIN with modality-invariant features (Zuo et al., ICASSP 2023, "Exploiting
Modality-Invariant Feature for Robust Multimodal Emotion Recognition with Missing Modalities"; official
code ZhuoYulang/IF-MMIN). The network is MMIN's (models/mmin.py) with `invariant` on and no backward CRA:

- a shared encoder S maps each modality's utterance vector h_m to a modality-invariant feature; during
  the full-modality pretraining (training/recipes/if_mmin.py) S is trained with the central moment
  discrepancy (CMD, K = 5 moments) between the three modalities' S(h_m), so that S(h_t), S(h_a), S(h_v)
  share one distribution;
- the invariant-feature-based imagination module (IF-IM): H' = [S(h_t); S(h_a); S(h_v)] from the
  available modalities (absent ones encoded from a zero input) is added to the input of every CRA
  block, and the invariance loss pulls H' towards the pretrained S applied to the full-modality vectors.

docs/baselines/if_mmin.md has each setting's source and what differs from the official code.
"""

from __future__ import annotations

from dataclasses import dataclass

from affectus.models.mmin import MMIN, MMINConfig, _capabilities
from affectus.models.registry import register_model


@dataclass
class IFMMINConfig(MMINConfig):
    # Widths as MMIN (scripts/CAP_IFMMIN.sh: embd 128, AE_layers 256,128,64, n_blocks 5, cls 128,128,
    # dropout 0.5). IF-MMIN's model (models/IFMMIN_model.py) has no backward CRA and adds the shared
    # encoder (networks/shared.py, default branch: two Linear(128, 128) + LeakyReLU).
    cycle: bool = False
    invariant: bool = True


class IFMMIN(MMIN):
    name = "if_mmin"


@register_model("if_mmin", IFMMINConfig,
                "IF-MMIN: MMIN whose imagination is guided by CMD-trained modality-invariant features",
                recipe="affectus.training.recipes.if_mmin:IFMMINRecipe", variants="if_mmin.yaml", family="baseline",
                paper="Zuo et al., Exploiting Modality-Invariant Feature for Robust Multimodal "
                      "Emotion Recognition with Missing Modalities, ICASSP 2023",
                capabilities=_capabilities)
def build(config: IFMMINConfig) -> IFMMIN:
    return IFMMIN(config)
