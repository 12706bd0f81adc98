"""A simulated stand-in for the shared mosi-utterance set, with its train-only label shortcut (docs/mcur.md).

    python benchmarks/sim_leaky_mosi.py --seed 1 --out /tmp/leaky1.npz            # the shortcut on
    python benchmarks/sim_leaky_mosi.py --seed 3 --leak-text 0 --leak-vision 0 --out /tmp/clean3.npz
    affectus experiment SPEC.yaml --data /tmp/leaky1.npz --preset mosi-utterance --threads 1 --out /tmp/x

The real set's text and vision features come from extractors trained on the training utterances, so
the training features encode the training labels (its README): a linear model fits train almost
perfectly from either and does much worse on valid; audio (openSMILE) does not leak. Here: the simulator
with the preset's shapes and split sizes, and, in the *training* split only, a class-dependent offset
(one random unit direction per Has0 class, times `--leak-*`) added to text and vision. With the
defaults a linear model scores about text 0.95 / 0.70, audio 0.66 / 0.63, vision 0.89 / 0.54 accuracy
on train / valid (printed), close to the real set's pattern. Writes the pickle-free .npz.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--text-strength", type=float, default=1.5)
    ap.add_argument("--audio-strength", type=float, default=0.4)
    ap.add_argument("--vision-strength", type=float, default=0.6)
    ap.add_argument("--leak-text", type=float, default=2.0)
    ap.add_argument("--leak-vision", type=float, default=1.5)
    args = ap.parse_args()

    from sklearn.linear_model import LogisticRegression

    from affectus.data.mmsa import dataset_from_raw
    from affectus.data.npz import write_npz
    from affectus.data.synthetic import SynthConfig, generate

    cfg = SynthConfig.from_preset("mosi-utterance", seed=args.seed, text_strength=args.text_strength,
                                  audio_strength=args.audio_strength, vision_strength=args.vision_strength)
    raw = generate(cfg)
    train, valid = raw["train"], raw["valid"]
    rng = np.random.default_rng([args.seed, 77])
    y = (train["regression_labels"] >= 0).astype(int)  # Has0 classes: negative / non-negative
    for m, leak in (("text", args.leak_text), ("vision", args.leak_vision)):
        dirs = rng.standard_normal((2, train[m].shape[-1])).astype(np.float32)  # (2, D), one per class
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        train[m] = train[m] + leak * dirs[y][:, None, :]  # (N, 1, D): train only
    yv = (valid["regression_labels"] >= 0).astype(int)
    for m in ("text", "audio", "vision"):  # what a linear probe sees (-inf audio values as 0)
        x, xv = (np.nan_to_num(s[m].reshape(len(s[m]), -1), neginf=0.0, posinf=0.0) for s in (train, valid))
        clf = LogisticRegression(C=0.01, max_iter=2000).fit(x, y)
        print(f"{m:6s} linear accuracy train {clf.score(x, y):.2f} valid {clf.score(xv, yv):.2f}")
    write_npz(dataset_from_raw(raw, source=args.out), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
