"""Self-describing run directories and resumable state.

A finished run directory holds everything inference needs, nothing else required:
  model.safetensors   the selected weights
  run.json            format tag, model name + config, training config, feature dims, label
                      mapping, metric family, data source, stage summaries, metrics
  bank.safetensors    the PLGM pseudo-label bank (CMC), initial and final soft labels
  metrics.json        the evaluation metrics
  pseudo_labels.csv   per training sample: id, raw text, initial and final labels per modality
While training, `state.pt` holds the per-epoch resume state; it is removed once the run is done.
Every file is written atomically (temp file + rename).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from affectus.errors import AffectusError
from affectus.utils.io import write_bytes_atomic, write_json_atomic

RUN_FORMAT = "affectus-run/1"
LABEL_MAPPING = {"0": "negative (score < 0)", "1": "neutral (score = 0)", "2": "positive (score > 0)"}


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_bytes_atomic(path, st_save(flat))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise AffectusError(f"{path}: file not found") from None
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise AffectusError(f"{path}: not a readable safetensors file ({type(err).__name__})") from None


def save_state(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes_atomic(path, buf.getvalue())


def load_state(path: Path) -> dict[str, Any]:
    try:
        # our own file, but weights_only keeps it to tensors and plain containers
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AffectusError(f"{path}: no resume state (nothing to resume)") from None
    except Exception as err:
        raise AffectusError(f"{path}: resume state is unreadable ({type(err).__name__}); delete it to restart") from None


def read_run(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    meta = run_dir / "run.json"
    if not meta.is_file():
        raise AffectusError(f"{run_dir}: not a finished affectus run (run.json missing)")
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise AffectusError(f"{meta}: unreadable ({type(err).__name__})") from None
    if info.get("format") != RUN_FORMAT:
        raise AffectusError(f"{meta}: format {info.get('format')!r}, expected {RUN_FORMAT!r}")
    if not (run_dir / "model.safetensors").is_file():
        raise AffectusError(f"{run_dir}: model.safetensors missing")
    return info


def write_run(run_dir: Path, info: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
    # weights first: run.json marks the run as complete, so it comes last
    save_tensors(run_dir / "model.safetensors", weights)
    write_json_atomic(run_dir / "run.json", {"format": RUN_FORMAT, **info})
