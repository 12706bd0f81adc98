"""A run's identity, and the one definition of "the same run".

A run is its model, its resolved config (sections model / train / recipe, the variant and preset) and
its data (the file's sha256, or the `synth:NAME` source). `OUT/identity.json` records them when a run
starts. Two readers ask whether a folder holds the same run: `--resume` (the trainer refuses to continue
another run) and an experiment directory's plan (the runner refuses to mix a run folder made from another
config); both ask `differences`, which names each difference in one short phrase. Threads and device are
left out: they change how fast and where a run computes, not what it is.

A config recorded before a key was added lacks that key; the config layer fills such keys in
(`training.config.upgrade_config`) before the comparison, so an older run still matches. This module sits
below training and takes that step as a function (`upgrade`), never importing it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from collections.abc import Callable

from affectus.errors import AffectusError
from affectus.utils.io import write_json_atomic

Upgrade = Callable[[dict[str, Any]], dict[str, Any]]  # a recorded config dict -> today's form of it

IDENTITY_FILE = "identity.json"
IDENTITY_FORMAT = "affectus-identity/1"
IGNORED = (("train", "threads"), ("train", "device"))
_SHOWN = 4  # differences named in the error line; the rest are counted


def comparable_config(config: dict[str, Any], upgrade: Upgrade | None = None) -> dict[str, Any]:
    """A config dict as JSON reads it back (tuples -> lists), upgraded to today's keys, without threads
    and device."""
    d = json.loads(json.dumps(config))
    if upgrade is not None:
        d = json.loads(json.dumps(upgrade(d)))
    for section, key in IGNORED:
        (d.get(section) or {}).pop(key, None)
    return d


def run_identity(model_name: str, config: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """The identity of a run about to start from its resolved config (`ResolvedConfig.to_dict()`); `data`
    is `data.load.data_identity(source)`."""
    return {"format": IDENTITY_FORMAT, "model_name": model_name, "config": comparable_config(config), "data": data}


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


def recorded_identity(out: Path, upgrade: Upgrade | None = None) -> dict[str, Any] | None:
    """What `out` was started with: identity.json, else (runs written before it) run.json or config.json."""
    if (out / IDENTITY_FILE).is_file():
        d = _read(out / IDENTITY_FILE)
        if upgrade is not None and isinstance(d.get("config"), dict):
            d = {**d, "config": comparable_config(d["config"], upgrade)}
        return d
    for name in ("run.json", "config.json"):
        if (out / name).is_file():
            d = _read(out / name)
            config = d.get("config", {}) if name == "run.json" else d
            return {"model_name": d.get("model_name", config.get("model_name")),
                    "config": comparable_config(config, upgrade), "data": d.get("data")}
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


def config_differences(old: dict[str, Any], new: dict[str, Any], upgrade: Upgrade | None = None) -> list[str]:
    """`differences` between two resolved configs alone (an experiment's run folder against its spec)."""
    return differences({"model_name": old.get("model_name"), "config": comparable_config(old, upgrade)},
                       {"model_name": new.get("model_name"), "config": comparable_config(new, upgrade)})


def shown(found: list[str]) -> str:
    """The first few differences for an error line, and how many more there are."""
    more = f"; and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
    return f"{'; '.join(found[:_SHOWN])}{more}"


def check_same_run(out: Path, identity: dict[str, Any], upgrade: Upgrade | None = None) -> None:
    """Refuse (AffectusError, one line) to resume `out` with another model, config or data."""
    old = recorded_identity(out, upgrade)
    if old is None:
        return
    found = differences(old, identity)
    if found:
        raise AffectusError(f"{out}: --resume with other settings than the run was started with: "
                            f"{shown(found)}. Resume with the same model, config and data, "
                            f"or choose another --out")
