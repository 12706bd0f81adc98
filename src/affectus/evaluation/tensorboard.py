"""TensorBoard scalars per epoch, through `torch.utils.tensorboard.SummaryWriter`.

During training the loop hands every epoch's record (the dict it appends to the stage's history:
epoch, seconds, train_*, val_*, improved) to an `EpochLogger`:

    logger = EpochLogger(run_dir)
    logger.log_epoch("stage1", record)   # after each epoch
    logger.close()                       # when the run ends (or `with contextlib.closing(EpochLogger(...))`)

Every finite number in the record but `epoch` becomes a scalar tagged `<stage>/<key>`
(`stage1/val_ce_text`, `stage2/train_loss`, `train/val_loss`; `improved` as 0 / 1) at step =
epoch, so validation metrics sit beside the losses. Each stage writes into its own folder,
`run_dir/tensorboard/<stage>/`, because steps restart at 1 in every stage: a resumed run opens
its writer with `purge_step` = its first epoch, and TensorBoard then hides what an interrupted
process had logged from that epoch on, in that stage only, instead of drawing it twice.

`write_tensorboard(run_dir)` replays run.json's histories through the same logger, for runs trained
before the loop logged live; `affectus report` calls it, and it leaves runs that have events alone.
View with `tensorboard --logdir RUN_DIR/tensorboard` (or an experiment folder to compare runs).
"""

from __future__ import annotations

import json
import math
from contextlib import closing
from pathlib import Path
from typing import Any

LOG_FOLDER = "tensorboard"


def scalars(stage: str, record: dict[str, Any]) -> dict[str, float]:
    """{"<stage>/<key>": value} for every finite number of one epoch's record, `epoch` (the step) aside."""
    # bools are ints in Python: 'improved' is kept as a 0 / 1 scalar
    return {f"{stage}/{key}": float(value) for key, value in record.items()
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value)}


class EpochLogger:
    """Writes per-epoch scalars of every stage of one run into `run_dir/tensorboard/<stage>/`."""

    def __init__(self, run_dir: str | Path) -> None:
        self.log_dir = Path(run_dir) / LOG_FOLDER
        self._writers: dict[str, Any] = {}  # stage -> SummaryWriter, opened at the stage's first epoch

    def log_epoch(self, stage: str, record: dict[str, Any], walltime: float | None = None) -> None:
        """Log one epoch's record (its 'epoch' is the step) and flush, so TensorBoard sees it at once."""
        step = int(record["epoch"])
        writer = self._writers.get(stage)
        if writer is None:
            # imported here: tensorboard costs about a second to import, and only training logs
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.log_dir / stage), purge_step=step)
            self._writers[stage] = writer
        for tag, value in scalars(stage, record).items():
            writer.add_scalar(tag, value, global_step=step, walltime=walltime)
        writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def has_events(run_dir: str | Path) -> bool:
    return any((Path(run_dir) / LOG_FOLDER).rglob("events.out.tfevents.*"))


def write_tensorboard(run_dir: str | Path) -> Path | None:
    """Replay run.json's per-epoch histories into `run_dir/tensorboard/`; returns that folder.

    None when run.json has no history. A run that already has event files (logged during training,
    or replayed before) is left as it is, so calling this twice never draws a point twice.
    """
    run_dir = Path(run_dir)
    log_dir = run_dir / LOG_FOLDER
    if has_events(run_dir):
        return log_dir
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    histories = {stage: s["history"] for stage, s in (info.get("stages") or {}).items()
                 if isinstance(s, dict) and s.get("history")}
    if not histories:
        return None
    # wall times from the epochs' own durations, ending when run.json was written: TensorBoard's
    # "relative" axis then reads as training time, and the file does not depend on today's clock
    seconds = [float(e.get("seconds", 0.0)) for h in histories.values() for e in h]
    clock = (run_dir / "run.json").stat().st_mtime - sum(seconds)
    with closing(EpochLogger(run_dir)) as logger:
        for stage, history in histories.items():
            for i, record in enumerate(history):
                clock += float(record.get("seconds", 0.0))
                logger.log_epoch(stage, {"epoch": i + 1, **record}, walltime=clock)
    return log_dir


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every stage folder under `log_dir`, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for folder in sorted(p for p in Path(log_dir).iterdir() if p.is_dir()):
        acc = EventAccumulator(str(folder))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return out


__all__ = ["EpochLogger", "read_scalars", "scalars", "write_tensorboard"]
