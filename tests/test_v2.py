"""The Open Inference Protocol (KServe v2) beside /predict, driven by a real client of that protocol
(tritonclient's InferenceServerClient, over a loopback socket), plus /metrics scraped in Prometheus'
text format, batched-vs-alone answers, the protocol's errors and a full queue's 503 with Retry-After."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from conftest import served_on_loopback

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

TINY = {"seq_lens": {"text": 4, "audio": 6, "vision": 5}, "dims": {"text": 12, "audio": 5, "vision": 7}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from affectus.cli import main
    from affectus.data.mmsa import write_pickle
    from affectus.data.synthetic import SynthConfig, generate

    root = tmp_path_factory.mktemp("v2")
    raw = generate(SynthConfig(n_train=40, n_valid=8, n_test=8, seed=2, **TINY))
    write_pickle(raw, root / "tiny.pkl")
    # CMC: a router (modality weights) and per-modality calls, so every output of the protocol is there
    assert main(["train", "--data", str(root / "tiny.pkl"), "--out", str(root / "run"), "--set", "model.layers=1",
                 "--set", "model.heads=2", "--set", "train.epochs=1", "--set", "train.batch_size=16",
                 "--threads", "1", "--quiet"]) == 0
    return root / "run"


def _samples(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {m: rng.normal(size=(n, TINY["seq_lens"][m], TINY["dims"][m])).astype(np.float32)
            for m in ("text", "audio", "vision")}


def _inputs(arrays: dict[str, np.ndarray], binary: bool = True) -> list:
    import tritonclient.http as triton

    out = []
    for name, a in arrays.items():
        datatype = {"f": "FP32", "i": "INT64", "b": "BOOL"}[a.dtype.kind]
        t = triton.InferInput(name, list(a.shape), datatype)
        t.set_data_from_numpy(a, binary_data=binary)
        out.append(t)
    return out


def test_tritonclient_talks_to_the_server(run):
    triton = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    from affectus.inference.predictor import load
    from affectus.inference.service import create_app

    with served_on_loopback(create_app(run)) as url:
        client = triton.InferenceServerClient(url.removeprefix("http://"), connection_timeout=10, network_timeout=30)
        try:
            assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("run")
            meta = client.get_model_metadata("run")
            inputs = {t["name"]: t for t in meta["inputs"]}
            assert inputs["audio"] == {"name": "audio", "datatype": "FP32", "shape": [-1, -1, 5]}
            assert inputs["available"]["datatype"] == "BOOL" and inputs["text_lengths"]["datatype"] == "INT64"
            assert {"probabilities", "verdict", "modality_verdicts", "modality_weights"} <= {
                t["name"] for t in meta["outputs"]}

            arrays = _samples(3)
            arrays["audio_lengths"] = np.array([6, 2, 1], np.int64)
            arrays["available"] = np.array([[1, 1, 1], [1, 0, 1], [0, 1, 1]], bool)
            alone = load(run).predict({k: v for k, v in arrays.items() if k != "available"},
                                      available=None)  # the reference without the mask, below with it
            for binary in (True, False):  # the binary tensor extension and plain JSON
                result = client.infer("run", _inputs(arrays, binary), outputs=[
                    triton.InferRequestedOutput(n, binary_data=binary)
                    for n in ("probabilities", "verdict", "modality_verdicts", "modality_weights")])
                probs = result.as_numpy("probabilities")
                assert probs.shape == (3, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
                verdicts = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("verdict")]
                assert set(verdicts) <= {"negative", "neutral", "positive"}
                calls = result.as_numpy("modality_verdicts")
                assert calls.shape == (3, 3) and calls[1, 1] in (b"", "") and calls[2, 0] in (b"", "")
                assert np.allclose(result.as_numpy("modality_weights").sum(1), 1, atol=1e-5)
            # the first sample has every modality: the answer is the predictor's own
            assert np.allclose(probs[0], alone.probabilities[0], atol=1e-5)

            with pytest.raises(InferenceServerException, match="unknown input 'txt'"):
                client.infer("run", _inputs({"txt": arrays["text"], "audio": arrays["audio"],
                                             "vision": arrays["vision"]}))
            with pytest.raises(InferenceServerException, match="unknown model"):
                client.get_model_metadata("other")
        finally:
            client.close()


def _post(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/run/infer", content=json.dumps(body), timeout=30)


def _tensor(name: str, a: np.ndarray, datatype: str = "FP32") -> dict:
    return {"name": name, "datatype": datatype, "shape": list(a.shape), "data": a.reshape(-1).tolist()}


def test_malformed_requests_get_a_400_in_the_protocols_format(run):
    from affectus.inference.service import Limits, create_app

    s = _samples(5)
    good = [_tensor(m, s[m][:1]) for m in ("text", "audio", "vision")]
    cases = [
        ({"inputs": [*good[:2], {**good[2], "name": "video"}]}, "unknown input 'video'"),
        ({"inputs": [*good[:2], {**good[2], "datatype": "FP64"}]}, "datatype 'FP64', expected FP32"),
        ({"inputs": [*good[:2], {**good[2], "shape": [1, 5, 8]}]}, "expected [-1, -1, 7]"),
        ({"inputs": [*good[:2], {**good[2], "data": [0.5] * 3}]}, "3 values, its shape holds 35"),
        ({"inputs": good[:2]}, "missing input(s) vision"),
        ({"inputs": [*good, _tensor("text_lengths", np.array([9]), "INT64")]}, "outside [0, 4]"),
        ({"inputs": [_tensor(m, s[m][:3]) for m in ("text", "audio", "vision")]}, "over the server's --max-batch 2"),
        ({"inputs": good, "outputs": [{"name": "nope"}]}, "unknown output 'nope'"),
    ]
    with served_on_loopback(create_app(run, Limits(max_batch=2))) as url:
        for body, needle in cases:
            r = _post(url, body)
            assert r.status_code == 400 and needle in r.json()["error"], (needle, r.text)
        r = httpx.post(f"{url}/v2/models/run/infer", content=b"{not json", timeout=30)
        assert r.status_code == 400 and "not JSON" in r.json()["error"]
        r = _post(url, {"inputs": good})
        assert r.status_code == 200 and [o["name"] for o in r.json()["outputs"]][:2] == ["probabilities", "verdict"]
        # the request guard covers the protocol too: a foreign page is refused before anything is read
        r = httpx.post(f"{url}/v2/models/run/infer", content=json.dumps({"inputs": good}),
                       headers={"Origin": "http://evil.example"}, timeout=30)
        assert r.status_code == 403


def test_batched_answers_equal_the_answers_alone(run):
    """Requests that share a forward get what each gets alone (different lengths never share one)."""
    from affectus.inference.predictor import load
    from affectus.inference.service import Limits, create_app

    s = _samples(12, seed=1)
    lengths = np.array([4, 3, 1, 2, 4, 4, 1, 2, 3, 4, 2, 1])
    predictor = load(run)
    alone = [predictor.predict({**{m: s[m][i:i + 1] for m in s}, "text_lengths": lengths[i:i + 1]}).probabilities[0]
             for i in range(12)]

    async def one(c: httpx.AsyncClient, i: int) -> np.ndarray:
        # every third request has a shorter audio sequence: it is batched only with its own kind
        audio = s["audio"][i:i + 1, : 6 if i % 3 else 4]
        body = {"inputs": [_tensor("text", s["text"][i:i + 1]), _tensor("audio", audio),
                           _tensor("vision", s["vision"][i:i + 1]),
                           _tensor("text_lengths", lengths[i:i + 1], "INT64")]}
        r = await c.post("/v2/models/run/infer", content=json.dumps(body))
        assert r.status_code == 200, r.text
        return np.array(r.json()["outputs"][0]["data"], np.float32)

    async def all_at_once() -> list[np.ndarray]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            return await asyncio.wait_for(asyncio.gather(*(one(c, i) for i in range(12))), timeout=60)

    app = create_app(run, Limits(max_batch=8, max_wait_ms=50))
    with served_on_loopback(app) as url:
        got = asyncio.run(all_at_once())
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    short = [predictor.predict({"text": s["text"][i:i + 1], "audio": s["audio"][i:i + 1, :4],
                                "vision": s["vision"][i:i + 1], "text_lengths": lengths[i:i + 1]}).probabilities[0]
             for i in range(0, 12, 3)]
    for i in range(12):
        want = short[i // 3] if i % 3 == 0 else alone[i]
        assert np.allclose(got[i], want, atol=1e-5), i
    # some forward held more than one request (50 ms of waiting for 12 concurrent ones)
    counts = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
              if line.startswith("affectus_batch_size_")}
    assert counts["affectus_batch_size_count"] < 12 + 1  # the probe forward at start-up is not counted
    assert counts["affectus_batch_size_sum"] == 12


def test_metrics_are_scraped_in_prometheus_format(run, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from affectus.data.mmsa import dataset_from_raw
    from affectus.data.npz import write_npz
    from affectus.data.synthetic import SynthConfig, generate
    from affectus.inference.service import create_app

    raw = generate(SynthConfig(n_train=4, n_valid=2, n_test=2, seed=5, **TINY))
    write_npz(dataset_from_raw({"test": raw["test"]}), tmp_path / "req.npz")
    with served_on_loopback(create_app(run)) as url:
        assert httpx.post(f"{url}/predict", files={"file": ("req.npz", (tmp_path / "req.npz").read_bytes())},
                          timeout=30).status_code == 200
        for _ in range(2):  # the second one counted through the label set's cached children
            assert httpx.post(f"{url}/predict", files={"file": ("x.txt", b"hello")}, timeout=30).status_code == 415
        r = httpx.get(f"{url}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(r.text) for s in family.samples}
    assert samples[("affectus_requests_total", (("method", "POST"), ("route", "/predict"), ("status", "200")))] == 1
    assert samples[("affectus_errors_total", (("status", "415"),))] == 2
    assert samples[("affectus_requests_total", (("method", "POST"), ("route", "/predict"), ("status", "415")))] == 2
    assert samples[("affectus_request_duration_seconds_count", (("route", "/predict"),))] == 3
    assert samples[("affectus_batch_size_sum", ())] == 2  # the upload's two samples, in one forward
    assert samples[("affectus_queue_samples", ())] == 0
    assert samples[("affectus_clip_slots", ())] == 2 and samples[("affectus_clip_slots_busy", ())] == 0


def test_a_full_queue_answers_503_with_retry_after(run):
    """Nothing is dropped silently: beyond the queue's bound a request is told to come back."""
    from affectus.inference.service import Limits, create_app

    s = _samples(4)
    body = json.dumps({"inputs": [_tensor(m, s[m][:4]) for m in ("text", "audio", "vision")]})

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            return await asyncio.wait_for(asyncio.gather(
                *(c.post("/v2/models/run/infer", content=body) for _ in range(20))), timeout=60)

    # a queue of 4 samples and a 200 ms gathering window: of 20 requests of 4 samples, most find it full
    with served_on_loopback(create_app(run, Limits(max_batch=4, max_queue=4, max_wait_ms=200))) as url:
        answers = asyncio.run(burst())
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "queue" in busy.json()["error"]
