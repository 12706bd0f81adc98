"""`affectus serve RUN`: the run behind an HTTP service (FastAPI) with a small web page.

    GET  /          a page: upload a clip (or a features .npz), see the verdict and each modality's call
    GET  /health    {"status": "ok", model, variant, scheme, classes, clips}
    POST /predict   multipart `file` (+ optional `transcript`): a clip (mp4 / webm / wav ...) or an affectus
                    features .npz; never a pickle. Returns {"predictions": [explanation, ...], "warnings": [...]};
                    a clip's explanation carries up to 4 face thumbnails (64 px JPEG data URLs).
    GET  /docs      OpenAPI docs, their script and style served from the installed fastapi-offline package
                    (no CDN); off when that package is missing
    /v2/...         the Open Inference Protocol (KServe v2, Triton's HTTP API): health, model metadata, infer
                    with named tensors (inference/oip.py)
    GET  /metrics   Prometheus text format (inference/telemetry.py); each request is also a JSON access-log line

Features requests (an .npz, or v2 tensors) are validated once against the run's widths and share forwards
through one dynamic batcher per process (inference/batching.py); docs/serving.md describes all of it.

What the service guarantees (docs/security.md, "The service", lists the limits and their defaults):

* Every refusal is a 4xx with a JSON {"error": ...} that names the upload, never a server path; a full
  batch queue or busy clip workers answer with Retry-After.
* Requests come only from this machine's own page or non-browser clients: the Host header must be on an
  allow-list (loopback names by default: a DNS-rebinding page cannot reach the server), a request whose
  Origin is not the server's own is refused (403), and no CORS header is ever sent.
* The body is refused on its Content-Length and read no further than the limit; headers and body must
  arrive within their timeouts (a slow client is disconnected).
* An .npz is checked from its zip directory and .npy headers before any array is read (decompressed
  size, samples, sequence length); it is parsed from memory, on the event loop when it is small once
  decompressed (a few samples: less work than a thread hop), else in its own bounded slots, and a slot
  is freed only when its work has really ended.
* A clip is decoded and predicted in a worker process (at most `max_concurrent`, each holding one copy
  of the run and its extractors), killed at the deadline, when the client disconnects or when the
  request is cancelled; its length
  is enforced while decoding, so a clip that states no duration is stopped at the limit too.
* Uploads live in per-request `affectus-serve-*` folders under the temporary directory, removed when
  the request ends in any way and at shutdown (SIGTERM / SIGINT included).
"""

import asyncio
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from affectus.errors import AffectusError

_log = logging.getLogger("affectus.serve")

_ZIP = (b"PK\x03\x04", b"PK\x05\x06")
_PICKLE = b"\x80"
_CLIP_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".wav", ".mp3", ".flac", ".ogg")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_MULTIPART_ALLOWANCE = 1 << 20  # body bytes beyond the file's limit: multipart framing and the transcript field
_MAX_TRANSCRIPT = 10_000  # characters
_MAX_NAME = 100  # characters of an upload's name kept for messages and ids
_INLINE_BYTES = 256 * 1024  # a v2 request up to this size is parsed on the event loop (a thread hop costs more)
_INLINE_ROWS = 256  # answers with up to this many rows are explained on the event loop
# /predict's form, for the OpenAPI docs (the route reads the form itself)
_PREDICT_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary",
                            "description": "a clip (mp4 / webm / wav ...) or an affectus features .npz"},
                   "transcript": {"type": "string", "maxLength": _MAX_TRANSCRIPT,
                                  "description": "what is said in the clip (optional)"}}}}}}}
SHUTDOWN_S = 5  # seconds a graceful shutdown waits for running requests before cancelling them


@dataclass
class Limits:
    max_upload_mb: float = 50.0
    max_clip_s: float = 60.0
    max_concurrent: int = 2  # clip worker processes (each decodes one clip at a time and holds one copy of the run)
    timeout_s: float = 120.0
    thumbnails: int = 4  # face crops returned per clip (64 px JPEGs)
    max_npz_concurrent: int = 2  # features uploads predicted at once
    max_samples: int = 10_000  # samples in one features upload (all splits together)
    max_decompressed_mb: float = 256.0  # a features upload's arrays, once decompressed
    max_seq_len: int = 1024  # steps of one modality's feature sequence in a features upload
    header_timeout_s: float = 10.0  # from connection (or the previous response) to complete request headers
    body_timeout_s: float = 60.0  # from complete headers to the end of the body
    max_connections: int = 100  # open connections and running requests (uvicorn's limit_concurrency; 503 beyond)
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS  # Host header names accepted; "*" accepts any
    max_batch: int = 32  # samples in one forward of the dynamic batcher (and in one v2 infer request)
    max_wait_ms: float = 2.0  # how long the batcher waits for more requests once one is waiting
    max_queue: int = 1024  # samples waiting for a forward (503 with Retry-After beyond)


class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


# ------------------------------------------------------------------------------------------ the app


def create_app(run_dir: str | Path, limits: Limits | None = None) -> Any:
    """The FastAPI app serving one run (loaded once). Clip workers start on the first clip and stop at the
    app's shutdown (its lifespan: a TestClient used as a context manager, or uvicorn)."""
    from contextlib import asynccontextmanager

    from fastapi import Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.datastructures import UploadFile

    from affectus.inference import oip
    from affectus.inference.batching import Batcher, QueueFull
    from affectus.inference.predictor import load
    from affectus.inference.telemetry import Metrics

    limits = limits or Limits()
    predictor = load(run_dir)  # once per process: every request and batch shares it
    metrics = Metrics()
    metrics.clip_slots.set(limits.max_concurrent)
    metrics.npz_slots.set(limits.max_npz_concurrent)
    batcher = Batcher(predictor, limits.max_batch, limits.max_wait_ms, limits.max_queue, metrics)
    spec = oip.Spec(name=Path(run_dir).name, dims=dict(predictor.dims), classes=tuple(predictor.scheme.class_names),
                    outputs=oip.output_spec(_probe(predictor), predictor.scheme), max_batch=limits.max_batch)
    try:
        from affectus.features.clip import ClipPredictor

        ClipPredictor.check_run(predictor)
        clip_error = None
    except AffectusError as err:
        clip_error = str(err)
    pool = _ClipPool(Path(run_dir), limits, metrics)
    temps = _TempDirs()
    # a features upload waits for one of these (bounded by the connection limit; its upload stays spooled
    # on disk meanwhile), a clip does not: it gets a 429 at once
    npz_slots = asyncio.Semaphore(limits.max_npz_concurrent)
    npz_busy = [0]

    @asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        try:
            yield
        finally:  # uvicorn's shutdown (SIGTERM, SIGINT) runs this after cancelling what still ran
            await batcher.close()
            pool.close()
            if metrics.multiprocess:  # this process's live gauges leave the sums
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(os.getpid())
            temps.remove_all()

    app = _fastapi(title="affectus", description=f"Multimodal emotion recognition: run {Path(run_dir).name}",
                   lifespan=lifespan)
    app.add_middleware(_Guard, limits=limits, metrics=metrics)

    json_errors(app)

    @app.exception_handler(Exception)
    async def internal(_request: Any, err: Exception) -> JSONResponse:
        _log.error("internal error", exc_info=err)  # the details stay in the server's log
        return JSONResponse({"error": "internal error (logged on the server)"}, status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:  # async: nothing here blocks, so no trip through the thread pool
        return {"status": "ok", "model": predictor.model_name, "variant": predictor.info.get("variant"),
                "scheme": predictor.scheme.name, "classes": list(predictor.scheme.class_names),
                "clips": clip_error is None}

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    # ---------------------------------------------------------------- the Open Inference Protocol (oip.py)

    def _model(name: str, version: str) -> None:
        """404 unless the path names the served model and its one version."""
        if name != spec.name:
            raise _Refused(404, f"unknown model {name[:100]!r}; this server serves {spec.name!r}")
        if version != oip.VERSION:
            raise _Refused(404, f"model {name!r} has version {oip.VERSION} only")

    @app.get("/v2")
    async def v2_server() -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            ours = version("affectus")
        except PackageNotFoundError:
            ours = "unknown"
        return {"name": "affectus", "version": ours, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    @app.get("/v2/health/ready")
    async def v2_health() -> dict[str, Any]:
        return {}  # the run is loaded before the server listens: up means ready

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def v2_metadata(name: str, version: str = oip.VERSION) -> dict[str, Any]:
        _model(name, version)
        return spec.metadata()

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def v2_ready(name: str, version: str = oip.VERSION) -> dict[str, Any]:
        _model(name, version)
        return {"name": name, "ready": True}

    # the path's names are read from the request rather than declared as parameters: FastAPI validates
    # declared parameters with pydantic on every request, a cost as large as parsing a small request
    @app.post("/v2/models/{name}/infer", openapi_extra=_path_params("name"))
    @app.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=_path_params("name", "version"))
    async def v2_infer(request: Request) -> Response:
        start = time.monotonic()
        _model(request.path_params["name"], request.path_params.get("version", oip.VERSION))
        body = await request.body()  # bounded by the guard (Content-Length and counted chunks)
        header = request.headers.get(oip.HEADER)
        try:
            if len(body) > _INLINE_BYTES:  # a large request is parsed off the event loop
                arrays, req = await asyncio.to_thread(oip.parse_request, body, header, spec)
            else:
                arrays, req = oip.parse_request(body, header, spec)
            split = oip.split_from(arrays, predictor, limits.max_seq_len)
        except oip.V2Error as err:
            raise _Refused(err.status, str(err)) from None
        pred = await _batched(split, "the request", start)
        try:
            content, headers = oip.encode_response(req, pred, spec)
        except oip.V2Error as err:
            raise _Refused(err.status, str(err)) from None
        return Response(content, headers=headers)

    async def _batched(split: Any, name: str, start: float) -> Any:
        """`split`'s Prediction from the dynamic batcher, within the request's time."""
        try:
            # a timeout scope rather than wait_for: no extra task per request (cancelling it cancels the
            # job's future, which the batcher then skips)
            async with asyncio.timeout_at(asyncio.get_running_loop().time() + limits.timeout_s
                                          - (time.monotonic() - start)):
                return await batcher.submit(split)
        except QueueFull as err:
            raise _Refused(503, f"server busy: {err}", {"Retry-After": "1"}) from None
        except TimeoutError:
            raise _Refused(504, f"{name}: prediction took longer than {limits.timeout_s:g} s") from None
        except AffectusError as err:
            raise _Refused(422, _scrub(str(err), {str(Path(run_dir)): Path(run_dir).name})) from None

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return resources.files("affectus.inference").joinpath("templates", "index.html").read_text(encoding="utf-8")

    @app.post("/predict", openapi_extra=_PREDICT_FORM)
    async def predict(request: Request) -> Response:
        # the form is read here, not by FastAPI's File() / Form() parameters: the same python-multipart
        # parser (Starlette's), without the per-request dependency solving and pydantic validation that
        # cost as much as the parse itself (docs/serving.md, "Throughput")
        start = time.monotonic()
        form, spooled = await _read_form(request)
        try:
            file = form.get("file")
            transcript = form.get("transcript")
            if not isinstance(file, UploadFile):
                raise _Refused(422, "invalid request (body.file: Field required: send the clip or .npz as the "
                                    "multipart field 'file')")
            if transcript is not None and not isinstance(transcript, str):
                raise _Refused(422, "invalid request (body.transcript: a text field, not a file)")
            return _json(await _predict_upload(request, file, transcript, start))
        finally:  # a spooled upload is closed however the request ends (in-memory ones are just dropped)
            if spooled:
                await form.close()

    async def _predict_upload(request: Any, file: Any, transcript: str | None, start: float) -> dict[str, Any]:
        name = _display_name(file.filename)
        limit = int(limits.max_upload_mb * 1024 * 1024)
        if file.size is not None and file.size > limit:
            raise _Refused(413, f"{name}: upload larger than {limits.max_upload_mb:g} MB")
        small = file.size is not None and file.size <= _INLINE_BYTES  # held in memory by the spooled file
        if small:
            head = file.file.read(8)
            file.file.seek(0)
        else:
            head = await file.read(8)
            await file.seek(0)
        if not head:
            raise _Refused(400, f"{name}: empty upload")
        if head.startswith(_PICKLE):
            raise _Refused(415, "pickles are never accepted (loading one runs code); send an affectus .npz "
                                "(affectus convert) or a clip")
        if transcript is not None and len(transcript) > _MAX_TRANSCRIPT:
            raise _Refused(413, f"transcript of {len(transcript)} characters, over the {_MAX_TRANSCRIPT} limit")
        suffix = Path(name.lower()).suffix
        if head[:4] in _ZIP and suffix not in _CLIP_SUFFIXES:
            return await _features(file.file, name, limit, start, small)
        if suffix not in _CLIP_SUFFIXES:
            raise _Refused(415, f"{name}: expected a clip ({', '.join(_CLIP_SUFFIXES)}) or an affectus .npz")
        if clip_error is not None:
            raise _Refused(422, _scrub(clip_error, {str(Path(run_dir)): Path(run_dir).name}))
        return await _clip(request, file.file, name, suffix, transcript, limit, start)

    @app.post("/predict/utterances")
    async def predict_utterances(request: Request) -> dict[str, Any]:
        """One conversation's utterances (JSON {"utterances": [str, ...]}, in the order said), each read with
        its neighbours where the run was trained with context: runs that encode transcripts themselves."""
        start = time.monotonic()
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):
            raise _Refused(400, 'expected a JSON object {"utterances": ["...", ...]}') from None
        said = body.get("utterances") if isinstance(body, dict) else None
        if not isinstance(said, list) or not said or not all(isinstance(u, str) for u in said):
            raise _Refused(422, 'expected a JSON object {"utterances": ["...", ...]} with at least one string')
        if len(said) > limits.max_samples:
            raise _Refused(413, f"{len(said)} utterances, over the {limits.max_samples} limit")
        if max(len(u) for u in said) > _MAX_TRANSCRIPT:
            raise _Refused(413, f"an utterance over the {_MAX_TRANSCRIPT}-character limit")

        def work() -> list[dict[str, Any]]:
            split = predictor.utterances(said)
            pred = predictor.predict(split)
            return [{"id": split.ids[i], "position": i, "conversation": len(said), **pred.explain(i),
                     "transcript": said[i]} for i in range(len(said))]

        try:  # the text encoder runs here: off the event loop, within the request's time
            rows = await asyncio.wait_for(asyncio.to_thread(work),
                                          timeout=max(0.0, limits.timeout_s - (time.monotonic() - start)))
        except TimeoutError:
            raise _Refused(504, f"prediction took longer than {limits.timeout_s:g} s") from None
        except AffectusError as err:
            raise _Refused(422, _scrub(str(err), {str(Path(run_dir)): Path(run_dir).name})) from None
        return {"predictions": rows}

    async def _features(upload: Any, name: str, limit: int, start: float, small: bool) -> dict[str, Any]:
        inline = False
        if small:
            from affectus.data.npz_check import Directory

            upload.seek(0)
            data = upload.read(limit + 1)
            try:
                directory = Directory(data, name)
                # small once decompressed too (a deflated member can declare far more than it takes)
                inline = directory.declared <= _INLINE_BYTES
                if inline:
                    # a small upload (a few samples: kilobytes) is read and checked right here, on the
                    # event loop: it takes a fraction of a millisecond, less than the hop to a thread and
                    # back, and nothing else runs meanwhile, so it needs no slot
                    splits, warnings = _npz_splits(data, predictor, name, limit, limits, directory)
            except AffectusError as err:
                raise _npz_refusal(err) from None
            del data
        if not inline:
            splits, warnings = await _features_in_slot(upload, name, limit, start)
        if len(splits) == 1:  # one split (the usual upload): no task for a gather of one
            preds = [await _batched(splits[0], name, start)]
        else:
            preds = await asyncio.gather(*(_batched(split, name, start) for split in splits))
        if sum(len(split) for split in splits) > _INLINE_ROWS:  # many rows: explained off the event loop
            out = await asyncio.to_thread(_explain_rows, splits, preds)
        else:
            out = _explain_rows(splits, preds)
        return {"predictions": out, "warnings": warnings}

    async def _features_in_slot(upload: Any, name: str, limit: int, start: float) -> tuple[list[Any], list[str]]:
        """A larger upload's splits, read and checked in a thread, in one of --max-npz-concurrent slots."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(npz_slots.acquire(), timeout=max(0.0, limits.timeout_s - (time.monotonic() - start)))
        except TimeoutError:
            raise _Refused(429, f"{limits.max_npz_concurrent} features upload(s) running for {limits.timeout_s:g} s; "
                                f"retry shortly", {"Retry-After": "1"}) from None
        npz_busy[0] += 1
        metrics.npz_busy.set(npz_busy[0])

        def done() -> None:  # called by the thread when its work has ended, not when the request gave up
            def free() -> None:
                npz_busy[0] -= 1
                metrics.npz_busy.set(npz_busy[0])
                npz_slots.release()

            try:
                loop.call_soon_threadsafe(free)
            except RuntimeError:
                pass  # the server (its event loop) is gone

        # the slot covers reading and checking the upload; the forward is the batcher's
        job = asyncio.to_thread(_read_npz_upload, done, predictor, upload, name, limit, limits)
        try:
            return await asyncio.wait_for(job, timeout=max(0.0, limits.timeout_s - (time.monotonic() - start)))
        except TimeoutError:
            raise _Refused(504, f"{name}: prediction took longer than {limits.timeout_s:g} s") from None
        except AffectusError as err:
            raise _npz_refusal(err) from None

    async def _clip(request: Any, upload: Any, name: str, suffix: str, transcript: str | None, limit: int,
                    start: float) -> dict[str, Any]:
        if not pool.reserve():
            raise _Refused(429, f"{limits.max_concurrent} clip extraction(s) already running; retry shortly",
                           {"Retry-After": "1"})
        folder: Path | None = None
        worker: _ClipWorker | None = None
        healthy = False
        try:
            folder = temps.make()
            path = folder / f"clip{suffix}"  # our own name: the upload's name never reaches the file system
            if not await asyncio.to_thread(_copy_upload, upload, path, limit):
                raise _Refused(413, f"{name}: upload larger than {limits.max_upload_mb:g} MB")
            worker = pool.take()
            try:
                reply = await _unless_gone(request, worker.run(str(path), transcript, start + limits.timeout_s))
            except TimeoutError:
                raise _Refused(504, f"{name}: prediction took longer than {limits.timeout_s:g} s") from None
            except (EOFError, OSError):
                raise _Refused(500, f"{name}: the clip worker stopped unexpectedly") from None
            except _ClientGone:
                raise _Refused(400, f"{name}: the client closed the connection before the answer") from None
            healthy = reply[0] != "failed"
            paths = {str(path): name, str(folder): "<upload>", str(Path(run_dir)): Path(run_dir).name}
            if reply[0] != "ok":
                message = _scrub(reply[2], paths)
                if reply[1] == 413:
                    message = f"{name}: clip longer than the {limits.max_clip_s:g} s limit ({message})"
                raise _Refused(reply[1], message)
            row = _scrub(reply[1], paths)
            row["id"] = name
            return {"predictions": [row], "warnings": []}
        finally:  # a timeout, a client gone or a cancelled request (shutdown) kills the worker: its work stops
            pool.release(worker, healthy)
            temps.remove(folder)

    # the prediction routes first: a request is matched against the routes in order (a regular expression
    # each), and these take the traffic; no other route's path can match theirs, so no answer changes
    hot = ("/predict", "/v2/models/{name}/infer")
    app.router.routes.sort(key=lambda route: getattr(route, "path", None) not in hot)
    return app


async def _unless_gone(request: Any, job: Any, every_s: float = 0.5) -> Any:
    """Await `job`; if the client disconnects first, raise `_ClientGone` (the caller then kills the work)."""
    task = asyncio.ensure_future(job)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise _ClientGone
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # its own cleanup (the pipe's reader) runs before the worker is killed


class _ClientGone(Exception):
    pass


def json_errors(app: Any) -> None:
    """Every refusal as {"error": ...} JSON: a `_Refused` with its status (and headers), a request that does
    not validate as 422 naming the fields, and Starlette's own HTTP errors (404, 405) with theirs."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(_Refused)
    async def refused(_request: Any, err: _Refused) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Any, err: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in err.errors())
        return JSONResponse({"error": f"invalid request ({where})"}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Any, err: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)


def _path_params(*names: str) -> dict[str, Any]:
    """OpenAPI entries for path parameters a route reads from `request.path_params` itself."""
    return {"parameters": [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]}


def _fastapi(**kwargs: Any) -> Any:
    """FastAPI with /docs served from fastapi-offline's packaged files (no CDN); docs off without it."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        from fastapi import FastAPI

        return FastAPI(docs_url=None, redoc_url=None, **kwargs)
    return FastAPIOffline(redoc_url=None, **kwargs)


async def _read_form(request: Any) -> tuple[Any, bool]:
    """The request's multipart form (Starlette's FormData), and whether its files are spooled (then the
    caller closes them: `await form.close()`, which closing would otherwise cost a thread hop). A small body (its Content-Length at most
    _INLINE_BYTES: a features upload of a few samples) is read whole and parsed here with python-multipart,
    the parser Starlette uses, into in-memory files; any other body goes through `request.form()`
    (Starlette: streamed, files spooled to disk past 1 MB). Both parse the same way and refuse a malformed
    form with Starlette's 400 and message; the small path only skips Starlette's spooled file, per-part
    objects and awaits per chunk, which cost as much as the parse itself for a one-sample upload."""
    from python_multipart.multipart import parse_options_header
    from starlette.exceptions import HTTPException

    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) <= _INLINE_BYTES:
        kind, params = parse_options_header(request.headers.get("content-type"))
        small = kind == b"multipart/form-data"  # Starlette's test: any other type is no multipart form
    else:
        small = False
    if not small:
        return await request.form(), True  # a malformed form: Starlette's 400 (json_errors makes it JSON)
    try:
        return _parse_form(await request.body(), params), False
    except _FormError as err:
        raise HTTPException(400, str(err)) from None


class _FormError(Exception):
    pass


_MAX_PARTS = 1000  # files, and fields, in one form (Starlette's defaults)


def _parse_form(body: bytes, params: dict[bytes, bytes]) -> Any:
    """A multipart body held in memory (`params`: its Content-Type's parameters), as Starlette's FormData: text fields as str, file parts (those with
    a filename) as UploadFiles over in-memory bytes. Decoding, the last value of a repeated name winning,
    the part limits and the refusals' messages follow Starlette's `MultiPartParser`."""
    import codecs
    import io

    from python_multipart import MultipartParser
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import parse_options_header
    from starlette.datastructures import FormData, Headers, UploadFile

    charset = params.get(b"charset", "utf-8")
    if isinstance(charset, bytes):
        charset = charset.decode("latin-1")
    try:
        charset = codecs.lookup(charset).name
    except LookupError:
        charset = "latin-1"
    boundary = params.get(b"boundary")
    if boundary is None:
        raise _FormError("Missing boundary in multipart.")

    def text(raw: bytes) -> str:
        try:
            return raw.decode(charset)
        except (UnicodeDecodeError, LookupError):
            return raw.decode("latin-1")

    items: list[tuple[str, Any]] = []
    part: dict[str, Any] = {}
    counts = {"files": 0, "fields": 0}
    header = [b"", b""]  # the header line being read: name, value

    def on_part_begin() -> None:
        part.clear()
        part.update(headers=[], chunks=[], disposition=b"")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        field = header[0].lower()
        if field == b"content-disposition":
            part["disposition"] = header[1]
        part["headers"].append((field, header[1]))
        header[0] = header[1] = b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(part["disposition"])
        if b"name" not in options:
            raise _FormError('The Content-Disposition header field "name" must be provided.')
        part["name"] = text(options[b"name"])
        kind = "files" if b"filename" in options else "fields"
        counts[kind] += 1
        if counts[kind] > _MAX_PARTS:
            raise _FormError(f"Too many {kind}. Maximum number of {kind} is {_MAX_PARTS}.")
        part["filename"] = text(options[b"filename"]) if kind == "files" else None

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part["chunks"].append(data[start:end])

    def on_part_end() -> None:
        raw = b"".join(part["chunks"])
        if part["filename"] is None:
            items.append((part["name"], text(raw)))
        else:
            items.append((part["name"], UploadFile(io.BytesIO(raw), size=len(raw), filename=part["filename"],
                                                   headers=Headers(raw=part["headers"]))))

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_part_data": on_part_data,
                                        "on_part_end": on_part_end, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_headers_finished": on_headers_finished})
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError:
        raise _FormError("Invalid multipart data.") from None
    return FormData(items)


def _display_name(filename: str | None) -> str:
    """The upload's own name for messages and ids: its last path part, printable characters only, at most
    _MAX_NAME characters (its suffix kept)."""
    name = re.split(r"[\\/]", filename or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip() or "upload"
    if len(name) > _MAX_NAME:
        suffix = Path(name).suffix[:10]
        name = name[: _MAX_NAME - len(suffix)] + suffix
    return name


def _scrub(value: Any, paths: dict[str, str]) -> Any:
    """`value` (a message, or a result's strings) with server paths replaced by what the client knows."""
    if isinstance(value, str):
        for path, shown in sorted(paths.items(), key=lambda kv: -len(kv[0])):  # longest first: a file before its folder
            value = value.replace(path, shown)
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, paths) for v in value]
    return value


def _copy_upload(upload: Any, path: Path, limit: int) -> bool:
    """The spooled upload into `path`; False when it holds more than `limit` bytes."""
    upload.seek(0)
    copied = 0
    with open(path, "wb") as out:
        while block := upload.read(1 << 20):
            copied += len(block)
            if copied > limit:
                return False
            out.write(block)
    return True


def _read_npz_upload(done: Any, predictor: Any, upload: Any, name: str, limit: int,
                     limits: Limits) -> tuple[list[Any], list[str]]:
    """`_npz_splits` of a spooled upload, in a thread; calls `done()` (frees its slot) however it ends."""
    try:
        upload.seek(0)
        return _npz_splits(upload.read(limit + 1), predictor, name, limit, limits)
    finally:
        done()


def _npz_splits(data: bytes, predictor: Any, name: str, limit: int, limits: Limits,
                directory: Any = None) -> tuple[list[Any], list[str]]:
    """A features upload's splits, checked, parsed from memory and validated once against the run's widths
    (and re-encoded where the run reads transcripts), with the NaN warnings."""
    from affectus.data.npz import load_npz_arrays
    from affectus.data.npz_check import read_checked_npz
    from affectus.data.types import MODALITIES

    if len(data) > limit:
        raise _Refused(413, f"{name}: upload larger than {limits.max_upload_mb:g} MB")
    # checked and read in one pass over the zip (numpy's loader would parse every header again)
    arrays = read_checked_npz(data, name, max_bytes=int(limits.max_decompressed_mb * 1024 * 1024),
                              max_samples=limits.max_samples, max_seq_len=limits.max_seq_len,
                              directory=directory)
    del data
    ds = load_npz_arrays(arrays, name)  # from memory: no temporary file
    del arrays
    splits = []
    for split in ds.splits.values():
        split = predictor.reads(split)
        for m in MODALITIES:
            width = split.features(m).shape[2]
            if width != predictor.dims[m] and not (m == "text" and split.text_bert is not None):
                raise AffectusError(f"file {name}: split {split.name} {m} features are {width} wide, the run "
                                    f"expects {predictor.dims[m]}")
        splits.append(split)
    warnings = [f"{split} {key}: {count} NaN/inf feature value(s) set to 0 before predicting"
                for (split, key), count in sorted(ds.sanitised.items()) if count]
    return splits, warnings


def _npz_refusal(err: AffectusError) -> "_Refused":
    from affectus.data.npz_check import NpzTooLarge

    return _Refused(413 if isinstance(err, NpzTooLarge) else 422, str(err))


def _json(value: Any) -> Any:
    """A JSON response encoded once with orjson (where installed), skipping FastAPI's response validation
    and its `jsonable_encoder` walk over every row; the same compact JSON the default response writes."""
    from fastapi.responses import Response

    from affectus.inference.oip import dumps

    return Response(dumps(value), media_type="application/json")


def _explain_rows(splits: list[Any], preds: list[Any]) -> list[dict[str, Any]]:
    out = []
    for split, pred in zip(splits, preds):
        for i, sample_id in enumerate(split.ids):
            row = {"id": sample_id, "split": split.name, **pred.explain(i)}
            if split.raw_text is not None:
                row["transcript"] = split.raw_text[i]
            out.append(row)
    return out


def _probe(predictor: Any) -> Any:
    """One forward of a zero sample at the run's sequence lengths: which outputs the model gives (the v2
    metadata lists them), and the first forward's one-off costs paid before the first request."""
    import numpy as np

    from affectus.data.types import MODALITIES

    seq = predictor.info.get("seq_lens") or {}
    arrays = {m: np.zeros((1, int(seq.get(m) or 1), predictor.dims[m]), np.float32) for m in MODALITIES}
    try:
        if predictor.info.get("context") or predictor.info.get("sequence_context"):  # a context run refuses arrays (no group): the zero sample as a Batch
            from affectus.data.batches import make_batch
            from affectus.data.types import Split

            lengths = {f"{m}_lengths": np.array([a.shape[1]], np.int64) for m, a in arrays.items()}
            probe = Split(name="probe", **arrays, **lengths, labels=np.zeros(1, np.float32), ids=["probe"])
            return predictor.predict(make_batch(probe, np.arange(1), with_labels=False))
        return predictor.predict(arrays)
    except Exception:  # noqa: BLE001 - e.g. a run that reads BERT tokens: the metadata lists the sure outputs
        _log.warning("the probe forward failed: /v2 metadata lists probabilities and verdict only", exc_info=True)
        return None


class _TempDirs:
    """The per-request `affectus-serve-*` folders that exist now, so shutdown can remove what is left."""

    def __init__(self) -> None:
        self._live: set[Path] = set()
        self._lock = threading.Lock()

    def make(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="affectus-serve-"))
        with self._lock:
            self._live.add(path)
        return path

    def remove(self, path: Path | None) -> None:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
            with self._lock:
                self._live.discard(path)

    def remove_all(self) -> None:
        with self._lock:
            live = list(self._live)
        for path in live:
            self.remove(path)


# ------------------------------------------------------------------------------------------ clip workers


class _ClipPool:
    """At most `limits.max_concurrent` clip workers: started on demand, reused while healthy, killed on
    a timeout, a cancelled request, a crash, or shutdown. Used from the event loop's thread only."""

    def __init__(self, run_dir: Path, limits: Limits, metrics: Any = None) -> None:
        self.run_dir, self.limits, self.metrics = run_dir, limits, metrics
        self.busy = 0
        self.idle: list[_ClipWorker] = []
        self.running: set[_ClipWorker] = set()

    def reserve(self) -> bool:
        """Take a slot; False when every slot is busy."""
        if self.busy >= self.limits.max_concurrent:
            return False
        self.busy += 1
        self._gauge()
        return True

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.clip_busy.set(self.busy)

    def take(self) -> "_ClipWorker":
        """An idle worker, or a new one (its process starts loading the run now)."""
        while self.idle:
            worker = self.idle.pop()
            if worker.process.is_alive():
                break
            worker.kill()
        else:
            worker = _ClipWorker(self.run_dir, self.limits)
        self.running.add(worker)
        return worker

    def release(self, worker: "_ClipWorker | None", healthy: bool) -> None:
        """Give the slot back; the worker goes back to the idle list, or is killed (work stops now)."""
        self.busy -= 1
        self._gauge()
        if worker is None:
            return
        self.running.discard(worker)
        if healthy and worker.process.is_alive():
            self.idle.append(worker)
        else:
            worker.kill()

    def close(self) -> None:
        for worker in [*self.idle, *self.running]:
            worker.kill()
        self.idle.clear()
        self.running.clear()


class _ClipWorker:
    """One process holding the run and its extractors (`ClipPredictor`); `run` sends it a clip."""

    def __init__(self, run_dir: Path, limits: Limits) -> None:
        # spawn, not fork: the server has threads (and torch's), which a forked child would inherit half-held
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, name="affectus-clip-worker", daemon=True,
                                   args=(child, str(run_dir), limits.thumbnails, limits.max_clip_s, os.getpid()))
        self.process.start()
        child.close()
        self.ready = False

    async def run(self, path: str, transcript: str | None, deadline: float) -> tuple[Any, ...]:
        """("ok", row) or ("refused" | "failed", status, message). Raises TimeoutError at the deadline
        (monotonic seconds) and EOFError / OSError when the process is gone. Waits on the event loop
        (no thread is held while the worker works)."""
        if not self.ready:
            reply = await self._receive(deadline)
            if reply[0] != "ready":
                return reply
            self.ready = True
        self.conn.send((path, transcript))
        return await self._receive(deadline)

    async def _receive(self, deadline: float) -> tuple[Any, ...]:
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        fd = self.conn.fileno()
        loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
        try:
            await asyncio.wait_for(readable, timeout=max(0.0, deadline - time.monotonic()))
        finally:
            loop.remove_reader(fd)
        return self.conn.recv()  # the worker sends each reply whole; EOFError if it died

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)


def _worker_main(conn: Any, run_dir: str, thumbnails: int, max_clip_s: float, parent: int) -> None:
    """A clip worker: load the run and its extractors once, then explain clips until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server stops us
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    from affectus.features.base import MediaError
    from affectus.features.clip import ClipPredictor
    from affectus.inference.predictor import load

    try:
        explain = ClipPredictor(load(run_dir), thumbnails=thumbnails, max_duration_s=max_clip_s)
    except AffectusError as err:
        conn.send(("failed", 422, str(err)))
        return
    except Exception as err:  # noqa: BLE001 - reported as one line; the worker is replaced next time
        conn.send(("failed", 500, f"the clip worker could not start ({type(err).__name__})"))
        return
    conn.send(("ready",))
    while True:
        try:
            path, transcript = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[Any, ...] = ("ok", explain(path, transcript))
        except MediaError as err:
            reply = ("refused", 413 if err.reason == "too_long" else 422, str(err))
        except AffectusError as err:
            reply = ("refused", 422, str(err))
        except Exception as err:  # noqa: BLE001 - a decoder or extractor failing on a hostile file
            reply = ("refused", 422, f"file {path}: the clip could not be processed ({type(err).__name__})")
        conn.send(reply)


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)  # the server is gone (even by SIGKILL): so is its worker


# ------------------------------------------------------------------------------------------ request guard


class _Guard:
    """ASGI middleware in front of every route: Host allow-list, same-origin check, body size and body
    time limits, and headers that keep the page out of foreign frames. Refusals are JSON and close the
    connection, so a refused body is read no further."""

    def __init__(self, app: Any, limits: Limits, metrics: Any = None) -> None:
        self.app = app
        self.limits = limits
        self.metrics = metrics
        self.any_host = "*" in limits.allowed_hosts
        self.hosts = {h.strip().lower().strip("[]") for h in limits.allowed_hosts}
        self.max_body = int(limits.max_upload_mb * 1024 * 1024) + _MULTIPART_ALLOWANCE

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.metrics is None:
            await self._checked(scope, receive, send)
            return
        # every answer, refusals included, is counted and logged (telemetry.py)
        started = time.perf_counter()
        answer = {"status": 0, "bytes": 0}

        async def counted_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body":
                answer["bytes"] += len(message.get("body", b""))
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self._checked(scope, receive, counted_send)
        finally:
            self.metrics.in_flight.dec()
            # no answer started: the client left or the server stopped first (nginx logs these as 499)
            self.metrics.observe(scope, answer["status"] or 499, time.perf_counter() - started, answer["bytes"])

    async def _checked(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers: dict[bytes, list[bytes]] = {}
        for key, value in scope["headers"]:
            headers.setdefault(key.lower(), []).append(value)
        host = b"".join(headers.get(b"host", [])[:1]).decode("latin-1")
        if len(headers.get(b"host", [])) != 1 or not (self.any_host or _host_name(host) in self.hosts):
            shown = host[:100] or "(none)"
            await _send_error(send, 400, f"Host header {shown!r} is not allowed (start the server with "
                                         f"--allowed-host NAME to serve under another name)")
            return
        origin = b"".join(headers.get(b"origin", [])[:1]).decode("latin-1")
        if origin and not _same_origin(origin, host):
            await _send_error(send, 403, f"a request from the web page at {origin[:100]!r} is refused: the service "
                                         f"answers its own page only")
            return
        length = headers.get(b"content-length", [b"0"])[0]
        if not length.isdigit():
            await _send_error(send, 400, "invalid Content-Length")
            return
        if int(length) > self.max_body:
            await _send_error(send, 413, f"upload larger than {self.limits.max_upload_mb:g} MB")
            return
        await self._guarded(scope, receive, send, int(length) > 0 or b"transfer-encoding" in headers)

    async def _guarded(self, scope: dict[str, Any], receive: Any, send: Any, expects_body: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout_s
        state = {"received": 0, "body_done": False, "refused": False, "started": False}

        async def refuse(status: int, message: str) -> dict[str, Any]:
            if not state["started"]:
                state["refused"] = True
                await _send_error(send, status, message)
            return {"type": "http.disconnect"}  # the app stops reading; its own response is dropped below

        async def guarded_receive() -> dict[str, Any]:
            if state["refused"]:
                return {"type": "http.disconnect"}
            if state["body_done"]:  # the app waiting for a disconnect: no deadline applies
                return await receive()
            try:
                # a timeout scope, not wait_for: no task per body chunk (a one-chunk upload's whole cost here)
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                return await refuse(408, f"the request body did not arrive within {self.limits.body_timeout_s:g} s")
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body:  # a body sent without Content-Length (chunked)
                    return await refuse(413, f"upload larger than {self.limits.max_upload_mb:g} MB")
                state["body_done"] = not message.get("more_body", False)
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if state["refused"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
                extra = list(_SECURITY_HEADERS)
                if expects_body and not state["body_done"]:
                    # answered without reading the body (a 404, a 405): close rather than read the rest
                    extra.append((b"connection", b"close"))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not state["refused"]:
                raise  # the app's own failure (its handlers already answered what they could)


_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),  # no foreign page frames ours (clickjacking the Record button)
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
]


async def _send_error(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *_SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})


def _host_name(host: str) -> str | None:
    """The name in a Host header ('[::1]:8000' -> '::1', 'LocalHost:80' -> 'localhost'); None if malformed."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1:] if end > 0 else "?"
        return host[1:end] if rest == "" or (rest[:1] == ":" and rest[1:].isdigit()) else None
    name, _, port = host.partition(":")
    if ":" in port or (port and not port.isdigit()):
        return None
    return name or None


def _same_origin(origin: str, host: str) -> bool:
    """The Origin header names this server as the browser reached it (the Host header): our own page."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()


# ------------------------------------------------------------------------------------------ running it


_ENV = "AFFECTUS_SERVE_CONFIG"  # the run and limits, for `--workers N` processes (app_from_env)


def run_server(application: Any, host: str, port: int, limits: Limits, log_level: str = "info",
               access_log: bool = True) -> None:
    """uvicorn with the limits that are the server's, not the app's: the header timeout, connection count,
    keep-alive and graceful-shutdown time; one JSON line per request on stdout unless `access_log` is off."""
    import uvicorn

    config = uvicorn.Config(application, host=host, port=port, log_level=log_level,
                            http=_header_timeout_protocol(limits.header_timeout_s),
                            limit_concurrency=limits.max_connections, timeout_keep_alive=5,
                            timeout_graceful_shutdown=SHUTDOWN_S, server_header=False,
                            access_log=False, log_config=_log_config(access_log))
    _freeze()
    uvicorn.Server(config).run()


def run_workers(run_dir: str | Path, host: str, port: int, limits: Limits, workers: int, log_level: str = "info",
                access_log: bool = True) -> None:
    """`workers` server processes sharing one listening socket (uvicorn's supervisor: it restarts a worker
    that dies and stops them all on SIGTERM / SIGINT). Each loads the run itself (`app_from_env`) and has
    its own batcher, clip workers and slots, so the limits apply per process. /metrics adds up every
    process's values (prometheus_client's multiprocess mode, in a temporary folder removed at exit)."""
    import dataclasses

    import uvicorn

    metrics_dir = tempfile.mkdtemp(prefix="affectus-serve-metrics-")
    os.environ[_ENV] = json.dumps({"run": str(run_dir), "limits": dataclasses.asdict(limits)})
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        # the worker processes are spawned: the app and protocol travel as import strings, their settings
        # in the environment
        uvicorn.run("affectus.inference.service:app_from_env", factory=True, workers=workers, host=host, port=port,
                    log_level=log_level, http="affectus.inference.service:WorkerProtocol",
                    limit_concurrency=limits.max_connections, timeout_keep_alive=5,
                    timeout_graceful_shutdown=SHUTDOWN_S, server_header=False, access_log=False,
                    log_config=_log_config(access_log))
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def app_from_env() -> Any:
    """The app of one `--workers` process, from the settings its parent put in the environment."""
    settings = json.loads(os.environ[_ENV])
    values = settings["limits"]
    values["allowed_hosts"] = tuple(values["allowed_hosts"])
    app = create_app(settings["run"], Limits(**values))
    _freeze()
    return app


def _freeze() -> None:
    """The run, torch and the app are loaded: move them out of the garbage collector's passes. A full
    pass walks every long-lived object, and its pause lands on whichever requests are in flight (with
    it, p99 at 50 clients was 155-168 ms; without, 53-70 ms: benchmarks/README.md)."""
    import gc

    gc.collect()
    gc.freeze()


def __getattr__(name: str) -> Any:
    if name == "WorkerProtocol":  # the header-timeout protocol of a `--workers` process (an import string)
        return _header_timeout_protocol(json.loads(os.environ[_ENV])["limits"]["header_timeout_s"])
    raise AttributeError(name)


def _log_config(access_log: bool) -> dict[str, Any]:
    """uvicorn's logging, plus the access log (telemetry.py): one JSON object a line, on stdout."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["line"] = {"format": "%(message)s"}
    config["handlers"]["access_json"] = {"formatter": "line", "class": "logging.StreamHandler",
                                         "stream": "ext://sys.stdout"}
    config["loggers"]["affectus.access"] = {"handlers": ["access_json"], "level": "INFO" if access_log else "WARNING",
                                            "propagate": False}
    return config


def _header_timeout_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete `seconds` after
    it opened (or after its previous response): uvicorn itself waits for them forever."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # a request's headers are in
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._arm()  # waiting for the next request's headers

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(seconds, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol

