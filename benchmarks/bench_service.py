"""Service throughput (issue 11): `affectus serve` on loopback under concurrent clients, as JSON.

    python benchmarks/bench_service.py [--clients 50] [--requests 600] [--clip-requests 6] [--out FILE]

Starts `affectus serve` in its own process on a free loopback port (so the clients' work does not share
the server's interpreter, and the server's peak RSS is its own), then, with N concurrent httpx clients:

1. GET /health: the reference. It runs no model, so its rate is what this machine's HTTP stack, event
   loop and JSON give right now; `ratio_to_health` (predict req/s / health req/s) is the number to compare
   across machines and noisy runs.
2. POST /predict with a features-only .npz of 8 samples (the run's widths): req/s, p50/p99 latency, errors.
3. POST /predict with a clip (test-bed clip: espeak-ng speech, scikit-image's face, ffmpeg), at most
   `--max-concurrent` at once as the service allows; 429 answers are counted apart from errors.

The run is `tests/media_clips.media_run`: random features of the default extractors' widths, one epoch of
late fusion. It times the service, not a model's quality. Every request has a deadline; the script ends
by itself. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import percentiles


async def _load(c, clients: int, total: int, send, timeout_s: float) -> dict[str, object]:
    """`total` requests from `clients` concurrent workers sharing the client `c` (its connection pool);
    each request's latency and status."""
    import httpx

    todo = list(range(total))
    ms: list[float] = []
    codes: dict[int, int] = {}
    failures: list[str] = []

    async def worker() -> None:
        while todo:
            todo.pop()
            t0 = time.perf_counter()
            try:
                r = await send(c)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    ms.append(1000 * (time.perf_counter() - t0))
            except httpx.HTTPError as err:
                failures.append(type(err).__name__)

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(min(clients, total)))),
                           timeout=timeout_s * (total / max(1, min(clients, total)) + 2))
    seconds = time.perf_counter() - started
    ok = codes.get(200, 0)
    return {"requests": total, "ok": ok, "seconds": round(seconds, 3), "req_per_s": round(ok / seconds, 2),
            **percentiles(ms, digits=2), "status_counts": {str(k): v for k, v in sorted(codes.items())},
            "errors": total - ok - codes.get(429, 0), "busy_429": codes.get(429, 0),
            "transport_errors": len(failures)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=600, help="health and features requests, each")
    ap.add_argument("--clip-requests", type=int, default=6)
    ap.add_argument("--max-concurrent", type=int, default=2, help="the service's clip extractions at once")
    ap.add_argument("--timeout-s", type=float, default=120.0, help="per request")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()

    import httpx

    from affectus.data.mmsa import load_dataset
    from affectus.data.npz import write_npz
    from affectus.data.types import MERDataset
    from media_clips import ClipSpec, make_clip, media_run, missing_tools

    root = Path(tempfile.mkdtemp(prefix="bench-service-"))
    with contextlib.redirect_stdout(sys.stderr):  # the training summary: stdout carries only the JSON
        run = media_run(root)
    # one split of 8 samples per request (the run's own widths)
    write_npz(MERDataset({"test": load_dataset(root / "media.npz")["test"]}), root / "req.npz")
    body = (root / "req.npz").read_bytes()
    clip = None
    if not missing_tools():
        clip = root / "clip.mp4"
        make_clip(ClipSpec("b", "clip", "I love this, it is wonderful.", 0.8, "test"), clip)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen(
        [sys.executable, "-m", "affectus", "serve", str(run), "--port", str(port), "--max-concurrent",
         str(args.max_concurrent), "--timeout-s", str(args.timeout_s)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.2)

        async def health(c):
            return await c.get("/health")

        async def features(c):
            return await c.post("/predict", files={"file": ("req.npz", body)})

        clip_bytes = clip.read_bytes() if clip is not None else b""

        async def one_clip(c):
            return await c.post("/predict", files={"file": ("clip.mp4", clip_bytes)},
                                data={"transcript": "I love this, it is wonderful."})

        async def measure() -> tuple[dict, dict, dict | None]:
            n = args.clients
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
            async with httpx.AsyncClient(base_url=url, timeout=args.timeout_s, limits=limits) as c:
                # warm-up at full concurrency: every connection opened (keep-alive), imports and first
                # allocations done, the clip extractors built; then the steady state is timed
                await _load(c, n, 2 * n, health, args.timeout_s)
                await _load(c, n, 2 * n, features, args.timeout_s)
                if clip is not None:
                    await _load(c, 1, 1, one_clip, args.timeout_s)
                ref = await _load(c, n, args.requests, health, args.timeout_s)
                feats = await _load(c, n, args.requests, features, args.timeout_s)
                clips = None
                if clip is not None:
                    clips = await _load(c, args.max_concurrent, args.clip_requests, one_clip, args.timeout_s)
            return ref, feats, clips

        ref, feats, clips = asyncio.run(measure())
        rss = _peak_rss_mb(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    result = {
        "clients": args.clients, "cpus": os.cpu_count(), "server": "affectus serve (uvicorn, 1 process)",
        "health_reference": ref,
        "features_npz_8_samples": {**feats, "ratio_to_health": round(feats["req_per_s"] / ref["req_per_s"], 4)},
        "clip": clips if clips is not None else f"skipped: media tools missing ({', '.join(missing_tools())})",
        "server_peak_rss_mb": rss,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
