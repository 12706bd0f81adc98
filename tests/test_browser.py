"""The service's page in a real browser (Debian's Chromium driven by Playwright; nothing downloaded):
upload a features file, press Predict, see the verdicts, no console errors."""

from __future__ import annotations

import shutil

import pytest

from conftest import served_on_loopback

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-headless-shell")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/apt.sh installs it)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from affectus.cli import main
    from affectus.data.mmsa import dataset_from_raw, write_npz, write_pickle
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
