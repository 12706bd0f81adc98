"""The one list of models (after timm's `register_model`), each registered with its training recipe.

CLI choices, docs tables and parametrised tests are built from this registry, so nothing drifts.
A model module registers a builder `build(config) -> nn.Module`, its config dataclass, and what the
generic trainer needs to train it: a recipe (an import path, resolved only when training, so that
loading a model for inference never imports training code), the model's named variants, and the
report sections that apply to it. Generic code asks the entry; it never compares a model's name.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from affectus.errors import AffectusError

# Modules that register models on import. Listed here so `list_models()` is complete without
# importing the training stack.
_MODEL_MODULES = (
    "affectus.models.cmc",
    "affectus.models.late_fusion",
    "affectus.models.ef_lstm",
    "affectus.models.tfn",
    "affectus.models.mult",
    "affectus.models.self_mm",
    "affectus.models.cumdf",
)

SUPERVISED = "affectus.training.recipes.supervised:SupervisedRecipe"
DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {"default": {"description": "the model as configured", "overrides": {}}}


@dataclass
class ModelEntry:
    name: str
    config_cls: type
    build: Callable[..., Any]
    description: str
    # "module:attribute" of the recipe class (or the recipe object itself, e.g. in a test)
    recipe: str | Any = SUPERVISED
    # variant name -> {description, overrides[, preset_model_key]}; or a YAML file under configs/variants/
    variants: str | dict[str, dict[str, Any]] = field(default_factory=lambda: dict(DEFAULT_VARIANTS))
    # report sections that apply (evaluation/report.py): e.g. "temperature", "plgm_flips", "router"
    report_sections: tuple[str, ...] = ()

    def get_recipe(self) -> Any:
        """The recipe object (imports the training code it lives in, so call it only to train)."""
        if not isinstance(self.recipe, str):
            return self.recipe
        module, _, attr = self.recipe.partition(":")
        return getattr(importlib.import_module(module), attr)()

    def get_variants(self) -> dict[str, dict[str, Any]]:
        if isinstance(self.variants, dict):
            return self.variants
        import yaml

        text = resources.files("affectus").joinpath("configs", "variants", self.variants).read_text(encoding="utf-8")
        return yaml.safe_load(text)

    @property
    def default_variant(self) -> str:
        return next(iter(self.get_variants()))

    def variant(self, name: str | None) -> tuple[str, dict[str, Any]]:
        """(name, spec) of a variant; None gives the model's default (its first)."""
        variants = self.get_variants()
        if name is None:
            name = next(iter(variants))
        if name not in variants:
            raise AffectusError(f"unknown variant '{name}' for model '{self.name}': expected one of "
                                f"{', '.join(variants)}{did_you_mean(name, variants)}")
        return name, variants[name]


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, config_cls: type, description: str = "", *, recipe: str | Any = SUPERVISED,
                   variants: str | dict[str, dict[str, Any]] | None = None, report_sections: tuple[str, ...] = ()):
    """Decorator for a model's builder; a test may register a toy model with its own recipe object."""

    def deco(build):
        _REGISTRY[name] = ModelEntry(name, config_cls, build, description, recipe,
                                     dict(DEFAULT_VARIANTS) if variants is None else variants, tuple(report_sections))
        return build

    return deco


def did_you_mean(name: str, choices) -> str:
    """' (did you mean X?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _load_all() -> None:
    for mod in _MODEL_MODULES:
        importlib.import_module(mod)


def list_models() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_model_entry(name: str) -> ModelEntry:
    _load_all()
    key = name if name in _REGISTRY else str(name).lower().replace("-", "_")  # names are case-insensitive
    if key not in _REGISTRY:
        raise AffectusError(f"unknown model '{name}': expected one of {', '.join(sorted(_REGISTRY))}"
                            f"{did_you_mean(key, _REGISTRY)}")
    return _REGISTRY[key]


def make_config(name: str, values: dict[str, Any]):
    """Build a model's config dataclass from a dict, rejecting unknown keys."""
    from dataclasses import fields

    entry = get_model_entry(name)
    known = {f.name for f in fields(entry.config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise AffectusError(f"unknown config key(s) for model '{name}': {', '.join(unknown)}"
                            f"{did_you_mean(unknown[0], known)}")
    return entry.config_cls(**values)


def is_bert_parameter(name: str) -> bool:
    """Whether a parameter name lies inside a module called `bert`, at any depth (`bert.*`,
    CMC's `branches.text.bert.*`)."""
    return "bert" in name.split(".")[:-1]


def non_bert_parameter_count(model) -> int:
    """The paper's "Size" (Table IV): every parameter outside a pretrained BERT."""
    return sum(p.numel() for n, p in model.named_parameters() if not is_bert_parameter(n))


def create_model(name: str, config):
    return get_model_entry(name).build(config)
