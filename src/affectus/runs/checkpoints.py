"""Self-describing run directories and resumable state.

A finished run directory holds everything inference needs, nothing else required:
  model.safetensors   the selected weights
  run.json            format tag, model name + config, training config, feature dims, label
                      mapping, metric family, data source, stage summaries, metrics, `fitted_on`
                      (each part that learned something -> the split it saw; `split_fits` below), and
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


# ------------------------------------------------------------------------------ what was fitted where

# Parts that choose among candidates by their score on a split (early stopping's epoch, a regularisation
# strength picked from a grid): the field's norm on the selection split. A score on that split names them
# but is not marked in-sample. A recipe may add its own (run.json `selection_parts`).
SELECTION_PARTS = ("early_stopping",)
IN_SAMPLE_MARK = "†"


def fitted_on(info: dict[str, Any]) -> dict[str, str] | None:
    """run.json's `fitted_on` (part -> the split it learned from). A run written before the record existed
    gets what its own record shows: weights on the train split, early stopping on the selection split, and
    a recorded consensus fit (`stages.consensus.fit`: its temperatures and router) on the split it names.
    None when the run records too little to tell."""
    record = info.get("fitted_on")
    if isinstance(record, dict):
        return {str(k): str(v) for k, v in record.items() if isinstance(v, str)}
    plan = info.get("plan") if isinstance(info.get("plan"), dict) else {}
    select = plan.get("select") or info.get("select_split")
    if not isinstance(select, str):
        return None
    train = plan.get("train") if isinstance(plan.get("train"), str) else "train"
    out = {"weights": train, "early_stopping": select}
    consensus = (info.get("stages") or {}).get("consensus")
    if isinstance(consensus, dict) and consensus.get("fit") in ("select", "oof", "train"):
        where = select if consensus["fit"] == "select" else train
        temps = consensus.get("temperatures")
        if isinstance(temps, dict) and any(t != 1.0 for t in temps.values()):  # calibrate off: all T = 1
            out["temperatures"] = where
        if "mean_weights" in consensus:  # a router was fitted (use_router)
            out["consensus"] = where
    return out


def same_data(info: dict[str, Any], data: dict[str, Any] | None) -> bool:
    """Whether `data` ({source, sha256}, as `data.load.data_identity` gives) is the data the run trained on;
    None: the run's own. Files compare by content (a copy elsewhere is the same data), `synth:` sources and
    in-memory data by their name."""
    if data is None:
        return True
    own = info.get("data") if isinstance(info.get("data"), dict) else {}
    if own.get("sha256") and data.get("sha256"):
        return own["sha256"] == data["sha256"]
    return bool(own.get("source")) and own.get("source") == data.get("source")


def split_fits(info: dict[str, Any], split: str, data: dict[str, Any] | None = None) -> dict[str, list[str] | None]:
    """What saw split `split` of `data` (None: the run's own data) while the run trained:
    {"in_sample": parts fitted on it (a score there is in-sample; None: the run does not record its fits),
     "selection": the selection parts that chose on it (named beside a score, not marked)}."""
    record = fitted_on(info)
    if record is None:
        return {"in_sample": None, "selection": []}
    if not same_data(info, data):
        return {"in_sample": [], "selection": []}
    chose = info.get("selection_parts")
    chose = set(chose) if isinstance(chose, list) else set(SELECTION_PARTS)
    seen = [part for part, where in record.items() if where == split]
    return {"in_sample": [p for p in seen if p not in chose], "selection": [p for p in seen if p in chose]}


def in_sample_parts(info: dict[str, Any], split: str, data: dict[str, Any] | None = None) -> list[str] | None:
    """The parts fitted on split `split` of `data` (the run's own data when None), selection parts such as
    early stopping left out: a score there is in-sample for them. [] when nothing was; None when the run
    does not record what it fitted where (unknown)."""
    return split_fits(info, split, data)["in_sample"]


def fits_legend(fits: dict[str, list[str] | None], split: str) -> list[str]:
    """The lines that go beside a score on `split`: the in-sample legend (with its mark) and the selection
    parts named; none when nothing saw the split."""
    lines = []
    parts = fits["in_sample"]
    if parts is None:
        lines.append(f"{IN_SAMPLE_MARK} in-sample unknown: run.json does not record what was fitted on which split")
    elif parts:
        lines.append(f"{IN_SAMPLE_MARK} in-sample: {', '.join(parts)} fitted on split '{split}'; these scores are "
                     f"not held out")
    if fits["selection"]:
        lines.append(f"selection on split '{split}': {', '.join(fits['selection'])} (the field's norm; not marked)")
    return lines


def in_sample_json(fits: dict[str, list[str] | None]) -> dict[str, Any]:
    """The keys a JSON score carries: {"in_sample": {"parts": [...]}} when marked ({"parts": null} when
    unknown), {"selection": {"parts": [...]}} when a selection part chose on the split; {} otherwise."""
    out: dict[str, Any] = {}
    if fits["in_sample"] is None or fits["in_sample"]:
        out["in_sample"] = {"parts": fits["in_sample"]}
    if fits["selection"]:
        out["selection"] = {"parts": fits["selection"]}
    return out
