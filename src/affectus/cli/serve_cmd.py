"""`affectus serve RUN`: the run behind an HTTP service with a web page (inference/service.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from affectus.cli import app
from affectus.errors import AffectusError


@app.command()
def serve(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="a finished run directory")],
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.001)] = 50.0,
    max_clip_s: Annotated[float, typer.Option("--max-clip-s", min=0.1, help="longest clip accepted")] = 60.0,
    max_concurrent: Annotated[int, typer.Option("--max-concurrent", min=1, help="clip extractions at once")] = 2,
    timeout_s: Annotated[float, typer.Option("--timeout-s", min=1.0, help="per request")] = 120.0,
) -> None:
    """Serve RUN: POST /predict (a clip or a features .npz, never a pickle), GET /health, /docs, and a page at /."""
    try:
        import uvicorn
    except ImportError:
        raise AffectusError("affectus serve needs the serve extra: pip install 'affectus[serve]'") from None
    from affectus.inference.service import Limits, create_app

    application = create_app(run_dir, Limits(max_upload_mb, max_clip_s, max_concurrent, timeout_s))
    uvicorn.run(application, host=host, port=port, log_level="info")
