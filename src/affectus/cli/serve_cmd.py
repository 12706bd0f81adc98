"""`affectus serve RUN`: the run behind an HTTP service with a web page (inference/service.py)."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Annotated

import typer

from affectus.cli import app
from affectus.errors import AffectusError


@app.command()
def serve(
    run_dir: Annotated[Path | None, typer.Argument(
        metavar="RUN", help="a finished run directory (none with --pretrained)")] = None,
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.001, help="largest upload")] = 50.0,
    max_clip_s: Annotated[float, typer.Option("--max-clip-s", min=0.1, help="longest clip accepted")] = 60.0,
    max_concurrent: Annotated[int, typer.Option(
        "--max-concurrent", min=1, help="clip extractions at once (one worker process each)")] = 2,
    timeout_s: Annotated[float, typer.Option("--timeout-s", min=1.0, help="per request")] = 120.0,
    max_npz_concurrent: Annotated[int, typer.Option(
        "--max-npz-concurrent", min=1, help="features (.npz) uploads read and checked at once")] = 2,
    max_samples: Annotated[int, typer.Option("--max-samples", min=1, help="samples in one .npz upload")] = 10_000,
    max_decompressed_mb: Annotated[float, typer.Option(
        "--max-decompressed-mb", min=0.001, help="an .npz upload's arrays once decompressed")] = 256.0,
    max_seq_len: Annotated[int, typer.Option(
        "--max-seq-len", min=1, help="feature sequence steps in an .npz upload")] = 1024,
    header_timeout_s: Annotated[float, typer.Option(
        "--header-timeout-s", min=0.1, help="a connection's request headers must arrive within this")] = 10.0,
    body_timeout_s: Annotated[float, typer.Option(
        "--body-timeout-s", min=0.1, help="a request's body must arrive within this")] = 60.0,
    max_connections: Annotated[int, typer.Option(
        "--max-connections", min=1, help="open connections at once (503 beyond)")] = 100,
    max_batch: Annotated[int, typer.Option(
        "--max-batch", min=1, help="samples in one forward of the dynamic batcher, and in one v2 infer request")] = 32,
    max_wait_ms: Annotated[float, typer.Option(
        "--max-wait-ms", min=0.0, help="how long the batcher gathers requests once one waits")] = 2.0,
    max_queue: Annotated[int, typer.Option(
        "--max-queue", min=1, help="samples waiting for a forward (503 with Retry-After beyond)")] = 1024,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, help="server processes on the one port (each loads the run; limits are per process)")] = 1,
    access_log: Annotated[bool, typer.Option(
        "--access-log/--no-access-log", help="one JSON line per request on stdout")] = True,
    allowed_host: Annotated[list[str] | None, typer.Option(
        "--allowed-host", help="a Host header name to accept, repeatable (default: localhost, 127.0.0.1, ::1 "
                               "and the --host address); '*' accepts any, which lets DNS-rebinding pages in")] = None,
    pretrained: Annotated[list[str] | None, typer.Option(
        "--pretrained", help="serve pretrained experts instead of a run (repeatable, or a,b; `affectus pretrained`)")] = None,
) -> None:
    """Serve RUN: POST /predict (a clip or a features .npz, never a pickle), the Open Inference Protocol (/v2),
    GET /health, /metrics (Prometheus), /docs, and a page at /. With --pretrained NAME: the experts, no run
    (POST /predict a clip and/or a transcript, GET /health, and a page)."""
    if pretrained and run_dir is not None:
        raise AffectusError("serve: give RUN or --pretrained NAME, not both")
    if not pretrained and run_dir is None:
        raise AffectusError("serve: give RUN (a finished run directory) or --pretrained NAME (`affectus pretrained`)")
    if pretrained and workers != 1:
        raise AffectusError("serve --pretrained: --workers is for runs; the experts serve from one process")
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise AffectusError("affectus serve needs the serve extra: pip install 'affectus[serve]'") from None
    from affectus.inference.service import LOOPBACK_HOSTS, Limits, create_app, run_server, run_workers

    hosts = list(allowed_host) if allowed_host else list(LOOPBACK_HOSTS)
    if not allowed_host and not _wildcard(host):
        hosts.append(host)  # the address the server was asked to listen on is a name it can be reached by
    elif not allowed_host:
        print(f"warning: listening on {host}, but only Host headers localhost / 127.0.0.1 / ::1 are accepted; "
              f"add --allowed-host NAME for each name or address clients use", file=sys.stderr)
    limits = Limits(max_upload_mb=max_upload_mb, max_clip_s=max_clip_s, max_concurrent=max_concurrent,
                    timeout_s=timeout_s, max_npz_concurrent=max_npz_concurrent, max_samples=max_samples,
                    max_decompressed_mb=max_decompressed_mb, max_seq_len=max_seq_len,
                    header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s,
                    max_connections=max_connections, allowed_hosts=tuple(hosts), max_batch=max_batch,
                    max_wait_ms=max_wait_ms, max_queue=max_queue)
    if pretrained:
        from affectus.inference.pretrained_service import create_pretrained_app

        run_server(create_pretrained_app(pretrained, limits), host, port, limits, access_log=access_log)
        return
    if workers == 1:
        run_server(create_app(run_dir, limits), host, port, limits, access_log=access_log)
        return
    from affectus.inference.predictor import load

    load(run_dir)  # a run that does not load is one error line here, not a crash in each worker
    run_workers(run_dir, host, port, limits, workers, access_log=access_log)


def _wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False
