"""The Open Inference Protocol (KServe v2, also Triton's HTTP API) for one served run.

    GET  /v2                          server metadata (name, version, extensions)
    GET  /v2/health/live, /ready      200 while the server is up / the run is loaded
    GET  /v2/models/{name}            inputs and outputs: names, datatypes, shapes (-1: any size)
    GET  /v2/models/{name}/ready
    POST /v2/models/{name}/infer      named tensors in, named tensors out (JSON, or JSON followed by raw
                                      tensor bytes: the binary tensor extension that tritonclient uses)

Inputs (B samples, L steps of any length up to --max-seq-len, D the run's width per modality):
`text` / `audio` / `vision` FP32 [B, L, D]; optional `text_lengths` / `audio_lengths` / `vision_lengths`
INT64 [B] (default L) and `available` BOOL [B, 3] (text, audio, vision present). Outputs: `probabilities`
FP32 [B, C], `verdict` BYTES [B] and, where the model has them, `acc2` BYTES [B], `score` FP32 [B],
`modality_probabilities` FP32 [B, 3, C], `modality_verdicts` BYTES [B, 3] ("" for an absent modality) and
`modality_weights` FP32 [B, 3]. The model's name is the run directory's name; its version is "1".

A malformed request (unknown or repeated tensor names, wrong datatypes or shapes, data that does not fill
its shape, B over --max-batch) is a 400 with the protocol's {"error": "..."}.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from affectus.data.types import MODALITIES
from affectus.errors import AffectusError

VERSION = "1"
HEADER = "inference-header-content-length"
_NUMPY = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8"), "BOOL": np.dtype("?")}


class V2Error(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Spec:
    """What the run takes and gives, as tensors."""

    name: str
    dims: dict[str, int]
    classes: tuple[str, ...]
    outputs: dict[str, tuple[str, list[int]]]  # name -> (datatype, shape)
    max_batch: int

    def inputs(self) -> dict[str, tuple[str, list[int]]]:
        out: dict[str, tuple[str, list[int]]] = {m: ("FP32", [-1, -1, self.dims[m]]) for m in MODALITIES}
        out.update({f"{m}_lengths": ("INT64", [-1]) for m in MODALITIES})
        out["available"] = ("BOOL", [-1, 3])
        return out

    def metadata(self) -> dict[str, Any]:
        def tensors(specs: dict[str, tuple[str, list[int]]]) -> list[dict[str, Any]]:
            return [{"name": n, "datatype": d, "shape": s} for n, (d, s) in specs.items()]

        return {"name": self.name, "versions": [VERSION], "platform": "pytorch",
                "inputs": tensors(self.inputs()), "outputs": tensors(self.outputs),
                "parameters": {"max_batch_size": self.max_batch, "classes": list(self.classes),
                               "required_inputs": list(MODALITIES)}}


def output_spec(pred: Any, scheme: Any) -> dict[str, tuple[str, list[int]]]:
    """The outputs a Prediction (of one probe sample; None: no probe) shows the model gives."""
    c = len(scheme.class_names)
    out: dict[str, tuple[str, list[int]]] = {"probabilities": ("FP32", [-1, c]), "verdict": ("BYTES", [-1])}
    if pred is None:
        return out
    if pred.binary is not None:
        out["acc2"] = ("BYTES", [-1])
    if pred.scores is not None:
        out["score"] = ("FP32", [-1])
    if pred.modality_probabilities is not None:
        out["modality_probabilities"] = ("FP32", [-1, 3, c])
        out["modality_verdicts"] = ("BYTES", [-1, 3])
    if pred.router_weights is not None:
        out["modality_weights"] = ("FP32", [-1, 3])
    return out


def parse_request(body: bytes, header_length: str | None, spec: Spec) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The request's input arrays by name, and the request itself (JSON part). Raises V2Error(400)."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise V2Error(400, f"Inference-Header-Content-Length {header_length[:20]!r} is not a length within "
                               f"the body ({len(body)} bytes)")
        head, binary = body[: int(header_length)], memoryview(body)[int(header_length):]
    else:
        head, binary = body, memoryview(b"")
    try:
        request = _loads(head)
    except (ValueError, UnicodeDecodeError) as err:
        raise V2Error(400, f"the request is not JSON ({str(err)[:100]})") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise V2Error(400, "the request needs an 'inputs' list of tensors")
    expected = spec.inputs()
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request["inputs"]:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise V2Error(400, "each input needs a 'name'")
        name = tensor["name"]
        if name not in expected:
            raise V2Error(400, f"unknown input {name[:50]!r}; this model takes {', '.join(expected)}")
        if name in arrays:
            raise V2Error(400, f"input {name!r} given twice")
        datatype, shape_spec = expected[name]
        if tensor.get("datatype") != datatype:
            raise V2Error(400, f"input {name!r}: datatype {str(tensor.get('datatype'))[:20]!r}, expected {datatype}")
        shape = tensor.get("shape")
        if (not isinstance(shape, list) or len(shape) != len(shape_spec)
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
                or any(want != -1 and got != want for got, want in zip(shape, shape_spec))):
            raise V2Error(400, f"input {name!r}: shape {str(shape)[:60]}, expected {shape_spec} (-1: any size)")
        count = math.prod(shape)  # exact (numpy's int64 product would wrap for a huge shape)
        dtype = _NUMPY[datatype]
        params = tensor.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or size != count * dtype.itemsize or offset + size > len(binary):
                raise V2Error(400, f"input {name!r}: binary_data_size {str(size)[:20]} does not hold shape {shape} "
                                   f"of {datatype} within the body")
            a = np.frombuffer(binary[offset: offset + size], dtype=dtype).copy()
            offset += size
        else:
            a = _from_json(name, tensor.get("data"), dtype, count)
        arrays[name] = a.reshape(shape)
    if offset != len(binary):
        raise V2Error(400, f"{len(binary) - offset} byte(s) of binary data that no input claims")
    missing = [m for m in MODALITIES if m not in arrays]
    if missing:
        raise V2Error(400, f"missing input(s) {', '.join(missing)} (text, audio and vision are required; mark an "
                           f"absent modality in 'available')")
    batch = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(batch.values())) != 1:
        raise V2Error(400, "inputs of different batch sizes (first dimension): "
                           + ", ".join(f"{k} {v}" for k, v in batch.items()))
    b = next(iter(batch.values()))
    if b == 0:
        raise V2Error(400, "empty batch (0 samples)")
    if b > spec.max_batch:
        raise V2Error(400, f"batch of {b} samples, over the server's --max-batch {spec.max_batch}")
    return arrays, request


def _loads(data: bytes | memoryview) -> Any:
    """JSON with orjson where installed (the serve extra): a tensor's numbers parse ~10x faster than with
    the standard library, which is most of a JSON request's cost."""
    try:
        import orjson
    except ImportError:
        return json.loads(bytes(data))
    return orjson.loads(data)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON bytes (as Starlette's JSONResponse writes them), with orjson where installed;
    numpy scalars and arrays are written as numbers with it."""
    try:
        import orjson
    except ImportError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def _from_json(name: str, data: Any, dtype: np.dtype, count: int) -> np.ndarray:
    if not isinstance(data, list):
        raise V2Error(400, f"input {name!r}: needs 'data' (a list) or parameters.binary_data_size")
    try:
        a = np.asarray(data)
    except (ValueError, TypeError):
        raise V2Error(400, f"input {name!r}: ragged data (rows of different lengths)") from None
    ok = "b" if dtype.kind == "b" else ("iub" if dtype.kind == "i" else "iuf")
    if a.dtype.kind not in ok or (dtype.kind == "i" and a.dtype.kind == "b"):
        raise V2Error(400, f"input {name!r}: data of {a.dtype.kind!r} values does not fit {dtype.name}")
    if a.size != count:
        raise V2Error(400, f"input {name!r}: {a.size} values, its shape holds {count}")
    with np.errstate(over="ignore"):
        return a.reshape(-1).astype(dtype)


def split_from(arrays: dict[str, np.ndarray], predictor: Any, max_seq_len: int) -> Any:
    """The request's samples as a Split with the run's widths (checked by the predictor)."""
    for m in MODALITIES:
        if arrays[m].shape[1] > max_seq_len:
            raise V2Error(400, f"input {m!r}: {arrays[m].shape[1]} steps, over the server's --max-seq-len {max_seq_len}")
    try:
        split = predictor._split_from_arrays({k: v for k, v in arrays.items() if k != "available"})
        if "available" in arrays:
            from affectus.data.missing import with_availability

            split = with_availability(split, arrays["available"])
    except AffectusError as err:
        raise V2Error(400, str(err).removeprefix("predict: ")) from None
    return split


def encode_response(request: dict[str, Any], pred: Any, spec: Spec) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or JSON followed by the binary outputs asked for."""
    params = request.get("parameters") if isinstance(request.get("parameters"), dict) else {}
    binary_all = params.get("binary_data_output") is True
    wanted = request.get("outputs")
    if wanted is None:
        asked = [(name, binary_all) for name in spec.outputs]
    else:
        if not isinstance(wanted, list):
            raise V2Error(400, "'outputs' must be a list")
        asked = []
        for out in wanted:
            name = out.get("name") if isinstance(out, dict) else None
            if name not in spec.outputs:
                raise V2Error(400, f"unknown output {str(name)[:50]!r}; this model gives {', '.join(spec.outputs)}")
            p = out.get("parameters") if isinstance(out.get("parameters"), dict) else {}
            asked.append((name, p.get("binary_data", binary_all) is True))
    tensors = _outputs(pred)
    head: dict[str, Any] = {"model_name": spec.name, "model_version": VERSION}
    if isinstance(request.get("id"), str):
        head["id"] = request["id"]
    head["outputs"] = []
    blobs: list[bytes] = []
    for name, binary in asked:
        datatype, _ = spec.outputs[name]
        a = tensors[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(a.shape)}
        if binary:
            raw = _bytes_tensor(a) if datatype == "BYTES" else np.ascontiguousarray(a, dtype="<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = a.reshape(-1).tolist()
        head["outputs"].append(entry)
    text = dumps(head)
    if not blobs:
        return text, {"content-type": "application/json"}
    return text + b"".join(blobs), {"content-type": "application/octet-stream", HEADER: str(len(text))}


def _outputs(pred: Any) -> dict[str, np.ndarray]:
    names = np.asarray(pred.class_names, dtype=object)
    out = {"probabilities": pred.probabilities.astype(np.float32), "verdict": names[pred.classes]}
    if pred.binary is not None:
        out["acc2"] = np.asarray(pred.binary_names, dtype=object)[pred.binary.astype(int)]
    if pred.scores is not None:
        out["score"] = pred.scores.astype(np.float32)
    if pred.modality_probabilities is not None:
        out["modality_probabilities"] = pred.modality_probabilities.astype(np.float32)
        verdicts = names[pred.modality_classes]
        if pred.available is not None:
            verdicts = np.where(pred.available, verdicts, "")
        out["modality_verdicts"] = verdicts.astype(object)
    if pred.router_weights is not None:
        out["modality_weights"] = pred.router_weights.astype(np.float32)
    return out


def _bytes_tensor(a: np.ndarray) -> bytes:
    """BYTES elements in the binary extension's layout: each a 4-byte little-endian length, then its bytes."""
    parts = []
    for item in a.reshape(-1):
        raw = str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(raw)) + raw)
    return b"".join(parts)
