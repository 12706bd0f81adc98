"""`affectus serve` as a real process on loopback (issue 15): what an upload, a timeout, a slow or foreign
client and SIGTERM do to it. Each server gets a private TMPDIR (so leftover `affectus-serve-*` folders are
its own) and its memory and CPU time are read from /proc. Clips are small and made on the fly
(tests/media_clips.py, ffmpeg); every wait is bounded."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads memory from Linux's /proc")]

TINY = {"seq_lens": {"text": 4, "audio": 6, "vision": 5}, "dims": {"text": 12, "audio": 5, "vision": 7}}
MB = 1024 * 1024


# ------------------------------------------------------------------------------------------ helpers


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    tmp: Path  # the server's TMPDIR
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def leftovers(self) -> list[Path]:
        return sorted(self.tmp.glob("affectus-serve-*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(run: Path, root: Path, *args: str) -> Iterator[Server]:
    """`python -m affectus serve RUN --port P ARGS` with TMPDIR=root/tmp; waits for /health (60 s at most)."""
    tmp = root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log = root / f"serve-{port}.log"
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "affectus", "serve", str(run), "--port", str(port), *args],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, port, tmp, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the server exited: {log.read_text()[-2000:]}"
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /health within 60 s"
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _workers(pid: int) -> list[int]:
    """The server's clip worker processes (not multiprocessing's resource tracker)."""
    out = []
    for kid in _children(pid):
        try:
            cmd = Path(f"/proc/{kid}/cmdline").read_bytes()
            state = Path(f"/proc/{kid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"spawn_main" in cmd and state != "Z":
            out.append(kid)
    return out


def _cpu_s(pid: int) -> float:
    """CPU seconds used by a process and its live children."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return total


def _post(server: Server, name: str, body: bytes, timeout: float = 60, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", files={"file": (name, body)}, timeout=timeout, **kwargs)


def _raw(server: Server, data: bytes, wait_s: float) -> bytes:
    """Send bytes on a fresh connection, then read until the server closes it or `wait_s` passes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait_s) as s:
        s.sendall(data)
        got = b""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                return got + b"<closed>"
            got += chunk
        return got


def zip_bomb(declared_gb: float = 1.0) -> bytes:
    """An affectus-looking .npz (a valid __meta__) whose test.audio member is `declared_gb` GB of zeros,
    honestly declared: ~1 MB compressed."""
    n, length, dim = 1000, 1000, int(declared_gb * 1024**3 / (1000 * 1000 * 4))
    meta = {"format": "affectus-npz", "version": 1, "keys": {"test": ["audio", "id", "text", "vision", "regression_labels"]},
            "sanitised": {}}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("__meta__.npy", "w") as f:
            np.lib.format.write_array(f, np.array(json.dumps(meta)))
        with zf.open("test.audio.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, length, dim)})
            zeros = bytes(16 * MB)
            size = n * length * dim * 4
            for _ in range(size // len(zeros)):
                f.write(zeros)
            f.write(bytes(size % len(zeros)))
    return buf.getvalue()


def live_webm(path: Path, seconds: float) -> Path:
    """A WebM written as a live stream (`-live 1`, as a browser's MediaRecorder writes it): no duration
    in the container, so the length is known only by decoding it."""
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=160x160:rate=10",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
                    "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "100k", "-c:a", "libopus",
                    "-live", "1", "-f", "webm", str(path)], check=True, capture_output=True)
    return path


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def features_run(tmp_path_factory) -> dict[str, Path]:
    from affectus.cli import main
    from affectus.data.mmsa import dataset_from_raw, write_pickle
    from affectus.data.npz import write_npz
    from affectus.data.synthetic import SynthConfig, generate

    root = tmp_path_factory.mktemp("serve-features")
    raw = generate(SynthConfig(n_train=40, n_valid=12, n_test=12, seed=2, **TINY))
    write_pickle(raw, root / "tiny.pkl")
    write_npz(dataset_from_raw(raw), root / "tiny.npz")
    assert main(["train", "--data", str(root / "tiny.pkl"), "--out", str(root / "run"), "--set", "model.layers=1",
                 "--set", "model.heads=2", "--set", "train.epochs=1", "--set", "train.batch_size=16", "--threads", "1",
                 "--quiet"]) == 0
    return {"root": root, "run": root / "run", "npz": root / "tiny.npz"}


@pytest.fixture(scope="module")
def server(features_run) -> Iterator[Server]:
    """A features run served with 1 s header and body timeouts and a 2 MB upload limit."""
    with serving(features_run["run"], features_run["root"], "--header-timeout-s", "1", "--body-timeout-s", "1",
                 "--max-upload-mb", "2") as s:
        yield s


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """A run that predicts clips (media_clips.media_run), a short clip with a face, and a 20 s live WebM."""
    from media_clips import ClipSpec, make_clip, media_run, missing_tools

    if missing_tools():
        pytest.skip(f"media tools missing: {', '.join(missing_tools())}")
    root = tmp_path_factory.mktemp("serve-clips")
    face = root / "face.mp4"
    make_clip(ClipSpec("s", "face", "What a wonderful day.", 0.7, "test"), face)
    return {"root": root, "run": media_run(root / "media"), "face": face, "live": live_webm(root / "live.webm", 20)}


# ------------------------------------------------------------------------------------------ item 1: .npz bombs


def test_zip_bomb_npz_is_refused_before_it_is_read(server, features_run):
    bomb = zip_bomb(0.5)
    assert len(bomb) < MB  # 512 MB of zeros in ~0.5 MB
    before = _status(server.proc.pid)["VmRSS"]
    r = _post(server, "bomb.npz", bomb)
    assert r.status_code == 413 and "once decompressed" in r.json()["error"], r.text
    # three at once: each refused from the zip's directory, none decompressed
    with __import__("concurrent.futures").futures.ThreadPoolExecutor(3) as pool:
        codes = [f.result().status_code for f in [pool.submit(_post, server, f"b{i}.npz", bomb) for i in range(3)]]
    assert all(c in (413, 429) for c in codes) and 413 in codes
    grown = _status(server.proc.pid)["VmHWM"] - before
    print(f"zip bomb: {len(bomb) / MB:.2f} MB upload declaring 512 MB, sent 4 times: server peak RSS "
          f"{grown / MB:.0f} MB above its RSS before")
    assert grown < 300 * MB, f"the server's peak memory grew by {grown / MB:.0f} MB"
    # a real features file still goes through
    r = _post(server, "tiny.npz", features_run["npz"].read_bytes())
    assert r.status_code == 200 and len(r.json()["predictions"]) == 64


# ------------------------------------------------------------------------------------------ item 4: body size


def test_a_body_over_the_limit_is_refused_on_its_content_length(server):
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: multipart/form-data; "
            f"boundary=x\r\nContent-Length: {400 * MB}\r\n\r\n").encode()
    got = _raw(server, head, wait_s=10)  # no body sent at all: the answer comes from the header alone
    assert got.startswith(b"HTTP/1.1 413") and b"larger than 2 MB" in got and got.endswith(b"<closed>")


def test_a_chunked_body_is_read_no_further_than_the_limit(server):
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: multipart/form-data; "
            f"boundary=x\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"a" * 64 * 1024)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        part = b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.npz"\r\n\r\n'
        s.sendall(head + b"%x\r\n%s\r\n" % (len(part), part))
        sent = 0
        try:
            while sent < 6 * MB:  # past the 2 MB limit (+1 MB for the form), never ended
                s.sendall(chunk)
                sent += 64 * 1024
        except OSError:
            pass  # the server closed the connection mid-body
        got = s.recv(65536)
    assert got.startswith(b"HTTP/1.1 413"), got[:200]


# ------------------------------------------------------------------------------------------ item 5: slow / foreign clients


def test_slow_headers_and_slow_bodies_are_cut_off(server):
    t0 = time.monotonic()
    got = _raw(server, f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n".encode(), wait_s=8)
    assert got == b"<closed>" and time.monotonic() - t0 < 6  # closed after --header-timeout-s 1, not held open
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: multipart/form-data; "
            f"boundary=x\r\nContent-Length: 1000\r\n\r\n--x\r\n").encode()
    got = _raw(server, head, wait_s=8)  # 5 of 1000 bytes, then nothing
    assert got.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in got and got.endswith(b"<closed>")
    # a route that reads no body (405 here) answers and closes, rather than reading what the client sends
    head = f"POST /health HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n"
    got = _raw(server, head.encode(), wait_s=8)
    assert got.startswith(b"HTTP/1.1 405") and got.endswith(b"<closed>")


def test_foreign_hosts_and_origins_are_refused(server, features_run):
    r = httpx.get(f"{server.url}/health", headers={"Host": "evil.example"}, timeout=10)
    assert r.status_code == 400 and "--allowed-host" in r.json()["error"]  # a DNS-rebinding page's Host
    r = _post(server, "tiny.npz", features_run["npz"].read_bytes(), headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "evil.example" in r.json()["error"]  # a foreign page's form POST
    assert "access-control-allow-origin" not in r.headers
    r = _post(server, "tiny.npz", features_run["npz"].read_bytes(), headers={"Origin": server.url})
    assert r.status_code == 200  # the service's own page
    r = httpx.get(f"http://localhost:{server.port}/health", timeout=10)
    assert r.status_code == 200 and r.headers["x-frame-options"] == "DENY"


def test_docs_load_nothing_from_another_host(server):
    page = httpx.get(f"{server.url}/docs", timeout=10)
    assert page.status_code == 200 and "swagger" in page.text.lower()
    assert "https://" not in page.text and "http://" not in page.text  # no CDN: every script is ours
    script = next(p.split('"')[0] for p in page.text.split('src="')[1:])
    assert script.startswith("/") and httpx.get(f"{server.url}{script}", timeout=10).status_code == 200


# ------------------------------------------------------------------------------------------ items 2, 3: clips


def test_a_clip_without_a_stated_duration_is_stopped_at_the_limit(clips):
    with serving(clips["run"], clips["root"] / "limit", "--max-clip-s", "1") as server:
        # a client that gives up (here while the first worker is still loading) has its work killed
        with pytest.raises(httpx.ReadTimeout):
            _post(server, "impatient.webm", clips["live"].read_bytes(), timeout=1)
        deadline = time.monotonic() + 5
        while (_workers(server.proc.pid) or server.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _workers(server.proc.pid) == [] and server.leftovers() == []

        r = _post(server, "recording.webm", clips["live"].read_bytes())
        assert r.status_code == 413 and "longer than the 1 s limit" in r.json()["error"], r.text
        err = r.json()["error"]
        assert str(server.tmp) not in err and "clip.webm" not in err and "recording.webm" in err  # no server path
        workers = _workers(server.proc.pid)
        assert len(workers) == 1
        peak = sum(_status(p)["VmHWM"] for p in [server.proc.pid, *workers])
        rss = sum(_status(p)["VmRSS"] for p in [server.proc.pid, *workers])
        # the worker decoded 1 s and stopped: nothing like a 20 s clip's audio and frames stayed around
        print(f"live WebM: server + worker peak RSS {(peak - rss) / MB:.0f} MB above their RSS after the 413")
        assert peak - rss < 300 * MB
        assert server.leftovers() == []


def test_a_clip_over_the_limit_is_refused_whole(clips):
    """In process: ClipPredictor(max_duration_s=...) stops decoding at the limit, and a clip whose audio is
    over it is refused, not predicted from the video that was decoded before."""
    from affectus.features.base import MediaError
    from affectus.features.clip import ClipPredictor
    from affectus.inference.predictor import load

    explain = ClipPredictor(load(clips["run"]), max_duration_s=2.0)
    with pytest.raises(MediaError, match="longer than 2 s") as err:
        explain(clips["live"])  # 20 s, no duration stated
    assert err.value.reason == "too_long"
    assert explain(clips["face"])["verdict"]  # a 1.4 s clip still goes through


def test_a_timed_out_clip_really_stops_and_sigterm_leaves_no_temp_folder(clips):
    with serving(clips["run"], clips["root"] / "timeout", "--timeout-s", "1", "--max-concurrent", "1") as server:
        pid = server.proc.pid
        before = _status(pid)["VmRSS"]
        for i in range(3):  # back to back: each times out while its worker is still loading or extracting
            t0 = time.monotonic()
            r = _post(server, f"clip{i}.webm", clips["live"].read_bytes())
            assert r.status_code == 504 and "longer than 1 s" in r.json()["error"], r.text
            assert time.monotonic() - t0 < 10
            assert len(_workers(pid)) <= 1  # never more workers than --max-concurrent
            assert server.leftovers() == []  # the upload's folder went with the request
        time.sleep(0.5)
        assert _workers(pid) == []  # the timed-out work was killed, not left running
        # while the one worker is busy, a second clip is a 429 at once
        first = threading.Thread(target=lambda: _post_quietly(server, clips["live"]), daemon=True)
        first.start()
        deadline = time.monotonic() + 10
        while not _workers(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        r = _post(server, "second.webm", clips["live"].read_bytes())
        assert r.status_code == 429 and "already running" in r.json()["error"]
        first.join(timeout=20)
        time.sleep(0.5)
        assert _workers(pid) == [] and server.leftovers() == []
        cpu = _cpu_s(pid)
        time.sleep(1.5)
        assert _cpu_s(pid) - cpu < 0.5  # nothing goes on computing behind the 504s
        grown = _status(pid)["VmRSS"] - before
        print(f"timeouts: server RSS {grown / MB:+.0f} MB after 4 timed-out clips and a 429")
        assert grown < 100 * MB  # no predictor piled up per request

        # SIGTERM while a request is running: the server ends it, kills its worker and removes its folder
        thread = threading.Thread(target=lambda: _post_quietly(server, clips["live"]), daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.leftovers() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.leftovers(), "the request never made its upload folder"
        workers = _workers(pid)
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=20)
        thread.join(timeout=20)
        assert server.leftovers() == []
        assert not any(Path(f"/proc/{w}").exists() and b"spawn_main" in Path(f"/proc/{w}/cmdline").read_bytes()
                       for w in workers)  # the worker went with the server


def _post_quietly(server: Server, clip: Path) -> None:
    try:
        _post(server, "last.webm", clip.read_bytes(), timeout=30)
    except httpx.HTTPError:
        pass  # the server is going away


# ------------------------------------------------------------------------------------------ issue 20: workers


def test_workers_share_the_port_and_metrics_add_up(features_run):
    """`--workers 2`: two processes answer on one port; /metrics (whichever answers) counts every request of
    both; each request is one JSON access-log line; SIGTERM stops both and removes the metrics folder."""
    from prometheus_client.parser import text_string_to_metric_families

    body = {"inputs": [{"name": m, "datatype": "FP32", "shape": [1, TINY["seq_lens"][m], TINY["dims"][m]],
                        "data": np.ones((1, TINY["seq_lens"][m], TINY["dims"][m])).tolist()}
                       for m in ("text", "audio", "vision")]}
    with serving(features_run["run"], features_run["root"] / "workers", "--workers", "2") as s:
        pids = set(_children(s.proc.pid))
        for _ in range(12):  # a new connection each: the kernel hands them to either worker
            r = httpx.post(f"{s.url}/v2/models/run/infer", json=body, timeout=30)
            assert r.status_code == 200, r.text
        scraped = httpx.get(f"{s.url}/metrics", timeout=10).text
        s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(timeout=30)
        lines = [json.loads(line) for line in s.log.read_text().splitlines() if line.startswith('{"ts"')]
    total = sum(sample.value for family in text_string_to_metric_families(scraped) for sample in family.samples
                if sample.name == "affectus_requests_total" and sample.labels["route"] == "/v2/models/{name}/infer")
    assert total == 12
    infers = [line for line in lines if line["path"] == "/v2/models/run/infer"]
    assert len(infers) == 12 and all(line["status"] == 200 and line["worker"] in pids for line in infers)
    assert not list(s.tmp.glob("affectus-serve-metrics-*"))
