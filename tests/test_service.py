"""`affectus serve`: the HTTP service in-process (FastAPI's TestClient, no socket): health, the page,
features uploads, and the refusals (pickles, unknown types, size, concurrency), each a 4xx with JSON."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from affectus.cli import main
from affectus.data.mmsa import dataset_from_raw, write_npz, write_pickle
from affectus.data.synthetic import SynthConfig, generate
from affectus.inference.service import Limits, create_app

TINY = {"seq_lens": {"text": 4, "audio": 6, "vision": 5}, "dims": {"text": 12, "audio": 5, "vision": 7}}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    raw = generate(SynthConfig(n_train=40, n_valid=12, n_test=12, seed=2, **TINY))
    data = root / "tiny.pkl"
    write_pickle(raw, data)
    npz = root / "tiny.npz"
    write_npz(dataset_from_raw(raw), npz)
    run = root / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--set", "model.layers=1", "--set", "model.heads=2",
                 "--set", "train.epochs=1", "--set", "train.batch_size=16", "--threads", "1", "--quiet"]) == 0
    return {"run": run, "npz": npz, "pkl": data}


def _client(run: Path, limits: Limits | None = None) -> TestClient:
    # a loopback name: the service refuses Host headers off its allow-list (TestClient's default is "testserver")
    return TestClient(create_app(run, limits), base_url="http://localhost")


def test_health_page_and_docs(served):
    client = _client(served["run"])
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model"] == "cmc" and h["classes"] == ["negative", "neutral", "positive"]
    page = client.get("/")
    assert page.status_code == 200 and '<input type="file"' in page.text and "predict" in page.text
    assert client.get("/docs").status_code == 200 and "/predict" in client.get("/openapi.json").text


def test_features_upload_is_explained(served):
    client = _client(served["run"])
    before = set(Path(tempfile.gettempdir()).glob("affectus-serve-*"))
    r = client.post("/predict", files={"file": ("tiny.npz", served["npz"].read_bytes())})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 64 and {p["split"] for p in preds} == {"train", "valid", "test"}
    p = preds[0]
    assert p["verdict"] in p["probabilities"] and set(p["modalities"]) == {"text", "audio", "vision"}
    assert set(Path(tempfile.gettempdir()).glob("affectus-serve-*")) == before  # no temp files left behind


@pytest.mark.parametrize(("name", "payload", "status", "needle"), [
    ("data.pkl", None, 415, "pickles are never accepted"),
    ("notes.txt", b"hello", 415, "expected a clip"),
    ("empty.npz", b"", 400, "empty upload"),
    ("broken.npz", b"PK\x03\x04 not really a zip", 422, "not a readable affectus .npz"),
])
def test_refusals_are_4xx_with_a_json_error(served, name, payload, status, needle):
    client = _client(served["run"])
    body = served["pkl"].read_bytes() if payload is None else payload
    r = client.post("/predict", files={"file": (name, body)})
    assert r.status_code == status and needle in r.json()["error"]


def test_upload_size_and_concurrency_limits(served):
    client = _client(served["run"], Limits(max_upload_mb=0.001))
    r = client.post("/predict", files={"file": ("tiny.npz", served["npz"].read_bytes())})
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    # a clip for a run not trained on extract-dataset features: one clear 422 naming no server path
    client = _client(served["run"])
    r = client.post("/predict", files={"file": ("clip.mp4", b"\x00\x00\x00\x18ftypmp42")})
    assert r.status_code == 422 and "does not know how to extract a clip" in r.json()["error"]
    assert str(served["run"].parent) not in r.json()["error"]
