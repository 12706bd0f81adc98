"""Per-frame facial features from OpenCV's bundled Haar cascades (Viola & Jones 2001).

The cascades ship inside the `opencv-python-headless` wheel (`cv2.data.haarcascades`), so this runs
offline with no model download. For each frame:

* the largest frontal face is found (`haarcascade_frontalface_default.xml`);
* features of that face, 152 values by default:
  - geometry (4): centre x, centre y, width, height as fractions of the frame;
  - eyes (1): eyes found in the upper half of the face, 0, 0.5 or 1 (0, 1, 2+ eyes);
  - smile (1): the smile cascade's strongest detection weight in the lower half (0 when none);
  - appearance (2): mean and standard deviation of the equalised face crop, in [0, 1];
  - shape (144): HOG (Dalal & Triggs 2005) of the 64x64 crop: 2x2 blocks of 2x2 cells of 16 px, 9 bins.

A frame without a face is kept as such: `VisionFeatures.face[t]` is False and its row is all zeros.
Callers must use the mask (the dataset builder keeps face frames only); a no-face row is never a
feature of the face, so it must never be averaged in.

Where the face is searched for (`detect_every`): the whole-frame cascade search is most of the cost.
With `detect_every=1` (the only behaviour before, and what a recorded config without the key means)
every frame is searched whole. With `detect_every=N > 1` (the default of new extractions) the whole
frame is searched on every N-th frame (frames 0, N, 2N, ...); in between, the face is *tracked*: the same cascade
searches a window around the previous frame's face (`track_margin` of its side on each side) at sizes
within a factor `track_scale` of it. A frame where that finds nothing is searched whole at once (the
face moved further, or left: then the frame is marked "no face"). Once N frames in a row had no face,
only every N-th frame is searched whole and the frames in between are marked "no face" too, so a face
that comes back after a short gap is found at once, and one that appears later at most N - 1 frames
late; a clip without any face costs about 1/N of a whole search per frame. Eyes, smile, appearance and HOG are computed on every face frame as before.

On request (`thumbnails=K`) the extractor also keeps K small colour crops of the detected face, spread
evenly over the clip's face frames, for a person to see what the features were computed from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from affectus.features.base import ExtractorConfig

if TYPE_CHECKING:
    from typing_extensions import Self

GEOMETRY_NAMES = ["face_cx", "face_cy", "face_w", "face_h", "eyes", "smile", "face_mean", "face_std"]


@dataclasses.dataclass(frozen=True)
class HaarFaceConfig(ExtractorConfig):
    kind: str = "haar_face"
    scale_factor: float = 1.1  # image pyramid step of the cascade search
    min_neighbors: int = 5  # overlapping detections a face needs (higher: fewer false faces)
    min_face_frac: float = 0.1  # smallest face side, as a fraction of the frame's shorter side
    crop_size: int = 64  # face crop side for the HOG, px
    hog_cell: int = 16  # px; a block is 2x2 cells and blocks do not overlap
    hog_bins: int = 9
    # the whole frame is searched every `detect_every` frames, the face tracked in between (module
    # docstring). A recorded config without the key is from before tracking: it means 1 (`from_dict`),
    # so old datasets and runs extract every frame their way.
    detect_every: int = 10
    track_margin: float = 0.25  # tracking window: the previous face box grown by this fraction of its side
    track_scale: float = 1.25  # tracked face side within [side / track_scale, side * track_scale]

    def __post_init__(self) -> None:
        if self.scale_factor <= 1.0 or self.min_neighbors < 0 or not 0 < self.min_face_frac < 1:
            raise ValueError("need scale_factor > 1, min_neighbors >= 0 and 0 < min_face_frac < 1")
        if self.crop_size % (2 * self.hog_cell) != 0:
            raise ValueError("crop_size must be a multiple of 2 * hog_cell (whole HOG blocks)")
        if self.detect_every < 1 or not 0 < self.track_margin <= 2 or not 1 < self.track_scale <= 2:
            raise ValueError("need detect_every >= 1, 0 < track_margin <= 2 and 1 < track_scale <= 2")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if self.detect_every == 1 and all(d[k] == _TRACK_DEFAULTS[k] for k in _TRACK_DEFAULTS):
            # every-frame search written as before tracking existed: same JSON, same digest, so an old
            # dataset's resume cache and recorded configs stay valid
            for k in ("detect_every", *_TRACK_DEFAULTS):
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> Self:
        if isinstance(d, dict) and "detect_every" not in d:
            d = {**d, "detect_every": 1}  # recorded before tracking: every frame searched whole
        return super().from_dict(d, source)


_TRACK_DEFAULTS = {"track_margin": 0.25, "track_scale": 1.25}


@dataclasses.dataclass
class VisionFeatures:
    features: np.ndarray  # (T, D) float32; rows where face is False are zeros
    face: np.ndarray  # (T,) bool: a face was found in frame t
    times: np.ndarray  # (T,) float64 seconds
    thumbnails: list[np.ndarray] = dataclasses.field(default_factory=list)  # [(S, S, 3) uint8 RGB face crops]

    @property
    def face_frames(self) -> np.ndarray:
        """(F, D): the rows of frames with a face, the only rows that describe a face."""
        return self.features[self.face]


class HaarFaceExtractor:
    """Frames -> `VisionFeatures`; `dim` values per frame (152 by default)."""

    def __init__(self, config: HaarFaceConfig | None = None) -> None:
        import cv2

        self.config = c = config or HaarFaceConfig()
        cv2.setNumThreads(1)  # parallelism comes from worker processes, not from OpenCV threads
        root = cv2.data.haarcascades
        self._face = cv2.CascadeClassifier(root + "haarcascade_frontalface_default.xml")
        self._eye = cv2.CascadeClassifier(root + "haarcascade_eye.xml")
        self._smile = cv2.CascadeClassifier(root + "haarcascade_smile.xml")
        if self._face.empty() or self._eye.empty() or self._smile.empty():
            raise RuntimeError(f"OpenCV's Haar cascades are missing from {root}")
        block = 2 * c.hog_cell
        self._hog = cv2.HOGDescriptor(
            (c.crop_size,) * 2, (block, block), (block, block), (c.hog_cell,) * 2, c.hog_bins
        )
        hog_dim = int(self._hog.getDescriptorSize())
        self.names = GEOMETRY_NAMES + [f"hog{i}" for i in range(hog_dim)]
        self.dim = len(self.names)

    def frame(self, rgb: np.ndarray) -> np.ndarray | None:
        """(H, W, 3) uint8 RGB -> (dim,) float32 features of the largest face, or None without one."""
        found = self._face_of(rgb)
        return None if found is None else found[0]

    def _face_of(self, rgb: np.ndarray, near: tuple[int, int, int, int] | None = None,
                 search: bool = True) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
        """(features (dim,), face box (x, y, w, h) in px) of the largest face, or None without one.

        With `near` (the previous frame's face box) the face is first looked for around it (tracking);
        when that finds none, or without `near`, the whole frame is searched if `search`."""
        import cv2

        gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))  # (H, W) uint8
        box = self._track(gray, near) if near is not None else None
        if box is None and search:
            box = self._detect(gray)
        return None if box is None else (self._describe(gray, box), box)

    def _detect(self, gray: np.ndarray) -> tuple[int, int, int, int] | None:
        """The largest face of the whole (equalised) frame."""
        c = self.config
        height, width = gray.shape
        side = max(16, int(c.min_face_frac * min(height, width)))
        faces = self._face.detectMultiScale(gray, c.scale_factor, c.min_neighbors, minSize=(side, side))
        if len(faces) == 0:
            return None
        return max((tuple(int(v) for v in f) for f in faces), key=lambda f: f[2] * f[3])

    def _track(self, gray: np.ndarray, near: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
        """The largest face in a window around `near`, of a size close to it (the same cascade: a tracked
        box is what the whole-frame search would mostly find, at a fraction of its cost)."""
        c = self.config
        height, width = gray.shape
        x, y, w, h = near
        m = round(c.track_margin * max(w, h))
        x0, y0, x1, y1 = max(0, x - m), max(0, y - m), min(width, x + w + m), min(height, y + h + m)
        smallest = max(16, int(c.min_face_frac * min(height, width)), int(min(w, h) / c.track_scale))
        largest = int(max(w, h) * c.track_scale) + 1
        if smallest > min(x1 - x0, y1 - y0):
            return None
        faces = self._face.detectMultiScale(gray[y0:y1, x0:x1], c.scale_factor, c.min_neighbors,
                                            minSize=(smallest, smallest), maxSize=(largest, largest))
        if len(faces) == 0:
            return None
        fx, fy, fw, fh = max((tuple(int(v) for v in f) for f in faces), key=lambda f: f[2] * f[3])
        return fx + x0, fy + y0, fw, fh

    def _describe(self, gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """(dim,) float32 features of the face at `box` in the equalised frame."""
        import cv2

        c = self.config
        height, width = gray.shape
        x, y, w, h = box
        crop = gray[y : y + h, x : x + w]
        eyes = self._eye.detectMultiScale(crop[: h // 2], 1.1, 5)
        _, _, weights = self._smile.detectMultiScale3(crop[h // 2 :], 1.1, 10, outputRejectLevels=True)
        smile = float(np.max(weights)) if len(weights) else 0.0
        patch = cv2.resize(crop, (c.crop_size, c.crop_size), interpolation=cv2.INTER_AREA)
        head = [
            (x + w / 2) / width,
            (y + h / 2) / height,
            w / width,
            h / height,
            min(len(eyes), 2) / 2,
            smile,
            float(patch.mean()) / 255.0,
            float(patch.std()) / 255.0,
        ]
        hog = self._hog.compute(patch).reshape(-1)  # (144,)
        return np.concatenate([np.asarray(head, np.float32), hog.astype(np.float32)])

    def locate(self, frames: Iterable[tuple[float, np.ndarray]]
               ) -> Iterator[tuple[float, np.ndarray, np.ndarray, tuple[int, int, int, int] | None]]:
        """(t, rgb, equalised gray, face box (x, y, w, h) px or None) per frame, without the features.

        The search and tracking of `__call__` (module docstring, `detect_every`), so another model that
        reads faces (features/face_expression.py) sees exactly the faces these features describe."""
        import cv2

        every = self.config.detect_every
        box: tuple[int, int, int, int] | None = None  # the previous frame's face, tracked into this one
        misses = 0  # frames in a row without a face
        for i, (t, rgb) in enumerate(frames):
            gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))  # (H, W) uint8
            if every == 1:
                found = self._detect(gray)
            else:
                # track a face seen in the previous frame (a whole search when that fails); after a gap
                # of N frames without one, search the whole frame on every N-th frame only
                whole = i % every == 0  # the subsample: the largest face of the frame, whatever was tracked
                search = whole or box is not None or misses < every
                near = None if whole else box
                found = self._track(gray, near) if near is not None else None
                if found is None and search:
                    found = self._detect(gray)
            box = found
            misses = 0 if found is not None else misses + 1
            yield t, rgb, gray, found

    def __call__(self, frames: Iterable[tuple[float, np.ndarray]], thumbnails: int = 0,
                 thumbnail_px: int = 64) -> VisionFeatures:
        """Every frame's features; with `thumbnails` > 0, up to that many face crops of `thumbnail_px`."""
        rows: list[np.ndarray] = []
        face: list[bool] = []
        times: list[float] = []
        crops = _EvenSample(thumbnails)
        for t, rgb, gray, box in self.locate(frames):
            face.append(box is not None)
            rows.append(self._describe(gray, box) if box is not None else np.zeros(self.dim, np.float32))
            times.append(t)
            if box is not None and thumbnails > 0 and crops.next_is_kept():
                crops.keep(_crop(rgb, box, thumbnail_px))
        feats = np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)
        return VisionFeatures(feats, np.asarray(face, dtype=bool), np.asarray(times, dtype=np.float64),
                              crops.pick())


def _crop(rgb: np.ndarray, box: tuple[int, int, int, int], px: int) -> np.ndarray:
    """The face box of an (H, W, 3) frame as a (px, px, 3) uint8 thumbnail."""
    import cv2

    x, y, w, h = box
    return cv2.resize(rgb[y : y + h, x : x + w], (px, px), interpolation=cv2.INTER_AREA)


class _EvenSample:
    """Keeps about `k` items spread evenly over a stream of unknown length, in O(k) memory.

    Items are kept at every `stride`-th position; when more than 2k are held, every other one is
    dropped and the stride doubles, so the kept positions stay evenly spaced. `pick()` takes k of them.
    `next_is_kept()` counts a position and says whether to make its item, so skipped ones cost nothing.
    """

    def __init__(self, k: int) -> None:
        self.k, self.stride, self.seen = k, 1, 0
        self.kept: list[np.ndarray] = []

    def next_is_kept(self) -> bool:
        self.seen += 1
        return (self.seen - 1) % self.stride == 0

    def keep(self, item: np.ndarray) -> None:
        self.kept.append(item)
        if len(self.kept) > 2 * self.k:
            self.kept = self.kept[::2]
            self.stride *= 2

    def pick(self) -> list[np.ndarray]:
        if len(self.kept) <= self.k:
            return self.kept
        return [self.kept[int(i)] for i in np.linspace(0, len(self.kept) - 1, self.k).round()]
