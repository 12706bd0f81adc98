"""The one-stage recipe of most models: train on the multimodal label, keep the best validation epoch."""

from __future__ import annotations

from affectus.training.recipes.base import RecipeContext, RecipeResult
from affectus.training.tasks import SupervisedTask


class SupervisedRecipe:
    config_cls = None

    def make_task(self, ctx: RecipeContext):
        return SupervisedTask(ctx.eval_batches(ctx.select_split))

    def train(self, ctx: RecipeContext) -> RecipeResult:
        task = self.make_task(ctx)
        loop = ctx.run_stage(1, task, ctx.optimizer())
        return RecipeResult(task.best_state, {"train": {"epochs": loop.epoch, "best_epoch": task.best_epoch,
                                                        "best_val_loss": task.best_loss, "history": loop.history}})
