"""`affectus serve`: the HTTP service in-process (FastAPI's TestClient, no socket): health, the page,
features uploads, and the refusals (pickles, unknown types, size), each a 4xx with JSON; odd file names,
errors without server paths, NaN warnings, the .npz pre-read check and the Host / Origin parsing.
tests/test_serve_process.py runs it as a real process (uploads, timeouts, slow clients, SIGTERM)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from affectus.cli import main
from affectus.data.mmsa import dataset_from_raw, write_pickle
from affectus.data.npz import write_npz
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


# ------------------------------------------------------------------------------------------ issue 20: the form read by the route


def test_a_form_without_its_file_is_a_json_4xx(served):
    """/predict reads its multipart form itself (not through FastAPI's File() / Form() parameters): a form
    without the file, a transcript sent as a file, or a body that is no form at all are still 4xx JSON
    errors, and /openapi.json still describes the form."""
    client = _client(served["run"])
    r = client.post("/predict", data={"transcript": "hello"})
    assert r.status_code == 422 and "field 'file'" in r.json()["error"]
    r = client.post("/predict", files={"file": ("tiny.npz", served["npz"].read_bytes()), "transcript": ("t.txt", b"hi")})
    assert r.status_code == 422 and "transcript" in r.json()["error"]
    r = client.post("/predict", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"
    r = client.post("/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400 and "boundary" in r.json()["error"]
    # a type that only starts like a form is no form (as Starlette reads it), small body or not
    body = _form(("file", "tiny.npz", served["npz"].read_bytes()))
    r = client.post("/predict", content=body, headers={"content-type": "multipart/form-datax; boundary=b0und"})
    assert r.status_code == 422 and "field 'file'" in r.json()["error"]
    r = client.post("/predict", content=body, headers={"content-type": "Multipart/Form-Data; boundary=b0und"})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 64
    form = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert form["multipart/form-data"]["schema"]["required"] == ["file"]


def _form(*parts: tuple[str, str | None, bytes], boundary: str = "b0und") -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + ("" if filename is None else f'; filename="{filename}"')
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize(("body", "content_type"), [
    (_form(("file", "req.npz", b"PK\x03\x04zip"), ("transcript", None, "héllo".encode())), None),
    (_form(("file", "a.npz", b"first"), ("file", "b.npz", b"second"), ("x", None, b"1")), None),
    (_form(("file", "ünï cødé.npz", b""), ("transcript", None, b"\xff\xfe")), None),  # not UTF-8: read as Latin-1
    (_form(("file", None, b"a text field named file")), None),
    (_form(("transcript", None, "é".encode("latin-1"))), "multipart/form-data; boundary=b0und; charset=latin-1"),
    (b'--b0und\r\nContent-Disposition: form-data; filename="x"\r\n\r\nx\r\n--b0und--\r\n', None),
    (b"--b0und\r\nbroken", None),
    (b"no boundary", "multipart/form-data"),
])
def test_a_small_form_parses_as_starlette_parses_it(body, content_type):
    """A small /predict body is parsed by the route with python-multipart (issue 20): the same fields,
    files, names, decoding and refusals as Starlette's MultiPartParser, which larger bodies still use."""
    import asyncio

    from python_multipart.multipart import parse_options_header
    from starlette.datastructures import Headers
    from starlette.formparsers import MultiPartException, MultiPartParser

    from affectus.inference.service import _FormError, _parse_form

    content_type = content_type or "multipart/form-data; boundary=b0und"
    params = parse_options_header(content_type)[1]

    async def starlette_form():
        async def stream():
            yield body

        return await MultiPartParser(Headers({"content-type": content_type}), stream()).parse()

    async def items(form):
        out = []
        for name, value in form.multi_items():
            if isinstance(value, str):
                out.append((name, value))
            else:
                out.append((name, value.filename, value.size, await value.read()))
        return out

    try:
        want = asyncio.run(items(asyncio.run(starlette_form())))
    except MultiPartException as err:
        with pytest.raises(_FormError, match=err.message.replace(".", "\\.")):
            _parse_form(body, params)
        return
    assert asyncio.run(items(_parse_form(body, params))) == want


@pytest.mark.parametrize("inline", [True, False])
def test_small_uploads_read_on_the_event_loop_answer_as_in_a_slot(served, monkeypatch, inline):
    """A small .npz is read and checked on the event loop (no thread hop), a larger one in a
    --max-npz-concurrent slot: the same answer either way, and the same 4xx for a broken file."""
    from affectus.inference import service

    if not inline:  # every upload through the slot and its thread
        monkeypatch.setattr(service, "_INLINE_BYTES", 0)
    client = _client(served["run"])
    r = client.post("/predict", files={"file": ("tiny.npz", served["npz"].read_bytes())})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    from affectus.data.mmsa import load_dataset
    from affectus.inference.predictor import load

    predictor = load(served["run"])
    ds = load_dataset(served["npz"])
    want = []
    for split in ds.splits.values():
        pred = predictor.predict(split)
        want += [{"id": sid, "split": split.name, **pred.explain(i),
                  **({} if split.raw_text is None else {"transcript": split.raw_text[i]})}
                 for i, sid in enumerate(split.ids)]
    assert [p["id"] for p in preds] == [w["id"] for w in want]
    for got, exp in zip(preds, want):
        assert got["verdict"] == exp["verdict"] and got.keys() == exp.keys()
        assert got["probabilities"] == pytest.approx(exp["probabilities"], abs=1e-6)
    r = client.post("/predict", files={"file": ("broken.npz", b"PK\x03\x04 not really a zip")})
    assert r.status_code == 422 and "not a readable affectus .npz" in r.json()["error"]


def test_a_small_upload_that_inflates_is_read_in_a_slot(served, monkeypatch):
    """What decides the event loop or a slot is the size once decompressed: 1 MB of deflated zeros sent in
    a few kilobytes goes through a --max-npz-concurrent slot (never inflated on the event loop), and the
    answer is the usual one."""
    import io

    import numpy as np

    from affectus.inference import service

    slotted = []
    real = service._read_npz_upload
    monkeypatch.setattr(service, "_read_npz_upload", lambda *a: slotted.append(a[3]) or real(*a))
    with np.load(served["npz"]) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["spare.padding"] = np.zeros((1, 2**18), np.float32)  # 1 MB of zeros, deflated to ~1 KB
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    assert len(buf.getvalue()) < service._INLINE_BYTES < 2**20
    client = _client(served["run"])
    r = client.post("/predict", files={"file": ("inflating.npz", buf.getvalue())})
    assert slotted == ["inflating.npz"]
    assert r.status_code == 200 and len(r.json()["predictions"]) == 64  # a member __meta__ does not list: unread
    r = client.post("/predict", files={"file": ("tiny.npz", served["npz"].read_bytes())})
    assert r.status_code == 200 and slotted == ["inflating.npz"]  # a plain small upload: no slot


def test_a_batch_cut_into_requests_equals_each_request_alone(served):
    """The batcher computes one Prediction for a batch and cuts it into each request's rows: every array of
    every part equals that request's Prediction alone; a request with NaN outputs still fails alone."""
    import dataclasses

    import numpy as np

    from affectus.data.mmsa import load_dataset
    from affectus.errors import AffectusError
    from affectus.inference.batching import Batcher
    from affectus.inference.predictor import load

    predictor = load(served["run"])
    test = load_dataset(served["npz"])["test"]
    parts = [test.subset(np.arange(i, i + n), name="test") for i, n in ((0, 1), (1, 3), (4, 2))]
    batcher = Batcher(predictor, max_batch=32)
    together = batcher._forward(parts)
    for part, got in zip(parts, together):
        alone = batcher._forward([part])[0]
        # and what `affectus predict` gives: the same experts, the same absent-modality treatment
        direct = predictor.predict(part)
        assert (got.experts, got.zero_filled) == (direct.experts, direct.zero_filled)
        assert np.allclose(got.probabilities, direct.probabilities, rtol=0, atol=1e-6)
        for field in dataclasses.fields(alone):
            a, b = getattr(got, field.name), getattr(alone, field.name)
            if isinstance(b, np.ndarray):
                assert a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-6), field.name
            else:
                assert a == b, field.name
    broken = test.subset(np.arange(6, 7), name="test")
    broken.audio[:] = np.inf  # inf features: NaN outputs for this request only
    out = batcher._forward([parts[0], broken, parts[1]])
    assert isinstance(out[1], AffectusError) and not isinstance(out[0], Exception)
    assert np.array_equal(out[2].classes, together[1].classes)


# ------------------------------------------------------------------------------------------ issue 15, in process


@pytest.mark.parametrize("filename", ["a\x00b.mp4", "x" * 300 + ".mp4", "../../etc/" + "y" * 300 + ".npz"])
def test_odd_file_names_get_a_json_answer(served, filename):
    """A NUL byte or a name longer than the file system allows never reaches the disk: the answer is the
    usual JSON (here a 422: the run takes no clips; a 200 for the features file), never a plain-text 500."""
    client = _client(served["run"])
    body = served["npz"].read_bytes() if filename.endswith(".npz") else b"\x00\x00\x00\x18ftypmp42"
    r = client.post("/predict", files={"file": (filename, body)})
    assert r.status_code in (200, 422) and r.headers["content-type"] == "application/json", r.text
    if r.status_code == 200:
        assert len(r.json()["predictions"]) == 64


def test_errors_name_the_upload_not_a_server_path(served):
    client = _client(served["run"])
    r = client.post("/predict", files={"file": ("broken.npz", b"PK\x03\x04 not really a zip")})
    error = r.json()["error"]
    assert r.status_code == 422 and "broken.npz" in error
    assert tempfile.gettempdir() not in error and "affectus-serve" not in error


def test_nan_features_are_reported_in_the_response(served, tmp_path):
    import numpy as np

    with np.load(served["npz"]) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["test.audio"] = arrays["test.audio"].copy()
    arrays["test.audio"][0, 0, :3] = [np.nan, np.inf, -np.inf]
    path = tmp_path / "nan.npz"
    np.savez(path, **arrays)
    r = _client(served["run"]).post("/predict", files={"file": ("nan.npz", path.read_bytes())})
    assert r.status_code == 200, r.text
    assert r.json()["warnings"] == ["test audio: 3 NaN/inf feature value(s) set to 0 before predicting"]
    clean = _client(served["run"]).post("/predict", files={"file": ("tiny.npz", served["npz"].read_bytes())})
    assert clean.json()["warnings"] == []


def _npz(members: dict[str, bytes], compression: int = 0) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _npy(array, shape=None, descr=None) -> bytes:
    """An .npy of `array`; `shape` / `descr` override the header's (a lying header)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    if shape is None:
        np.save(buf, array)
    else:
        header = {"descr": descr or array.dtype.str, "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(buf, header)
        buf.write(array.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("reader", ["check_npz", "read_checked_npz"])
def test_npz_check_refuses_before_reading(served, reader):
    """Every refusal comes from the zip directory and .npy headers; none reads an array (the reading
    variant reads a member's data only after its header passed)."""
    import zipfile

    import numpy as np

    from affectus.data import npz_check
    from affectus.data.npz_check import NpzTooLarge

    def check(data: bytes, **kw) -> None:
        limits = {"max_bytes": 10 * 2**20, "max_samples": 100, "max_seq_len": 50, **kw}
        getattr(npz_check, reader)(data, "up.npz", **limits)

    check(served["npz"].read_bytes())  # a real affectus .npz passes
    f32 = np.zeros((3, 4, 5), np.float32)
    cases = [
        (_npz({"test.audio.npy": _npy(f32)}), {"max_bytes": 100}, NpzTooLarge, "once decompressed"),
        (_npz({"test.audio.npy": _npy(np.zeros((101, 1, 1), np.float32))}), {}, NpzTooLarge, "101 samples"),
        (_npz({"test.audio.npy": _npy(np.zeros((1, 51, 1), np.float32))}), {}, NpzTooLarge, "51 steps"),
        (_npz({"test.text_bert.npy": _npy(np.zeros((1, 3, 51), np.int64))}), {}, NpzTooLarge, "51 steps"),
        (_npz({f"m{i}.npy": _npy(f32) for i in range(300)}), {}, NpzTooLarge, "at most 256"),
        (_npz({"test.audio.npy": _npy(f32, shape=(3000, 4000, 5))}), {}, Exception, "header declares"),
        (_npz({"test.id.npy": _npy(np.zeros(8, np.uint8), shape=(1,), descr="|O")}), {}, Exception, "object array"),
        (_npz({"test.audio.npy": _npy(f32)}, zipfile.ZIP_BZIP2), {}, Exception, "compression method"),
        (_npz({"notes.txt": b"hello"}), {}, Exception, "not a .npy"),
        (b"PK\x03\x04 not really a zip", {}, Exception, "not a readable affectus .npz"),
        (_npz({"test.audio.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': 'x', }  \n"}), {}, Exception, "malformed .npy header"),
        (_npz({"test.audio.npy": b"\x93NUMPY\x09\x00"}), {}, Exception, "format version 9"),
    ]
    real = served["npz"].read_bytes()
    end = real.rfind(b"PK\x05\x06")
    cases.append((real[:end] + b"PK\x06\x07" + bytes(16) + real[end:], {}, NpzTooLarge, "zip64"))
    for data, kw, kind, needle in cases:
        with pytest.raises(kind, match=needle):
            check(data, **kw)


def test_read_checked_npz_gives_what_numpy_reads(served, tmp_path):
    """The one-pass reader returns numpy's own arrays: plain headers, Fortran order, a structured dtype (read
    through the literal parser), deflated members, unicode and 0-d arrays."""
    import io
    import zipfile

    import numpy as np

    from affectus.data.npz_check import read_checked_npz

    arrays = {"a.x": np.arange(24, dtype="<f4").reshape(2, 3, 4), "a.f": np.asfortranarray(np.ones((3, 2), ">i8")),
              "a.s": np.zeros(2, dtype=[("p", "<f4"), ("q", "u1")]), "a.id": np.array(["v$_$1", "é"]),
              "__meta__": np.array('{"x": 1}'), "b.b": np.array([True, False])}
    for compress in (np.savez, np.savez_compressed):
        buf = io.BytesIO()
        compress(buf, **arrays)
        got = read_checked_npz(buf.getvalue(), "up.npz", max_bytes=2**20, max_samples=100, max_seq_len=50)
        with np.load(io.BytesIO(buf.getvalue())) as z:
            assert set(got) == set(z.files)
            for name in z.files:
                assert got[name].dtype == z[name].dtype and np.array_equal(got[name], z[name]), name
                assert got[name].flags.writeable
    real = served["npz"].read_bytes()
    got = read_checked_npz(real, "tiny.npz", max_bytes=2**30, max_samples=10**6, max_seq_len=10**6)
    with np.load(io.BytesIO(real)) as z:
        assert all(np.array_equal(got[n], z[n]) for n in z.files)
    assert zipfile.is_zipfile(io.BytesIO(real))


def test_the_zip_is_read_strictly(served):
    """The upload's zip is read by hand (issue 20): damaged data (a CRC that does not match), a member
    twice, bytes before the zip, a local header that names another member, a deflate stream cut short
    and zip64 sizes are each one clear refusal; numpy's compressed and plain files still read."""
    import io
    import warnings
    import zipfile

    import numpy as np

    from affectus.data.npz_check import NpzTooLarge, read_checked_npz

    def read(data: bytes) -> dict:
        return read_checked_npz(data, "up.npz", max_bytes=2**20, max_samples=100, max_seq_len=50)

    f32 = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    good = _npz({"test.audio.npy": _npy(f32)})
    assert np.array_equal(read(good)["test.audio"], f32)
    at = good.index(f32.tobytes())
    flipped = good[:at] + bytes([good[at] ^ 1]) + good[at + 1:]
    with pytest.raises(Exception, match="size and CRC"):
        read(flipped)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name
        twice = _npz({"test.audio.npy": _npy(f32)})
        buf = io.BytesIO(twice)
        with zipfile.ZipFile(buf, "a") as zf:
            zf.writestr("test.audio.npy", _npy(f32 + 1))
    with pytest.raises(Exception, match="twice"):
        read(buf.getvalue())
    with pytest.raises(Exception, match="does not end at its end record"):
        read(b"#!stub\n" + good)
    other = good.replace(b"test.audio.npy", b"test.vvvvv.npy", 1)  # the local header's name only
    with pytest.raises(Exception, match="names in the directory and the local header differ"):
        read(other)
    deflated = _npz({"test.audio.npy": _npy(f32)}, zipfile.ZIP_DEFLATED)
    assert np.array_equal(read(deflated)["test.audio"], f32)
    end = deflated.rfind(b"PK\x01\x02")
    cut = bytearray(deflated)
    cut[end - 20: end] = bytes(20)  # the deflate stream's last bytes zeroed
    with pytest.raises(Exception, match="not a readable affectus .npz"):
        read(bytes(cut))
    # a deflated member whose directory declares 0 bytes (zlib reads a bound of 0 as "no bound"): refused
    # after one byte, never inflated (64 MB of zeros here)
    bomb = bytearray(_npz({"test.audio.npy": bytes(64 * 2**20)}, zipfile.ZIP_DEFLATED))
    entry = bomb.rfind(b"PK\x01\x02")
    bomb[entry + 24: entry + 28] = bytes(4)
    import tracemalloc

    from affectus.data.npz_check import check_npz

    tracemalloc.start()
    for reader in (read, lambda d: check_npz(d, "up.npz", max_bytes=2**20, max_samples=100, max_seq_len=50)):
        with pytest.raises(Exception, match="more data than its declared 0 bytes"):
            reader(bytes(bomb))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * 2**20, peak
    directory = good.rfind(b"PK\x01\x02")
    zip64 = bytearray(good)
    zip64[directory + 24: directory + 28] = b"\xff\xff\xff\xff"  # the directory's uncompressed size
    with pytest.raises(NpzTooLarge, match="zip64 member"):
        read(bytes(zip64))


@pytest.mark.parametrize(("host", "name"), [
    ("localhost:8000", "localhost"), ("LocalHost", "localhost"), ("127.0.0.1:80", "127.0.0.1"), ("[::1]:8000", "::1"),
    ("[::1]", "::1"), ("::1", None), ("127.0.0.1:8000:1", None), ("localhost:abc", None), ("[::1]x", None), ("", None),
])
def test_host_header_names(host, name):
    from affectus.inference.service import _host_name

    assert _host_name(host) == name


@pytest.mark.parametrize(("origin", "same"), [
    ("http://127.0.0.1:8000", True), ("HTTP://127.0.0.1:8000", True), ("http://127.0.0.1:8001", False),
    ("http://localhost:8000", False), ("null", False), ("file://", False), ("http://evil.example", False),
])
def test_same_origin(origin, same):
    from affectus.inference.service import _same_origin

    assert _same_origin(origin, "127.0.0.1:8000") is same
