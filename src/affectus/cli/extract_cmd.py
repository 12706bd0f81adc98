"""`affectus extract-dataset DIR --out FILE`: a folder of clips (MMSA-FET layout) -> an MMSA feature file.

The library side is `features/dataset.py`; this module only parses options, draws the
progress bar (stderr) and prints one summary line (stdout). See docs/media.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from affectus.cli import app
from affectus.errors import AffectusError
from affectus.features.audio import audio_help


class _Bar:
    """A rich progress bar on stderr, shown only on a terminal and only once clips are being counted
    (so a bad label.csv still ends in exactly one `error:` line)."""

    def __init__(self) -> None:
        from rich.console import Console

        self._console = Console(stderr=True)
        self._progress = None
        self._task = None

    def update(self, done: int, total: int) -> None:
        if not self._console.is_terminal:
            return
        if self._progress is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                "extracting",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("clips", total=total)
        self._progress.update(self._task, completed=done, total=total)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


@app.command("extract-dataset")
def extract_dataset(
    root: Annotated[
        Path,
        typer.Argument(help="folder with label.csv and Raw/<video_id>/<clip_id>.mp4", show_default=False),
    ],
    out: Annotated[Path, typer.Option("--out", help="file to write: .npz (pickle-free) or an MMSA pickle")],
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", help="extraction processes (default: all cores; 1: this process); with --ray local: its CPUs"
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="<address>",
            help="run each clip as a Ray task: 'local' starts Ray here, HOST:PORT / ray://HOST:10001 / auto joins "
            "a cluster (needs the ray extra; clips and affectus on every node)",
            show_default=False,
        ),
    ] = None,
    on_fail: Annotated[
        str,
        typer.Option(
            "--on-fail", help="a failed clip is left out (skip) or kept with zeros and length 0 (zero)"
        ),
    ] = "skip",
    audio: Annotated[
        str, typer.Option("--audio", help=audio_help())
    ] = "opensmile",
    fps: Annotated[
        float, typer.Option("--fps", help="video frames per second given to the face extractor")
    ] = 10.0,
    text_encoder: Annotated[
        str, typer.Option("--text-encoder", help="minilm (packaged, offline), a local BERT folder, or hashed "
                                                 "(a placeholder needing no text extra)")
    ] = "minilm",
    asr: Annotated[
        str, typer.Option("--asr", help="speech recognition for clips with an empty transcript: none, or moonshine "
                                        "(packaged English model; the asr extra)")
    ] = "none",
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="extractor configs: an earlier <out>.extract.json (or its 'extractors'); overrides --audio/--fps",
        ),
    ] = None,
    work_dir: Annotated[
        Path | None,
        typer.Option("--work-dir", help="per-clip results, kept for resuming (default: <out>.work)"),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="failure report JSON (default: <out>.failures.json)")
    ] = None,
    labels: Annotated[
        str,
        typer.Option("--labels", help="the labels: label (sentiment scores in [-3, 3]), annotation (emotion class "
                                      "names: a categorical dataset, classes in sorted order), or auto (annotation "
                                      "when it holds names and label is empty; docs/media.md)"),
    ] = "auto",
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="replace --out, --report and <out>.extract.json if they exist (never the "
                                         "dataset's own label.csv or clips)"),
    ] = False,
) -> None:
    """Extract audio, vision and text (sentence embeddings of the transcripts) of every clip into one MMSA file.

    Clips run in local processes (--workers), or as Ray tasks (--ray). Each finished clip is saved in the
    work folder at once: a killed run, or one that lost a worker, resumes when run again (docs/media.md).
    """
    import dataclasses
    import json

    from affectus.features.asr import ASR_KINDS, MoonshineConfig
    from affectus.features.dataset import AUDIO_KINDS, MediaConfig, build_dataset
    from affectus.utils.executors import Executor, LocalExecutor, RayExecutor

    if config is not None:
        try:
            given = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as err:  # Recursion: nested too deeply
            raise AffectusError(f"file {config}: not a readable JSON config ({err})") from None
        if isinstance(given, dict) and "extractors" in given:  # a whole <out>.extract.json
            given = given["extractors"]
        media = MediaConfig.from_dict(given, source=f"file {config}")
    else:
        if audio not in AUDIO_KINDS:
            raise AffectusError(f"--audio must be one of {', '.join(AUDIO_KINDS)}, not {audio!r}")
        if asr not in ("none", *ASR_KINDS):
            raise AffectusError(f"--asr must be none or one of {', '.join(ASR_KINDS)}, not {asr!r}")
        try:
            base = MediaConfig()
            media = MediaConfig(
                decode=dataclasses.replace(base.decode, fps=fps),
                audio=AUDIO_KINDS[audio][0](),
                vision=base.vision,
                text_encoder=text_encoder,
                asr=MoonshineConfig() if asr == "moonshine" else None,
            )
        except ValueError as err:
            raise AffectusError(f"extract-dataset: {err}") from None
    from affectus.features.dataset import LABEL_SOURCES

    if labels not in LABEL_SOURCES:
        raise AffectusError(f"--labels must be one of {', '.join(LABEL_SOURCES)}, not {labels!r}")
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    if n_workers < 1:
        raise AffectusError(f"--workers must be >= 1 (got {n_workers})")
    executor: Executor
    if ray is None:
        executor = LocalExecutor(n_workers)
    elif ray == "local":
        executor = RayExecutor(ray, num_cpus=n_workers)
    elif workers is not None:
        raise AffectusError("--workers sets local processes or the CPUs of --ray local; a cluster's own CPUs set its pace")
    else:
        executor = RayExecutor(ray)

    bar = _Bar()
    try:
        with executor:
            summary = build_dataset(
                root,
                out,
                media,
                on_fail=on_fail,
                work_dir=work_dir,
                report=report,
                progress=bar.update,
                executor=executor,
                overwrite=overwrite,
                labels=labels,
            )
    finally:
        bar.close()
    written = "/".join(str(summary.written.get(s, 0)) for s in ("train", "valid", "test"))
    failed = len({f["id"] for f in summary.failures})
    print(
        f"wrote {out}: train/valid/test {written} clips of {summary.clips} "
        f"({summary.computed} extracted, {summary.cached} resumed from {summary.work}), labels {summary.labels}, "
        f"{failed} failed -> {summary.report}; extractor configs in {summary.meta}"
    )
