"""Pretrained text experts inside a run (`train.pretrained_experts`): evidence that needs no labels of the run's own.

Each named expert (pretrained/registry.py: a logistic-regression head over frozen MiniLM sentence vectors, built
once from MELD or CMU-MOSI by `affectus pretrained build NAME`) gives its class probabilities for every
sample's transcript (`Split.raw_text`). They are appended to the text feature as one text view each, named
`expert_<name>` (width: the expert's classes), after the text inputs and the context, the way context views
are delivered (data/context.py): CMC+ makes each view an expert of its own, weighed by its router like any
other; a model without views reads the columns concatenated. A sample whose text is absent gets zeros there
(the view travels with the text).

The experts were fitted on their own data (MELD's train split, CMU-MOSI's train split; their setting chosen on
its dev / valid split), never through the run's labels. That data can be the run's own (meld-emotion inside a
run on MELD, mosi-sentiment on CMU-MOSI): the expert's recorded transcript hashes (`seen_texts`) are compared
with each split's transcripts, and a run split that is the expert's training split gets the part
"pretrained expert NAME" in run.json `fitted_on` (scores there are marked in-sample), one that is its
selection split the selection part "pretrained expert NAME setting". The run records each expert's name,
classes and weights sha256
(run.json `pretrained_experts`); evaluate / predict / serve rebuild the columns from the same expert and
refuse one that was rebuilt since (its sha256 differs): other weights would give other evidence.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from affectus.data.context import append_text_columns, pooled_text
from affectus.data.types import MERDataset, Split
from affectus.errors import AffectusError, SettingError

_log = logging.getLogger(__name__)

VIEW_PREFIX = "expert_"  # an expert's text view is named expert_<name>


def check_expert_names(names: list[str], text_inputs: str, finetune: int) -> None:
    """`train.pretrained_experts` checked with the config (one line, before anything runs): known text experts,
    no repeats, and inputs the columns can be appended to."""
    from affectus.pretrained.registry import EXPERTS

    text_experts = [n for n, e in EXPERTS.items() if e.modality == "text"]
    for name in names:
        if name not in text_experts:
            raise SettingError("train.pretrained_experts", names,
                               f"names of pretrained text experts ({', '.join(text_experts)})")
    if len(set(names)) != len(names):
        raise SettingError("train.pretrained_experts", names, "distinct names")
    if text_inputs == "bert":
        raise SettingError("train.pretrained_experts", names, "[] with train.text_inputs = bert (a BERT text path "
                           "reads token ids, not the text feature the experts' columns are added to)",
                           "train.text_inputs")
    if finetune:
        raise SettingError("train.pretrained_experts", names, "[] with train.text_encoder_finetune (the tuned "
                           "layers replace the transcript's columns; the experts read the frozen encoder)",
                           "train.text_encoder_finetune")


def _models(names: list[str]) -> list[Any]:
    from affectus.pretrained.registry import get_expert

    return [get_expert(n).load() for n in names]


def add_expert_columns(split: Split, models: list[Any], where: str) -> Split:
    """`split` with each expert's probabilities appended to the text feature (repeated over the L steps;
    zeros where the sample has no text or an empty transcript)."""
    if split.raw_text is None:
        raise AffectusError(f"{where}: train.pretrained_experts reads each sample's transcript, but split "
                            f"{split.name} has none (raw_text)")
    present = pooled_text(split)[1] & np.array([bool(t and t.strip()) for t in split.raw_text])
    rows = np.flatnonzero(present)
    texts = [split.raw_text[i] for i in rows]
    blocks = []
    for model in models:
        probs = np.zeros((len(split), len(model.classes)), np.float32)
        if len(rows):
            probs[rows] = model.predict_texts(texts)
        blocks.append(probs)
    return append_text_columns(split, np.concatenate(blocks, axis=1))


def apply_experts(dataset: MERDataset, names: list[str], text_views: list[tuple[str, int]], base: str
                  ) -> tuple[MERDataset, dict[str, Any] | None, list[tuple[str, int]]]:
    """`train.pretrained_experts` applied to every split: (dataset, run.json record, the new text views)."""
    if not names:
        return dataset, None, text_views
    models = _models(names)
    width = int(dataset.dims["text"])
    splits = {k: add_expert_columns(s, models, f"file {dataset.source}") for k, s in dataset.splits.items()}
    views = list(text_views) or [(base, width)]
    added = [(f"{VIEW_PREFIX}{n}", len(m.classes)) for n, m in zip(names, models)]
    record = {"width": width, "views": [list(v) for v in added],
              "experts": [{"name": n, "classes": list(m.classes), "sha256": m.record["weights"]["sha256"],
                           "seen": _seen(m, dataset)} for n, m in zip(names, models)]}
    return replace(dataset, splits=splits), record, [*views, *added]


def _seen(model: Any, dataset: MERDataset) -> dict[str, Any] | None:
    """{expert split: {split, share}}: the run split holding most of the transcripts the expert was fitted on
    ("train") or chose its setting on ("valid"), where that is at least SEEN of the run split's own; None when
    the expert does not record its transcripts (built by an older version: a warning says to rebuild)."""
    from affectus.pretrained.text_experts import SEEN, seen_share, text_fingerprints

    seen = model.seen_texts()
    if seen is None:
        _log.warning("pretrained expert %s records no transcripts (built by an older version): whether it was "
                     "fitted on this data cannot be told; rebuild it to have in-sample scores marked", model.expert.name)
        return None
    mine = {k: text_fingerprints(list(s.raw_text or [])) for k, s in dataset.splits.items()}  # hashed once each
    out = {}
    for role, hashes in seen.items():
        shares = {k: seen_share(prints, hashes) for k, prints in mine.items()}
        best = max(shares, key=shares.get, default=None)
        if best is not None and shares[best] >= SEEN:
            out[role] = {"split": best, "share": round(shares[best], 4)}
    return out


def expert_fits(record: dict[str, Any] | None) -> tuple[dict[str, str], list[str]]:
    """run.json additions from a `pretrained_experts` record: ({part: run split} for `fitted_on`, the parts that
    only chose a setting, for `selection_parts`)."""
    fitted: dict[str, str] = {}
    chose: list[str] = []
    for e in (record or {}).get("experts") or []:
        seen = e.get("seen") or {}
        if "train" in seen:
            fitted[f"pretrained expert {e['name']}"] = seen["train"]["split"]
        if "valid" in seen:
            part = f"pretrained expert {e['name']} setting"
            fitted[part] = seen["valid"]["split"]
            chose.append(part)
    return fitted, chose


def experts_from_run(split: Split, record: dict[str, Any], where: str, cache: dict[str, Any]) -> Split:
    """A new file's split with the run's expert columns, from the same experts (checked by sha256); `cache`
    keeps the loaded experts between calls (a service answers many requests)."""
    experts = record.get("experts") if isinstance(record, dict) else None
    if not isinstance(experts, list) or not experts:
        raise AffectusError(f"{where}: run.json pretrained_experts is not a list of experts")
    if split.text.shape[2] != record.get("width"):
        raise AffectusError(f"split {split.name} text: feature dim {split.text.shape[2]}, the run expects "
                            f"{record.get('width')} (before its experts' columns)")
    models = []
    for e in experts:
        name = e.get("name") if isinstance(e, dict) else None
        if name not in cache:
            (cache[name],) = _models([name])
        model = cache[name]
        if model.record["weights"]["sha256"] != e.get("sha256"):
            raise AffectusError(f"{where}: pretrained expert {name} was rebuilt since this run was trained (its "
                                f"weights differ); retrain the run, or rebuild the expert from the same data")
        models.append(model)
    return add_expert_columns(split, models, where)
