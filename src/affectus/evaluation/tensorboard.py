"""TensorBoard scalar logs written after the fact from a run's per-epoch history.

`write_tensorboard(run_dir)` reads `run.json` (stages -> history, one dict per epoch) and writes one
event file into `run_dir/tensorboard/`: every numeric key of every epoch becomes a scalar tagged
`<stage>/<key>` (e.g. `stage1/val_ce_text`, `stage2/train_loss`, `train/val_loss` for one-stage
models) at step = epoch. Because it works from `run.json`, the training loop stays untouched and old
runs can be logged too. View with `tensorboard --logdir RUN_DIR/tensorboard` (or an experiment's
`runs/` folder to compare runs).

Why no `tensorboard` / `tensorboardX` import: an event file is a sequence of TFRecords holding tiny
protobuf `Event` messages, and the scalar subset of that format is ~40 lines to write by hand. This
keeps the writer dependency-free (tensorboard pulls in grpcio, protobuf, werkzeug); the tests check
the output with TensorBoard's own reader whenever it is installed.
Format: tensorflow/core/util/event.proto, tensorflow/core/framework/summary.proto, and the TFRecord
framing (length, masked CRC-32C of the length, payload, masked CRC-32C of the payload).
"""

from __future__ import annotations

import math
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from affectus.utils.io import write_bytes_atomic

_FILE_SUFFIX = ".affectus"  # marks the event files we own, so a rewrite replaces them and nothing else

# ------------------------------------------------------------------ CRC-32C (Castagnoli), as TFRecord uses


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    # TFRecord masks the CRC so that CRCs of data containing CRCs stay well distributed
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", _masked_crc(length)) + payload + struct.pack("<I", _masked_crc(payload))


# ------------------------------------------------------------------ protobuf wire format, the few fields we need


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 fields encode negatives as 10-byte two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int = 0, file_version: str | None = None,
           scalars: dict[str, float] | None = None) -> bytes:
    """An `Event`: wall_time = 1 (double), step = 2 (int64), file_version = 3, summary = 5."""
    msg = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        msg += _len_field(3, file_version.encode())
    if scalars:
        # Summary.value = 1 (repeated Value); Value.tag = 1, Value.simple_value = 2 (float)
        values = b"".join(
            _len_field(1, _len_field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value))
            for tag, value in scalars.items()
        )
        msg += _len_field(5, values)
    return msg


def event_file_bytes(points: dict[int, dict[str, float]], start_time: float) -> bytes:
    """A whole event file: the version header, then one event per step holding that step's scalars."""
    out = [_record(_event(start_time, file_version="brain.Event:2"))]
    for step in sorted(points):
        out.append(_record(_event(start_time + step, step=step, scalars=points[step])))
    return b"".join(out)


# ------------------------------------------------------------------ from run.json to scalars


def history_scalars(info: dict[str, Any]) -> dict[int, dict[str, float]]:
    """step (epoch) -> {"<stage>/<key>": value} for every finite numeric key of every stage's history."""
    points: dict[int, dict[str, float]] = {}
    for stage, summary in (info.get("stages") or {}).items():
        history = summary.get("history") if isinstance(summary, dict) else None
        for i, epoch in enumerate(history or []):
            step = int(epoch.get("epoch", i + 1))
            for key, value in epoch.items():
                # bools are ints in Python; keep them (e.g. 'improved') as 0 / 1 scalars
                if key == "epoch" or not isinstance(value, (int, float)) or not math.isfinite(value):
                    continue
                points.setdefault(step, {})[f"{stage}/{key}"] = float(value)
    return points


def write_tensorboard(run_dir: str | Path) -> Path | None:
    """Write `run_dir/tensorboard/events.out.tfevents.*` from run.json; returns the file (None: no history).

    Re-running replaces the event file written before (TensorBoard would otherwise show each point twice).
    """
    import json

    run_dir = Path(run_dir)
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    points = history_scalars(info)
    if not points:
        return None
    # wall times: an epoch per second from when run.json was written, so the file does not change
    # with the hour the report is made, and TensorBoard's "relative" axis reads as epochs
    start = (run_dir / "run.json").stat().st_mtime
    log_dir = run_dir / "tensorboard"
    name = f"events.out.tfevents.{int(start)}.{socket.gethostname() or 'host'}{_FILE_SUFFIX}"
    path = log_dir / name
    write_bytes_atomic(path, event_file_bytes(points, start))
    for old in log_dir.glob(f"events.out.tfevents.*{_FILE_SUFFIX}"):
        if old != path:
            old.unlink()
    return path


# ------------------------------------------------------------------ reading back (tests, sanity checks)


def read_scalars(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from an event file, checking every record's CRCs (raises ValueError)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for payload in _records(Path(path).read_bytes()):
        fields = dict(_fields(payload))
        step = fields.get(2, 0)
        for tag, value in _summary_values(fields.get(5, b"")):
            out.setdefault(tag, []).append((int(step), value))
    return out


def _records(data: bytes) -> Iterator[bytes]:
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        (len_crc,) = struct.unpack_from("<I", data, pos + 8)
        payload = data[pos + 12: pos + 12 + length]
        (data_crc,) = struct.unpack_from("<I", data, pos + 12 + length)
        if len_crc != _masked_crc(data[pos: pos + 8]) or data_crc != _masked_crc(payload):
            raise ValueError(f"corrupt record at byte {pos}")
        yield payload
        pos += 16 + length


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, pos


def _fields(buf: bytes) -> Iterator[tuple[int, Any]]:
    """(field number, value) pairs of a message: varints as int, fixed64 as double, fixed32 as float."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            (value,), pos = struct.unpack_from("<d", buf, pos), pos + 8
        elif wire == 5:
            (value,), pos = struct.unpack_from("<f", buf, pos), pos + 4
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            value, pos = buf[pos: pos + n], pos + n
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, value


def _summary_values(summary: bytes) -> Iterator[tuple[str, float]]:
    for number, value in _fields(summary):
        if number == 1:
            fields = dict(_fields(value))
            yield fields[1].decode(), float(fields.get(2, 0.0))


__all__ = ["crc32c", "event_file_bytes", "history_scalars", "read_scalars", "write_tensorboard"]
