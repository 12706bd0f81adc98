"""Audio features from 16 kHz mono samples: openSMILE eGeMAPS LLDs (25-d) or librosa's 33-d recipe.

* `OpenSmileExtractor`: the 25 low-level descriptors of the extended Geneva Minimalistic Acoustic
  Parameter Set (eGeMAPS v02; Eyben et al. 2016, Table 1), one row per 10 ms hop, the audio feature of
  CH-SIMS v2. openSMILE's C++ library ships inside the `opensmile` wheel: no binary to install.
* `LibrosaExtractor`: CH-SIMS's recipe, 1 log-F0 + 20 MFCC + 12 constant-Q chroma = 33 values per hop.

Both return (T, D) float32 with no NaN: openSMILE reports unvoiced frames as 0 for F0-type LLDs
already; librosa's unvoiced frames get log-F0 0 (F0 is undefined there, and 0 keeps the row finite).

`AUDIO_EXTRACTORS` is the one list (`--audio NAME`, media.json's `audio.kind`): an extractor is a config
dataclass (an `ExtractorConfig` whose `kind` names it, with `rows_per_second` and `known_dim`) and a class
`Extractor(config, sample_rate)` with `dim` and `__call__(samples) -> (T, D)`, registered with
`@register_audio(Config)`. Nothing else names an extractor.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import ClassVar

import numpy as np

from affectus.features.base import ExtractorConfig, MediaError

# kind -> (config class, extractor class), in `--audio` help order; the first is the default
AUDIO_EXTRACTORS: dict[str, tuple[type[ExtractorConfig], type]] = {}


def register_audio(config_cls: type[ExtractorConfig], summary: str = ""):
    """Class decorator: register an audio extractor under its config's `kind` (`--audio KIND`)."""

    def deco(extractor_cls: type) -> type:
        kind = config_cls().kind
        if not kind:
            raise ValueError(f"{config_cls.__name__}: an audio extractor's config needs a kind")
        AUDIO_EXTRACTORS[kind] = (config_cls, extractor_cls)
        extractor_cls.summary = summary
        return extractor_cls

    return deco


def audio_help() -> str:
    """`--audio`'s help: every registered extractor with its one-line summary."""
    return " or ".join(f"{k} ({cls.summary})" if cls.summary else k for k, (_, cls) in AUDIO_EXTRACTORS.items())

EGEMAPS_LLD_DIM = 25
LIBROSA_DIM = 33


@dataclasses.dataclass(frozen=True)
class OpenSmileConfig(ExtractorConfig):
    kind: str = "opensmile"
    requires: ClassVar[dict[str, str]] = {"opensmile": "opensmile"}
    feature_set: str = "eGeMAPSv02"  # a member name of opensmile.FeatureSet
    feature_level: str = "LowLevelDescriptors"  # a member name of opensmile.FeatureLevel

    def rows_per_second(self, sample_rate: int) -> float:
        return 100.0  # openSMILE's LLDs: one per 10 ms

    def known_dim(self) -> int | None:
        """The width from the config alone (importing openSMILE takes seconds); None: only the extractor knows."""
        return EGEMAPS_LLD_DIM if (self.feature_set, self.feature_level) == ("eGeMAPSv02", "LowLevelDescriptors") else None


@register_audio(OpenSmileConfig, "eGeMAPS LLDs, 25-d")
class OpenSmileExtractor:
    """(S,) float32 samples -> (T, 25) eGeMAPS LLDs; T = one row per 10 ms (openSMILE's hop)."""

    def __init__(self, config: OpenSmileConfig | None = None, sample_rate: int = 16000) -> None:
        import opensmile

        self.config = config or OpenSmileConfig()
        self.sample_rate = sample_rate
        try:
            feature_set = opensmile.FeatureSet[self.config.feature_set]
            level = opensmile.FeatureLevel[self.config.feature_level]
        except KeyError as err:
            raise MediaError("failed", f"openSMILE has no feature set / level {err}") from None
        self._smile = opensmile.Smile(feature_set=feature_set, feature_level=level)
        self.names: list[str] = list(self._smile.feature_names)
        self.dim = len(self.names)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if samples.size < self.sample_rate // 10:  # openSMILE's first LLD needs a 60 ms window
            raise MediaError("no_audio", f"only {samples.size} samples: too short for openSMILE")
        frame = self._smile.process_signal(samples.astype(np.float32), self.sample_rate)  # DataFrame (T, D)
        feats = frame.to_numpy(dtype=np.float32)
        return np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0)


@dataclasses.dataclass(frozen=True)
class LibrosaConfig(ExtractorConfig):
    kind: str = "librosa"
    requires: ClassVar[dict[str, str]] = {"librosa": "librosa"}
    hop_length: int = 512  # samples: 32 ms at 16 kHz
    n_mfcc: int = 20
    n_chroma: int = 12
    fmin: float = 65.0  # Hz, F0 search range (C2 .. about D5 covers speech)
    fmax: float = 600.0
    f0_method: str = "pyin"  # "pyin" (marks unvoiced frames) or "yin" (faster, always voiced)

    def __post_init__(self) -> None:
        if self.f0_method not in ("pyin", "yin"):
            raise ValueError(f"f0_method must be 'pyin' or 'yin', not {self.f0_method!r}")

    def rows_per_second(self, sample_rate: int) -> float:
        return sample_rate / self.hop_length  # one per hop (plus the centred first frame)

    def known_dim(self) -> int | None:
        return 1 + self.n_mfcc + self.n_chroma


@register_audio(LibrosaConfig, "log-F0+MFCC+CQT, 33-d")
class LibrosaExtractor:
    """(S,) float32 samples -> (T, 1 + n_mfcc + n_chroma) = (T, 33) by default; T = S / hop + 1."""

    def __init__(self, config: LibrosaConfig | None = None, sample_rate: int = 16000) -> None:
        self.config = config or LibrosaConfig()
        self.sample_rate = sample_rate
        self.dim = 1 + self.config.n_mfcc + self.config.n_chroma
        self.names = (
            ["log_f0"]
            + [f"mfcc{i + 1}" for i in range(self.config.n_mfcc)]
            + [f"chroma{i + 1}" for i in range(self.config.n_chroma)]
        )

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        import librosa

        c, sr = self.config, self.sample_rate
        frame_length = 4 * c.hop_length  # librosa's default ratio for the F0 window
        if samples.size < frame_length:
            raise MediaError(
                "no_audio", f"only {samples.size} samples: too short for a {frame_length}-sample F0 window"
            )
        y = samples.astype(np.float32)
        with warnings.catch_warnings():  # short clips make librosa warn about n_fft; the values are fine
            warnings.simplefilter("ignore", UserWarning)
            if c.f0_method == "pyin":
                f0, _, _ = librosa.pyin(
                    y, fmin=c.fmin, fmax=c.fmax, sr=sr, frame_length=frame_length, hop_length=c.hop_length
                )  # (T,), NaN where unvoiced
            else:
                f0 = librosa.yin(
                    y, fmin=c.fmin, fmax=c.fmax, sr=sr, frame_length=frame_length, hop_length=c.hop_length
                )
            log_f0 = np.where(np.isfinite(f0) & (f0 > 0), np.log(np.where(f0 > 0, f0, 1.0)), 0.0)  # (T,)
            mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=c.n_mfcc, hop_length=c.hop_length)  # (n_mfcc, T)
            chroma = librosa.feature.chroma_cqt(y=y, sr=sr, hop_length=c.hop_length, n_chroma=c.n_chroma)
        steps = min(log_f0.shape[0], mfcc.shape[1], chroma.shape[1])  # all centred: equal T, but be safe
        feats = np.concatenate([log_f0[None, :steps], mfcc[:, :steps], chroma[:, :steps]], axis=0).T
        return np.nan_to_num(feats.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)  # (T, 33)
