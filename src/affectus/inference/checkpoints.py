"""Self-describing run directories and resumable state.

A finished run directory holds everything inference needs, nothing else required:
  model.safetensors   the selected weights
  run.json            format tag, model name + config, training config, feature dims, label
                      mapping, metric family, data source, stage summaries, metrics, and
                      `weights_sha256`, the sha256 of model.safetensors, checked on every load
  bank.safetensors    the PLGM pseudo-label bank (CMC), initial and final soft labels
  metrics.json        the evaluation metrics
  pseudo_labels.csv   per training sample: id, raw text, initial and final labels per modality
While training, `state.pt` holds the per-epoch resume state; it is removed once the run is done.
Every file is written atomically (temp file + rename).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from affectus.errors import AffectusError
from affectus.utils.io import read_json_file, write_bytes_atomic, write_json_atomic

RUN_FORMAT = "affectus-run/1"
# what inference needs from run.json, with its JSON type (read_run refuses a run.json without them)
RUN_FIELDS: dict[str, type] = {"model_name": str, "model_config": dict, "dims": dict}


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Write the tensors atomically; returns the file's sha256 (hex)."""
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    data = st_save(flat)
    write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def load_tensors(path: Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file; with `sha256`, refuse a file whose bytes are not the ones written."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise AffectusError(f"{path}: file not found") from None
    except OSError as err:
        raise AffectusError(f"{path}: cannot read ({err.strerror or type(err).__name__})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        # a flipped bit in a weight still parses: only the checksum tells a damaged file apart
        raise AffectusError(f"{path}: sha256 differs from the one recorded in run.json (file corrupted or "
                            "replaced); retrain or restore it")
    try:
        return st_load(data)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
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
    except Exception as err:  # noqa: BLE001 - torch.load raises many types for a damaged file
        raise AffectusError(f"{path}: resume state is unreadable ({type(err).__name__}); delete it to restart") from None


def read_run(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    meta = run_dir / "run.json"
    if not meta.is_file():
        raise AffectusError(f"{run_dir}: not a finished affectus run (run.json missing)")
    info = read_json_file(meta, "run file")
    if not isinstance(info, dict):
        raise AffectusError(f"{meta}: expected a JSON object, got {type(info).__name__}")
    if info.get("format") != RUN_FORMAT:
        raise AffectusError(f"{meta}: format {info.get('format')!r}, expected {RUN_FORMAT!r}")
    for key, kind in RUN_FIELDS.items():
        if not isinstance(info.get(key), kind):
            raise AffectusError(f"{meta}: field {key!r} missing or not a {kind.__name__}")
    if not (run_dir / "model.safetensors").is_file():
        raise AffectusError(f"{run_dir}: model.safetensors missing")
    return info


def load_weights(run_dir: str | Path, info: dict[str, Any]) -> dict[str, torch.Tensor]:
    """model.safetensors of a run read by `read_run`, checked against run.json's `weights_sha256`.

    Runs written before the checksum existed have none and load unchecked."""
    return load_tensors(Path(run_dir) / "model.safetensors", info.get("weights_sha256"))


def write_run(run_dir: Path, info: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
    # weights first: run.json marks the run as complete, so it comes last
    digest = save_tensors(run_dir / "model.safetensors", weights)
    write_json_atomic(run_dir / "run.json", {"format": RUN_FORMAT, **info, "weights_sha256": digest})
