"""One config path: model defaults -> dataset preset (Table III) -> variant -> YAML file -> --set.

The resolved config is two plain sections, `model` (the model's config dataclass) and `train`
(`TrainConfig`), saved beside every run. Unknown keys and wrong types are rejected with a
one-line error naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from affectus.errors import AffectusError


@dataclass
class TrainConfig:
    """Generic training settings, the same for every model: optimiser, epochs, patience, batch, seed, device.

    What a model trains with beyond these (CMC's PLGM and stage-2 settings, ...) lives in its recipe's
    config, the `recipe` section (training/recipes/).
    """

    batch_size: int = 64
    lr: float = 1e-3
    bert_lr: float = 5e-5  # a fine-tuned BERT's own learning rate (CMC's text path)
    bert_weight_decay: float = 1e-3
    epochs: int = 100  # per stage
    patience: int = 10
    seed: int = 1111
    device: str = "cpu"
    threads: int = 0  # 0: leave torch's default (the CLI applies it; library calls never change it)
    amp: bool = False  # mixed precision, CUDA only
    # data: keep this share of the modality-consistent training samples (paper Figs. 4-5; needs
    # unimodal labels in the training split; the selection and evaluation splits are untouched)
    consistent_retention: float = 1.0
    bucket: bool = False  # length-bucketed batches (models with masked padding only)

    def validate(self) -> None:
        if self.batch_size < 2:
            raise AffectusError("train.batch_size: expected at least 2 (BatchNorm and SupCon need pairs)")
        if not 0.0 <= self.consistent_retention <= 1.0:
            raise AffectusError(f"train.consistent_retention = {self.consistent_retention}: expected a value in [0, 1]")
        if self.epochs < 1 or self.patience < 1:
            raise AffectusError("train.epochs and train.patience: expected at least 1")
        for key in ("lr", "bert_lr", "bert_weight_decay"):
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0:
                raise AffectusError(f"train.{key} = {value}: expected a finite number >= 0")
        if not 0 <= self.seed < 2**32:
            raise AffectusError(f"train.seed = {self.seed}: expected an integer in [0, 2**32)")
        if self.threads < 0:
            raise AffectusError(f"train.threads = {self.threads}: expected >= 0 (0: torch's default)")
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", self.device):
            raise AffectusError(f"train.device = {self.device!r}: expected cpu, cuda, cuda:N or mps")


def _config_text(rel: str) -> str:
    return resources.files("affectus").joinpath("configs", rel).read_text(encoding="utf-8")


def load_variants(model_name: str = "cmc") -> dict[str, dict]:
    """A model's variants (name -> {description, overrides}), from its registry entry."""
    from affectus.models.registry import get_model_entry

    return get_model_entry(model_name).get_variants()


def list_variants(model_name: str = "cmc") -> list[str]:
    return list(load_variants(model_name))


def _coerce(key: str, value: Any, current: Any) -> Any:
    """Check a value against the type of the default it replaces."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise AffectusError(f"{key} = {value!r}: expected true or false")
    if isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise AffectusError(f"{key} = {value!r}: expected an integer")
        try:
            return int(value)
        except ValueError:
            raise AffectusError(f"{key} = {value!r}: expected an integer") from None
    if isinstance(current, float):
        if isinstance(value, bool):
            raise AffectusError(f"{key} = {value!r}: expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise AffectusError(f"{key} = {value!r}: expected a number") from None
    if isinstance(current, list):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, list):
            raise AffectusError(f"{key} = {value!r}: expected a list")
        try:
            return [type(current[0])(v) for v in value] if current else list(value)
        except (TypeError, ValueError):
            raise AffectusError(f"{key} = {value!r}: expected a list of numbers") from None
    if current is None or isinstance(current, (str, dict)):
        return value
    return value


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs -> {key: value}; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise AffectusError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


SECTIONS = ("model", "train", "recipe")


@dataclass
class ResolvedConfig:
    model_name: str
    variant: str
    model: dict[str, Any]
    train: TrainConfig
    recipe: Any = None  # the recipe's config dataclass, None for recipes without settings
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "variant": self.variant,
            "preset": self.preset,
            "model": dict(self.model),
            "train": dataclasses.asdict(self.train),
            "recipe": {} if self.recipe is None else dataclasses.asdict(self.recipe),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResolvedConfig:
        from affectus.models.registry import get_model_entry

        train = TrainConfig()
        _apply({f.name for f in dataclasses.fields(TrainConfig)}, train, d.get("train", {}), "train")
        recipe_cls = getattr(get_model_entry(d["model_name"]).get_recipe(), "config_cls", None)
        recipe = None
        if recipe_cls is not None:
            recipe = recipe_cls()
            _apply({f.name for f in dataclasses.fields(recipe_cls)}, recipe, d.get("recipe", {}), "recipe")
        return cls(d["model_name"], d["variant"], dict(d["model"]), train, recipe, d.get("preset"))


def _apply(known: set[str], target: Any, values: dict[str, Any], section: str) -> None:
    for key, value in values.items():
        if key not in known:
            raise AffectusError(f"unknown config key '{section}.{key}'")
        setattr(target, key, _coerce(f"{section}.{key}", value, getattr(target, key)))


def _read_config_file(path: Path) -> dict[str, Any]:
    """A user YAML file: {model: {...}, train: {...}, recipe: {...}} or flat keys, as flat dotted pairs."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise AffectusError(f"config file {path}: not UTF-8 text") from None
    except (OSError, yaml.YAMLError) as err:
        raise AffectusError(f"config file {path}: cannot read YAML ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise AffectusError(f"config file {path}: expected a mapping at the top level")
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if k in SECTIONS and isinstance(v, dict):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            flat[k] = v
    return flat


def resolve_config(
    model_name: str = "cmc",
    variant: str | None = None,
    preset=None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> ResolvedConfig:
    """Build the run's config. `preset` is a Preset object (or None for custom data); `variant` None is
    the model's default variant.

    Order: the model's dataclass defaults -> configs/models/NAME.yaml -> the preset's row for the model
    (Table III) -> the variant -> a YAML file -> --set. Keys are `model.X`, `train.X` or `recipe.X`; a bare
    X is looked up in that order.
    """
    from affectus.errors import suggest
    from affectus.models.registry import get_model_entry

    entry = get_model_entry(model_name)
    model_name = entry.name
    model_fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    model_cfg: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(entry.config_cls)
                                 if f.default is not dataclasses.MISSING}
    train = TrainConfig()
    recipe_cls = getattr(entry.get_recipe(), "config_cls", None)
    recipe = recipe_cls() if recipe_cls is not None else None
    known = {
        "model": model_fields,
        "train": {f.name for f in dataclasses.fields(TrainConfig)},
        "recipe": set() if recipe_cls is None else {f.name for f in dataclasses.fields(recipe_cls)},
    }

    def apply_pairs(pairs: dict[str, Any], where: str) -> None:
        for key, value in pairs.items():
            section, _, name = key.rpartition(".")
            if section == "":
                section = next((s for s in SECTIONS if name in known[s]), "")
            if section not in SECTIONS:
                raise AffectusError(f"{where}: unknown config key '{key}' (use model.NAME, train.NAME or recipe.NAME)")
            if name not in known[section]:
                everything = [f"{s}.{n}" for s in SECTIONS for n in known[s]]
                raise AffectusError(f"{where}: unknown config key '{section}.{name}' for model '{model_name}'"
                                    f"{suggest(f'{section}.{name}', everything)}")
            full = f"{section}.{name}"
            if section == "model":
                cur = model_cfg.get(name)
                model_cfg[name] = _coerce(full, value, cur) if cur is not None else value
            else:
                target = train if section == "train" else recipe
                setattr(target, name, _coerce(full, value, getattr(target, name)))

    # 1. the model's shipped defaults
    try:
        shipped = yaml.safe_load(_config_text(f"models/{model_name}.yaml")) or {}
    except FileNotFoundError:
        shipped = {}
    for section in SECTIONS:
        apply_pairs({f"{section}.{k}": v for k, v in (shipped.get(section) or {}).items()},
                    f"configs/models/{model_name}.yaml")

    # 2. the dataset preset (Table III; a variant may ask for another row, e.g. CMC-GT's Table VII)
    variant, spec = entry.variant(variant)
    if preset is not None:
        table = (preset.model or {}).get(spec.get("preset_model_key", model_name)) or (preset.model or {}).get(model_name)
        if table is not None:
            values = dataclasses.asdict(table) if dataclasses.is_dataclass(table) else dict(table)
            apply_pairs({f"model.{k}": v for k, v in values.items()}, f"preset {preset.name}")
    # 3. the variant
    apply_pairs(spec.get("overrides") or {}, f"variant {variant}")
    # 4. a user YAML file
    if config_file is not None:
        apply_pairs(_read_config_file(Path(config_file)), f"config file {config_file}")
    # 5. --set overrides
    apply_pairs(overrides or {}, "--set")
    train.validate()
    if recipe is not None and hasattr(recipe, "validate"):
        recipe.validate()
    check = getattr(entry.config_cls, "validate", None)
    if check is not None:
        check(entry.config_cls(**model_cfg))  # e.g. heads dividing d, before anything is written
    return ResolvedConfig(model_name, variant, model_cfg, train, recipe, None if preset is None else preset.name)
