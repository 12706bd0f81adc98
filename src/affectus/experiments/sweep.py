"""Hyperparameter sweeps with Optuna: a validated YAML spec, one study shared by any number of workers.

Each trial is an ordinary training run (`train_run`) written to OUT/trials/<trial number>/. Its
objective value is read from that run's `run.json` "select_metrics" (the selection / validation
split) and from nothing else: the evaluation split's scores ("metrics") are read once, for the best
trial, when the report is written, and never decide anything (ARCHITECTURE.md: test labels are
read only by evaluation; the authors' grid search chose by test accuracy, we do not).

Workers: every `affectus sweep` process with the same storage and study name joins one study.
A trial is created under a lock (a file lock beside a SQLite file, an advisory lock in PostgreSQL)
and only while the study holds fewer trials than its budget, so no grid point is evaluated twice
and no surplus trial appears; with the grid sampler, Optuna maps trial number k to grid point k
(the grid is shuffled by the study's seed, the same in every worker). A heartbeat thread keeps
the running trial alive in the storage; a killed worker's trial is marked FAIL by the next worker
that looks (Optuna's stale-trial check) and is never retried silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from affectus.errors import AffectusError
from affectus.models.registry import DEFAULT_MODEL
from affectus.utils.io import lock_dir, read_json_file, write_json_atomic
from affectus.utils.strict_yaml import Doc, Strict, read_yaml, validate

REPORT_FORMAT = "affectus-sweep/1"
CLAIM_FILE = "sweep-study.json"  # the study this sweep directory belongs to
SAMPLERS = ("grid", "tpe")
# Most points a grid may have: Optuna's GridSampler lists every point in memory in every worker, and a
# grid past this is years of training anyway (use sampler: tpe with a trials: budget).
MAX_GRID_POINTS = 100_000
# machine-local settings: workers on different machines may differ in these and still share a study
LOCAL_KEYS = {"train.threads", "train.device"}
_MISSING = object()


class MetricError(AffectusError):
    """The objective's metric is not among the validation scores: every trial would fail alike."""


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


# ---------------------------------------------------------------- the spec: reading and validation

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


# ---------------------------------------------------------------- storage, lock, heartbeat

def normalise_storage_url(url: str) -> str:
    """`postgresql://` -> the installed driver (psycopg 3 preferred, else psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            import importlib.util

            driver = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
            return f"postgresql+{driver}://{url[len(prefix):]}"
    return url


# Query parameters that carry a credential (libpq's `password`, `sslpassword`, a token...): masked
# wherever a URL is shown or saved, like the password before the host.
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|cred|auth", re.IGNORECASE)


def _parse_url(url: str):
    """SQLAlchemy's URL of `url`, or None when it cannot be parsed (a bad port is a ValueError there)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return None


def redact(url: str) -> str:
    """The URL with every credential masked: the password before the host and each query parameter
    that names one (`?password=`, `sslpassword`, ...). A URL whose parts cannot be told apart for sure
    (unparseable, a second `@` that SQLAlchemy would read as part of the host) shows its scheme only."""
    from urllib.parse import urlencode

    parsed = _parse_url(url)
    if parsed is None or "@" in (parsed.host or ""):
        return f"{url.split('://', 1)[0]}://..." if "://" in url else "(unparseable URL)"
    query = {k: "***" if _SECRET_KEY.search(k) else v for k, v in parsed.query.items()}
    text = parsed.set(query={}).render_as_string(hide_password=True)
    return text + ("?" + urlencode(query, doseq=True, safe="*") if query else "")


def _secrets(url: str) -> list[str]:
    """The credential texts of `url` (to scrub from a driver's message, which may quote the URL)."""
    parsed = _parse_url(url)
    if parsed is None:
        return []
    found = [str(parsed.password or "")] + [str(x) for k, v in parsed.query.items() if _SECRET_KEY.search(k)
                                             for x in (v if isinstance(v, tuple) else (v,))]
    if "@" in (parsed.host or ""):
        found.append(parsed.host.rsplit("@", 1)[0])
    return [s for s in found if s]


def check_storage_url(url: str) -> None:
    """Refuse, in one masked line, a storage URL that cannot be used as written: unparseable, a port
    that is not a number, or a second `@` (a password's `@` must be written %40, else SQLAlchemy takes
    the rest of the password for the host and would show it)."""
    parsed = _parse_url(url)
    if parsed is None:
        raise AffectusError(f"--storage {redact(url)}: not a database URL (expected sqlite:///FILE or "
                            "postgresql://USER:PASSWORD@HOST[:PORT]/DB)")
    if "@" in (parsed.host or ""):
        raise AffectusError(f"--storage {redact(url)}: more than one '@' before the host; write an '@' in "
                            "the user name or password as %40")


def _scrub(text: str, url: str) -> str:
    # secrets under 4 characters are left: replacing every "p" would garble the message, and no driver
    # quotes a password anyway (this is for one that echoes the URL's text)
    for secret in sorted(_secrets(url), key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Every failure to reach or read the study's storage as one line naming it (never a traceback):
    a bad URL, an unreachable or refusing PostgreSQL server, a SQLite file that is not a database.
    The line never holds a credential (`redact`, and a driver's message is scrubbed of them)."""
    import sqlalchemy.exc

    check_storage_url(url)
    try:
        yield
    except sqlalchemy.exc.ArgumentError:
        raise AffectusError(f"--storage {redact(url)}: not a database URL (expected sqlite:///FILE or "
                            "postgresql://USER:PASSWORD@HOST/DB)") from None
    except sqlalchemy.exc.DBAPIError as err:
        reason = _scrub(" ".join(str(err.orig).split()) or type(err.orig).__name__, url)
        raise AffectusError(f"--storage {redact(url)}: cannot use the study storage ({reason})") from None
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = _scrub(" ".join(str(err).split()[:40]) or type(err).__name__, url)
        raise AffectusError(f"--storage {redact(url)}: cannot use the study storage ({reason})") from None
    except ModuleNotFoundError as err:  # the PostgreSQL driver is not installed
        raise AffectusError(f"--storage {redact(url)}: needs the Python module {err.name!r}: pip install "
                            "'affectus[postgres]'") from None


def claim_out_dir(out: Path, study: str, record: bool = True) -> None:
    """One study per sweep directory: trials/<n>/ is numbered by the study, so two studies would mix.

    The first worker records the study in OUT/sweep-study.json; later workers must name the same one.
    The check and the record happen under one exclusive lock, so two workers starting at once with
    different studies cannot both pass it."""
    claim = out / CLAIM_FILE
    with lock_dir(out, "sweep directory", wait=True, name=".sweep-claim.lock"):
        held = None
        for path in (claim, out / "sweep.json"):  # sweep.json: directories from before the claim file
            if path.is_file():
                record = read_json_file(path, "sweep record")
                held = record.get("study") if isinstance(record, dict) else None
                break
        if held is not None and held != study:
            raise AffectusError(f"{out}: holds the sweep of study '{held}'; choose another --out (or --study {held})")
        if record and not claim.is_file():
            write_json_atomic(claim, {"study": study})


class StudyLock:
    """The lock every worker of one storage takes to create a trial (and the study and tables).

    SQLite: an fcntl lock on `<db>.lock` beside the file (a SQLite study lives on one machine).
    PostgreSQL: a session advisory lock on a connection of its own. Either is dropped when its
    holder dies (the kernel closes the file; PostgreSQL ends the session), so no lock outlives a
    killed worker.
    """

    _KEY = int.from_bytes(hashlib.sha256(b"affectus-sweep").digest()[:8], "big", signed=True)

    def __init__(self, url: str) -> None:
        import sqlalchemy
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        self._path: Path | None = None
        self._engine = None
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                self._path = Path(parsed.database + ".lock")
        elif parsed.get_backend_name() == "postgresql":
            self._engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        else:
            raise AffectusError(f"--storage {redact(url)}: expected sqlite:///FILE or postgresql://...")

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self._path is not None:
            # blocking: the section is short (create a trial), and a dead holder's lock goes with it
            with lock_dir(self._path.parent, "study storage directory", wait=True, name=self._path.name):
                yield
        elif self._engine is not None:
            from sqlalchemy import text

            with self._engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self._KEY})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._KEY})
                    conn.commit()
        else:
            yield


def open_storage(url: str, heartbeat: int | None):
    import optuna

    # SQLite: several processes write one file, so wait for a busy database rather than fail at once
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {
        "pool_pre_ping": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat,
                                          grace_period=None if heartbeat is None else 3 * heartbeat)


class Heartbeat:
    """Records the running trial's heartbeat every `interval` s: what `optimize` does, for our ask/tell."""

    def __init__(self, storage, trial_id: int, interval: int | None) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if interval is None:
            return

        def beat() -> None:
            while True:
                with contextlib.suppress(Exception):  # a database hiccup must not end the training
                    storage.record_heartbeat(trial_id)
                if self._stop.wait(interval):
                    return

        self._thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _grid_sampler(space: dict[str, list[Any]], seed: int):
    import optuna

    class LockedGrid(optuna.samplers.GridSampler):
        """Optuna's grid; the workers' budget check under the lock decides when to stop, so
        `after_trial` must not call `study.stop()` (which raises outside `optimize`)."""

        def after_trial(self, study, trial, state, values) -> None:
            return None

    return LockedGrid(space, seed=seed)


# ---------------------------------------------------------------- objective and report

def lookup(metrics: dict[str, Any], path: str) -> Any:
    """`d_test.acc2` -> metrics["d_test"]["acc2"]; _MISSING when absent."""
    node: Any = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def validation_in_sample(run_dir: str | None) -> list[str] | None:
    """The parts a trial's run fitted on its selection split: its validation value is in-sample for them."""
    from affectus.inference.checkpoints import in_sample_parts, read_run

    if not run_dir or not (Path(run_dir) / "run.json").is_file():
        return []
    info = read_run(run_dir)
    return in_sample_parts(info, str(info.get("select_split")))


def validation_score(run_dir: Path, metric: str) -> tuple[float, dict[str, Any]]:
    """The objective: `metric` in run.json "select_metrics" (validation). The test scores are not read."""
    from affectus.inference.checkpoints import read_run

    select = read_run(run_dir).get("select_metrics")
    if not isinstance(select, dict):
        raise AffectusError(f"{run_dir}/run.json: no select_metrics (a run from an older affectus?)")
    value = lookup(select, metric)
    if value is _MISSING:
        have = ", ".join(sorted(k for k in select if not isinstance(select[k], dict)))
        raise MetricError(f"objective.metric '{metric}': not among the validation metrics ({have})")
    if not _number(value) or not math.isfinite(value):
        raise AffectusError(f"objective.metric '{metric}': validation value {value!r} is not a finite number")
    return float(value), select


def _test_report(run_dir: str | None, metric: str) -> dict[str, Any]:
    """The chosen trial's evaluation-split scores, read here for the report and nowhere else."""
    from affectus.inference.checkpoints import in_sample_json, read_run, split_fits

    if not run_dir or not (Path(run_dir) / "run.json").is_file():
        return {"metrics": None, "note": "the trial's run.json is not reachable from this machine"}
    info = read_run(run_dir)
    value = lookup(info.get("metrics") or {}, metric)
    split = info.get("metrics_split")
    # a preset that reports its selection split (mosi-utterance): the trial was chosen on this very score,
    # and whatever the run fitted there (run.json `fitted_on`) makes it in-sample too
    return {"split": split, "metric": metric, "value": None if value is _MISSING else value,
            "metrics": info.get("metrics"), "chose_trial": split == info.get("select_split"),
            **in_sample_json(split_fits(info, str(split)))}


def build_report(study, spec: SweepSpec, metric: str, storage_url: str) -> dict[str, Any]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    lost = "no heartbeat: the worker was killed or lost"
    rows = [{"number": t.number, "state": t.state.name, "params": t.params, "validation": t.value,
             "run_dir": t.user_attrs.get("run_dir"), "host": t.user_attrs.get("host"),
             "error": t.user_attrs.get("error") or (lost if t.state == TrialState.FAIL else None)}
            for t in trials]
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = None
    if done:
        # the best validation value; ties go to the lowest trial number, so the choice is deterministic
        sign = -1.0 if spec.direction == "maximize" else 1.0
        top = min(done, key=lambda t: (sign * t.value, t.number))
        run_dir = top.user_attrs.get("run_dir")
        best = {"trial": top.number, "params": top.params, "validation": top.value,
                "validation_metrics": top.user_attrs.get("select_metrics"), "run_dir": run_dir,
                "validation_in_sample": validation_in_sample(run_dir), "test": _test_report(run_dir, metric)}
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return {"format": REPORT_FORMAT, "study": study.study_name, "storage": redact(storage_url),
            "objective": {"metric": metric, "direction": spec.direction, "scored_on": "select_metrics"},
            "sampler": spec.sampler, "budget": spec.budget(), "counts": counts, "best": best, "trials": rows}


# ---------------------------------------------------------------- workers

@dataclasses.dataclass
class Worker:
    """One sweep process: its study and where its trials go. `create=False` only reads (--report)."""

    spec: SweepSpec
    out_dir: Path
    storage_url: str
    study_name: str
    heartbeat: int | None = 60
    log: Callable[[str], None] | None = print
    create: bool = True

    def __post_init__(self) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # we print our own line per trial
        self.storage_url = normalise_storage_url(self.storage_url)
        self.lock = StudyLock(self.storage_url)
        with self.lock.held():  # one creator at a time: tables, the study, its stored spec
            self.storage = open_storage(self.storage_url, self.heartbeat)
            names = optuna.get_all_study_names(self.storage)
            if not self.create and self.study_name not in names:
                raise AffectusError(f"no study '{self.study_name}' in {redact(self.storage_url)}")
            self.study = optuna.create_study(storage=self.storage, study_name=self.study_name,
                                             load_if_exists=True, direction=self.spec.direction,
                                             sampler=self._sampler(0))
            stored, mine = self.study.user_attrs.get("affectus_spec"), self.spec.fingerprint()
            if stored is None and self.create:
                self.study.set_user_attr("affectus_spec", mine)
            elif stored is not None and stored != mine:
                diff = ", ".join(sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k)))
                where = f"study '{self.study_name}' in {redact(self.storage_url)}"
                raise AffectusError(f"{where} was created from another spec ({diff} differ): "
                                    "use the same spec or another --study")

    def _sampler(self, next_number: int):
        import optuna

        if self.spec.sampler == "grid":
            # the same seed in every worker: trial k evaluates the k-th point of one shuffled grid
            return _grid_sampler(self.spec.space, self.spec.seed)  # type: ignore[arg-type]
        # a seed per trial number, so parallel workers do not draw the same start-up points
        return optuna.samplers.TPESampler(seed=self.spec.seed * 1_000_003 + next_number)

    def report(self, metric: str) -> dict[str, Any]:
        report = build_report(self.study, self.spec, metric, self.storage_url)
        write_json_atomic(self.out_dir / "sweep.json", report)
        return report

    def _failed_point(self) -> dict[str, Any] | None:
        """A point whose every trial failed (for --retry-failed), or None."""
        from optuna.trial import TrialState

        failed, covered = [], set()
        for t in self.study.get_trials(deepcopy=False):
            key = json.dumps(t.params, sort_keys=True)
            if t.state == TrialState.FAIL and t.params:
                failed.append((key, t.params))
            elif t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING):
                covered.add(key)
        return next((p for k, p in failed if k not in covered), None)

    def claim(self, retry_failed: bool = False):
        """Under the lock: a new trial with its parameters drawn, or None when the budget is spent."""
        with self.lock.held(), warnings.catch_warnings():
            # "heartbeat is supposed to be used with optimize": we beat ourselves (class Heartbeat)
            warnings.simplefilter("ignore", UserWarning)
            n = len(self.study.get_trials(deepcopy=False))
            if n < self.spec.budget():
                self.study.sampler = self._sampler(n)
                trial = self.study.ask()
            elif retry_failed and (point := self._failed_point()) is not None:
                self.study.enqueue_trial(point, user_attrs={"retry": True})
                trial = self.study.ask()
            else:
                return None
            if self.heartbeat is not None:
                # a first beat at once: a worker that dies before its heartbeat thread starts is still found
                self.storage.record_heartbeat(trial._trial_id)
            # draw now, still under the lock, so the trial's point is on record before it trains
            for key, dim in self.spec.space.items():
                if isinstance(dim, list):
                    trial.suggest_categorical(key, dim)
                elif dim.is_int:
                    trial.suggest_int(key, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
                else:
                    trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)
            return trial

    def _finish(self, trial, value: float | None, error: str | None) -> bool:
        """Tell the storage; False when the trial did not complete."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        try:
            if error is None:
                self.study.tell(trial, value)
                return True
            trial.set_user_attr("error", error)
            self.study.tell(trial, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            # another worker failed it already: our heartbeat stopped for longer than the grace period
            if self.log:
                self.log(f"[trial {trial.number}] was marked FAIL meanwhile (heartbeat lost); result dropped")
        return False

    def run(self, dataset, preset, plan, data_source: str | None = None, max_trials: int | None = None,
            retry_failed: bool = False) -> tuple[dict[str, Any], int]:
        """Claim and train trials until the budget is spent (or `max_trials` here). -> (report, failures)."""
        import optuna

        from affectus.training.config import resolve_config
        from affectus.training.loop import training_log
        from affectus.training.trainer import train_run
        from affectus.utils.threads import torch_threads

        # `metric: auto`: the label scheme's default objective (sentiment: its binary accuracy)
        metric = plan.scheme.objective if self.spec.metric == "auto" else self.spec.metric
        self.study.set_user_attr("affectus_metric", metric)  # for --report, which has no data to tell
        done = failures = 0
        while max_trials is None or done < max_trials:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)  # a killed worker's RUNNING trial -> FAIL
            trial = self.claim(retry_failed)
            if trial is None:
                break
            done += 1
            run_dir = (self.out_dir / "trials" / str(trial.number)).resolve()
            trial.set_user_attr("run_dir", str(run_dir))
            trial.set_user_attr("host", socket.gethostname())
            params = dict(trial.params)
            if self.log:
                self.log(f"[trial {trial.number}] {' '.join(f'{k}={v}' for k, v in params.items())}")
            beat = Heartbeat(self.storage, trial._trial_id, self.heartbeat)
            try:
                values = {**self.spec.overrides, **params}
                cfg = resolve_config(self.spec.model, self.spec.variant, preset, None, values)
                # the trial's own folder, locked: a worker of another storage numbering the same
                # trial, or a `train --out` aimed here, cannot write into it meanwhile
                with lock_dir(run_dir, "run directory"):
                    # train_run returns the evaluation split's scores: deliberately dropped
                    with torch_threads(cfg.train.threads), training_log(run_dir / "train.log"):
                        train_run(dataset, cfg, run_dir, plan, data_source=data_source)
                    value, select = validation_score(run_dir, metric)
                trial.set_user_attr("select_metrics", select)
            except BaseException as err:
                beat.stop()
                error = f"{type(err).__name__}: {(str(err) or '-').splitlines()[0]}"
                self._finish(trial, None, error)
                failures += 1
                if self.log:
                    self.log(f"[trial {trial.number}] FAILED: {error}")
                self.report(metric)
                # a wrong metric name fails every trial alike, and an interrupt means stop: end this worker
                if isinstance(err, MetricError) or not isinstance(err, Exception):
                    raise
                continue
            beat.stop()
            if self._finish(trial, value, None):
                if self.log:
                    self.log(f"[trial {trial.number}] validation {metric} = {value:.4f}")
            else:
                failures += 1
            self.report(metric)
        return self.report(metric), failures
