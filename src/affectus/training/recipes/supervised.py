"""The one-stage recipe of most models: train on the multimodal label, keep the best validation epoch."""

from __future__ import annotations

import torch

from affectus.training.recipes.base import RecipeContext, RecipeResult
from affectus.training.tasks import SupervisedTask, class_weights


def training_class_weights(ctx: RecipeContext) -> torch.Tensor | None:
    """`train.class_weights` from the training split's classes (its labels only), None when off."""
    w = class_weights(ctx.scheme.to_classes(ctx.train_split.labels), ctx.scheme.num_classes,
                      ctx.train.class_weights)
    return None if w is None else torch.from_numpy(w)


class SupervisedRecipe:
    config_cls = None
    # train.class_weights is honoured by this recipe's own task; a subclass with a loss of its own declares it
    # itself (the trainer refuses the setting for a recipe that does not)
    weighs_classes = True

    def make_task(self, ctx: RecipeContext):
        return SupervisedTask(ctx.eval_batches(ctx.select_split), training_class_weights(ctx))

    def train(self, ctx: RecipeContext) -> RecipeResult:
        task = self.make_task(ctx)
        loop = ctx.run_stage(1, task, ctx.optimizer())
        summary = {"epochs": loop.epoch, "best_epoch": task.best_epoch, "best_val_loss": task.best_loss,
                   "history": loop.history}
        weights = getattr(task, "class_weights", None)
        if weights is not None:
            summary["class_weights"] = [round(float(w), 6) for w in weights]
        return RecipeResult(task.best_state, {"train": summary})
