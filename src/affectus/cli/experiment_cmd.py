"""`affectus experiment SPEC --out DIR`: run a paper table's runs (rows x grid x seeds), resumably.

Re-running the same command resumes: finished runs are skipped, interrupted ones continue. The
spec is checked completely (every config resolved) before anything trains; a bad spec ends in one
`error: SPEC:LINE: ...` line (exit 2). See docs/experiments.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from affectus.cli import TRUST_PICKLE_HELP, app

console = Console(stderr=True)


@app.command()
def experiment(
    spec: Annotated[str, typer.Argument(help="spec YAML file, or a shipped spec name (table5_ablation, ...)")],
    out: Annotated[Path, typer.Option("--out", help="experiment directory (runs/, results.csv, results.md)")],
    data: Annotated[
        str | None, typer.Option("--data", help="MMSA pickle / .npz (or synth:PRESET[?scale=S&seq_scale=Q]); overrides the spec's")
    ] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="dataset preset; overrides the spec's")] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", help="N: seeds 1..N (overrides the spec's seeds)")] = None,
    jobs: Annotated[int, typer.Option("--jobs", help="runs trained at once, each in its own worker process")] = 1,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a config key in every run, e.g. train.epochs=20")
    ] = None,
    threads: Annotated[int, typer.Option("--threads", help="torch threads per run (0: cores // jobs)")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar, no table")] = False,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help=TRUST_PICKLE_HELP)] = False,
    ray: Annotated[
        str | None,
        typer.Option("--ray", help="run each run as a Ray task: 'local' starts Ray here (--jobs: its CPUs), HOST:PORT "
                                   "/ ray://HOST:10001 / auto joins a cluster (the data and OUT on a filesystem every "
                                   "node shares; the ray extra)"),
    ] = None,
) -> None:
    """Run an experiment spec; writes OUT/results.csv and OUT/results.md (mean ± std over seeds)."""
    from affectus.experiments.runner import run_experiment
    from affectus.training.config import parse_set

    if quiet:
        logging.getLogger("affectus.experiments").setLevel(logging.WARNING)
    summary = run_experiment(spec, out, data=data, preset=preset, seeds=seeds, jobs=jobs, overrides=parse_set(set_ or []),
                             threads=threads, progress=not quiet, trust_pickle=trust_pickle, ray=ray)
    if not quiet:
        print((out / "results.md").read_text(encoding="utf-8"))
    console.print(f"{summary['runs']} runs ({summary['trained']} trained now, {summary['finished_before']} finished "
                  f"before); wrote {out}/results.csv and {out}/results.md", markup=False, highlight=False)
