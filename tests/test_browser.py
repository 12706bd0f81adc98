"""The service's page in a real browser (Debian's Chromium driven by Playwright; nothing downloaded):
upload a features file, press Predict, see the verdicts, no console errors."""

from __future__ import annotations

import re
import shutil

import pytest

from conftest import served_on_loopback

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-headless-shell")) if p), None)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/apt.sh installs it)")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from affectus.cli import main
    from affectus.data.mmsa import dataset_from_raw, write_pickle
    from affectus.data.npz import write_npz
    from affectus.data.synthetic import SynthConfig, generate
    from affectus.inference.service import create_app

    root = tmp_path_factory.mktemp("browser")
    raw = generate(SynthConfig(n_train=40, n_valid=12, n_test=12, seed=2, seq_lens={"text": 4, "audio": 6, "vision": 5},
                               dims={"text": 12, "audio": 5, "vision": 7}))
    write_pickle(raw, root / "tiny.pkl")
    write_npz(dataset_from_raw(raw), root / "tiny.npz")
    assert main(["train", "--data", str(root / "tiny.pkl"), "--out", str(root / "run"), "--set", "model.layers=1",
                 "--set", "model.heads=2", "--set", "train.epochs=1", "--set", "train.batch_size=16", "--threads", "1",
                 "--quiet"]) == 0
    with served_on_loopback(create_app(root / "run")) as url:
        yield {"url": f"{url}/", "npz": root / "tiny.npz"}


def test_upload_shows_the_verdict_without_console_errors(server):
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(server["url"])
        page.wait_for_function("document.getElementById('model').textContent.startsWith('model cmc')")
        page.set_input_files("#file", str(server["npz"]))
        page.click("button[type=submit]")
        page.wait_for_selector("h2.verdict", timeout=20_000)
        verdicts = page.locator("h2.verdict").all_inner_texts()
        browser.close()
    assert len(verdicts) == 20 and all(v.split(": ")[1].split(" ")[0] in ("negative", "neutral", "positive")
                                       for v in verdicts)
    assert errors == []


@pytest.fixture(scope="module")
def clip_server(tmp_path_factory):
    """A served run that predicts clips (media_clips.media_run), and a clip with a face."""
    from media_clips import ClipSpec, make_clip, media_run, missing_tools

    if missing_tools():
        pytest.skip(f"media tools missing: {', '.join(missing_tools())}")
    from affectus.inference.service import create_app

    root = tmp_path_factory.mktemp("browser-clips")
    run = media_run(root)
    clip = root / "face.mp4"
    make_clip(ClipSpec("b", "face", "What a wonderful day.", 0.7, "test"), clip)
    with served_on_loopback(create_app(run)) as url:
        yield {"url": f"{url}/", "clip": clip}


def _page(pw, errors: list[str], args: tuple[str, ...] = ()):
    browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", *args])
    page = browser.new_page()
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda err: errors.append(str(err)))
    return browser, page


def test_clip_upload_shows_face_thumbnails(clip_server):
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser, page = _page(pw, errors)
        page.goto(clip_server["url"])
        page.set_input_files("#file", str(clip_server["clip"]))
        page.click("button[type=submit]")
        page.wait_for_selector("h2.verdict", timeout=60_000)
        faces = page.locator("img.face")
        n = faces.count()
        # each thumbnail is a decoded 64 x 64 picture (naturalWidth is 0 for an image that failed to load)
        sizes = [faces.nth(i).evaluate("img => [img.naturalWidth, img.naturalHeight]") for i in range(n)]
        browser.close()
    assert 1 <= n <= 4 and sizes == [[64, 64]] * n
    assert errors == []


def test_record_a_clip_in_the_page(clip_server):
    """Record ~2 s from Chromium's fake camera and microphone (a test pattern and a beep; no face in it),
    upload it as WebM, and see the verdict: from the audio alone, as the pattern has no face."""
    errors: list[str] = []
    fake = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream")
    with sync_api.sync_playwright() as pw:
        browser, page = _page(pw, errors, fake)
        page.goto(clip_server["url"])
        page.click("#record")
        page.wait_for_function("document.getElementById('rec-status').textContent === 'recording...'",
                               timeout=10_000)
        page.wait_for_timeout(2_000)
        page.click("#record")  # stop: the recording is sent
        page.wait_for_selector("h2.verdict", timeout=60_000)
        verdict = page.locator("h2.verdict").inner_text()
        status = page.locator("#rec-status").inner_text()
        text = page.locator("#out").inner_text()
        browser.close()
    assert verdict.startswith("recording.webm: ") and verdict.split(": ")[1].split(" ")[0] in (
        "negative", "neutral", "positive")
    frames = re.search(r"frames (\d+), with a face (\d+)", text)
    # frames of the WebM were decoded (fewer than 10 fps x 2 s: a busy headless camera drops some); no face in the pattern
    assert status.startswith("recorded ") and frames and int(frames[1]) >= 3 and frames[2] == "0"
    # audio's own call is shown; vision is absent, and late fusion zero-fills it: shown with that note
    assert "\naudio" in text and "zero-filled" in text.split("\nvision")[1].split("\n")[0]
    assert errors == []
