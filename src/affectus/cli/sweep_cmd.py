"""`affectus sweep`: a hyperparameter search (Optuna) whose trials are ordinary training runs.

See docs/sweep.md. Any number of these processes, on one machine (SQLite) or many (PostgreSQL),
join one study when they share --storage and --study. Trials are chosen by validation scores only;
the best trial's test score is printed once, at the end, and written to OUT/sweep.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from affectus.cli import TRUST_PICKLE_HELP, app
from affectus.errors import AffectusError

console = Console(stderr=True)


def _log(line: str) -> None:
    console.print(line, markup=False, highlight=False)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_summary(report: dict[str, Any], path: Path) -> None:
    counts = ", ".join(f"{n} {state.lower()}" for state, n in report["counts"].items()) or "no trials"
    print(f"study {report['study']}: {counts} (budget {report['budget']})")
    best = report["best"]
    obj = report["objective"]
    if best is None:
        print("no completed trial yet")
    else:
        params = " ".join(f"{k}={v}" for k, v in best["params"].items())
        line = f"best trial {best['trial']} by validation {obj['metric']} = {_fmt(best['validation'])}"
        fitted = best.get("validation_in_sample")
        if fitted is None or fitted:  # the run fitted parts on its selection split (None: it does not say)
            line += f" † in-sample ({', '.join(fitted) if fitted else 'unknown'} fitted on the selection split)"
        print(f"{line}: {params}")
        test = best["test"]
        if test.get("metrics") is None:
            print(f"its test score: not shown ({test.get('note')})")
        elif test.get("chose_trial"):  # a preset that reports its selection split: not a held-out number
            print(f"its {obj['metric']} on split '{test['split']}' (the split that chose the trial: not held out"
                  f"{_in_sample(test)}): {_fmt(test['value'])}")
        else:
            # reported once, for the chosen trial only; it played no part in the choice
            print(f"its {obj['metric']} on split '{test['split']}' (reported once, not used to choose"
                  f"{_in_sample(test)}): {_fmt(test['value'])}")
    print(f"wrote {path}")


def _in_sample(test: dict[str, Any]) -> str:
    if "in_sample" not in test:
        return ""
    parts = test["in_sample"]["parts"]
    return f"; † in-sample: {', '.join(parts) if parts else 'unknown'} fitted on it"


Opt = typer.Option


@app.command()
def sweep(
    spec: Annotated[str, typer.Argument(help="sweep spec YAML, or a shipped spec name (cmc_grid)")],
    out: Annotated[Path, Opt("--out", help="sweep directory: trials/<n>/, study.db, sweep.json")],
    data: Annotated[str | None, Opt("--data", help="MMSA pickle / .npz (or synth:PRESET)")] = None,
    preset: Annotated[str | None, Opt("--preset", help="dataset preset (overrides the spec's)")] = None,
    trials: Annotated[int | None, Opt("--trials", help="most trials this worker runs")] = None,
    storage: Annotated[str | None, Opt("--storage", help="sqlite:///FILE or postgresql://...")] = None,
    study: Annotated[str | None, Opt("--study", help="study name (default: the spec's name)")] = None,
    sampler: Annotated[str | None, Opt("--sampler", help="grid or tpe (overrides the spec's)")] = None,
    seed: Annotated[int | None, Opt("--seed", help="sampler seed (grid order, TPE)")] = None,
    set_: Annotated[
        list[str] | None, Opt("--set", help="override for every trial, e.g. train.epochs=50")
    ] = None,
    threads: Annotated[int | None, Opt("--threads", help="CPU threads for torch")] = None,
    device: Annotated[str | None, Opt("--device", help="cpu or cuda[:N]")] = None,
    heartbeat: Annotated[int, Opt("--heartbeat", help="seconds between heartbeats; 0: none")] = 60,
    retry_failed: Annotated[
        bool, Opt("--retry-failed", help="re-run grid points whose trials all failed")
    ] = False,
    report: Annotated[bool, Opt("--report", help="only write and print the report")] = False,
    quiet: Annotated[bool, Opt("--quiet", help="no per-trial lines")] = False,
    trust_pickle: Annotated[bool, Opt("--trust-pickle", help=TRUST_PICKLE_HELP)] = False,
) -> None:
    """Search hyperparameters: each trial trains into OUT/trials/<n>/ and is scored on validation."""
    _need_optuna()
    from affectus.experiments.sweep import check_storage_url, load_spec, storage_errors, with_sampler
    from affectus.training.config import parse_set
    from affectus.utils.io import lock_dir

    sp = load_spec(spec)
    if sampler is not None:
        sp = with_sampler(sp, sampler)
    if seed is not None:
        sp.seed = seed
    sp.preset = preset or sp.preset
    local = {"train.threads": threads, "train.device": device}
    extra = parse_set(set_ or [])
    clash = sorted(set(extra) & set(sp.space))
    if clash:
        raise AffectusError(f"--set {clash[0]}: this key is a dimension of the sweep's space")
    sp.overrides = {**sp.overrides, **extra, **{k: v for k, v in local.items() if v is not None}}
    if trials is not None and trials < 1:
        raise AffectusError("--trials: expected at least 1")
    if retry_failed and sp.sampler != "grid":
        raise AffectusError(
            "--retry-failed: only for grid sweeps (TPE's failed trials count against its budget)"
        )
    if heartbeat < 0:
        raise AffectusError("--heartbeat: expected seconds >= 0")

    name = study or sp.name
    if storage is not None:
        check_storage_url(storage)  # before OUT is created: a URL that cannot work writes nothing
    # shared: every worker of this study may write OUT at once (each trial locks its own folder);
    # an experiment or a training aimed at OUT, which lock it exclusively, is kept out meanwhile
    with lock_dir(out, "sweep directory", shared=True):
        url = storage or f"sqlite:///{out.resolve() / 'study.db'}"
        with storage_errors(url):
            _sweep(sp, out, url, name, data, heartbeat, trials, retry_failed, report, quiet, trust_pickle)


def _sweep(sp, out: Path, url: str, name: str, data: str | None, heartbeat: int, trials: int | None,
           retry_failed: bool, report: bool, quiet: bool, trust_pickle: bool) -> None:
    from affectus.experiments.sweep import Worker, check_config_keys, claim_out_dir

    log = None if quiet else _log
    claim_out_dir(out, name, record=False)  # checked now, recorded once the sweep can start
    if report:
        worker = Worker(sp, out, url, name, heartbeat=None, log=log, create=False)
        # `metric: auto` resolves from the data's family; the workers recorded what it became
        rep = worker.report(worker.study.user_attrs.get("affectus_metric", sp.metric))
        print_summary(rep, out / "sweep.json")
        return

    source = data or sp.data
    if source is None:
        raise AffectusError("no data: pass --data FILE or set data: in the spec")
    from affectus.data.load import open_data
    from affectus.training.trainer import plan_for

    ds, p = open_data(source, sp.preset, trust_pickle=trust_pickle)
    check_config_keys(sp, p)
    plan = plan_for(ds, p)
    worker = Worker(sp, out, url, name, heartbeat=heartbeat or None, log=log)
    claim_out_dir(out, name)  # recorded once the storage answers: a failed start claims nothing
    rep, failures = worker.run(ds, p, plan, data_source=source, max_trials=trials, retry_failed=retry_failed)
    print_summary(rep, out / "sweep.json")
    if failures:
        raise AffectusError(f"{failures} trial(s) of this worker failed: see {out / 'sweep.json'}")


def _need_optuna() -> None:
    """Optuna is a dependency; a broken or partial install still gets one line, not a traceback."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise AffectusError("affectus sweep needs Optuna, which is not installed: pip install optuna "
                            "(or reinstall affectus, which depends on it)") from None
