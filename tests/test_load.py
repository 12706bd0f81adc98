"""A load test on loopback: 50 concurrent clients send features-only requests to a served run. No request
fails, memory stays bounded, and the test stops by itself (every client has a deadline)."""

from __future__ import annotations

import asyncio
import resource
import time

import pytest

from conftest import served_on_loopback

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.slow  # 50 clients against a real server

CLIENTS, ROUNDS = 50, 3


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_fifty_concurrent_clients(tmp_path):
    from affectus.cli import main
    from affectus.data.mmsa import dataset_from_raw, write_pickle
    from affectus.data.npz import write_npz
    from affectus.data.synthetic import SynthConfig, generate
    from affectus.inference.service import create_app

    raw = generate(SynthConfig(n_train=40, n_valid=8, n_test=8, seed=2, seq_lens={"text": 4, "audio": 6, "vision": 5},
                               dims={"text": 12, "audio": 5, "vision": 7}))
    write_pickle(raw, tmp_path / "tiny.pkl")
    small = {"test": raw["test"]}  # one split of 8 samples per request
    write_npz(dataset_from_raw(small), tmp_path / "req.npz")
    body = (tmp_path / "req.npz").read_bytes()
    assert main(["train", "--data", str(tmp_path / "tiny.pkl"), "--model", "late_fusion", "--out", str(tmp_path / "run"),
                 "--set", "train.epochs=1", "--set", "train.batch_size=16", "--threads", "1", "--quiet"]) == 0
    async def client(c: httpx.AsyncClient) -> list[int]:
        codes = []
        for _ in range(ROUNDS):
            r = await c.post("/predict", files={"file": ("req.npz", body)})
            codes.append(r.status_code)
            assert len(r.json()["predictions"]) == 8
        return codes

    async def run_all() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            results = await asyncio.wait_for(asyncio.gather(*(client(c) for _ in range(CLIENTS))), timeout=120)
        return [code for codes in results for code in codes]

    with served_on_loopback(create_app(tmp_path / "run")) as url:
        asyncio.run(run_all())  # warm-up round: imports, first allocations
        before = _rss_mb()
        started = time.perf_counter()
        codes = asyncio.run(run_all())
        seconds = time.perf_counter() - started
        grown = _rss_mb() - before
    assert codes == [200] * (CLIENTS * ROUNDS)
    assert grown < 200, f"peak memory grew {grown:.0f} MB over {CLIENTS * ROUNDS} requests"
    print(f"{CLIENTS * ROUNDS} requests from {CLIENTS} clients in {seconds:.1f} s "
          f"({CLIENTS * ROUNDS / seconds:.0f} requests/s); peak RSS grew {grown:.0f} MB")
