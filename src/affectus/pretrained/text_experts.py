"""Text experts: a logistic-regression head over frozen MiniLM sentence vectors, built from the user's data.

`build_text_expert` reads the expert's training and selection splits (never a test split), encodes the
transcripts with the packaged all-MiniLM-L6-v2 (features/text.py), fits scikit-learn's logistic regression
for each setting of a small grid on the training split, keeps the setting that scores best on the selection
split, and writes `weights.safetensors` and `expert.json` (provenance, scores, licence) atomically. The
score reported is on the selection split: it chose the setting, so it is a selection score (slightly
optimistic), and `expert.json` says so.

* meld-emotion: MELD's `train_sent_emo.csv` -> the seven emotions; setting (C, class weights) chosen on
  `dev_sent_emo.csv` by weighted F1 (the field's MELD metric). MELD's test CSV is never read.
* mosi-sentiment: the MOSI pickle's `train` split, utterances with a non-zero opinion score, -> negative /
  positive; C chosen on `valid` by Acc2 Non0; Acc2 Has0 (negative vs non-negative) is reported beside it,
  as the project reports MOSI.

`TextExpertModel` loads a built expert: the weights are checked against the sha256 in `expert.json`, and
the encoder against the fingerprint recorded at build time (a different MiniLM is refused, not used).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from affectus.errors import AffectusError
from affectus.pretrained.registry import EXPERT_JSON, TEXTS, WEIGHTS, Expert
from affectus.utils.io import lock_dir, read_json_file, write_bytes_atomic, write_json_atomic

_log = logging.getLogger(__name__)
FORMAT = 1
MAX_TOKENS = 128  # all-MiniLM-L6-v2 was trained on up to 128 tokens; recognised speech runs long
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
SEEN = 0.5  # a run split whose transcripts are at least this share of an expert's split's is that split
MOSI_FILE = "mosi_utterance_trainval.pkl"


# ------------------------------------------------------------------------------------------ data


def _meld(data: Path) -> tuple[dict[str, tuple[list[str], np.ndarray]], list[dict[str, Any]]]:
    from affectus.data.meld import MELD_FILES, read_meld_csv
    from affectus.data.mmsa import sha256_file

    if not data.is_dir():
        raise AffectusError(f"--data {data}: {'no such folder' if not data.exists() else 'not a folder'}; "
                            f"meld-emotion is built from the folder holding MELD's "
                            f"{MELD_FILES['train']} and {MELD_FILES['valid']}")
    splits, files = {}, []
    for split in ("train", "valid"):  # MELD's test CSV is held out: never read here
        path = data / MELD_FILES[split]
        if not path.is_file():
            raise AffectusError(f"--data {data}: no {MELD_FILES[split]} (meld-emotion needs MELD's train and dev CSVs)")
        s = read_meld_csv(path, split, "emotion")
        splits[split] = (list(s.raw_text or []), s.labels.astype(np.int64))
        files.append({"file": path.name, "split": split, "rows": len(s), "sha256": sha256_file(path)})
    return splits, files


def _mosi(data: Path) -> tuple[dict[str, tuple[list[str], np.ndarray]], list[dict[str, Any]]]:
    from affectus.data.mmsa import load_dataset, sha256_file

    if data.is_dir():
        data = data / MOSI_FILE
    if not data.is_file():
        raise AffectusError(f"--data {data}: no such file (mosi-sentiment is built from an MMSA pickle / .npz "
                            f"with train and valid splits and raw_text, e.g. {MOSI_FILE})")
    ds = load_dataset(data)
    for split in ("train", "valid"):
        if split not in ds:
            raise AffectusError(f"--data {data}: no '{split}' split (has {', '.join(ds.splits)}); "
                                "mosi-sentiment fits on train and chooses C on valid")
        if ds[split].raw_text is None:
            raise AffectusError(f"--data {data}: split '{split}' has no raw_text (the transcripts)")
    splits = {s: (list(ds[s].raw_text), ds[s].labels.astype(np.float64)) for s in ("train", "valid")}
    files = [{"file": data.name, "split": "train+valid", "rows": sum(len(ds[s]) for s in splits),
              "sha256": sha256_file(data)}]
    return splits, files


# ------------------------------------------------------------------------------------------ fitting


def _fit(x: np.ndarray, y: np.ndarray, c: float, class_weight: str | None) -> Any:
    from sklearn.linear_model import LogisticRegression

    # lbfgs is deterministic: the same data and setting give the same weights
    return LogisticRegression(C=c, class_weight=class_weight, max_iter=2000).fit(x, y)


def _weights(model: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, D) weights and (C,) biases whose softmax is the model's probabilities (a binary model's one
    logit z becomes the pair (0, z): softmax of it is (1 - sigmoid z, sigmoid z))."""
    coef, bias = model.coef_.astype(np.float32), model.intercept_.astype(np.float32)
    if n_classes == 2 and coef.shape[0] == 1:
        coef = np.concatenate([np.zeros_like(coef), coef])
        bias = np.concatenate([np.zeros_like(bias), bias])
    if list(model.classes_) != list(range(n_classes)):
        raise AffectusError(f"the training split holds classes {list(model.classes_)}, expected all of "
                            f"0..{n_classes - 1}: every class needs training examples")
    return coef, bias


def _select_meld(xtr, ytr, xdv, ydv) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    from sklearn.metrics import accuracy_score, f1_score

    from affectus.data.meld import EMOTIONS

    tried, best = [], None
    for cw in (None, "balanced"):
        for c in C_GRID:
            m = _fit(xtr, ytr, c, cw)
            f1 = float(f1_score(ydv, m.predict(xdv), average="weighted"))
            tried.append({"C": c, "class_weight": cw, "dev_weighted_f1": round(100 * f1, 2)})
            if best is None or f1 > best[0]:
                best = (f1, m, {"C": c, "class_weight": cw})
    f1, model, setting = best
    pred = model.predict(xdv)
    per_class = f1_score(ydv, pred, average=None, labels=list(range(len(EMOTIONS))), zero_division=0)
    scores = {"split": "dev", "rows": len(ydv), "weighted_f1": round(100 * f1, 2),
              "accuracy": round(100 * float(accuracy_score(ydv, pred)), 2),
              "macro_f1": round(100 * float(np.mean(per_class)), 2),
              "per_class_f1": {e: round(100 * float(v), 2) for e, v in zip(EMOTIONS, per_class)},
              "selection": "C and class weights were chosen on this split: a selection score, not a held-out one"}
    return model, {**setting, "selected_on": "dev weighted F1", "grid": tried}, scores


def _acc2(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """(Has0, Non0) Acc2 in %: negative vs non-negative over every row; negative vs positive over rows with a
    non-zero score (the project's MOSI convention)."""
    has0 = float(np.mean((scores >= 0) == positive))
    nz = scores != 0
    non0 = float(np.mean((scores[nz] > 0) == positive[nz])) if nz.any() else float("nan")
    return 100 * has0, 100 * non0


def _select_mosi(xtr, str_, xva, sva) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    from sklearn.metrics import f1_score

    keep = str_ != 0  # a zero opinion score is neither side: left out of the fit
    ytr = (str_[keep] > 0).astype(np.int64)
    tried, best = [], None
    for c in C_GRID:
        m = _fit(xtr[keep], ytr, c, None)
        has0, non0 = _acc2(sva, m.predict(xva) == 1)
        tried.append({"C": c, "acc2_has0": round(has0, 2), "acc2_non0": round(non0, 2)})
        if best is None or non0 > best[0]:
            best = (non0, m, {"C": c, "class_weight": None})
    _, model, setting = best
    pos = model.predict(xva) == 1
    has0, non0 = _acc2(sva, pos)
    nz = sva != 0
    scores = {"split": "valid", "rows": len(sva), "acc2_has0": round(has0, 2), "acc2_non0": round(non0, 2),
              "f1_non0": round(100 * float(f1_score(sva[nz] > 0, pos[nz], average="weighted")), 2),
              "selection": "C was chosen on this split (by Acc2 Non0): a selection score, not a held-out one"}
    return model, {**setting, "selected_on": "valid Acc2 Non0", "train_rows_used": int(keep.sum()),
                   "grid": tried}, scores


# ------------------------------------------------------------------------------------------ build


def build_text_expert(expert: Expert, data: str | Path) -> dict[str, Any]:
    """Fit `expert` from `data` and write it to its folder; returns the record written to expert.json.
    The folder is locked for the build: a second build of the same expert at once is refused at the start."""
    from contextlib import ExitStack

    data = Path(data)
    reader = {"meld-emotion": _meld, "mosi-sentiment": _mosi}.get(expert.name)
    if reader is None:
        raise AffectusError(f"pretrained {expert.name}: not a text expert built from data ({expert.build_hint})")
    splits, files = reader(data)  # the data is checked before the folder is made or locked
    with ExitStack() as stack:
        try:
            folder = stack.enter_context(lock_dir(expert.folder(), "pretrained expert folder"))
        except AffectusError as err:
            if "another process" not in str(err):
                raise
            raise AffectusError(f"pretrained {expert.name}: another build of it is running ({expert.folder()}); "
                                "wait for it to finish") from None
        return _build_locked(expert, data, splits, files, folder)


def _build_locked(expert: Expert, data: Path, splits: dict[str, Any], files: list[dict[str, Any]],
                  folder: Path) -> dict[str, Any]:
    from affectus.features.text import MiniLMEncoderConfig, MiniLMTextEncoder

    encoder = MiniLMTextEncoder(MiniLMEncoderConfig(max_length=MAX_TOKENS))
    (ttr, ytr), (tva, yva) = splits["train"], splits["valid"]
    _log.info("%s: encoding %d + %d transcripts with MiniLM", expert.name, len(ttr), len(tva))
    xtr = encoder.sentence_embeddings(ttr, where=f"{data} train")
    xva = encoder.sentence_embeddings(tva, where=f"{data} valid")
    select = _select_meld if expert.name == "meld-emotion" else _select_mosi
    model, fit, scores = select(xtr, ytr, xva, yva)
    classes = expert.default_classes
    coef, bias = _weights(model, len(classes))
    from safetensors.numpy import save

    blob = save({"weight": coef, "bias": bias})
    # which transcripts the expert learned from (train) and chose its setting on (valid), as hashes: a run whose
    # own splits are those transcripts gets its scores there marked (pretrained/views.py), whatever file they
    # came in (MELD's CSVs or an .npz imported from them)
    texts_blob = save({"train": text_fingerprints(ttr), "valid": text_fingerprints(tva)})
    record = {
        "format": FORMAT, "name": expert.name, "modality": expert.modality, "task": expert.task,
        "classes": list(classes), "licence": expert.licence,
        "data": {"source": str(data.resolve()), "files": files, "description": expert.data},
        "encoder": encoder.record(),
        "fit": {"model": "scikit-learn LogisticRegression (lbfgs) on L2-normalised MiniLM sentence vectors", **fit},
        "scores": scores,
        "weights": {"file": WEIGHTS, "sha256": hashlib.sha256(blob).hexdigest()},
        "texts": {"file": TEXTS, "sha256": hashlib.sha256(texts_blob).hexdigest(),
                  "what": "64-bit hashes of the normalised transcripts of train (fitted) and valid (chose the setting)"},
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": f"affectus pretrained build {expert.name} --data {data}",
    }
    # weights first, the record last: a record always names weights that are already whole
    write_bytes_atomic(folder / WEIGHTS, blob)
    write_bytes_atomic(folder / TEXTS, texts_blob)
    write_json_atomic(folder / EXPERT_JSON, record)
    return record


# ------------------------------------------------------------------------------------------ load


class TextExpertModel:
    """A built text expert: `predict_texts(texts)` -> (N, C) probabilities in `classes` order."""

    def __init__(self, expert: Expert) -> None:
        self.expert = expert
        folder = expert.folder()
        path = folder / EXPERT_JSON
        if not path.is_file():
            raise AffectusError(f"pretrained {expert.name}: not built; build it once with `{expert.build_hint}` "
                                f"(it is kept in {folder})")
        record = read_json_file(path, "expert record")
        weights = folder / WEIGHTS
        try:
            blob = weights.read_bytes()
        except OSError:
            raise AffectusError(f"pretrained {expert.name}: {weights} is missing; rebuild it with "
                                f"`{expert.build_hint}`") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise AffectusError(f"{path}: not an expert record of this version; rebuild it with `{expert.build_hint}`")
        if hashlib.sha256(blob).hexdigest() != (record.get("weights") or {}).get("sha256"):
            raise AffectusError(f"pretrained {expert.name}: {weights} differs from the one its build wrote; "
                                f"rebuild it with `{expert.build_hint}`")
        from safetensors.numpy import load

        arrays = load(blob)
        self.weight, self.bias = arrays["weight"], arrays["bias"]  # (C, D), (C,)
        self.classes = tuple(record["classes"])
        if self.weight.shape[0] != len(self.classes) or self.bias.shape != (len(self.classes),):
            raise AffectusError(f"{weights}: shapes do not match {len(self.classes)} classes; rebuild it")
        self.record = record
        self._encoder: Any = None

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from affectus.features.text import text_encoder_from_record

            # the recorded fingerprint: another MiniLM would give vectors these weights were not fitted on
            self._encoder = text_encoder_from_record(self.record["encoder"])
        return self._encoder

    def seen_texts(self) -> dict[str, np.ndarray] | None:
        """The hashes of the transcripts the expert was fitted on ("train") and chose its setting on ("valid");
        None for an expert built before they were recorded (or whose file no longer matches its record)."""
        entry = self.record.get("texts")
        path = self.expert.folder() / TEXTS
        if not isinstance(entry, dict) or not path.is_file():
            return None
        blob = path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
            return None
        from safetensors.numpy import load

        return load(blob)

    def predict_texts(self, texts: list[str]) -> np.ndarray:
        x = self.encoder.sentence_embeddings(texts, where=f"transcript for {self.expert.name}")  # (N, D)
        if x.shape[1] != self.weight.shape[1]:
            raise AffectusError(f"pretrained {self.expert.name}: encoder width {x.shape[1]}, the weights expect "
                                f"{self.weight.shape[1]}; rebuild it")
        z = x @ self.weight.T + self.bias  # (N, C)
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)


def text_fingerprints(texts: list[str]) -> np.ndarray:
    """Sorted unique 64-bit hashes of transcripts, case and spacing normalised: what `seen_texts` compares."""
    hashes = {int.from_bytes(hashlib.blake2b(" ".join(t.lower().split()).encode(), digest_size=8).digest(), "little")
              for t in texts if t and t.strip()}
    return np.array(sorted(hashes), dtype=np.uint64)


def seen_share(mine: np.ndarray, seen: np.ndarray) -> float:
    """The share of the hashes `mine` (`text_fingerprints` of a split's transcripts) that are among `seen`
    (0 when there are none)."""
    return float(np.isin(mine, seen).mean()) if mine.size else 0.0
