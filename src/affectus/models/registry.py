"""The one list of models (after timm's `register_model`), each registered with its training recipe.

CLI choices, docs tables and parametrised tests are built from this registry, so nothing drifts.
A model module registers a builder `build(config) -> nn.Module`, its config dataclass, and what the
generic trainer needs to train it: a recipe (an import path, resolved only when training, so that
loading a model for inference never imports training code), the model's named variants, and the
report sections that apply to it, and its `Capabilities` (what it reads and returns, which data facts
its config takes). Generic code asks the entry; it never compares a model's name nor probes a model's
attributes or config fields.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from typing import Any

from affectus.errors import AffectusError, SettingError, suggest

# Modules that register models on import. Listed here so `list_models()` is complete without
# importing the training stack.
_MODEL_MODULES = (
    "affectus.models.cmc",
    "affectus.models.cmc_plus",
    "affectus.models.late_fusion",
    "affectus.models.ef_lstm",
    "affectus.models.tfn",
    "affectus.models.mult",
    "affectus.models.self_mm",
    "affectus.models.mcur",
    "affectus.models.cumdf",
    "affectus.models.linear",
    "affectus.models.av_mc",
    "affectus.models.mc_teacher",
    "affectus.models.emt_dlfr",
    "affectus.models.sfttr",
    "affectus.models.cubemlp",
    "affectus.models.mctn",
    "affectus.models.transm",
    "affectus.models.dmd",
    "affectus.models.sdrs",
    "affectus.models.mmin",
    "affectus.models.if_mmin",
    "affectus.models.triaged_msa",
    "affectus.models.mse_adapter",
    "affectus.models.bc_lstm",
    "affectus.models.mmmu_ba",
)

SUPERVISED = "affectus.training.recipes.supervised:SupervisedRecipe"
# the model a command, the API, an experiment row or a sweep trains when none is named
DEFAULT_MODEL = "cmc"
DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {"default": {"description": "the model as configured", "overrides": {}}}
# What a model is to this toolkit, for `affectus models` and the docs: a seed paper's own method, our own
# model, or a comparison baseline that a seed paper's tables compare against.
FAMILIES = {"seed": "methods of the seed papers", "ours": "affectus's own models",
            "baseline": "comparison baselines (the seeds' tables)"}


@dataclass(frozen=True)
class Capabilities:
    """What a model does, declared on its registry entry; generic code reads these instead of probing
    the model. A model whose capabilities depend on its config registers a function `config -> Capabilities`.
    """

    # its config has `num_classes`, which the trainer sets to the label scheme's number of classes
    num_classes: bool = True
    # its config has `text_views`, which the trainer sets to the text feature's named column blocks
    # (`train.text_inputs`: a transcript encoder's vector next to the file's own text feature)
    text_views: bool = False
    # reads transcripts itself through a fine-tuned BERT (`batch.text_bert`): its config has `bert_path`
    # (filled from `train.text_inputs`' encoder when empty), the model has `bert` (whose config the run
    # saves), and `feature_text` turns such a config into one reading 768-d text features (for the size)
    reads_transcripts: bool = False
    feature_text: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # returns router weights (`ModelOutput.router_weights`) that prediction and the report show
    router: bool = False
    # returns per-modality logits from heads of their own (`ModelOutput.modality_logits`)
    unimodal_heads: bool = False
    # masks sequence padding exactly, so the trainer may bucket batches by length (`train.bucket`)
    sequence_masks: bool = False
    # the names of its experts, in `ModelOutput.expert_logits` order (empty: one per modality)
    experts: tuple[str, ...] = ()
    # other forward methods whose outputs its training uses besides `forward` (tests backpropagate them)
    extra_forward: tuple[str, ...] = ()
    # parameters that a batch with every modality present leaves without a gradient (exact names)
    idle_when_complete: tuple[str, ...] = ()
    # reads `batch.available` and leaves an absent modality out of the verdict (weight 0, no token, the
    # training mean, a learned stand-in); False: it zero-fills an absent modality, whose zeros still sway
    # the verdict, and predict / serve / evaluate say so (the faithful CMC, as the paper does)
    excludes_absent: bool = False
    # modalities the training split must hold (in at least one sample), each with the reason, e.g.
    # (("text", "model.source = text: it translates from its source"),) for a translation model; the
    # trainer refuses a file without one before anything is written
    needs_in_training: tuple[tuple[str, str], ...] = ()
    # reads each utterance with its video / dialogue itself: (window, causal) asks the data layer for every
    # batch to carry the sample's group as a sequence of utterances (`Batch.seq_*`, data/context.py), the
    # `window` utterances before it and, unless causal, after it; None: the model reads one utterance (and
    # `train.context` may add its neighbours' mean text as columns)
    utterance_context: tuple[int, bool] | None = None


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
    # report sections that apply (report/): e.g. "temperature", "plgm_flips", "router"
    report_sections: tuple[str, ...] = ()
    # what the model does: fixed, or a function of its config (e.g. a router only with use_router)
    capabilities: Capabilities | Callable[[Any], Capabilities] = field(default_factory=Capabilities)
    family: str = "baseline"  # a key of FAMILIES
    paper: str = ""  # the paper it comes from: "Authors, venue year", empty for our own models

    def can(self, config: Any) -> Capabilities:
        """The capabilities of this model built from `config` (its config dataclass, or a mapping of
        its fields, e.g. run.json's `model_config`; missing fields take their defaults)."""
        if not callable(self.capabilities):
            return self.capabilities
        if not is_dataclass(config):
            known = {f.name for f in fields(self.config_cls)}
            config = self.config_cls(**{k: v for k, v in dict(config or {}).items() if k in known})
        return self.capabilities(config)

    def get_recipe(self) -> Any:
        """The recipe object (imports the training code it lives in, so call it only to train)."""
        if not isinstance(self.recipe, str):
            return self.recipe
        module, _, attr = self.recipe.partition(":")
        return getattr(importlib.import_module(module), attr)()

    def get_variants(self) -> dict[str, dict[str, Any]]:
        if isinstance(self.variants, dict):
            return self.variants
        from affectus.models.variants import read_variants

        res = resources.files("affectus").joinpath("configs", "variants", self.variants)
        return read_variants(f"configs/variants/{self.variants}", res.read_text(encoding="utf-8"))

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
                                f"{', '.join(variants)}{suggest(name, variants)}")
        return name, variants[name]


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, config_cls: type, description: str = "", *, recipe: str | Any = SUPERVISED,
                   variants: str | dict[str, dict[str, Any]] | None = None, report_sections: tuple[str, ...] = (),
                   capabilities: Capabilities | Callable[[Any], Capabilities] | None = None,
                   family: str = "baseline", paper: str = ""):
    """Decorator for a model's builder; a test may register a toy model with its own recipe object."""
    if family not in FAMILIES:
        raise ValueError(f"register_model({name!r}): family {family!r} is not one of {', '.join(FAMILIES)}")

    def deco(build):
        _REGISTRY[name] = ModelEntry(name, config_cls, build, description, recipe,
                                     dict(DEFAULT_VARIANTS) if variants is None else variants, tuple(report_sections),
                                     Capabilities() if capabilities is None else capabilities, family, paper)
        return build

    return deco


# The largest width, depth or head count a config may ask for: far above any model here (widths of
# 32-1024), far below what ends in a many-GB allocation (`model.d=2147483648` asked for 120 GB).
MAX_SIZE = 65536


def check_model_config(config: Any, sizes: tuple[str, ...] = ()) -> None:
    """The range checks every model's config `validate()` shares: the named sizes (widths, layers,
    heads) at least 1, every `*dropout` field in [0, 1) (a dropout of 1 zeroes its input), and heads
    dividing the width where a config has both `heads` and `d` (the per-head width is d / heads)."""
    for name in sizes:
        value = getattr(config, name)
        if not 1 <= value <= MAX_SIZE:
            raise SettingError(f"model.{name}", value, f"a positive integer up to {MAX_SIZE}")
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name.endswith("dropout") and not 0.0 <= value < 1.0:
            raise SettingError(f"model.{f.name}", value, "a dropout rate in [0, 1)")
    heads, d = getattr(config, "heads", None), getattr(config, "d", None)
    if heads and d and d % heads:
        raise SettingError("model.heads", heads, f"a divisor of model.d = {d}", "model.d")


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
                            f"{suggest(key, _REGISTRY)}")
    return _REGISTRY[key]


def display_name(model: str, variant: str | None) -> str:
    """How output names a model and variant: `cmc/wo_plgm`, but `cmc_plus` rather than `cmc_plus/cmc_plus`
    (a variant named after its model, or "default", is the model itself and adds nothing)."""
    return model if variant in (None, "", "default", model) else f"{model}/{variant}"


def make_config(name: str, values: dict[str, Any]):
    """Build a model's config dataclass from a dict, rejecting unknown keys."""
    entry = get_model_entry(name)
    known = {f.name for f in fields(entry.config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise AffectusError(f"unknown config key(s) for model '{name}': {', '.join(unknown)}"
                            f"{suggest(unknown[0], known)}")
    return entry.config_cls(**values)


def is_bert_parameter(name: str) -> bool:
    """Whether a parameter name lies inside a module called `bert`, at any depth (`bert.*`,
    CMC's `branches.text.bert.*`)."""
    return "bert" in name.split(".")[:-1]


def non_bert_parameter_count(model) -> int:
    """The paper's "Size" (Table IV): every parameter outside a pretrained BERT."""
    return sum(p.numel() for n, p in model.named_parameters() if not is_bert_parameter(n))


def size_from_config(model_name: str, model_config: dict[str, Any]) -> int:
    """The non-BERT parameter count of the model a config describes (with `dims`), built without weights.

    A BERT text path is built as 768-d text features instead (BERT-base's hidden size): the same non-BERT
    layers, without loading BERT. Raises AffectusError for a config the model refuses."""
    import torch

    values = dict(model_config)
    can = get_model_entry(model_name).can(values)
    if can.reads_transcripts and can.feature_text is not None:
        values = can.feature_text(values)
    config = make_config(model_name, values)
    # on the meta device: shapes without memory (a count needs no weights; a big config costs nothing)
    with torch.device("meta"), torch.random.fork_rng(devices=[]):
        return non_bert_parameter_count(create_model(model_name, config))


def create_model(name: str, config, **extras):
    """Build a registered model. `extras` go to its builder (CMC: `bert_config` for a BERT shell).

    A model too large for the machine's memory is one AffectusError, not torch's allocator traceback."""
    entry = get_model_entry(name)
    try:
        return entry.build(config, **extras)
    except MemoryError:
        raise AffectusError(f"model {entry.name}: too large for this machine's memory (reduce its sizes)") from None
    except RuntimeError as err:
        if "allocate" not in str(err):
            raise
        wanted = re.search(r"allocate (\d+) bytes", str(err))
        size = f" ({int(wanted.group(1)) / 1e9:.3g} GB for one tensor)" if wanted else ""
        raise AffectusError(f"model {entry.name}: too large for this machine's memory{size}; reduce its sizes") from None
