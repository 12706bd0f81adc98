"""`affectus report DIR`: an HTML report (tables, figures) and TensorBoard logs for a run or an experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from affectus.cli import TRUST_PICKLE_HELP, app


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="a run directory, or an experiment directory holding runs")],
    data: Annotated[str | None, typer.Option(
        "--data", help="the data file (or synth:PRESET) to predict with, for the router-weight section")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="report folder (default: DIR/report)")] = None,
    no_tensorboard: Annotated[bool, typer.Option(
        "--no-tensorboard", help="do not write RUN/tensorboard/ event files for runs that have none")] = False,
    samples: Annotated[int, typer.Option("--samples", min=1, help="samples listed in the flip and router sections")] = 30,
    threads: Annotated[int, typer.Option("--threads", min=1, help="CPU threads for torch (router section)")] = 1,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help=TRUST_PICKLE_HELP)] = False,
) -> None:
    """Write DIR/report/report.html: results (mean ± std over seeds), curves over the grid (temperature,
    retention), training curves, PLGM flips, router weights, each where it applies to the runs' models;
    one self-contained page, PNGs beside it."""
    from affectus.report import build_report

    if data is not None:
        # prediction is small; more threads only contend with whatever else runs on the machine
        import torch

        torch.set_num_threads(threads)
    path = build_report(directory, data=data, out=out, trust_pickle=trust_pickle, tensorboard=not no_tensorboard, max_samples=samples)
    typer.echo(f"wrote {path}")
