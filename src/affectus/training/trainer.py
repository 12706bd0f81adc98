"""Training runs end to end: data in, a self-describing run directory out. Generic over models.

The model's registry entry brings its recipe (`training/recipes/`): CMC runs its two stages, Self-MM its
ULGM task, the rest one supervised stage; this file never asks which model it is running. Only the train
and selection splits are handed to training; the evaluation split reaches `evaluate_split` alone, with
its labels used for scoring only. Library calls leave process-global torch state (threads, the global
RNG, denormal flushing) as they found it: the CLI sets threads and denormals for itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affectus.data.load import data_identity, extraction_record
from affectus.data.schemes import RECORDED_ORIGIN, LabelScheme, get_scheme, infer_scheme
from affectus.data.types import MODALITIES, MERDataset, Split
from affectus.errors import AffectusError
from affectus.evaluation.evaluate import predict_split, score_predictions, single_class
from affectus.evaluation.tensorboard import EpochLogger
from affectus.models.registry import create_model, get_model_entry, make_config
from affectus.runs import checkpoints as ckpt
from affectus.runs.identity import check_same_run, run_identity, write_identity
from affectus.training.config import ResolvedConfig, upgrade_config
from affectus.training.loop import logger
from affectus.training.recipes.base import RecipeContext, RecipeResult
from affectus.utils.io import lock_dir, write_json_atomic


@dataclasses.dataclass
class DataPlan:
    """Which split trains, which selects (early stopping), which is reported; and the label scheme."""

    train: str
    select: str
    eval: str
    scheme: LabelScheme
    # where the scheme came from, in words for `train`'s output ("recorded in the file", "preset mosi", ...)
    origin: str = ""

    @property
    def family(self) -> str:
        """The scheme's name ('sims', 'mosi', 'categorical'); recorded in run.json for readers of old runs."""
        return self.scheme.name

    def to_dict(self) -> dict[str, Any]:
        return {"train": self.train, "select": self.select, "eval": self.eval, "scheme": self.scheme.spec()}


def plan_for(dataset: MERDataset, preset=None) -> DataPlan:
    """The splits' roles and the label scheme: the preset's, or inferred from the train and selection
    splits only (test labels may be read by evaluation only)."""
    if preset is not None:
        sp = preset.splits
        names = (sp["train"], sp["select"], sp["eval"])
    else:
        names = ("train", "valid", "test" if "test" in dataset else "valid")
    for role, name in zip(("train", "select"), names):
        if name not in dataset:
            raise AffectusError(f"{dataset.source}: split '{name}' is needed to {role} but the file has "
                                f"{', '.join(dataset.splits)}")
    train, select = dataset[names[0]], dataset[names[1]]
    recorded = None if dataset.scheme is None else get_scheme(dataset.scheme)
    if preset is not None:
        scheme, origin = preset.scheme, f"preset {preset.name}"
        if recorded is not None and recorded.spec() != scheme.spec():
            # the file says what its labels mean; a preset that reads them otherwise would score nonsense
            raise AffectusError(f"file {dataset.source}: its labels are {recorded.describe()} (recorded in the file), "
                                f"but preset {preset.name} reads them as {scheme.describe()}; drop --preset")
    elif recorded is not None:
        scheme, origin = recorded, RECORDED_ORIGIN
    else:
        scheme = infer_scheme(train.labels, select.labels, train.unimodal_labels is not None)
        origin = "inferred from the labels: no preset, and the file records no scheme"
    for split in dataset.splits.values():
        scheme.check_labels(split.labels, f"file {dataset.source} split {split.name}")
    return DataPlan(*names, scheme, origin)


def build_model(cfg: ResolvedConfig, dataset: MERDataset, scheme: LabelScheme | None = None,
                text_views: list[tuple[str, int]] | None = None, text_model_dir: str | None = None):
    """The run's model for `dataset`'s feature sizes. What the data decides is filled into the model's
    config where its registry entry declares it takes it (`Capabilities`): `num_classes` (the scheme's),
    `text_views` (the text feature's columns as views, from `train.text_inputs`), and `bert_path` (the
    encoder that made `text_bert`, when the model reads transcripts and names no BERT of its own)."""
    values = dict(cfg.model)
    values["dims"] = dataset.dims
    can = get_model_entry(cfg.model_name).can(values)
    if scheme is not None and can.num_classes:
        values["num_classes"] = scheme.num_classes
    if text_views and can.text_views:
        values["text_views"] = [[name, width] for name, width in text_views]
    if text_model_dir and can.reads_transcripts and not values.get("bert_path"):
        values["bert_path"] = text_model_dir
    config = make_config(cfg.model_name, values)
    return create_model(cfg.model_name, config), config


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AffectusError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def train_run(
    dataset: MERDataset,
    cfg: ResolvedConfig,
    out_dir: str | Path,
    plan: DataPlan,
    resume: bool = False,
    data_source: str | None = None,
    on_epoch: Callable[[str, dict[str, float], int], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train with the model's recipe, evaluate on the plan's eval split, write the run directory.

    A folder holding files a run would replace (config.json, metrics.json, ...) that it did not write
    itself is refused unless `overwrite`.

    Epoch lines go to the `affectus.training` logger; `on_epoch(stage, record, max_epochs)` observes
    each epoch (the CLI's progress bar)."""
    out = Path(out_dir)
    # an encoder that is not installed, or a file without the transcripts the inputs read: refused before
    # the run directory exists
    _check_inputs(dataset, cfg)
    # the run directory is locked while this process writes it (a second `train --out` there gets one
    # error line); the check below and the writes cannot interleave with another process's
    with lock_dir(out, "run directory"):
        if not resume and not overwrite:
            _refuse_foreign_files(out)
        return _locked_run(dataset, cfg, out, plan, resume, data_source, on_epoch)


# what a run writes; a folder with one of these but no identity.json holds someone else's files
_RUN_FILES = ("config.json", "metrics.json", "run.json", "model.safetensors", "bank.safetensors", "pseudo_labels.csv",
              "bert_config.json")


def _refuse_foreign_files(out: Path) -> None:
    from affectus.runs.identity import IDENTITY_FILE

    if (out / IDENTITY_FILE).exists():
        return  # an affectus run: the finished / interrupted checks below decide
    clash = [name for name in _RUN_FILES if (out / name).exists()]
    if clash:
        raise AffectusError(f"{out}: is not an affectus run but holds {', '.join(clash)}, which training would "
                            f"replace; choose another --out or pass --overwrite")


def _locked_run(dataset, cfg: ResolvedConfig, out: Path, plan: DataPlan, resume: bool, data_source,
                on_epoch) -> dict[str, Any]:
    if (out / "run.json").exists() and not resume:
        raise AffectusError(f"{out}: already holds a finished run; choose another --out or delete it")
    if (out / "state.pt").exists() and not resume:
        raise AffectusError(f"{out}: holds an interrupted run; pass --resume to continue it, or choose another --out")
    identity = run_identity(cfg.model_name, cfg.to_dict(), data_identity(data_source or dataset.source))
    if resume:  # the same model, config and data, or nothing: two runs must never be mixed in one
        check_same_run(out, identity, upgrade_config)
    if resume and (out / "run.json").exists():
        info = ckpt.read_run(out)
        return info.get("metrics", {})
    # The run's seeds must not leak into the caller's process: fork the global RNG for the run.
    with torch.random.fork_rng(devices=[]):
        return _train(dataset, cfg, out, plan, resume, identity, on_epoch)


def _train(dataset, cfg: ResolvedConfig, out: Path, plan: DataPlan, resume: bool, identity: dict[str, Any],
           on_epoch) -> dict[str, Any]:
    tc = cfg.train
    device = _device(tc.device)
    dataset, text_record, text_views, text_model_dir = _text_inputs(dataset, tc)
    dataset, context_record, text_views = _context(dataset, tc, text_views)
    dataset, experts_record, text_views = _experts(dataset, tc, text_views)
    dataset, text_record, tuner = _finetune(dataset, tc, text_record)
    dataset, sequence_record = _sequences(dataset, cfg)
    torch.manual_seed(tc.seed)
    train_split, select_split = dataset[plan.train], dataset[plan.select]
    if tc.consistent_retention < 1.0:
        train_split = retain_consistent(train_split, tc.consistent_retention, tc.seed, plan.scheme)
    if len(train_split) < 2 or len(select_split) < 1:
        raise AffectusError(f"{dataset.source}: train split needs at least 2 samples and '{plan.select}' at least 1")
    _check_training_modalities(cfg, train_split)
    model, model_cfg = build_model(cfg, dataset, plan.scheme, text_views, text_model_dir)
    if tuner is not None:  # the text encoder's top layers train with the model (features/text_finetune.py)
        from affectus.features.text_finetune import attach

        attach(model, tuner)
    can = get_model_entry(cfg.model_name).can(model_cfg)
    model.to(device)
    write_json_atomic(out / "config.json", cfg.to_dict())
    write_identity(out, identity)

    state_path = out / "state.pt"
    saved = ckpt.load_state(state_path) if resume and state_path.exists() else None
    started = time.perf_counter()
    recipe = get_model_entry(cfg.model_name).get_recipe()
    # TensorBoard events are written as each epoch ends (OUT/tensorboard/<stage>/), so a long run can be
    # watched live; the stage names are run.json's `stages` keys.
    with contextlib.closing(EpochLogger(out)) as tb:

        def observe(stage: str, record: dict[str, float], epochs: int) -> None:
            tb.log_epoch(stage, record)
            if on_epoch is not None:
                on_epoch(stage, record, epochs)

        ctx = RecipeContext(model=model, train=tc, recipe=cfg.recipe, train_split=train_split,
                            select_split=select_split, scheme=plan.scheme, device=device, out=out, saved=saved,
                            on_epoch=observe, can=can)
        for line in cfg.notices:  # after every check of the inputs: a refused run prints its one error line only
            logger.warning(line)
        result = recipe.train(ctx)
    model.load_state_dict(result.state)

    eval_split = dataset[plan.eval] if plan.eval in dataset else None
    scored: dict[str, tuple[dict[str, Any], np.ndarray]] = {}  # split name -> (metrics, logits (N, C))
    for name, split in ((plan.eval, eval_split), (plan.select, select_split)):
        if split is not None and name not in scored:  # e.g. mosi-utterance scores valid: scored once
            pred = predict_split(model, split, tc.batch_size, device)
            scored[name] = (score_predictions(pred, split, plan.scheme), pred["logits"])
    metrics = scored[plan.eval][0] if eval_split is not None else {}
    # the selection split's scores: what sweeps and model choice may look at (never the test scores)
    select_metrics = scored[plan.select][0]
    from affectus.pretrained.views import expert_fits

    expert_parts = expert_fits(experts_record)  # an expert fitted on this run's own splits marks them
    degenerate = {name: what for name, (_, logits) in scored.items()
                  if (what := single_class(logits, plan.scheme)) is not None}
    warnings = [f"degenerate run: the model predicts one class ({what}) for every sample of split '{name}'; "
                f"its scores there are that class's share" for name, what in degenerate.items()]
    for line in warnings:
        logger.warning(line)
    info = {
        "model_name": cfg.model_name,
        "variant": cfg.variant,
        "model_config": dataclasses.asdict(model_cfg),
        "config": cfg.to_dict(),
        "dims": dataset.dims,
        "seq_lens": dataset.seq_lens,
        "label_mapping": {str(i): name for i, name in enumerate(plan.scheme.class_names)},
        "scheme": plan.scheme.spec(),
        "scheme_origin": plan.origin,  # where the scheme came from: the preset, the file's record, the labels
        "family": plan.family,
        "plan": plan.to_dict(),
        "data": identity["data"],  # source and sha256 (None for synth:NAME data)
        # the extractors that made the features (FILE.extract.json), so a clip is predicted the same way
        "extraction": extraction_record(identity["data"]["source"]),
        # the text encoder that re-encoded the transcripts (train.text_inputs); evaluate / predict on another
        # file re-encode its transcripts from this record (None: the file's text features were used as they are)
        "text_inputs": text_record,
        # train.context (data/context.py): the window and the views it added; evaluate / predict on another file
        # build that file's context from its own groups the same way (None: no context)
        "context": context_record,
        # the model's utterance sequences (Capabilities.utterance_context, data/context.py): the window each batch
        # carried; evaluate / predict on another file build that file's sequences from its own groups (None: none)
        "sequence_context": sequence_record,
        # train.pretrained_experts (pretrained/views.py): each expert's name, classes and weights sha256; evaluate /
        # predict on another file append the same experts' columns (None: no experts)
        "pretrained_experts": experts_record,
        "stages": result.summary,
        # part -> the split it learned from; `selection_parts` chose on theirs (named, not marked in-sample)
        "fitted_on": {**fitted_parts(result, plan), **expert_parts[0]},
        "selection_parts": [*ckpt.SELECTION_PARTS, *result.selection_parts, *expert_parts[1]],
        "train_seconds": round(time.perf_counter() - started, 2),
        "metrics": metrics,
        "metrics_split": plan.eval,
        "select_metrics": select_metrics,
        "select_split": plan.select,
        "degenerate": degenerate,  # split -> the one class predicted for all its samples
        "warnings": warnings,
    }
    if result.tensors:
        ckpt.save_tensors(out / "bank.safetensors", result.tensors)
    if can.reads_transcripts:
        # BERT's architecture beside its weights (in model.safetensors): loading needs no hub or path
        write_json_atomic(out / "bert_config.json", model.bert.config.to_dict())
    write_json_atomic(out / "metrics.json", {"split": plan.eval, **metrics,
                                             **ckpt.in_sample_json(ckpt.split_fits(info, plan.eval))})
    ckpt.write_run(out, info, dict(model.state_dict()))
    if state_path.exists():
        state_path.unlink()
    return metrics


def fitted_parts(result: RecipeResult, plan: DataPlan) -> dict[str, str]:
    """run.json's `fitted_on`: every model's weights learn from the train split and its early stopping
    chooses on the selection split; the recipe adds (or drops, with None) its own parts by split role."""
    roles = {"train": plan.train, "select": plan.select}
    declared = {"weights": "train", "early_stopping": "select", **result.fitted_on}
    unknown = {role for role in declared.values() if role is not None and role not in roles}
    if unknown:  # a recipe bug, not bad input: say which role
        raise ValueError(f"fitted_on: unknown split role(s) {sorted(unknown)}; expected train or select")
    return {part: roles[role] for part, role in declared.items() if role is not None}


def _check_training_modalities(cfg: ResolvedConfig, split: Split) -> None:
    """Refuse a training split without a modality the model declares it needs there (`needs_in_training`),
    before the run directory holds anything: e.g. MCTN's source, which every translation starts from."""
    needs = get_model_entry(cfg.model_name).can(cfg.model).needs_in_training
    for modality, reason in needs:
        k = MODALITIES.index(modality)
        has = np.asarray(split.lengths(modality)) > 0
        if split.available is not None:
            has &= np.asarray(split.available, dtype=bool)[:, k]
        if not has.any():
            raise AffectusError(f"{cfg.model_name}: the training split '{split.name}' has no {modality} ({reason}); "
                                f"train on a file that has it, or choose a setting that does not need it")


def _check_inputs(dataset: MERDataset, cfg: ResolvedConfig) -> None:
    sequences = get_model_entry(cfg.model_name).can(cfg.model).utterance_context
    if sequences is not None:
        from affectus.data.context import check_sequences

        if cfg.train.context:
            raise AffectusError(f"train.context = {cfg.train.context}: model {cfg.model_name} reads its neighbours "
                                f"itself (model.window = {sequences[0]}); train.context would add their mean text as "
                                f"columns it reads a second time: set the window with model.window (and "
                                f"model.causal), and train.context=0")
        check_sequences(dataset, sequences[0], f"model {cfg.model_name}")
    if cfg.train.context:
        from affectus.data.context import check_context

        check_context(dataset, cfg.train.context)
        if get_model_entry(cfg.model_name).can(cfg.model).reads_transcripts:
            raise AffectusError(f"train.context = {cfg.train.context}: model {cfg.model_name} as configured reads "
                                f"the transcripts' token ids through its own BERT, not the text feature the context "
                                f"is added to; train it on text features, or without context (train.context=0)")
    if cfg.train.text_context:
        from affectus.data.context import check_context

        check_context(dataset, cfg.train.text_context, "train.text_context")
    if cfg.train.text_inputs == "file":
        return
    from affectus.features.text import check_text_inputs

    check_text_inputs(dataset, cfg.train.text_inputs, cfg.train.text_encoder, cfg.preset)


def _text_inputs(dataset: MERDataset, tc) -> tuple[MERDataset, dict[str, Any] | None, list, str | None]:
    """`train.text_inputs` applied: the dataset with re-encoded text, the record, the views, the model dir."""
    if tc.text_inputs == "file":
        return dataset, None, [], None
    from affectus.features.text import apply_text_inputs, text_context_record

    context = text_context_record(tc.text_context, tc.context_causal)
    dataset, record, views, encoder = apply_text_inputs(dataset, tc.text_inputs, tc.text_encoder, context,
                                                        tc.text_context_tokens if context else None)
    logger.info(f"text inputs: {tc.text_inputs} from the transcripts, encoder {tc.text_encoder}")
    if context:
        logger.info(f"text context: each transcript encoded with {tc.text_context} neighbour(s) "
                    f"{'before' if tc.context_causal else 'on each side of'} it ({tc.text_context_tokens} tokens)")
    return dataset, record, views, None if encoder is None else str(encoder.model_dir)


def _finetune(dataset: MERDataset, tc, text_record: dict[str, Any] | None):
    """`train.text_encoder_finetune` applied after the text inputs and context: the dataset with each split's
    token states from the encoder's frozen lower layers, the text record with the fine-tuning added, and the
    tuner (the top layers, copied from the encoder) the model gets; unchanged and None when it is 0."""
    n = tc.text_encoder_finetune
    if not n:
        return dataset, text_record, None
    from affectus.features.text import text_inputs_from_record
    from affectus.features.text_finetune import TextTuner, add_text_tokens, check_finetune, finetune_record

    encoder = text_inputs_from_record(text_record)[0]
    check_finetune(encoder, n, tc.text_encoder)
    record = finetune_record(encoder, n)
    dataset = add_text_tokens(dataset, encoder, record["first"])
    logger.info(f"text encoder: its last {n} layer(s) fine-tuned (lr {tc.bert_lr}), layers below frozen")
    return dataset, {**text_record, "finetune": record}, TextTuner.from_encoder(encoder, n)


def apply_run_inputs(dataset: MERDataset, tc) -> MERDataset:
    """A dataset as a run with train settings `tc` reads it: transcripts re-encoded (`train.text_inputs`), then
    the context columns (`train.context`). For data a recipe reads beside the run's own file (MC-Teacher's
    unlabeled clips), so it gets exactly the training features' inputs."""
    dataset, record, text_views, _ = _text_inputs(dataset, tc)
    dataset = _context(dataset, tc, text_views)[0]
    return _finetune(dataset, tc, record)[0]


def _context(dataset: MERDataset, tc, text_views: list) -> tuple[MERDataset, dict[str, Any] | None, list]:
    """`train.context` applied after the text inputs (the context averages the text as the model reads it):
    the dataset with context columns, the record, the text views with the context views added."""
    if not tc.context:
        return dataset, None, text_views
    from affectus.data.context import apply_context

    base = "file" if tc.text_inputs == "file" else "transcript"  # the text block's name when it has no views
    dataset, record, views = apply_context(dataset, tc.context, tc.context_causal, text_views, base)
    logger.info(f"context: {tc.context} utterance(s) {'before' if tc.context_causal else 'on each side of'} each one")
    return dataset, record, views


def _experts(dataset: MERDataset, tc, text_views: list) -> tuple[MERDataset, dict[str, Any] | None, list]:
    """`train.pretrained_experts` applied after the context: each expert's probabilities as a text view."""
    if not tc.pretrained_experts:
        return dataset, None, text_views
    from affectus.pretrained.views import apply_experts

    base = "file" if tc.text_inputs == "file" else "transcript"  # the text block's name when it has no views
    dataset, record, views = apply_experts(dataset, list(tc.pretrained_experts), text_views, base)
    logger.info(f"pretrained experts as evidence: {', '.join(tc.pretrained_experts)}")
    return dataset, record, views


def _sequences(dataset: MERDataset, cfg: ResolvedConfig) -> tuple[MERDataset, dict[str, Any] | None]:
    """Utterance sequences for a model that asks for them (`Capabilities.utterance_context`): the dataset whose
    splits' batches carry them, and the run.json record (None: the model reads one utterance)."""
    sequences = get_model_entry(cfg.model_name).can(cfg.model).utterance_context
    if sequences is None:
        return dataset, None
    from affectus.data.context import apply_sequences

    window, causal = sequences
    dataset, record = apply_sequences(dataset, window, causal, f"model {cfg.model_name}")
    logger.info(f"utterance sequences: up to {window} utterance(s) {'before' if causal else 'on each side of'} "
                f"each one, within its group")
    return dataset, record


def retain_consistent(split: Split, rate: float, seed: int, scheme: LabelScheme) -> Split:
    """Keep a random share `rate` of the modality-consistent (D_msc, by the scheme's classes) samples, all
    the others (Figs. 4-5)."""
    if split.unimodal_labels is None:
        raise AffectusError("train.consistent_retention needs unimodal labels in the training split")
    msc, _ = scheme.consistency_masks(split.labels, split.unimodal_labels)
    consistent = np.flatnonzero(msc)
    rng = np.random.default_rng([seed, 7919])
    keep = rng.choice(consistent, size=int(round(rate * len(consistent))), replace=False)
    rows = np.sort(np.concatenate([np.flatnonzero(~msc), keep]))
    return split.subset(rows)


