"""The one list of models (after timm's `register_model`).

CLI choices, docs tables and parametrised tests are built from this registry, so nothing drifts.
A model module registers a builder `build(dims, seq_lens, **overrides) -> nn.Module` and its
config dataclass.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from affectus.errors import AffectusError, suggest

# Modules that register models on import. Listed here so `list_models()` is complete without
# importing the training stack.
_MODEL_MODULES = (
    "affectus.models.cmc",
    "affectus.models.late_fusion",
    "affectus.models.ef_lstm",
    "affectus.models.tfn",
    "affectus.models.mult",
    "affectus.models.self_mm",
)


@dataclass
class ModelEntry:
    name: str
    config_cls: type
    build: Callable[..., Any]
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, config_cls: type, description: str = ""):
    def deco(build):
        _REGISTRY[name] = ModelEntry(name, config_cls, build, description)
        return build

    return deco


def _load_all() -> None:
    for mod in _MODEL_MODULES:
        importlib.import_module(mod)


def list_models() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_model_entry(name: str) -> ModelEntry:
    _load_all()
    if name not in _REGISTRY:
        raise AffectusError(f"unknown model '{name}'{suggest(name, _REGISTRY)}: expected one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def make_config(name: str, values: dict[str, Any]):
    """Build a model's config dataclass from a dict, rejecting unknown keys."""
    entry = get_model_entry(name)
    known = {f.name for f in fields(entry.config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise AffectusError(f"unknown config key(s) for model '{name}': {', '.join(unknown)}")
    return entry.config_cls(**values)


def non_bert_parameter_count(model) -> int:
    """The paper's "Size" (Table IV): every parameter outside a pretrained BERT (`bert.*`)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("bert."))


def create_model(name: str, config):
    return get_model_entry(name).build(config)
