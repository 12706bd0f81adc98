"""Load a finished run directory and query it. Needs nothing but the run directory.

`load(run_dir).predict(...)` accepts a `Split`, a `Batch`, or raw arrays and returns a
`Prediction`: the final class and probabilities, the label under the scheme's Acc2 rule, a
continuous score where the model regresses one, each modality's own prediction, and the MCR
router weights (how much each modality counted in the verdict).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affectus.data.batches import Batch
from affectus.data.types import MODALITIES, MERDataset, Split, to_classes
from affectus.errors import AffectusError, suggest
from affectus.models.registry import create_model, get_model_entry, make_config
from affectus.runs import checkpoints as ckpt

CLASS_NAMES = ("negative", "neutral", "positive")  # the sentiment schemes' classes
# what an explanation says of an absent modality: a model that zero-fills it (Capabilities.excludes_absent
# False, e.g. the faithful CMC, as the paper does) still feeds its zeros into the verdict
ZERO_FILLED = "zero-filled as the model requires (it cannot leave a modality out): its zeros entered the verdict"
LEFT_OUT = "left out of the verdict"
# `followed` names a modality only when its weight (without a router: its probability of the verdict's
# class) leads every other modality that entered the verdict by this much; otherwise none led it
FOLLOW_MARGIN = 0.1


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
    # models with experts (CMC+: a modality may have two, e.g. text:transcript and text:file): their names,
    # each expert's own probabilities (N, K, C) and its share of the router's weight (N, K)
    experts: tuple[str, ...] = ()
    expert_probabilities: np.ndarray | None = None
    expert_weights: np.ndarray | None = None
    # True: the model zero-fills absent modalities (they entered the verdict); False: it leaves them out
    zero_filled: bool = False

    def labels(self) -> list[str]:
        return [self.class_names[c] for c in self.classes]

    def binary_labels(self) -> list[str]:
        """Each sample's label under the Acc2 rule, e.g. 'positive' / 'non-positive' (CH-SIMS family)."""
        if self.binary is None:
            raise AffectusError("this run's label scheme has no binary (Acc2) rule; use labels()")
        return [self.binary_names[int(b)] for b in self.binary]

    def entered(self, i: int) -> list[int]:
        """The modalities (indices) that entered sample i's verdict: the present ones, and the absent ones
        too where the model zero-fills them."""
        return [k for k in range(len(MODALITIES))
                if self.available is None or self.available[i, k] or self.zero_filled]

    def absent_notes(self, i: int) -> dict[str, str]:
        """{modality: what became of it} for each modality sample i lacks."""
        if self.available is None:
            return {}
        return {m: ZERO_FILLED if self.zero_filled else LEFT_OUT
                for k, m in enumerate(MODALITIES) if not self.available[i, k]}

    def explain(self, i: int) -> dict[str, Any]:
        """One sample's verdict with its per-modality explanation: every modality that entered the verdict
        (an absent one that the model zero-filled carries an `absent` note); `absent` names what became of
        each modality the sample lacks."""
        names = self.class_names
        out: dict[str, Any] = {"verdict": names[int(self.classes[i])],
                               "probabilities": dict(zip(names, map(float, self.probabilities[i])))}
        if self.binary is not None:
            out["acc2"] = self.binary_names[int(self.binary[i])]
        if self.scores is not None:
            out["score"] = float(self.scores[i])
        if self.modality_classes is not None:
            notes = self.absent_notes(i)
            out["modalities"] = {
                MODALITIES[k]: {"prediction": names[int(self.modality_classes[i, k])],
                                "weight": None if self.router_weights is None else float(self.router_weights[i, k]),
                                **({"absent": notes[MODALITIES[k]]} if MODALITIES[k] in notes else {})}
                for k in self.entered(i)
            }
            out["followed"] = self.followed(i)
        notes = self.absent_notes(i)
        if notes:
            out["absent"] = notes
        if self.expert_probabilities is not None and len(self.experts) > len(MODALITIES):
            # only where a modality has several experts: otherwise "modalities" already says it all
            out["experts"] = {
                e: {"prediction": names[int(self.expert_probabilities[i, k].argmax())],
                    "weight": None if self.expert_weights is None else float(self.expert_weights[i, k])}
                for k, e in enumerate(self.experts)
                if self.expert_weights is None or self.expert_weights[i, k] > 0
            }
        return out

    def followed(self, i: int) -> str | None:
        """The modality the verdict followed: of those that entered the verdict, the one with the largest
        router weight (without a router, the largest probability of the verdict's class), when its own
        prediction is the verdict and it leads every other one by FOLLOW_MARGIN; else None (equal weights
        lead nowhere, and naming one of them would be arbitrary)."""
        if self.modality_classes is None:
            return None
        entered = self.entered(i)
        if not entered:
            return None
        if self.router_weights is not None:
            score = self.router_weights[i]
        else:
            score = self.modality_probabilities[i, :, int(self.classes[i])]
        ranked = sorted(entered, key=lambda k: -float(score[k]))
        lead = ranked[0]
        if self.modality_classes[i, lead] != self.classes[i]:
            return None
        if len(ranked) > 1 and float(score[lead]) - float(score[ranked[1]]) < FOLLOW_MARGIN:
            return None
        return MODALITIES[lead]


class Predictor:
    def __init__(self, run_dir: str | Path, device: str = "cpu"):
        self.run_dir = Path(run_dir)
        self.info = ckpt.read_run(self.run_dir)
        self.device = torch.device(device)
        cfg_values = dict(self.info["model_config"])
        self.model_name = self.info["model_name"]
        self.dims: dict[str, int] = self.info["dims"]
        if sorted(self.dims) != sorted(MODALITIES) or not all(_is_int(d) and d > 0 for d in self.dims.values()):
            raise AffectusError(f"{self.run_dir}/run.json: dims {self.dims!r}, expected a positive size for each "
                                f"of {', '.join(MODALITIES)}")
        # the weights first, checked against run.json's sha256: nothing is built from run.json before that
        weights = ckpt.load_weights(self.run_dir, self.info)
        extras: dict[str, Any] = {}
        bert_file = self.run_dir / "bert_config.json"
        where = f"{self.run_dir}/run.json: model_config"
        try:
            config = make_config(self.model_name, cfg_values)
            _check_sizes(config, weights, where)
            self.can = get_model_entry(self.model_name).can(config)
            if bert_file.is_file():
                # a fine-tuned BERT travels inside model.safetensors; build its shell from the saved config
                from transformers import BertConfig

                extras["bert_config"] = BertConfig.from_json_file(str(bert_file))
            # then the model's shell on the meta device (shapes, no memory): a hand-edited model_config that
            # asks for other (or enormous) tensors than the checksummed file holds is refused here, before
            # a byte is allocated for it
            # a run that fine-tuned its text encoder (train.text_encoder_finetune): the tuned layers' shell,
            # from run.json's record; their weights are in model.safetensors with the model's
            tuner = self._tuner_record()
            _check_shapes(self.model_name, config, extras, weights, self.run_dir, tuner)
            # building the shell draws initial weights from torch's RNG: keep the caller's RNG untouched
            with torch.random.fork_rng(devices=[]):
                self.model = _build(self.model_name, config, extras, tuner)
        except SHELL_ERRORS as err:  # a hand-edited model_config with wrong value types or sizes
            raise AffectusError(f"{where} does not build a {self.model_name} model "
                                f"({type(err).__name__}: {' '.join(str(err).split())[:300]})") from None
        try:
            missing, unexpected = self.model.load_state_dict(weights, strict=False)
        except RuntimeError as err:  # a size mismatch the meta check could not see (a pretrained BERT path)
            raise AffectusError(f"{self.run_dir}/model.safetensors does not match {where} "
                                f"({' '.join(str(err).split())[:300]})") from None
        if missing or unexpected:
            raise AffectusError(f"{self.run_dir}/model.safetensors does not match the model config "
                                f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
        self.model.to(self.device).eval()
        from affectus.data.schemes import get_scheme

        # runs written before label schemes recorded only the family name
        self.scheme = get_scheme(self.info.get("scheme") or self.info.get("family", "mosi"))
        self._text_inputs: tuple[Any, Any, bool] | None = None  # the run's text encoder, built on first use
        self._experts: dict[str, Any] = {}  # the run's pretrained experts (train.pretrained_experts), loaded on first use

    @property
    def file_dims(self) -> dict[str, int]:
        """The feature widths a file (or a clip's extracted features) gives this run: `dims` before the
        context columns that the run adds itself (`train.context`: data/context.py)."""
        dims = dict(self.dims)
        experts = self.info.get("pretrained_experts")
        if isinstance(experts, dict) and isinstance(experts.get("width"), int):
            dims["text"] = experts["width"]  # before the experts' columns (and the context's, which come first)
        if self.info.get("context"):
            from affectus.data.context import context_from_record

            dims["text"] = context_from_record(self.info["context"], f"{self.run_dir}/run.json context")[2]
        return dims

    def reads(self, split: Split) -> Split:
        """`split` as this run reads it. When the run re-encoded transcripts (`train.text_inputs`, recorded
        in run.json), the same encoder re-encodes the split's `raw_text` (then any modality the split
        marks absent is absent again); otherwise the split itself. `predict` and `evaluate` call this
        on every Split they get, so callers pass files' splits as they are. A run trained with context
        (`train.context`, run.json's `context`) then gets the split's own context, built from its groups as
        training built it (a split without groups is refused); so does a run whose model reads utterance
        sequences (run.json's `sequence_context`)."""
        split = self._reads_text(split)
        context = self.info.get("context")
        if context:
            from affectus.data.context import context_from_run

            split = context_from_run(split, context, f"{self.run_dir}")
        experts = self.info.get("pretrained_experts")
        if experts:  # train.pretrained_experts: the same experts' probabilities as text columns
            from affectus.pretrained.views import experts_from_run

            split = experts_from_run(split, experts, f"{self.run_dir}", self._experts)
        sequences = self.info.get("sequence_context")
        if sequences:  # a model that reads each utterance's video / dialogue itself: the split's own sequences
            from affectus.data.context import sequence_from_run

            split = sequence_from_run(split, sequences, f"{self.run_dir}")
        return split

    def _reads_text(self, split: Split) -> Split:
        record = self.info.get("text_inputs")
        if not record:
            return split
        if split.available is not None and not split.available[:, 0].any():
            return split  # no sample has text: nothing to encode (e.g. a clip without a transcript)
        from affectus.data.missing import with_availability
        from affectus.features.text import reencode_dataset, text_context_of, text_inputs_from_record

        if self._text_inputs is None:  # built once: every request or condition reuses the encoder
            self._text_inputs = text_inputs_from_record(record)
        encoder, text, bert = self._text_inputs
        # train.text_context: the split's own neighbours in the encoder's input, as training read them
        encoded = reencode_dataset(MERDataset(splits={split.name: split}, source=self.run_dir.name), encoder,
                                   text=text, bert=bert, context=text_context_of(record))
        out = encoded[split.name]
        tuner = self._tuner_record()
        if tuner is not None:  # the fine-tuned layers' input: the recorded encoder's frozen lower layers
            from affectus.features.text_finetune import split_tokens

            out = split_tokens(out, encoder, tuner["first"], f"split {split.name} raw_text")
        return out if split.available is None else with_availability(out, split.available)

    def _tuner_record(self) -> dict[str, Any] | None:
        record = self.info.get("text_inputs")
        if not isinstance(record, dict) or record.get("finetune") is None:
            return None
        from affectus.features.text_finetune import check_finetune_record

        return check_finetune_record(record["finetune"], f"{self.run_dir}/run.json")

    @torch.no_grad()
    def predict(self, data: Split | Batch | dict[str, np.ndarray], batch_size: int = 256,
                available: str | tuple[str, ...] | None = None) -> Prediction:
        """Predict for a Split, a Batch, or a dict of arrays {text, audio, vision[, *_lengths]}.

        Arrays are (N, L, D) numbers with the run's D per modality; lengths are (N,) integers in
        [0, L] (default: L). Anything else is one AffectusError saying which array is wrong.
        `available` ('text,audio', 'l,a' or a tuple of names) scores as if the other modalities were
        absent: they are zero-filled with length 0 and marked absent (data/missing.py).
        """
        from affectus.evaluation.evaluate import output_arrays, predict_split

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise AffectusError(f"predict: batch_size {batch_size!r}: expected a positive integer")
        if available is not None and isinstance(data, Batch):
            raise AffectusError("predict: available= applies to arrays or a Split, not a Batch")
        mask = None
        if isinstance(data, Batch):
            res = output_arrays(self.model(data.to(self.device)))
        else:
            split = self.reads(data) if isinstance(data, Split) else self._split_from_arrays(data)
            split = _restrict(split, available)
            mask = split.available
            res = predict_split(self.model, split, batch_size, self.device)
        pred = _to_prediction(res, self.run_dir, self.scheme, mask, self.can.experts)
        pred.zero_filled = not self.can.excludes_absent
        return pred

    def _split_from_arrays(self, arrays: Any) -> Split:
        if not isinstance(arrays, Mapping):
            raise AffectusError(f"predict: expected a Split, a Batch or a dict of arrays {{text, audio, vision}}, "
                                f"got {type(arrays).__name__}")
        if self.info.get("context"):  # arrays name no group: there are no neighbours to read
            raise AffectusError(f"predict: {self.run_dir} reads context (train.context = "
                                f"{self.info['context'].get('window')}), which needs each sample's group and "
                                f"position: give a Split (a file) with groups, not arrays")
        if self.info.get("sequence_context"):
            raise AffectusError(f"predict: {self.run_dir} reads each utterance's video or dialogue (window "
                                f"{self.info['sequence_context'].get('window')}), which needs each sample's group "
                                f"and position: give a Split (a file) with groups, not arrays")
        allowed = [*MODALITIES, *(f"{m}_lengths" for m in MODALITIES)]
        for key in arrays:
            if key not in allowed:
                raise AffectusError(f"predict: unknown array {key!r}{suggest(str(key), allowed)} "
                                    f"(expected {', '.join(allowed)})")
        feats = {m: self._features(m, arrays) for m in MODALITIES}
        n = feats["text"].shape[0]
        if any(feats[m].shape[0] != n for m in MODALITIES):
            counts = ", ".join(f"{m} {feats[m].shape[0]}" for m in MODALITIES)
            raise AffectusError(f"predict: text, audio and vision hold different numbers of samples ({counts})")
        if n == 0:
            raise AffectusError("predict: empty batch (0 samples)")
        lengths = {m: _lengths(m, arrays.get(f"{m}_lengths"), n, feats[m].shape[1]) for m in MODALITIES}
        return Split(name="input", **feats, **{f"{m}_lengths": lengths[m] for m in MODALITIES},
                     labels=np.zeros(n, np.float32), ids=[str(i) for i in range(n)])

    def _features(self, m: str, arrays: Mapping[str, Any]) -> np.ndarray:
        """arrays[m] as float32 (N, L, D) with the run's D and L >= 1, every value finite."""
        if m not in arrays:
            raise AffectusError(f"predict: missing array {m!r} (need text, audio, vision)")
        a = _numbers(m, arrays[m], "biuf")
        if a.ndim != 3 or a.shape[2] != self.dims[m]:
            raise AffectusError(f"predict: {m}: expected shape (N, L, {self.dims[m]}), got {tuple(a.shape)}")
        if a.shape[1] == 0:
            raise AffectusError(f"predict: {m}: sequence length L = 0 (each sample needs at least one step)")
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: refused below
            a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise AffectusError(f"predict: {m}: contains NaN or infinite values (or values beyond float32)")
        return a

    def utterances(self, texts: list[str], speakers: list[str] | None = None) -> Split:
        """One conversation's utterances, text only and in the order said, as a Split this run reads:
        `predict(run.utterances([...]))`. They form one group (positions 0..n-1), so a run trained with
        context reads each utterance with its neighbours (a causal run: the ones before it only, so a
        verdict never changes when later utterances arrive, which is what live use needs). Audio and
        vision are absent (availability mask). Only runs that encode transcripts themselves
        (`train.text_inputs` sentence or bert, e.g. the `meld` preset) can read bare text."""
        record = self.info.get("text_inputs")
        if not isinstance(record, dict):
            raise AffectusError(f"{self.run_dir}: the run reads the text features of its file, not transcripts, so "
                                f"it cannot read utterances; give a features file or clips")
        if record.get("text") == "sentence+file":
            raise AffectusError(f"{self.run_dir}: the run reads the file's text features beside each transcript "
                                f"(text_inputs sentence+file), which bare utterances do not have; give a features file")
        if not isinstance(texts, (list, tuple)) or not texts:
            raise AffectusError("utterances: expected a non-empty list of strings")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise AffectusError(f"utterances: item {i + 1} is {'empty' if isinstance(t, str) else type(t).__name__}"
                                    f": expected the words said")
        if speakers is not None and (len(speakers) != len(texts) or not all(isinstance(x, str) for x in speakers)):
            raise AffectusError(f"utterances: {len(speakers)} speakers for {len(texts)} utterances")
        n = len(texts)
        available = np.zeros((n, 3), dtype=bool)
        available[:, 0] = True
        zeros = {m: np.zeros((n, 1, 1 if m == "text" else self.dims[m]), np.float32) for m in MODALITIES}
        return Split(name="conversation", **zeros, text_lengths=np.ones(n, np.int64),
                     audio_lengths=np.zeros(n, np.int64), vision_lengths=np.zeros(n, np.int64),
                     labels=np.zeros(n, np.float32), ids=[f"u{i + 1}" for i in range(n)], raw_text=list(texts),
                     available=available, groups=["conversation"] * n, positions=np.arange(n, dtype=np.int64),
                     speakers=None if speakers is None else list(speakers))

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
        split = _restrict(self.reads(split), available)
        for m in MODALITIES:
            if split.features(m).shape[2] != self.dims[m]:
                raise AffectusError(f"split {split.name} {m}: feature dim {split.features(m).shape[2]}, "
                                    f"the model expects {self.dims[m]}")
        return evaluate_split(self.model, split, self.scheme, 256, self.device, masks=masks)


def predictions_csv(split: Split, pred: Prediction, scheme: Any = None) -> str:
    """One CSV row per sample of `split`: its id and label, the verdict and its probabilities, and
    (when the model has them) each modality's own verdict and router weight. `scheme` (the run's label
    scheme) maps labels to classes; default 3-class sentiment."""
    import csv
    import io

    from affectus.utils.csv_cells import csv_text  # an id from the data file is never a formula

    names = pred.class_names
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["id", "label", "label_class", "predicted", *(f"p_{c}" for c in names)]
    if pred.modality_classes is not None:
        header += [f"{m}_predicted" for m in MODALITIES]
    if pred.router_weights is not None:
        header += [f"{m}_weight" for m in MODALITIES]
    w.writerow(header)
    label_classes = (to_classes if scheme is None else scheme.to_classes)(split.labels)
    for i, sample_id in enumerate(split.ids):
        row = [csv_text(sample_id), np.format_float_positional(split.labels[i]), names[label_classes[i]],
               names[pred.classes[i]], *(f"{p:.6f}" for p in pred.probabilities[i])]
        if pred.modality_classes is not None:
            row += [names[c] for c in pred.modality_classes[i]]
        if pred.router_weights is not None:
            row += [f"{x:.6f}" for x in pred.router_weights[i]]
        w.writerow(row)
    return buf.getvalue()


# what building a model from a bad config raises (a size of 2**62, -1 or "two" reaches torch or the dataclass)
SHELL_ERRORS = (TypeError, ValueError, KeyError, ArithmeticError, RuntimeError, MemoryError)
# tensors a model may hold beyond its saved weights (non-persistent buffers: index tables, masks)
MAX_UNSAVED_ELEMENTS = 1 << 22


def _check_sizes(config: Any, weights: dict[str, torch.Tensor], where: str) -> None:
    check_config_sizes(config, sum(t.numel() for t in weights.values()), where)


def check_config_sizes(config: Any, values: int, where: str, what: str = "values its weights hold") -> None:
    """The config's own range checks (sizes at least 1, heads dividing d, ...), then a ceiling no honest
    config passes: no whole number in it (a width, a layer or head count, an input dim) exceeds `values`,
    the number of values the run's weights hold (or a bound on it), since each of them sizes at least that
    many weights. Checked before any module is made: a million layers cost gigabytes even as empty shells.
    Input dims (`dims`) get a looser ceiling (2**24 features): a model may read only part of its input (the
    `linear_text` probe reads one text view), and the meta-device check compares the layer an input dim
    makes anyway."""
    import dataclasses

    validate = getattr(config, "validate", None)
    if validate is not None:
        try:
            validate()
        except AffectusError as err:
            raise AffectusError(f"{where}: {err}") from None
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        items = value.items() if isinstance(value, dict) else [(None, value)]
        ceiling = max(values, 1 << 24) if f.name == "dims" else values
        for key, v in items:
            if _is_int(v) and v > ceiling:
                name = f.name if key is None else f"{f.name}.{key}"
                bound = f"the {ceiling} {what}" if ceiling == values else f"{ceiling} (the most features an input may have)"
                raise AffectusError(f"{where}: {name} = {v} is larger than {bound} (edited by hand?)")


def _build(model_name: str, config: Any, extras: dict[str, Any], tuner: dict[str, Any] | None):
    """The run's model, with its fine-tuned text layers attached when run.json records them."""
    model = create_model(model_name, config, **extras)
    if tuner is not None:
        from affectus.features.text_finetune import TextTuner, attach

        attach(model, TextTuner.from_record(tuner))
    return model


def _check_shapes(model_name: str, config: Any, extras: dict[str, Any], weights: dict[str, torch.Tensor],
                  run_dir: Path, tuner: dict[str, Any] | None = None) -> None:
    """Refuse (one line) a model whose tensors differ from the run's weights, from a shell on the meta
    device: its state dict must hold exactly the file's tensors, shape for shape, and what it holds
    beyond them stays small. Models whose builder loads pretrained files (a BERT path, without the run's
    bert_config.json) cannot build on meta; they are checked by load_state_dict after the real build."""
    try:
        with torch.device("meta"), torch.random.fork_rng(devices=[]):
            shell = _build(model_name, config, extras, tuner)
    except RuntimeError:
        if getattr(config, "text_input", None) == "bert" and "bert_config" not in extras:
            return  # transformers refuses from_pretrained on meta; the real build and load_state_dict decide
        raise
    where = f"{run_dir}/model.safetensors does not match {run_dir}/run.json's model_config"
    state = shell.state_dict()
    missing, unexpected = sorted(set(state) - set(weights)), sorted(set(weights) - set(state))
    if missing or unexpected:
        first = f"first missing: {missing[0]}" if missing else f"first unexpected: {unexpected[0]}"
        raise AffectusError(f"{where} (missing {len(missing)}, unexpected {len(unexpected)} tensors; {first})")
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(weights[k].shape)]
    if wrong:
        k = wrong[0]
        raise AffectusError(f"{where}: {len(wrong)} tensor(s) of another shape, first {k}: "
                            f"{tuple(weights[k].shape)} in the file, {tuple(state[k].shape)} by the config")
    unsaved = sum(t.numel() for n, t in [*shell.named_parameters(), *shell.named_buffers()] if n not in state)
    if unsaved > MAX_UNSAVED_ELEMENTS:
        raise AffectusError(f"{run_dir}/run.json: model_config asks for {unsaved} values beyond the saved weights "
                            f"(at most {MAX_UNSAVED_ELEMENTS})")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _restrict(split: Split, available: str | tuple[str, ...] | list[str] | None) -> Split:
    if available is None:
        return split
    from affectus.data.missing import parse_available, with_availability

    names = parse_available(available) if isinstance(available, str) else parse_available(",".join(available))
    return with_availability(split, names)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _numbers(name: str, value: Any, kinds: str) -> np.ndarray:
    """`value` as a numpy array of one of the dtype kinds (b bool, i int, u unsigned, f float)."""
    try:
        a = np.asarray(value)
    except Exception:  # noqa: BLE001 - ragged nested lists raise ValueError in numpy 2
        raise AffectusError(f"predict: {name}: ragged (rows of different shapes), expected one array") from None
    if a.dtype.kind not in kinds:
        raise AffectusError(f"predict: {name}: expected numbers, got dtype {a.dtype}")
    return a


def _lengths(m: str, value: Any, n: int, seq_len: int) -> np.ndarray:
    """True lengths (N,) int64 in [0, L]; None means every sample fills its L steps."""
    key = f"{m}_lengths"
    if value is None:
        return np.full(n, seq_len, dtype=np.int64)
    a = _numbers(key, value, "iuf")
    if a.shape != (n,):
        raise AffectusError(f"predict: {key}: expected shape ({n},), one length per sample, got {tuple(a.shape)}")
    if a.dtype.kind == "f" and not (np.isfinite(a).all() and (a == np.round(a)).all()):
        raise AffectusError(f"predict: {key}: expected whole numbers, found fractional or non-finite ones")
    # compared in the array's own dtype, so an unsigned 2**64-1 is reported as that, not as -1
    bad = a[(a < 0) | (a > seq_len)]
    if bad.size:
        raise AffectusError(f"predict: {key}: length {bad[0].item()!r} outside [0, {seq_len}] (the {m} sequence "
                            f"length L)")
    return a.astype(np.int64)


def _to_prediction(res: dict[str, np.ndarray], run_dir: Path, scheme, available: np.ndarray | None = None,
                   experts: tuple[str, ...] = ()) -> Prediction:
    bad = ~np.isfinite(res["logits"]).all(-1)
    if bad.any():
        # argmax of NaN is 0 ("negative"): a silent wrong verdict, so stop here instead
        raise AffectusError(f"{run_dir}: the model gave NaN/inf outputs for {int(bad.sum())} sample(s) (first: "
                            f"row {int(np.flatnonzero(bad)[0])}); check the inputs' scale and the run's weights")
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
        experts=experts if "expert_logits" in res else (),
        expert_probabilities=None if "expert_logits" not in res else _softmax(res["expert_logits"]),
        expert_weights=_shares(res.get("expert_weights")),
    )


def _shares(w: np.ndarray | None) -> np.ndarray | None:
    """Effective weights (N, K) -> each one's share of the sample's total (rows sum to 1)."""
    if w is None:
        return None
    return w / np.clip(w.sum(-1, keepdims=True), 1e-12, None)


def load(run_dir: str | Path, device: str = "cpu") -> Predictor:
    return Predictor(run_dir, device)
