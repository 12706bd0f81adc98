"""Load a finished run directory and query it. Needs nothing but the run directory.

`load(run_dir).predict(...)` accepts a `Split`, a `Batch`, or raw arrays and returns a
`Prediction`: the final class and probabilities, the label under the scheme's Acc2 rule, a
continuous score where the model regresses one, each modality's own prediction, and the MCR
router weights (how much each modality counted in the verdict).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES, Split
from affectus.errors import AffectusError
from affectus.inference import checkpoints as ckpt
from affectus.models.registry import create_model, make_config

CLASS_NAMES = ("negative", "neutral", "positive")  # the sentiment schemes' classes


@dataclass
class Prediction:
    classes: np.ndarray  # (N,) int class index under the run's label scheme
    probabilities: np.ndarray  # (N, C)
    modality_classes: np.ndarray | None  # (N, 3): text / audio / vision own predictions
    modality_probabilities: np.ndarray | None  # (N, 3, C)
    router_weights: np.ndarray | None  # (N, 3): text / audio / vision weights, sum to 1
    class_names: tuple[str, ...] = CLASS_NAMES
    available: np.ndarray | None = None  # (N, 3) bool: which modalities each sample had; None: all
    # (N,) bool under the scheme's Acc2 rule, True meaning binary_names[1] (CH-SIMS family: positive vs
    # non-positive; MOSI family: non-negative vs negative); None for schemes without one (categorical)
    binary: np.ndarray | None = None
    binary_names: tuple[str, ...] = ()
    scores: np.ndarray | None = None  # (N,) continuous score, for models with a regression output (Self-MM)

    def labels(self) -> list[str]:
        return [self.class_names[c] for c in self.classes]

    def binary_labels(self) -> list[str]:
        """Each sample's label under the Acc2 rule, e.g. 'positive' / 'non-positive' (CH-SIMS family)."""
        if self.binary is None:
            raise AffectusError("this run's label scheme has no binary (Acc2) rule; use labels()")
        return [self.binary_names[int(b)] for b in self.binary]

    def explain(self, i: int) -> dict[str, Any]:
        """One sample's verdict with its per-modality explanation (absent modalities are left out)."""
        names = self.class_names
        out: dict[str, Any] = {"verdict": names[int(self.classes[i])],
                               "probabilities": dict(zip(names, map(float, self.probabilities[i])))}
        if self.binary is not None:
            out["acc2"] = self.binary_names[int(self.binary[i])]
        if self.scores is not None:
            out["score"] = float(self.scores[i])
        if self.modality_classes is not None:
            out["modalities"] = {
                m: {"prediction": names[int(self.modality_classes[i, k])],
                    "weight": None if self.router_weights is None else float(self.router_weights[i, k])}
                for k, m in enumerate(MODALITIES)
                if self.available is None or self.available[i, k]
            }
        return out


class Predictor:
    def __init__(self, run_dir: str | Path, device: str = "cpu"):
        self.run_dir = Path(run_dir)
        self.info = ckpt.read_run(self.run_dir)
        self.device = torch.device(device)
        cfg_values = dict(self.info["model_config"])
        self.model_name = self.info["model_name"]
        config = make_config(self.model_name, cfg_values)
        # building the shell draws initial weights from torch's RNG: keep the caller's RNG untouched
        with torch.random.fork_rng(devices=[]):
            bert_file = self.run_dir / "bert_config.json"
            if bert_file.is_file():
                # a fine-tuned BERT travels inside model.safetensors; build its shell from the saved config
                from transformers import BertConfig

                from affectus.models.cmc import CMC

                self.model = CMC(config, bert_config=BertConfig.from_json_file(str(bert_file)))
            else:
                self.model = create_model(self.model_name, config)
        weights = ckpt.load_tensors(self.run_dir / "model.safetensors")
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise AffectusError(f"{self.run_dir}/model.safetensors does not match the model config "
                                f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
        self.model.to(self.device).eval()
        from affectus.evaluation.schemes import get_scheme

        # runs written before label schemes recorded only the family name
        self.scheme = get_scheme(self.info.get("scheme") or self.info.get("family", "mosi"))
        self.dims: dict[str, int] = self.info["dims"]

    def _check(self, arrays: dict[str, np.ndarray]) -> None:
        for m in MODALITIES:
            a = arrays[m]
            if a.ndim != 3 or a.shape[2] != self.dims[m]:
                raise AffectusError(f"{m}: expected shape (N, L, {self.dims[m]}), got {tuple(a.shape)}")
            if not np.isfinite(a).all():
                raise AffectusError(f"{m}: contains NaN or infinite values")

    @torch.no_grad()
    def predict(self, data: Split | Batch | dict[str, np.ndarray], batch_size: int = 256,
                available: str | tuple[str, ...] | None = None) -> Prediction:
        """Predict for a Split, a Batch, or a dict of arrays {text, audio, vision[, *_lengths]}.

        `available` ('text,audio', 'l,a' or a tuple of names) scores as if the other modalities were
        absent: they are zero-filled with length 0 and marked absent (data/missing.py).
        """
        from affectus.evaluation.evaluate import predict_split

        if available is not None and isinstance(data, Batch):
            raise AffectusError("predict: available= applies to arrays or a Split, not a Batch")
        mask = None
        if isinstance(data, Batch):
            o = self.model(data.to(self.device))
            res = {"logits": o.logits.cpu().numpy()}
            if o.modality_logits is not None:
                res["modality_logits"] = o.modality_logits.cpu().numpy()
            if o.router_weights is not None:
                res["router_weights"] = o.router_weights.cpu().numpy()
            if o.regression is not None:
                res["regression"] = o.regression.float().cpu().numpy()
        else:
            split = data if isinstance(data, Split) else self._split_from_arrays(data)
            split = _restrict(split, available)
            mask = split.available
            res = predict_split(self.model, split, batch_size, self.device)
        return _to_prediction(res, self.scheme, mask)

    def _split_from_arrays(self, arrays: dict[str, np.ndarray]) -> Split:
        try:
            feats = {m: np.asarray(arrays[m], dtype=np.float32) for m in MODALITIES}
        except KeyError as err:
            raise AffectusError(f"predict: missing array {err.args[0]!r} (need text, audio, vision)") from None
        self._check(feats)
        n = feats["text"].shape[0]
        if any(feats[m].shape[0] != n for m in MODALITIES):
            raise AffectusError("predict: text, audio and vision hold different numbers of samples")
        lengths = {m: np.asarray(arrays.get(f"{m}_lengths", np.full(n, feats[m].shape[1])), dtype=np.int64)
                   for m in MODALITIES}
        return Split(name="input", **feats, **{f"{m}_lengths": lengths[m] for m in MODALITIES},
                     labels=np.zeros(n, np.float32), ids=[str(i) for i in range(n)])

    def evaluate(self, split: Split, available: str | tuple[str, ...] | None = None,
                 subset_files: tuple[str, str] | None = None) -> dict[str, Any]:
        """The run's metrics on `split` (same keys with or without `available`). `subset_files`: the
        authors' D_msc / D_msi id files (e.g. `[test]D_msc.pkl`), scored instead of computed subsets."""
        from affectus.evaluation.evaluate import evaluate_split

        masks = None
        if subset_files is not None:
            from affectus.evaluation.subsets import load_subset_ids, masks_from_ids

            msc, msi = (load_subset_ids(f, split.name) for f in subset_files)
            masks = masks_from_ids(split.ids, msc, msi)
        split = _restrict(split, available)
        for m in MODALITIES:
            if split.features(m).shape[2] != self.dims[m]:
                raise AffectusError(f"split {split.name} {m}: feature dim {split.features(m).shape[2]}, "
                                    f"the model expects {self.dims[m]}")
        return evaluate_split(self.model, split, self.scheme, 256, self.device, masks=masks)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _restrict(split: Split, available: str | tuple[str, ...] | list[str] | None) -> Split:
    if available is None:
        return split
    from affectus.data.missing import parse_available, with_availability

    names = parse_available(available) if isinstance(available, str) else parse_available(",".join(available))
    return with_availability(split, names)


def _to_prediction(res: dict[str, np.ndarray], scheme, available: np.ndarray | None = None) -> Prediction:
    probs = _softmax(res["logits"])
    ml = res.get("modality_logits")
    reg = res.get("regression")
    return Prediction(
        classes=probs.argmax(-1),
        probabilities=probs,
        modality_classes=None if ml is None else ml.argmax(-1),
        modality_probabilities=None if ml is None else _softmax(ml),
        router_weights=res.get("router_weights"),
        class_names=tuple(scheme.class_names),
        available=available,
        binary=scheme.binary(res["logits"]),
        binary_names=tuple(scheme.binary_names),
        scores=None if reg is None else reg.reshape(-1),
    )


def load(run_dir: str | Path, device: str = "cpu") -> Predictor:
    return Predictor(run_dir, device)
