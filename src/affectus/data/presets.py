"""Dataset presets: what a dataset's files look like and the model settings published for it.

Presets are data, not code: one YAML file per dataset in `affectus/configs/presets/` (Table II's
feature sizes and Table III's hyperparameters of the CMC paper live there). `load_preset(name)` reads
one into a typed `Preset`, rejecting unknown keys and wrong types, so a typo in a YAML file fails
loudly instead of silently falling back to a default.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from affectus.data.types import MODALITIES
from affectus.errors import AffectusError

if TYPE_CHECKING:
    from affectus.data.types import MERDataset

SPLIT_ROLES = ("train", "select", "eval")


@dataclass
class ModelSettings:
    """Per-model hyperparameters of Table III (CMC) and Table VII (CMC-GT)."""

    layers: int  # transformer encoder layers per modality
    heads: int  # attention heads
    output_dropout: float  # dropout inside each unimodal head


@dataclass
class Preset:
    name: str
    description: str
    label_range: tuple[float, float]
    scheme_spec: str | dict[str, Any]  # the label scheme (evaluation/schemes.py): a name or {name, classes}
    dims: dict[str, int]  # modality -> feature dim D
    seq_lens: dict[str, int]  # modality -> padded sequence length L (informative: files may differ)
    unimodal_labels: bool  # regression_labels_T/A/V expected
    splits: dict[str, str]  # role (train / select / eval) -> split name in the file
    model: dict[str, ModelSettings]  # model name ('cmc', 'cmc-gt') -> settings

    @property
    def scheme(self):
        """The preset's `LabelScheme` (imported lazily: presets are read by light code paths too)."""
        from affectus.evaluation.schemes import get_scheme

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


def list_presets() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.name[: -len(".yaml")] for p in _presets_dir().iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> Preset:
    """A shipped preset by name, or a preset YAML file by path."""
    by_path = name.endswith((".yaml", ".yml")) and Path(name).is_file()
    if by_path:
        text, where = Path(name).read_text(encoding="utf-8"), name
    else:
        res = _presets_dir().joinpath(f"{name}.yaml")
        if not res.is_file():
            raise AffectusError(f"unknown preset {name!r} (known: {', '.join(list_presets())})")
        text, where = res.read_text(encoding="utf-8"), f"preset {name}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise AffectusError(f"{where}: not valid YAML ({' '.join(str(err).split())})") from None
    preset = _parse(where, data)
    if not by_path and preset.name != name:  # the file name is the one a user types
        raise AffectusError(f"{where}: field name = {preset.name!r}, expected {name!r} (the file name)")
    return preset


# ------------------------------------------------------------------------------------ strict parsing


def _parse(where: str, data: Any) -> Preset:
    if not isinstance(data, dict):
        raise AffectusError(f"{where}: expected a mapping of preset fields, got {type(data).__name__}")
    names = [("scheme" if f.name == "scheme_spec" else f.name) for f in fields(Preset)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise AffectusError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(names)})")
    missing = [n for n in names if n not in data]
    if missing:
        raise AffectusError(f"{where}: missing field {missing[0]!r}")

    def typed(key: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
        # bool is an int in Python: reject it where a number is meant
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise AffectusError(f"{where}: field {key} = {value!r}, expected {what}")
        return value

    def per_modality(key: str) -> dict[str, int]:
        value = typed(key, data[key], dict, "a mapping text/audio/vision -> int")
        if set(value) != set(MODALITIES):
            raise AffectusError(f"{where}: field {key} has keys {sorted(value)}, expected {list(MODALITIES)}")
        return {m: typed(f"{key}.{m}", value[m], int, "a positive int") for m in MODALITIES}

    label_range = typed("label_range", data["label_range"], list, "[low, high]")
    if len(label_range) != 2 or not all(isinstance(v, (int, float)) for v in label_range):
        raise AffectusError(f"{where}: field label_range = {label_range!r}, expected [low, high]")
    scheme = typed("scheme", data["scheme"], (str, dict), "a label scheme name or {name: ..., classes: [...]}")
    from affectus.evaluation.schemes import get_scheme

    try:
        get_scheme(scheme)
    except AffectusError as err:
        raise AffectusError(f"{where}: field scheme: {err}") from None
    splits = typed("splits", data["splits"], dict, "a mapping train/select/eval -> split name")
    if set(splits) != set(SPLIT_ROLES) or not all(isinstance(v, str) for v in splits.values()):
        raise AffectusError(f"{where}: field splits = {splits!r}, expected keys {list(SPLIT_ROLES)} -> str")
    model_raw = typed("model", data["model"], dict, "a mapping model name -> settings")
    model = {}
    for mname, settings in model_raw.items():
        settings = typed(f"model.{mname}", settings, dict, "a mapping layers/heads/output_dropout")
        if set(settings) != {"layers", "heads", "output_dropout"}:
            raise AffectusError(f"{where}: field model.{mname} needs exactly layers, heads, output_dropout")
        model[mname] = ModelSettings(
            layers=typed(f"model.{mname}.layers", settings["layers"], int, "an int"),
            heads=typed(f"model.{mname}.heads", settings["heads"], int, "an int"),
            output_dropout=float(
                typed(f"model.{mname}.output_dropout", settings["output_dropout"], (int, float), "a number")
            ),
        )
    return Preset(
        name=typed("name", data["name"], str, "a str"),
        description=typed("description", data["description"], str, "a str"),
        label_range=(float(label_range[0]), float(label_range[1])),
        scheme_spec=scheme,
        dims=per_modality("dims"),
        seq_lens=per_modality("seq_lens"),
        unimodal_labels=typed("unimodal_labels", data["unimodal_labels"], bool, "true or false"),
        splits=dict(splits),
        model=model,
    )
