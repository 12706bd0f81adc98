"""MSE-Adapter's recipe: one supervised stage (the class tokens' cross-entropy, models/mse_adapter.py) with
the authors' optimiser, from `trains/multiTask/CMCM.py` of github AZYoung233/MSE-Adapter: AdamW with eps
1e-4 over the adapter's parameters and a cosine schedule after a linear warm-up over the first 10% of
`warm_up_epochs` epochs of steps (transformers' `get_cosine_schedule_with_warmup`, as the authors call it).
The peak learning rate is `train.lr` (the authors: 5e-5 for MOSEI and SIMS-V2 regression, 5e-4 for MELD
classification). `recipe.optimizer=adam` trains with the trainer's constant-rate Adam instead.
Selection: the selection split's CE (`SupervisedTask.validate`), as every model here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from affectus.errors import SettingError
from affectus.training.recipes.base import RecipeContext, RecipeResult
from affectus.training.recipes.supervised import SupervisedRecipe
from affectus.training.tasks import SupervisedTask


@dataclass
class MSEAdapterRecipeConfig:
    optimizer: str = "paper"  # "paper": AdamW + warm-up cosine (CMCM.py); "adam": the trainer's Adam
    eps: float = 1e-4  # AdamW's eps (CMCM.py)
    warmup_share: float = 0.1  # warm-up steps as a share of the schedule (CMCM.py: 0.1 * total_steps)
    warm_up_epochs: int = 30  # the schedule's length in epochs (configs: 30 for MOSEI and MELD, 40 for SIMS-V2)

    def validate(self) -> None:
        if self.optimizer not in ("paper", "adam"):
            raise SettingError("recipe.optimizer", self.optimizer, "paper or adam")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise SettingError("recipe.eps", self.eps, "a finite number > 0")
        if not 0.0 <= self.warmup_share < 1.0:
            raise SettingError("recipe.warmup_share", self.warmup_share, "a share in [0, 1)")
        if self.warm_up_epochs < 1:
            raise SettingError("recipe.warm_up_epochs", self.warm_up_epochs, "at least 1")


class MSEAdapterRecipe(SupervisedRecipe):
    config_cls = MSEAdapterRecipeConfig

    def train(self, ctx: RecipeContext) -> RecipeResult:
        rc = ctx.recipe or MSEAdapterRecipeConfig()
        if rc.optimizer == "adam":
            return super().train(ctx)
        from transformers import get_cosine_schedule_with_warmup

        params = [p for p in ctx.model.parameters() if p.requires_grad]  # the adapter: the LM is not a parameter
        optimizer = torch.optim.AdamW(params, lr=ctx.train.lr, eps=rc.eps)
        total = math.ceil(len(ctx.train_split) / ctx.train.batch_size) * rc.warm_up_epochs
        schedule = get_cosine_schedule_with_warmup(optimizer, int(rc.warmup_share * total), total)
        task = ScheduledTask(ctx.eval_batches(ctx.select_split), schedule)
        loop = ctx.run_stage(1, task, optimizer)
        return RecipeResult(task.best_state, {"train": {"epochs": loop.epoch, "best_epoch": task.best_epoch,
                                                        "best_val_loss": task.best_loss, "history": loop.history}})


class ScheduledTask(SupervisedTask):
    """The supervised task whose learning-rate schedule steps after every optimiser step (and resumes)."""

    def __init__(self, val_batches, schedule: Any) -> None:
        super().__init__(val_batches)
        self.schedule = schedule

    def after_step(self, model) -> None:
        self.schedule.step()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.schedule.load_state_dict(state["schedule"])
