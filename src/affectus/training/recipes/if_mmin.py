"""IF-MMIN's recipe (docs/baselines/if_mmin.md): MMIN's two stages (training/recipes/mmin.py) with the weights of
the official code (ZhuoYulang/IF-MMIN):

Stage 0 (train_baseline.py --model=utt_shared, scripts/CAP_utt_shared.sh): the encoders, the shared encoder S
and a classifier on [h; S(h)], trained with cross-entropy plus the CMD (K = 5) between the three modalities'
S(h_m), averaged over the three pairs (utt_shared_model.py `get_cmd_loss`; `use_cmd_sim` on by default).

Stage 1 (train_miss.py --model=IFMMIN, scripts/CAP_IFMMIN.sh), under the six incomplete conditions:

    L = CE + mse_weight * MSE(h', teacher(x reversed)) + invariant_weight * MSE(H', S_teacher(teacher(x full)))

with mse_weight = invariant_weight = 1 (IFMMIN_model.py defaults; the script's `--consistent_weight=100`
names no option of that model) and no cycle term (IFMMIN_model.py computes none).
"""

from __future__ import annotations

from dataclasses import dataclass

from affectus.training.recipes.mmin import MMINRecipe, MMINRecipeConfig


@dataclass
class IFMMINRecipeConfig(MMINRecipeConfig):
    cmd_weight: float = 1.0  # stage 0: CE + CMD, unweighted (utt_shared_model.py backward)
    mse_weight: float = 1.0  # forward imagination (IFMMIN_model.py --mse_weight default; CAP_IFMMIN.sh --mse_weight=1)
    cycle_weight: float = 0.0  # IF-MMIN has no backward CRA
    invariant_weight: float = 1.0  # IFMMIN_model.py --invariant_weight default


class IFMMINRecipe(MMINRecipe):
    config_cls = IFMMINRecipeConfig
