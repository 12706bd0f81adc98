"""One config path: model defaults -> dataset preset (Table III) -> variant -> YAML file -> --set.

The resolved config is two plain sections, `model` (the model's config dataclass) and `train`
(`TrainConfig`), saved beside every run. Unknown keys and wrong types are rejected with a
one-line error naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from affectus.errors import AffectusError


@dataclass
class TrainConfig:
    batch_size: int = 64
    lr: float = 1e-3
    bert_lr: float = 5e-5
    bert_weight_decay: float = 1e-3
    epochs: int = 100  # per stage
    patience: int = 10
    seed: int = 1111
    device: str = "cpu"
    threads: int = 0  # 0: leave torch's default
    amp: bool = False  # mixed precision, CUDA only
    # PLGM (eqs. 19-30)
    plgm: bool = True  # False: pseudo labels stay the multimodal label ("w/o PLGM")
    unimodal_labels: str = "pseudo"  # pseudo | ground_truth ("CMC-GT": stage 1 on the dataset's unimodal labels)
    label_momentum: list[float] = field(default_factory=lambda: [0.8, 0.99, 0.99])
    label_gamma: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    ema_momentum: list[float] = field(default_factory=lambda: [0.8, 0.9, 0.6])
    ema_gamma: list[float] = field(default_factory=lambda: [2.5, 5.0, 2.0])
    momentum_form: str = "code"  # code | paper
    supcon_tau: float = 0.07
    supcon_form: str = "in"  # in | out
    selection: str = "faithful"  # faithful | fixed (stage-1 validation labels)
    # stage 2
    stage2_loss: str = "multi"  # multi (eqs. 15-18) | single (eq. 15 only)
    stage2_freeze_unimodal: bool = False  # CMC-variant: only the router trains
    stage2_lr: float = 0.0  # 0: same as lr (the authors); else stage 2's own learning rate
    stage2_select: str = "total"  # total: lowest validation loss of eq. 18 (the authors); multimodal: of eq. 15 only
    # data: keep this share of the modality-consistent training samples (paper Figs. 4-5; needs
    # unimodal labels in the training split; the selection and evaluation splits are untouched)
    consistent_retention: float = 1.0
    # speed
    bucket: bool = False  # length-bucketed batches (masked padding only)

    def validate(self) -> None:
        choices = {
            "momentum_form": ("code", "paper"),
            "supcon_form": ("in", "out"),
            "selection": ("faithful", "fixed"),
            "stage2_loss": ("multi", "single"),
            "unimodal_labels": ("pseudo", "ground_truth"),
            "stage2_select": ("total", "multimodal"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise AffectusError(f"train.{key} = {getattr(self, key)!r}: expected one of {', '.join(allowed)}")
        for key in ("label_momentum", "label_gamma", "ema_momentum", "ema_gamma"):
            if len(getattr(self, key)) != 3:
                raise AffectusError(f"train.{key}: expected 3 values (text, audio, vision)")
        if self.batch_size < 2:
            raise AffectusError("train.batch_size: expected at least 2 (BatchNorm and SupCon need pairs)")
        if not 0.0 <= self.consistent_retention <= 1.0:
            raise AffectusError(f"train.consistent_retention = {self.consistent_retention}: expected a value in [0, 1]")
        if self.epochs < 1 or self.patience < 1:
            raise AffectusError("train.epochs and train.patience: expected at least 1")


def _config_text(rel: str) -> str:
    return resources.files("affectus").joinpath("configs", rel).read_text(encoding="utf-8")


def load_variants() -> dict[str, dict]:
    return yaml.safe_load(_config_text("variants.yaml"))


def list_variants() -> list[str]:
    return list(load_variants())


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


@dataclass
class ResolvedConfig:
    model_name: str
    variant: str
    model: dict[str, Any]
    train: TrainConfig
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "variant": self.variant,
            "preset": self.preset,
            "model": dict(self.model),
            "train": dataclasses.asdict(self.train),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResolvedConfig:
        train = TrainConfig()
        _apply({f.name for f in dataclasses.fields(TrainConfig)}, train, d.get("train", {}), "train")
        return cls(d["model_name"], d.get("variant", "cmc"), dict(d["model"]), train, d.get("preset"))


def _apply(known: set[str], target: Any, values: dict[str, Any], section: str) -> None:
    for key, value in values.items():
        if key not in known:
            raise AffectusError(f"unknown config key '{section}.{key}'")
        setattr(target, key, _coerce(f"{section}.{key}", value, getattr(target, key)))


def resolve_config(
    model_name: str = "cmc",
    variant: str = "cmc",
    preset=None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> ResolvedConfig:
    """Build the run's config. `preset` is a Preset object (or None for custom data)."""
    from affectus.models.registry import get_model_entry

    entry = get_model_entry(model_name)
    model_defaults = {f.name: f.default for f in dataclasses.fields(entry.config_cls) if f.default is not dataclasses.MISSING}
    model_cfg: dict[str, Any] = dict(model_defaults)
    train = TrainConfig()
    train_known = {f.name: f for f in dataclasses.fields(TrainConfig)}

    def apply_pairs(pairs: dict[str, Any], where: str) -> None:
        for key, value in pairs.items():
            section, _, name = key.rpartition(".")
            if section not in ("", "model", "train"):
                raise AffectusError(f"{where}: unknown config key '{key}' (use model.NAME or train.NAME)")
            in_model = name in model_cfg or name in {f.name for f in dataclasses.fields(entry.config_cls)}
            if section == "model" or (section == "" and in_model and name not in train_known):
                if not in_model:
                    raise AffectusError(f"{where}: unknown config key 'model.{name}' for model '{model_name}'")
                cur = model_cfg.get(name)
                model_cfg[name] = _coerce(f"model.{name}", value, cur) if cur is not None else value
            elif name in train_known:
                setattr(train, name, _coerce(f"train.{name}", value, getattr(train, name)))
            else:
                raise AffectusError(f"{where}: unknown config key '{key}'")

    # 1. the model's shipped defaults
    try:
        shipped = yaml.safe_load(_config_text(f"models/{model_name}.yaml")) or {}
    except FileNotFoundError:
        shipped = {}
    apply_pairs({f"model.{k}": v for k, v in (shipped.get("model") or {}).items()}, f"configs/models/{model_name}.yaml")
    apply_pairs({f"train.{k}": v for k, v in (shipped.get("train") or {}).items()}, f"configs/models/{model_name}.yaml")

    # 2. the variant (and, for CMC-GT, the preset's own Table III row)
    variants = load_variants() if model_name == "cmc" else {"cmc": {"overrides": {}}}
    if variant not in variants:
        raise AffectusError(f"unknown variant '{variant}' for model '{model_name}': expected one of {', '.join(variants)}")
    spec = variants[variant]
    # 3. the dataset preset (Table III)
    if preset is not None:
        table = (preset.model or {}).get(spec.get("preset_model_key", model_name)) or (preset.model or {}).get(model_name)
        if table is not None:
            values = dataclasses.asdict(table) if dataclasses.is_dataclass(table) else dict(table)
            apply_pairs({f"model.{k}": v for k, v in values.items()}, f"preset {preset.name}")
    apply_pairs(spec.get("overrides") or {}, f"variant {variant}")
    # 4. a user YAML file: {model: {...}, train: {...}} or flat keys
    if config_file is not None:
        path = Path(config_file)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise AffectusError(f"config file {path}: cannot read YAML ({type(err).__name__})") from None
        if not isinstance(data, dict):
            raise AffectusError(f"config file {path}: expected a mapping at the top level")
        flat: dict[str, Any] = {}
        for k, v in data.items():
            if k in ("model", "train") and isinstance(v, dict):
                flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
            else:
                flat[k] = v
        apply_pairs(flat, f"config file {path}")
    # 5. --set overrides
    apply_pairs(overrides or {}, "--set")
    train.validate()
    return ResolvedConfig(model_name, variant, model_cfg, train, None if preset is None else preset.name)
