"""Training recipes: how each registered model is trained (its tasks, stages and hand-overs).

A model's registry entry names its recipe (`models/registry.py`); the generic trainer
(`training/trainer.py`) builds a `RecipeContext` and calls `recipe.train(ctx)`. Recipes share the
plumbing in `base.py` (optimiser, seeded batches, the generic loop with resume); what differs between
models lives here, never in the trainer.
"""
