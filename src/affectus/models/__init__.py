"""Models: one file per model, one registry, one typed output."""

from affectus.models.output import ModelOutput
from affectus.models.registry import create_model, list_models, register_model

__all__ = ["ModelOutput", "create_model", "list_models", "register_model"]
