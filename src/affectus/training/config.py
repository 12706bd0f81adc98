"""One config path: model defaults -> dataset preset (Table III) -> variant -> YAML file -> --set.

The resolved config is three plain sections, `model` (the model's config dataclass), `train`
(`TrainConfig`) and `recipe` (the recipe's config), saved beside every run. Every YAML is read by the
strict loader (utils/strict_yaml.py): an unknown key (with a "did you mean"), a wrong type or a value
out of range (each section's `validate()`) is refused in one line naming the key and where it was set
(`FILE:LINE`, `--set`, `preset NAME`, `variant NAME`), before anything is written.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from affectus.data.context import MAX_WINDOW
from affectus.data.presets import TEXT_INPUTS
from affectus.errors import AffectusError, SettingError
from affectus.models.registry import DEFAULT_MODEL
from affectus.utils.strict_yaml import Doc, check_value, read_yaml, yaml_value

CLASS_WEIGHTS = ("none", "balanced", "sqrt")  # train.class_weights


@dataclass
class TrainConfig:
    """Generic training settings, the same for every model: optimiser, epochs, patience, batch, seed, device.

    What a model trains with beyond these (CMC's PLGM and stage-2 settings, ...) lives in its recipe's
    config, the `recipe` section (training/recipes/).
    """

    batch_size: int = 64
    lr: float = 1e-3
    # a fine-tuned BERT's own learning rate: CMC's text path, and the text encoder's top layers with
    # `text_encoder_finetune`; 5e-5 is in the range BERT's authors recommend for fine-tuning (5e-5, 3e-5, 2e-5:
    # Devlin et al., NAACL 2019, Appendix A.3)
    bert_lr: float = 5e-5
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
    # length-bucketed batches (models with masked padding only; with text_encoder_finetune: by transcript tokens)
    bucket: bool = False
    # Where the text input comes from (features/text.py): "file" (the file's text features, as
    # they are), or re-encoded from each split's transcripts (raw_text) by `text_encoder`: "sentence"
    # (one sentence vector per sample), "states" (token states), "sentence+file" (the sentence vector
    # next to the file's own text feature averaged over its steps, as two text views) or "bert" (token
    # ids for a BERT text path, `text_bert`). A dataset preset sets both for every model (its `inputs:`
    # block); a model without views reads the views concatenated. The run records the encoder, so
    # evaluating or predicting on another file re-encodes that file's transcripts the same way.
    text_inputs: str = "file"
    text_encoder: str = "minilm"  # the packaged MiniLM, or a local BERT-family directory
    # Fine-tune the text encoder's last N transformer layers with the model (features/text_finetune.py; 0:
    # frozen). The lower layers run once before training; the tuned layers train at `bert_lr` and are saved
    # with the run, which predicts with them. Needs text_inputs sentence or sentence+file and a model trained
    # end to end through its forward (the one-stage supervised recipe: late_fusion, tfn, ef_lstm, ...).
    text_encoder_finetune: int = 0
    # Context (data/context.py): each sample also reads the mean of the text features of the `context`
    # utterances before it in its group (video, dialogue) and, unless `context_causal`, the `context` after
    # it, as context views beside its text views. 0: off. Needs groups in every split; the run records it,
    # so evaluating or predicting on another file builds that file's context the same way.
    context: int = 0
    context_causal: bool = False  # only preceding utterances (what live use can have), for either context
    # Context through the encoder's input (data/context.py, EmoBERTa-style): each transcript is encoded with the
    # transcripts of its `text_context` neighbours ("Speaker: text", before it and, unless `context_causal`,
    # after it) as a second segment; its sentence vector pools its own tokens. 0: off. Needs text_inputs
    # sentence or sentence+file and groups in every split; recorded with the text inputs, rebuilt on predict.
    text_context: int = 0
    text_context_tokens: int = 128  # the encoder's max_length with text_context: transcript + neighbours
    # Class weights in the loss (training/tasks.py `class_weights`), from the training split's classes: "none",
    # "balanced" (n / (C * n_c): every class weighs the same in total) or "sqrt" (its square root). For rare
    # classes a model otherwise never predicts (MELD's fear, disgust). The one-stage supervised recipe (its
    # training loss and selection CE) and linear (LogisticRegression's class_weight) honour it; others refuse it.
    class_weights: str = "none"
    # Pretrained text experts as evidence (pretrained/views.py): each named expert's class probabilities for
    # every sample's transcript become a text view of their own (CMC+: one more expert for its router; other
    # models: more text columns). Built experts only (`affectus pretrained build NAME`); [] : none.
    pretrained_experts: list[str] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        """Ranges a type cannot say, checked before anything is written."""
        self._validate_ranges()
        if self.text_inputs not in TEXT_INPUTS:
            raise SettingError("train.text_inputs", self.text_inputs, f"one of {', '.join(TEXT_INPUTS)}")
        if not self.text_encoder:
            raise SettingError("train.text_encoder", self.text_encoder, "minilm or a local model directory")
        if not 0 <= self.text_encoder_finetune <= 64:
            raise SettingError("train.text_encoder_finetune", self.text_encoder_finetune,
                               "a number of the text encoder's last layers to fine-tune, in [0, 64] (0: frozen)")
        if self.text_encoder_finetune and self.text_inputs not in ("sentence", "sentence+file"):
            raise SettingError("train.text_encoder_finetune", self.text_encoder_finetune,
                               "0 unless train.text_inputs is sentence or sentence+file (the tuned layers make the "
                               "transcript's sentence vector)", "train.text_inputs")
        if not 0 <= self.context <= MAX_WINDOW:
            raise SettingError("train.context", self.context, f"a number of utterances in [0, {MAX_WINDOW}] (0: off)")
        if self.context_causal and not (self.context or self.text_context):
            raise SettingError("train.context_causal", self.context_causal,
                               "set only with train.context or train.text_context >= 1 (it says which neighbours "
                               "the context reads)", "train.context")
        if not 0 <= self.text_context <= MAX_WINDOW:
            raise SettingError("train.text_context", self.text_context,
                               f"a number of utterances in [0, {MAX_WINDOW}] (0: off)")
        if self.text_context and self.text_inputs not in ("sentence", "sentence+file"):
            raise SettingError("train.text_context", self.text_context,
                               "0 unless train.text_inputs is sentence or sentence+file (the neighbours are read "
                               "through the encoder that makes the transcript's sentence vector)", "train.text_inputs")
        if self.text_context and self.text_encoder_finetune:
            raise SettingError("train.text_context", self.text_context,
                               "0 with train.text_encoder_finetune (the tuned layers read each transcript alone)",
                               "train.text_encoder_finetune")
        if self.class_weights not in CLASS_WEIGHTS:
            raise SettingError("train.class_weights", self.class_weights, f"one of {', '.join(CLASS_WEIGHTS)}")
        if not 3 <= self.text_context_tokens <= 4096:
            raise SettingError("train.text_context_tokens", self.text_context_tokens,
                               "a number of tokens in [3, 4096] (the encoder refuses more than its positions)")
        if self.pretrained_experts:
            from affectus.pretrained.views import check_expert_names

            check_expert_names(self.pretrained_experts, self.text_inputs, self.text_encoder_finetune)
        if self.context and self.text_inputs == "bert":
            raise SettingError("train.context", self.context,
                               "0 with train.text_inputs = bert (a BERT text path reads token ids, not the "
                               "text feature the context is added to)", "train.text_inputs")

    def _validate_ranges(self) -> None:
        if self.batch_size < 2:
            raise SettingError("train.batch_size", self.batch_size, "at least 2 (BatchNorm and SupCon need pairs)")
        if not 0.0 <= self.consistent_retention <= 1.0:
            raise SettingError("train.consistent_retention", self.consistent_retention, "a share in [0, 1]")
        for key in ("epochs", "patience"):
            if getattr(self, key) < 1:
                raise SettingError(f"train.{key}", getattr(self, key), "at least 1")
        for key in ("lr", "bert_lr", "bert_weight_decay"):
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0:
                raise SettingError(f"train.{key}", value, "a finite number >= 0")
        if not 0 <= self.seed < 2**32:
            raise SettingError("train.seed", self.seed, "an integer in [0, 2**32)")
        if self.threads < 0:
            raise SettingError("train.threads", self.threads, ">= 0 (0: torch's default)")
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", self.device):
            raise SettingError("train.device", self.device, "cpu, cuda, cuda:N or mps")


def load_variants(model_name: str = DEFAULT_MODEL) -> dict[str, dict]:
    """A model's variants (name -> {description, overrides}), from its registry entry."""
    from affectus.models.registry import get_model_entry

    return get_model_entry(model_name).get_variants()


def list_variants(model_name: str = DEFAULT_MODEL) -> list[str]:
    return list(load_variants(model_name))


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs -> {key: value}; a value is read as YAML, like the same value in a file."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise AffectusError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml_value(raw, f"--set {key.strip()}")
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
    # what the trainer says before it trains (not part of the config: never recorded or compared), e.g. a key
    # set for a model whose recipe does not read it
    notices: tuple[str, ...] = dataclasses.field(default=(), compare=False)

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

        recipe_cls = getattr(get_model_entry(d["model_name"]).get_recipe(), "config_cls", None)
        train = _section(TrainConfig, d.get("train", {}), "train")
        recipe = None if recipe_cls is None else _section(recipe_cls, d.get("recipe", {}), "recipe")
        return cls(d["model_name"], d["variant"], dict(d["model"]), train, recipe, d.get("preset"))


def upgrade_config(d: dict[str, Any]) -> dict[str, Any]:
    """A resolved config recorded by an older version in today's form: every section parsed (keys added
    since take the value such a run was trained with, `LEGACY_DEFAULTS`, else their default) and the model
    section's missing keys filled with the model's defaults. `runs.identity` compares configs after this
    step, so a run trained before a key existed is still the same run. A dict that does not parse comes
    back as it was (and will not match)."""
    from affectus.models.registry import get_model_entry

    try:
        model = dict(d.get("model") or {})
        out = ResolvedConfig.from_dict(d).to_dict()
        for f in dataclasses.fields(get_model_entry(out["model_name"]).config_cls):
            if f.name not in model and f.default is not dataclasses.MISSING:
                model[f.name] = f.default
        out["model"] = model
        return out
    except (AffectusError, KeyError, TypeError, ValueError, AttributeError):
        return d


def _section(config_cls: type, values: dict[str, Any], section: str) -> Any:
    """A section's dataclass from saved values (run.json), each checked against its field's type."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    # keys added since the values were saved, whose default changed what a run does: the value such a run
    # was trained with, not today's default (e.g. CMC+'s recipe.fallback)
    values = {**{k: v for k, v in getattr(config_cls, "LEGACY_DEFAULTS", {}).items() if k not in values}, **values}
    for key in values:
        if key not in known:
            raise AffectusError(f"unknown config key '{section}.{key}'")
    return config_cls(**{k: check_value(config_cls, k, v, f"{section}.{k}") for k, v in values.items()})


Located = tuple[str, Any, str]  # (config key, value, where it was set: FILE:LINE, --set, preset NAME, ...)


def config_entries(doc: Doc) -> list[Located]:
    """A config YAML, `{model: {...}, train: {...}, recipe: {...}}` or flat keys (`train.lr`, `lr`),
    as located (key, value, FILE:LINE) entries."""
    data = {} if doc.data is None else doc.data
    if not isinstance(data, dict):
        raise doc.error((), "expected a mapping of config keys ({model: {...}, train: {...}, recipe: {...}})")
    out: list[Located] = []
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict | None):
            out += [(f"{key}.{k}", v, doc.where((key, k))) for k, v in (value or {}).items()]
        elif key in SECTIONS:
            raise doc.error((key,), f"{key}: expected a mapping of {key}.* keys, got {value!r}")
        else:
            out.append((str(key), value, doc.where((key,))))
    return out


def resolve_config(
    model_name: str = DEFAULT_MODEL,
    variant: str | None = None,
    preset=None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | list[Located] | None = None,
    preset_default: bool = False,
) -> ResolvedConfig:
    """Build the run's config. `preset` is a Preset object (or None for custom data); `variant` None is
    the model's default variant; `overrides` are --set values, or located entries (an experiment spec's).

    Order: the model's dataclass defaults -> configs/models/NAME.yaml -> the preset's inputs (the same for
    every model) -> the preset's row for the model (Table III) and its settings (then, with `preset_default`
    and the preset's default model, its `default_settings`) -> the variant -> a YAML file -> overrides. Keys are `model.X`, `train.X` or `recipe.X`; a
    bare X is looked up in that order. Every value is checked against its field's type as it is applied,
    and the ranges (each section's `validate()`) once all are in; an error names where the value was set.
    """
    from affectus.errors import suggest
    from affectus.models.registry import get_model_entry

    entry = get_model_entry(model_name)
    model_name = entry.name
    model_cfg: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(entry.config_cls)
                                 if f.default is not dataclasses.MISSING}
    train = TrainConfig()
    recipe_cls = getattr(entry.get_recipe(), "config_cls", None)
    recipe = recipe_cls() if recipe_cls is not None else None
    owners = {"model": entry.config_cls, "train": TrainConfig, "recipe": recipe_cls}
    known = {s: set() if c is None else {f.name for f in dataclasses.fields(c)} for s, c in owners.items()}
    origin: dict[str, str] = {}  # full key -> where it was last set, in that order

    def apply(entries: list[Located]) -> None:
        for key, value, where in entries:
            section, _, name = str(key).rpartition(".")
            if section == "":
                section = next((s for s in SECTIONS if name in known[s]), "")
            if section not in SECTIONS:
                raise AffectusError(f"{where}: unknown config key '{key}' (use model.NAME, train.NAME or recipe.NAME)"
                                    f"{suggest(key, [f'{s}.{n}' for s in SECTIONS for n in known[s]])}")
            full = f"{section}.{name}"
            if name not in known[section]:
                everything = [f"{s}.{n}" for s in SECTIONS for n in known[s]]
                raise AffectusError(f"{where}: unknown config key '{full}' for model '{model_name}'"
                                    f"{suggest(full, everything)}")
            try:
                value = check_value(owners[section], name, value, full)
            except AffectusError as err:
                raise AffectusError(f"{where}: {err}") from None
            if section == "model":
                model_cfg[name] = value
            else:
                setattr(train if section == "train" else recipe, name, value)
            origin.pop(full, None)  # keep the order in which keys were last set
            origin[full] = where

    # 1. the model's shipped defaults
    res = resources.files("affectus").joinpath("configs", "models", f"{model_name}.yaml")
    if res.is_file():
        apply(config_entries(read_yaml(f"configs/models/{model_name}.yaml", res.read_text(encoding="utf-8"))))

    # 2. the dataset preset (Table III; a variant may ask for another row, e.g. CMC-GT's Table VII)
    variant, spec = entry.variant(variant)
    if spec.get("model"):  # a variant that names another registered model (cmc's cmc_plus)
        return resolve_config(spec["model"], None, preset, config_file, overrides, preset_default)
    if preset is not None:
        # the data's inputs, before anything model-specific: every model trained on the preset reads them
        apply([(k, v, f"preset {preset.name} inputs") for k, v in preset.inputs.entries().items()])
        # the model's settings on this dataset (CMC: its Table III row; CMC+'s linear experts), then the row
        # a variant asks for on top (CMC-GT: Table VII, `preset_model_key: cmc-gt`)
        rows = [model_name, *([spec["preset_model_key"]] if spec.get("preset_model_key") else [])]
        for row in dict.fromkeys(rows):
            apply(preset.setting_entries(row))
        # the preset's default model chosen because none was named (training/job.py): its default settings,
        # the ones the preset's benchmark found best (e.g. MELD's fine-tuned encoder)
        if preset_default and preset.default_model == model_name:
            apply(preset.default_entries())
    # 3. the variant
    apply([(k, v, f"variant {variant}") for k, v in (spec.get("overrides") or {}).items()])
    # 4. a user YAML file
    if config_file is not None:
        apply(config_entries(read_yaml(config_file)))
    # 5. --set overrides
    apply([(k, v, "--set") for k, v in overrides.items()] if isinstance(overrides, dict) else list(overrides or []))
    try:
        train.validate()
        if recipe is not None and hasattr(recipe, "validate"):
            recipe.validate()
        check = getattr(entry.config_cls, "validate", None)
        if check is not None:
            check(entry.config_cls(**model_cfg))  # e.g. heads dividing d, before anything is written
        if train.text_encoder_finetune:
            from affectus.features.text_finetune import check_finetune_setting

            check_finetune_setting(entry, model_cfg, train)
        # with the config, before any data is read: a recipe declares on its own class that it honours the
        # setting (a subclass with a loss of its own does not inherit the declaration)
        if train.class_weights != "none" and not type(entry.get_recipe()).__dict__.get("weighs_classes", False):
            raise AffectusError(f"train.class_weights = {train.class_weights}: model {model_name}'s training recipe "
                                f"does not weigh classes (the one-stage supervised recipe, e.g. late_fusion, and "
                                f"linear do); train it with train.class_weights=none")
    except SettingError as err:
        # point at the last place that set one of the keys the rule involves (heads at 4 by default
        # and d = 30 from a spec: d's line)
        order = list(origin)
        set_keys = [k for k in err.keys if k in origin]
        if not set_keys:  # a default out of range: nothing to point at
            raise
        raise AffectusError(f"{origin[max(set_keys, key=order.index)]}: {err}") from None
    # a key set for this model that its recipe does not read (CMC+'s experts count their own epochs) is said
    # once by the trainer as it starts, not refused, since an experiment's --set applies one value to every row
    notices = tuple(f"{model_name}: {key} ({origin[key]}) does not apply: its recipe reads {instead} "
                    f"({getattr(recipe, instead.split('.', 1)[1])}); set that instead"
                    for key, instead in getattr(recipe_cls, "REPLACES", {}).items() if key in origin)
    return ResolvedConfig(model_name, variant, model_cfg, train, recipe, None if preset is None else preset.name,
                          notices)
