"""Experiment specs: a YAML file that names the rows of a paper table, expanded into runs.

A spec is validated completely before anything trains: its shape (keys, types) by the strict YAML
loader (utils/strict_yaml.py), which keeps the line of every key and value; then seeds, models and
variants here; then every config key and value by resolving the config of every run with
`resolve_config`, the same path `affectus train` takes, each value located at its line. A bad spec
fails in one line, `SPEC:LINE: what was expected`, before a single run starts.

    name: table5_ablation
    description: "CMC ablations (Table V)"
    preset: null            # optional dataset preset
    data: null              # optional default data file (relative to the spec's folder); --data wins
    seeds: 5                # n -> seeds 1..n, or an explicit list
    overrides: {}           # config keys for every run (model.x / train.x, as --set)
    runs:                   # the rows of the table
      - {name: CMC, model: cmc, variant: cmc}
      - {name: LF-DNN, model: late_fusion, overrides: {train.epochs: 50}}
      - {name: LF-DNN ctx, model: late_fusion, overrides: {train.context: 2}, presets: [mosi-utterance]}
                            # presets: the row runs only under these presets (else it is left out)
    grid:                   # optional: cartesian product over config keys, crossed with runs
      model.tau: [0.05, 0.07, 0.1]
    mixed_inputs: false     # true: rows may read different inputs (train.text_inputs / text_encoder); they
                            # are marked in results.md. false: such a spec is refused before anything runs
    report:                 # optional: how results.md presents the runs
      columns: metrics      # metrics (the paper's subsets) | modalities (Table VI: each modality alone)
                            # | conditions (F1 under each availability condition / drop ratio, CUMDF)
      slope_over: null      # a grid key: least-squares slope of accuracy against it (Figs. 4-5)
      conditions: []        # availability conditions each run is also scored under: [l, a, v, la, lv, av, lav]
      drop_ratios: []       # MRMS frame-drop ratios each run is also scored under: [0.1, 0.2, ..., 0.7]
      missing_rates: []     # random missing rates r (per sample and modality): [0, 0.1, ..., 1]; + AUC

Override precedence (later wins): spec `overrides` -> the row's `overrides` -> the grid point ->
`--set` -> the seed (`train.seed`, which only `seeds` may set).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from affectus.errors import AffectusError, suggest
from affectus.models.registry import DEFAULT_MODEL
from affectus.utils.names import slugify
from affectus.utils.strict_yaml import Doc, Loc, Strict, read_yaml, validate

# Set by the runner, never by a spec: the seed comes from `seeds`, threads from --threads / --jobs.
RESERVED_KEYS = ("seed", "threads")


class RowSpec(Strict):
    """One row of the paper's table: a model (and variant) with its own overrides."""

    name: str
    model: str = DEFAULT_MODEL
    variant: str | None = None  # None: the model's default variant
    overrides: dict[str, Any] = Field(default_factory=dict)  # config keys (model.x / train.x), as --set
    # the row runs only when the experiment's preset is one of these (None: always). For rows that need what
    # only some datasets have, e.g. train.context needs groups (videos, dialogues), which mosi-utterance has
    presets: list[str] | None = None


class ReportSpec(Strict):
    """How results.md presents the runs, and what each finished run is also scored under."""

    # metrics: the scheme's columns; modalities: each modality alone (Table VI); conditions: the headline
    # F1 under each availability condition and each MRMS drop ratio, and their average (CUMDF Tables 1-2)
    columns: Literal["metrics", "modalities", "conditions"] = "metrics"
    slope_over: str | None = None  # a grid key: least-squares slope of accuracy against it
    # availability conditions (data/missing.py: "l", "la", "{l,a,v}", "text,audio") every run is scored under
    conditions: list[str] = Field(default_factory=list)
    # MRMS frame-drop ratios every run is scored under (CUMDF's drop-ratio figure), seeded by the run's seed
    drop_ratios: list[float] = Field(default_factory=list)
    # random missing rates r: each (sample, modality) absent with probability r, at least one kept, seeded
    # by the run's seed; summarised as the area under the F1-vs-r curve (AUC F1)
    missing_rates: list[float] = Field(default_factory=list)


class _SpecFile(Strict):
    """The keys of a spec file (see the module docstring); `load_spec` checks what types cannot."""

    name: str | None = None
    description: str = ""
    preset: str | None = None
    data: str | None = None
    seeds: int | list[int] = 1
    overrides: dict[str, Any] = Field(default_factory=dict)
    runs: list[RowSpec]
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    mixed_inputs: bool = False
    report: ReportSpec = Field(default_factory=ReportSpec)


@dataclass
class ExperimentSpec:
    name: str
    description: str
    preset: str | None
    data: str | None
    seeds: list[int]
    overrides: dict[str, Any]
    runs: list[RowSpec]
    grid: dict[str, list[Any]]
    report: ReportSpec
    doc: Doc = field(repr=False)  # the file as read, with its lines (source "<spec>" for a dict)
    # rows may read different inputs (then marked); False: a spec whose rows would is refused
    mixed_inputs: bool = False

    @property
    def source(self) -> str:
        return self.doc.source

    def where(self, loc: Loc) -> str:
        """`SOURCE:LINE` of the nearest located node on `loc` (just SOURCE for a dict spec)."""
        return self.doc.where(loc)


@dataclass
class PlannedRun:
    """One training run of an experiment: a row at a grid point with one seed."""

    id: str  # stable: row slug + grid values + seed; the run's folder under OUT/runs/
    group: str  # id without the seed: what mean +- std aggregates over
    row: str
    model: str
    variant: str
    grid: dict[str, Any]
    seed: int
    config: Any  # ResolvedConfig

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "group": self.group, "row": self.row, "model": self.model, "variant": self.variant,
                "grid": dict(self.grid), "seed": self.seed, "dir": f"runs/{self.id}", "config": self.config.to_dict()}


# ----------------------------------------------------------------------------------- shipped specs


def _shipped_dir():
    return resources.files("affectus").joinpath("configs", "experiments")


def list_experiments() -> list[str]:
    """Names of the shipped specs (src/affectus/configs/experiments/*.yaml), sorted."""
    return sorted(p.name[: -len(".yaml")] for p in _shipped_dir().iterdir() if p.name.endswith(".yaml"))


def find_spec(spec: str | Path) -> Path:
    """A spec file by path, or a shipped spec by name (`table5_ablation`)."""
    path = Path(spec)
    if path.is_file():
        return path
    name = path.name.removesuffix(".yaml")
    if str(spec) == path.name and name in list_experiments():
        return Path(str(_shipped_dir().joinpath(f"{name}.yaml")))
    raise AffectusError(f"{spec}: no such spec file (shipped specs: {', '.join(list_experiments())})")


# ------------------------------------------------------------------------------ reading and checks


def load_spec(spec: str | Path | dict[str, Any] | ExperimentSpec) -> ExperimentSpec:
    """Read and check a spec (a file, a shipped name or a dict); models and variants included."""
    if isinstance(spec, ExperimentSpec):
        return spec
    if isinstance(spec, dict):
        doc, stem = Doc(copy.deepcopy(spec), "<spec>"), "experiment"
    else:
        path = find_spec(spec)
        doc, stem = read_yaml(path), path.stem
        if doc.data is None:
            raise doc.error((), "empty spec: expected a mapping with at least `runs:`")
    raw = validate(_SpecFile, doc, what="the spec")
    name = _text(doc, ("name",), raw.name or stem)
    if raw.preset is not None:
        from affectus.data.presets import list_presets
        from affectus.errors import suggest

        if raw.preset not in list_presets():
            raise doc.error(("preset",), f"unknown preset '{raw.preset}': expected one of {', '.join(list_presets())}"
                                         f"{suggest(raw.preset, list_presets())}")
    data_file = raw.data if raw.data is None else _text(doc, ("data",), raw.data)
    if data_file is not None and not data_file.startswith("synth:") and doc.source != "<spec>":
        data_file = str(Path(doc.source).parent / data_file)  # relative to the spec's folder
    seeds = _seeds(raw.seeds, lambda m: doc.error(("seeds",), m))
    _overrides(doc, raw.overrides, ("overrides",))
    if not raw.runs:
        raise doc.error(("runs",), "runs: expected a non-empty list of {name, model, variant, overrides}")
    _rows(doc, raw.runs)
    _grid(doc, raw.grid)
    _report(doc, raw.report, raw.grid)
    return ExperimentSpec(name, raw.description, raw.preset, data_file, seeds, raw.overrides, raw.runs, raw.grid,
                          raw.report, doc, raw.mixed_inputs)


def _text(doc: Doc, loc: Loc, value: str) -> str:
    if not value.strip():
        raise doc.error(loc, f"{loc[-1]}: expected a non-empty string")
    return value


def _overrides(doc: Doc, overrides: dict[str, Any], loc: Loc) -> None:
    for key, v in overrides.items():
        _check_reserved(key, lambda m, k=key: doc.error(loc + (k,), m))
        if isinstance(v, dict) or (isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v)):
            raise doc.error(loc + (key,), f"override {key}: expected a value or a list of values")


def _check_reserved(key: str, fail) -> None:
    section, _, name = key.rpartition(".")
    if name in RESERVED_KEYS and section in ("", "train"):
        where = "`seeds:` (or --seeds)" if name == "seed" else "--threads / --jobs"
        raise fail(f"'{key}' is set by the runner: use {where}")


def _seeds(value: Any, fail) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise fail(f"seeds = {value}: expected at least 1 (n -> seeds 1..n) or a list of seeds")
        return list(range(1, value + 1))
    if isinstance(value, list) and value:
        if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in value):
            raise fail(f"seeds = {value!r}: expected a list of integers in [0, 2**32)")
        if len(set(value)) != len(value):
            raise fail(f"seeds = {value!r}: expected distinct seeds")
        return list(value)
    raise fail(f"seeds = {value!r}: expected a positive integer n (seeds 1..n) or a non-empty list of integers")


def _rows(doc: Doc, rows: list[RowSpec]) -> None:
    """Known models and variants, distinct run ids; a row without a variant gets its model's default."""
    from affectus.models.registry import list_models
    from affectus.training.config import list_variants

    slugs: dict[str, str] = {}
    models = list_models()
    for i, row in enumerate(rows):
        loc = ("runs", i)
        _text(doc, loc + ("name",), row.name)
        if row.model not in models:
            raise doc.error(loc + ("model",), f"unknown model '{row.model}': expected one of {', '.join(models)}"
                                              f"{suggest(row.model, models)}")
        allowed = list_variants(row.model)
        row.variant = allowed[0] if row.variant is None else row.variant
        if row.variant not in allowed:
            raise doc.error(loc + ("variant",), f"unknown variant '{row.variant}' for model '{row.model}': "
                                                f"expected one of {', '.join(allowed)}{suggest(row.variant, allowed)}")
        slug = slugify(row.name)
        if slug in slugs:
            raise doc.error(loc + ("name",), f"run name '{row.name}' gives the same id '{slug}' as '{slugs[slug]}'")
        slugs[slug] = row.name
        _overrides(doc, row.overrides, loc + ("overrides",))
        if row.presets is not None:
            from affectus.data.presets import list_presets

            known = list_presets()
            for j, name in enumerate(row.presets):
                if name not in known:
                    raise doc.error(loc + ("presets", j), f"unknown preset '{name}': expected one of "
                                                          f"{', '.join(known)}{suggest(name, known)}")


# The most grid points an experiment may have (as a sweep's grid, experiments/sweep/spec.py): each is planned,
# resolved and listed in experiment.json before the first run.
MAX_GRID_POINTS = 100_000


def _grid(doc: Doc, grid: dict[str, list[Any]]) -> None:
    for key, values in grid.items():
        loc = ("grid", key)
        _check_reserved(key, lambda m, at=loc: doc.error(at, m))
        if not values:
            raise doc.error(loc, f"grid {key}: expected a non-empty list of values")
        for j, v in enumerate(values):
            if isinstance(v, dict):
                raise doc.error(loc + (j,), f"grid {key}: expected plain values, got {v!r}")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise doc.error(loc, f"grid {key}: values repeat")
    points = math.prod(len(v) for v in grid.values())
    if points > MAX_GRID_POINTS:  # every point is expanded and resolved up front (experiment.json)
        raise doc.error(("grid",), f"grid: {points:.3g} points; at most {MAX_GRID_POINTS}")


def _report(doc: Doc, report: ReportSpec, grid: dict[str, list[Any]]) -> None:
    from affectus.data.missing import condition_name, parse_available

    names = []
    for j, text in enumerate(report.conditions):
        try:
            names.append(condition_name(parse_available(text)))
        except AffectusError as err:
            raise doc.error(("report", "conditions", j), str(err).replace("--available", "condition")) from None
    if len(set(names)) != len(names):
        raise doc.error(("report", "conditions"), "report.conditions: a condition repeats")
    for j, p in enumerate(report.drop_ratios):
        if not 0.0 <= p < 1.0:
            raise doc.error(("report", "drop_ratios", j), f"report.drop_ratios: {p} is not a ratio in [0, 1)")
    for j, r in enumerate(report.missing_rates):
        if not 0.0 <= r <= 1.0:
            raise doc.error(("report", "missing_rates", j), f"report.missing_rates: {r} is not a rate in [0, 1]")
    if report.columns == "conditions" and not (report.conditions or report.drop_ratios or report.missing_rates):
        raise doc.error(("report", "columns"), "report.columns = conditions needs report.conditions, drop_ratios "
                                               "or missing_rates")
    slope = report.slope_over
    if slope is not None:
        if slope not in grid:
            raise doc.error(("report", "slope_over"), f"report.slope_over = {slope!r}: expected a grid key "
                                                      f"({', '.join(grid) or 'the spec has no grid'})")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in grid[slope]):
            raise doc.error(("grid", slope), f"grid {slope}: report.slope_over needs numeric values")


# ---------------------------------------------------------------------------------------- expansion


def _value_text(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")


def _grid_label(point: dict[str, Any], keys: list[str]) -> str:
    """`tau=0.05`; a key's last part names it unless two grid keys share that part."""
    short = [k.rpartition(".")[2] for k in keys]
    names = {k: (s if short.count(s) == 1 else k) for k, s in zip(keys, short)}
    return "__".join(f"{names[k]}={_value_text(point[k])}" for k in keys)


def expand(
    spec: ExperimentSpec,
    preset=None,
    seeds: int | list[int] | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[PlannedRun]:
    """Every run of the experiment (rows x grid points x seeds), each config resolved and checked.

    `preset` is a Preset object (Table III rows shape the configs); `seeds` replaces the spec's
    (n -> 1..n); `overrides` are --set values for every run. Raises AffectusError naming the spec
    line of the first bad key or value before returning anything.
    """
    import dataclasses

    from affectus.training.config import resolve_config

    seed_list = spec.seeds if seeds is None else _seeds(seeds, lambda m: AffectusError(f"--seeds: {m}"))
    cli = dict(overrides or {})
    for key in cli:
        _check_reserved(key, lambda m: AffectusError(f"--set: {m}"))

    def resolve(i: int, row: RowSpec, point: dict[str, tuple[int, Any]]):
        # every value located where the spec sets it, in precedence order (later wins), so a bad key or
        # value, or a setting out of range (heads not dividing d), is reported at its own line
        def at(loc: Loc) -> str:
            return f"{spec.where(loc)}: run '{row.name}'"

        entries = [(k, v, at(("overrides", k))) for k, v in spec.overrides.items()]
        entries += [(k, v, at(("runs", i, "overrides", k))) for k, v in row.overrides.items()]
        entries += [(k, v, at(("grid", k, j))) for k, (j, v) in point.items()]
        entries += [(k, v, f"--set {k}") for k, v in cli.items()]
        try:
            return resolve_config(row.model, row.variant, preset, None, entries)
        except AffectusError as err:
            if str(err).startswith((spec.source, "--set")):
                raise
            raise AffectusError(f"{at(('runs', i))}: {err}") from None

    keys = list(spec.grid)
    indexed = {k: list(enumerate(values)) for k, values in spec.grid.items()}
    planned: list[PlannedRun] = []
    for i, row in enumerate(spec.runs):
        if not row_applies(row, preset):
            continue
        for combo in itertools.product(*(indexed[k] for k in keys)):
            located = dict(zip(keys, combo))
            point = {k: v for k, (_, v) in located.items()}
            # one resolve per distinct setting; the seeds only differ in train.seed
            base = resolve(i, row, located)
            group = slugify(row.name) + (f"__{_grid_label(point, keys)}" if keys else "")
            for seed in seed_list:
                cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, seed=seed))
                planned.append(PlannedRun(f"{group}__seed={seed}", group, row.name, row.model, row.variant,
                                          dict(point), seed, cfg))
    if not planned:
        raise AffectusError(f"{spec.source}: no row applies to preset {getattr(preset, 'name', None)!r} (every row "
                            f"names other `presets:`)")
    if not spec.mixed_inputs:
        _check_one_input(spec, planned)
    return planned


def row_applies(row: RowSpec, preset: Any) -> bool:
    """A row with `presets:` runs only under one of them (a Preset object, or None: no preset)."""
    return row.presets is None or (preset is not None and preset.name in row.presets)


def _check_one_input(spec: ExperimentSpec, planned: list[PlannedRun]) -> None:
    """One table compares models on one set of inputs: refuse a spec whose runs would read different ones
    (train.text_inputs / train.text_encoder: a preset's `inputs:`, a row's or the grid's overrides)."""
    def reads(run: PlannedRun) -> tuple[str, str]:
        tc = run.config.train
        return (tc.text_inputs, "" if tc.text_inputs == "file" else tc.text_encoder)

    def label(run: PlannedRun) -> str:
        text, encoder = reads(run)
        return f"{text}:{encoder}" if encoder else text

    first = planned[0]
    for run in planned[1:]:
        if reads(run) != reads(first):
            i = next(j for j, row in enumerate(spec.runs) if row.name == run.row)
            raise AffectusError(f"{spec.where(('runs', i))}: run '{run.row}' reads inputs {label(run)}, run "
                                f"'{first.row}' reads {label(first)}; one table compares models on one set of "
                                f"inputs (set train.text_inputs for every run, or `mixed_inputs: true` in the spec "
                                f"to put both in one table, marked)")
