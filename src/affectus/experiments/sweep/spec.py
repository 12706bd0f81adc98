"""The sweep spec: reading and validating a sweep YAML into a `SweepSpec` (space, objective, sampler,
budget), the sampler override, and its config keys checked against the model before anything trains."""

from __future__ import annotations

import dataclasses
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from affectus.errors import AffectusError
from affectus.models.registry import DEFAULT_MODEL
from affectus.utils.strict_yaml import Doc, Strict, read_yaml, validate

SAMPLERS = ("grid", "tpe")


# Most points a grid may have: Optuna's GridSampler lists every point in memory in every worker, and a
# grid past this is years of training anyway (use sampler: tpe with a trials: budget).
MAX_GRID_POINTS = 100_000


# machine-local settings: workers on different machines may differ in these and still share a study
LOCAL_KEYS = {"train.threads", "train.device"}


@dataclasses.dataclass(frozen=True)
class Range:
    """A continuous or integer range for TPE: {low, high, log?, step?}."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))


@dataclasses.dataclass
class SweepSpec:
    name: str
    space: dict[str, list[Any] | Range]  # config key -> values (grid / categorical) or a range (TPE)
    model: str = DEFAULT_MODEL
    variant: str | None = None  # None: the model's default variant
    preset: str | None = None
    data: str | None = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    metric: str = "auto"  # a key of run.json "select_metrics", dotted when nested (d_test.acc2)
    direction: str = "maximize"
    sampler: str = "grid"
    trials: int | None = None  # the study's budget; grid: every point by default
    seed: int = 0

    def budget(self) -> int:
        if self.sampler == "grid":
            size = math.prod(len(v) for v in self.space.values() if isinstance(v, list))
            return size if self.trials is None else min(self.trials, size)
        assert self.trials is not None  # parse_spec demands it for TPE
        return self.trials

    def fingerprint(self) -> dict[str, Any]:
        """What every worker of one study must agree on (stored in the study, compared on joining)."""
        space = {k: v if isinstance(v, list) else dataclasses.asdict(v) for k, v in self.space.items()}
        shared = {k: v for k, v in self.overrides.items() if k not in LOCAL_KEYS}
        return json.loads(json.dumps({
            "model": self.model, "variant": self.variant, "preset": self.preset, "overrides": shared,
            "metric": self.metric, "direction": self.direction, "sampler": self.sampler, "space": space,
            "budget": self.budget(), "seed": self.seed}))


def list_shipped_specs() -> list[str]:
    folder = resources.files("affectus").joinpath("configs", "sweeps")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_spec(source: str | Path) -> SweepSpec:
    """A spec file, or the name of a shipped spec (`cmc_grid`)."""
    path = Path(source)
    if path.is_file():
        doc, stem = read_yaml(path), path.stem
    elif str(source) in list_shipped_specs():
        res = resources.files("affectus").joinpath("configs", "sweeps", f"{source}.yaml")
        doc, stem = read_yaml(f"shipped spec {source}", res.read_text("utf-8")), str(source)
    else:
        shipped = ", ".join(list_shipped_specs())
        raise AffectusError(f"sweep spec {source}: no such file or shipped spec ({shipped})")
    return parse_spec(doc, default_name=stem)


def _check(ok: bool, where: str, msg: str) -> None:
    if not ok:
        raise AffectusError(f"{where}: {msg}")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Objective(Strict):
    metric: str = "auto"  # a key of run.json "select_metrics"; auto: the label scheme's default
    direction: Literal["maximize", "minimize"] = "maximize"


class _RangeFile(Strict):
    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = None


class _SweepFile(Strict):
    """The keys of a sweep spec; `parse_spec` checks what types cannot."""

    name: str | None = None
    model: str = DEFAULT_MODEL
    variant: str | None = None
    preset: str | None = None
    data: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)  # config keys (model.x / train.x) to values
    objective: _Objective = Field(default_factory=_Objective)
    sampler: Literal["grid", "tpe"] | None = None  # None: grid when every space entry is a list, else tpe
    space: dict[str, list[Any] | _RangeFile]  # config key -> values, or {low, high, log?, step?} (TPE)
    trials: int | None = None
    seed: int = 0


def _dimension(doc: Doc, key: str, value: list[Any] | _RangeFile) -> list[Any] | Range:
    def check(ok: bool, msg: str) -> None:
        if not ok:
            raise doc.error(("space", key), f"space.{key}: {msg}")

    if isinstance(value, list):
        check(len(value) > 0, "empty list")
        check(all(v is None or isinstance(v, (str, int, float, bool)) for v in value),
              "values must be numbers, strings or booleans")
        check(len({json.dumps(v) for v in value}) == len(value), "repeated values")
        return list(value)
    low, high, log, step = value.low, value.high, value.log, value.step
    check(low < high, f"expected low < high, got {low} and {high}")
    check(step is None or step > 0, "step: expected a positive number")
    check(not (log and step is not None), "log and step cannot be combined")
    check(not log or low > 0, "a log range needs low > 0")
    return Range(low, high, log, step)


def parse_spec(data: Any, where: str = "sweep spec", default_name: str = "sweep") -> SweepSpec:
    """Check every key and type up front (the strict YAML loader); one line names the first problem.
    `data` is a `Doc` read with its lines, or plain data named `where`."""
    doc = data if isinstance(data, Doc) else Doc(data, where)
    raw = validate(_SweepFile, doc, what="the sweep spec")
    if not raw.objective.metric.strip():
        raise doc.error(("objective", "metric"), "objective.metric: expected a name")
    if not raw.space:
        raise doc.error(("space",), "space: expected config keys")
    space = {k: _dimension(doc, k, v) for k, v in raw.space.items()}
    both = sorted(set(space) & set(raw.overrides))
    if both:
        raise doc.error(("space", both[0]), f"'{both[0]}' is both in overrides and in space")
    all_lists = all(isinstance(v, list) for v in space.values())
    sampler = raw.sampler or ("grid" if all_lists else "tpe")
    if sampler == "grid" and not all_lists:
        raise doc.error(("sampler",), "sampler grid: every space entry must be a list of values")
    if sampler == "grid" and _grid_points(space) > MAX_GRID_POINTS:
        raise doc.error(("space",), f"space: a grid of {_grid_points(space):.3g} points; at most "
                                    f"{MAX_GRID_POINTS} (use sampler: tpe with trials: a budget)")
    if raw.trials is not None and raw.trials < 1:
        raise doc.error(("trials",), f"trials = {raw.trials}: expected a positive integer")
    if sampler == "tpe" and raw.trials is None:
        raise doc.error(("sampler",), "trials: needed with sampler tpe (the budget)")
    return SweepSpec(name=raw.name or default_name, space=space, model=raw.model, variant=raw.variant,
                     preset=raw.preset, data=raw.data, overrides=dict(raw.overrides), metric=raw.objective.metric,
                     direction=raw.objective.direction, sampler=sampler, trials=raw.trials, seed=raw.seed)


def _grid_points(space: dict[str, Any]) -> int:
    return math.prod(len(v) for v in space.values() if isinstance(v, list))


def with_sampler(spec: SweepSpec, sampler: str) -> SweepSpec:
    """--sampler: the same checks as the spec's own `sampler` key."""
    _check(sampler in SAMPLERS, "--sampler", f"expected one of {', '.join(SAMPLERS)}")
    _check(sampler != "grid" or all(isinstance(v, list) for v in spec.space.values()), "--sampler grid",
           "every space entry must be a list of values")
    _check(sampler == "grid" or spec.trials is not None, "--sampler tpe", "the spec needs trials: (a budget)")
    _check(sampler != "grid" or _grid_points(spec.space) <= MAX_GRID_POINTS, "--sampler grid",
           f"the space has {_grid_points(spec.space):.3g} points; at most {MAX_GRID_POINTS}")
    return dataclasses.replace(spec, sampler=sampler)


def check_config_keys(spec: SweepSpec, preset) -> None:
    """Resolve the config once per space value: a bad key or value stops the sweep before any training."""
    from affectus.training.config import resolve_config

    first = {k: (v[0] if isinstance(v, list) else v.low) for k, v in spec.space.items()}
    for key, dim in spec.space.items():
        for value in dim if isinstance(dim, list) else [dim.low, dim.high]:
            # each value named where the spec sets it; an error names that place and the key
            entries = [(k, v, "sweep spec overrides") for k, v in spec.overrides.items()]
            entries += [(k, v, f"sweep space {k}={v!r}") for k, v in {**first, key: value}.items()]
            resolve_config(spec.model, spec.variant, preset, None, entries)
