"""`affectus serve --pretrained NAME`: pretrained experts behind the service's guard, with no run.

    GET  /          a small page: upload a clip (or type a transcript), see each expert's verdict
    GET  /health    {"status": "ok", "pretrained": [names], "experts": {name: {modality, classes}}}
    GET  /metrics   Prometheus text format (inference/telemetry.py); each request is also a JSON access-log line
    POST /predict   multipart `file` (a clip) and/or `transcript`: {"predictions": [row], "warnings": []}, the
                    row being what `affectus predict --pretrained NAME CLIP --json` prints (pretrained/clips.py)

The same protections as `affectus serve RUN` (inference/service.py's `_Guard`: Host allow-list, same-origin,
body size and time limits); refusals are 4xx JSON {"error": ...} naming the upload, never a server path.
Clips run in threads, at most `max_concurrent` at once (429 with Retry-After beyond): the experts are one
small linear head each over a shared encoder, and the speech recogniser serialises its own calls. A clip
slot is freed when its work has ended, not when a timed-out request gave up (504).
"""

# no `from __future__ import annotations`: FastAPI reads the route annotations, whose names (File, Form)
# are imported inside create_pretrained_app, at run time
import asyncio
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from affectus.errors import AffectusError
from affectus.inference.service import (
    _CLIP_SUFFIXES,
    _MAX_TRANSCRIPT,
    _PICKLE,
    Limits,
    _copy_upload,
    _display_name,
    _fastapi,
    _Guard,
    _Refused,
    _scrub,
    _TempDirs,
    json_errors,
)


def create_pretrained_app(names: list[str], limits: Limits | None = None) -> Any:
    """The FastAPI app serving the pretrained experts `names` (loaded once, here: an expert that is not
    built is an `AffectusError` before the server starts)."""
    from contextlib import asynccontextmanager

    from fastapi import File, Form, UploadFile
    from fastapi.responses import HTMLResponse, Response

    from affectus.inference.telemetry import Metrics
    from affectus.pretrained.clips import PretrainedPredictor
    from affectus.pretrained.registry import parse_names

    limits = limits or Limits()
    experts = parse_names(names)
    predictor = PretrainedPredictor(experts, max_duration_s=limits.max_clip_s)
    temps = _TempDirs()
    slots = [limits.max_concurrent]  # free clip slots; touched on the event loop only
    metrics = Metrics()  # request counts and latencies, and the JSON access-log line of each request
    metrics.clip_slots.set(limits.max_concurrent)

    @asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        try:
            yield
        finally:
            temps.remove_all()

    app = _fastapi(title="affectus", description=f"Pretrained experts: {', '.join(e.name for e in experts)}",
                   lifespan=lifespan)
    app.add_middleware(_Guard, limits=limits, metrics=metrics)

    json_errors(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "pretrained": [e.name for e in experts],
                "experts": {e.name: {"modality": e.modality, "classes": list(predictor.classes[e.name])}
                            for e in experts}}

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return resources.files("affectus.inference").joinpath("templates", "pretrained.html").read_text(encoding="utf-8")

    @app.post("/predict")
    async def predict(file: Annotated[UploadFile | None, File()] = None,
                      transcript: Annotated[str | None, Form()] = None) -> dict[str, Any]:
        start = time.monotonic()
        if transcript is not None and len(transcript) > _MAX_TRANSCRIPT:
            raise _Refused(413, f"transcript of {len(transcript)} characters, over the {_MAX_TRANSCRIPT} limit")
        if transcript is not None and not transcript.strip():
            transcript = None
        if file is None:
            if transcript is None:
                raise _Refused(400, "send a clip (multipart field 'file') or a transcript (field 'transcript')")
            return {"predictions": [await _run(None, transcript, "transcript", start, None)], "warnings": []}
        name = _display_name(file.filename)
        limit = int(limits.max_upload_mb * 1024 * 1024)
        head = await file.read(8)
        await file.seek(0)
        if not head:
            raise _Refused(400, f"{name}: empty upload")
        if head.startswith(_PICKLE):
            raise _Refused(415, "pickles are never accepted (loading one runs code); send a clip")
        suffix = Path(name.lower()).suffix
        if suffix not in _CLIP_SUFFIXES:
            raise _Refused(415, f"{name}: expected a clip ({', '.join(_CLIP_SUFFIXES)}); pretrained experts read "
                                f"clips or a transcript")
        folder = temps.make()
        handed = False  # once handed to `_run`, the folder is removed when the prediction has ended
        try:
            path = folder / f"clip{suffix}"  # our own name: the upload's name never reaches the file system
            if not await asyncio.to_thread(_copy_upload, file.file, path, limit):
                raise _Refused(413, f"{name}: upload larger than {limits.max_upload_mb:g} MB")
            handed = True
            row = await _run(path, transcript, name, start, folder)
        finally:
            if not handed:
                temps.remove(folder)
        row["id"] = name
        return {"predictions": [row], "warnings": []}

    async def _run(path: Path | None, transcript: str | None, name: str, start: float,
                   folder: Path | None) -> dict[str, Any]:
        if slots[0] == 0:
            temps.remove(folder)
            raise _Refused(429, f"{limits.max_concurrent} prediction(s) already running; retry shortly",
                           {"Retry-After": "1"})
        slots[0] -= 1
        metrics.clip_busy.set(limits.max_concurrent - slots[0])
        loop = asyncio.get_running_loop()

        def work() -> Any:
            try:
                return predictor(path, transcript)
            finally:
                def free() -> None:
                    slots[0] += 1
                    metrics.clip_busy.set(limits.max_concurrent - slots[0])
                    temps.remove(folder)  # the thread has ended: nothing reads the upload any more

                try:
                    loop.call_soon_threadsafe(free)
                except RuntimeError:
                    pass  # the server (its event loop) is gone

        paths = {str(path): name} if path is not None else {}
        if folder is not None:
            paths[str(folder)] = "<upload>"
        try:
            row = await asyncio.wait_for(asyncio.to_thread(work),
                                         timeout=max(0.0, limits.timeout_s - (time.monotonic() - start)))
        except TimeoutError:
            raise _Refused(504, f"{name}: prediction took longer than {limits.timeout_s:g} s") from None
        except AffectusError as err:
            from affectus.features.base import MediaError

            status = 413 if isinstance(err, MediaError) and err.reason == "too_long" else 422
            raise _Refused(status, _scrub(str(err), paths)) from None
        return _scrub(row, paths)

    return app
