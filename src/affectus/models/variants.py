"""A model's variants file (`configs/variants/NAME.yaml`): variant name -> description and overrides.

Read by the strict loader (utils/strict_yaml.py), so a misspelt key fails with its line; imported only
when a variant is asked for (loading a run for inference reads no variants file).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from affectus.utils.strict_yaml import Strict, read_yaml, validate


class Variant(Strict):
    description: str
    overrides: dict[str, Any] = Field(default_factory=dict)  # config keys (model.x / train.x / recipe.x), as --set
    preset_model_key: str | None = None  # a preset `settings:` row applied on top of the model's own (CMC-GT: cmc-gt)
    # another registered model this variant selects (its own default variant), e.g. cmc's `cmc_plus`
    model: str | None = None


def read_variants(source: str, text: str) -> dict[str, dict[str, Any]]:
    """The variants in a YAML text, in file order, as plain dicts (what `ModelEntry.variant` returns)."""
    doc = read_yaml(source, text)
    if not isinstance(doc.data, dict) or not doc.data:
        raise doc.error((), "expected a mapping of variant names to {description, overrides}")
    out: dict[str, dict[str, Any]] = {}
    for name in doc.data:
        if not isinstance(name, str):
            raise doc.error((name,), f"variant name {name!r}: expected a string")
        out[name] = validate(Variant, doc, (name,), f"variant {name}").model_dump(exclude_none=True)
    return out
