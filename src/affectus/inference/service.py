"""`affectus serve RUN`: the run behind an HTTP service (FastAPI) with a small web page.

    GET  /          a page: upload a clip (or a features .npz), see the verdict and each modality's call
    GET  /health    {"status": "ok", model, variant, scheme, classes}
    POST /predict   multipart `file` (+ optional `transcript`): a clip (mp4 / webm / wav ...) or an affectus
                    features .npz; never a pickle. Returns {"predictions": [explanation, ...]}; a clip's
                    explanation carries up to 4 face thumbnails (64 px JPEG data URLs).
    GET  /docs      OpenAPI docs (FastAPI's own)

Limits, each a 4xx with a JSON {"error": ...}: the upload size (413), pickles and unknown types (415),
a clip longer than the limit (413), more concurrent extractions than allowed (429), and a request that
takes longer than the timeout (504). Uploads live in a temporary folder removed after each request.
"""


import asyncio
import queue
import tempfile
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from affectus.errors import AffectusError

_ZIP = (b"PK\x03\x04", b"PK\x05\x06")
_PICKLE = b"\x80"
_CLIP_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".wav", ".mp3", ".flac", ".ogg")


@dataclass
class Limits:
    max_upload_mb: float = 50.0
    max_clip_s: float = 60.0
    max_concurrent: int = 2  # clip extractions at once (each decodes video and runs the extractors)
    timeout_s: float = 120.0
    thumbnails: int = 4  # face crops returned per clip (64 px JPEGs)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(run_dir: str | Path, limits: Limits | None = None) -> Any:
    """The FastAPI app serving one run (loaded once)."""
    from fastapi import FastAPI, File, Form, UploadFile
    from fastapi.responses import HTMLResponse, JSONResponse

    from affectus.inference.predictor import load

    limits = limits or Limits()
    predictor = load(run_dir)
    slots = threading.BoundedSemaphore(limits.max_concurrent)
    # built extractors, reused across requests: at most max_concurrent exist, one per running extraction
    # (an extractor is used by one thread at a time)
    idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
    app = FastAPI(title="affectus", description=f"Multimodal emotion recognition: run {Path(run_dir).name}")

    @app.exception_handler(_Refused)
    async def refused(_request: Any, err: _Refused) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.get("/health")
    async def health() -> dict[str, Any]:  # async: nothing here blocks, so no trip through the thread pool
        return {"status": "ok", "model": predictor.model_name, "variant": predictor.info.get("variant"),
                "scheme": predictor.scheme.name, "classes": list(predictor.scheme.class_names),
                "clips": isinstance(predictor.info.get("extraction"), dict)}

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return resources.files("affectus.inference").joinpath("templates", "index.html").read_text(encoding="utf-8")

    @app.post("/predict")
    async def predict(file: UploadFile = File(...), transcript: str | None = Form(None)) -> dict[str, Any]:
        limit = int(limits.max_upload_mb * 1024 * 1024)
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise _Refused(413, f"upload larger than {limits.max_upload_mb:g} MB")
        if not data:
            raise _Refused(400, "empty upload")
        if data.startswith(_PICKLE):
            raise _Refused(415, "pickles are never accepted (loading one runs code); send an affectus .npz "
                                "(affectus convert) or a clip")
        name = Path(file.filename or "upload").name
        is_npz = data[:4] in _ZIP and not name.lower().endswith(_CLIP_SUFFIXES)
        if not is_npz and not name.lower().endswith(_CLIP_SUFFIXES):
            raise _Refused(415, f"{name}: expected a clip ({', '.join(_CLIP_SUFFIXES)}) or an affectus .npz")
        if not is_npz and not slots.acquire(blocking=False):
            raise _Refused(429, f"{limits.max_concurrent} clip extraction(s) already running; retry shortly")
        try:
            if is_npz:
                job = asyncio.to_thread(_predict_npz, predictor, data, name, transcript)
            else:
                job = asyncio.to_thread(_predict_clip, idle, predictor, data, name, transcript, limits)
            return await asyncio.wait_for(job, timeout=limits.timeout_s)
        except asyncio.TimeoutError:
            raise _Refused(504, f"prediction took longer than {limits.timeout_s:g} s") from None
        except AffectusError as err:
            raise _Refused(422, str(err)) from None
        finally:
            if not is_npz:
                slots.release()

    return app


def _predict_npz(predictor: Any, data: bytes, name: str, transcript: str | None) -> dict[str, Any]:
    from affectus.data.mmsa import load_dataset

    with tempfile.TemporaryDirectory(prefix="affectus-serve-") as tmp:
        path = Path(tmp) / "upload.npz"
        path.write_bytes(data)
        ds = load_dataset(path)  # the pickle-free form only (magic bytes checked above: a zip)
        out = []
        for split in ds.splits.values():
            pred = predictor.predict(split)
            for i, sample_id in enumerate(split.ids):
                row = {"id": sample_id, "split": split.name, **pred.explain(i)}
                if split.raw_text is not None:
                    row["transcript"] = split.raw_text[i]
                out.append(row)
    return {"predictions": out}


def _predict_clip(idle: queue.SimpleQueue[Any], predictor: Any, data: bytes, name: str,
                  transcript: str | None, limits: Limits) -> dict[str, Any]:
    from affectus.inference.extract.clip import ClipPredictor
    from affectus.inference.extract.decode import DecodeConfig, Decoder

    with tempfile.TemporaryDirectory(prefix="affectus-serve-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        duration = Decoder(DecodeConfig()).probe(path).get("duration_s") or 0.0
        if duration > limits.max_clip_s:
            raise _Refused(413, f"clip of {duration:.1f} s, longer than the {limits.max_clip_s:g} s limit")
        try:
            explain = idle.get_nowait()
        except queue.Empty:
            explain = ClipPredictor(predictor, thumbnails=limits.thumbnails)
        try:
            return {"predictions": [explain(path, transcript)]}
        finally:
            idle.put(explain)
