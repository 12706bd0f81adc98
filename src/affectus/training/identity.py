"""A run's identity: what must stay the same for `--resume` to continue a run instead of mixing two.

A run is its model, its resolved config (sections model / train / recipe, the variant and preset) and
its data (the file's sha256, or the `synth:NAME` source). `OUT/identity.json` records them when a run
starts; `--resume` compares and refuses any difference in one line naming it. Threads and device are
left out: they change how fast and where a run computes, not what it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from affectus.errors import AffectusError
from affectus.training.config import ResolvedConfig
from affectus.utils.io import write_json_atomic

IDENTITY_FILE = "identity.json"
IDENTITY_FORMAT = "affectus-identity/1"
IGNORED = (("train", "threads"), ("train", "device"))
_SHOWN = 4  # differences named in the error line; the rest are counted


def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict as JSON reads it back (tuples -> lists), without threads and device."""
    d = json.loads(json.dumps(config))
    for section, key in IGNORED:
        (d.get(section) or {}).pop(key, None)
    return d


def run_identity(cfg: ResolvedConfig, data: dict[str, Any]) -> dict[str, Any]:
    """The identity of a run about to start; `data` is `data.load.data_identity(source)`."""
    return {"format": IDENTITY_FORMAT, "model_name": cfg.model_name, "config": comparable_config(cfg.to_dict()),
            "data": data}


def write_identity(out: Path, identity: dict[str, Any]) -> None:
    write_json_atomic(out / IDENTITY_FILE, identity)


def _read(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:  # Recursion: nested too deeply
        raise AffectusError(f"{path}: unreadable ({type(err).__name__}); cannot check that --resume continues "
                            f"the same run") from None
    if not isinstance(value, dict):
        raise AffectusError(f"{path}: expected a JSON object")
    return value


def recorded_identity(out: Path) -> dict[str, Any] | None:
    """What `out` was started with: identity.json, else (runs written before it) run.json or config.json."""
    if (out / IDENTITY_FILE).is_file():
        return _read(out / IDENTITY_FILE)
    for name in ("run.json", "config.json"):
        if (out / name).is_file():
            d = _read(out / name)
            config = d.get("config", {}) if name == "run.json" else d
            return {"model_name": d.get("model_name", config.get("model_name")),
                    "config": comparable_config(config), "data": d.get("data")}
    return None


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


_MISSING = object()  # a key one of the two configs lacks


def _show(value: Any) -> str:
    return "(unset)" if value is _MISSING else json.dumps(value)


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two identities, one short phrase each ('train.lr 0.001 -> 0.002')."""
    found: list[str] = []
    if old.get("model_name") != new.get("model_name"):
        found.append(f"model {old.get('model_name')} -> {new.get('model_name')}")
    a, b = _flat(old.get("config") or {}), _flat(new.get("config") or {})
    for key in [*a, *(k for k in b if k not in a)]:
        if key == "model_name" or a.get(key, _MISSING) == b.get(key, _MISSING):
            continue
        found.append(f"{key} {_show(a.get(key, _MISSING))} -> {_show(b.get(key, _MISSING))}")
    old_data, new_data = old.get("data"), new.get("data")
    if isinstance(old_data, dict) and isinstance(new_data, dict):  # runs written before checksums: not compared
        if old_data.get("sha256") or new_data.get("sha256"):
            if old_data.get("sha256") != new_data.get("sha256"):
                found.append(f"data {old_data.get('source')} (sha256 {str(old_data.get('sha256'))[:12]}) -> "
                             f"{new_data.get('source')} (sha256 {str(new_data.get('sha256'))[:12]})")
        elif old_data.get("source") != new_data.get("source"):
            found.append(f"data {old_data.get('source')} -> {new_data.get('source')}")
    return found


def check_same_run(out: Path, identity: dict[str, Any]) -> None:
    """Refuse (AffectusError, one line) to resume `out` with another model, config or data."""
    old = recorded_identity(out)
    if old is None:
        return
    found = differences(old, identity)
    if found:
        more = f"; and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
        raise AffectusError(f"{out}: --resume with other settings than the run was started with: "
                            f"{'; '.join(found[:_SHOWN])}{more}. Resume with the same model, config and data, "
                            f"or choose another --out")
