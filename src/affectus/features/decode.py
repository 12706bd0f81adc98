"""Decode a clip with PyAV: 16 kHz mono float audio and RGB frames sampled at a set rate.

PyAV's wheels bundle FFmpeg's libraries, so decoding needs no system FFmpeg (docs/media.md). Every
way a file can be unusable ends in a `MediaError` with a stable reason code: `missing`, `empty`
(zero bytes), `corrupt` (FFmpeg cannot read it, or stops part way), `no_audio`, `no_video`,
`too_long`. Nothing here keeps a whole video in memory: frames are yielded one at a time.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from affectus.features.base import ExtractorConfig, MediaError


@dataclasses.dataclass(frozen=True)
class DecodeConfig(ExtractorConfig):
    kind: str = "decode"
    sample_rate: int = 16000  # Hz, mono; the rate openSMILE's and librosa's settings below assume
    fps: float = 10.0  # frames per second handed to the vision extractor
    max_side: int = 480  # frames are scaled down (never up) so the longer side is at most this
    max_duration_s: float = 600.0  # longer clips are refused (`too_long`) instead of filling memory

    def __post_init__(self) -> None:
        if self.sample_rate < 8000 or self.fps <= 0 or self.max_side < 32 or self.max_duration_s <= 0:
            raise ValueError("need sample_rate >= 8000, fps > 0, max_side >= 32 and max_duration_s > 0")


class Decoder:
    """`audio(path)` -> (S,) float32 in [-1, 1]; `frames(path)` -> iterator of (t seconds, (H, W, 3) uint8)."""

    def __init__(self, config: DecodeConfig | None = None) -> None:
        self.config = config or DecodeConfig()

    # ------------------------------------------------------------------ opening

    def _open(self, path: str | os.PathLike) -> Any:
        import av  # heavy import, only where decoding happens

        p = Path(path)
        if not p.is_file():
            raise MediaError("missing", f"file {p}: no such file")
        if p.stat().st_size == 0:
            raise MediaError("empty", f"file {p}: empty file (0 bytes)")
        try:
            container = av.open(str(p), mode="r")
        except (av.FFmpegError, UnicodeDecodeError, ValueError) as err:
            raise MediaError("corrupt", f"file {p}: not a readable media file ({err})") from None
        try:
            self._check_duration(p, container)
        except MediaError:
            container.close()
            raise
        return container

    def _check_duration(self, p: Path, container: Any) -> None:
        seconds = self.duration(container)
        if seconds is not None and seconds > self.config.max_duration_s:
            raise MediaError(
                "too_long", f"file {p}: {seconds:.1f} s long, over the {self.config.max_duration_s:g} s limit"
            )

    @staticmethod
    def duration(container: Any) -> float | None:
        """Container duration in seconds, or None when the file does not say."""
        if container.duration is not None and container.duration > 0:
            return container.duration / 1_000_000  # AV_TIME_BASE: microseconds
        return None

    def probe(self, path: str | os.PathLike) -> dict[str, Any]:
        """What is in the file: duration, audio/video presence, frame size (no decoding)."""
        with self._open(path) as c:
            v = c.streams.video[0] if c.streams.video else None
            return {
                "duration_s": self.duration(c),
                "has_audio": bool(c.streams.audio),
                "has_video": v is not None,
                "width": int(v.codec_context.width) if v is not None else None,
                "height": int(v.codec_context.height) if v is not None else None,
            }

    # ------------------------------------------------------------------ audio

    def audio(self, path: str | os.PathLike) -> np.ndarray:
        """The first audio stream as (S,) float32 mono at `sample_rate` (FFmpeg's resampler)."""
        import av

        p = Path(path)
        with self._open(p) as c:
            if not c.streams.audio:
                raise MediaError("no_audio", f"file {p}: no audio track")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=self.config.sample_rate)
            chunks: list[np.ndarray] = []
            limit = int(self.config.max_duration_s * self.config.sample_rate)
            total = 0
            try:
                for frame in c.decode(audio=0):
                    for out in resampler.resample(frame):
                        chunks.append(out.to_ndarray().reshape(-1))  # packed mono: (1, S) -> (S,)
                        total += chunks[-1].shape[0]
                    if total > limit:
                        raise MediaError(
                            "too_long", f"file {p}: audio longer than {self.config.max_duration_s:g} s"
                        )
                for out in resampler.resample(None):  # flush the resampler's buffer
                    chunks.append(out.to_ndarray().reshape(-1))
            except av.FFmpegError as err:
                raise MediaError("corrupt", f"file {p}: audio stops part way ({err})") from None
        samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
        if samples.size == 0:
            raise MediaError("no_audio", f"file {p}: the audio track holds no samples")
        return samples

    # ------------------------------------------------------------------ video

    def _size(self, width: int, height: int) -> tuple[int, int]:
        scale = min(1.0, self.config.max_side / max(width, height))
        # even sizes keep FFmpeg's scaler exact for subsampled pixel formats
        return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)

    def frames(self, path: str | os.PathLike) -> Iterator[tuple[float, np.ndarray]]:
        """Frames of the first video stream, one every 1/fps seconds, as (t, (H, W, 3) uint8 RGB).

        The frame shown at each sampling instant is taken (the first decoded frame at or after it);
        a source slower than `fps` gives fewer frames, never duplicates.
        """
        import av

        p = Path(path)
        step = 1.0 / self.config.fps
        with self._open(p) as c:
            if not c.streams.video:
                raise MediaError("no_video", f"file {p}: no video track")
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            next_t = 0.0
            index = 0
            try:
                for frame in c.decode(video=0):
                    # frames without a timestamp fall back to their index at the stream's rate
                    rate = float(stream.average_rate or self.config.fps)
                    t = float(frame.time) if frame.time is not None else index / rate
                    index += 1
                    if t > self.config.max_duration_s:
                        raise MediaError(
                            "too_long", f"file {p}: video longer than {self.config.max_duration_s:g} s"
                        )
                    if t + 1e-6 < next_t:
                        continue
                    w, h = self._size(frame.width, frame.height)
                    yield t, frame.to_ndarray(width=w, height=h, format="rgb24")  # (H, W, 3)
                    next_t = (math.floor(t / step + 1e-6) + 1) * step
            except av.FFmpegError as err:
                raise MediaError("corrupt", f"file {p}: video stops part way ({err})") from None
