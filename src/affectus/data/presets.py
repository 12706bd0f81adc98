"""Dataset presets: what a dataset's files look like and the model settings published for it.

Presets are data, not code: one YAML file per dataset in `affectus/configs/presets/` (Table II's
feature sizes and Table III's hyperparameters of the CMC paper live there). `load_preset(name)` reads
one into a typed `Preset` with the strict YAML loader (utils/strict_yaml.py): an unknown key or a
wrong type fails with the file and line instead of silently falling back to a default.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from affectus.data.types import MODALITIES
from affectus.errors import AffectusError, suggest
from affectus.utils.strict_yaml import Doc, Strict, read_yaml, validate

if TYPE_CHECKING:
    from affectus.data.types import MERDataset

SPLIT_ROLES = ("train", "select", "eval")

# Where a run's text input comes from (features/text.py): "file" (the file's text features as they
# are), or the transcripts (`raw_text`) re-encoded by the preset's encoder: "sentence" (one sentence vector
# per sample), "states" (token states), "sentence+file" (the sentence vector next to the file's own text
# feature, two text views), "bert" (token ids for a BERT text path).
TEXT_INPUTS = ("file", "sentence", "states", "sentence+file", "bert")
# config keys a preset's `inputs:` block sets for every model (and `settings:` may not)
INPUT_KEYS = ("train.text_inputs", "train.text_encoder")


# the splits the simulator writes (its files look like MMSA's)
SIMULATED_SPLITS = ("train", "valid", "test")


class SynthFacts(Strict):
    """What the simulator makes for a dataset (`synth:NAME`, data/synthetic.py): its facts, kept with the
    dataset's other facts. A preset without `sizes` simulates only when told n_train, n_valid and n_test."""

    # split name (train / valid / test) -> number of samples in the real dataset
    sizes: dict[str, int] = Field(default_factory=dict)
    # share of training samples in D_msi (a modality's own label contradicts the multimodal class); None:
    # unknown (no unimodal labels), the simulator's default 0.5
    inconsistency: float | None = None
    # categorical sets: count of each class in the real data, in the scheme's class order (the prior of
    # the simulated multimodal class); None: uniform
    class_counts: list[int] | None = None
    # the real files ship BERT token ids (`text_bert`) beside the text features (MMSA's BERT-feature files)
    text_bert: bool = False


class Inputs(Strict):
    """What every model trained with a preset reads: the data's inputs, not a model's setting. Each key
    is the `train.*` key of the same name, so `--set train.text_inputs=file` gives the file's features back."""

    text_inputs: str = "file"  # one of TEXT_INPUTS
    text_encoder: str = "minilm"  # the packaged MiniLM, or a local BERT-family directory

    def entries(self) -> dict[str, str]:
        """{config key: value} as `resolve_config` applies them."""
        return {"train.text_inputs": self.text_inputs, "train.text_encoder": self.text_encoder}


def inputs_label(record: dict[str, Any] | None, context: dict[str, Any] | None = None) -> str:
    """A run's inputs in a few characters, for table columns: "file" (the file's features as they are), or
    "<text inputs>:<encoder>@<fingerprint[:8]>" (e.g. "sentence+file:minilm@1f0a9c3e") from run.json's
    `text_inputs` record, "+ftN" after it when the encoder's last N layers were fine-tuned; "+context<K>" (or "+causal<K>") after it when run.json's `context` is set
    (data/context.py). Two runs with the same label read the same numbers from the same file."""
    if context:
        kind = "causal" if context.get("causal") else "context"
        return f"{inputs_label(record)}+{kind}{context.get('window')}"
    if not record:
        return "file"
    encoder = record.get("text_encoder") or {}
    name = encoder.get("encoder", "?")
    if name != "minilm":
        name = Path(str(encoder.get("path", name))).name or name
    text = record.get("text") or ("bert" if record.get("bert") else "?")
    fingerprint = str(encoder.get("fingerprint") or "")[:8]
    tuned = record.get("finetune")  # the encoder's last layers fine-tuned with the run (features/text_finetune.py)
    tuned = f"+ft{tuned.get('layers')}" if isinstance(tuned, dict) else ""
    return f"{text}:{name}" + (f"@{fingerprint}" if fingerprint else "") + tuned


class Preset(Strict):
    name: str
    description: str
    label_range: Annotated[tuple[float, float], Field(strict=False)]  # [low, high] in YAML
    # the label scheme (data/schemes.py): a name or {name, classes}
    scheme_spec: str | dict[str, Any] = Field(alias="scheme")
    dims: dict[str, int]  # modality -> feature dim D
    seq_lens: dict[str, int]  # modality -> padded sequence length L (informative: files may differ)
    unimodal_labels: bool  # regression_labels_T/A/V expected
    splits: dict[str, str]  # role (train / select / eval) -> split name in the file
    # the inputs every model trained with this preset reads (transcripts re-encoded or the file's features)
    inputs: Inputs = Field(default_factory=Inputs)
    # model name -> hyperparameters (model.X / train.X / recipe.X) published or chosen for it on this
    # dataset (CMC: its Table III row); a variant may add another row on top (`preset_model_key`: CMC-GT's
    # Table VII row, `cmc-gt`); never inputs (those are `inputs:`, the same for every model)
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # the model `train` trains on this preset when none is named, and the settings it then trains with
    # (model.X / train.X / recipe.X, over its settings: row; not applied when --model names a model), as a
    # benchmark on the dataset chose them (the preset's comment cites the command); None: the toolkit's default.
    # An unknown name is refused by the registry when a run resolves it (presets are read by light paths)
    default_model: str | None = None
    default_settings: dict[str, Any] = Field(default_factory=dict)
    synth: SynthFacts = Field(default_factory=SynthFacts)  # what `synth:NAME` makes
    # the separator between group (video) and clip in the files' ids, for files whose ids are not MMSA's
    # `video$_$clip` and that carry no group / position keys (mosi-utterance: `<video>_<segment>`); the
    # loader derives each split's groups and positions from it (docs/data.md, "Groups"). None: MMSA's only
    id_separator: Annotated[str, Field(min_length=1)] | None = None
    # where each settings value was written ("FILE:LINE"), so the config path's errors point at the line
    settings_where: dict[str, dict[str, str]] = Field(default_factory=dict, exclude=True)
    default_where: dict[str, str] = Field(default_factory=dict, exclude=True)

    def default_entries(self) -> list[tuple[str, Any, str]]:
        """`default_settings` as (config key, value, where it was written) for the config path."""
        return [(k, v, self.default_where.get(k, f"preset {self.name} default_settings"))
                for k, v in self.default_settings.items()]

    def setting_entries(self, row: str) -> list[tuple[str, Any, str]]:
        """A settings row as (config key, value, where it was written) for the config path."""
        where = self.settings_where.get(row, {})
        return [(k, v, where.get(k, f"preset {self.name}")) for k, v in (self.settings.get(row) or {}).items()]

    @property
    def scheme(self):
        """The preset's `LabelScheme` (imported lazily: presets are read by light code paths too)."""
        from affectus.data.schemes import get_scheme

        return get_scheme(self.scheme_spec)

    def check(self, dataset: MERDataset) -> None:
        """Raise if a feature dim differs from the preset's (the model's input layers would not fit), or
        a label does not fit the preset's scheme (a categorical label outside its classes)."""
        scheme = self.scheme
        for split in dataset.splits.values():
            scheme.check_labels(split.labels, f"file {dataset.source} split {split.name}")
            for m in MODALITIES:
                got = int(split.features(m).shape[2])
                if got != self.dims[m]:
                    raise AffectusError(
                        f"file {dataset.source} split {split.name} key {m}: feature dim {got}, "
                        f"preset {self.name} expects {self.dims[m]}"
                    )

    def notes(self, dataset: MERDataset) -> list[str]:
        """Soft mismatches worth a look (not errors: e.g. aligned and unaligned files differ in L)."""
        out: list[str] = []
        lo, hi = self.label_range
        for split in dataset.splits.values():
            for m in MODALITIES:
                got = int(split.features(m).shape[1])
                if got != self.seq_lens[m]:
                    out.append(
                        f"split {split.name} {m}: sequence length {got}, preset says {self.seq_lens[m]}"
                    )
            if split.labels.min() < lo or split.labels.max() > hi:
                out.append(
                    f"split {split.name}: labels span [{split.labels.min():.3g}, {split.labels.max():.3g}], "
                    f"outside the preset's [{lo}, {hi}]"
                )
            if self.unimodal_labels and split.unimodal_labels is None:
                out.append(f"split {split.name}: preset expects unimodal labels, the file has none")
        for role, name in self.splits.items():
            if name not in dataset:
                out.append(f"the {role} split '{name}' is not in the file")
        return out


def _presets_dir() -> Any:
    return resources.files("affectus").joinpath("configs", "presets")


PRESETS_ENV = "AFFECTUS_PRESETS"


def _preset_dirs() -> list[Any]:
    """The shipped presets first, then each directory named in $AFFECTUS_PRESETS (separated like PATH):
    a dataset of your own (or a test's) is found by name without editing the package."""
    extra = [Path(d) for d in os.environ.get(PRESETS_ENV, "").split(os.pathsep) if d]
    return [_presets_dir(), *(d for d in extra if d.is_dir())]


def list_presets() -> list[str]:
    """Names of the known presets (shipped and from $AFFECTUS_PRESETS), sorted."""
    return sorted({p.name[: -len(".yaml")] for d in _preset_dirs() for p in d.iterdir() if p.name.endswith(".yaml")})


def preset_names_help() -> str:
    """The preset names for a command's help (generated, so a new preset file shows up without an edit);
    an unreadable $AFFECTUS_PRESETS folder leaves the shipped names rather than failing every command."""
    try:
        return ", ".join(list_presets())
    except OSError:
        return ", ".join(sorted(p.name[: -len(".yaml")] for p in _presets_dir().iterdir() if p.name.endswith(".yaml")))


def load_preset(name: str) -> Preset:
    """A shipped preset by name, or a preset YAML file by path."""
    by_path = name.endswith((".yaml", ".yml")) and Path(name).is_file()
    if by_path:
        doc = read_yaml(name)
    else:
        res = next((r for r in (d.joinpath(f"{name}.yaml") for d in _preset_dirs()) if r.is_file()), None)
        if res is None:
            known = list_presets()
            raise AffectusError(f"unknown preset {name!r}{suggest(name, known)} (known: {', '.join(known)})")
        doc = read_yaml(str(res), res.read_text(encoding="utf-8"))
    if isinstance(doc.data, dict) and "model" in doc.data:  # the form before presets had `settings:` only
        raise doc.error(("model",), "model: a preset's model rows are now settings: rows with full keys, e.g. "
                                    "settings: {cmc: {model.layers: 2, model.heads: 4, model.output_dropout: 0.5}}")
    preset = validate(Preset, doc, what="a preset")
    _check(preset, doc)
    preset.settings_where = {row: {k: doc.where(("settings", row, k)) for k in values}
                             for row, values in preset.settings.items()}
    preset.default_where = {k: doc.where(("default_settings", k)) for k in preset.default_settings}
    if not by_path and preset.name != name:  # the file name is the one a user types
        raise doc.error(("name",), f"name = {preset.name!r}: expected {name!r} (the file name)")
    return preset


def _check(preset: Preset, doc: Doc) -> None:
    """What the types cannot say: the modalities and roles present, a known label scheme."""
    for key in ("dims", "seq_lens"):
        value = getattr(preset, key)
        if set(value) != set(MODALITIES):
            raise doc.error((key,), f"{key} has keys {sorted(value)}: expected {', '.join(MODALITIES)}")
        for m, n in value.items():
            if n < 1:
                raise doc.error((key, m), f"{key}.{m} = {n}: expected a positive integer")
    if set(preset.splits) != set(SPLIT_ROLES):
        raise doc.error(("splits",), f"splits has keys {sorted(preset.splits)}: expected {', '.join(SPLIT_ROLES)}")
    if preset.inputs.text_inputs not in TEXT_INPUTS:
        raise doc.error(("inputs", "text_inputs"), f"inputs.text_inputs = {preset.inputs.text_inputs!r}: expected "
                                                   f"one of {', '.join(TEXT_INPUTS)}")
    if not preset.inputs.text_encoder.strip():
        raise doc.error(("inputs", "text_encoder"), "inputs.text_encoder: expected minilm or a local model directory")
    for model, values in preset.settings.items():
        for key in values:
            # (a bare `text_encoder` may be a model's own key: Self-MM's model.text_encoder)
            if key in INPUT_KEYS or key == "text_inputs":
                raise doc.error(("settings", model, key), f"settings.{model}: {key} is an input of the data, the same "
                                                          f"for every model: set it in the preset's inputs: block")
    if preset.default_settings and preset.default_model is None:
        raise doc.error(("default_settings",), "default_settings: set default_model too (the model they are for)")
    for key in preset.default_settings:
        if key in INPUT_KEYS or key == "text_inputs":
            raise doc.error(("default_settings", key), f"default_settings: {key} is an input of the data, the same "
                                                       f"for every model: set it in the preset's inputs: block")
    for key, n in preset.synth.sizes.items():
        if key not in SIMULATED_SPLITS or n < 0:
            raise doc.error(("synth", "sizes", key), f"synth.sizes.{key} = {n}: expected split names "
                                                     f"{', '.join(SIMULATED_SPLITS)} with counts >= 0")
    counts = preset.synth.class_counts
    if counts is not None and (len(counts) != preset.scheme.num_classes or min(counts) < 1):
        raise doc.error(("synth", "class_counts"), f"synth.class_counts: expected {preset.scheme.num_classes} "
                                                   f"positive counts, one per class of the scheme")
    if preset.synth.inconsistency is not None and not 0.0 <= preset.synth.inconsistency <= 1.0:
        raise doc.error(("synth", "inconsistency"), "synth.inconsistency: expected a share in [0, 1]")
    low, high = preset.label_range
    if not low < high:
        raise doc.error(("label_range",), f"label_range = [{low}, {high}]: expected [low, high] with low < high")
    from affectus.data.schemes import get_scheme

    try:
        get_scheme(preset.scheme_spec)
    except AffectusError as err:
        raise doc.error(("scheme",), f"scheme: {err}") from None
