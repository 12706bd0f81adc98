"""Experiment specs: a YAML file that names the rows of a paper table, expanded into runs.

A spec is validated completely before anything trains: its shape (keys, types, seeds) while it
is read, with the YAML line of every offending key or value (we compose the YAML ourselves to
keep the node marks); then every model, variant, config key and value by resolving the config of
every distinct setting with `resolve_config`, the same path `affectus train` takes. A bad spec
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
    grid:                   # optional: cartesian product over config keys, crossed with runs
      model.tau: [0.05, 0.07, 0.1]
    report:                 # optional: how results.md presents the runs
      columns: metrics      # metrics (the paper's subsets) | modalities (Table VI: each modality alone)
      slope_over: null      # a grid key: least-squares slope of accuracy against it (Figs. 4-5)

Override precedence (later wins): spec `overrides` -> the row's `overrides` -> the grid point ->
`--set` -> the seed (`train.seed`, which only `seeds` may set).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from affectus.errors import AffectusError, suggest
from affectus.utils.io import read_text_file

Path_ = tuple[Any, ...]  # a location inside the spec: ("runs", 1, "model")

TOP_KEYS = ("name", "description", "preset", "data", "seeds", "overrides", "runs", "grid", "report")
ROW_KEYS = ("name", "model", "variant", "overrides")
REPORT_KEYS = ("columns", "slope_over")
REPORT_COLUMNS = ("metrics", "modalities")
# Set by the runner, never by a spec: the seed comes from `seeds`, threads from --threads / --jobs.
RESERVED_KEYS = ("seed", "threads")


@dataclass
class RowSpec:
    """One row of the paper's table: a model (and CMC variant) with its own overrides."""

    name: str
    model: str = "cmc"
    variant: str | None = None  # None: the model's default variant
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReportSpec:
    columns: str = "metrics"
    slope_over: str | None = None


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
    source: str  # the spec file (or "<spec>" for a dict), for error lines
    lines: dict[Path_, int] = field(default_factory=dict, repr=False)

    def where(self, path: Path_) -> str:
        """`SOURCE:LINE` of the nearest located node on `path` (just SOURCE for a dict spec)."""
        while path:
            if path in self.lines:
                return f"{self.source}:{self.lines[path]}"
            path = path[:-1]
        return f"{self.source}:{self.lines[()]}" if () in self.lines else self.source


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


# ----------------------------------------------------------------------------- YAML with line numbers


def _plain(node: yaml.Node, path: Path_, lines: dict[Path_, int], source: str, loader: yaml.SafeLoader) -> Any:
    """A composed YAML node -> plain Python, recording each node's 1-based line under its path."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _plain(key_node, path + ("<key>",), {}, source, loader)
            line = key_node.start_mark.line + 1
            if isinstance(key, (dict, list)):
                raise AffectusError(f"{source}:{line}: a key must be a plain value")
            if key in out:
                raise AffectusError(f"{source}:{line}: duplicate key '{key}'")
            # a key's line (not its value's) is where an unknown key or a wrong value is reported
            lines[path + (key,)] = line
            out[key] = _plain(value_node, path + (key,), lines, source, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, path + (i,), lines, source, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _read_yaml(path: Path) -> tuple[Any, dict[Path_, int]]:
    source = str(path)
    text = read_text_file(path, "experiment spec")  # missing, unreadable, not UTF-8: one line
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise AffectusError(f"{source}:{line}: not valid YAML ({err.problem})") from None
    if node is None:
        raise AffectusError(f"{source}:1: empty spec: expected a mapping with at least `runs:`")
    lines: dict[Path_, int] = {}
    return _plain(node, (), lines, source, yaml.SafeLoader("")), lines


# ------------------------------------------------------------------------------------- shape checks


class _Checker:
    """Raises one-line errors located at a path of the spec."""

    def __init__(self, source: str, lines: dict[Path_, int]) -> None:
        self.spec = ExperimentSpec("", "", None, None, [], {}, [], {}, ReportSpec(), source, lines)

    def fail(self, path: Path_, message: str) -> AffectusError:
        return AffectusError(f"{self.spec.where(path)}: {message}")

    def mapping(self, value: Any, path: Path_, what: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"{what}: expected a mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(path + (key,), f"{what}: keys must be strings, got {key!r}")
        return value

    def keys(self, value: dict[str, Any], allowed: tuple[str, ...], path: Path_, what: str) -> None:
        for key in value:
            if key not in allowed:
                raise self.fail(path + (key,), f"unknown key '{key}'{suggest(key, allowed)} in {what}: expected one of {', '.join(allowed)}")

    def text(self, value: Any, path: Path_, what: str, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"{what}: expected a non-empty string, got {_kind(value)}")
        return value

    def overrides(self, value: Any, path: Path_) -> dict[str, Any]:
        out = self.mapping(value, path, "overrides")
        for key, v in out.items():
            _check_reserved(key, lambda m, k=key: self.fail(path + (k,), m))
            if isinstance(v, dict) or (isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v)):
                raise self.fail(path + (key,), f"override {key}: expected a value or a list of values")
        return dict(out)


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"


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
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
            raise fail(f"seeds = {value!r}: expected a list of non-negative integers")
        if len(set(value)) != len(value):
            raise fail(f"seeds = {value!r}: expected distinct seeds")
        return list(value)
    raise fail(f"seeds = {value!r}: expected a positive integer n (seeds 1..n) or a non-empty list of integers")


def load_spec(spec: str | Path | dict[str, Any] | ExperimentSpec) -> ExperimentSpec:
    """Read and shape-check a spec (a file, a shipped name or a dict); models and variants included."""
    if isinstance(spec, ExperimentSpec):
        return spec
    if isinstance(spec, dict):
        data, lines, source, stem = copy.deepcopy(spec), {}, "<spec>", "experiment"
    else:
        path = find_spec(spec)
        (data, lines), source, stem = _read_yaml(path), str(path), path.stem
    c = _Checker(source, lines)
    if not isinstance(data, dict):
        raise c.fail((), f"expected a mapping at the top level, got {_kind(data)}")
    c.keys(data, TOP_KEYS, (), "the spec")
    name = c.text(data.get("name", stem), ("name",), "name")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise c.fail(("description",), f"description: expected a string, got {_kind(description)}")
    preset = c.text(data.get("preset"), ("preset",), "preset", optional=True)
    if preset is not None:
        from affectus.data.presets import list_presets

        if preset not in list_presets():
            raise c.fail(("preset",), f"unknown preset '{preset}'{suggest(preset, list_presets())}: expected one of {', '.join(list_presets())}")
    data_file = c.text(data.get("data"), ("data",), "data", optional=True)
    if data_file is not None and not data_file.startswith("synth:") and source != "<spec>":
        data_file = str(Path(source).parent / data_file)  # relative to the spec's folder
    seeds = _seeds(data.get("seeds", 1), lambda m: c.fail(("seeds",), m))
    overrides = c.overrides(data.get("overrides"), ("overrides",))
    rows = _rows(c, data.get("runs"))
    grid = _grid(c, data.get("grid"))
    report = _report(c, data.get("report"), grid)
    return ExperimentSpec(name, description, preset, data_file, seeds, overrides, rows, grid, report, source, lines)


def _rows(c: _Checker, value: Any) -> list[RowSpec]:
    from affectus.models.registry import list_models
    from affectus.training.config import list_variants

    if not isinstance(value, list) or not value:
        raise c.fail(("runs",), f"runs: expected a non-empty list of {{name, model, variant, overrides}}, "
                                f"got {_kind(value)}")
    rows: list[RowSpec] = []
    slugs: dict[str, str] = {}
    models = list_models()
    for i, item in enumerate(value):
        path = ("runs", i)
        item = c.mapping(item, path, f"runs[{i}]")
        c.keys(item, ROW_KEYS, path, f"runs[{i}]")
        name = c.text(item.get("name"), path + ("name",), f"runs[{i}].name")
        model = c.text(item.get("model", "cmc"), path + ("model",), f"runs[{i}].model")
        if model not in models:
            raise c.fail(path + ("model",), f"unknown model '{model}'{suggest(model, models)}: expected one of {', '.join(models)}")
        allowed = list_variants(model)
        variant = c.text(item.get("variant", allowed[0]), path + ("variant",), f"runs[{i}].variant")
        if variant not in allowed:
            raise c.fail(path + ("variant",), f"unknown variant '{variant}'{suggest(variant, allowed)} for model "
                                              f"'{model}': expected one of {', '.join(allowed)}")
        slug = slugify(name)
        if slug in slugs:
            raise c.fail(path + ("name",), f"run name '{name}' gives the same id '{slug}' as '{slugs[slug]}'")
        slugs[slug] = name
        rows.append(RowSpec(name, model, variant, c.overrides(item.get("overrides"), path + ("overrides",))))
    return rows


def _grid(c: _Checker, value: Any) -> dict[str, list[Any]]:
    grid = c.mapping(value, ("grid",), "grid")
    for key, values in grid.items():
        path = ("grid", key)
        _check_reserved(key, lambda m, p=path: c.fail(p, m))
        if not isinstance(values, list) or not values:
            raise c.fail(path, f"grid {key}: expected a non-empty list of values, got {_kind(values)}")
        for j, v in enumerate(values):
            if isinstance(v, dict):
                raise c.fail(path + (j,), f"grid {key}: expected plain values, got {_kind(v)}")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise c.fail(path, f"grid {key}: values repeat")
    return dict(grid)


def _report(c: _Checker, value: Any, grid: dict[str, list[Any]]) -> ReportSpec:
    report = c.mapping(value, ("report",), "report")
    c.keys(report, REPORT_KEYS, ("report",), "report")
    columns = report.get("columns", "metrics")
    if columns not in REPORT_COLUMNS:
        raise c.fail(("report", "columns"), f"report.columns = {columns!r}: expected one of {', '.join(REPORT_COLUMNS)}")
    slope = report.get("slope_over")
    if slope is not None:
        if slope not in grid:
            raise c.fail(("report", "slope_over"), f"report.slope_over = {slope!r}: expected a grid key "
                                                   f"({', '.join(grid) or 'the spec has no grid'})")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in grid[slope]):
            raise c.fail(("grid", slope), f"grid {slope}: report.slope_over needs numeric values")
    return ReportSpec(columns, slope)


# ---------------------------------------------------------------------------------------- expansion


def slugify(text: str) -> str:
    """'w/o PLGM' -> 'w-o-plgm': lower case, runs of other characters -> '-'."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "run"


def _value_text(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")


def _grid_label(point: dict[str, Any], keys: list[str]) -> str:
    """`tau=0.05`; a key's last part names it unless two grid keys share that part."""
    short = [k.rpartition(".")[2] for k in keys]
    names = {k: (s if short.count(s) == 1 else k) for k, s in zip(keys, short)}
    return "__".join(f"{names[k]}={_value_text(point[k])}" for k in keys)


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


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

    def resolve(row: RowSpec, values: dict[str, Any], where: str):
        try:
            return resolve_config(row.model, row.variant, preset, None, values)
        except AffectusError as err:
            message = str(err).removeprefix("--set: ")
            raise AffectusError(f"{where}: run '{row.name}': {message}") from None

    # key by key first, so an unknown key or a wrong value is reported at its own line
    for i, row in enumerate(spec.runs):
        for key, value in spec.overrides.items():
            resolve(row, {key: value}, spec.where(("overrides", key)))
        for key, value in row.overrides.items():
            resolve(row, {key: value}, spec.where(("runs", i, "overrides", key)))
        for key, values in spec.grid.items():
            for j, value in enumerate(values):
                resolve(row, {key: value}, spec.where(("grid", key, j)))
        for key, value in cli.items():
            resolve(row, {key: value}, f"--set {key}")

    keys = list(spec.grid)
    planned: list[PlannedRun] = []
    for i, row in enumerate(spec.runs):
        for point in grid_points(spec.grid):
            # one resolve per distinct setting; the seeds only differ in train.seed
            merged = {**spec.overrides, **row.overrides, **point, **cli}
            base = resolve(row, merged, spec.where(("runs", i)))
            group = slugify(row.name) + (f"__{_grid_label(point, keys)}" if keys else "")
            for seed in seed_list:
                cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, seed=seed))
                planned.append(PlannedRun(f"{group}__seed={seed}", group, row.name, row.model, row.variant,
                                          dict(point), seed, cfg))
    return planned
